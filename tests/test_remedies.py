"""Remedies as sweep axes: learned decoder variance and hysteresis sweeps."""

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from phasevae.analysis import curves as analysis
from phasevae.engine import schedule
from phasevae.engine.grid import grid_table
from phasevae.engine.step import Point, Static, Trainer
from phasevae.engine.sweep import run_sweep


@pytest.mark.slow
def test_the_learned_variance_receives_gradients_and_is_recorded(tiny_spec, tmp_path):
    grid = {"sigma2": [0.5, 8.0], "beta": [1.0]}
    learned = run_sweep(
        tiny_spec(model={"sigma2": "learned"}, grid=grid), tmp_path / "learned"
    )
    fixed = run_sweep(tiny_spec(grid=grid), tmp_path / "fixed")
    assert learned.meta.compiles == 1
    f = fixed.metrics
    np.testing.assert_allclose(f["decoder_sigma2"], f["sigma2"], rtol=1e-6)
    m = learned.metrics.sort_values("step")
    for s2, g in m.groupby("sigma2"):
        trajectory = g["decoder_sigma2"].to_numpy()
        assert np.all(np.abs(trajectory / s2 - 1) > 1e-3)  # it moved from the grid's
        assert len(set(trajectory)) == len(trajectory)  # and keeps moving


def test_the_learned_variance_gradient_is_the_closed_form():
    """d loss / d ln sigma^2 = N/2 - ||x - f(z)||^2 / (2 sigma^2), batch-averaged."""
    static = Static(3, 1, (), (), 4, 1, learned_sigma2=True)
    trainer = Trainer(static)
    point = Point.one(sigma2=2.0, beta=1.0, learning_rate=1e-3, seed=0)
    params = trainer._init_one(point).params
    assert float(params["log_sigma2"]) == pytest.approx(np.log(2.0))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3)), jnp.float32)
    eps = jnp.zeros((4, 1))
    grads = jax.grad(trainer.batch_loss)(params, point, x, eps, jnp.float32(0.0))
    terms = trainer._terms(params, point, x, eps)
    expect = np.mean(3 / 2 - np.asarray(terms.sq_err) / (2 * 2.0))
    assert float(grads["log_sigma2"]) == pytest.approx(expect, rel=1e-5)


# closed-form KL (one dim, lambda = 4) for two seeds, three evaluations each
SYNTHETIC = pd.DataFrame(
    [
        {
            "point_id": f"p{i}s{seed}",
            "sigma2": s2,
            "beta": 1.0,
            "seed": seed,
            "step": step,
            "kl": max(0.0, 0.5 * np.log(4.0 / s2)) + 0.001 * seed,
            "diverged": False,
        }
        for i, s2 in enumerate(np.geomspace(0.1, 20.0, 9))
        for seed in (0, 1)
        for step in (10, 20, 30)
    ]
)


def test_hysteresis_of_a_sweep_against_itself_is_zero():
    table = analysis.settle(
        pd.concat(
            [
                SYNTHETIC.assign(direction=d, point_id=SYNTHETIC["point_id"] + str(d))
                for d in (1.0, -1.0)
            ]
        ),
        ["kl"],
    )
    (h,) = analysis.hysteresis(table)
    assert h["area"] == 0.0 and h["max_gap"] == 0.0 and h["parted"] is None
    # a real gap is measured: the down sweep kept 0.2 nats more below sigma^2 = 1
    shifted = table.copy()
    low = (shifted["direction"] < 0) & (shifted["sigma2"] < 1.0)
    shifted.loc[low, "kl"] += 0.2
    (h,) = analysis.hysteresis(shifted)
    assert h["max_gap"] == pytest.approx(0.2)
    assert h["parted"][1] < 1.0 and h["area"] > 0


