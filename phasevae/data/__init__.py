"""Datasets and their covariance spectrum.

Every source returns a :class:`Dataset`: a float32 array of shape (n, N) exactly as the
model sees it (after normalisation), a fixed evaluation subset, and the eigenvalues of
its covariance, which the theory needs (docs/science.md: the collapse criterion is
beta * sigma^2 > lambda_max of the data *as the model sees it*).

Sources: ``synthetic`` (a given spectrum, Gaussian or not), ``digits`` (scikit-learn's
8x8 digits), ``patches`` (16x16 grayscale patches of the photographs shipped inside
scikit-image), ``cifar10`` (the official archives, read by :mod:`phasevae.data.cifar`)
``array`` (the user's .npy, .npz, .csv or .parquet, read by
:mod:`phasevae.data.arrays`) and ``text`` (windows of characters of Python's own
docstrings, :mod:`phasevae.data.text`).

The package (``arrays``: the user's files; ``cifar``: the CIFAR-10 archives;
``text``: the character corpus; ``series``: matplotlib's sample series;
``relaxation``: a categorical latent's factor on
the criterion; ``glm``: an autoregressive head's fit for a likelihood other than the
Gaussian) may import ``phasevae.spec``, ``phasevae.errors`` and
``phasevae.safeio`` only.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import scipy.linalg

from phasevae.data import glm
from phasevae.data.arrays import load_array, refuse_beyond_memory
from phasevae.data.relaxation import latent_factor
from phasevae.data.series import series_windows
from phasevae.data.text import text_windows
from phasevae.errors import DataError, optional
from phasevae.spec import MAX_DISPERSION, DataSpec, axis_values, stack_offsets

# scikit-image's sample photographs that ship inside its wheel (no download), all
# natural scenes or textures; colour ones are converted with the ITU-R 601 luma
PATCH_IMAGES = (
    "astronaut",
    "camera",
    "chelsea",
    "coffee",
    "rocket",
    "grass",
    "gravel",
    "brick",
    "moon",
)
PATCH, PATCH_STRIDE = 16, 8
COMPONENTS_STORED = 8  # principal components kept in meta.json for image data
# a learned negative binomial dispersion's fit (marginal_dispersion): its smallest r
# and the bisection's steps in ln r (2^-48 of the range: float64's resolution)
MIN_DISPERSION, BISECTIONS = 1e-6, 48


@dataclass(frozen=True)
class Dataset:
    """Training data and its spectrum.

    Attributes:
      x: (n, N) float32, normalised training data.
      eval_x: (n_eval, N) float32, a fixed subset of ``x`` used for every evaluation.
      eigenvalues: (N,) float64, descending eigenvalues of the covariance of ``x``
        (population covariance, divisor n: the model fits the empirical distribution).
      description: one line saying what the data is.
      components: (N, c) leading eigenvectors, kept for image data (else None).
      image_shape: (h, w) when each row is an image, else None.
    """

    x: np.ndarray
    eval_x: np.ndarray
    eigenvalues: np.ndarray
    description: str
    components: np.ndarray | None = None
    image_shape: tuple[int, ...] | None = field(default=None)
    # per feature, 1 / sqrt(the likelihood's variance at the data mean), or for the
    # categorical the (N, N) matrix doing it per position: the spectrum is of the
    # covariance whitened by it (None: the Gaussian's, unwhitened); for an
    # autoregressive decoder the (N, N) matrix taking x to its innovations
    whiten: np.ndarray | None = None
    # the (N, N) covariance of x for a VRNN, from which the analysis finds each
    # curve's criterion (at any state noise:
    # phasevae.analysis.theory.curve_eigenvalues); else None
    covariance: np.ndarray | None = None
    # a grid.context axis: {reach k: the descending eigenvalues whose top is the
    # criterion of the head of that reach}; else None
    reach_eigenvalues: dict[int, np.ndarray] | None = None

    def fingerprint(self) -> dict:
        """The identity of the data the models see (after loading and
        normalisation): the SHA-256 of the training array's bytes, its shape and
        dtype, and lambda_max. A run records it when it starts and compares it
        whenever it is resumed, extended or merged: a file replaced (or a generator
        or package that changed its output) is another data set."""
        x = np.ascontiguousarray(self.x)
        return {
            "sha256": hashlib.sha256(memoryview(x).cast("B")).hexdigest(),  # no copy
            "shape": list(x.shape),
            "dtype": str(x.dtype),
            "lambda_max": float(self.eigenvalues[0]),
        }

    def spectrum(self) -> dict:
        """JSON-ready summary stored in the run's meta.json."""
        ev = [float(v) for v in self.eigenvalues]
        out = {
            "eigenvalues": ev,
            "lambda_max": ev[0],
            # of the evaluation subset, on which collapse_eigenvalue is measured
            "lambda_max_eval": top_eigenvalue(whitened(self.eval_x, self.whiten)),
            "trace": float(np.sum(self.eigenvalues)),
            "samples": int(self.x.shape[0]),
            "dim": int(self.x.shape[1]),
            "description": self.description,
        }
        if self.covariance is not None:
            out["covariance"] = self.covariance.tolist()
        if self.reach_eigenvalues is not None:
            out["reach_eigenvalues"] = {
                str(k): [float(v) for v in ev]
                for k, ev in self.reach_eigenvalues.items()
            }
        if self.image_shape is not None and self.components is not None:
            out["image_shape"] = list(self.image_shape)
            out["components"] = self.components.T.round(6).tolist()
        return out


