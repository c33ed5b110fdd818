"""Remedies as sweep axes (issue 8): does a remedy move the collapse boundary
beta * sigma^2 = lambda_max, or only the path training takes to it?

    python studies/remedies.py

Runs sweeps/remedy_warmup.toml, remedy_init_scale.toml, remedy_learned_variance.toml,
remedy_decoder.toml, remedy_skip.toml and hysteresis.toml into results/remedies/,
analyses and plots each, and writes results/remedies/summary.json (one row per
transition, as the other studies) and results/remedies/findings.json (the learned
variance's end points per start and beta, and the hysteresis sweep's area and
parting).
"""

import json

import numpy as np
from study import RESULTS, run_variant, write_summary

from phasevae.store import RunDir, atomic_write_text

STUDY = "remedies"


def learned_variance_ends(run: str) -> list[dict]:
    """Per beta: the learned sigma^2 and KL at the end, for every starting sigma^2."""
    m = RunDir(RESULTS / STUDY / run).metrics()
    last = m.sort_values("step").groupby("point_id").tail(1)
    out = []
    for beta, g in last.groupby("beta"):
        g = g.sort_values("sigma2")
        out.append(
            {
                "beta": float(beta),
                "start_sigma2": g["sigma2"].round(4).tolist(),
                "end_sigma2": g["decoder_sigma2"].round(4).tolist(),
                "end_kl": g["kl"].round(4).tolist(),
                "collapsed_starts": int((g["kl"] < 0.01).sum()),
                "starts": len(g),
                "end_theta": (beta * g["decoder_sigma2"]).round(3).tolist(),
            }
        )
    return out


def scaling(run: str) -> list[dict]:
    """beta sigma^2 scaling per remedy setting (RMS spread of the KL curves)."""
    doc = RunDir(RESULTS / STUDY / run).analysis()
    return list(doc.scaling_by) or ([doc.scaling] if doc.scaling else [])


def hysteresis_summary(run: str) -> list[dict]:
    doc = RunDir(RESULTS / STUDY / run).analysis()
    return [
        {k: h[k] for k in ("beta", "area", "max_gap", "parted")} for h in doc.hysteresis
    ]


if __name__ == "__main__":
    rows = []
    rows += run_variant(STUDY, "warmup", "remedy_warmup.toml")
    rows += run_variant(STUDY, "init_scale", "remedy_init_scale.toml")
    rows += run_variant(STUDY, "learned_variance", "remedy_learned_variance.toml")
    rows += run_variant(STUDY, "decoder", "remedy_decoder.toml")
    rows += run_variant(STUDY, "skip", "remedy_skip.toml")
    rows += run_variant(STUDY, "hysteresis", "hysteresis.toml")
    write_summary(STUDY, rows)
    findings = {
        "learned_variance": learned_variance_ends("learned_variance"),
        "hysteresis": hysteresis_summary("hysteresis"),
        "scaling": {
            r: scaling(r) for r in ("warmup", "init_scale", "learned_variance")
        },
    }
    path = RESULTS / STUDY / "findings.json"
    atomic_write_text(path, json.dumps(findings, indent=1, default=float))
    for f in findings["learned_variance"]:
        print(
            f"learned sigma^2, beta = {f['beta']:g}: {f['collapsed_starts']} of "
            f"{f['starts']} starts end collapsed; end sigma^2 "
            f"{np.min(f['end_sigma2']):.3g} .. {np.max(f['end_sigma2']):.3g}"
        )
    for h in findings["hysteresis"]:
        print(
            f"hysteresis beta = {h['beta']:g}: area {h['area']:.3g} nats, "
            f"largest gap {h['max_gap']:.3g}, parted {h['parted']}"
        )
    for run, rows_ in findings["scaling"].items():
        for r in rows_:
            setting = {k: v for k, v in r.items() if k not in ("overlap_theta",)}
            print(f"beta sigma^2 scaling, {run}: {setting}")
    print(f"wrote {path}")
