"""Linear-VAE closed forms and the collapse criterion (docs/science.md). NumPy (and
the data's innovations, :func:`phasevae.data.innovation_matrix`) only.

With theta = beta * sigma^2 and eigenvalues lambda_1 >= ... >= lambda_N of the data
covariance, latent dim i (i < latent_dim) is active iff lambda_i > theta. At the global
optimum of the linear VAE (Lucas et al. 2019):

    KL_i      = 1/2 max(0, ln(lambda_i / theta))
    s_i^2     = theta / lambda_i if active else 1
    MSE       = sum_active theta + sum_inactive lambda_j
    -loss*    = -(N/2) ln(2 pi sigma^2) - tr / (2 sigma^2)
                + sum_active 1/2 [lambda_i / sigma^2 - beta - beta ln(lambda_i / theta)]

where loss = recon + beta * KL (the objective, = -ELBO at beta = 1). Everything
broadcasts over array-valued ``sigma2`` and ``beta``; per-dim results carry the latent
dim on the last axis.
"""

from __future__ import annotations

import numpy as np

from phasevae.data import innovation_matrix


def thresholds(eigenvalues, beta, latent_dim: int) -> np.ndarray:
    """sigma^2 at which each of the top ``latent_dim`` dims collapses: lambda_i / beta.

    Returns:
      (..., latent_dim), descending; the first is the collapse transition sigma_c^2.
    """
    lam = _top(eigenvalues, latent_dim)
    return lam / np.asarray(beta, np.float64)[..., None]


def kl_per_dim(eigenvalues, sigma2, beta, latent_dim: int) -> np.ndarray:
    """Optimal KL of each latent dim, nats: (..., latent_dim)."""
    ratio = _top(eigenvalues, latent_dim) / _theta(sigma2, beta)[..., None]
    return 0.5 * np.log(np.maximum(ratio, 1.0))


def encoder_variance(eigenvalues, sigma2, beta, latent_dim: int) -> np.ndarray:
    """Optimal encoder variance s_i^2 of each latent dim: (..., latent_dim)."""
    ratio = _theta(sigma2, beta)[..., None] / _top(eigenvalues, latent_dim)
    return np.minimum(ratio, 1.0)


def mse(eigenvalues, sigma2, beta, latent_dim: int) -> np.ndarray:
    """Optimal expected ||x - f(z)||^2."""
    lam = np.asarray(eigenvalues, np.float64)
    theta = _theta(sigma2, beta)[..., None]
    top = np.minimum(_top(lam, latent_dim), theta)
    return top.sum(-1) + np.sort(lam)[::-1][latent_dim:].sum()


def collapse_loss(trace: float, dim: int, sigma2) -> np.ndarray:
    """Loss of the fully collapsed model (f = E[x], KL = 0):
    (N/2) ln(2 pi sigma^2) + tr / (2 sigma^2). Minus it is the paper's collapse line."""
    s2 = np.asarray(sigma2, np.float64)
    return 0.5 * dim * np.log(2 * np.pi * s2) + trace / (2 * s2)


def optimal_loss(eigenvalues, sigma2, beta, latent_dim: int) -> np.ndarray:
    """Loss (recon + beta * KL) at the linear-VAE optimum; minus it is ELBO*."""
    lam = np.asarray(eigenvalues, np.float64)
    s2 = np.asarray(sigma2, np.float64)
    b = np.asarray(beta, np.float64)
    theta = _theta(s2, b)[..., None]
    top = _top(lam, latent_dim)
    gain = np.where(
        top > theta,
        0.5 * (top / s2[..., None] - b[..., None] - b[..., None] * np.log(top / theta)),
        0.0,
    )
    return collapse_loss(lam.sum(), lam.size, s2) - gain.sum(-1)


def _top(eigenvalues, latent_dim: int) -> np.ndarray:
    return np.sort(np.asarray(eigenvalues, np.float64))[::-1][:latent_dim]


def _theta(sigma2, beta) -> np.ndarray:
    return np.asarray(sigma2, np.float64) * np.asarray(beta, np.float64)


REACH = (0.5, 1.5)  # x lambda_max / beta: what a grid must span to hold a transition
PLACE = (0.3, 2.5)  # x lambda_max / beta: the range a grid is advised to span


