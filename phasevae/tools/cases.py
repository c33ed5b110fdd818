"""The cases of the validation suite (:mod:`phasevae.tools.validate`): data with a known
spectrum, chosen to be hard: Gaussian, Laplace, Student-t and bimodal factors; N from 4
to 256; flat tops, separated tops and power-law spectra; n from a few hundred to 10^5;
offset means; beta in {0.5, 1, 2}; the default and the paper architecture; real
tables that ship with scikit-learn.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from phasevae.errors import optional

PAPER = ((256, 128), (128, 256))
SMALL = ((64, 32), (32, 64))


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


def _power_law(n_dims: int, top: float, exponent: float = 1.0) -> np.ndarray:
    return top * np.arange(1, n_dims + 1, dtype=np.float64) ** -exponent


CASES = (
    Case(
        "gauss8_separated",
        "N=8 Gaussian, top eigenvalues 8, 2, 0.5 (4x apart), n=20000",
        factor_data([8.0, 2.0, 0.5, 0.125, 0.06, 0.04, 0.02, 0.01], 20000),
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
        factor_data([8.0, 2.0, 0.5, 0.125, 0.06, 0.04, 0.02, 0.01], 20000),
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