def load_dataset(
    spec: DataSpec,
    likelihood: str = "gaussian",
    dispersion: float = 0.0,
    categories: int = 0,
    context: int = 0,
    recurrent: bool = False,
    mask: int = 0,
    factor: float = 1.0,
    learned_dispersion: bool = False,
    mask_layers: int = 1,
    reaches: tuple[int, ...] = (),
) -> Dataset:
    """Build the dataset a spec describes, for a decoder of ``likelihood``
    (``model.likelihood``: its data must be 0s and 1s, counts or token ids below
    ``categories``, which become one-hot codes, and the spectrum is of the
    covariance whitened by the likelihood's variances, :func:`whitening`); with an
    autoregressive head, the spectrum is of the innovations given ``context``
    predecessors, or given the whole past for a ``recurrent`` (GRU) head, or of
    the innovations of a ``mask`` head of ``mask_layers`` (:func:`masked_innovations`
    on the stack's receptive field, the best shared linear prediction). The spectrum
    is scaled by the latent's ``factor`` rho (a categorical latent's,
    :func:`phasevae.data.relaxation.latent_factor`), so that its lambda_max is the
    criterion in every case. ``reaches`` (a ``grid.context`` axis): the spectrum
    of the head of each reach k too (k predecessors, a radius-k mask, or for a GRU
    the whole past at any k > 0; 0: no head), in ``reach_eigenvalues``.

    Raises:
      DataError: missing or malformed file, wrong shape, too few samples, NaN or inf,
        more data than memory allows.
    """
    x, what, pixel_range, image_shape = _read_source(spec)
    x = normalize(check_array(x, what), spec.normalize, pixel_range)
    if likelihood == "categorical":
        x = one_hot(x, categories, what)
        what += f", one-hot ({categories} categories per position)"
    check_scale(x, what, spec.normalize)
    if spec.normalize != "none":
        what += f", normalize={spec.normalize}"
    order = np.random.default_rng(spec.seed).permutation(x.shape[0])
    eval_x = x[np.sort(order[: min(spec.eval_samples, x.shape[0])])]
    if learned_dispersion:
        dispersion = marginal_dispersion(check_counts(x, likelihood, what))
        what += (
            ", r learned: each feature's maximum-likelihood r at the mean "
            f"(geometric mean {math.exp(np.mean(np.log(dispersion))):.4g})"
        )
    if recurrent:  # a GRU head: at best the linear prediction from the whole past
        context = x.shape[1] - 1

    def spectrum_map(context: int, mask: int) -> tuple[np.ndarray | None, str]:
        head = (context, mask, mask_layers, image_shape)
        return criterion_map(x, likelihood, dispersion, categories, factor, what, *head)

    whiten, said = spectrum_map(context, mask)
    what += said
    values, vectors = covariance_eig(whitened(x, whiten))
    check_spread(float(values[0]), what, spec.normalize)
    # a grid.context axis: the criterion of each reach, each head's spectrum found
    # once (the model's own head is the largest reach's; every GRU width's is one)
    spectra = {(context, mask): values}
    by_reach = {}
    for k in reaches:
        # a GRU of any width >= 1 reads the whole past
        head = (0, k) if mask else (context if recurrent and k else k, 0)
        if head not in spectra:
            spectra[head] = covariance_eig(whitened(x, spectrum_map(*head)[0]))[0]
        by_reach[k] = spectra[head]
    return Dataset(
        x=x,
        eval_x=eval_x,
        eigenvalues=values,
        description=what,
        components=vectors[:, :COMPONENTS_STORED] if image_shape else None,
        image_shape=tuple(int(v) for v in image_shape) if image_shape else None,
        whiten=whiten,
        reach_eigenvalues=by_reach or None,
    )


