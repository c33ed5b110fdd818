"""Does one refinement round in a single run give the validation suite's `refined`
row? For each named case (all without names): its coarse grid at T with
``grid.sigma2.refine = {rounds = 1, points = validate.REFINE}`` in one run, then the
estimate, beside the `refined` row of results/validation/validation.json and scored
against the same reference. The single run trains its points in slots (a different
vmapped program from the validation's plain grid), so its training differs from the
validation's by float rounding, amplified over the run.

    python studies/refine_round.py [case ...]

Runs go to results/validation/refine_round/<case> (resumable); the table and its
summary go to results/validation/refine_round.md (all cases) and to the screen.
"""

import json
import sys
from pathlib import Path

import numpy as np

from phasevae.analysis import curves as analysis
from phasevae.engine.sweep import run_sweep
from phasevae.safeio import atomic_write_text
from phasevae.spec import spec_from_dict
from phasevae.tools import validate
from phasevae.tools.cases import CASES

OUT = Path("results/validation")


def main(names: list[str]) -> None:
    rows = {
        r["case"]: r for r in json.loads((OUT / "validation.json").read_text())["rows"]
    }
    lines = [
        "| case | reference | refined row [95 %] | error | one refine round [95 %] "
        "| error | covers | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    errors, covers = [], []
    for case in (c for c in CASES if c.name in names or not names):
        _, path, lam = validate.case_data(case, OUT / "data")
        d = validate.case_spec(case, path, lam)
        d["train"]["steps"] = case.steps
        d["grid"]["sigma2"]["refine"] = {"rounds": 1, "points": validate.REFINE}
        run = run_sweep(
            spec_from_dict(d, where=case.name), OUT / "refine_round" / case.name
        )
        result = analysis.analyze(run.metrics, run.meta.spectrum, case.latent_dim)
        (t,) = result.transitions
        want = rows[case.name]
        ref, refined = want["reference"], want["estimators"]["refined"]
        errors.append(abs(t.sigma2_c / ref - 1))
        covers.append(t.ci is not None and t.ci[0] <= ref <= t.ci[1])
        now = _value(t.to_json())
        lines.append(
            f"| {case.name} | {ref:.4g} | {_value(refined)} | "
            f"{refined['error']:+.1%} | {now} | {t.sigma2_c / ref - 1:+.1%} "
            f"| {'yes' if covers[-1] else 'no'} | {t.verdict} |"
        )
    lines += [
        "",
        f"One refine round: median |error| {np.median(errors):.1%}, worst "
        f"{max(errors):.1%}, intervals cover the reference in {sum(covers)} of "
        f"{len(covers)}. Command: `python studies/refine_round.py`.",
    ]
    text = "\n".join(lines) + "\n"
    if not names:
        atomic_write_text(OUT / "refine_round.md", text)
    print(text)


def _value(t: dict) -> str:
    ci = t["ci"]
    return f"{t['sigma2_c']:.4g}" + (f" [{ci[0]:.4g}, {ci[1]:.4g}]" if ci else "")


if __name__ == "__main__":
    main(sys.argv[1:])
