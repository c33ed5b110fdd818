"""Objective-side remedies as sweep axes (issue 16): does free bits, cyclical KL
annealing or a mutual-information term move the collapse boundary
beta * sigma^2 = lambda_max, remove it, or only change the path?

    python analysis/remedies_objective.py

Runs sweeps/remedy_objective.toml three times into results/remedies_objective/, one
remedy axis at three strengths each (0 included, the plain objective, as the
control), analyses and plots each, and writes results/remedies_objective/summary.json
(one row per transition) and scaling.json (the beta sigma^2 scaling check per
setting).
"""

import json

from study import RESULTS, run_variant, write_summary

from phasevae.store import atomic_write_text

STUDY = "remedies_objective"
SPEC = "remedy_objective.toml"
VARIANTS = {
    "free_bits": ["grid.free_bits=[0.0, 0.1, 0.5]"],
    "cyclical": ["grid.kl_cycle_steps=[0, 500, 1000]", "grid.kl_cycle_ramp=[0.5]"],
    "mutual_information": ["grid.mi_weight=[0.0, 0.5, 1.0]"],
}

if __name__ == "__main__":
    rows, scaling = [], {}
    for name, overrides in VARIANTS.items():
        rows += run_variant(STUDY, name, SPEC, overrides)
        doc = json.loads((RESULTS / STUDY / name / "analysis.json").read_text())
        scaling[name] = doc["scaling_by"]
    write_summary(STUDY, rows)
    atomic_write_text(
        RESULTS / STUDY / "scaling.json", json.dumps(scaling, indent=1, default=str)
    )