def criterion_map(
    x: np.ndarray,
    likelihood: str,
    dispersion,
    categories: int,
    factor: float,
    what: str,
    context: int = 0,
    mask: int = 0,
    mask_layers: int = 1,
    image_shape=None,
) -> tuple[np.ndarray | None, str]:
    """The map whose covariance spectrum is the criterion (None: x itself), and
    what to add to the data's description: x whitened by the likelihood's
    variances at the mean (:func:`whitening`), or an autoregressive head's
    innovations or score (:func:`head_whitening`), times the latent's factor."""
    whiten = whitening(x, likelihood, what, dispersion, categories)
    said = ""
    if whiten is not None:
        said += f"; spectrum whitened by the {likelihood} variances at the mean"
    if context or mask:
        whiten, head = head_whitening(
            x, likelihood, dispersion, context, mask, mask_layers, image_shape, what
        )
        said += head
    if factor != 1.0:
        scale = math.sqrt(factor)
        whiten = np.full(x.shape[1], scale) if whiten is None else whiten * scale
        said += f"; spectrum times the latent's factor rho = {factor:.4g}"
    return whiten, said


def _read_source(spec: DataSpec) -> tuple[np.ndarray, str, tuple | None, tuple | None]:
    """The raw rows of ``data.source``, their description, pixel range (images of
    a known range, else None) and image shape (h, w) (None for tables)."""
    pixel_range, image_shape = None, None
    made = {"synthetic": len(spec.eigenvalues), "text": spec.window}
    made["series"] = spec.window
    if spec.source in made:
        check_made(spec.samples, made[spec.source], spec.source)
    if spec.source == "synthetic":
        x = synthetic(spec.eigenvalues, spec.samples, spec.seed, spec.distribution)
        what = (
            f"synthetic {spec.distribution}, N={len(spec.eigenvalues)}, "
            f"n={spec.samples}, eigenvalues {list(spec.eigenvalues)}, seed {spec.seed}"
        )
    elif spec.source == "digits":
        x, pixel_range, image_shape = digits(), (0.0, 1.0), (8, 8)
        what = "scikit-learn digits (8x8, pixels / 16)"
    elif spec.source == "patches":
        x, pixel_range = patches(spec.samples, spec.seed), (0.0, 255.0)
        image_shape = (PATCH, PATCH)
        what = (
            f"{x.shape[0]} grayscale {PATCH}x{PATCH} patches (stride {PATCH_STRIDE}) "
            f"of scikit-image's {', '.join(PATCH_IMAGES)}"
        )
    elif spec.source == "cifar10":
        from phasevae.data.cifar import load_cifar10

        images, _ = load_cifar10(spec.path, spec.split)
        x, pixel_range, image_shape = gray16(images), (0.0, 255.0), (16, 16)
        what = f"CIFAR-10 {spec.split} ({spec.path}), grayscale 16x16 (N=256)"
    elif spec.source == "text":
        x, what = text_windows(spec.alphabet, spec.window, spec.samples, spec.seed)
    elif spec.source == "series":
        x, what = series_windows(spec.series, spec.window, spec.samples, spec.seed)
    elif spec.source == "array":
        raw = load_array(Path(spec.path), spec.key)
        if raw.ndim in (3, 4):
            image_shape = raw.shape[1:3]
            raw = raw.reshape(raw.shape[0], -1)
        if raw.dtype == np.uint8:
            pixel_range = (0.0, 255.0)
        x = raw
        what = f"array file {spec.path}" + (f" [{spec.key}]" if spec.key else "")
    else:  # spec validation keeps this unreachable
        raise DataError(f"unknown data.source {spec.source!r}")
    return x, what, pixel_range, image_shape


def check_made(samples: int, dim: int, source: str) -> None:
    """Refuse to make ``samples`` rows of ``dim`` values (a generated source:
    synthetic, text, series) when their float64 draw and float32 copies would not
    fit in memory: a message, not a MemoryError.

    Raises:
      DataError: naming data.samples and what it would need.
    """
    refuse_beyond_memory(
        (8 + 3 * 4) * samples * dim,
        f'data.samples = {samples:,} rows of {dim} values (data.source = "{source}")',
        "lower data.samples",
    )


def load_for_model(spec) -> Dataset:
    """The data of a spec (a :class:`phasevae.spec.Spec`) as its model sees them:
    :func:`load_dataset` with the model's likelihood, head and latent."""
    m = spec.model
    ks = axis_values(spec.grid.context)
    reaches = tuple(int(k) for k in ks) if ks != (-1.0,) else ()
    data = load_dataset(
        spec.data,
        m.likelihood,
        m.dispersion,
        m.categories,
        m.context,
        m.recurrent > 0 or m.kind == "vrnn",  # a state that reads the whole past
        m.mask,
        latent_factor(m.latent, m.latent_categories, m.estimator, m.temperature),
        m.learned_dispersion,
        m.mask_layers,
        reaches,
    )
    if m.kind == "vrnn":  # a criterion per curve from the covariance
        cov = np.cov(data.x.T.astype(np.float64), bias=True)
        data = replace(data, covariance=np.atleast_2d(cov))
    return data


