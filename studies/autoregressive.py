"""Autoregressive decoders (issue 30): does a decoder that sees x's predecessors
collapse where the derived criterion puts it, lambda_max of the innovations'
covariance (docs/science.md, 'Autoregressive decoders'), and not at lambda_max of
the data's? Windows of a stationary AR(1) process (PHI = 0.9, 8 values) are made
here; ``phasevae locate`` (beta = 1, the default MLP, 3000 steps) finds the
transition for each context k: 0 (the plain decoder, lambda_max(C) about 32), then
1 and 4 (the criterion about 5.3, the first value's variance, whatever the
context: the later values are predicted from the one before).

    python studies/autoregressive.py [CONTEXT ...]

writes results/autoregressive/context-<k>/ (the located run), table.md and
table.json (the rows of contexts not named are kept from table.json).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import tomli_w

from phasevae.api import locate, open_run
from phasevae.data import covariance_eig

ROOT = Path(__file__).resolve().parent.parent / "results" / "autoregressive"
PHI, WINDOW, SAMPLES = 0.9, 8, 4000


def windows() -> np.ndarray:
    """``SAMPLES`` windows of ``WINDOW`` consecutive values of x_t = PHI x_{t-1} +
    e_t, e_t ~ N(0, 1), stationary from the first value."""
    rng = np.random.default_rng(0)
    x = np.empty((SAMPLES, WINDOW))
    x[:, 0] = rng.normal(size=SAMPLES) / np.sqrt(1 - PHI**2)
    for t in range(1, WINDOW):
        x[:, t] = PHI * x[:, t - 1] + rng.normal(size=SAMPLES)
    return x.astype(np.float32)


def run(context: int) -> dict:
    data = ROOT / "data" / "ar1.npy"
    data.parent.mkdir(parents=True, exist_ok=True)
    x = windows()
    np.save(data, x)
    spec = {
        "data": {"source": "array", "path": str(data)},
        "model": {"context": context},
        "train": {"steps": 3000},
        "grid": {"beta": [1.0]},
    }
    path = ROOT / f"context-{context}.toml"
    path.write_text(tomli_w.dumps(spec))
    result = locate(path, ROOT / f"context-{context}")
    (curve,) = result["curves"]
    derived = open_run(ROOT / f"context-{context}").meta.spectrum["lambda_max"]
    plain = float(covariance_eig(x - x.mean(axis=0))[0][0])
    return {
        "context": context,
        "lambda_max_data": plain,
        "derived": derived,
        "sigma2_c": curve["sigma2_c"],
        "ci": curve["ci"],
        "verdict": curve["verdict"],
        "rel_error": None
        if curve["sigma2_c"] is None
        else curve["sigma2_c"] / derived - 1,
        "model_steps": curve["model_steps"],
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| context | lambda_max(C) | derived sigma2_c (innovations) | located [95 %] "
        "| error | verdict | model-steps |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: r["context"]):
        ci = "-" if not r["ci"] else f"[{r['ci'][0]:.4g}, {r['ci'][1]:.4g}]"
        s2c = "-" if r["sigma2_c"] is None else f"{r['sigma2_c']:.4g}"
        err = "-" if r["rel_error"] is None else f"{100 * r['rel_error']:+.1f} %"
        lines.append(
            f"| {r['context']} | {r['lambda_max_data']:.4g} | {r['derived']:.4g} | "
            f"{s2c} {ci} | {err} | {r['verdict']} | {r['model_steps']:,} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    contexts = [int(a) for a in sys.argv[1:]] or [0, 1, 4]
    path = ROOT / "table.json"
    kept = json.loads(path.read_text()) if path.exists() else []
    rows = [r for r in kept if r["context"] not in contexts]
    rows += [run(k) for k in contexts]
    path.write_text(json.dumps(rows, indent=1))
    (ROOT / "table.md").write_text(table(rows))
    print(table(rows))
