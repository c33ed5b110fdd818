"""phasevae: where, and why, a VAE stops using its latent space.

Trains grids of Gaussian VAEs over (sigma^2, beta, seed, ...) in one vmapped JAX program
and compares the posterior-collapse transition with the criterion
beta * sigma^2 = lambda_max (Li et al. 2025).
"""

import importlib
from importlib import metadata

try:  # from git at build time (setuptools-scm): release, or dev count + commit
    __version__ = metadata.version("phasevae")
except metadata.PackageNotFoundError:
    __version__ = "unknown"

# the Python API (phasevae.api) and the spec, imported on first use, so that the
# command line starts (and handles signals) before JAX is loaded
_EXPORTS = {
    "run": "phasevae.api",
    "dry_run": "phasevae.api",
    "open_run": "phasevae.api",
    "Run": "phasevae.api",
    "predict": "phasevae.api",
    "merge": "phasevae.api",
    "as_spec": "phasevae.api",
    "Spec": "phasevae.spec",
    "load_spec": "phasevae.spec",
    "SweepResult": "phasevae.engine.loop",
    "run_sweep": "phasevae.engine.sweep",
    "model_factory": "phasevae.models.plugins",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'phasevae' has no attribute {name!r}")
