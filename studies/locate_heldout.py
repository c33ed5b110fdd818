"""``phasevae locate`` on held-out data made here, in no suite (issue 26): each data
set is located from its file alone (locate's defaults: centred, a 2-dim latent, the
default MLP, T = 3000 steps, beta 1), then checked against an independent reference
at the length the answer claims: a plain sweep of ``DENSE`` sigma^2 spread evenly in
ln sigma^2 over +-``SPREAD`` around locate's answer, trained from scratch (another
vmapped program, so another rounding of the same training), estimated the same way.
An answer of absorbing collapse (dead units) holds for the length its kink's points
trained, and its reference trains that long; any other claims the equilibrium
transition, and its reference trains ``LONG`` x T.

    python studies/locate_heldout.py [--fresh]

writes ``results/heldout/locate.md`` and ``locate.json``; the data files are made in
``results/heldout/data/`` (ignored by git) from the seeds below. Runs that exist
are resumed (finished ones only re-read); ``--fresh`` deletes every locate run and
reference first, as after a change to the estimate or to locate.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
from locate_suite import held_for

from phasevae.analysis import estimate
from phasevae.store import RunDir
from phasevae.tools.locate import Stage, data_file_spec, locate, stage_spec

ROOT = Path(__file__).resolve().parent.parent / "results" / "heldout"
# odd: a grid point sits at locate's answer, so the reference's cell (and the
# middle it reports for a drop) is never centred on the answer by construction
DENSE, SPREAD = 17, 0.16
LONG = 4  # the equilibrium reference's length, x T


def _rotated(rng, scales, n, kind="gaussian", offset=0.0):
    d = len(scales)
    f = rng.normal(size=(n, d)) if kind == "gaussian" else rng.laplace(size=(n, d))
    if kind == "laplace":
        f /= math.sqrt(2)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return (f * np.sqrt(scales)) @ q.T + offset


def datasets() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2026)
    out = {
        # rotated Laplace factors, a top pair 1.3 apart, offset mean
        "laplace20_top13": _rotated(
            rng, [6.0, 4.6, 2.0] + [0.4] * 17, 8000, "laplace", 3.0
        ),
        # Gaussian, a flat top (1.05 apart), mean -2
        "gauss10_flat": _rotated(
            rng, [5.0, 4.76, 1.5, 1.0] + [0.2] * 6, 5000, offset=-2
        ),
        # discrete features (2-5 levels) driven by 3 Gaussian factors
        "discrete12": _discrete(rng),
    }
    try:  # a real table that ships with scikit-learn
        from sklearn.datasets import load_iris

        x = load_iris().data
        out["iris"] = (x - x.mean(0)) / x.std(0)
    except ImportError:
        pass
    return out


def _discrete(rng) -> np.ndarray:
    z = rng.normal(size=(5000, 3))
    w = rng.normal(size=(3, 12))
    levels = rng.integers(2, 6, size=12)
    cont = z @ w + 0.5 * rng.normal(size=(5000, 12))
    x = np.stack(
        [
            np.digitize(c, np.quantile(c, np.linspace(0, 1, k + 1)[1:-1]))
            for c, k in zip(cont.T, levels, strict=True)
        ],
        axis=1,
    ).astype(np.float64)
    return (x - x.mean(0)) / x.std(0)


def reference(path: Path, answer: float, out: Path, steps: int) -> dict:
    """The dense plain sweep around ``answer`` at locate's defaults, trained
    ``steps``, estimated."""
    from phasevae.engine.sweep import run_sweep

    base = data_file_spec(path, [])
    grid = tuple(np.exp(np.linspace(-SPREAD, SPREAD, DENSE)) * answer)
    stage = Stage("dense", "coarse", 1.0, grid, steps, "reference")
    run = run_sweep(stage_spec(base, stage), out)
    spectrum = run.meta.spectrum
    return estimate.estimate_transition(
        run.metrics,
        base.model.latent_dim,
        spectrum["lambda_max"],
        spectrum.get("lambda_max_eval"),
    )


def main(fresh: bool = False) -> None:
    rows = {}
    for name, x in datasets().items():
        if fresh:
            for folder in ("locate", "reference"):
                shutil.rmtree(ROOT / folder / name, ignore_errors=True)
        data = ROOT / "data" / f"{name}.npy"
        data.parent.mkdir(parents=True, exist_ok=True)
        np.save(data, x.astype(np.float32))
        result = locate(data, ROOT / "locate" / name, say=print)
        (c,) = result["curves"]
        lam = RunDir(ROOT / "locate" / name).meta().spectrum["lambda_max"]
        base = data_file_spec(data, [])
        steps = base.train.steps
        holds = held_for(ROOT / "locate" / name, base.model.latent_dim)
        length = holds or LONG * steps
        ref = reference(data, c["sigma2_c"], ROOT / "reference" / name, length)
        found = ref.sigma2_c
        covers = bool(found and c["ci"] and c["ci"][0] <= found <= c["ci"][1])
        rows[name] = {
            "n": int(x.shape[0]),
            "N": int(x.shape[1]),
            "lambda_max": lam,
            **{k: c[k] for k in ("sigma2_c", "ci", "half_width", "verdict", "stopped")},
            "model_steps": c["model_steps"],
            "cost_vs_plain": c["model_steps"] / (24 * steps),
            "holds_for_steps": holds,
            "reference_steps": length,
            "reference": ref.sigma2_c,
            "reference_ci": ref.ci,
            "reference_jump": ref.jump,
            "covers_reference": covers,
            "overlaps_reference": bool(
                c["ci"]
                and ref.ci
                and c["ci"][0] <= ref.ci[1]
                and ref.ci[0] <= c["ci"][1]
            ),
        }
        (ROOT / "locate.json").write_text(json.dumps(rows, indent=1))
    lines = [
        "| data | n x N | lambda_max | locate [95 %] | half-width | verdict | "
        "model-steps / plain 24 | holds for | dense reference [95 %] at | covers | "
        "overlaps |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        ci = r["ci"] or [math.nan, math.nan]
        lines.append(
            f"| {name} | {r['n']} x {r['N']} | {r['lambda_max']:.4g} | "
            f"{r['sigma2_c']:.4g} [{ci[0]:.4g}, {ci[1]:.4g}] | "
            f"{100 * r['half_width']:.1f} % | {r['verdict']} | "
            f"{r['cost_vs_plain']:.2f} | {r['holds_for_steps'] or 'equilibrium'} | "
            f"{_num(r['reference'])} {_ci(r['reference_ci'])} at "
            f"{r['reference_steps']} | {'yes' if r['covers_reference'] else 'no'} | "
            f"{'yes' if r['overlaps_reference'] else 'no'} |"
        )
    (ROOT / "locate.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _ci(ci) -> str:
    return "" if not ci else f"[{ci[0]:.4g}, {ci[1]:.4g}]"


def _num(v) -> str:
    return "not in the dense grid" if v is None else f"{v:.4g}"


if __name__ == "__main__":
    main(fresh="--fresh" in sys.argv[1:])
