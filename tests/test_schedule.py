"""Adaptive sweeps: slots retired and refilled, refinement rounds, warm starts."""

import dataclasses
import json

import jax
import numpy as np
import pandas as pd
import pytest

from phasevae.analysis import curves as analysis
from phasevae.analysis import estimate
from phasevae.cli import main
from phasevae.data import load_dataset
from phasevae.engine import schedule
from phasevae.engine import sweep as sweep_mod
from phasevae.engine.devices import Program
from phasevae.engine.grid import grid_table
from phasevae.spec import SpecError, spec_from_dict, spec_to_toml
from tests.conftest import tiny_dict
from tests.test_analysis import K, synthetic_metrics

METRICS = ["loss", "recon", "kl", "mse"]


def final(metrics: pd.DataFrame) -> pd.DataFrame:
    last = metrics.sort_values("step").groupby("point_id").tail(1)
    return last.set_index("point_id").sort_index()


@pytest.mark.slow
def test_a_refilled_slot_ends_as_the_point_trained_alone(tmp_path, tiny_spec):
    """Three points through two slots: the third starts in a freed slot 20 steps
    after the others (its own step 0) and ends as it does trained alone."""
    grid = {"sigma2": [0.5, 2.0, 8.0], "beta": [1.0]}
    slotted = sweep_mod.run_sweep(
        tiny_spec(train={"slots": 2}, grid=grid), tmp_path / "slots"
    )
    assert slotted.meta.compiles == 1
    assert slotted.meta.model_steps == 3 * 20
    alone = {
        s2: final(
            sweep_mod.run_sweep(
                tiny_spec(grid={"sigma2": [s2], "beta": [1.0]}), tmp_path / f"a{s2}"
            ).metrics
        )
        for s2 in grid["sigma2"]
    }
    got = final(slotted.metrics)
    assert list(got["step"]) == [20, 20, 20]
    for s2, ref in alone.items():
        row = got[got["sigma2"] == s2]
        np.testing.assert_allclose(
            row[METRICS].to_numpy(), ref[METRICS].to_numpy(), rtol=2e-5, atol=1e-6
        )


@pytest.mark.slow
def test_retired_points_stop_early_and_free_their_slot(tmp_path, tiny_spec):
    """sigma^2 = 50 collapses and its KL stops moving (~400 steps here): it retires
    before the 600-step budget and a pending point takes its slot."""
    spec = tiny_spec(
        train={
            "steps": 600,
            "eval_every": 20,
            "slots": 2,
            "retire": True,
            "min_steps": 100,
        },
        grid={"sigma2": [50.0, 0.5, 2.0], "beta": [1.0]},
    )
    result = sweep_mod.run_sweep(spec, tmp_path / "run")
    last = final(result.metrics)
    assert len(last) == 3 and result.meta.compiles == 1
    assert (last["step"] >= 100).all() and (last["step"] <= 600).all()
    assert result.meta.model_steps == int(last["step"].sum())
    early = last[last["step"] < 600]
    assert 50.0 in set(early["sigma2"])
    # each early retirement passed the analysis's bounded settling test right there
    for pid in early.index:
        history = result.metrics[result.metrics["point_id"] == pid]
        table = analysis.settle(
            history, ["kl"], significance=schedule.RETIRE_SIGNIFICANCE, bounded=True
        )
        before = analysis.settle(
            history[history["step"] < history["step"].max()],
            ["kl"],
            significance=schedule.RETIRE_SIGNIFICANCE,
            bounded=True,
        )
        assert table["settled"].item() and not before["settled"].item()


def test_refinement_spreads_points_inside_the_transition_and_around_lower_kinks():
    """On closed-form curves (beta = 1: dims die at sigma^2 = 0.5, 2, 8) the
    transition (8) gets its points evenly spread strictly inside the estimate's
    interval, and each lower kink of the fit gets its points over its own interval
    and grid cell."""
    metrics = synthetic_metrics([1.0])
    (group,) = schedule.refinement(metrics, points=5, latent_dim=K)
    assert group["beta"] == 1.0
    breaks = np.array(group["breakpoints"])
    np.testing.assert_allclose(np.sort(breaks), [0.5, 2.0, 8.0], rtol=0.03)
    assert group["sigma2_c"] == pytest.approx(8.0, rel=0.03)
    t = estimate.estimate_transition(metrics, K)
    low, high = np.log(t.ci)
    assert low < np.log(8.0) < high
    new = np.log(group["sigma2"])
    sampled = np.log(metrics["sigma2"].unique())
    cell = np.diff(np.sort(sampled)).max()
    assert len(new) == 5 * len(breaks)
    inside = new[(new > low) & (new < high)]
    assert len(inside) == 5
    np.testing.assert_allclose(np.diff(inside), (high - low) / 6, rtol=1e-6)
    for b in np.log(np.sort(breaks)[:2]):
        near = new[np.abs(new - b) <= cell]
        assert len(near) >= 5 and near.min() < b < near.max()
    assert np.min(np.abs(new[:, None] - sampled[None, :])) > 1e-6  # nothing repeated