def test_hysteresis_chains_run_up_and_down_from_their_neighbour(tiny_spec):
    spec = tiny_spec(
        train={"hysteresis": True}, grid={"sigma2": [0.5, 2.0, 8.0], "beta": [1.0]}
    )
    grid = grid_table(spec)
    assert sorted(grid["direction"]) == [-1, -1, -1, 1, 1, 1]
    assert grid["point_id"].nunique() == 6
    sched = schedule.Schedule(grid, slots=2)
    order = []
    while not sched.done():
        sched.fill()
        busy = np.flatnonzero(sched.busy)
        rows = sched.grid.loc[sched.slot_point[busy]]
        order.append(sorted(zip(rows["direction"], rows["sigma2"], strict=True)))
        sched.finished.extend(int(r) for r in sched.slot_point[busy])
        sched.slot_point[busy] = schedule.EMPTY
    assert order == [
        [(-1.0, 8.0), (1.0, 0.5)],
        [(-1.0, 2.0), (1.0, 2.0)],
        [(-1.0, 0.5), (1.0, 8.0)],
    ]


def test_a_hysteresis_sweep_reports_both_curves(tiny_spec, tmp_path):
    spec = tiny_spec(
        train={"hysteresis": True},
        grid={"sigma2": [0.2, 0.5, 1.2, 3.0, 8.0], "beta": [1.0]},
    )
    result = run_sweep(spec, tmp_path / "run")
    assert result.meta.compiles == 1 and result.meta.grid_size == 10
    a = analysis.analyze(result.metrics, result.meta.spectrum, 2)
    assert sorted(t.curve["direction"] for t in a.transitions) == [-1.0, 1.0]
    (h,) = a.hysteresis
    assert h["sigma2"] == [0.2, 0.5, 1.2, 3.0, 8.0]
    assert h["area"] >= 0 and len(h["kl_up"]) == len(h["kl_down"]) == 5


@pytest.mark.slow
def test_static_decoder_groups_compile_once_each(tiny_spec, tmp_path):
    grid = {"sigma2": [0.5, 2.0, 8.0], "beta": [1.0]}
    spec = tiny_spec(grid={**grid, "decoder": [[8], [16, 16], []]})
    result = run_sweep(spec, tmp_path / "run")
    assert result.meta.static_groups == ("8", "16-16", "linear")
    assert result.meta.compiles == 3 and result.meta.grid_size == 9
    m = result.metrics
    assert m["point_id"].nunique() == 9 and set(m["decoder"]) == {
        "8",
        "16-16",
        "linear",
    }
    # a group is the sweep of that decoder on its own
    alone = run_sweep(
        tiny_spec(model={"decoder": [16, 16]}, grid=grid), tmp_path / "alone"
    ).metrics
    cols = ["sigma2", "step", "loss", "kl", "mse"]
    pd.testing.assert_frame_equal(
        m[m["decoder"] == "16-16"][cols].sort_values(cols[:2]).reset_index(drop=True),
        alone[cols].sort_values(cols[:2]).reset_index(drop=True),
    )
    last = m[m["step"] == 20].groupby("decoder")["loss"].mean()
    assert last.nunique() == 3  # the decoder reaches the computation
    again = run_sweep(spec, tmp_path / "run")  # finished: nothing retrained
    assert len(again.metrics) == len(m)


@pytest.mark.parametrize(
    "axis, value, words",
    [
        ("decoder", [[8], [8]], "twice"),
        ("decoder", [[0]], "integers >= 1"),
        ("decoder", ["8"], "width lists"),
        ("skip", ["plain", "plain"], "distinct skip paths"),
        ("skip", ["unet"], "distinct skip paths"),
    ],
)
def test_bad_static_axes_are_refused(tiny_spec, axis, value, words):
    from phasevae.spec import SpecError

    with pytest.raises(SpecError, match=words):
        tiny_spec(grid={axis: value})


