"""The transition estimator on synthetic trajectories with a known relaxation.

Each point's top-dim KL relaxes from its start to the linear-VAE value
1/2 max(0, ln(lambda / sigma^2)) at the rate |ln sigma^2 - ln lambda| / tau (critical
slowing down: the relaxation time grows like 1 / distance from the kink), starting
collapsed (KL = 0: the points below the kink escape slowly) or on the active branch's
continuation (the points above it decay slowly). A bias of either sign that falls
like 1/t is checked separately.
"""

import math

import numpy as np
import pandas as pd
import pytest

from phasevae import estimate
from phasevae.validate import QUICK, run_suite

LAM = 8.0


def trajectories(start: str, final_step: int, tau: float, evals: int = 24, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i, s2 in enumerate(np.geomspace(0.3 * LAM, 3 * LAM, 24)):
        du = abs(math.log(s2 / LAM))
        eq = 0.5 * max(0.0, math.log(LAM / s2))
        k0 = 0.0 if start == "collapsed" else 0.5 * math.log(3 * LAM / s2)
        for t in np.linspace(final_step / evals, final_step, evals):
            top = eq + (k0 - eq) * math.exp(-t * du / tau)
            # jitter as measured in trained runs: 2 % of the KL + 1e-4 nats
            jitter = rng.normal(0, 0.02 * top + 1e-4)
            dims = [abs(top + jitter), *np.abs(rng.normal(0, 1e-4, 2))]
            rows.append(
                {"point_id": f"p{i}", "sigma2": s2, "beta": 1.0, "seed": 0}
                | {"step": int(t), "kl": sum(dims), "diverged": False}
                | {f"kl_dim_{j}": v for j, v in enumerate(dims)}
            )
    return pd.DataFrame(rows)


@pytest.mark.parametrize("start", ["collapsed", "active"])
def test_slow_relaxation_is_caught_on_both_sides(start):
    """Under-trained: train longer, and the interval holds the truth all the same;
    it narrows as training goes on."""
    widths = []
    for steps in (3000, 12000, 48000):
        r = estimate.estimate_transition(trajectories(start, steps, tau=300.0), 3)
        assert r["verdict"] == estimate.LONGER
        assert r["ci"][0] <= LAM <= r["ci"][1]
        assert r["train_longer"]["steps"] > steps
        assert r["train_longer"]["sigma2"][0] < LAM < r["train_longer"]["sigma2"][1]
        assert r["ci_finite_training"] > estimate.TOLERANCE
        widths.append(math.log(r["ci"][1] / r["ci"][0]))
    assert widths[0] > widths[1] > widths[2]


def test_fast_relaxation_is_trusted_and_accurate():
    for start, seed in [("collapsed", 0), ("active", 1)]:
        data = trajectories(start, 12000, tau=2.0, seed=seed)
        r = estimate.estimate_transition(data, 3)
        assert r["verdict"] == estimate.TRUSTED
        assert r["sigma2_c"] == pytest.approx(LAM, rel=0.01)
        assert r["ci"][0] <= LAM <= r["ci"][1]
        assert r["ci_finite_training"] <= estimate.TOLERANCE


@pytest.mark.parametrize("sign", [-1, 1], ids=["low", "high"])
def test_a_one_over_t_drift_is_held_by_the_interval(sign):
    """A kink that moves like u_c(t) = ln lambda -+ 40 / t (a bias of either sign):
    the drift between T/2 and T is measured, the finite-training part holds what is
    left of the bias, and the verdict says to train longer."""
    rows = []
    rng = np.random.default_rng(0)
    for step in np.linspace(250, 6000, 24):
        kink = LAM * math.exp(sign * 40.0 / step)
        for i, s2 in enumerate(np.geomspace(0.3 * LAM, 3 * LAM, 24)):
            top = 0.5 * max(0.0, math.log(kink / s2)) + abs(rng.normal(0, 2e-4))
            rows.append(
                {"point_id": f"p{i}", "sigma2": s2, "beta": 1.0, "seed": 0}
                | {"step": int(step), "kl": top, "diverged": False}
                | {"kl_dim_0": top, "kl_dim_1": 0.0}
            )
    r = estimate.estimate_transition(pd.DataFrame(rows), 2)
    bias = math.log(r["sigma2_c"] / LAM)
    assert np.sign(bias) == sign and abs(bias) > 0.005  # still biased at T
    drift = math.log(r["sigma2_c"] / r["sigma2_c_half"])
    assert drift == pytest.approx(-bias, rel=0.2)  # 1/t: what is left = the drift
    assert r["ci_finite_training"] >= abs(bias)
    assert r["ci"][0] <= LAM <= r["ci"][1]
    assert r["verdict"] == estimate.LONGER


def test_quick_validation_suite_writes_its_table(tmp_path):
    doc = run_suite(tmp_path, quick=True)
    assert [r["case"] for r in doc["rows"]] == [c.name for c in QUICK]
    for r in doc["rows"]:
        assert r["reference_steps"] == 4 * r["steps"]
        assert set(r["estimators"]) == {"total_kl", "top_dim", "estimate"}
    s = doc["summary"]["estimate"]
    assert s["cases"] == len(QUICK) and 0 <= s["coverage"] <= 1
    table = (tmp_path / "table.md").read_text()
    assert all(c.name in table for c in QUICK) and "coverage" in table
    again = run_suite(tmp_path, quick=True)  # reuses the finished runs
    assert again["rows"] == doc["rows"]
