"""Decoder likelihoods (issue 30): is the measured transition where the derived
criterion puts it? For each likelihood, data with a known low-rank natural parameter
(binary for the Bernoulli, counts for the Poisson and the negative binomial, token
ids for the categorical) are made here, and ``phasevae locate`` (3 seeds, beta = 1,
the default MLP) finds the transition, held against lambda_max of the covariance
whitened by the likelihood's variances at the mean (docs/science.md, 'Other
likelihoods'); with a learned dispersion, at each feature's maximum-likelihood r,
and the row says where the learned r went in the collapsed models. Two real sets: the
Bernoulli on scikit-learn's digits binarised (pixel > 8 of 16) and the categorical on
windows of 8 characters of Python's docstrings (``data.source = "text"``, 11
categories: ``sweeps/text.toml``); and a real count table, the digits as they ship
(``-digits`` for the Poisson and the negative binomial, r = 4): each of the 64
values counts the pixels set in a 4x4 block of a 32x32 bitmap (0 to 16). With an
autoregressive head (``-context2``: a linear head on the 2 values before each
one), on windows of 8 binary values (the sign of a Gaussian AR(1) process, phi =
0.9) or counts (Poisson of log-mean 0.8 times it, + 0.3): the derived criterion is
then that of the score the best generalised linear prediction leaves
(docs/science.md, 'Autoregressive decoders'), beside the same data without a head.

    python studies/likelihoods.py [SET ...]

(sets: bernoulli, poisson, negative_binomial, negative_binomial-learned,
categorical, bernoulli-digits, categorical-text, bernoulli-ar,
bernoulli-ar-context2, poisson-ar, poisson-ar-context2, poisson-digits,
negative_binomial-digits) writes
results/likelihoods/<set>/ (the located run), table.md and table.json (the rows of
the sets not named are kept from table.json; a finished run is only re-read).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import tomli_w
from sklearn.datasets import load_digits

from phasevae.api import locate, open_run
from phasevae.data import marginal_dispersion
from phasevae.tools.cases import ar_data, natural_data

ROOT = Path(__file__).resolve().parent.parent / "results" / "likelihoods"


K, POSITIONS = 4, 5  # the categorical's data: 5 positions of 4 tokens
SETS = (
    "bernoulli",
    "poisson",
    "negative_binomial",
    "negative_binomial-learned",
    "categorical",
    "bernoulli-digits",
    "categorical-text",
    "bernoulli-ar",
    "bernoulli-ar-context2",
    "poisson-ar",
    "poisson-ar-context2",
    "poisson-digits",
    "negative_binomial-digits",
)
R = 4.0  # the negative binomial's dispersion: the data's, and the fixed decoder's


def make_data(likelihood: str, n: int = 5000, dim: int = 10) -> np.ndarray:
    """Rank-3 natural parameters eta (scales 1.6, 1.0, 0.6 along random orthogonal
    directions, :func:`phasevae.tools.cases.natural_data`); x ~ Bernoulli(sigmoid(2
    eta)), Poisson(exp(eta + 0.3)) or negative binomial of that mean and r = 4; for
    the categorical, token ids (n, 5) drawn from the softmax of such logits (5
    positions x K = 4)."""
    if likelihood == "categorical":
        make = natural_data(likelihood, n, POSITIONS, categories=K)
    else:
        make = natural_data(likelihood, n, dim, dispersion=R)
    return make(np.random.default_rng(0)).astype(np.float32)


def ar_counts(likelihood: str, n: int = 5000, window: int = 8) -> np.ndarray:
    """Windows of a Gaussian AR(1) process (phi = 0.9, unit variance) as binary
    values (its sign) or Poisson counts of log-mean 0.8 x + 0.3."""
    rng = np.random.default_rng(0)
    x = ar_data((0.9,), window, n)(rng)
    if likelihood == "bernoulli":
        return (x > 0).astype(np.float32)
    return rng.poisson(np.exp(0.8 * x + 0.3)).astype(np.float32)


def data_of(name: str) -> tuple[str, dict, dict]:
    """(likelihood, [data] table, extra [model] keys) of a set. The negative
    binomial's are r = 4 fixed, or one r per feature learned from 1."""
    likelihood = name.split("-")[0]
    model = {"categories": K} if likelihood == "categorical" else {}
    if likelihood == "negative_binomial":
        learned = name.endswith("-learned")
        model = {"dispersion": 1.0 if learned else R, "learned_dispersion": learned}
    if name == "categorical-text":
        return likelihood, {"source": "text", "window": 8}, {"categories": 11}
    stem = name.removesuffix("-learned").removesuffix("-context2")
    path = ROOT / "data" / f"{stem}.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    if name == "bernoulli-digits":
        np.save(path, (load_digits().data > 8).astype(np.float32))
    elif stem.endswith("-digits"):  # each value counts the on pixels of a 4x4 block
        np.save(path, load_digits().data.astype(np.float32))
    elif stem.endswith("-ar"):
        np.save(path, ar_counts(likelihood))
        model = {"context": 2} if name.endswith("-context2") else {}
    else:
        np.save(path, make_data(likelihood))
    return likelihood, {"source": "array", "path": str(path)}, model


