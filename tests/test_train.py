import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from phasevae.data import load_dataset
from phasevae.engine import sweep as sweep_mod
from phasevae.engine.grid import grid_table, static_config
from phasevae.engine.step import Point, Trainer
from phasevae.engine.sweep import run_sweep


def make(spec):
    data = load_dataset(spec.data)
    grid = grid_table(spec)
    points = Point.from_table(grid)
    return Trainer(static_config(spec, data.x.shape[1])), points, data


def assert_vmapped_equals_alone(spec, data):
    """One chunk of the whole grid of ``spec``, vmapped, is finite and equals each
    model's chunk run alone, parameters and metrics. Returns the grid's metrics."""
    trainer = Trainer(static_config(spec, data.x.shape[1], data.image_shape))
    points = Point.from_table(grid_table(spec))
    x, ex = jnp.asarray(data.x), jnp.asarray(data.eval_x)
    state, metrics = trainer.chunk(trainer.init(points), points, x, ex, np.int32(0))
    assert np.all(np.isfinite(np.asarray(metrics.loss)))
    for i in range(len(points.sigma2)):
        one = jax.tree.map(lambda a, i=i: a[i : i + 1], points)
        s1, m1 = trainer.chunk(trainer.init(one), one, x, ex, np.int32(0))
        for a, b in zip(
            jax.tree.leaves(s1.params), jax.tree.leaves(state.params), strict=True
        ):
            np.testing.assert_allclose(a[0], b[i], rtol=2e-5, atol=2e-6)
        for a, b in zip(jax.tree.leaves(m1), jax.tree.leaves(metrics), strict=True):
            np.testing.assert_allclose(a[0], b[i], rtol=2e-5, atol=2e-6)
    return metrics


def assert_resume_is_uninterrupted(spec, where, metrics, monkeypatch):
    """A sweep of ``spec`` interrupted after its first chunk (a checkpoint at every
    chunk) and rerun into ``where`` ends with ``metrics``, those of the same sweep
    run straight through."""
    monkeypatch.setattr(sweep_mod, "CHECKPOINT_SECONDS", 0.0)

    def stop_after_one(done, total, elapsed):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sweep_mod.run_sweep(spec, where, progress=stop_after_one)
    resumed = sweep_mod.run_sweep(spec, where).metrics
    key = ["point_id", "step"]
    pd.testing.assert_frame_equal(
        resumed.sort_values(key).reset_index(drop=True),
        metrics.sort_values(key).reset_index(drop=True),
    )


def test_vmapped_chunk_equals_single_model_runs(tiny_spec):
    spec = tiny_spec(grid={"seeds": [0, 1]}, train={"steps": 5, "eval_every": 5})
    assert len(grid_table(spec)) == 8
    metrics = assert_vmapped_equals_alone(spec, load_dataset(spec.data))
    # different seeds really are different models; equal seeds share initialisation
    assert not np.allclose(metrics.kl[0], metrics.kl[1])


@pytest.mark.slow
def test_one_trace_for_a_whole_grid_over_many_chunks(tiny_spec, tmp_path):
    spec = tiny_spec(
        grid={"sigma2": {"min": 0.1, "max": 10.0, "num": 6}, "seeds": [0, 1, 2]},
        train={"steps": 40, "eval_every": 10},
    )
    result = run_sweep(spec, tmp_path / "run")
    assert result.meta.grid_size == 36
    assert result.metrics["step"].nunique() == 4
    assert result.meta.compiles == 1

    trainer, points, data = make(spec)
    x, ex = jnp.asarray(data.x), jnp.asarray(data.eval_x)
    state = trainer.init(points)
    for start in (0, 10, 20):
        points = points._replace(sigma2=points.sigma2 * 2.0)  # new values, same shapes
        state, _ = trainer.chunk(state, points, x, ex, np.int32(start))
    assert trainer.traces == 1


