"""Recurrent latents (issue 31 item 2): temporal collapse in a VRNN, step by step,
against the derived thresholds beta sigma^2 = D_t (each step's innovation variance
given the steps before, docs/science.md 'Recurrent latents'), and the recurrent
state's cheating as a number: the VRNN against a non-recurrent VAE (the default MLP)
on the same windows; and the guide's remedy, a state that reads x through noise of
variance s (grid.state_noise), against its derived criterion theta_t(s).

    python studies/vrnn.py

Data: 5000 windows of 10 consecutive values of an AR(2) process (phi = 0.5, 0.3),
made here (results/vrnn/data/, not committed). Sweeps (16 sigma^2, 3 seeds) into
results/vrnn/vrnn/, results/vrnn/mlp/ and results/vrnn/noise/ (s = 0, 1 and
3 in one sweep); writes table.md and table.json there.
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
MODELS["noise"] = MODELS["vrnn"]
STATE_NOISE = {"noise": [0.0, 1.0, 3.0]}  # the arms with a state-noise axis


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
            **({"state_noise": STATE_NOISE[model]} if model in STATE_NOISE else {}),
        },
    }
    path = OUT / f"{model}.toml"
    path.write_text(tomli_w.dumps(spec))
    return path


def rows(model: str) -> list[dict]:
    """One row per curve (per state noise) of the arm's sweep."""
    result = run(spec_path(model), OUT / model)
    last = result.metrics[result.metrics["step"] == result.metrics["step"].max()]
    out = []
    for t in result.analyze().transitions:
        s = t.curve.get("state_noise", 0.0)
        mine = last[last["state_noise"] == s] if "state_noise" in last else last
        alive = mine.groupby("sigma2")["active_units"].mean()
        steps = (t.information or {}).get("steps")
        out.append(
            {
                "model": model,
                "state_noise": s,
                "theory": t.theory_sigma2_c,
                "sigma2_c": t.sigma2_c,
                "ci": t.ci,
                "verdict": t.verdict,
                "per_dim": [(d.sigma2_c, d.theory) for d in t.per_dim],
                "active_at_min_sigma2": float(alive.iloc[0]),
                "informative_fraction": steps and steps["informative_fraction"],
                "spectrum": result.meta.spectrum["eigenvalues"],
                "command": f"phasevae sweep results/vrnn/{model}.toml "
                f"--out results/vrnn/{model}",
            }
        )
    return out


def _v(value) -> str:
    return "-" if value is None else f"{value:.3g}"


def _fall(row: dict) -> str:
    """Where the fraction of informative steps falls from all to none."""
    pairs = row["informative_fraction"]
    full = [s2 for s2, f in pairs if f == 1.0]
    between = ", ".join(f"{f:.1f} at {s2:.3g}" for s2, f in pairs if 0 < f < 1)
    none = [s2 for s2, f in pairs if f == 0.0]
    first_none = min(none) if none else None
    return (
        f"all up to sigma^2 = {_v(max(full) if full else None)}; "
        f"{between or 'no sigma^2 with some'}; none from {_v(first_none)}"
    )


def table(rows: list[dict]) -> str:
    lines = [
        "| model | state noise s | derived sigma2_c | measured [95 %] | verdict | "
        "latents alive at sigma^2 = 0.05 | per dim (per step for the VRNN): "
        "measured / derived |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ci = "" if not r["ci"] else f" [{r['ci'][0]:.3g}, {r['ci'][1]:.3g}]"
        cascade = ", ".join(f"{_v(m)} / {_v(d)}" for m, d in r["per_dim"])
        lines.append(
            f"| {r['model']} | {r['state_noise']:g} | {_v(r['theory'])} | "
            f"{_v(r['sigma2_c'])}{ci} | {r['verdict']} | "
            f"{r['active_at_min_sigma2']:.2f} | {cascade} |"
        )
    lines += ["", "Steps whose latent carries information (I(x; z_t) > 0.01 nats):"]
    for r in rows:
        if r["informative_fraction"]:
            lines.append(f"- {r['model']}, s = {r['state_noise']:g}: {_fall(r)}")
    vrnn, mlp = rows[:2]
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
    found = [r for m in MODELS for r in rows(m)]
    (OUT / "table.json").write_text(json.dumps(found, indent=1))
    (OUT / "table.md").write_text(table(found))
    print(table(found))