def head_whitening(
    x: np.ndarray,
    likelihood: str,
    dispersion,
    context: int,
    mask: int,
    mask_layers: int,
    image_shape,
    what: str,
) -> tuple[np.ndarray, str]:
    """The map whose spectrum is an autoregressive head's criterion, and what to
    add to the data's description: for the Gaussian, the innovations of the best
    linear prediction from ``context`` predecessors (:func:`innovations`) or from
    a masked head's receptive field (:func:`masked_innovations`); for another
    likelihood, the score the best such generalised linear prediction leaves
    (:mod:`phasevae.data.glm`)."""
    reach = stack_offsets(mask, mask_layers) if mask else []
    left = "innovations" if likelihood == "gaussian" else f"{likelihood} score"
    if mask:
        check_images(x, image_shape, what)
        said = f"; spectrum of the {left} of a radius-{mask} masked convolution"
        if mask_layers > 1:
            said += f" stack of {mask_layers} layers (the best shared linear "
            said += f"prediction from its {len(reach)} pixels)"
    else:
        check_context(x, context, what)
        said = f"; spectrum of the {left} given {context} predecessors"
    if likelihood == "gaussian":
        if mask:
            return masked_innovations(x, image_shape, reach, what), said
        return innovations(x, context, what), said
    if mask:
        bias, weights = glm.masked_fit(x, image_shape, reach, likelihood, dispersion)
        eta = bias + glm.masked_prediction(x, image_shape, reach, weights)
    else:
        bias, weights = glm.context_fit(x, context, likelihood, dispersion)
        eta = bias + np.einsum("nik,ik->ni", glm.lagged(x, context), weights)
    said += " (at the best generalised linear prediction)"
    return glm.score_spectrum_map(x, eta, likelihood, dispersion), said


def check_context(x: np.ndarray, context: int, what: str) -> None:
    """Refuse a context of N or more features (the first has none before it).

    Raises:
      DataError: naming the context and the data's features.
    """
    n = x.shape[1]
    if context >= n:
        raise DataError(
            f"{what}: model.context = {context} must be below the data's {n} "
            "features (the first has no predecessors)"
        )


def check_images(x: np.ndarray, image_shape, what: str) -> None:
    """Refuse data that are not single-channel images, for a masked head.

    Raises:
      DataError: naming what the data are.
    """
    dim = x.shape[1]
    if not image_shape or dim != image_shape[0] * image_shape[1]:
        raise DataError(
            f"{what}: model.mask (a masked convolution over an image) needs images "
            f"of one channel (data of shape (n, h, w), or digits, patches, cifar10); "
            f"these have {dim} features"
            + (f" for {tuple(image_shape)} images" if image_shape else ", no images")
        )


def innovations(x: np.ndarray, context: int, what: str = "the data") -> np.ndarray:
    """The (N, N) matrix (I - B)^T that takes centred rows of ``x`` to their
    innovations: feature i less its best linear prediction (least squares on ``x``)
    from the ``context`` features before it, B's row i holding those coefficients.
    What an autoregressive decoder of that context leaves for z to explain: its
    collapse is at beta sigma^2 = lambda_max of the innovations' covariance
    (docs/science.md, 'Autoregressive decoders').

    Raises:
      DataError: a context of N or more features (the first has none before it).
    """
    check_context(x, context, what)
    return innovation_matrix(np.cov(x, rowvar=False, dtype=np.float64), context)


def innovation_matrix(covariance: np.ndarray, context: int) -> np.ndarray:
    """:func:`innovations`' matrix from the (N, N) covariance of x (any divisor:
    the coefficients do not depend on it); context 0 gives the identity."""
    n = covariance.shape[0]
    c = np.asarray(covariance, np.float64).reshape(n, n)
    m = np.eye(n)
    for i in range(1, n):
        before = np.arange(max(0, i - context), i)
        if not len(before):
            continue
        coef = np.linalg.lstsq(c[np.ix_(before, before)], c[before, i], rcond=None)[0]
        m[before, i] = -coef
    return m


def masked_weights(x: np.ndarray, image_shape, offsets) -> np.ndarray:
    """The least-squares weights, one per offset (dy, dx) of ``offsets`` (a mask,
    :func:`phasevae.spec.mask_offsets`, or a stack's receptive field,
    :func:`phasevae.spec.stack_offsets`), predicting every pixel of the centred
    images ``x`` (n, h * w) from those neighbours (zero outside the image),
    pooled over pixels and rows: a linear masked-convolution head's at collapse.
    Solved from the normal equations, summed a few images at a time (the
    neighbours of all at once are offsets times x)."""
    xc = (x - x.mean(axis=0)).astype(np.float64)
    o = len(offsets)
    gram, moment = np.zeros((o, o)), np.zeros(o)
    for rows in glm.image_chunks(xc):
        views = glm.neighbours(xc[rows], image_shape, offsets).reshape(-1, o)
        gram += views.T @ views
        moment += views.T @ xc[rows].reshape(-1)
    return np.linalg.lstsq(gram, moment, rcond=None)[0]