def test_a_step_to_non_finite_parameters_is_refused_and_the_model_frozen(tiny_spec):
    # an infinite learning rate makes a finite gradient's step infinite: the loss and
    # gradients stay finite, only the new parameters show it
    spec = tiny_spec(train={"steps": 3, "eval_every": 3})
    trainer, points, data = make(spec)
    rate = np.array(points.learning_rate)
    rate[1] = np.inf
    points = points._replace(learning_rate=rate)
    start = trainer.init(points)
    initial = [np.array(a) for a in jax.tree.leaves(start.params)]  # chunk donates it
    x, ex = jnp.asarray(data.x), jnp.asarray(data.eval_x)
    state, _ = trainer.chunk(start, points, x, ex, np.int32(0))
    flagged = np.asarray(state.diverged)
    assert flagged[1] and not flagged[0] and not flagged[2:].any()
    for before, after in zip(initial, jax.tree.leaves(state.params), strict=True):
        assert np.isfinite(np.asarray(after)).all()
        np.testing.assert_array_equal(after[1], before[1])  # frozen at its start
        assert not np.array_equal(after[0], before[0])  # the others trained on


@pytest.mark.slow
def test_a_diverging_model_is_flagged_and_does_not_disturb_the_others(
    tiny_spec, tmp_path
):
    good = {"sigma2": [0.5, 8.0], "beta": [1.0], "learning_rate": [1e-2]}
    bad = dict(good, learning_rate=[1e-2, 1e6])
    alone = run_sweep(tiny_spec(grid=good), tmp_path / "alone").metrics
    mixed = run_sweep(tiny_spec(grid=bad), tmp_path / "mixed")
    m = mixed.metrics
    assert m.loc[m["learning_rate"] == 1e6, "diverged"].all()
    assert len(mixed.diverged) == 2
    healthy = m[m["learning_rate"] == 1e-2].reset_index(drop=True)
    assert not healthy["diverged"].any()
    cols = ["loss", "kl", "kl_dim_0", "kl_dim_1", "var_dim_0", "mse"]
    assert np.isfinite(healthy[cols].to_numpy()).all()
    np.testing.assert_allclose(healthy[cols], alone[cols], rtol=1e-5, atol=1e-6)
    assert set(mixed.meta.points.values()) == {"ok", "diverged"}


@pytest.mark.slow
def test_remedy_axes_reach_the_computation_in_one_compile(tiny_spec, tmp_path):
    grid = {
        "sigma2": [0.5, 8.0],
        "beta": [1.0],
        "learning_rate": [0.01, 0.003],
        "kl_warmup_steps": [0.0, 15.0],
        "decoder_init_scale": [1.0, 0.1],
    }
    result = run_sweep(tiny_spec(grid=grid), tmp_path / "remedies")
    m = result.metrics
    assert result.meta.grid_size == 16 and result.meta.compiles == 1
    last = m[m["step"] == 20].set_index(
        ["sigma2", "learning_rate", "kl_warmup_steps", "decoder_init_scale"]
    )
    base = last.loc[(0.5, 0.01, 0.0, 1.0), "loss"]
    assert last.loc[(0.5, 0.01, 15.0, 1.0), "loss"] != base  # warm-up changes it
    assert last.loc[(0.5, 0.01, 0.0, 0.1), "loss"] != base  # so does the init scale
    assert last.loc[(0.5, 0.003, 0.0, 1.0), "loss"] != base  # and the learning rate

    # no warm-up and scale 1 are exactly the run without those axes (same ids too)
    plain = run_sweep(
        tiny_spec(grid={"sigma2": [0.5, 8.0], "beta": [1.0]}), tmp_path / "p"
    )
    same = m[
        (m["kl_warmup_steps"] == 0.0)
        & (m["decoder_init_scale"] == 1.0)
        & (m["learning_rate"] == 0.01)
    ]
    cols = ["point_id", "step", "loss", "kl", "mse"]
    pd.testing.assert_frame_equal(
        same[cols].sort_values(cols[:2]).reset_index(drop=True),
        plain.metrics[cols].sort_values(cols[:2]).reset_index(drop=True),
    )


