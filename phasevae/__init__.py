"""phasevae: where, and why, a VAE stops using its latent space.

Trains grids of Gaussian VAEs over (sigma^2, beta, seed, ...) in one vmapped JAX program
and compares the posterior-collapse transition with the criterion
beta * sigma^2 = lambda_max (Li et al. 2025).
"""

from phasevae.spec import Spec, load_spec
from phasevae.sweep import SweepResult, run_sweep

__all__ = ["Spec", "SweepResult", "load_spec", "run_sweep"]
