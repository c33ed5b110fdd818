"""The transition estimator on synthetic trajectories with a known relaxation.

Each point's top-dim KL relaxes from its start to the linear-VAE value
1/2 max(0, ln(lambda / sigma^2)) at the rate |ln sigma^2 - ln lambda| / tau (critical
slowing down: the relaxation time grows like 1 / distance from the kink), starting
collapsed (KL = 0: the points below the kink escape slowly) or on the active branch's
continuation (the points above it decay slowly). A bias of either sign that falls
like 1/t is checked separately.
"""

import json
import math

import numpy as np
import pandas as pd
import pytest

from phasevae.analysis import estimate
from phasevae.tools.validate import QUICK, REFINE, run_suite

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
        assert r.verdict == estimate.LONGER
        assert r.ci[0] <= LAM <= r.ci[1]
        assert r.train_longer.steps > steps
        assert r.train_longer.sigma2[0] < LAM < r.train_longer.sigma2[1]
        assert min(r.ci_finite_training) > estimate.TOLERANCE
        widths.append(math.log(r.ci[1] / r.ci[0]))
    assert widths[0] > widths[1] > widths[2]


def test_fast_relaxation_is_trusted_and_accurate():
    for start, seed in [("collapsed", 0), ("active", 1)]:
        data = trajectories(start, 12000, tau=2.0, seed=seed)
        r = estimate.estimate_transition(data, 3)
        assert r.verdict == estimate.TRUSTED
        assert r.sigma2_c == pytest.approx(LAM, rel=0.01)
        assert r.ci[0] <= LAM <= r.ci[1]
        assert max(r.ci_finite_training) <= estimate.TOLERANCE


def test_a_point_that_diverged_does_not_shorten_the_training_length():
    """Points may train for different lengths (train.until = "trusted"); one that
    diverged early near the kink is left out, not taken for an untrained one."""
    data = trajectories("collapsed", 12000, tau=2.0).assign(diverged=False)
    near = data["sigma2"].iloc[(np.log(data["sigma2"] / LAM)).abs().argmin()]
    gone = (data["sigma2"] == near) & (data["step"] > 500)
    data = data[~gone].copy()
    data.loc[(data["sigma2"] == near) & (data["step"] == 500), "diverged"] = True
    r = estimate.estimate_transition(data, 3)
    assert r.verdict == estimate.TRUSTED and r.steps == 12000
    assert r.sigma2_c == pytest.approx(LAM, rel=0.01)


def kink_rows(kink_at) -> pd.DataFrame:
    """Evaluations of a top-dim KL on the linear-VAE curve with its kink at
    ``kink_at(step)``, a little noise, 24 points in [0.3, 3] LAM, 24 steps to 6000."""
    rows = []
    rng = np.random.default_rng(0)
    for step in np.linspace(250, 6000, 24):
        kink = kink_at(step)
        for i, s2 in enumerate(np.geomspace(0.3 * LAM, 3 * LAM, 24)):
            top = 0.5 * max(0.0, math.log(kink / s2)) + abs(rng.normal(0, 2e-4))
            rows.append(
                {"point_id": f"p{i}", "sigma2": s2, "beta": 1.0, "seed": 0}
                | {"step": int(step), "kl": top, "diverged": False}
                | {"kl_dim_0": top, "kl_dim_1": 0.0}
            )
    return pd.DataFrame(rows)


@pytest.mark.parametrize("sign", [-1, 1], ids=["low", "high"])
def test_a_one_over_t_drift_is_held_by_the_interval(sign):
    """A kink that moves like u_c(t) = ln lambda -+ 40 / t (a bias of either sign):
    the drift between T/2 and T is measured, the finite-training part holds what is
    left of the bias, and the verdict says to train longer."""
    rows = kink_rows(lambda step: LAM * math.exp(sign * 40.0 / step))
    r = estimate.estimate_transition(rows, 2)
    bias = math.log(r.sigma2_c / LAM)
    assert np.sign(bias) == sign and abs(bias) > 0.005  # still biased at T
    drift = math.log(r.sigma2_c / r.sigma2_c_half)
    assert drift == pytest.approx(-bias, rel=0.2)  # 1/t: what is left = the drift
    assert min(r.ci_finite_training) >= abs(bias)
    assert r.ci[0] <= LAM <= r.ci[1]
    assert r.verdict == estimate.LONGER