def masked_innovations(
    x: np.ndarray, image_shape, offsets, what: str = "the data"
) -> np.ndarray:
    """The (N, N) matrix (I - B)^T that takes centred rows of ``x`` (images of
    ``image_shape``, one channel) to the innovations of a linear masked-convolution
    head reading ``offsets`` (``model.mask``'s, :func:`phasevae.spec.stack_offsets`):
    B applies :func:`masked_weights` at every pixel, x zero outside the image. At
    collapse, where z explains nothing, that is what the head learns, and the
    residual is what is left for z.

    Raises:
      DataError: data that are not single-channel images.
    """
    check_images(x, image_shape, what)
    dim = x.shape[1]
    h, w = image_shape[:2]
    weights = masked_weights(x, image_shape, offsets)
    b = np.zeros((dim, dim))
    rows, cols = np.indices((h, w))
    for (dy, dx), weight in zip(offsets, weights, strict=True):
        inside = (rows + dy >= 0) & (cols + dx >= 0) & (cols + dx < w)
        p = (rows * w + cols)[inside]
        b[p, p + dy * w + dx] = weight
    return (np.eye(dim) - b).T


def one_hot(tokens: np.ndarray, categories: int, what: str) -> np.ndarray:
    """Token ids (n, B) in 0 .. ``categories`` - 1 as one-hot codes (n, B x K),
    position by position.

    Raises:
      DataError: a value that is not such a token id.
    """
    bad = (tokens < 0) | (tokens >= categories) | (tokens != np.floor(tokens))
    if bad.any():
        row, col = (int(i[0]) for i in np.nonzero(bad))
        raise DataError(
            f'{what}: model.likelihood = "categorical" needs token ids 0 .. '
            f"{categories - 1} (model.categories = {categories}); row {row}, column "
            f"{col} is {float(tokens[row, col]):g}"
        )
    codes = np.eye(categories, dtype=np.float32)[tokens.astype(np.int64)]
    return codes.reshape(tokens.shape[0], -1)


def whitened(x: np.ndarray, whiten: np.ndarray | None) -> np.ndarray:
    """``x`` whitened by :func:`whitening`'s answer (or taken to its innovations
    by :func:`innovations`; unchanged for None)."""
    if whiten is None:
        return x
    return x * whiten if whiten.ndim == 1 else x @ whiten


def whitening(
    x: np.ndarray,
    likelihood: str,
    what: str,
    dispersion: float | np.ndarray = 0.0,
    categories: int = 0,
) -> np.ndarray | None:
    """Per feature 1 / sqrt(v), v the likelihood's variance at the data mean m:
    m (1 - m) for the Bernoulli, m for the Poisson, m + m^2 / r for the negative
    binomial of dispersion r (one for all features or one each) (0 for a constant
    feature, which has no covariance to whiten); for the categorical (``x``
    one-hot in blocks of ``categories``) the (N, N) block-diagonal matrix V^{+1/2},
    V = diag(m) - m m^T per position (a position's covariance); None for the
    Gaussian. The collapse transition of a decoder whose output is the natural
    parameter is at beta sigma^2 = lambda_max of the covariance whitened by it
    (docs/science.md, 'Other likelihoods').

    Raises:
      DataError: values the likelihood cannot take (not 0 or 1; not counts).
    """
    if likelihood == "gaussian":
        return None
    if likelihood == "categorical":
        return _block_whitening(x.mean(axis=0, dtype=np.float64), categories)
    m = check_counts(x, likelihood, what).mean(axis=0, dtype=np.float64)
    v = m * (1.0 - m) if likelihood == "bernoulli" else m
    if likelihood == "negative_binomial":
        v = m + m**2 / dispersion
    return np.where(v > 0, 1.0 / np.sqrt(np.where(v > 0, v, 1.0)), 0.0).astype(
        np.float32
    )


def check_counts(x: np.ndarray, likelihood: str, what: str) -> np.ndarray:
    """``x`` itself, once it holds values the Bernoulli (0s and 1s) or a count
    likelihood (integers >= 0) can take.

    Raises:
      DataError: naming the first row and column that cannot be.
    """
    if likelihood == "bernoulli":
        bad = (x != 0) & (x != 1)
        need = "0s and 1s"
    else:
        bad = (x < 0) | (x != np.floor(x))
        need = "counts (integers >= 0)"
    if bad.any():
        row, col = (int(i[0]) for i in np.nonzero(bad))
        raise DataError(
            f'{what}: model.likelihood = "{likelihood}" needs {need}; row {row}, '
            f"column {col} is {float(x[row, col]):g}"
        )
    return x