@pytest.mark.slow
def test_skip_paths_are_static_groups_that_reach_the_decoder(tiny_spec, tmp_path):
    """Decoder x skip: 2 x 3 groups, one compile each. The plain skip hands the
    decoder x itself, the gated one x times a gate of z; both change the loss."""
    grid = {"sigma2": [0.3, 1.0, 3.0, 10.0], "beta": [1.0], "decoder": [[8], []]}
    spec = tiny_spec(grid={**grid, "skip": ["none", "plain", "gated"]})
    result = run_sweep(spec, tmp_path / "run")
    assert result.meta.compiles == 6 and result.meta.grid_size == 24
    assert result.meta.static_groups[:2] == ("8__none", "8__plain")
    m = result.metrics
    last = m[m["step"] == 20].groupby(["decoder", "skip"])["loss"].mean()
    assert last.nunique() == 6
    # analysed per group; a static axis gets its remedy figure and phase diagram
    from phasevae.analysis.curves import analyze_run
    from phasevae.report.figures import write_figures

    doc = analyze_run(tmp_path / "run")
    assert {(t.curve["decoder"], t.curve["skip"]) for t in doc.transitions} == set(
        last.index
    )
    names = set(write_figures(tmp_path / "run"))
    assert {"remedy_skip", "phase_diagram_skip", "remedy_decoder"} <= names
    # the gate is a parameter of the gated group only, computed from z alone
    from phasevae.models.vae import VAE

    model = VAE(4, 2, (8,), (8,), "gated")
    params = model.init(jax.random.key(0), jnp.zeros(4), jnp.zeros(2))
    assert params["params"]["gate"]["kernel"].shape == (2, 4)
    assert "bias" not in params["params"]["gate"]


def test_scaling_per_remedy_setting_tells_which_breaks_the_symmetry():
    """Closed-form KL(beta sigma^2) for three betas under two settings of a remedy
    axis; in the second the beta = 2 curve is moved (the symmetry broken)."""
    from tests.test_analysis import synthetic_metrics

    kept = synthetic_metrics([0.5, 1.0, 2.0], noise=0.0).assign(kl_warmup_steps=0.0)
    broken = synthetic_metrics([0.5, 1.0, 2.0], noise=0.0).assign(kl_warmup_steps=9.0)
    broken["point_id"] += "w"
    broken.loc[broken["beta"] == 2.0, "kl"] += 0.3
    table = analysis.settle(pd.concat([kept, broken]), ["kl"])
    by = {r["kl_warmup_steps"]: r for r in analysis.scaling_by_group(table)}
    # (linear interpolation between samples rounds the kinks: not exactly zero)
    assert by[0.0]["rms_spread"] < 0.01
    assert by[9.0]["rms_spread"] == pytest.approx(0.3 * np.sqrt(2) / 3, abs=0.01)
    assert analysis.scaling_by_group(kept.pipe(analysis.settle, ["kl"])) == []


def _linear_trainer(**flags):
    from phasevae.engine.step import Static, Trainer

    trainer = Trainer(Static(3, 2, (), (), 4, 1, **flags))
    point = Point.one(sigma2=0.7, beta=1.5, learning_rate=1e-3, seed=0)
    params = trainer.init(
        Point.from_table({k: [v] for k, v in point._asdict().items()})
    )
    params = jax.tree.map(lambda a: a[0], params.params)
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(4, 3)) * [2.0, 1.0, 0.5], jnp.float32)
    eps = jnp.asarray(rng.normal(size=(4, 2)), jnp.float32)
    return trainer, point, params, x, eps


def _terms(trainer, params, point, x, eps):
    from phasevae.models.vae import example_terms

    return jax.vmap(example_terms, (None, None, 0, 0, None))(
        trainer.model, {"params": params["params"]}, x, eps, point.sigma2
    )


def test_free_bits_objective_by_hand_and_no_gradient_below_the_floor():
    trainer, point, params, x, eps = _linear_trainer(free_bits=True)
    t = _terms(trainer, params, point, x, eps)
    kl = np.asarray(t.kl_dim).mean(axis=0)  # per dim, over the minibatch
    floor = float(np.mean(kl))  # one dim below it, one above
    assert kl.min() < floor < kl.max()
    p = point._replace(free_bits=jnp.float32(floor))
    got = trainer.batch_loss(params, p, x, eps, jnp.float32(0.0))
    want = np.mean(t.recon) + 1.5 * np.sum(np.maximum(floor, kl))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # a floor above every dim: the KL has no gradient left, only the reconstruction
    high = point._replace(free_bits=jnp.float32(10 * kl.max()))
    g = jax.grad(trainer.batch_loss)(params, high, x, eps, jnp.float32(0.0))

    def recon_only(prm):
        return jnp.mean(_terms(trainer, prm, point, x, eps).recon)

    plain = jax.grad(recon_only)(params)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(plain), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # free_bits = 0 is the plain objective
    zero = trainer.batch_loss(params, point, x, eps, jnp.float32(0.0))
    np.testing.assert_allclose(zero, np.mean(t.recon) + 1.5 * np.sum(kl), rtol=1e-6)


