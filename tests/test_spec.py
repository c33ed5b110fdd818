import dataclasses
from pathlib import Path

import numpy as np
import pytest

from phasevae.spec import (
    Range,
    SpecError,
    default_spec_path,
    load_spec,
    spec_from_dict,
    spec_to_toml,
)
from tests.conftest import tiny_dict


def write(tmp_path, text):
    p = tmp_path / "s.toml"
    p.write_text(text)
    return p


def test_default_spec_loads_and_fills_every_default():
    spec = load_spec()
    assert default_spec_path().name == "default.toml"
    assert spec.data.source == "synthetic"
    assert spec.model.latent_dim >= 2
    assert spec.train.shared_batches is True  # filled from the dataclass default
    axes = spec.axes()
    assert len(axes["beta"]) > 1
    assert axes["learning_rate"] == (spec.train.learning_rate,)


def test_resolved_spec_round_trips_through_toml(tmp_path):
    spec = load_spec(None, ["grid.sigma2.num=5", "grid.seeds=[0, 1]"])
    again = load_spec(write(tmp_path, spec_to_toml(spec)))
    assert again == spec


def test_range_values():
    assert Range(1.0, 100.0, 3, "log").values() == pytest.approx((1.0, 10.0, 100.0))
    assert Range(0.0, 1.0, 3, "linear").values() == pytest.approx((0.0, 0.5, 1.0))
    assert Range(2.0, 2.0, 1).values() == (2.0,)


def test_overrides(tmp_path):
    spec = load_spec(
        None,
        [
            "grid.beta=[0.5, 1.0]",
            "grid.sigma2.num=32",
            "data.path=x.npy",  # bare string: the shell ate the quotes
            "train.steps=500",
            "train.eval_every=100",
        ],
    )
    assert spec.grid.beta == (0.5, 1.0)
    assert spec.grid.sigma2.num == 32
    assert spec.data.path == str(Path.cwd() / "x.npy")  # --set: where it was typed
    assert spec.train.steps == 500


def test_a_relative_data_path_in_a_spec_file_is_beside_the_file(tmp_path, monkeypatch):
    """A path written in the spec is found from any working directory; a missing
    file's message shows the absolute path tried."""
    from phasevae.data import DataError, load_dataset

    folder = tmp_path / "project"
    folder.mkdir()
    np.save(folder / "x.npy", np.random.default_rng(0).normal(size=(64, 3)))
    (folder / "s.toml").write_text('[data]\nsource = "array"\npath = "x.npy"\n')
    monkeypatch.chdir(tmp_path)
    spec = load_spec(folder / "s.toml")
    assert spec.data.path == str(folder / "x.npy")
    assert load_dataset(spec.data).x.shape == (64, 3)
    with pytest.raises(DataError, match=f"tried {tmp_path / 'y.npy'}"):
        load_dataset(dataclasses.replace(spec.data, path="y.npy"))