def marginal_dispersion(x: np.ndarray) -> np.ndarray:
    """Per feature of counts ``x`` (n, N), the negative binomial's maximum-likelihood
    r with its mean at the feature's mean m: what a learned dispersion settles at in
    the collapsed state, where the decoder predicts m for every example. It solves
    mean_n psi(x_n + r) - psi(r) + ln(r / (r + m)) = 0, the log-likelihood's
    derivative in r at that mean, by bisection in ln r. The root exists when the
    sample variance exceeds m; otherwise (no overdispersion, or a constant
    feature) the likelihood rises all the way to the Poisson and r is
    MAX_DISPERSION."""
    from scipy.special import digamma

    x = np.asarray(x, np.float64)
    n = x.shape[0]
    m = x.mean(axis=0)
    top = int(x.max(initial=0)) + 1
    if top < n:  # the values' histogram per feature: (top, N) weights
        values = np.arange(top, dtype=np.float64)[:, None]
        cols = np.broadcast_to(np.arange(x.shape[1]), x.shape)
        weights = np.zeros((top, x.shape[1]))
        np.add.at(weights, (x.astype(np.int64), cols), 1.0)
    else:
        values, weights = x, np.ones_like(x)

    def slope(log_r):  # the log-likelihood's derivative in r, per example
        r = np.exp(log_r)
        psi = np.sum(weights * digamma(values + r), axis=0) / n
        return psi - digamma(r) + np.log(r / (r + m))

    lo = np.full(x.shape[1], math.log(MIN_DISPERSION))
    hi = np.full(x.shape[1], math.log(MAX_DISPERSION))
    poisson = (slope(hi) >= 0) | (m == 0)
    for _ in range(BISECTIONS):
        mid = 0.5 * (lo + hi)
        rising = slope(mid) > 0
        lo, hi = np.where(rising, mid, lo), np.where(rising, hi, mid)
    return np.where(poisson, MAX_DISPERSION, np.exp(0.5 * (lo + hi)))


def _block_whitening(m: np.ndarray, categories: int) -> np.ndarray:
    """blockdiag over positions of (diag(m_b) - m_b m_b^T)^{+1/2}: the inverse
    square root on the range (a category never seen and the all-ones direction, in
    which one-hot codes do not vary, are left out)."""
    out = np.zeros((m.size, m.size), np.float64)
    for start in range(0, m.size, categories):
        mb = m[start : start + categories]
        e, v = np.linalg.eigh(np.diag(mb) - np.outer(mb, mb))
        keep = e > 1e-9
        inv = np.where(keep, 1.0 / np.sqrt(np.where(keep, e, 1.0)), 0.0)
        end = start + categories
        out[start:end, start:end] = (v * inv) @ v.T
    return out.astype(np.float32)


def synthetic(
    eigenvalues, samples: int, seed: int, distribution: str = "gaussian"
) -> np.ndarray:
    """Zero-mean samples whose covariance has the given eigenvalues.

    x = Q (sqrt(lambda) * s): s has independent zero-mean, unit-variance components
    (``gaussian``; ``laplace``, heavy-tailed; ``uniform`` on [-sqrt 3, sqrt 3];
    ``bimodal``, +-0.95 plus Gaussian noise of sd sqrt(1 - 0.95^2), two clusters per
    axis), and Q is a random rotation (Haar, from ``seed``), so no axis is special.
    Only the covariance enters the collapse criterion; the others test that claim.

    Returns:
      (samples, N) float32.
    """
    lam = np.asarray(eigenvalues, np.float64)
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((lam.size, lam.size)))
    q *= np.sign(np.diag(r))  # makes the rotation Haar-distributed
    shape = (samples, lam.size)
    if distribution == "gaussian":
        s = rng.standard_normal(shape)
    elif distribution == "laplace":
        s = rng.laplace(0.0, 1.0 / np.sqrt(2.0), shape)
    elif distribution == "uniform":
        s = rng.uniform(-np.sqrt(3.0), np.sqrt(3.0), shape)
    elif distribution == "bimodal":
        m = 0.95
        s = rng.choice([-m, m], shape) + np.sqrt(1 - m**2) * rng.standard_normal(shape)
    else:  # spec validation keeps this unreachable
        raise DataError(f"unknown data.distribution {distribution!r}")
    return ((s * np.sqrt(lam)) @ q.T).astype(np.float32)


def digits() -> np.ndarray:
    """scikit-learn's 8x8 handwritten digits (shipped in its wheel), pixels / 16 so
    they lie in [0, 1]: (1797, 64)."""
    sets = optional("sklearn.datasets", "scikit-learn", 'data.source = "digits"')
    return (sets.load_digits().data / 16.0).astype(np.float32)