def with_probe(data: pd.DataFrame, lambda_c) -> pd.DataFrame:
    """Each evaluation with its collapse eigenvalue: ``lambda_c(sigma2)``."""
    return data.assign(
        collapse_eigenvalue=[lambda_c(s) for s in data["sigma2"]],
        decoder_sigma2=data["sigma2"],
    )


def test_trapped_collapsed_points_move_the_estimate_to_the_probe():
    """Under-trained from a collapsed start, the points below the kink still sit at
    KL = 0; their lambda_c = lambda_max > sigma^2 says they are saddles, not
    equilibria, so the estimate is the probe's threshold, not the biased kink."""
    data = with_probe(trajectories("collapsed", 3000, tau=3000.0), lambda s: LAM)
    plain = estimate.estimate_transition(data, 3)
    assert plain.sigma2_c < 0.9 * LAM  # the fit alone is biased low
    r = estimate.estimate_transition(data, 3, LAM, LAM)
    assert r.trapped and r.verdict == estimate.LONGER
    assert r.probe["unstable_sigma2"] and max(r.probe["unstable_sigma2"]) < LAM
    assert r.sigma2_c == pytest.approx(LAM, rel=0.01)
    assert r.ci[0] <= LAM <= r.ci[1]


def test_stable_collapse_is_not_trapped_and_keeps_a_two_sided_interval():
    """From an active start the collapsed points lie above lambda_max, where
    lambda_c = lambda_max < sigma^2: equilibria, nothing trapped; the interval keeps
    both finite-training parts and holds the truth."""
    data = with_probe(trajectories("active", 3000, tau=300.0), lambda s: LAM)
    r = estimate.estimate_transition(data, 3, LAM, LAM)
    assert not r.trapped and not r.probe["unstable_sigma2"]
    assert r.probe["lambda_c_ratio"] == 1.0 and not r.probe["dead_sigma2"]
    below, above = r.ci_finite_training
    assert below == above > estimate.TOLERANCE
    assert r.ci[0] <= LAM <= r.ci[1]


def test_an_active_point_just_below_the_kink_is_not_trapped():
    """Within 2 COLLAPSED_KL below a continuous kink an active point's KL (slope 1/2)
    is below COLLAPSED_KL. When the probe calls its collapsed state unstable (here it
    overstates lambda_c there by 5 %), that confirms the fit, which puts the kink
    above it: the point is not trapped and the estimate stays the fit's. The same
    point 0.1 below the kink with KL 0 is trapped."""
    near = LAM * math.exp(-0.012)
    rows = trajectories("collapsed", 3000, tau=30.0)
    extra = rows[rows["point_id"] == "p12"].assign(point_id="near", sigma2=near)
    top = 0.5 * math.log(LAM / near)  # 0.006 nats, at equilibrium
    extra = extra.assign(kl_dim_0=top, kl=top + extra["kl_dim_1"] + extra["kl_dim_2"])
    lam_c = lambda s: 1.05 * LAM if s == near else LAM  # noqa: E731
    data = with_probe(pd.concat([rows, extra], ignore_index=True), lam_c)
    r = estimate.estimate_transition(data, 3, LAM, LAM)
    assert r.probe["unstable_sigma2"] == [near]
    assert not r.trapped
    assert r.sigma2_c == pytest.approx(r.sigma2_c_final)
    assert r.sigma2_c == pytest.approx(LAM, rel=0.02)
    # at 0.1 below the kink with KL 0 (trapped on the saddle) it moves the estimate
    far = LAM * math.exp(-0.1)
    extra = extra.assign(sigma2=far, kl_dim_0=0.0, kl=extra["kl_dim_1"])
    data = with_probe(pd.concat([rows, extra], ignore_index=True), lambda s: LAM)
    assert estimate.estimate_transition(data, 3, LAM, LAM).trapped