def test_cyclical_annealing_schedule():
    from phasevae.engine.step import kl_factor

    p = Point.one(
        sigma2=1, beta=1, learning_rate=1, seed=0, kl_cycle_steps=100, kl_cycle_ramp=0.5
    )
    steps = [0, 25, 50, 75, 99, 100, 125, 150, 250]
    want = [0.0, 0.5, 1.0, 1.0, 1.0, 0.0, 0.5, 1.0, 1.0]
    got = [float(kl_factor(p, jnp.float32(s))) for s in steps]
    np.testing.assert_allclose(got, want, atol=1e-6)
    # with a warm-up of 200 steps too: the product
    both = p._replace(kl_warmup_steps=jnp.float32(200.0))
    assert float(kl_factor(both, jnp.float32(125.0))) == pytest.approx(0.5 * 0.625)


def test_mutual_information_term_by_hand():
    trainer, point, params, x, eps = _linear_trainer(mi_term=True)
    t = _terms(trainer, params, point, x, eps)
    mu, var = np.asarray(t.mu, np.float64), np.asarray(t.var_dim, np.float64)
    z = mu + np.sqrt(var) * np.asarray(eps)
    # log q(z_i | x_j), summed over dims, and log of the aggregate posterior
    log_q = -0.5 * np.sum(
        (z[:, None] - mu[None]) ** 2 / var[None] + np.log(2 * np.pi * var[None]), -1
    )
    agg = np.log(np.mean(np.exp(log_q), axis=1))
    mi = np.mean(np.diag(log_q) - agg)
    base = np.mean(t.recon) + 1.5 * np.mean(np.sum(t.kl_dim, axis=1))
    p = point._replace(mi_weight=jnp.float32(0.8))
    got = trainer.batch_loss(params, p, x, eps, jnp.float32(0.0))
    np.testing.assert_allclose(got, base - 0.8 * mi, rtol=1e-5)


@pytest.mark.slow
def test_one_compile_for_every_value_of_the_remedy_axes(tmp_path, tiny_spec):
    from phasevae.engine.sweep import run_sweep

    spec = tiny_spec(
        grid={
            "sigma2": [0.5, 8.0],
            "beta": [1.0],
            "free_bits": [0.0, 0.1, 0.5],
            "kl_cycle_steps": [0, 10],
            "kl_cycle_ramp": [0.5, 1.0],
            "mi_weight": [0.0, 1.0],
        }
    )
    result = run_sweep(spec, tmp_path / "run")
    assert result.meta.grid_size == 2 * 3 * 2 * 2 * 2
    assert result.meta.compiles == 1
    m = result.metrics
    for axis in ("free_bits", "kl_cycle_steps", "kl_cycle_ramp", "mi_weight"):
        assert m[axis].nunique() > 1
    last = m[m["step"] == m["step"].max()]
    assert np.isfinite(last["loss"]).all() and not last["diverged"].any()
    # the points differ by their remedy: free bits keep the small sigma^2 dims' KL up
    small = last[
        (last["sigma2"] == 0.5)
        & (last["kl_cycle_steps"] == 0)
        & (last["mi_weight"] == 0)
        & (last["kl_cycle_ramp"] == 0.5)
    ]
    assert small.set_index("free_bits")["kl"].is_unique


def test_a_run_from_before_the_remedy_axes_reads_them_at_their_defaults(
    tmp_path, tiny_spec
):
    """Rows written before an axis existed trained at its default, and a run resumed
    across the upgrade must not leave NaN in them (the analysis groups by axes)."""
    from phasevae.engine.sweep import run_sweep
    from phasevae.store import RunDir

    result = run_sweep(tiny_spec(), tmp_path / "run")
    old = result.metrics.drop(columns=["free_bits", "mi_weight"])
    old["kl_cycle_steps"] = np.nan  # as a concatenation of old and new rows leaves it
    RunDir(tmp_path / "run").write_metrics(old)
    back = RunDir(tmp_path / "run").metrics()
    assert (back["free_bits"] == 0.0).all() and (back["mi_weight"] == 0.0).all()
    assert (back["kl_cycle_steps"] == 0.0).all()


