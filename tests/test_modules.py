"""Own models (issue 15): the convolutional VAE and user modules go through the same
sweep as the MLP; protocol violations are refused with exit 2 before anything
compiles."""

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
import tomli_w

from phasevae import api
from phasevae.cli import main
from phasevae.models.conv import ConvVAE
from tests import user_models
from tests.conftest import tiny_dict

KEY = ["point_id", "step"]
GRID = {"sigma2": [0.25, 1.0, 4.0, 16.0], "beta": [1.0]}
CONV = {
    "data": {"source": "digits", "eval_samples": 128},
    "model": {"kind": "conv", "latent_dim": 2, "channels": [4, 8]},
    "train": {"steps": 20, "eval_every": 10, "batch_size": 16, "learning_rate": 1e-2},
    "grid": {"sigma2": [0.02, 0.2, 2.0], "beta": [1.0], "seeds": [0]},
}


def sorted_rows(df):
    return df.sort_values(KEY).reset_index(drop=True)


@pytest.mark.slow
def test_a_user_module_by_spec_string_and_by_python_object_trains_the_same(
    tmp_path, monkeypatch, capsys
):
    by_name = tiny_dict(
        model={
            "kind": "module",
            "module": "tests.user_models:make",
            "options": {"width": 8},
            "encoder": [64, 32],  # the defaults: the MLP's widths are not set
            "decoder": [32, 64],
        },
        grid=GRID,
    )
    a = api.run(by_name, tmp_path / "name")
    plain = tiny_dict(grid=GRID)
    del plain["model"]["encoder"], plain["model"]["decoder"]
    module = user_models.make((4,), 2, 8)
    b = api.run(plain, tmp_path / "object", model=module)
    assert a.spec.model.module == "tests.user_models:make"
    assert b.spec.model.module.startswith("python:tests.user_models.TinyVAE#")
    cols = ["point_id", "step", "kl", "loss", "kl_dim_0", "kl_dim_1"]
    pd.testing.assert_frame_equal(
        sorted_rows(a.metrics)[cols], sorted_rows(b.metrics)[cols]
    )
    # trained: the KL differs across sigma^2 and the analysis reads it
    assert a.metrics["kl"].nunique() > 1
    assert a.analyze().transitions
    # the object's run continues from Python with the object; a new process that
    # does not hold it is told so
    assert api.run(plain, tmp_path / "object", model=module).complete
    monkeypatch.setattr("phasevae.models.registry._OBJECTS", {})
    spec = str(tmp_path / "object" / "spec.toml")
    assert main(["sweep", spec, "--out", str(tmp_path / "again")]) == 2
    assert "continue this run from Python" in capsys.readouterr().err