def grid_misses(lambda_max: float, sigma2, betas) -> list[str]:
    """Pre-flight: one line per beta whose transition the sigma^2 grid may miss.
    The theory puts it at lambda_max / beta; small networks often collapse below it
    (their units die), rarely far above. A grid holds it when it reaches from
    ``REACH[0]`` to ``REACH[1]`` x lambda_max / beta (with sampled sigma^2 on both
    sides, as the fit needs); the line names the grid's range and the
    ``PLACE`` range that would hold it, with the grid cell's half-width there."""
    values = np.sort(np.asarray(sigma2, np.float64))
    lines = []
    for beta in sorted(set(betas)):
        if beta <= 0:
            continue
        centre = lambda_max / beta
        if values[0] <= REACH[0] * centre and values[-1] >= REACH[1] * centre:
            continue
        lo, hi = PLACE[0] * centre, PLACE[1] * centre
        lines.append(
            f"beta = {beta:g}: the theory puts the transition at sigma^2 = "
            f"{centre:.4g} (lambda_max / beta), but the grid's sigma^2 "
            f"[{values[0]:.4g}, {values[-1]:.4g}] does not reach from "
            f"{REACH[0] * centre:.4g} to {REACH[1] * centre:.4g}: the transition may "
            f"lie outside it; a grid over [{lo:.4g}, {hi:.4g}] holds it (or let "
            "`phasevae locate` place the grid)"
        )
    return lines


def cell_half_width(sigma2, value: float) -> float | None:
    """Half the width, in ln sigma^2 (~ relative), of the grid cell holding
    ``value``; None outside the grid."""
    u = np.log(np.sort(np.asarray(sigma2, np.float64)))
    i = np.searchsorted(u, np.log(value))
    if i == 0 or i == len(u):
        return None
    return float(u[i] - u[i - 1]) / 2


def reading_thresholds(covariance, state_noise: float) -> np.ndarray:
    """A VRNN's per-step criterion when its state reads x_t + sqrt(s) n_t, n_t
    standard normal (``grid.state_noise`` s; docs/science.md, 'Recurrent latents'):
    step t's latent leaves the collapsed state once beta sigma^2 < theta_t,

        theta_t = sum_{j >= t} Cov(r_j, r_t)^2 / Var(r_t),

    r_j = x_j - E[x_j | y_1 .. y_{j-1}] the part of x_j the state cannot predict from
    its noisy readings y. The j = t term is r_t's variance D_t(s); the others are
    what z_t, carried forward by the state, adds to later steps' predictions. At
    s = 0 the r_j are the innovations, uncorrelated, and theta_t = D_t.

    Args:
      covariance: (T, T) the covariance of x_1 .. x_T (population, centred).
    Returns:
      (T,) theta_t in step order.
    """
    c = np.asarray(covariance, np.float64)
    t = c.shape[0]
    # r = A x + B n: rows of [A B] act on (x, n), whose covariance is diag(C, I)
    a, b = np.eye(t), np.zeros((t, t))
    for j in range(1, t):
        past = c[:j, :j] + state_noise * np.eye(j)
        gain = np.linalg.lstsq(past, c[:j, j], rcond=None)[0]
        a[j, :j] = -gain
        b[j, :j] = -np.sqrt(state_noise) * gain
    cov_r = a @ c @ a.T + b @ b.T
    d = np.diag(cov_r)
    gain2 = np.triu(cov_r) ** 2  # row t, column j >= t: Cov(r_t, r_j)^2
    return np.where(d > 0, gain2.sum(axis=1) / np.where(d > 0, d, 1.0), 0.0)


def curve_eigenvalues(spectrum: dict, curve: dict) -> np.ndarray:
    """The descending values whose i-th over the curve's weight (:func:`weight`) is
    where its i-th latent dim collapses: the stored spectrum; for a VRNN curve with
    ``state_noise`` > 0 its :func:`reading_thresholds`; for a curve of a
    ``grid.context`` axis the spectrum of its head of reach k, as the data stored
    it (``reach_eigenvalues``: k predecessors, a radius-k mask, a GRU; 0: no head),
    or in a run made before those were stored, of the innovations given k
    predecessors (:func:`phasevae.data.innovation_matrix`)."""
    ev = np.asarray(spectrum["eigenvalues"], np.float64)
    k = int(curve.get("context", -1))
    by_reach = spectrum.get("reach_eigenvalues")
    if k >= 0 and by_reach is not None:
        return np.asarray(by_reach[str(k)], np.float64)
    if "covariance" not in spectrum:
        return ev
    c = np.asarray(spectrum["covariance"], np.float64)
    s = float(curve.get("state_noise", 0.0))
    if s > 0:
        return np.sort(reading_thresholds(c, s))[::-1]
    if k >= 0:
        m = innovation_matrix(c, k)
        return np.linalg.eigvalsh(m.T @ c @ m)[::-1].clip(min=0.0)
    return ev


def weight(curve: dict) -> float:
    """The KL weight the criterion compares sigma^2 with: beta, or for a ladder
    beta min(1, kappa), its information going to the layer of cheapest KL
    (docs/science.md, 'Hierarchical latents')."""
    return float(curve.get("beta", 1.0)) * min(1.0, curve.get("top_kl_weight", 1.0))
