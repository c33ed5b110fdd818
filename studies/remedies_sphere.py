"""The hyperspherical latent as a remedy (issue 16 item 4): with a power-spherical
posterior on S^{k-1} and a uniform prior, where does the KL collapse when the
concentration is learned, and what collapses instead when it is fixed (the KL is then
a constant)? Against the Gaussian latent on the same data and grid.

    python studies/remedies_sphere.py

Runs sweeps/remedy_objective.toml (default synthetic data) and
sweeps/remedy_objective_patches.toml (image patches), beta 0.5 / 1 / 2, three seeds,
with model.latent = "gaussian", "sphere" (kappa learned) and "sphere" with kappa fixed
at 10 and at 50, into results/remedies_sphere/<data>_<variant>/; writes summary.json,
table.md and scaling.json there.
"""

from study import run_study

STUDY = "remedies_sphere"
SPECS = {"default": "remedy_objective.toml", "patches": "remedy_objective_patches.toml"}
VARIANTS = {
    "gaussian": [],
    "sphere_learned": ['model.latent="sphere"'],
    "sphere_kappa10": ['model.latent="sphere"', "model.concentration=10.0"],
    "sphere_kappa50": ['model.latent="sphere"', "model.concentration=50.0"],
}

if __name__ == "__main__":
    run_study(STUDY, SPECS, VARIANTS, "scaling")