def test_warmup_factor_and_init_scale():
    from phasevae.engine.step import kl_factor

    p = Point.one(sigma2=1, beta=1, learning_rate=1, seed=0, kl_warmup_steps=100)
    assert float(kl_factor(p, jnp.float32(0.0))) == 0.0
    assert float(kl_factor(p, jnp.float32(50.0))) == 0.5
    assert float(kl_factor(p, jnp.float32(500.0))) == 1.0
    none = p._replace(kl_warmup_steps=jnp.float32(0.0))
    assert float(kl_factor(none, jnp.float32(0.0))) == 1.0
    from phasevae.engine.step import Static, Trainer

    trainer = Trainer(Static(3, 1, (4,), (5,), 8, 1))
    one = Point.from_table(
        {
            "sigma2": [1, 1],
            "beta": [1, 1],
            "learning_rate": [1, 1],
            "seed": [0, 0],
            "decoder_init_scale": [1.0, 0.25],
        }
    )
    k = trainer.init(one).params["params"]["dec"]["Dense_1"]["kernel"]
    np.testing.assert_allclose(k[1], 0.25 * k[0], rtol=1e-6)  # same seed, scaled


@pytest.mark.parametrize(
    "precision, config, bf16_dots",
    [("float32", "HIGHEST", False), ("tf32", "HIGH", False), ("bfloat16", None, True)],
)
def test_the_precision_reaches_the_compiled_program(
    tiny_spec, precision, config, bf16_dots
):
    """train.precision sets every dot's precision config (float32: HIGHEST, tf32:
    HIGH); bfloat16 makes the built-in layers' products bfloat16 x bfloat16 with
    float32 results, the parameters staying float32."""
    import re

    spec = tiny_spec(train={"precision": precision})
    trainer, points, data = make(spec)
    x, ex = jnp.asarray(data.x), jnp.asarray(data.eval_x)
    state = trainer.init(points)
    hlo = trainer.chunk.lower(state, points, x, ex, np.int32(0)).as_text()
    dots = re.findall(r"stablehlo\.dot_general.*", hlo)
    assert dots
    if config is not None:
        assert all(f"precision = [{config}, {config}]" in d for d in dots)
    bf16 = [
        d for d in dots if re.search(r"\(tensor<[^)]*bf16>, tensor<[^)]*bf16>\)", d)
    ]
    assert bool(bf16) == bf16_dots
    if bf16_dots:
        assert all(d.rstrip().endswith("f32>") for d in bf16)  # accumulated in f32
    assert {a.dtype for a in jax.tree.leaves(state.params)} == {jnp.dtype("float32")}


@pytest.mark.slow
@pytest.mark.parametrize(
    "model, data",
    [
        ({"kind": "conv", "latent_dim": 2, "channels": [4]}, {"source": "digits"}),
        (
            {"kind": "vrnn", "latent_dim": 1, "state": 4, "encoder": [8]},
            {"eigenvalues": [2.0, 1.0, 0.5, 0.25]},
        ),
    ],
)
def test_bfloat16_reaches_the_conv_vae_and_the_vrnn(model, data):
    """The built-in modules cast their products' operands too: bfloat16 x bfloat16
    dots with float32 results (the conv VAE's convolutions and dense layers, the
    VRNN's encoder and decoder), none at float32."""
    import re

    from phasevae.data import load_for_model
    from phasevae.spec import spec_from_dict

    counts = []
    for precision in ("float32", "bfloat16"):
        spec = spec_from_dict(
            {
                "data": data,
                "model": model,
                "train": {"steps": 2, "eval_every": 2, "precision": precision},
                "grid": {"sigma2": [0.5, 8.0]},
            }
        )
        d = load_for_model(spec)
        trainer = Trainer(static_config(spec, d.x.shape[1], d.image_shape))
        points = Point.from_table(grid_table(spec))
        x, ex = jnp.asarray(d.x), jnp.asarray(d.eval_x)
        state = trainer.init(points)
        hlo = trainer.chunk.lower(state, points, x, ex, np.int32(0)).as_text()
        dots = re.findall(r"stablehlo\.dot_general.*", hlo)
        bf16 = [
            d for d in dots if re.search(r"\(tensor<[^)]*bf16>, tensor<[^)]*bf16>\)", d)
        ]
        assert all(d.rstrip().endswith("f32>") for d in bf16)
        counts.append(len(bf16))
    assert counts[0] == 0 and counts[1] > 0


