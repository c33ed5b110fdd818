"""Hierarchical latents (issue 31 item 1): which layer of a two-layer Ladder VAE
collapses first, and where, against the derived criterion beta min(1, kappa)
sigma^2 = lambda_max (docs/science.md, 'Hierarchical latents'), kappa the weight of
the top layer's KL.

    python studies/ladder.py

Runs sweeps/ladder.toml (kappa = 0.5, 1, 2; 3 seeds) for the linear ladder (3000
and 12000 steps) and the default MLP into results/ladder/<model>/, and writes
table.md and table.json there:
per kappa, the model's transition (the most informative dim) against the derived
one, and each layer's own transition and KL at the smallest sigma^2.
"""

from __future__ import annotations

import json
from pathlib import Path

from phasevae.api import run

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "results" / "ladder"
SPEC = ROOT / "sweeps" / "ladder.toml"
LINEAR = ["model.encoder=[]", "model.decoder=[]"]
MODELS = {
    "linear": LINEAR,
    "linear_12k": [*LINEAR, "train.steps=12000", "train.eval_every=500"],
    "mlp": [],
}


def rows_of(model: str) -> list[dict]:
    result = run(SPEC, OUT / model, overrides=MODELS[model])
    analysis = result.analyze()
    rows = []
    for t in analysis.transitions:
        rows.append(
            {
                "model": model,
                "kappa": t.curve["top_kl_weight"],
                "theory": t.theory_sigma2_c,
                "sigma2_c": t.sigma2_c,
                "ci": t.ci,
                "verdict": t.verdict,
                "layers": t.information["layers"],
                "command": "phasevae sweep sweeps/ladder.toml --out "
                f"results/ladder/{model}"
                + "".join(f" --set {o}" for o in MODELS[model]),
            }
        )
    return rows


def _at(value, ci) -> str:
    if value is None:
        return "none in the grid"
    return f"{value:.3g}" + ("" if not ci else f" [{ci[0]:.3g}, {ci[1]:.3g}]")


def table(rows: list[dict]) -> str:
    lines = [
        "| model | kappa | derived sigma2_c | model's sigma2_c [95 %] | verdict | "
        "layer 1 (bottom): sigma2_c; KL at sigma^2 = 1 | layer 2 (top): sigma2_c; "
        "KL at sigma^2 = 1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        bottom, top = r["layers"]
        cells = [
            f"{_at(layer['sigma2_c'], layer['ci'])}; {layer['kl_at_min_sigma2']:.3f}"
            for layer in (bottom, top)
        ]
        lines.append(
            f"| {r['model']} | {r['kappa']:g} | {r['theory']:.3g} | "
            f"{_at(r['sigma2_c'], r['ci'])} | {r['verdict']} | {cells[0]} | "
            f"{cells[1]} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    rows = [r for model in MODELS for r in rows_of(model)]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "table.json").write_text(json.dumps(rows, indent=1))
    (OUT / "table.md").write_text(table(rows))
    print(table(rows))