def patches(samples: int, seed: int) -> np.ndarray:
    """16x16 grayscale patches cut on a stride-8 grid from every image in
    PATCH_IMAGES, then ``samples`` of them drawn without replacement (all if fewer).

    Returns:
      (n, 256) float32 in pixel units (0 .. 255).
    """
    images = optional("skimage.data", "scikit-image", 'data.source = "patches"')
    cut = []
    for name in PATCH_IMAGES:
        img = np.asarray(getattr(images, name)(), np.float32)
        if img.ndim == 3:
            img = luma(img[..., :3])
        windows = np.lib.stride_tricks.sliding_window_view(img, (PATCH, PATCH))
        cut.append(windows[::PATCH_STRIDE, ::PATCH_STRIDE].reshape(-1, PATCH * PATCH))
    allp = np.concatenate(cut)
    rng = np.random.default_rng(seed)
    take = np.sort(rng.choice(len(allp), min(samples, len(allp)), replace=False))
    return allp[take]


def luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma of RGB pixels on the last axis: 0.299 R + 0.587 G + 0.114 B."""
    return rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def gray16(images: np.ndarray) -> np.ndarray:
    """The paper's CIFAR-10 preprocessing: luma, then 2x2 mean pooling 32 -> 16.

    Args:
      images: (n, 32, 32, 3) uint8 RGB.
    Returns:
      (n, 256) float32 in pixel units (0 .. 255).
    """
    n = images.shape[0]
    return luma(images).reshape(n, 16, 2, 16, 2).mean(axis=(2, 4)).reshape(n, 256)


def check_array(x: np.ndarray, what: str) -> np.ndarray:
    """Reject arrays that cannot be training data; return float32."""
    if x.dtype.kind not in "fiub":
        raise DataError(f"{what}: data must be numeric, got dtype {x.dtype}")
    if x.ndim != 2:
        raise DataError(
            f"{what}: data must be 2-D (samples, features) or images (n, h, w[, c]), "
            f"got shape {x.shape}"
        )
    if x.shape[0] < 2:
        raise DataError(f"{what}: need at least 2 samples, got {x.shape[0]}")
    if x.shape[1] < 1:
        raise DataError(f"{what}: data has no features")
    side = min(x.shape)  # the covariance, or the Gram matrix of wide data
    centred = x.size if x.shape[0] < x.shape[1] else min(x.size, CHUNK_VALUES)
    need = 3 * 8 * side**2 + 8 * centred  # it, its eigenvectors, workspace; centred x
    refuse_beyond_memory(
        need,
        f"{what}: {x.shape[0]:,} samples x {x.shape[1]:,} features as a "
        f"{side:,} x {side:,} spectrum",
        "reduce the features or the samples first",
    )
    out = np.empty(x.shape, np.float32)
    count, first = 0, None
    for rows in row_chunks(x):  # a memory-mapped file is read a chunk at a time
        out[rows] = x[rows].astype(np.float32)
        bad = ~np.isfinite(out[rows])
        count += int(bad.sum())
        if first is None and count:
            row, col = np.argwhere(bad)[0]
            first = (rows.start + row, col)
    if count:
        raise DataError(
            f"{what}: {count} NaN or inf values (first at row {first[0]}, "
            f"column {first[1]}); clean the data first"
        )
    return out


CHUNK_VALUES = 1 << 24  # values converted at a time (128 MiB as float64)


def row_chunks(x: np.ndarray):
    """Slices of ``x``'s rows of about CHUNK_VALUES values each (one slice for data
    of up to 16 M values, whose results are those of whole-array numpy)."""
    step = max(1, CHUNK_VALUES // max(1, x.shape[1]))
    for start in range(0, x.shape[0], step):
        yield slice(start, start + step)


MAX_ABS = 1e6  # larger values (after normalize) overflow float32 training


def check_scale(x: np.ndarray, what: str, how: str) -> None:
    """Refuse data on a scale that float32 training cannot handle (squared errors and
    their gradients overflow), saying which ``normalize`` fixes it."""
    top = max(float(x.max()), -float(x.min()))  # no |x| copy
    if not np.isfinite(top) or top > MAX_ABS:
        raise DataError(
            f"{what}: values up to {top:.3g} after normalize = '{how}'; training in "
            f"float32 cannot work on that scale (at most {MAX_ABS:.0e}): set "
            "data.normalize = 'standardize' for a table or 'unit' for images"
        )


MIN_VARIANCE = 1e-12  # a spread below 1e-6 is a few float32 ulps of an O(1) output


def check_spread(lambda_max: float, what: str, how: str) -> None:
    """Refuse data that do not vary on a scale float32 training can resolve: every
    row the same, or a spread of a few ulps of the decoder's O(1) outputs, where the
    transition at beta sigma^2 = lambda_max would be read in rounding noise."""
    if not lambda_max >= MIN_VARIANCE:
        raise DataError(
            f"{what}: the data hardly vary (largest covariance eigenvalue "
            f"{lambda_max:.3g} after normalize = '{how}', below {MIN_VARIANCE:.0e}): "
            "identical rows leave nothing to encode; for a tiny scale set "
            "data.normalize = 'standardize' or rescale the data"
        )


def normalize(x: np.ndarray, how: str, pixel_range=None) -> np.ndarray:
    """``x`` (float32, from :func:`check_array`) normalised in place: ``none``;
    ``center`` (subtract each feature's mean); ``standardize`` (also unit variance per
    feature; constant features are only centred); ``global`` (one mean and one
    standard deviation for all features); ``unit`` (the pixel range, or the data's
    min..max when it has none, mapped to [-1, 1]). Statistics and arithmetic are in
    float64 (float32 squares of large raw values overflow), a chunk of rows at a
    time, so large data never has a float64 copy."""
    if how == "none":
        return x
    if how == "unit":
        lo, hi = pixel_range if pixel_range else (float(x.min()), float(x.max()))
        if hi <= lo:
            raise DataError("normalize = 'unit' needs data with more than one value")
        return _apply(x, lambda c: 2.0 * (c - lo) / (hi - lo) - 1.0)
    if how == "global":
        mean = _total(x, lambda c: c) / x.size
        std = np.sqrt(_total(x, lambda c: (c - mean) ** 2) / x.size)
        return _apply(x, lambda c: (c - mean) / (std if std > 0 else 1.0))
    n = x.shape[0]
    mean = _total(x, lambda c: c, axis=0) / n
    if how == "center":
        return _apply(x, lambda c: c - mean)
    shift = _total(x, lambda c: c - mean, axis=0) / n  # numpy's std, in two passes
    std = np.sqrt(_total(x, lambda c: (c - mean - shift) ** 2, axis=0) / n)
    return _apply(x, lambda c: (c - mean) / np.where(std > 0, std, 1.0))


def _total(x: np.ndarray, f, axis=None):
    """The sum of ``f`` of float64 chunks of ``x``'s rows (over ``axis``)."""
    return sum(f(x[rows].astype(np.float64)).sum(axis=axis) for rows in row_chunks(x))


