"""What train.until = "trusted" costs against training the whole grid longer
(issue 12, item 6), on cases of the validation suite.

For each case the grid trains its nominal T steps, then only the points the
transition estimate asks for train on, chunk by chunk, until the verdict is
``trusted`` or they reach 4 T (``max_steps``). The comparison is the suite's
reference run: the same grid, every point trained 4 T steps
(results/validation/validation.json). Writes results/validation/until_trusted.md and
.json.

    python studies/until_trusted.py [CASE ...]
"""

import json
import sys
from pathlib import Path

import numpy as np

from phasevae.analysis import curves as analysis
from phasevae.engine.devices import split_cpu_into_devices
from phasevae.engine.sweep import run_sweep
from phasevae.safeio import atomic_write_text
from phasevae.spec import spec_from_dict
from phasevae.tools.cases import CASES
from phasevae.tools.validate import LONG, case_data, case_spec

OUT = Path("results/validation")
DEFAULT = (
    "gauss8_separated",
    "laplace16_offset",
    "bimodal4_small_n",
    "wine",
    "diabetes",
)


def main(names) -> None:
    split_cpu_into_devices()
    reference = {
        r["case"]: r for r in json.loads((OUT / "validation.json").read_text())["rows"]
    }
    rows = []
    for case in (c for c in CASES if c.name in names):
        _, path, lam = case_data(case, OUT / "data")
        raw = case_spec(case, path, lam)
        raw["train"].update(
            steps=case.steps, until="trusted", max_steps=LONG * case.steps
        )
        run = run_sweep(spec_from_dict(raw, case.name), OUT / "until" / case.name)
        result = analysis.analyze(run.metrics, run.meta.spectrum, case.latent_dim)
        (t,) = result.transitions
        ref = reference[case.name]
        last = run.metrics.groupby("point_id")["step"].max()
        uniform = len(last) * LONG * case.steps
        lo, hi = t.ci or (np.nan, np.nan)
        rows.append(
            {
                "case": case.name,
                "reference": ref["reference"],
                "sigma2_c": t.sigma2_c,
                "ci": t.ci,
                "error": t.sigma2_c / ref["reference"] - 1,
                "covers": bool(lo <= ref["reference"] <= hi),
                "verdict": t.verdict,
                "extended_points": int((last > case.steps).sum()),
                "points": int(len(last)),
                "model_steps": int(last.sum()),
                "uniform_model_steps": uniform,
                "uniform_error": ref["estimators"]["estimate"]["error"],
                "uniform_long_verdict": ref["long_verdict"],
            }
        )
    lines = [
        "| case | reference | until trusted: estimate [95 %] | error | covers | "
        "verdict | points trained past T | model-steps / uniform 4 T |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ci = "[{:.4g}, {:.4g}]".format(*r["ci"]) if r["ci"] else "[-]"
        lines.append(
            f"| {r['case']} | {r['reference']:.4g} | {r['sigma2_c']:.4g} {ci} | "
            f"{100 * r['error']:+.1f} % | {'yes' if r['covers'] else 'no'} | "
            f"{r['verdict']} | {r['extended_points']} of {r['points']} | "
            f"{r['model_steps'] / r['uniform_model_steps']:.2f} |"
        )
    atomic_write_text(OUT / "until_trusted.md", "\n".join(lines) + "\n")
    atomic_write_text(OUT / "until_trusted.json", json.dumps(rows, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:] or DEFAULT)
