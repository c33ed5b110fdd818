"""The validation suite: does the transition estimate hold on data nobody tuned it to?

Each case is data with a known spectrum (lambda_max computed from the data exactly as
the model sees it), an architecture, one beta and a sigma^2 grid spanning
[0.3, 3] lambda_max / beta. It is trained for ``LONG`` times its nominal length T in
one run; training is deterministic in the step (no schedule depends on the length), so
the first T steps of that run are the nominal run. The estimate is the analysis of the
evaluations up to T; the **reference** is the plain fit of the top dim's KL after
``LONG`` x T steps (the long-training reference: for a deep VAE on finite data the
equilibrium transition need not sit on lambda_max). For large-n Gaussian data the
truth is lambda_max / beta itself.

Then each case is **refined** as a user would refine it: ``REFINE`` more sigma^2,
spread inside the interval of the estimate at T, are trained for the same ``LONG`` x T
steps in a second run. The reference is the fit on the refined grid after ``LONG`` x T
steps: a jump located on the coarse grid alone is known only to its cell, and a
reference taken on that same grid would be its middle too, scoring the estimate
against itself. A jump reference is still known only to its (refined) cell; the
table gives that cell's half-width.

Four estimators are compared at T, all from the same evaluations:
  * ``total_kl``: the piecewise fit of the total KL of the settled points (before);
  * ``top_dim``: the plain fit of the top dim's KL (:mod:`phasevae.analysis.estimate`,
  step 1);
  * ``estimate``: the bias-corrected estimate with its two-part interval and verdict;
  * ``refined``: the same estimate on the refined grid at T (the coarse grid's
    placement of the added sigma^2 is all it learns from; nothing after T). One
    refinement round of ``REFINE`` points (``grid.sigma2.refine = {rounds = 1,
    points = 8}``, :func:`phasevae.engine.schedule.refinement`) spreads the same points
    (:func:`phasevae.analysis.estimate.interval_values`), and more around any lower
    kink.

``phasevae validate`` runs every case into ``OUT/runs/<case>`` and
``OUT/runs/<case>-refined`` (resumable: a rerun continues or reuses them) and writes
``OUT/validation.json`` and ``OUT/table.md``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from phasevae.analysis import curves as analysis
from phasevae.analysis import estimate
from phasevae.safeio import atomic_write_text
from phasevae.store.records import Transition
from phasevae.tools.cases import CASES, QUICK, Case

LONG = 4  # the reference trains this many times longer
REFINE = 8  # sigma^2 the refined stage adds inside the estimate's interval at T
ESTIMATORS = ("total_kl", "top_dim", "estimate", "refined")


def case_spec(
    case: Case, data_path: Path, lambda_max: float, sigma2: list[float] | None = None
) -> dict:
    """The sweep spec (as a dict) of a case trained LONG x its nominal steps, on its
    log-spaced grid or on the listed ``sigma2``."""
    center = lambda_max / case.beta
    grid = {"min": 0.3 * center, "max": 3.0 * center, "num": case.points}
    return {
        "data": {"source": "array", "path": str(data_path), "normalize": "none"},
        "model": {
            "latent_dim": case.latent_dim,
            "encoder": list(case.arch[0]),
            "decoder": list(case.arch[1]),
            **dict(case.model),
        },
        "train": {
            "steps": LONG * case.steps,
            "batch_size": case.batch_size,
            "learning_rate": case.learning_rate,
            "eval_every": case.eval_every,
        },
        "grid": {
            "sigma2": grid | {"scale": "log"} if sigma2 is None else sigma2,
            "beta": [case.beta],
            "seeds": list(case.seeds),
        },
    }


def case_data(case: Case, folder: Path) -> tuple[np.ndarray, Path, float]:
    """A case's data (made once into ``folder/<case>.npy``, reused after), its path
    and lambda_max as its model sees it (whitened by its likelihood's variances, or
    of the innovations for an autoregressive decoder)."""
    from phasevae.data import load_for_model
    from phasevae.spec import spec_from_dict

    x = case.data(np.random.default_rng(0)).astype(np.float32)
    path = folder / f"{case.name}.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        np.save(path, x)
    spec = spec_from_dict(case_spec(case, path, 1.0), where=case.name)
    return x, path, float(load_for_model(spec).eigenvalues[0])


def run_case(case: Case, out: Path, progress=None) -> dict:
    """Train (or reuse) one case and compare the estimators. Returns its row."""
    from phasevae.engine.sweep import run_sweep
    from phasevae.spec import spec_from_dict

    x, data_path, lam = case_data(case, out / "data")
    spec = spec_from_dict(case_spec(case, data_path, lam), where=case.name)
    result = run_sweep(spec, out / "runs" / case.name, progress)
    metrics, spectrum = result.metrics, result.meta.spectrum
    theory = spectrum["lambda_max"] / case.beta
    k = spec.model.kl_dims(x.shape[1])  # a ladder's two layers, a VRNN's steps

    def at_t(m):
        result = analysis.analyze(m[m["step"] <= case.steps], spectrum, k)
        (t,) = result.transitions
        return t

    now = at_t(metrics)
    added = estimate.interval_values(now, metrics["sigma2"].unique(), REFINE)
    if added:
        spec = spec_from_dict(
            case_spec(case, data_path, lam, added), where=f"{case.name}-refined"
        )
        more = run_sweep(spec, out / "runs" / f"{case.name}-refined", progress)
        metrics = pd.concat([metrics, more.metrics], ignore_index=True)
    refined = at_t(metrics)
    (ref,) = analysis.analyze(metrics, spectrum, k).transitions
    # the probe can show that this network's collapse is stable below lambda_max
    # (e.g. its units died): then lambda_max is not its answer, on any data
    shifted = (ref.off_theory or {}).get("evidence") == "probe"
    if case.gaussian and not shifted:
        reference, truth = theory, "lambda_max"
    else:
        reference, truth = ref.sigma2_c_final, "long training"
    row = {
        "case": case.name,
        "description": case.description,
        "N": int(x.shape[1]),
        "n": int(x.shape[0]),
        "beta": case.beta,
        "arch": "-".join(map(str, case.arch[0]))
        + " / "
        + "-".join(map(str, case.arch[1])),
        "steps": case.steps,
        "reference_steps": LONG * case.steps,
        "lambda_max_over_beta": theory,
        "truth": truth,
        "lambda_max_is_truth": case.gaussian,
        "reference": reference,
        "off_theory_long": ref.off_theory,
        "probe_long": _probe_summary(ref.probe),
        "long_top_dim": ref.sigma2_c_final,
        "long_estimate": ref.sigma2_c,
        "long_verdict": ref.verdict,
        "long_jump": ref.jump,
        "refined_sigma2": added,
        "estimators": _estimators(now, refined, ref, reference, theory),
    }
    return row


def _estimators(now, refined, ref, reference: float, theory: float) -> dict:
    """Each estimator at T against the case's ``reference``: the total-KL fit, the
    top dim's fit, the estimate (with its parts, and against the long run ``ref``)
    and the estimate after refinement."""
    return {
        "total_kl": _score(now.sigma2_c_total_kl, now.ci_total_kl, reference),
        "top_dim": _score(now.sigma2_c_final, _stat_ci(now), reference),
        "estimate": {
            **_score(now.sigma2_c, now.ci, reference),
            "covers_long_training": _score(now.sigma2_c, now.ci, ref.sigma2_c_final)[
                "covers"
            ],
            "verdict": now.verdict,
            "holds_for_steps": now.holds_for_steps,
            "ci_statistical": now.ci_statistical,
            "ci_finite_training": now.ci_finite_training,
            "train_longer": now.train_longer and now.train_longer.to_json(),
            "trapped": now.trapped,
            "off_theory": now.off_theory,
            "probe": _probe_summary(now.probe),
            "error_vs_lambda_max": now.sigma2_c / theory - 1
            if now.sigma2_c is not None
            else None,
            "jump": now.jump,
        },
        "refined": {
            **_score(refined.sigma2_c, refined.ci, reference),
            "verdict": refined.verdict,
            "holds_for_steps": refined.holds_for_steps,
            "jump": refined.jump,
        },
    }


def _probe_summary(probe: dict | None) -> dict | None:
    if probe is None:
        return None
    return {
        k: probe[k]
        for k in ("collapsed", "unstable_sigma2", "dead_sigma2", "lambda_c_ratio")
    }


def _stat_ci(t: Transition) -> list[float] | None:
    if t.sigma2_c_final is None or t.ci_statistical is None:
        return None
    u = math.log(t.sigma2_c_final)
    below, above = t.ci_statistical
    return [math.exp(u - below), math.exp(u + above)]


def _score(value, ci, reference) -> dict:
    if value is None or reference is None:
        return {"sigma2_c": value, "ci": ci, "error": None, "covers": False}
    return {
        "sigma2_c": value,
        "ci": ci,
        "error": value / reference - 1,
        "covers": bool(ci is not None and ci[0] <= reference <= ci[1]),
    }


ALPHA = 0.05  # the intervals are 95 %: the interval score's miss penalty is 2 / ALPHA


def sharpness(scores: list[dict], references: list[float | None]) -> dict:
    """How narrow intervals are, beside how often they cover: the median and worst
    half-width (the larger side, in ln sigma^2, ~ relative), and the median interval
    score (Gneiting and Raftery 2007) in ln sigma^2: the width plus 2 / ALPHA times
    the distance by which the interval misses the reference (an interval that
    covers scores its width; a missing interval counts as infinitely wide)."""
    halves = [estimate.half_width(s["sigma2_c"], s["ci"]) for s in scores]
    marks = []
    for s, ref in zip(scores, references, strict=True):
        if s["sigma2_c"] is None or not s["ci"] or ref is None:
            marks.append(math.inf)
            continue
        lo, hi = (math.log(v) for v in s["ci"])
        r = math.log(ref)
        miss = max(lo - r, 0.0) + max(r - hi, 0.0)
        marks.append(hi - lo + 2 / ALPHA * miss)
    return {
        "median_half_width": float(np.median(halves)) if halves else None,
        "worst_half_width": float(np.max(halves)) if halves else None,
        "median_interval_score": float(np.median(marks)) if marks else None,
    }


def summarize(rows: list[dict]) -> dict:
    """Per estimator: median and worst |error| against the reference, coverage of
    its intervals and their sharpness (:func:`sharpness`), and (for the estimate)
    how many trusted intervals miss."""
    out = {}
    for name in ESTIMATORS:
        scores = [r["estimators"][name] for r in rows]
        errors = [abs(s["error"]) for s in scores if s["error"] is not None]
        out[name] = {
            "cases": len(rows),
            "located": len(errors),
            "median_abs_error": float(np.median(errors)) if errors else None,
            "worst_abs_error": float(np.max(errors)) if errors else None,
            "coverage": sum(s["covers"] for s in scores) / len(rows) if rows else None,
            **sharpness(scores, [r["reference"] for r in rows]),
        }
    for name in ("estimate", "refined"):
        trusted = [
            r["estimators"][name]
            for r in rows
            if r["estimators"][name]["verdict"] == "trusted"
        ]
        # a trusted answer of absorbing collapse claims to hold for T steps only:
        # against the 4 T reference it shows the drift, not a broken claim
        at_t = [s for s in trusted if s.get("holds_for_steps")]
        limit = [s for s in trusted if not s.get("holds_for_steps")]
        out[name].update(
            trusted=len(trusted),
            trusted_for_t=len(at_t),
            trusted_for_t_covering_long=sum(s["covers"] for s in at_t),
            trusted_missing=sum(not s["covers"] for s in limit),
            trusted_median_abs_error=float(
                np.median([abs(s["error"]) for s in trusted])
            )
            if trusted
            else None,
            jumps=sum(r["estimators"][name]["jump"] is not None for r in rows),
        )
    est = [r["estimators"]["estimate"] for r in rows]
    # the large-n Gaussian cases against lambda_max / beta itself, whatever the probe
    gauss = [r for r in rows if r["lambda_max_is_truth"]]
    vs_theory = [abs(r["estimators"]["estimate"]["error_vs_lambda_max"]) for r in gauss]
    out["estimate_vs_lambda_max"] = {
        "cases": len(gauss),
        "median_abs_error": float(np.median(vs_theory)) if vs_theory else None,
        "worst_abs_error": float(np.max(vs_theory)) if vs_theory else None,
        "covers": sum(
            _score(
                r["estimators"]["estimate"]["sigma2_c"],
                r["estimators"]["estimate"]["ci"],
                r["lambda_max_over_beta"],
            )["covers"]
            for r in gauss
        ),
        "off_theory_by_probe": sum(
            (r["estimators"]["estimate"]["off_theory"] or {}).get("evidence") == "probe"
            for r in gauss
        ),
    }
    out["estimate"].update(
        coverage_long_training=sum(s["covers_long_training"] for s in est) / len(rows),
    )
    return out


def table(rows: list[dict], summary: dict) -> str:
    """The suite as a markdown table, then the summary."""
    lines = [
        "| case | N | n | beta | lambda_max/beta | reference | total-KL fit | "
        "top-dim fit | estimate [95 %] | error | covers | verdict | "
        "refined at T [95 %] | error | covers | verdict | "
        "probe: lambda_c/lambda_max, trapped, dead |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *(_case_line(r) for r in rows),
        "",
        "| estimator | median abs error | worst abs error | coverage | "
        "median half-width | worst half-width | median interval score |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in ESTIMATORS:
        s = summary[name]
        lines.append(
            f"| {name} | {_absolute(s['median_abs_error'])} | "
            f"{_absolute(s['worst_abs_error'])} | "
            f"{s['coverage']:.0%} ({round(s['coverage'] * s['cases'])}/{s['cases']}) | "
            f"{_absolute(s['median_half_width'])} | "
            f"{_absolute(s['worst_half_width'])} | "
            f"{_fmt(s['median_interval_score'])} |"
        )
    est, th = summary["estimate"], summary["estimate_vs_lambda_max"]
    lines += [
        "",
        f"Against lambda_max / beta itself in the {th['cases']} large-n Gaussian "
        f"cases: median |error| {_absolute(th['median_abs_error'])}, worst "
        f"{_absolute(th['worst_abs_error'])}; intervals covering it: {th['covers']}; "
        f"transitions the analysis reports off the theory with the stability probe "
        f"as evidence (collapse stable below lambda_max / beta): "
        f"{th['off_theory_by_probe']}.",
        "",
        f"Coverage of the estimate's intervals against the long-training fit in every "
        f"case (lambda_max included): {est['coverage_long_training']:.0%}.",
        "",
        *(
            f"{name}: trusted {summary[name]['trusted']} of {est['cases']} "
            f"({summary[name].get('trusted_for_t', 0)} of them for T steps only, "
            "absorbing collapse: against the 4 T reference they show the drift, "
            f"{summary[name].get('trusted_for_t_covering_long', 0)} cover it); "
            "trusted intervals of the limit that miss the reference "
            f"{summary[name]['trusted_missing']}; "
            f"jumps (the top dim's KL drops across one grid cell) "
            f"{summary[name]['jumps']}."
            for name in ("estimate", "refined")
        ),
    ]
    return "\n".join(lines) + "\n"


def _case_line(r: dict) -> str:
    """One case's row of the table."""
    e = r["estimators"]
    ref = _fmt(r["reference"]) + (" (lambda_max)" if r["truth"] == "lambda_max" else "")
    if (r["off_theory_long"] or {}).get("evidence") == "probe":
        ref += " (collapse stable below lambda_max)"
    if r["long_jump"]:
        lo, hi = r["long_jump"]
        ref += f" jump +-{100 * (math.sqrt(hi / lo) - 1):.1f} %"
    cells = [
        r["case"],
        r["N"],
        r["n"],
        f"{r['beta']:g}",
        f"{r['lambda_max_over_beta']:.4g}",
        ref,
        f"{_pct(e['total_kl']['error'])} {_yes(e['total_kl']['covers'])}",
        f"{_pct(e['top_dim']['error'])} {_yes(e['top_dim']['covers'])}",
        _value(e["estimate"]),
        _pct(e["estimate"]["error"]),
        _yes(e["estimate"]["covers"]),
        e["estimate"]["verdict"],
        _value(e["refined"]),
        _pct(e["refined"]["error"]),
        _yes(e["refined"]["covers"]),
        e["refined"]["verdict"],
        _probe_cell(e["estimate"]["probe"]),
    ]
    return "| " + " | ".join(map(str, cells)) + " |"


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:+.1f} %"


