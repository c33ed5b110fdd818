"""``phasevae locate`` on the validation suite (issue 26): does one command reach a
trusted, sharp answer, at what cost, and is it right?

Each case of :mod:`phasevae.tools.cases` is located from its spec at its nominal length
T (the validation's architecture, data and beta; locate places its own grid), into
``results/validation/locate/<case>``. Its answer is held against two references
from the validation's own runs (``results/validation/runs/<case>`` and
``<case>-refined``, trained independently, 28 or 24 sigma^2):

* **at T**: the estimate on those runs' evaluations up to T;
* **at 4 T**: the validation's long-training reference (lambda_max / beta for the
  Gaussian cases whose collapse is not shifted, else the fit at 4 T);
* **claimed**: the one a trusted answer must not miss. A trusted answer of absorbing
  collapse (dead units) holds for the length its kink's points trained
  (``holds_for_steps``): its reference is the estimate on the reference runs up to
  that length, known to its own interval (none past their 4 T). Any other trusted
  answer claims the equilibrium transition: its reference is the one at 4 T.
* **pooled drop cell** (absorbing collapse): every evaluation at that length, of
  the validation's two runs and of the located run, pooled; the cell between
  neighbouring sigma^2 where the top dim's KL falls most steeply. The claimed
  reference is a fit on the validation's runs alone and known only to its interval;
  the pooled cell is where the drop sits as densely as all runs sample it.

Cost: model-steps against the plain 24-point sweep at T (24 x T x seeds).

    python studies/locate_suite.py [--fresh] [CASE ...]

writes ``results/validation/locate.json`` and ``results/validation/locate.md``. A
case whose locate run exists resumes it (a finished one is only re-read); with
``--fresh`` the named cases' runs (every case's, when none is named) are deleted
first and located anew, as after a change to the estimate or to locate.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import tomli_w

from phasevae.analysis import estimate
from phasevae.analysis.constants import KL_RESOLUTION
from phasevae.store import RunDir
from phasevae.tools.cases import CASES
from phasevae.tools.locate import locate
from phasevae.tools.validate import case_data, case_spec

ROOT = Path(__file__).resolve().parent.parent / "results" / "validation"
PLAIN = 24  # the plain sweep the cost is compared with: 24 sigma^2 at T


def reference_at(case, steps: int) -> dict:
    """The estimate on the validation's coarse and refined runs up to ``steps``."""
    runs = [ROOT / "runs" / case.name, ROOT / "runs" / f"{case.name}-refined"]
    frames = [RunDir(r).metrics() for r in runs if (r / "metrics.parquet").exists()]
    metrics = pd.concat(frames, ignore_index=True)
    spectrum = RunDir(runs[0]).meta().spectrum
    return estimate.estimate_transition(
        metrics[metrics["step"] <= steps],
        case.latent_dim,
        spectrum["lambda_max"],
        spectrum.get("lambda_max_eval"),
    )


def pooled_drop(case, steps: int) -> list[float] | None:
    """The cell of the steepest fall of the top dim's KL between neighbouring sigma^2
    of every evaluation at ``steps`` (the validation's coarse and refined runs and
    the located run pooled; KL floored at KL_RESOLUTION, seeds averaged): where a
    drop (dead units) sits, as densely as all three runs sample it. None: fewer
    than two sigma^2 at that length."""
    runs = [
        ROOT / "runs" / case.name,
        ROOT / "runs" / f"{case.name}-refined",
        ROOT / "locate" / case.name,
    ]
    frames = [RunDir(r).metrics() for r in runs if (r / "metrics.parquet").exists()]
    m = pd.concat(frames, ignore_index=True)
    m = m[m["step"] == steps]
    dims = [c for c in m.columns if c.startswith("kl_dim_")]
    kl = m[dims].max(axis=1).groupby(m["sigma2"]).mean().sort_index()
    if len(kl) < 2:
        return None
    fall = -np.diff(np.log(np.maximum(kl.to_numpy(), KL_RESOLUTION)))
    i = int(np.argmax(fall))
    return [float(kl.index[i]), float(kl.index[i + 1])]


