"""Objective-side remedies as sweep axes (issue 16): does free bits, cyclical KL
annealing or a mutual-information term move the collapse boundary
beta * sigma^2 = lambda_max, remove it, or only change the path?

    python studies/remedies_objective.py

Runs sweeps/remedy_objective.toml (default synthetic data) and
sweeps/remedy_objective_patches.toml (natural image patches), beta 0.5 / 1 / 2, three
seeds, one remedy axis per sweep at three strengths (0, the plain objective, is the
control), into results/remedies_objective/<data>_<remedy>/; analyses and plots each,
and writes results/remedies_objective/summary.json (one row per transition) and
scaling.json (the beta sigma^2 scaling check per setting) and table.md.
"""

from study import run_study

STUDY = "remedies_objective"
SPECS = {"default": "remedy_objective.toml", "patches": "remedy_objective_patches.toml"}
VARIANTS = {
    "free_bits": ["grid.free_bits=[0.0, 0.1, 0.5]"],
    "cyclical": ["grid.kl_cycle_steps=[0, 500, 1000]", "grid.kl_cycle_ramp=[0.5]"],
    "mutual_information": ["grid.mi_weight=[0.0, 0.5, 1.0]"],
}

if __name__ == "__main__":
    run_study(STUDY, SPECS, VARIANTS, "scaling_by")
