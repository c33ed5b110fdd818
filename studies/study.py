"""Shared by the study scripts: run one sweep variant into results/ and summarise it.

Each study script reproduces one result in results/: it runs its sweeps (resuming any
that are unfinished), analyses them, and writes results/<study>/summary.json, whose
rows go into results/README.md.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

from phasevae.analysis.curves import GRID_AXES, analyze_run
from phasevae.engine.devices import split_cpu_into_devices
from phasevae.engine.sweep import run_sweep
from phasevae.report.figures import write_figures
from phasevae.spec import load_spec
from phasevae.store import atomic_write_text

split_cpu_into_devices()  # as `phasevae sweep` does, before JAX starts its backend

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"


def run_variant(study: str, name: str, spec: str, overrides: list[str] = ()) -> dict:
    """Sweep ``sweeps/<spec>`` with ``overrides`` into results/<study>/<name>, analyse
    and plot it, and return one summary row per transition."""
    out = RESULTS / study / name
    result = run_sweep(load_spec(ROOT / "sweeps" / spec, list(overrides)), out)
    doc = analyze_run(out)
    write_figures(out)
    command = f"phasevae sweep sweeps/{spec}" + "".join(
        f" --set {o}" for o in overrides
    )
    varying = [
        a
        for a in GRID_AXES
        if a not in ("beta", "sigma2", "seed")
        and len({t.curve.get(a) for t in doc.transitions}) > 1
    ]
    rows = []
    for t in doc.transitions:
        c = t.curve
        setting = ", ".join(
            f"{a} = {c[a] if isinstance(c[a], str) else format(c[a], 'g')}"
            for a in varying
        )
        rows.append(
            {
                "study": study,
                "variant": f"{name} ({setting})" if setting else name,
                "command": f"{command} --out results/{study}/{name}",
                "beta": t.beta,
                "sigma2_c": t.sigma2_c,
                "ci": t.ci,
                "ci_method": t.ci_method,
                "predicted": t.theory_sigma2_c,
                "rel_error": t.rel_error,
                "converged": t.converged,
                "verdict": t.verdict,
                "information": t.information,
                "per_dim": [(d.sigma2_c, d.theory) for d in t.per_dim],
                "theta_c": doc.boundary["theta_c"],
                "theta_c_ci": doc.boundary["ci"],
                "lambda_max": doc.spectrum.lambda_max,
                "train_s": result.meta.wall_times.train_s,
                "compile_s": result.meta.wall_times.compile_s,
                "models": result.meta.grid_size,
                "machine": f"{platform.machine()}, {_cores()} cores, "
                f"{result.meta.platform}",
            }
        )
    return rows


def write_summary(study: str, rows: list[dict]) -> None:
    path = RESULTS / study / "summary.json"
    atomic_write_text(path, json.dumps(rows, indent=1))
    for r in rows:
        lo, hi = r["ci"] or (float("nan"), float("nan"))
        err = "-" if r["rel_error"] is None else f"{100 * r['rel_error']:+.1f} %"
        s2c = "none" if r["sigma2_c"] is None else f"{r['sigma2_c']:.4g}"
        print(
            f"{r['variant']:>10} beta={r['beta']:<4} sigma2_c={s2c}"
            f" [{lo:.4g}, {hi:.4g}] predicted {r['predicted']:.4g} ({err})"
            f" converged={r['converged']} verdict={r.get('verdict')}"
        )
    print(f"wrote {path}")


def run_study(study: str, specs: dict, variants: dict, scaling: str) -> None:
    """Every variant (a list of overrides) of every spec (``{data: file}``) into
    results/<study>/<data>_<variant>, then its summary.json, table.md and
    scaling.json (each run's analysis.json entry ``scaling``: "scaling" overall,
    "scaling_by" per remedy setting)."""
    rows, checks = [], {}
    for data, spec in specs.items():
        for variant, overrides in variants.items():
            name = f"{data}_{variant}"
            rows += run_variant(study, name, spec, overrides)
            doc = json.loads((RESULTS / study / name / "analysis.json").read_text())
            checks[name] = doc[scaling]
    write_summary(study, rows)
    write_table(study, rows)
    atomic_write_text(
        RESULTS / study / "scaling.json", json.dumps(checks, indent=1, default=str)
    )


def write_table(study: str, rows: list[dict]) -> str:
    """results/<study>/table.md: one line per transition (variant, beta, the
    estimate with its interval against lambda_max / beta, the verdict, where
    I(x; z) is lost and the active directions); returns the table."""
    lines = [
        "| variant | beta | sigma2_c [95 %] | vs lambda_max / beta | verdict "
        "| I(x;z) at max sigma^2 | I(x;z) lost from sigma^2 "
        "| directions at min / max sigma^2 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s2c, ci, info = r["sigma2_c"], r["ci"], r.get("information") or {}
        est = "none" if s2c is None else f"{s2c:.4g}"
        est += "" if ci is None else f" [{ci[0]:.4g}, {ci[1]:.4g}]"
        err = "-" if r["rel_error"] is None else f"{100 * r['rel_error']:+.1f} %"
        mi = info.get("mi_at_max_sigma2")
        lost = info.get("mi_lost_sigma2")
        lines.append(
            f"| {r['variant']} | {r['beta']:g} | {est} | {err} | {r['verdict']} | "
            + ("-" if mi is None else f"{mi:.3f}")
            + " | "
            + ("never" if lost is None else f"{lost:.3g}")
            + " | "
            + (
                "-"
                if "directions_at_min_sigma2" not in info
                else f"{info['directions_at_min_sigma2']:.2f} / "
                f"{info['directions_at_max_sigma2']:.2f}"
            )
            + " |"
        )
    text = "\n".join(lines) + "\n"
    atomic_write_text(RESULTS / study / "table.md", text)
    return text


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))