def _apply(x: np.ndarray, f) -> np.ndarray:
    """``x`` with each chunk of rows replaced by ``f`` of it in float64."""
    for rows in row_chunks(x):
        x[rows] = f(x[rows].astype(np.float64)).astype(np.float32)
    return x


def covariance_eig(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Descending eigenvalues (N,) and eigenvectors, as columns, of the population
    covariance of ``x`` (n, N): all N eigenvectors when n >= N; for wide data
    (n < N) the N x N covariance (20,000 genes: 3.2 GB) is never formed: its nonzero
    eigenvalues are those of the n x n Gram matrix X X^T / n, the others are 0, and
    the n leading eigenvectors are X^T u / sqrt(n lambda) (N, n)."""
    n, dim = x.shape
    if n >= dim:
        values, vectors = np.linalg.eigh(_scatter(x) / n)
        return values[::-1].clip(min=0.0), vectors[:, ::-1]
    xc = x.astype(np.float64) - x.mean(axis=0, dtype=np.float64)
    values, u = np.linalg.eigh(xc @ xc.T / n)
    values, u = values[::-1].clip(min=0.0), u[:, ::-1]
    scale = np.sqrt(np.maximum(n * values, 1e-300))
    vectors = (xc.T @ u) / scale
    return np.concatenate([values, np.zeros(dim - n)]), vectors


def _scatter(x: np.ndarray) -> np.ndarray:
    """sum (x - mean)^T (x - mean) in float64, a chunk of rows at a time."""
    mean = x.mean(axis=0, dtype=np.float64)

    def part(rows):
        xc = x[rows].astype(np.float64) - mean
        return xc.T @ xc

    return sum(part(rows) for rows in row_chunks(x))


def top_eigenvalue(x: np.ndarray) -> float:
    """The largest eigenvalue of the population covariance of ``x`` (n, N), from
    the smaller of the covariance and the Gram matrix."""
    n, dim = x.shape
    if n >= dim:
        gram = _scatter(x)
    else:
        xc = x.astype(np.float64) - x.mean(axis=0, dtype=np.float64)
        gram = xc @ xc.T
    side = gram.shape[0]
    return float(
        scipy.linalg.eigh(gram / n, eigvals_only=True, subset_by_index=[side - 1] * 2)[
            0
        ]
    )


def covariance_spectrum(x: np.ndarray) -> np.ndarray:
    """Descending eigenvalues of the population covariance of ``x`` (n, N)."""
    return covariance_eig(x)[0]