@pytest.mark.slow
def test_a_refined_sweep_adds_rounds_where_the_fit_says(tmp_path, tiny_spec):
    spec = tiny_spec(
        train={"steps": 30, "slots": 4},
        grid={
            "sigma2": {"min": 0.1, "max": 40.0, "num": 6, "refine": {"points": 3}},
            "beta": [1.0],
            "seeds": [0, 1],
        },
    )
    result = sweep_mod.run_sweep(spec, tmp_path / "run")
    assert result.meta.rounds == 2 and result.meta.compiles == 1
    grid = result.metrics.drop_duplicates("point_id")
    assert set(grid.groupby("seed")["sigma2"].apply(frozenset).map(len)) == {
        grid["sigma2"].nunique()
    }  # every seed got every new sigma^2
    spectrum = result.meta.spectrum
    for r in (1, 2):
        before = result.metrics[result.metrics["round"] < r]
        expect = {
            s2
            for g in schedule.refinement(before, 3, spec.model.latent_dim, spectrum)
            for s2 in g["sigma2"]
        }
        got = set(grid.loc[grid["round"] == r, "sigma2"].round(12))
        assert got == expect and got
    assert main(["analyze", str(tmp_path / "run")]) == 0


@pytest.mark.slow
def test_an_interrupted_adaptive_sweep_resumes_to_the_uninterrupted_result(
    tmp_path, tiny_spec, monkeypatch
):
    spec = tiny_spec(
        train={"steps": 30, "slots": 3, "retire": True, "min_steps": 20},
        grid={
            "sigma2": {"min": 0.1, "max": 40.0, "num": 5, "refine": {"rounds": 1}},
            "beta": [1.0],
        },
    )
    full = sweep_mod.run_sweep(spec, tmp_path / "full").metrics
    monkeypatch.setattr(sweep_mod, "CHECKPOINT_SECONDS", 0.0)
    calls = []

    def stop_after_three(done, total, elapsed):
        calls.append(done)
        if len(calls) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sweep_mod.run_sweep(spec, tmp_path / "cut", progress=stop_after_three)
    resumed = sweep_mod.run_sweep(spec, tmp_path / "cut")
    assert resumed.meta.status == "complete"
    on_disk = pd.read_parquet(tmp_path / "cut" / "metrics.parquet")
    key = ["point_id", "step"]
    assert len(on_disk) == len(full)
    pd.testing.assert_frame_equal(
        on_disk.sort_values(key).reset_index(drop=True),
        full.sort_values(key).reset_index(drop=True),
    )


def test_a_warm_started_point_begins_from_its_finished_neighbour(tiny_spec):
    spec = tiny_spec(
        train={"slots": 1, "warm_start": True},
        grid={"sigma2": [0.5, 1.0, 8.0], "beta": [1.0]},
    )
    data = load_dataset(spec.data)
    grid = grid_table(spec)
    program = Program(spec, data, grid.iloc[:1], step_per_model=True)
    sched = schedule.Schedule(grid, slots=1)
    sched.fill()  # slot 0 <- sigma^2 = 0.5
    state = program.state
    # pretend point 0.5 finished with these parameters and 8.0 with others
    p05 = [np.full(a.shape[1:], 0.5, a.dtype) for a in jax.tree.leaves(state.params)]
    p8 = [np.full(a.shape[1:], 8.0, a.dtype) for a in jax.tree.leaves(state.params)]
    ids = dict(zip(grid["sigma2"], grid["point_id"], strict=True))
    warm = {ids[0.5]: p05, ids[8.0]: p8}
    sched.finished = [0, 2]
    sched.slot_point[:] = schedule.EMPTY
    sched.pending = [1]  # sigma^2 = 1.0: nearer 0.5 than 8 in ln sigma^2
    refilled = sched.fill()
    new = schedule.refill(program, state, sched, refilled, warm, spec)
    for a, w in zip(jax.tree.leaves(new.params), p05, strict=True):
        np.testing.assert_array_equal(np.asarray(a)[0], w)
    cold = dataclasses.replace(
        spec, train=dataclasses.replace(spec.train, warm_start=False)
    )
    fresh = schedule.refill(program, state, sched, refilled, warm, cold)
    first = jax.tree.leaves(fresh.params)[0]
    assert not np.allclose(np.asarray(first)[0], p05[0])


