"""Recurrent latents (issue 31 item 2): temporal collapse in a VRNN, step by step,
against the derived thresholds beta sigma^2 = D_t (each step's innovation variance
given the steps before, docs/science.md 'Recurrent latents'), and the recurrent
state's cheating as a number: the VRNN against a non-recurrent VAE (the default MLP)
on the same windows.

    python studies/vrnn.py

Data: 5000 windows of 10 consecutive values of an AR(2) process (phi = 0.5, 0.3),
made here (results/vrnn/data/, not committed). Sweeps (16 sigma^2, 3 seeds) into
results/vrnn/vrnn/ and results/vrnn/mlp/; writes table.md and table.json there.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tomli_w

from phasevae.api import run
from phasevae.tools.cases import ar_data

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "results" / "vrnn"
MODELS = {
    "vrnn": {"kind": "vrnn", "latent_dim": 1, "state": 16, "encoder": [32],
             "decoder": [32]},
    "mlp": {"latent_dim": 2},
}  # fmt: skip


def spec_path(model: str) -> Path:
    data = OUT / "data" / "ar2.npy"
    data.parent.mkdir(parents=True, exist_ok=True)
    x = ar_data((0.5, 0.3), 10, 5000)(np.random.default_rng(0))
    np.save(data, x.astype(np.float32))
    spec = {
        "data": {"source": "array", "path": str(data)},
        "model": MODELS[model],
        "train": {"steps": 3000, "learning_rate": 0.005},
        "grid": {
            "sigma2": {"min": 0.05, "max": 20.0, "num": 16, "scale": "log"},
            "beta": [1.0],
            "seeds": [0, 1, 2],
        },
    }
    path = OUT / f"{model}.toml"
    path.write_text(tomli_w.dumps(spec))
    return path


def row(model: str) -> dict:
    result = run(spec_path(model), OUT / model)
    (t,) = result.analyze().transitions
    last = result.metrics[result.metrics["step"] == result.metrics["step"].max()]
    alive = last.groupby("sigma2")["active_units"].mean()
    return {
        "model": model,
        "theory": t.theory_sigma2_c,
        "sigma2_c": t.sigma2_c,
        "ci": t.ci,
        "verdict": t.verdict,
        "per_dim": [(d.sigma2_c, d.theory) for d in t.per_dim],
        "active_at_min_sigma2": float(alive.iloc[0]),
        "spectrum": result.meta.spectrum["eigenvalues"],
        "command": f"phasevae sweep results/vrnn/{model}.toml "
        f"--out results/vrnn/{model}",
    }


def _v(value) -> str:
    return "-" if value is None else f"{value:.3g}"


def table(rows: list[dict]) -> str:
    lines = [
        "| model | derived sigma2_c | measured [95 %] | verdict | latents alive at "
        "sigma^2 = 0.05 | per dim (per step for the VRNN): measured / derived |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        ci = "" if not r["ci"] else f" [{r['ci'][0]:.3g}, {r['ci'][1]:.3g}]"
        cascade = ", ".join(f"{_v(m)} / {_v(d)}" for m, d in r["per_dim"])
        lines.append(
            f"| {r['model']} | {_v(r['theory'])} | {_v(r['sigma2_c'])}{ci} | "
            f"{r['verdict']} | {r['active_at_min_sigma2']:.2f} | {cascade} |"
        )
    vrnn, mlp = rows
    lines += [
        "",
        f"lambda_max(C) / max_t D_t = {mlp['theory'] / vrnn['theory']:.3g} derived; "
        "the two measured transitions' ratio: "
        + (
            "-"
            if None in (mlp["sigma2_c"], vrnn["sigma2_c"])
            else f"{mlp['sigma2_c'] / vrnn['sigma2_c']:.3g}"
        ),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    rows = [row(m) for m in MODELS]
    (OUT / "table.json").write_text(json.dumps(rows, indent=1))
    (OUT / "table.md").write_text(table(rows))
    print(table(rows))
