"""The cases of the validation suite (:mod:`phasevae.tools.validate`): data with a known
spectrum, chosen to be hard: Gaussian, Laplace, Student-t and bimodal factors; N from 4
to 256; flat tops, separated tops and power-law spectra; n from a few hundred to 10^5;
offset means; beta in {0.5, 1, 2}; the default and the paper architecture; real
tables that ship with scikit-learn; and one case per decoder likelihood (binary,
count and token data made from a low-rank natural parameter, binarised digits; a
negative binomial whose dispersion is learned too) and for the autoregressive
decoder (windows of a Gaussian AR(2) process), whose
criterion is lambda_max of the whitened covariance or of the innovations'; and one
per structured latent (a categorical latent, a ladder, a VRNN), scored against long
training.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from phasevae.errors import optional

PAPER = ((256, 128), (128, 256))
SMALL = ((64, 32), (32, 64))
GAUSS8 = [8.0, 2.0, 0.5, 0.125, 0.06, 0.04, 0.02, 0.01]  # gauss8's spectrum


@dataclass(frozen=True)
class Case:
    """One validation case. ``data(rng)`` returns the (n, N) array the model sees."""

    name: str
    description: str
    data: Callable[[np.random.Generator], np.ndarray]
    beta: float = 1.0
    latent_dim: int = 3
    arch: tuple[tuple[int, ...], tuple[int, ...]] = SMALL
    steps: int = 3000
    eval_every: int = 250
    batch_size: int = 128
    learning_rate: float = 2e-3
    points: int = 20
    seeds: tuple[int, ...] = (0,)
    gaussian: bool = False  # large-n Gaussian: the truth is lambda_max / beta
    model: tuple[tuple[str, object], ...] = ()  # model settings beside the arch


def _rotation(rng, n: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(n, n)))
    return q * np.sign(np.diag(r))


def factor_data(
    eigenvalues, n: int, kind: str = "gaussian", offset: float = 0.0
) -> Callable[[np.random.Generator], np.ndarray]:
    """Independent unit-variance factors (gaussian, laplace, student-t with 5 degrees
    of freedom, or bimodal +-1 with a little noise) scaled by sqrt(eigenvalue), in a
    random rotation, plus a constant ``offset`` on every feature."""
    ev = np.asarray(eigenvalues, np.float64)

    def make(rng):
        shape = (n, len(ev))
        if kind == "gaussian":
            f = rng.normal(size=shape)
        elif kind == "laplace":
            f = rng.laplace(size=shape) / math.sqrt(2)
        elif kind == "student_t":
            f = rng.standard_t(5, size=shape) / math.sqrt(5 / 3)
        elif kind == "bimodal":
            f = rng.choice([-1.0, 1.0], size=shape) + 0.3 * rng.normal(size=shape)
            f /= math.sqrt(1.09)
        else:
            raise ValueError(kind)
        return (f * np.sqrt(ev)) @ _rotation(rng, len(ev)).T + offset

    return make


def _sklearn(name: str, scale: str = "standardize"):
    def make(rng):
        sets = optional("sklearn.datasets", "scikit-learn", f"the case {name!r}")
        x = getattr(sets, f"load_{name}")().data.astype(np.float64)
        if scale == "standardize":
            return (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1.0)
        return x / 16.0  # digits: pixels 0..16 to [0, 1]

    return make


def natural_data(
    likelihood: str,
    n: int,
    dim: int,
    scales=(1.6, 1.0, 0.6),
    categories: int = 0,
    dispersion: float = 0.0,
) -> Callable[[np.random.Generator], np.ndarray]:
    """Data of a decoder ``likelihood`` from a low-rank natural parameter: eta = 2 f
    B^T, f Gaussian factors of standard deviations ``scales``, B orthonormal columns
    in a random rotation; x ~ Bernoulli(sigmoid(eta)), Poisson(exp(eta / 2 + 0.3)),
    or negative binomial of that mean and ``dispersion`` r (a Gamma-Poisson mixture);
    for the categorical, token ids (n, ``dim``) drawn from the softmax of eta's
    ``categories`` logits per position."""
    scales = np.asarray(scales, np.float64)

    def make(rng):
        width = dim * categories if likelihood == "categorical" else dim
        basis = np.linalg.qr(rng.normal(size=(width, len(scales))))[0]
        eta = rng.normal(size=(n, len(scales))) * scales @ basis.T * 2.0
        if likelihood == "categorical":
            logits = eta.reshape(n, dim, categories)
            p = np.exp(logits - logits.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            u = rng.random((n, dim, 1))
            return (u > np.cumsum(p, axis=-1)).sum(-1).astype(np.float64)
        u = rng.random((n, dim))
        if likelihood == "bernoulli":
            return (u < 1 / (1 + np.exp(-eta))).astype(np.float64)
        mean = np.exp(eta * 0.5 + 0.3)
        if likelihood == "negative_binomial":
            mean = rng.gamma(dispersion, mean / dispersion)
        return rng.poisson(mean).astype(np.float64)

    return make


def ar_data(
    phis, window: int, n: int, burn: int = 200
) -> Callable[[np.random.Generator], np.ndarray]:
    """``n`` windows of ``window`` consecutive values of x_t = sum_j phi_j x_{t-j} +
    e_t, e_t ~ N(0, 1), after ``burn`` values, scaled to unit variance overall (which
    keeps the covariance's shape)."""

    def make(rng):
        x = np.zeros((n, burn + window))
        for t in range(x.shape[1]):
            past = sum(p * x[:, t - 1 - j] for j, p in enumerate(phis) if t > j)
            x[:, t] = past + rng.normal(size=n)
        x = x[:, burn:]
        return x / x.std()

    return make


def _binary_digits(rng):
    sets = optional("sklearn.datasets", "scikit-learn", "the case 'binary_digits'")
    return (sets.load_digits().data > 8).astype(np.float64)


def _power_law(n_dims: int, top: float, exponent: float = 1.0) -> np.ndarray:
    return top * np.arange(1, n_dims + 1, dtype=np.float64) ** -exponent


CASES = (
    Case(
        "gauss8_separated",
        "N=8 Gaussian, top eigenvalues 8, 2, 0.5 (4x apart), n=20000",
        factor_data(GAUSS8, 20000),
        gaussian=True,
    ),
    Case(
        "gauss12_flat_offset",
        "N=12 Gaussian, flat top lambda_1/lambda_2 = 1.09, mean offset 3, n=20000",
        factor_data([5.0, 4.6, 2.0, 1.0] + [0.3] * 8, 20000, offset=3.0),
        gaussian=True,
    ),
    Case(
        "gauss32_powerlaw_bigN",
        "N=32 Gaussian, power-law spectrum 6/i, n=100000, beta 2",
        factor_data(_power_law(32, 6.0), 100000),
        beta=2.0,
        gaussian=True,
    ),
    Case(
        "laplace16_offset",
        "N=16 Laplace factors, spectrum 6, 3, 1.5, ... (halving), offset -2, n=5000",
        factor_data(6.0 * 0.5 ** np.arange(16), 5000, "laplace", offset=-2.0),
        beta=0.5,
    ),
    Case(
        "student_t64_powerlaw",
        "N=64 Student-t(5) factors, power-law spectrum 10/i, n=20000",
        factor_data(_power_law(64, 10.0), 20000, "student_t"),
        latent_dim=4,
    ),
    Case(
        "bimodal4_small_n",
        "N=4 bimodal factors, spectrum 3, 1, 0.5, 0.25, n=400",
        factor_data([3.0, 1.0, 0.5, 0.25], 400, "bimodal"),
        latent_dim=2,
    ),
    Case(
        "gauss256_powerlaw",
        "N=256 Gaussian, power-law spectrum 20/i^1.2, n=3000, beta 2",
        factor_data(_power_law(256, 20.0, 1.2), 3000),
        beta=2.0,
    ),
    Case(
        "wine",
        "scikit-learn wine, 178 x 13, standardized",
        _sklearn("wine"),
    ),
    Case(
        "breast_cancer",
        "scikit-learn breast cancer, 569 x 30, standardized, beta 2",
        _sklearn("breast_cancer"),
        beta=2.0,
    ),
    Case(
        "diabetes",
        "scikit-learn diabetes, 442 x 10, standardized, beta 0.5",
        _sklearn("diabetes"),
        beta=0.5,
    ),
    Case(
        "digits",
        "scikit-learn digits, 1797 x 64, pixels in [0, 1]",
        _sklearn("digits", scale="unit"),
        latent_dim=4,
    ),
    Case(
        "paper_gauss8",
        "paper architecture (256-128 / 128-256), N=8 Gaussian as gauss8, n=20000",
        factor_data(GAUSS8, 20000),
        arch=PAPER,
        batch_size=256,
        learning_rate=1e-3,
        points=16,
        gaussian=True,
    ),
    Case(
        "paper_wine",
        "paper architecture (256-128 / 128-256), wine standardized",
        _sklearn("wine"),
        arch=PAPER,
        batch_size=256,
        learning_rate=1e-3,
        points=16,
    ),
    Case(
        "bernoulli16_rank4",
        "Bernoulli decoder, N=16 binary, logits of rank 4, n=8000",
        natural_data("bernoulli", 8000, 16, scales=(1.6, 1.2, 0.8, 0.5)),
        model=(("likelihood", "bernoulli"),),
    ),
    Case(
        "binary_digits",
        "Bernoulli decoder, scikit-learn digits binarised (pixel > 8 of 16), 1797 x 64",
        _binary_digits,
        latent_dim=4,
        model=(("likelihood", "bernoulli"),),
    ),
    Case(
        "poisson12_rank3",
        "Poisson decoder, N=12 counts, log-rates of rank 3, n=5000",
        natural_data("poisson", 5000, 12, scales=(1.4, 1.0, 0.7)),
        model=(("likelihood", "poisson"),),
    ),
    Case(
        "negbin12_rank3",
        "negative-binomial decoder (dispersion 4), N=12 counts, rank 3, n=5000, beta 2",
        natural_data("negative_binomial", 5000, 12, dispersion=4.0),
        beta=2.0,
        model=(("likelihood", "negative_binomial"), ("dispersion", 4.0)),
    ),
    Case(
        "negbin12_learned",
        "negative-binomial decoder, the dispersion learned from r = 1 (the data's "
        "4), N=12 counts, rank 3, n=5000, beta 2",
        natural_data("negative_binomial", 5000, 12, dispersion=4.0),
        beta=2.0,
        model=(
            ("likelihood", "negative_binomial"),
            ("dispersion", 1.0),
            ("learned_dispersion", True),
        ),
    ),
    Case(
        "categorical6x3",
        "categorical decoder, 6 positions of 3 tokens, logits of rank 3, n=5000",
        natural_data("categorical", 5000, 6, categories=3),
        model=(("likelihood", "categorical"), ("categories", 3)),
    ),
    Case(
        "ar2_context1",
        "autoregressive decoder (context 1), windows of 10 of x_t = 0.6 x_{t-1} - "
        "0.5 x_{t-2} + e_t, unit variance, n=8000",
        ar_data((0.6, -0.5), 10, 8000),
        gaussian=True,
        model=(("context", 1),),
    ),
    Case(
        "categorical_latent8",
        "2 codes of 4 values (Gumbel-softmax, tau 1), N=8 Gaussian as gauss8, "
        "n=20000: the criterion rho lambda_max",
        factor_data(GAUSS8, 20000),
        latent_dim=2,
        model=(("latent", "categorical"), ("latent_categories", 4)),
    ),
    Case(
        "ladder8",
        "ladder latent, 2 dims below 1 on top, N=8 Gaussian as gauss8, n=20000",
        factor_data(GAUSS8, 20000),
        latent_dim=2,
        model=(("latent", "ladder"), ("top_dim", 1)),
    ),
    Case(
        "vrnn_ar2",
        "VRNN (GRU state of 16), windows of 10 of x_t = 0.5 x_{t-1} + 0.3 x_{t-2} + "
        "e_t, n=5000: one latent per step, the criterion max_t D_t",
        ar_data((0.5, 0.3), 10, 5000),
        latent_dim=1,
        arch=((32,), (32,)),
        learning_rate=5e-3,
        model=(("kind", "vrnn"), ("state", 16)),
    ),
)

QUICK = (
    Case(
        "quick_gauss",
        "N=6 Gaussian, spectrum 4, 1, 0.25, ..., n=2000 (test-sized)",
        factor_data([4.0, 1.0, 0.25, 0.1, 0.05, 0.02], 2000),
        latent_dim=2,
        arch=((16,), (16,)),
        steps=300,
        eval_every=50,
        points=8,
        gaussian=True,
    ),
    Case(
        "quick_laplace",
        "N=5 Laplace factors, spectrum 3, 1, 0.3, ..., n=1000, beta 2 (test-sized)",
        factor_data([3.0, 1.0, 0.3, 0.1, 0.05], 1000, "laplace", offset=1.0),
        beta=2.0,
        latent_dim=2,
        arch=((16,), (16,)),
        steps=300,
        eval_every=50,
        points=8,
    ),
)