def _absolute(v) -> str:
    return "-" if v is None else f"{100 * v:.1f} %"


def _value(s: dict) -> str:
    """An estimator's value and interval, and whether the KL jumps there."""
    ci = "-" if s["ci"] is None else f"[{s['ci'][0]:.4g}, {s['ci'][1]:.4g}]"
    return f"{_fmt(s['sigma2_c'])} {ci}" + (" jump" if s["jump"] else "")


def _probe_cell(p: dict | None) -> str:
    if p is None:
        return "-"
    return (
        f"{p['lambda_c_ratio']:.2f}, {len(p['unstable_sigma2'])}, "
        f"{len(p['dead_sigma2'])} of {p['collapsed']}"
    )


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _fmt(v):
    return "-" if v is None else f"{v:.4g}"


def run_suite(out: str | Path, quick: bool = False, only=(), progress=None) -> dict:
    """Run the suite (or ``only`` the named cases) into ``out``; write
    validation.json and table.md there (with ``only``, the rows of the other cases
    are kept from the validation.json already there). Returns {rows, summary}."""
    out = Path(out)
    cases = QUICK if quick else CASES
    if only:
        unknown = set(only) - {c.name for c in cases}
        if unknown:
            from phasevae.errors import BadInput

            raise BadInput(
                f"unknown validation case(s) {sorted(unknown)}; the cases are "
                f"{', '.join(c.name for c in cases)}"
            )
        cases = [c for c in cases if c.name in only]
    done = {}
    if only and (out / "validation.json").exists():  # the cases not named are kept
        kept = json.loads((out / "validation.json").read_text()).get("rows", [])
        done = {r["case"]: r for r in kept}
    for case in cases:
        if progress:
            progress(case)
        done[case.name] = run_case(case, out)
    order = [c.name for c in (QUICK if quick else CASES)]
    rows = [done[name] for name in order if name in done]
    summary = summarize(rows)
    doc = {"long_factor": LONG, "rows": rows, "summary": summary}
    atomic_write_text(out / "validation.json", json.dumps(doc, indent=1))
    atomic_write_text(out / "table.md", table(rows, summary))
    return doc