@pytest.mark.parametrize(
    "override, words",
    [
        ("grid.sigma2=[1.0, -2.0]", ["grid.sigma2", "-2.0", "> 0"]),
        # found by fuzzing: an IndexError in numpy, a run past 400 s, a
        # "tuple index out of range", 1,000 slots trained for 3 points
        (
            "grid.sigma2={min=1.0, max=2.0, num=4, refine={rounds="
            "9223372036854775807, points=9223372036854775807}}",
            ["refine.rounds", "from 1 to 100"],
        ),
        (
            "grid.sigma2={min=1.0, max=2.0, num=4, refine={rounds=1, "
            "points=100000000}}",
            ["refine.points", "from 1 to 100,000"],
        ),
        ("train.slots=1000", ["train.slots = 1000 exceeds the grid's"]),
        ("grid.sigma2=[0.0]", ["grid.sigma2", "> 0"]),
        ("grid.beta=[-0.5]", ["grid.beta", ">= 0"]),
        ("grid.sigma2.num=0", ["grid.sigma2.num", "in [1,"]),
        ("data.seed=-1", ["data.seed", ">= 0"]),
        ("model.encoder=" + str([8] * 200), ["model.encoder", "at most 64 hidden"]),
        ("train.seed=-1", ["train.seed", ">= 0"]),
        ("train.steps=" + "9" * 48, ["train.steps", "below 2^31"]),
        ("grid.beta=[1e400]", ["grid.beta", "finite"]),
        ("grid.kl_warmup_steps=[2.5]", ["kl_warmup_steps", "whole numbers"]),
        ("grid.seeds=[0, 0]", ["grid.seeds", "twice"]),
        ("grid.seeds=[-1]", ["grid.seeds", "[0, 2^32)"]),
        ("grid.beta=[1.0, 1.0]", ["grid.beta", "twice"]),
        ("grid.learning_rate={min=0.1, max=1.0, num=10000000}", ["num", "100,000"]),
        (
            "grid.learning_rate={min=0.1, max=1.0, num=100000}",
            ["4,800,000 points", "at most 1,000,000"],
        ),
        ("grid.beta=" + "[" * 5000 + "]" * 5000, ["nested too deeply"]),
        ("model.latent_dim=0", ["model.latent_dim", ">= 1"]),
        ("train.steps=0", ["train.steps", ">= 1"]),
        ("train.learning_rate=0.0", ["train.learning_rate", "> 0"]),
        ("train.steps=1001", ["multiple of train.eval_every"]),
        ("train.optimizer='rmsprop'", ["train.optimizer", "'adam'"]),
        ("data.source='mnist'", ["data.source", "'synthetic'"]),
        ("data.normalize='whiten'", ["data.normalize", "'standardize'"]),
        ("train.steps=1.5", ["train.steps", "integer"]),
        ("train.batch_size=true", ["train.batch_size", "integer"]),
        ("model.encoder=[8, 0]", ["model.encoder", ">= 1"]),
        ("model.latent_dim=9", ["latent_dim", "exceeds"]),
        ("grid.sigma2={min=-1, max=2, num=3}", ["log-scale", "min > 0"]),
        ("grid.sigma2={min=3, max=2, num=3}", ["max must be >="]),
        ("grid.sigma2={min=1, max=2}", ["min, max and num"]),
        ("grid.beta=[]", ["grid.beta", "empty"]),
        ("grid.seeds=[0.5]", ["grid.seeds", "integers"]),
        ("grid.beta=[nan]", ["grid.beta", "finite"]),
        # values float32 training would turn into 0 or inf, silently
        ("grid.beta=[1e-300]", ["grid.beta", "would be 0 in float32"]),
        ("grid.sigma2=[1.0, 1e39]", ["grid.sigma2", "would be inf in float32"]),
        ("grid.kl_warmup_steps=[" + "1" + "0" * 40 + "]", ["would be inf"]),
        ("train.learning_rate=1e-45", ["train.learning_rate", "would be 0"]),
        ("train.stepz=10", ["unknown key train.stepz", "allowed in [train]", "steps"]),
        ("optim.lr=1", ["unknown key", "SECTION.NAME"]),
        ("data.source.x=1", ["not a table"]),
        ("grid.beta", ["KEY=VALUE"]),
    ],
)
def test_impossible_values_are_rejected_with_key_and_rule(override, words):
    with pytest.raises(SpecError) as err:
        load_spec(None, [override])
    for w in words:
        assert w in str(err.value), str(err.value)


def test_a_conv_vae_without_layers_is_refused():
    """model.channels = [] was a "tuple index out of range" from the model."""
    from phasevae.spec import spec_from_dict

    with pytest.raises(SpecError, match="needs at least one layer"):
        spec_from_dict({"model": {"kind": "conv", "channels": []}})


def test_long_values_are_not_echoed_whole():
    with pytest.raises(SpecError) as err:
        load_spec(None, ["train.optimizer='" + "x" * 100_000 + "'"])
    assert len(str(err.value)) < 500 and "100,002 characters" in str(err.value)


def test_a_spec_that_is_not_a_small_regular_file_is_refused(tmp_path):
    import os

    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)  # opening it would block forever
    link = tmp_path / "zero.toml"
    link.symlink_to("/dev/zero")
    big = tmp_path / "big.toml"
    big.write_text("# " + "x" * (2 * 2**20))
    cases = {
        fifo: "FIFO",
        link: "character device",
        tmp_path: "directory",
        big: "at most",
        tmp_path / "nope.toml": "does not exist",
    }
    for path, words in cases.items():
        with pytest.raises(SpecError, match=words):
            load_spec(path)
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"\xff\xfe[grid]")
    with pytest.raises(SpecError, match="not UTF-8"):
        load_spec(bad)


def test_unknown_key_in_file_names_the_file(tmp_path):
    p = write(tmp_path, "[model]\nlatent_dimm = 3\n")
    with pytest.raises(SpecError, match=r"s\.toml: unknown key model\.latent_dimm"):
        load_spec(p)


def test_unknown_section_and_bad_toml_and_missing_file(tmp_path):
    with pytest.raises(SpecError, match=r"unknown section \[optim\]"):
        load_spec(write(tmp_path, "[optim]\nlr = 1\n"))
    with pytest.raises(SpecError, match="not valid TOML"):
        load_spec(write(tmp_path, "[model\n"))
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "nope.toml")


def test_array_source_needs_a_path():
    with pytest.raises(SpecError, match="needs data.path"):
        spec_from_dict(tiny_dict(data={"source": "array"}))
