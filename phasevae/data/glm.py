"""An autoregressive head at collapse for a likelihood other than the Gaussian.

At the collapsed state the decoder's output for example x is eta(x) = b + g(x), its
bias plus the head's prediction from x's predecessors, and the head and bias
minimise the negative log-likelihood alone: for a linear head (``model.context``,
``model.mask``) that is a generalised linear model (logistic regression for the
Bernoulli, Poisson or negative-binomial regression for counts) of each feature on
the predecessors the head reads, fitted here by Newton's method. What is left for z
is the likelihood's score r = -d(-ln p) / d eta at eta(x), and the collapsed state
is stable iff beta sigma^2 > lambda_max( D^{-1/2} C_rx C_xx^+ C_xr D^{-1/2} ), D the
mean over the data of the second derivative in eta, for an encoder linear in x
(docs/science.md, 'Autoregressive decoders', 'Other likelihoods'). With the
Gaussian's r = x - eta(x), D = 1 and a linear head that is lambda_max of the
innovations' covariance.
"""

from __future__ import annotations

import numpy as np

ITERATIONS = 100  # Newton steps at most
RIDGE = 1e-6  # per row: keeps a separable fit (a pixel its neighbours decide) finite
CHUNK = 1 << 16  # rows of the design formed at a time


def derivatives(
    x: np.ndarray, eta: np.ndarray, likelihood: str, dispersion=1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-ln p(x | eta) up to terms free of eta, the score -d(-ln p) / d eta and the
    second derivative d^2(-ln p) / d eta^2, element by element, for the Bernoulli's
    logit, the Poisson's log-rate and the negative binomial's log-mean (dispersion
    r, one or one per feature)."""
    if likelihood == "bernoulli":
        m = 1.0 / (1.0 + np.exp(-eta))
        return np.logaddexp(0.0, eta) - x * eta, x - m, m * (1.0 - m)
    m = np.exp(eta)
    if likelihood == "poisson":
        return m - x * eta, x - m, m
    r = dispersion
    loss = (r + x) * np.logaddexp(np.log(r), eta) - x * eta
    return loss, (x - m) * r / (r + m), (x + r) * r * m / (r + m) ** 2


def newton(objective, gradient_hessian, p: int) -> np.ndarray:
    """The w (p,) minimising the convex ``objective(w)``, by Newton's method with
    step halving from w = 0; ``gradient_hessian(w)`` gives its gradient and
    Hessian."""
    w = np.zeros(p)
    current = objective(w)
    for _ in range(ITERATIONS):
        grad, hess = gradient_hessian(w)
        step = np.linalg.solve(hess, grad)
        for _ in range(30):  # halve until the objective does not rise
            trial = objective(w - step)
            if trial <= current:
                break
            step = step / 2
        if trial > current:  # no step lowers it: at the optimum to rounding
            break
        w, change, current = w - step, current - trial, trial
        if change <= 1e-12 * max(abs(current), 1.0):
            break
    return w


def fit(design, y: np.ndarray, likelihood: str, dispersion=1.0) -> np.ndarray:
    """The coefficients w minimising sum_rows -ln p(y | design @ w), with a ridge
    of ``RIDGE`` per row (:func:`newton`). ``design(lo, hi)`` gives rows lo..hi of
    the (rows, p) design (formed a chunk at a time)."""
    rows = y.shape[0]
    p = design(0, 1).shape[1]
    ridge = RIDGE * rows

    def objective(w):
        total = 0.5 * ridge * w @ w
        for lo in range(0, rows, CHUNK):
            hi = min(lo + CHUNK, rows)
            loss, _, _ = derivatives(
                y[lo:hi], design(lo, hi) @ w, likelihood, dispersion
            )
            total += loss.sum()
        return total

    def gradient_hessian(w):
        grad, hess = ridge * w, ridge * np.eye(p)
        for lo in range(0, rows, CHUNK):
            hi = min(lo + CHUNK, rows)
            d = design(lo, hi)
            _, score, curve = derivatives(y[lo:hi], d @ w, likelihood, dispersion)
            grad -= d.T @ score
            hess += d.T @ (curve[:, None] * d)
        return grad, hess

    return newton(objective, gradient_hessian, p)


def lagged(x: np.ndarray, context: int) -> np.ndarray:
    """(n, N) -> (n, N, context): x[:, i - 1 - j] at [:, i, j], 0 before the first
    feature (the layout of the model's ``ar`` weights)."""
    n, dim = x.shape
    out = np.zeros((n, dim, context))
    for j in range(context):
        out[:, j + 1 :, j] = x[:, : dim - j - 1]
    return out


def context_fit(
    x: np.ndarray, context: int, likelihood: str, dispersion=1.0
) -> tuple[np.ndarray, np.ndarray]:
    """A linear head of ``context`` predecessors at collapse: for each feature, the
    fit of it on an intercept and the (up to) ``context`` features before it.
    Returns the intercepts (N,) (the decoder's output f(0)) and the weights (N,
    context), [i, j] on x[i - 1 - j] (the model's ``ar``; 0 before the first)."""
    n, dim = x.shape
    r = np.broadcast_to(np.asarray(dispersion, np.float64), (dim,))
    past = lagged(x, context)
    intercept, weights = np.empty(dim), np.zeros((dim, context))
    for i in range(dim):
        k = min(i, context)
        cols = np.hstack([np.ones((n, 1)), past[:, i, :k]])
        w = fit(lambda lo, hi, c=cols: c[lo:hi], x[:, i], likelihood, r[i])
        intercept[i], weights[i, :k] = w[0], w[1:]
    return intercept, weights


def neighbours(x: np.ndarray, image_shape, offsets) -> np.ndarray:
    """(n, h * w) -> (n, h * w, offsets): each pixel's neighbours x[p + o] over
    ``offsets`` (dy <= 0), zero outside the image."""
    n = x.shape[0]
    h, w = image_shape[:2]
    up = -min(dy for dy, _ in offsets)
    side = max(abs(dx) for _, dx in offsets)
    padded = np.pad(x.reshape(n, h, w), ((0, 0), (up, 0), (side, side)))
    views = [
        padded[:, up + a : up + a + h, side + b : side + b + w] for a, b in offsets
    ]
    return np.stack(views, axis=-1).reshape(n, h * w, len(offsets))


def image_chunks(x: np.ndarray) -> list[slice]:
    """Rows of x (n, N) a few images at a time, about ``CHUNK`` pixel values each:
    the neighbours of all images at once would be offsets times x."""
    step = max(1, CHUNK // x.shape[1])
    return [slice(lo, min(lo + step, x.shape[0])) for lo in range(0, x.shape[0], step)]


def masked_prediction(x: np.ndarray, image_shape, offsets, weights) -> np.ndarray:
    """(n, N): each pixel's neighbours over ``offsets`` times ``weights``, formed
    a few images at a time."""
    parts = [neighbours(x[r], image_shape, offsets) @ weights for r in image_chunks(x)]
    return np.concatenate(parts)


def masked_fit(
    x: np.ndarray, image_shape, offsets, likelihood: str, dispersion=1.0
) -> tuple[np.ndarray, np.ndarray]:
    """A linear masked-convolution head reading ``offsets`` at collapse: one fit of
    every pixel of every image on its own intercept (the decoder's bias, one per
    pixel) and its neighbours over the offsets, the weights shared by every pixel
    (one dispersion for all pixels), with a ridge of ``RIDGE`` per pixel value.
    Returns the intercepts (N,) and the weights (offsets,) (the model's
    ``masked``).

    The design's intercept columns are one-hot in the pixel, so its Newton
    system is formed blockwise from (images, N, offsets) neighbours a few
    images at a time, never as the (images * N, N + offsets) matrix: the
    intercepts' block is diagonal, the rest per-pixel sums."""
    n, dim = x.shape
    o = len(offsets)
    r = float(np.mean(dispersion))
    ridge = RIDGE * n * dim
    chunks = image_chunks(x)

    def parts(w, rows):
        views = neighbours(x[rows], image_shape, offsets)
        return views, derivatives(x[rows], w[:dim] + views @ w[dim:], likelihood, r)

    def objective(w):
        return 0.5 * ridge * w @ w + sum(parts(w, c)[1][0].sum() for c in chunks)

    def gradient_hessian(w):
        grad, hess = ridge * w, ridge * np.eye(dim + o)
        for rows in chunks:
            views, (_, score, curve) = parts(w, rows)
            weighted = views * curve[..., None]
            flat = views.reshape(-1, o)
            grad[:dim] -= score.sum(axis=0)
            grad[dim:] -= flat.T @ score.reshape(-1)
            hess[range(dim), range(dim)] += curve.sum(axis=0)
            cross = weighted.sum(axis=0)  # (N, offsets)
            hess[:dim, dim:] += cross
            hess[dim:, :dim] += cross.T
            hess[dim:, dim:] += weighted.reshape(-1, o).T @ flat
        return grad, hess

    coef = newton(objective, gradient_hessian, dim + o)
    return coef[:dim], coef[dim:]


def score_spectrum_map(
    x: np.ndarray, eta: np.ndarray, likelihood: str, dispersion=1.0
) -> np.ndarray:
    """The (N, N) map W with cov(x W) = D^{-1/2} C_rx C_xx^+ C_xr D^{-1/2}: r the
    score at the head's outputs ``eta``, D the mean second derivative (features of
    D = 0, constant ones, left out), so that the spectrum of x W is the collapse
    criterion of a linear encoder (module docstring)."""
    _, score, curve = derivatives(x, eta, likelihood, dispersion)
    d = np.where(x.std(axis=0) > 0, curve.mean(axis=0), 0.0)
    scale = np.where(d > 0, 1.0 / np.sqrt(np.where(d > 0, d, 1.0)), 0.0)
    c = np.cov(np.hstack([x, score]), rowvar=False, bias=True)
    dim = x.shape[1]
    c_xx, c_xr = c[:dim, :dim], c[:dim, dim:]
    return np.linalg.pinv(c_xx, rcond=1e-10, hermitian=True) @ c_xr * scale
