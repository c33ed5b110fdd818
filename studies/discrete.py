"""Discrete latents (issue 31 item 3): is the measured transition of a categorical
latent where the derived criterion beta sigma^2 = rho lambda_max puts it, for both
estimators, and what does the practitioner's guide's entropy target do to it?

    python studies/discrete.py [locate] [entropy] [binding] [--budget MODEL_STEPS]

``locate``: sweeps/discrete.toml (scikit-learn's digits, 2 codes of 4 values, tau =
1, 3 seeds), the linear model and the default MLP, Gumbel-softmax and
straight-through, each located by ``phasevae locate`` into
results/discrete/<model>-<estimator>/ and held against rho lambda_max
(``--budget``: continue them with that budget per curve, as ``phasevae locate
--budget`` does).
``entropy``: the MLP with Gumbel-softmax, grid.entropy_target = 0, 0.69 and 1.25
nats (0, 1/2 and 9/10 of ln 4), 3 seeds, one sweep into
results/discrete/entropy_target/: each target's transition and the codes' usage
(perplexity, out of 4) and I(x; z) at the smallest sigma^2.
``binding``: where the target binds: one code of 64 values, straight-through, beta
= 0.001 and 0.01 (where usage concentrates), sigma^2 = 0.05, 0.2 and 0.8, target 0
and 3.5 nats (perplexity 33), 3 seeds, one sweep into
results/discrete/entropy_binding/: usage, I(x; z) and squared error per point, seeds'
mean and range (not run by default). Writes table.md and table.json in
results/discrete/ (the rows of the parts not named are kept).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from phasevae.api import locate, open_run, run

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "results" / "discrete"
SPEC = ROOT / "sweeps" / "discrete.toml"
MODELS = {"linear": ["model.encoder=[]", "model.decoder=[]"], "mlp": []}
ESTIMATORS = ("gumbel", "straight_through")
TARGETS = (0.0, round(0.5 * math.log(4), 2), round(0.9 * math.log(4), 2))


def locate_one(model: str, estimator: str, budget: int | None) -> dict:
    name = f"{model}-{estimator}"
    overrides = [*MODELS[model], f'model.estimator="{estimator}"']
    result = locate(SPEC, OUT / name, overrides=overrides, budget=budget)
    (curve,) = result["curves"]
    located = open_run(OUT / name)
    theory = located.meta.spectrum["lambda_max"]
    return {
        "case": name,
        "rho": float(located.meta.spectrum["description"].split("rho = ")[1]),
        "rho_lambda_max": theory,
        "sigma2_c": curve["sigma2_c"],
        "ci": curve["ci"],
        "verdict": curve["verdict"],
        "rel_error": None
        if curve["sigma2_c"] is None
        else curve["sigma2_c"] / theory - 1,
        "model_steps": curve["model_steps"],
        "command": f"phasevae locate sweeps/discrete.toml --out results/discrete/{name}"
        + "".join(f" --set {o}" for o in overrides)
        + (f" --budget {budget}" if budget else ""),
    }


def entropy_rows() -> list[dict]:
    overrides = [f"grid.entropy_target={list(TARGETS)}"]
    out = OUT / "entropy_target"
    result = run(SPEC, out, overrides=overrides)
    analysis = result.analyze()
    last = result.metrics[result.metrics["step"] == result.metrics["step"].max()]
    low = last[last["sigma2"] == last["sigma2"].min()]
    rows = []
    for t in analysis.transitions:
        target = t.curve["entropy_target"]
        at = low[low["entropy_target"] == target]
        usage = at[["usage_dim_0", "usage_dim_1"]].to_numpy()
        rows.append(
            {
                "entropy_target": target,
                "sigma2_c": t.sigma2_c,
                "ci": t.ci,
                "verdict": t.verdict,
                "rho_lambda_max": analysis.spectrum.lambda_max,
                "usage_at_min_sigma2": float(usage.mean()),
                "usage_min_at_min_sigma2": float(usage.min()),
                "kl_at_min_sigma2": float(at["kl"].mean()),
                "mi_at_min_sigma2": float(at["mi"].mean()),
                "command": "phasevae sweep sweeps/discrete.toml --out "
                f"results/discrete/entropy_target --set {overrides[0]}",
            }
        )
    return rows


BINDING = [
    "model.latent_categories=64",
    "model.latent_dim=1",
    'model.estimator="straight_through"',
    "grid.beta=[0.001, 0.01]",
    "grid.sigma2=[0.05, 0.2, 0.8]",
    "grid.seeds=[0, 1, 2]",
    "grid.entropy_target=[0.0, 3.5]",
]
CELLS = ("usage", "mi", "mse")  # each: the seeds' mean (least-largest)


def binding_rows() -> list[dict]:
    """Per (beta, sigma^2, target): the seeds' mean and range of the usage (of 64),
    I(x; z) and squared error at the last evaluation."""
    result = run(SPEC, OUT / "entropy_binding", overrides=BINDING)
    last = result.metrics[result.metrics["step"] == result.metrics["step"].max()]
    rows = []
    keys = ["beta", "sigma2", "entropy_target"]
    for key, g in last.groupby(keys):
        row = dict(zip(keys, map(float, key), strict=True))
        for name, column in zip(CELLS, ("usage_dim_0", "mi", "mse"), strict=True):
            v = g[column].to_numpy()
            row[name] = [float(v.mean()), float(v.min()), float(v.max())]
        rows.append(row)
    return rows


def _interval(r: dict) -> str:
    s2c = "-" if r["sigma2_c"] is None else f"{r['sigma2_c']:.4g}"
    ci = "" if not r["ci"] else f" [{r['ci'][0]:.4g}, {r['ci'][1]:.4g}]"
    return s2c + ci


def table(doc: dict) -> str:
    lines = [
        "| model, estimator | rho | rho lambda_max | located [95 %] | error | "
        "verdict | model-steps |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in doc.get("locate", []):
        err = "-" if r["rel_error"] is None else f"{100 * r['rel_error']:+.1f} %"
        lines.append(
            f"| {r['case']} | {r['rho']:.4g} | {r['rho_lambda_max']:.4g} | "
            f"{_interval(r)} | {err} | {r['verdict']} | {r['model_steps']:,} |"
        )
    lines += [
        "",
        "| entropy target (nats) | sigma2_c [95 %] | verdict | usage at the smallest "
        "sigma^2 (mean, least; of 4) | KL | I(x; z) |",
        "|---|---|---|---|---|---|",
    ]
    for r in doc.get("entropy", []):
        lines.append(
            f"| {r['entropy_target']:g} | {_interval(r)} | {r['verdict']} | "
            f"{r['usage_at_min_sigma2']:.3f}, {r['usage_min_at_min_sigma2']:.3f} | "
            f"{r['kl_at_min_sigma2']:.3f} | {r['mi_at_min_sigma2']:.3f} |"
        )
    lines += [
        "",
        "| beta | sigma^2 | entropy target (nats) | usage of 64 | I(x; z) (nats) | "
        "squared error |",
        "|---|---|---|---|---|---|",
    ]
    for r in doc.get("binding", []):
        cells = " | ".join(
            f"{m:.3g} ({lo:.3g}-{hi:.3g})" for m, lo, hi in (r[c] for c in CELLS)
        )
        lines.append(
            f"| {r['beta']:g} | {r['sigma2']:g} | {r['entropy_target']:g} | {cells} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    args = sys.argv[1:]
    budget = None
    if "--budget" in args:
        at = args.index("--budget")
        budget = int(args[at + 1])
        del args[at : at + 2]
    parts = args or ["locate", "entropy"]
    path = OUT / "table.json"
    doc = json.loads(path.read_text()) if path.exists() else {}
    if "locate" in parts:
        doc["locate"] = [locate_one(m, e, budget) for m in MODELS for e in ESTIMATORS]
    if "entropy" in parts:
        doc["entropy"] = entropy_rows()
    if "binding" in parts:
        doc["binding"] = binding_rows()
    OUT.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1))
    (OUT / "table.md").write_text(table(doc))
    print(table(doc))