def test_a_run_refuses_to_resume_at_another_precision(tiny_spec, tmp_path):
    """The precision is part of the spec meta.json records; a rerun at another one
    is a different spec, refused in that directory."""
    from phasevae.store import RunDir, RunDirError

    run_sweep(tiny_spec(), tmp_path / "run")
    meta = RunDir(tmp_path / "run").meta()
    assert meta.spec["train"]["precision"] == "float32"
    with pytest.raises(RunDirError, match="different spec|another spec|differs"):
        run_sweep(tiny_spec(train={"precision": "bfloat16"}), tmp_path / "run")


def test_the_decoder_gains_are_the_singular_values_of_a_linear_decoder():
    """For the linear VAE the decoder's Jacobian in z is its kernel W (N, k; stored
    (out, in)), whatever z: E[J^T J] = W^T W, and the gains (largest first) are W's
    singular values; a decoder whose z-weights are 0 (collapsed) has gains 0."""
    from phasevae.engine.loop import _decoder_gains
    from phasevae.engine.step import Static, Trainer

    trainer = Trainer(Static(5, 3, (), (), 4, 1))
    points = Point.from_table(
        {"sigma2": [1.0], "beta": [1.0], "learning_rate": [1e-3], "seed": [3]}
    )
    params = jax.tree.map(lambda a: a[0], trainer.init(points).params)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(7, 5)), jnp.float32)
    z = jnp.asarray(np.random.default_rng(1).normal(size=(7, 3)), jnp.float32)
    w = np.asarray(params["params"]["dec"]["Dense_0"]["kernel"], np.float64)
    gram = np.asarray(trainer._decoder_gram(params, z, x), np.float64)
    np.testing.assert_allclose(gram, w.T @ w, rtol=1e-5, atol=1e-6)
    gains = _decoder_gains(gram[None], 1, 3)[:, 0]
    np.testing.assert_allclose(gains, np.linalg.svd(w, compute_uv=False), rtol=1e-5)
    dead = jax.tree.map(jnp.zeros_like, params)
    assert not _decoder_gains(
        np.asarray(trainer._decoder_gram(dead, z, x))[None], 1, 3
    ).any()


def test_the_decoder_gram_of_a_deep_decoder_is_its_jacobian_by_differences():
    """A deep MLP decoder (with a skip path, so x enters f): E[J^T J] from the
    trainer against J by central differences of model.decode, one example."""
    from phasevae.engine.step import Static, Trainer

    trainer = Trainer(Static(4, 2, (6,), (5, 3), 4, 1, skip="gated"))
    points = Point.from_table(
        {"sigma2": [1.0], "beta": [1.0], "learning_rate": [1e-3], "seed": [0]}
    )
    params = jax.tree.map(lambda a: a[0], trainer.init(points).params)
    x = jnp.asarray([[0.3, -1.2, 0.8, 2.0]], jnp.float32)
    z = np.array([0.4, -0.7])
    gram = np.asarray(trainer._decoder_gram(params, jnp.asarray(z[None]), x))

    def f(zv):
        return np.asarray(
            trainer.model.apply(
                {"params": params["params"]},
                jnp.asarray(zv, jnp.float32),
                x[0],
                method="decode",
            ),
            np.float64,
        )

    h = 1e-2
    j = np.stack([(f(z + h * e) - f(z - h * e)) / (2 * h) for e in np.eye(2)], 1)
    np.testing.assert_allclose(gram, j.T @ j, rtol=2e-3, atol=1e-5)
