"""Does the matmuls' precision move the validation suite's transitions (issue 32)?

Each case of the validation suite (:mod:`phasevae.tools.cases`) is trained again for
its nominal T steps with ``train.precision`` = P, on the same data, grid and seeds,
and analysed as the suite analyses its estimate at T. The float32 estimate is the
suite's own: its committed run (results/validation/runs/<case>, trained LONG x T
steps; training is deterministic in the step, so its first T steps are the T-step
run) cut at T. One float32 control case is trained again too: its metrics must equal
the committed run's to the last bit, or the comparison would carry run-to-run noise.

    python studies/precision.py [bfloat16 ...]

Writes results/precision/<P>/<case>/ (resumable) and results/precision/summary.json
and table.md.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from phasevae.analysis import curves as analysis
from phasevae.engine.devices import split_cpu_into_devices
from phasevae.safeio import atomic_write_text
from phasevae.tools.cases import CASES
from phasevae.tools.validate import case_data, case_spec

split_cpu_into_devices()  # as `phasevae sweep` does, before JAX starts its backend

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "results" / "validation"
OUT = ROOT / "results" / "precision"
CONTROL = "gauss8_separated"  # retrained at float32: must equal the committed run


def estimate_at_t(metrics: pd.DataFrame, spectrum: dict, k: int, steps: int):
    """The suite's estimate at T: the analysis of the evaluations up to ``steps``."""
    (t,) = analysis.analyze(metrics[metrics["step"] <= steps], spectrum, k).transitions
    return t


def train(case, precision: str) -> tuple[pd.DataFrame, dict, int, float]:
    """The case trained T steps at ``precision``: metrics, spectrum, KL dims, train
    seconds."""
    from phasevae.engine.sweep import run_sweep
    from phasevae.spec import spec_from_dict

    x, path, lam = case_data(case, SUITE / "data")
    doc = case_spec(case, path, lam)
    doc["train"] |= {"steps": case.steps, "precision": precision}
    spec = spec_from_dict(doc, where=f"{case.name} at {precision}")
    result = run_sweep(spec, OUT / precision / case.name)
    return (
        result.metrics,
        result.meta.spectrum,
        spec.model.kl_dims(x.shape[1]),
        result.meta.wall_times.train_s,
    )


def row(case, precision: str) -> dict:
    metrics, spectrum, k, train_s = train(case, precision)
    now = estimate_at_t(metrics, spectrum, k, case.steps)
    ref_run = SUITE / "runs" / case.name
    ref_metrics = pd.read_parquet(ref_run / "metrics.parquet")
    ref_spectrum = json.loads((ref_run / "meta.json").read_text())["spectrum"]
    ref = estimate_at_t(ref_metrics, ref_spectrum, k, case.steps)
    lo, hi = ref.ci
    base = {
        "case": case.name,
        "precision": precision,
        "float32": ref.sigma2_c,
        "float32_ci": list(ref.ci),
        "float32_verdict": ref.verdict,
        "value": now.sigma2_c,
        "ci": list(now.ci) if now.ci else None,
        "verdict": now.verdict,
        "train_s": train_s,
    }
    if now.sigma2_c is None:  # not located at P: a shift of its own kind
        return base | {"shift": None, "inside_float32_ci": False}
    side = (hi if now.sigma2_c > ref.sigma2_c else lo) - ref.sigma2_c
    return base | {
        "shift": now.sigma2_c / ref.sigma2_c - 1,
        # the shift in units of the float32 interval's half-width on its side
        "shift_in_half_widths": (now.sigma2_c - ref.sigma2_c) / side,
        "inside_float32_ci": bool(lo <= now.sigma2_c <= hi),
        "top_dim_shift": now.sigma2_c_final / ref.sigma2_c_final - 1,
    }


def control() -> dict:
    """The control case retrained at float32 against its committed run, at T."""
    (case,) = [c for c in CASES if c.name == CONTROL]
    metrics, *_ = train(case, "float32")
    ref = pd.read_parquet(SUITE / "runs" / case.name / "metrics.parquet")
    keys = ["sigma2", "seed", "step"]
    ref = ref[ref["step"] <= case.steps].sort_values(keys).reset_index(drop=True)
    new = metrics.sort_values(keys).reset_index(drop=True)[ref.columns]
    kl = [c for c in ref.columns if c.startswith("kl")]
    return {
        "case": CONTROL,
        "rows": len(new),
        "identical": bool(new[kl].equals(ref[kl])),
        "max_abs_kl_difference": float(
            np.nanmax(np.abs(new[kl].values - ref[kl].values))
        ),
    }


def table(rows: list[dict], ctrl: dict) -> str:
    lines = [
        "| case | precision | float32 at T [95 %] | at P [95 %] | shift | "
        "in half-widths | inside float32's interval | top dim's fit shift | train s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lo, hi = r["float32_ci"]
        head = f"| {r['case']} | {r['precision']} | {r['float32']:.4g} "
        head += f"[{lo:.4g}, {hi:.4g}]"
        if r["shift"] is None:
            lines.append(f"{head} | not located | | | **no** | | {r['train_s']:.0f} |")
            continue
        ci = r["ci"]
        lines.append(
            f"{head} | {r['value']:.4g} [{ci[0]:.4g}, {ci[1]:.4g}] | "
            f"{100 * r['shift']:+.2f} % | {r['shift_in_half_widths'] + 0.0:.2f} | "
            f"{'yes' if r['inside_float32_ci'] else '**no**'} | "
            f"{100 * r['top_dim_shift']:+.2f} % | {r['train_s']:.0f} |"
        )
    shifts = np.abs([r["shift"] for r in rows if r["shift"] is not None])
    inside = sum(r["inside_float32_ci"] for r in rows)
    lines += [
        "",
        f"{len(rows)} cases: median |shift| {100 * np.median(shifts):.2f} %, "
        f"worst {100 * shifts.max():.2f} %; inside float32's interval: {inside} of "
        f"{len(rows)}.",
        f"Control ({ctrl['case']} retrained at float32, {ctrl['rows']} rows): "
        f"KL columns identical to the committed run: {ctrl['identical']} "
        f"(largest difference {ctrl['max_abs_kl_difference']:.3g}).",
    ]
    return "\n".join(lines) + "\n"


def main(precisions: list[str]) -> None:
    start = time.perf_counter()
    ctrl = control()
    rows = []
    for precision in precisions:
        for case in CASES:
            print(f"{case.name} at {precision}", flush=True)
            rows.append(row(case, precision))
    OUT.mkdir(parents=True, exist_ok=True)
    doc = {"control": ctrl, "rows": rows, "wall_s": time.perf_counter() - start}
    atomic_write_text(OUT / "summary.json", json.dumps(doc, indent=1))
    atomic_write_text(OUT / "table.md", table(rows, ctrl))
    print(table(rows, ctrl))


if __name__ == "__main__":
    main(sys.argv[1:] or ["bfloat16"])