def test_dead_collapse_below_the_theory_is_reported_as_a_finding():
    """A network whose collapsed state has lost its escape direction (lambda_c = 0,
    dead units) collapses at 0.7 lambda_max and stays there: a shift off the theory
    with the probe as evidence, bounded above by the first stable collapsed point."""
    from phasevae.analysis.curves import _off_theory

    kink = 0.7 * LAM
    rows = kink_rows(lambda step: kink)
    data = with_probe(rows, lambda s: LAM if s < kink else 0.0)
    r = estimate.estimate_transition(data, 2, LAM, LAM)
    assert not r.trapped and r.probe["lambda_c_ratio"] == 0.0
    assert r.sigma2_c == pytest.approx(kink, rel=0.02)
    off = _off_theory(r, LAM)
    assert off["evidence"] == "probe" and off["shift"] == pytest.approx(-0.3, abs=0.02)
    assert off["ci"][1] <= off["stable_sigma2"][0] / LAM - 1 < 0
    # the same curve with collapse that the probe finds unstable is no finding
    trapped = with_probe(rows, lambda s: LAM)
    assert _off_theory(estimate.estimate_transition(trapped, 2, LAM, LAM), LAM) is None


@pytest.mark.slow
def test_quick_validation_suite_writes_its_table(tmp_path):
    doc = run_suite(tmp_path, quick=True)
    assert [r["case"] for r in doc["rows"]] == [c.name for c in QUICK]
    for r in doc["rows"]:
        assert r["reference_steps"] == 4 * r["steps"]
        assert set(r["estimators"]) == {"total_kl", "top_dim", "estimate", "refined"}
        # the refined stage trained its sigma^2 inside the estimate's interval at T
        est, added = r["estimators"]["estimate"], r["refined_sigma2"]
        assert len(added) == REFINE
        u, (below, above) = math.log(est["sigma2_c"]), est["ci_statistical"]
        low, high = est["ci"] or (math.exp(u - below), math.exp(u + above))
        assert all(low < v < high for v in added)
        refined = pd.read_parquet(
            tmp_path / "runs" / f"{r['case']}-refined" / "metrics.parquet"
        )
        assert sorted(refined["sigma2"].unique()) == pytest.approx(added)
        assert refined["step"].max() == r["reference_steps"]
    s = doc["summary"]["estimate"]
    assert s["cases"] == len(QUICK) and 0 <= s["coverage"] <= 1
    table = (tmp_path / "table.md").read_text()
    assert all(c.name in table for c in QUICK) and "coverage" in table
    again = run_suite(tmp_path, quick=True)  # reuses the finished runs
    assert again["rows"] == doc["rows"]
    # one case named: its row is redone, the other's kept from validation.json
    (tmp_path / "runs" / QUICK[0].name).rename(tmp_path / "moved")
    written = json.loads((tmp_path / "validation.json").read_text())["rows"]
    one = run_suite(tmp_path, quick=True, only=[QUICK[1].name])
    assert json.loads(json.dumps(one["rows"])) == written


def far_stopped_early(tau: float, at: int):
    """Trajectories to 12000 steps, the points further than NEAR below the kink
    stopped at ``at``: (the full table, which rows are far, the estimate of the
    full table, the estimate of the mixed one)."""
    full = trajectories("collapsed", 12000, tau=tau)
    far = np.log(full["sigma2"] / LAM) < -estimate.NEAR
    mixed = full[~far | (full["step"] <= at)]
    return (
        full,
        far,
        estimate.estimate_transition(full, 3),
        estimate.estimate_transition(mixed, 3),
    )


@pytest.mark.parametrize("tau", [60.0, 100.0])
def test_points_that_stopped_early_bound_the_training_length(tau):
    """train.until = "trusted" trains on only some points. With the points near the
    kink trained 4x longer than the rest of the active side, the estimate is no more
    trusted than with every point trained that long: the kink's fit depends on the
    whole segment that ends there, and its shortest-trained point bounds the bias."""
    full, far, uniform, r = far_stopped_early(tau, at=3000)
    assert uniform.verdict == r.verdict == estimate.LONGER
    assert r.ci_finite_training[0] >= uniform.ci_finite_training[0]
    assert r.train_longer.sigma2[0] <= full.loc[far, "sigma2"].min()
    assert r.ci[0] <= LAM <= r.ci[1]