@pytest.mark.parametrize(
    "grid, message",
    [
        ({"beta": {"min": 1, "max": 2, "num": 2, "refine": {}}}, "unknown key"),
        (
            {"sigma2": {"min": 1, "max": 2, "num": 2, "refine": {"rounds": 0}}},
            "rounds must be an integer from 1 to 100",
        ),
        (
            {"sigma2": {"min": 1, "max": 2, "num": 2, "refine": {"width": 2}}},
            "unknown key grid.sigma2.refine.width",
        ),
    ],
)
def test_bad_refine_tables_are_refused(tiny_spec, grid, message):
    with pytest.raises(SpecError, match=message):
        tiny_spec(grid=grid)


def test_an_adaptive_sweep_cannot_be_sharded(tmp_path, capsys):
    spec = tmp_path / "s.toml"
    spec.write_text(spec_to_toml(spec_from_dict(tiny_dict(train={"slots": 1}))))
    out = tmp_path / "run"
    assert main(["sweep", str(spec), "--out", str(out), "--shard", "0/2"]) == 2
    assert "adaptive" in capsys.readouterr().err and not out.exists()


def test_min_steps_beyond_steps_is_refused(tiny_spec):
    with pytest.raises(SpecError, match="min_steps"):
        tiny_spec(train={"min_steps": 100})


@pytest.mark.parametrize(
    "train, message",
    [
        ({"until": "trusted", "max_steps": 10}, "at least train.steps"),
        ({"until": "trusted", "max_steps": 45}, "multiple of train.eval_every"),
        ({"max_steps": 40}, 'train.until = "trusted" only'),
        ({"until": "forever"}, "until"),
    ],
)
def test_bad_until_settings_are_refused(tiny_spec, train, message):
    with pytest.raises(SpecError, match=message):
        tiny_spec(train=train)


def test_meta_and_status_report_the_schedule(tmp_path, tiny_spec, capsys):
    spec = tiny_spec(train={"slots": 1}, grid={"sigma2": [0.5, 8.0], "beta": [1.0]})
    sweep_mod.run_sweep(spec, tmp_path / "run")
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert meta["model_steps"] == 40 and meta["grid_size"] == 2
    assert meta["rounds"] == 0 and meta["status"] == "complete"
    assert meta["schedule"] == {"finished": 2, "training": 0, "pending": 0}
    assert main(["status", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "finished 2, training 0, pending 0" in out and "40 model-steps" in out


@pytest.mark.slow
def test_until_trusted_trains_on_only_where_the_estimate_asks(tmp_path, tiny_spec):
    """train.until = "trusted": after train.steps, exactly the points inside the
    sigma^2 range the estimate names train on (up to max_steps); the others stop."""
    import math

    from phasevae.analysis import estimate
    from phasevae.analysis.estimate import estimate_transition

    s2 = [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
    spec = tiny_spec(
        train={"steps": 40, "until": "trusted", "max_steps": 80},
        grid={"sigma2": s2, "beta": [1.0]},
    )
    r = sweep_mod.run_sweep(spec, tmp_path / "run")
    last = r.metrics.groupby("sigma2")["step"].max()
    assert last.min() == 40 and last.max() <= 80
    first = r.metrics[r.metrics["step"] <= 40]
    sp = r.meta.spectrum
    est = estimate_transition(first, 2, sp["lambda_max"], sp["lambda_max_eval"])
    assert est.verdict == "train longer"  # 40 steps cannot be trusted
    lo, hi = est.train_longer.sigma2
    near = math.exp(estimate.NEAR)
    lo, hi = min(lo, est.sigma2_c / near), max(hi, est.sigma2_c * near)
    assert set(last[last > 40].index) == {s for s in s2 if lo <= s <= hi} != set()
    assert r.meta.model_steps == int(last.sum())  # one seed: steps per point
