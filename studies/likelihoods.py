"""Decoder likelihoods (issue 30): is the measured transition where the derived
criterion puts it? For each likelihood, data with a known low-rank natural parameter
(binary for the Bernoulli, counts for the Poisson, token ids for the categorical) are
made here, and ``phasevae locate`` (3 seeds, beta = 1, the default MLP) finds the
transition, held against lambda_max of the covariance whitened by the likelihood's
variances at the mean (docs/science.md, 'Other likelihoods').

    python studies/likelihoods.py [LIKELIHOOD ...]

writes results/likelihoods/<likelihood>/ (the located run), table.md and table.json
(the rows of the likelihoods not named are kept from table.json).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import tomli_w

from phasevae.api import locate, open_run
from phasevae.tools.cases import natural_data

ROOT = Path(__file__).resolve().parent.parent / "results" / "likelihoods"


K, POSITIONS = 4, 5  # the categorical's data: 5 positions of 4 tokens


def make_data(likelihood: str, n: int = 5000, dim: int = 10) -> np.ndarray:
    """Rank-3 natural parameters eta (scales 1.6, 1.0, 0.6 along random orthogonal
    directions, :func:`phasevae.tools.cases.natural_data`); x ~ Bernoulli(sigmoid(2
    eta)) or Poisson(exp(eta + 0.3)); for the categorical, token ids (n, 5) drawn from
    the softmax of such logits (5 positions x K = 4)."""
    if likelihood == "categorical":
        make = natural_data(likelihood, n, POSITIONS, categories=K)
    else:
        make = natural_data(likelihood, n, dim)
    return make(np.random.default_rng(0)).astype(np.float32)


def run(likelihood: str) -> dict:
    data = ROOT / "data" / f"{likelihood}.npy"
    data.parent.mkdir(parents=True, exist_ok=True)
    np.save(data, make_data(likelihood))
    spec = {
        "data": {"source": "array", "path": str(data)},
        "model": {"likelihood": likelihood, "latent_dim": 3}
        | ({"categories": K} if likelihood == "categorical" else {}),
        "train": {"steps": 3000},
        "grid": {"beta": [1.0], "seeds": [0, 1, 2]},
    }
    path = ROOT / f"{likelihood}.toml"
    path.write_text(tomli_w.dumps(spec))
    result = locate(path, ROOT / likelihood)
    (curve,) = result["curves"]
    theory = open_run(ROOT / likelihood).meta.spectrum["lambda_max"]
    return {
        "likelihood": likelihood,
        "whitened_lambda_max": theory,
        "sigma2_c": curve["sigma2_c"],
        "ci": curve["ci"],
        "verdict": curve["verdict"],
        "rel_error": None
        if curve["sigma2_c"] is None
        else curve["sigma2_c"] / theory - 1,
        "model_steps": curve["model_steps"],
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| likelihood | derived sigma2_c (whitened lambda_max) | located [95 %] "
        "| error | verdict | model-steps |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        ci = "-" if not r["ci"] else f"[{r['ci'][0]:.4g}, {r['ci'][1]:.4g}]"
        s2c = "-" if r["sigma2_c"] is None else f"{r['sigma2_c']:.4g}"
        err = "-" if r["rel_error"] is None else f"{100 * r['rel_error']:+.1f} %"
        lines.append(
            f"| {r['likelihood']} | {r['whitened_lambda_max']:.4g} | {s2c} {ci} | "
            f"{err} | {r['verdict']} | {r['model_steps']:,} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    names = sys.argv[1:] or ["bernoulli", "poisson", "categorical"]
    path = ROOT / "table.json"
    kept = json.loads(path.read_text()) if path.exists() else []
    rows = [r for r in kept if r["likelihood"] not in names]
    rows += [run(lik) for lik in names]
    (ROOT / "table.json").write_text(json.dumps(rows, indent=1))
    (ROOT / "table.md").write_text(table(rows))
    print(table(rows))