@pytest.mark.parametrize("tau", [60.0, 1000.0])
def test_far_points_bound_the_training_length_until_they_have_relaxed(tau):
    """The far end of the active side (|u - u_c| > NEAR) stopped at 6000 steps, the
    rest trained to 12000, with enough common evaluations to measure tau_0. A far
    point that trained long enough to relax (its steps x distance >= RELAXED tau_0)
    no longer bounds the length: with fast relaxation the mixed run is as good as
    the uniform one and is not asked to train the far points again; with slow
    relaxation they still bound it, and the advice includes them. Either way the
    range to train holds its own end points (locate trains what lies inside)."""
    full, far, uniform, r = far_stopped_early(tau, at=6000)
    assert uniform.verdict == r.verdict == estimate.LONGER
    assert r.ci[0] <= LAM <= r.ci[1]
    lo, hi = r.train_longer.sigma2
    far_max = full.loc[far, "sigma2"].max()
    if tau < 100:
        assert r.ci_finite_training[0] == pytest.approx(
            uniform.ci_finite_training[0], rel=0.1
        )
        assert lo > far_max
    else:
        assert r.ci_finite_training[0] > 1.5 * uniform.ci_finite_training[0]
        assert lo <= far_max
    grid = full["sigma2"].unique()
    ends = grid[np.isclose(grid, lo, rtol=1e-6) | np.isclose(grid, hi, rtol=1e-6)]
    assert all(lo <= s <= hi for s in ends)
    assert len(ends) or tau < 100  # slow: the range ends at an unrelaxed point


@pytest.mark.parametrize("at", [0.91, 1.07])
def test_a_jump_is_located_to_its_cell_and_no_better(at):
    """A small network's units die: its top dim's KL drops from the active branch
    (here 1/2 ln(1.6 LAM / sigma^2), finite at the drop) straight to 0 at
    at x LAM. The transition is somewhere in the grid cell it drops across; a
    continuous kink fitted there lands wherever the residuals balance."""
    data = trajectories("active", 12000, tau=2.0)
    drop = data["sigma2"] >= at * LAM
    live = 0.5 * np.log(1.6 * LAM / data["sigma2"])
    data["kl_dim_0"] = np.where(drop, data["kl_dim_0"] * 1e-3, live)
    grid = np.sort(data["sigma2"].unique())
    cell = [grid[grid < at * LAM].max(), grid[grid >= at * LAM].min()]
    r = estimate.estimate_transition(data, 3)
    assert r.ci_method == estimate.JUMP
    assert r.jump == pytest.approx(cell)
    assert r.sigma2_c == pytest.approx(math.sqrt(cell[0] * cell[1]))
    # the interval reaches the cell's edges (the finite-training part adds to them)
    assert r.ci[0] == pytest.approx(min(r.ci[0], cell[0]), rel=1e-12)
    assert r.ci[1] == pytest.approx(max(r.ci[1], cell[1]), rel=1e-12)
    assert r.ci[0] <= at * LAM <= r.ci[1]
    # the continuous kink of the same data (fast relaxation: no jump) is not one
    plain = estimate.estimate_transition(trajectories("active", 12000, tau=2.0), 3)
    assert plain.jump is None and plain.ci_method != estimate.JUMP


@pytest.mark.parametrize("fall", [True, False])
def test_a_small_kl_that_falls_to_nothing_across_a_cell_is_a_jump(fall):
    """The categorical_latent8 validation case: a categorical latent's top KL is
    small and nearly flat (0.16 -> 0.10 nats, slope 0.07 per unit ln sigma^2, far
    below a Gaussian dim's 1/2), then falls to 0 across one cell. No kink fits it,
    but the cell holds the collapse: located there, not "no transition in grid".
    The same curve fading slowly to 0.0105 at the largest sigma^2 has no drop."""
    data = trajectories("active", 12000, tau=2.0)
    u = np.log(data["sigma2"] / (0.3 * LAM))
    small = 0.16 - 0.07 * u
    drop = data["sigma2"] >= LAM
    if fall:
        data["kl_dim_0"] = np.where(drop, 1e-4, small)
    else:
        data["kl_dim_0"] = np.maximum(small * 0.1, 0.0105)
    grid = np.sort(data["sigma2"].unique())
    cell = [grid[grid < LAM].max(), grid[grid >= LAM].min()]
    r = estimate.estimate_transition(data, 3)
    if not fall:
        assert r.sigma2_c is None and r.verdict == estimate.NONE
        return
    assert r.ci_method == estimate.JUMP and r.jump == pytest.approx(cell)
    assert r.sigma2_c == pytest.approx(math.sqrt(cell[0] * cell[1]))
    assert r.ci[0] <= cell[0] and r.ci[1] >= cell[1]