@pytest.mark.parametrize(
    "module, options, message",
    [
        ("tests.user_models:broken", {"how": "shape"}, "have shapes"),
        ("tests.user_models:broken", {"how": "nan"}, "NaN or inf"),
        ("tests.user_models:broken", {"how": "batchnorm"}, "state besides params"),
        ("tests.user_models:broken", {"how": "python_branch"}, "cannot be traced"),
        ("tests.user_models:raises", {}, "the factory raised RuntimeError"),
        ("tests.user_models:make", {"colour": 3}, "unexpected keyword"),
        ("tests.no_such_module:make", {}, "cannot import tests.no_such_module"),
        ("tests.user_models:nothing", {}, "has no nothing"),
        ("tests.user_models:no_output_layer", {}, "needs the module's output_layer"),
    ],
)
def test_protocol_violations_exit_2_with_what_is_wrong(
    tmp_path, capsys, module, options, message
):
    raw = tiny_dict(model={"kind": "module", "module": module, "options": options})
    del raw["model"]["encoder"], raw["model"]["decoder"]
    raw["grid"]["decoder_init_scale"] = [1.0, 0.1]
    spec = tmp_path / "spec.toml"
    spec.write_text(tomli_w.dumps(raw))
    out = tmp_path / "run"
    assert main(["sweep", str(spec), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()  # refused before anything was written


@pytest.mark.parametrize("model", [{"channels": [1] * 8}, {"kernel": 1000}])
def test_a_conv_vae_larger_than_its_images_is_refused(tmp_path, capsys, model):
    """8 stride-2 layers or a kernel of 1000 on 8x8 digits went past 4.5 GB and
    400 s; they are refused before anything is built."""
    raw = tiny_dict(data={"source": "digits"}, model={"kind": "conv", **model})
    del raw["model"]["encoder"], raw["model"]["decoder"]
    del raw["data"]["eigenvalues"], raw["data"]["samples"]
    spec = tmp_path / "spec.toml"
    spec.write_text(tomli_w.dumps(raw))
    assert main(["sweep", str(spec), "--out", str(tmp_path / "run")]) == 2
    assert "do not fit images of 8 x 8" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_conv_refuses_tables_and_the_mlp_only_options(tmp_path, capsys):
    raw = tiny_dict(model={"kind": "conv"})
    del raw["model"]["encoder"], raw["model"]["decoder"]
    spec = tmp_path / "spec.toml"
    spec.write_text(tomli_w.dumps(raw))
    assert main(["sweep", str(spec), "--out", str(tmp_path / "run")]) == 2
    assert "needs image data" in capsys.readouterr().err
    raw["model"]["skip"] = "gated"
    spec.write_text(tomli_w.dumps(raw))
    assert main(["sweep", str(spec), "--out", str(tmp_path / "run")]) == 2
    assert "need the MLP's layout" in capsys.readouterr().err


@pytest.mark.slow
def test_vmapped_conv_equals_the_models_trained_one_at_a_time(tmp_path):
    run = api.run(CONV, tmp_path / "grid")
    grid = run.metrics
    assert run.meta.compiles == 1
    for s2 in CONV["grid"]["sigma2"][::2]:  # the two ends
        alone = api.run(
            {**CONV, "grid": {**CONV["grid"], "sigma2": [s2]}}, tmp_path / f"alone{s2}"
        ).metrics
        mine = grid[grid["sigma2"] == s2]
        for col in ("kl", "loss", "mse", "kl_dim_0", "kl_dim_1"):
            np.testing.assert_allclose(
                sorted_rows(alone)[col], sorted_rows(mine)[col], rtol=1e-4, atol=1e-5
            )
    last = grid[grid["step"] == 20].sort_values("sigma2")
    assert (
        last["kl"].iloc[0] > last["kl"].iloc[-1]
    )  # it learns; large sigma^2 collapses


@pytest.mark.slow
def test_the_conv_vaes_models_in_sequence_on_each_device_train_as_vmapped():
    """The conv VAE's chunk runs each device's share of the models one after
    another (``Static.in_sequence``, shard_map + lax.map): on 4 devices with 8
    models, 6 of them real, and steps starting per model (as refilled slots do),
    parameters and metrics equal the vmapped chunk's."""
    import os
    import subprocess
    import sys

    script = """
import dataclasses, jax, numpy as np
from phasevae.data import load_for_model
from phasevae.engine.devices import Placement
from phasevae.engine.grid import grid_table, static_config
from phasevae.engine.step import Point, Trainer
from phasevae.spec import spec_from_dict
from tests.test_modules import CONV
assert len(jax.devices()) == 4
grid = {**CONV["grid"], "sigma2": [0.02, 0.05, 0.2, 0.5, 2.0, 5.0]}
spec = spec_from_dict({**CONV, "grid": grid})
d = load_for_model(spec)
static = static_config(spec, d.x.shape[1], d.image_shape)
assert Trainer(static).in_sequence  # on a CPU
place = Placement.create(6)
points = place.models(Point.from_table(grid_table(spec)))
x, ex = place.replicated(d.x), place.replicated(d.eval_x)
start = place.models(np.array([0, 3, 0, 7, 1, 0], np.int32))
out = []
for flag in (False, True):
    t = Trainer(dataclasses.replace(static, in_sequence=flag), place.shard)
    out.append(t.chunk(t.init(points), points, x, ex, start))
for a, b in zip(jax.tree.leaves(out[0]), jax.tree.leaves(out[1]), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
print("equal", len(jax.tree.leaves(out[0])))
"""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "equal" in proc.stdout


@pytest.mark.slow
def test_conv_shapes_and_decoder_init_scale_on_images_of_any_size():
    for shape in [(8, 8, 1), (7, 5, 3)]:
        m = ConvVAE(3, shape, (4, 8))
        x = jnp.ones(shape)
        params = m.init(jax.random.key(0), x, jnp.zeros(3))
        mu, logvar, xhat = m.apply(params, x, jnp.zeros(3))
        assert mu.shape == logvar.shape == (3,) and xhat.shape == shape
        assert params["params"]["out"]["kernel"].shape == (3, 3, 4, shape[2])


@pytest.mark.slow
def test_the_residual_decoder_example_runs(tmp_path, capsys, monkeypatch):
    """examples/residual_decoder.py: a user module passed to pv.run as an object,
    and the same module by spec string through its factory."""
    import runpy
    import sys

    from tests.test_api import ROOT

    monkeypatch.setattr(sys, "argv", ["residual_decoder.py", str(tmp_path / "r")])
    example = runpy.run_path(
        str(ROOT / "examples" / "residual_decoder.py"), {}, "__main__"
    )
    assert "residual decoder: sigma2_c =" in capsys.readouterr().out
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    spec = {
        **example["spec"],
        "model": {"latent_dim": 2, "kind": "module", "module": "residual_decoder:make"},
    }
    spec["train"] = {**spec["train"], "steps": 250}
    assert api.run(spec, tmp_path / "by_name").complete


@pytest.mark.slow
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("kernel", [2, 3, 4])
@pytest.mark.parametrize("shape", [(8, 8, 3), (7, 5, 2)])
def test_the_convolutions_gradients_are_lax_convs(shape, kernel, transpose):
    """A layer's value is lax.conv's (or lax.conv_transpose's); its gradients in
    the map and the kernel, by im2col and by overlap-add, are those of lax's own
    derivatives, per example and summed over a vmapped batch."""
    from jax import lax

    from phasevae.models.conv import DIMENSIONS, Conv

    xs = jnp.asarray(np.random.default_rng(0).standard_normal((3, *shape)), jnp.float32)
    layer = Conv(4, kernel, transpose)
    params = layer.init(jax.random.key(0), xs[0])["params"]
    bias = params["bias"] + 0.1
    lax_conv = lax.conv_transpose if transpose else lax.conv_general_dilated

    def theirs(x, w):
        return (
            lax_conv(x[None], w, (2, 2), "SAME", dimension_numbers=DIMENSIONS)[0]
            + bias[None, None]
        )

    def ours(x, w):
        return layer.apply({"params": {"kernel": w, "bias": bias}}, x)

    def loss(f, xs, w):  # nonlinear, so that the cotangent varies over the map
        return jnp.sum(jnp.sin(jax.vmap(f, (0, None))(xs, w)))

    w = params["kernel"]
    want = jax.vmap(theirs, (0, None))(xs, w)
    np.testing.assert_allclose(jax.vmap(ours, (0, None))(xs, w), want, atol=1e-5)
    want = jax.grad(lambda xs, w: loss(theirs, xs, w), (0, 1))(xs, w)
    got = jax.grad(lambda xs, w: loss(ours, xs, w), (0, 1))(xs, w)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-5)


@pytest.mark.slow
def test_a_conv_sweep_takes_slots_shards_merge_analysis_and_figures(tmp_path):
    spec = {**CONV, "grid": {**CONV["grid"], "sigma2": [0.02, 0.1, 0.5, 2.0]}}
    slots = api.run(
        {**spec, "train": {**spec["train"], "slots": 2}}, tmp_path / "slots"
    )
    assert slots.complete and len(slots.metrics) == 4 * 2
    cols = ["point_id", "step", "kl", "loss"]
    for i in range(2):
        api.run(spec, tmp_path / f"shard{i}", shard=(i, 2))
    api.merge([tmp_path / "shard0", tmp_path / "shard1"], tmp_path / "merged")
    merged = api.open_run(tmp_path / "merged")
    # two slots refilled in turn train each point as the shards (and a grid) do
    pd.testing.assert_frame_equal(
        sorted_rows(merged.metrics)[cols],
        sorted_rows(slots.metrics)[cols],
        check_exact=False,
        rtol=1e-5,
    )
    assert merged.analyze().transitions
    assert merged.plot(save="png")


@pytest.mark.slow
@pytest.mark.parametrize(
    "module, options",
    [
        ("os:system", {"command": "touch {marker}"}),
        ("subprocess:call", {"args": ["touch", "{marker}"]}),
        ("os:remove", {"path": "{victim}"}),
        ("builtins:dict", {}),
        ("tests.user_models:_Broken", {}),  # a Module class: named, allowed to build
    ],
)
def test_a_spec_may_call_only_modules_and_declared_factories(
    tmp_path, capsys, module, options
):
    """model.module = "os:system" with a command in model.options ran it (and
    --dry-run too); anything but a flax Module class or a factory declared with
    @phasevae.model_factory (or a phasevae.models entry point) is refused before
    it is called."""
    marker, victim = tmp_path / "marker", tmp_path / "victim"
    victim.write_text("mine")
    fill = {"marker": marker, "victim": victim}
    opts = {
        k: [a.format(**fill) for a in v] if isinstance(v, list) else v.format(**fill)
        for k, v in options.items()
    }
    raw = tiny_dict(model={"kind": "module", "module": module, "options": opts})
    del raw["model"]["encoder"], raw["model"]["decoder"]
    spec = tmp_path / "spec.toml"
    spec.write_text(tomli_w.dumps(raw))
    if module.startswith("tests."):  # a Module class is named, built and planned
        assert main(["sweep", str(spec), "--dry-run"]) == 0
        return
    for extra in (["--dry-run"], []):
        code = main(["sweep", str(spec), "--out", str(tmp_path / "run"), *extra])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err
        assert "neither a flax Module class nor a factory" in err
    assert not marker.exists() and victim.read_text() == "mine"


@pytest.mark.slow
def test_the_readers_never_import_the_module_a_spec_names(tmp_path, monkeypatch):
    """Only sweep (and locate, validate) import a spec's module; analyze, plot,
    report, status, theory and merge read the run without running its code."""
    import sys

    from tests.test_api import ROOT

    marker = tmp_path / "imported"
    (tmp_path / "spy_model.py").write_text(
        "import pathlib\n"
        f"pathlib.Path({str(marker)!r}).write_text('imported')\n"
        "from tests.user_models import make as _make\n"
        "import phasevae\n"
        "make = phasevae.model_factory(_make)\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(ROOT))
    raw = tiny_dict(model={"kind": "module", "module": "spy_model:make"})
    del raw["model"]["encoder"], raw["model"]["decoder"]
    raw["grid"]["sigma2"] = [0.5, 1.0, 2.0, 4.0, 8.0]
    spec = tmp_path / "spec.toml"
    spec.write_text(tomli_w.dumps(raw))
    run = tmp_path / "run"
    assert main(["sweep", str(spec), "--out", str(run)]) == 0
    assert marker.exists()  # the sweep imported it, as it must
    marker.unlink()
    monkeypatch.delitem(sys.modules, "spy_model")
    for argv in (
        ["analyze", str(run)],
        ["plot", str(run)],
        ["report", str(run)],
        ["status", str(run)],
        ["theory", str(run)],
        ["theory", str(spec)],
        ["merge", str(run), "--out", str(tmp_path / "merged")],
    ):
        assert main(argv) == 0, argv
        assert not marker.exists(), argv