def test_free_bits_floors_are_read_as_no_collapse_and_information_is_tracked():
    """A curve whose dims are held at a free-bits floor is not called collapsed; the
    plain one is; I(x; z) is read along both curves."""
    from tests.test_analysis import EV, K, synthetic_metrics

    plain = synthetic_metrics([1.0], noise=0.0).assign(free_bits=0.0)
    held = synthetic_metrics([1.0], noise=0.0).assign(free_bits=0.1)
    held["point_id"] += "f"
    dims = [f"kl_dim_{j}" for j in range(K)]
    held[dims] = np.maximum(held[dims], 0.1)
    held["kl"] = held[dims].sum(axis=1)
    both = pd.concat([plain, held])
    both["mi"] = np.minimum(both["kl"], 1.0) * (both["free_bits"] == 0)
    doc = analysis.analyze(both, {"eigenvalues": list(EV)}, K)
    by = {t.curve["free_bits"]: t for t in doc.transitions}
    assert by[0.0].floor is None and by[0.0].verdict != "held at the free-bits floor"
    assert by[0.1].floor["held"] and by[0.1].floor["free_bits"] == 0.1
    assert by[0.1].verdict == "held at the free-bits floor"
    s2 = np.sort(plain["sigma2"].unique())
    first_low = s2[
        np.nonzero(plain.groupby("sigma2")["kl"].mean().to_numpy() < 0.01)[0][0]
    ]
    assert by[0.0].information["mi_lost_sigma2"] == pytest.approx(first_low)
    assert by[0.1].information["mi_lost_sigma2"] == pytest.approx(s2[0])


@pytest.mark.slow
def test_remedy_axes_through_slots_shards_and_analysis(tmp_path, tiny_spec):
    """The objective-side axes in an adaptive sweep (slots, retire) and in two
    shards of the fixed grid: merged, the shards equal the adaptive run up to where
    points may retire, and the analysis gives one transition per remedy value
    (not interrupted here: the store reads the axes by name whatever their values,
    test_a_run_from_before_the_remedy_axes_reads_them_at_their_defaults)."""
    import tomli_w

    from phasevae.cli import main
    from phasevae.engine import sweep as sweep_mod
    from tests.conftest import tiny_dict

    sections = dict(
        train={"steps": 30, "slots": 3, "retire": True, "min_steps": 20},
        grid={
            "sigma2": [0.3, 1.0, 3.0, 10.0],
            "beta": [1.0],
            "free_bits": [0.0, 0.05],
            "kl_cycle_steps": [0.0, 20.0],
            "mi_weight": [0.0, 0.5],
        },
    )
    spec = tiny_spec(**sections)
    full = sweep_mod.run_sweep(spec, tmp_path / "full").metrics
    key = ["point_id", "step"]

    def same(a, b, **tol):
        pd.testing.assert_frame_equal(
            a.sort_values(key).reset_index(drop=True)[b.columns],
            b.sort_values(key).reset_index(drop=True),
            **tol,
        )

    # shards split a fixed grid: the same points, trained alike up to step 20
    # (before any point may retire)
    path = tmp_path / "s.toml"
    path.write_text(tomli_w.dumps(tiny_dict(**{**sections, "train": {"steps": 30}})))
    shards = [str(tmp_path / f"shard{i}") for i in range(2)]
    for i, out in enumerate(shards):
        assert main(["sweep", str(path), "--out", out, "--shard", f"{i}/2"]) == 0
    assert main(["merge", *shards, "--out", str(tmp_path / "merged")]) == 0
    merged = pd.read_parquet(tmp_path / "merged" / "metrics.parquet")
    assert set(merged["point_id"]) == set(full["point_id"])
    common = [c for c in merged.columns if c in full.columns]
    same(
        full[full["step"] <= 20],
        merged.loc[merged["step"] <= 20, common],
        check_exact=False,
        rtol=1e-4,
        atol=1e-5,
    )
    doc = analysis.analyze_run(tmp_path / "merged")
    remedies = {
        (t.curve["free_bits"], t.curve["kl_cycle_steps"], t.curve["mi_weight"])
        for t in doc.transitions
    }
    assert len(remedies) + len(doc.skipped) == 8 and remedies