def test_a_curve_free_bits_hold_up_gets_no_train_longer_advice():
    """Free bits keep the top dim's KL at the floor past the kink: the grid holds no
    collapse, so the estimate says so and advises no longer training (which
    train.until = "trusted" would otherwise spend on it)."""
    data = trajectories("collapsed", 3000, tau=300.0)
    assert estimate.estimate_transition(data, 3).verdict == estimate.LONGER
    held = data.assign(free_bits=0.1, kl_dim_0=np.maximum(data["kl_dim_0"], 0.08))
    t = estimate.estimate_transition(held, 3)
    assert t.verdict == estimate.HELD and t.train_longer is None
    assert t.floor["held"] and t.floor["kl_top_at_max_sigma2"] >= 0.08


def test_a_kink_fitted_above_collapsed_points_keeps_the_span_below_them():
    """The gauss8 validation case, as locate's first grid saw it: the top dim's KL
    runs on the active slope down to 6.19 (KL 0.12) and is 0 from 7.83 on. A kink
    continued from the slope sits at ~7.87, above the collapsed 7.83, but the
    units died somewhere between 6.19 and 7.83 (the reference: 7.1). The interval
    must reach down to the last clearly active point, so that refinement samples
    the span where the drop is."""
    grid = np.geomspace(0.3 * LAM, 2.5 * LAM, 10)
    rows = []
    rng = np.random.default_rng(0)
    for step in np.linspace(250, 3000, 12):
        for i, s2 in enumerate(grid):
            top = 0.5 * math.log(7.87 / s2) if s2 < 7.1 else 0.0
            top = max(top, 0.0) + abs(rng.normal(0, 2e-4))
            rows.append(
                {"point_id": f"p{i}", "sigma2": s2, "beta": 1.0, "seed": 0}
                | {"step": int(step), "kl": top, "diverged": False}
                | {"kl_dim_0": top, "kl_dim_1": 0.0}
            )
    r = estimate.estimate_transition(pd.DataFrame(rows), 2)
    last_active = grid[grid < 7.1].max()
    assert r.ci[0] <= last_active < 7.1 < r.ci[1]
    added = estimate.interval_values(r, grid, 6)
    assert any(last_active < v < 7.1 for v in added)


def test_a_kink_extrapolated_past_collapsed_points_becomes_their_cell():
    """The diabetes reference at T: the top dim's KL follows the slope to 0.05 at
    7.20, is 0.006 at 7.37 and 0 beyond, yet the slope continued puts a kink at
    ~7.6, above points the run shows collapsed. A continuous kink's KL is below
    0.01 nats only within 0.02 in ln sigma^2 of it, so the drop is in the cell
    [7.20, 7.37]."""
    grid = [6.37, 6.7, 7.04, 7.2, 7.373, 7.55, 7.73, 7.91, 8.29, 9.16, 10.3]
    rows = []
    rng = np.random.default_rng(0)
    for step in np.linspace(250, 3000, 12):
        for i, s2 in enumerate(grid):
            top = 0.5 * math.log(7.62 / s2) if s2 < 7.3 else (0.006 if s2 < 7.4 else 0)
            top += abs(rng.normal(0, 2e-4))
            rows.append(
                {"point_id": f"p{i}", "sigma2": s2, "beta": 1.0, "seed": 0}
                | {"step": int(step), "kl": top, "diverged": False}
                | {"kl_dim_0": top, "kl_dim_1": 0.0}
            )
    r = estimate.estimate_transition(pd.DataFrame(rows), 2)
    assert r.jump == pytest.approx([7.2, 7.373])
    assert 7.2 < r.sigma2_c < 7.373
    assert r.ci[0] <= 7.2 and r.ci[1] >= 7.373