def held_for(out: Path, latent_dim: int) -> int | None:
    """The length a located answer of absorbing collapse holds for (None: it
    claims the equilibrium transition), from the located run's joined metrics."""
    run = RunDir(out)
    spectrum = run.meta().spectrum
    return estimate.estimate_transition(
        run.metrics(),
        latent_dim,
        spectrum["lambda_max"],
        spectrum.get("lambda_max_eval"),
    ).holds_for_steps


def run_case(case) -> dict:
    _, data, lam = case_data(case, ROOT / "data")
    raw = case_spec(case, data, lam)
    raw["train"]["steps"] = case.steps
    raw["grid"]["sigma2"] = [lam / case.beta]  # locate places its own grid
    spec = ROOT / "locate" / "specs" / f"{case.name}.toml"
    spec.parent.mkdir(parents=True, exist_ok=True)
    spec.write_text(tomli_w.dumps(raw))
    result = locate(spec, ROOT / "locate" / case.name, say=print)
    (c,) = result["curves"]
    at_t = reference_at(case, case.steps)
    long = json.loads((ROOT / "validation.json").read_text())
    (row,) = [r for r in long["rows"] if r["case"] == case.name]
    plain = PLAIN * case.steps * len(case.seeds)

    def covers(value):
        return bool(c["ci"] and value is not None and c["ci"][0] <= value <= c["ci"][1])

    def overlaps(ci):
        return bool(c["ci"] and ci and c["ci"][0] <= ci[1] and ci[0] <= c["ci"][1])

    t = RunDir(ROOT / "locate" / case.name).meta()
    holds = held_for(ROOT / "locate" / case.name, case.latent_dim)
    pooled = None  # absorbing collapse only: a drop at a training length
    if holds is None:
        claimed, claimed_ci = row["reference"], None
    elif holds <= row["reference_steps"]:
        at_holds = reference_at(case, holds)
        claimed, claimed_ci = at_holds.sigma2_c, at_holds.ci
        pooled = pooled_drop(case, holds)
    else:  # the reference runs stop at 4 T
        claimed, claimed_ci = None, None
    return {
        "case": case.name,
        "lambda_max_over_beta": lam / case.beta,
        "sigma2_c": c["sigma2_c"],
        "ci": c["ci"],
        "half_width": c["half_width"],
        "verdict": c["verdict"],
        "stopped": c["stopped"],
        "stages": c["stages"],
        "model_steps": c["model_steps"],
        "cost_vs_plain": c["model_steps"] / plain,
        "ref_t": at_t.sigma2_c,
        "ref_t_ci": at_t.ci,
        "covers_ref_t": covers(at_t.sigma2_c),
        # the reference at T is known only to its own interval (a drop: its cell)
        "overlaps_ref_t": overlaps(at_t.ci),
        "ref_4t": row["reference"],
        "covers_ref_4t": covers(row["reference"]),
        "holds_for_steps": holds,
        "ref_claimed": claimed,
        "ref_claimed_ci": claimed_ci,
        "covers_claimed": None if claimed is None else covers(claimed),
        "overlaps_claimed": None if claimed_ci is None else overlaps(claimed_ci),
        "pooled_drop": pooled,
        "overlaps_pooled_drop": None if pooled is None else overlaps(pooled),
        "train_s": t.wall_times.train_s if t else None,
    }


