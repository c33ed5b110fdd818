"""Datasets and their covariance spectrum.

Every source returns a :class:`Dataset`: a float32 array of shape (n, N) exactly as the
model sees it (after normalisation), a fixed evaluation subset, and the eigenvalues of
its covariance, which the theory needs (SCIENCE.md: the collapse criterion is
beta * sigma^2 > lambda_max of the data *as the model sees it*).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from phasevae.errors import BadInput
from phasevae.spec import DataSpec


class DataError(BadInput):
    """A data file or data setting that cannot be used."""


@dataclass(frozen=True)
class Dataset:
    """Training data and its spectrum.

    Attributes:
      x: (n, N) float32, normalised training data.
      eval_x: (n_eval, N) float32, a fixed subset of ``x`` used for every evaluation.
      eigenvalues: (N,) float64, descending eigenvalues of the covariance of ``x``
        (population covariance, divisor n: the model fits the empirical distribution).
      description: one line saying what the data is.
    """

    x: np.ndarray
    eval_x: np.ndarray
    eigenvalues: np.ndarray
    description: str

    def spectrum(self) -> dict:
        """JSON-ready summary stored in the run's meta.json."""
        ev = [float(v) for v in self.eigenvalues]
        return {
            "eigenvalues": ev,
            "lambda_max": ev[0],
            "trace": float(np.sum(self.eigenvalues)),
            "samples": int(self.x.shape[0]),
            "dim": int(self.x.shape[1]),
            "description": self.description,
        }


def load_dataset(spec: DataSpec) -> Dataset:
    """Build the dataset a spec describes.

    Raises:
      DataError: missing or malformed file, wrong shape, too few samples, NaN or inf.
    """
    if spec.source == "synthetic":
        x = synthetic(spec.eigenvalues, spec.samples, spec.seed, spec.distribution)
        what = (
            f"synthetic {spec.distribution}, N={len(spec.eigenvalues)}, "
            f"n={spec.samples}, eigenvalues {list(spec.eigenvalues)}, seed {spec.seed}"
        )
    elif spec.source == "digits":
        x = digits()
        what = "scikit-learn digits (8x8, pixels / 16)"
    elif spec.source == "array":
        x = load_array(Path(spec.path), spec.key)
        what = f"array file {spec.path}" + (f" [{spec.key}]" if spec.key else "")
    else:  # spec validation keeps this unreachable
        raise DataError(f"unknown data.source {spec.source!r}")
    x = normalize(check_array(x, what), spec.normalize)
    if spec.normalize != "none":
        what += f", normalize={spec.normalize}"
    order = np.random.default_rng(spec.seed).permutation(x.shape[0])
    eval_x = x[np.sort(order[: min(spec.eval_samples, x.shape[0])])]
    return Dataset(
        x=x, eval_x=eval_x, eigenvalues=covariance_spectrum(x), description=what
    )


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
    """scikit-learn's 8x8 handwritten digits (shipped in its wheel), pixels / 16."""
    from sklearn.datasets import load_digits

    return (load_digits().data / 16.0).astype(np.float32)


def load_array(path: Path, key: str = "") -> np.ndarray:
    """Read a 2-D numeric array from ``.npy``, ``.npz`` (array ``key``) or ``.csv``.

    Pickled objects are never loaded. A CSV may have one header line.
    """
    if not path.is_file():
        raise DataError(f"data file {path} does not exist (data.path)")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                names = list(archive.files)
                if not key and len(names) == 1:
                    key = names[0]
                if key not in names:
                    raise DataError(
                        f"{path}: set data.key to one of the arrays in the archive: "
                        f"{', '.join(names) or '(none)'}"
                    )
                return archive[key]
        if suffix == ".csv":
            return _load_csv(path)
    except DataError:
        raise
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read as {suffix} ({e})") from None
    raise DataError(f"{path}: unsupported file type {suffix!r}; use .npy, .npz or .csv")


def _load_csv(path: Path) -> np.ndarray:
    for skip in (0, 1):  # a header line is allowed
        try:
            return np.loadtxt(path, delimiter=",", ndmin=2, skiprows=skip)
        except ValueError as e:
            err = e
    raise DataError(f"{path}: the CSV holds a non-numeric value ({err})")


def check_array(x: np.ndarray, what: str) -> np.ndarray:
    """Reject arrays that cannot be training data; return float32."""
    if x.dtype.kind not in "fiub":
        raise DataError(f"{what}: data must be numeric, got dtype {x.dtype}")
    if x.ndim != 2:
        raise DataError(
            f"{what}: data must be 2-D (samples, features), got shape {x.shape}"
        )
    if x.shape[0] < 2:
        raise DataError(f"{what}: need at least 2 samples, got {x.shape[0]}")
    if x.shape[1] < 1:
        raise DataError(f"{what}: data has no features")
    x = x.astype(np.float32)
    bad = ~np.isfinite(x)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DataError(
            f"{what}: {int(bad.sum())} NaN or inf values (first at row {row}, "
            f"column {col}); clean the data first"
        )
    return x


def normalize(x: np.ndarray, how: str) -> np.ndarray:
    """``none``, ``center`` (subtract the mean) or ``standardize`` (also unit variance;
    constant features are only centred)."""
    if how == "none":
        return x
    x = x - x.mean(axis=0)
    if how == "standardize":
        std = x.std(axis=0)
        x = x / np.where(std > 0, std, 1.0)
    return x.astype(np.float32)


def covariance_spectrum(x: np.ndarray) -> np.ndarray:
    """Descending eigenvalues of the population covariance of ``x`` (n, N)."""
    xc = x.astype(np.float64) - x.mean(axis=0, dtype=np.float64)
    cov = xc.T @ xc / x.shape[0]
    return np.linalg.eigvalsh(cov)[::-1].clip(min=0.0)