def run(name: str) -> dict:
    likelihood, data, model = data_of(name)
    spec = {
        "data": data,
        "model": {"likelihood": likelihood, "latent_dim": 3} | model,
        "train": {"steps": 3000},
        "grid": {"beta": [1.0], "seeds": [0, 1, 2]},
    }
    path = ROOT / f"{name}.toml"
    path.write_text(tomli_w.dumps(spec))
    result = locate(path, ROOT / name)
    (curve,) = result["curves"]
    located = open_run(ROOT / name)
    theory = located.meta.spectrum["lambda_max"]
    (t,) = located.analyze().transitions  # the probe's reading, and off_theory
    return {
        "set": name,
        "likelihood": likelihood,
        "data": located.meta.spectrum["description"].split(";")[0],
        "whitened_lambda_max": theory,
        "sigma2_c": curve["sigma2_c"],
        "ci": curve["ci"],
        "verdict": curve["verdict"],
        "rel_error": None
        if curve["sigma2_c"] is None
        else curve["sigma2_c"] / theory - 1,
        "model_steps": curve["model_steps"],
        "lambda_c_ratio": t.probe and t.probe["lambda_c_ratio"],
        "stable_below": (t.off_theory or {}).get("evidence") == "probe",
    } | (learned_r(located) if model.get("learned_dispersion") else {})


def learned_r(located) -> dict:
    """Where a learned dispersion went: the geometric mean over features of each
    feature's maximum-likelihood r at its mean (what the criterion assumes at
    collapse), against the learned r's geometric mean at the last step of the
    collapsed models (KL < 0.01 nats at each one's last evaluation)."""
    x = np.load(located.spec.data.path)
    last = located.metrics.sort_values("step").groupby("point_id").tail(1)
    collapsed = last[last["kl"] < 0.01]
    return {
        "r_marginal": float(np.exp(np.mean(np.log(marginal_dispersion(x))))),
        "r_collapsed": [
            float(collapsed["dispersion"].min()),
            float(collapsed["dispersion"].max()),
        ],
        "collapsed_models": len(collapsed),
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| set | likelihood | derived sigma2_c (whitened lambda_max; with a head, "
        "of the GLM score) | located [95 %] "
        "| error | verdict | model-steps | probe: lambda_c/lambda_max |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ci = "-" if not r["ci"] else f"[{r['ci'][0]:.4g}, {r['ci'][1]:.4g}]"
        s2c = "-" if r["sigma2_c"] is None else f"{r['sigma2_c']:.4g}"
        err = "-" if r["rel_error"] is None else f"{100 * r['rel_error']:+.1f} %"
        ratio = r["lambda_c_ratio"]
        probe = "-" if ratio is None else f"{ratio:.2f}"
        probe += ", stable below" if r["stable_below"] else ""
        lines.append(
            f"| {r['set']} | {r['likelihood']} | {r['whitened_lambda_max']:.4g} | "
            f"{s2c} {ci} | {err} | {r['verdict']} | {r['model_steps']:,} | {probe} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    names = sys.argv[1:] or list(SETS)
    path = ROOT / "table.json"
    kept = json.loads(path.read_text()) if path.exists() else []
    done = {r.get("set", r["likelihood"]): r for r in kept}
    for name in names:
        done[name] = run(name)
    rows = [done[name] for name in SETS if name in done]
    (ROOT / "table.json").write_text(json.dumps(rows, indent=1))
    (ROOT / "table.md").write_text(table(rows))
    print(table(rows))