def table(rows: list[dict]) -> str:
    def pct(v):
        return "-" if v is None else f"{100 * v:.1f} %"

    def num(v):
        return "-" if v is None else f"{v:.4g}"

    lines = [
        "| case | lambda_max/beta | locate [95 %] | half-width | verdict | "
        "model-steps / plain 24 at T | ref at T [95 %] | covers | overlaps | "
        "ref at 4 T | covers | holds for | claimed ref [95 %] | covers | pooled "
        "drop cell | overlaps |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ci = r["ci"] or [None, None]
        lines.append(
            f"| {r['case']} | {num(r['lambda_max_over_beta'])} | "
            f"{num(r['sigma2_c'])} [{num(ci[0])}, {num(ci[1])}] | "
            f"{pct(r['half_width'])} | {r['verdict']} | {r['cost_vs_plain']:.2f} | "
            f"{num(r['ref_t'])} {_ci(r['ref_t_ci'])} | "
            f"{'yes' if r['covers_ref_t'] else 'no'} | "
            f"{'yes' if r['overlaps_ref_t'] else 'no'} | "
            f"{num(r['ref_4t'])} | {'yes' if r['covers_ref_4t'] else 'no'} | "
            f"{'equilibrium' if r['holds_for_steps'] is None else r['holds_for_steps']}"
            f" | {num(r['ref_claimed'])} {_ci(r['ref_claimed_ci'])} | "
            f"{_claimed(r)} | {_ci(r.get('pooled_drop'))} | "
            f"{_yes(r.get('overlaps_pooled_drop'))} |"
        )
    trusted = [r for r in rows if r["verdict"] == estimate.TRUSTED]
    widths = [r["half_width"] for r in rows if r["half_width"] is not None]
    finite = [w for w in widths if math.isfinite(w)]
    costs = [r["cost_vs_plain"] for r in rows]
    lines += [
        "",
        f"trusted: {len(trusted)} of {len(rows)}; trusted intervals that miss the "
        f"reference at T: {sum(not r['covers_ref_t'] for r in trusted)} (that do not "
        f"overlap its interval: {sum(not r['overlaps_ref_t'] for r in trusted)}), "
        f"at 4 T: {sum(not r['covers_ref_4t'] for r in trusted)}; that miss the "
        f"reference they claim: {sum(r['covers_claimed'] is False for r in trusted)} "
        "(that do not overlap its interval: "
        f"{sum(r['overlaps_claimed'] is False for r in trusted)}; without one: "
        f"{sum(r['ref_claimed'] is None for r in trusted)}); trusted answers of "
        "absorbing collapse whose interval misses the pooled drop cell: "
        f"{sum(r.get('overlaps_pooled_drop') is False for r in trusted)} of "
        f"{sum(r.get('pooled_drop') is not None for r in trusted)}",
        f"95 % half-width: median {pct(statistics.median(finite))}, worst "
        f"{pct(max(finite))}"
        if finite
        else "no interval",
        f"model-steps against the plain 24-point sweep at T: median "
        f"{statistics.median(costs):.2f}, worst {max(costs):.2f}",
    ]
    return "\n".join(lines) + "\n"


def _claimed(r: dict) -> str:
    if r["covers_claimed"] is None:
        return "- (past 4 T)"
    if r["covers_claimed"]:
        return "yes"
    return "no (overlaps)" if r["overlaps_claimed"] else "no"


def _yes(flag) -> str:
    return "-" if flag is None else ("yes" if flag else "no")


def _ci(ci) -> str:
    return "" if not ci else f"[{ci[0]:.4g}, {ci[1]:.4g}]"


def main(names: list[str], fresh: bool = False) -> None:
    cases = [c for c in CASES if not names or c.name in names]
    path = ROOT / "locate.json"
    done = json.loads(path.read_text()) if path.exists() else {}
    for case in cases:
        if fresh:
            shutil.rmtree(ROOT / "locate" / case.name, ignore_errors=True)
        done[case.name] = run_case(case)
        path.write_text(json.dumps(done, indent=1))
    rows = [done[c.name] for c in CASES if c.name in done]
    (ROOT / "locate.md").write_text(table(rows))
    print(table(rows))


if __name__ == "__main__":
    args = sys.argv[1:]
    main([a for a in args if a != "--fresh"], fresh="--fresh" in args)
