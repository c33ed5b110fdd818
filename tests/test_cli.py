import json
import os
import re
import subprocess
import sys
import tomllib

import numpy as np
import pandas as pd
import pytest
import tomli_w

from phasevae.cli import COMMANDS, main
from phasevae.engine import sweep as sweep_mod
from phasevae.spec import load_spec
from tests.conftest import tiny_dict


def write_spec(tmp_path, **sections):
    p = tmp_path / "tiny.toml"
    p.write_text(tomli_w.dumps(tiny_dict(**sections)))
    return p


def test_sweep_end_to_end_writes_a_well_formed_run_directory(tmp_path):
    spec = write_spec(tmp_path)
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "phasevae.cli", "sweep", str(spec), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "2/2 chunks" in proc.stderr  # progress
    assert "lambda_max" in proc.stdout and "kl_at_max_sigma2" in proc.stdout

    assert sorted(p.name for p in out.iterdir()) == [
        ".lock",  # the run-directory lock (flock), released when the process ends
        "checkpoints",
        "meta.json",
        "metrics.parquet",
        "metrics.parquet.sha256",  # digests of the file's bytes (store.py)
        "spec.toml",
    ]
    assert load_spec(out / "spec.toml") == load_spec(spec)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "complete" and meta["steps_done"] == 20
    assert meta["grid_size"] == 4 and meta["compiles"] == 1
    assert meta["spectrum"]["lambda_max"] == meta["spectrum"]["eigenvalues"][0]
    assert len(meta["spectrum"]["eigenvalues"]) == 4
    assert meta["wall_times"]["compile_s"] > 0 and meta["wall_times"]["train_s"] > 0
    assert meta["versions"]["jax"] and meta["devices"]
    assert meta["argv"][1:3] == ["sweep", str(spec)] and meta["host"]
    assert all(k.startswith(("XLA_", "JAX_")) for k in meta["environment"])
    assert set(meta["points"].values()) == {"ok"}

    df = pd.read_parquet(out / "metrics.parquet")
    assert len(df) == 4 * 2  # grid points x evaluations
    need = {"point_id", "sigma2", "beta", "learning_rate", "seed", "step", "elbo"}
    need |= {"recon", "kl", "kl_dim_0", "kl_dim_1", "var_dim_0", "var_dim_1"}
    need |= {"collapse_elbo", "diverged"}
    assert need <= set(df.columns)
    steps = df.groupby("point_id")["step"].apply(sorted)
    assert all(s == [10, 20] for s in steps) and len(steps) == 4
    assert np.isfinite(df[["elbo", "kl", "recon"]].to_numpy()).all()
    np.testing.assert_allclose(df["kl"], df["kl_dim_0"] + df["kl_dim_1"], rtol=1e-5)
    assert not list(out.rglob("*.tmp"))


@pytest.mark.parametrize(
    "args, words",
    [
        (["--set", "grid.sigma2=[-1.0]"], ["grid.sigma2", "> 0"]),
        (["--set", "data.source='array'", "--set", "data.path=nope.npy"], ["nope.npy"]),
        (["--set", "model.latent_dimm=2"], ["unknown key model.latent_dimm"]),
    ],
)
def test_bad_input_exits_2_with_a_message_and_writes_nothing(
    tmp_path, capsys, args, words
):
    out = tmp_path / "run"
    code = main(["sweep", str(write_spec(tmp_path)), "--out", str(out), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("phasevae: error:") and "Traceback" not in err
    for w in words:
        assert w in err
    assert not out.exists()


def test_nan_in_data_file_exits_2(tmp_path, capsys):
    a = np.ones((10, 3))
    a[3, 2] = np.nan
    np.save(tmp_path / "d.npy", a)
    spec = write_spec(
        tmp_path, data={"source": "array", "path": str(tmp_path / "d.npy")}
    )
    assert main(["sweep", str(spec), "--out", str(tmp_path / "run")]) == 2
    assert "NaN" in capsys.readouterr().err


def test_a_diverged_model_exits_2_after_finishing_the_others(tmp_path, capsys):
    spec = write_spec(tmp_path, grid={"learning_rate": [1e-2, 1e6]})
    out = tmp_path / "run"
    assert main(["sweep", str(spec), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "4 of 8 models diverged" in err
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "complete"
    assert list(meta["points"].values()).count("diverged") == 4
    # a scheduler can tell "complete, some diverged" from bad input
    again = ["sweep", str(spec), "--out", str(out), "--diverged-status", "3"]
    assert main(again) == 3
    assert "4 of 8 models diverged" in capsys.readouterr().err
    assert main([*again[:-1], "300"]) == 2


@pytest.mark.slow
def test_a_different_spec_in_an_existing_run_directory_is_refused(tmp_path, capsys):
    spec = write_spec(tmp_path)
    out = tmp_path / "run"
    assert main(["sweep", str(spec), "--out", str(out)]) == 0
    code = main(["sweep", str(spec), "--out", str(out), "--set", "grid.beta=[2.0]"])
    assert code == 2
    assert "different spec" in capsys.readouterr().err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("mine")
    assert main(["sweep", str(spec), "--out", str(tmp_path / "other")]) == 2


@pytest.mark.slow
def test_an_interrupted_sweep_resumes_to_the_uninterrupted_result(
    tmp_path, tiny_spec, monkeypatch
):
    spec = tiny_spec(train={"steps": 40, "eval_every": 10})
    full = sweep_mod.run_sweep(spec, tmp_path / "full").metrics

    monkeypatch.setattr(sweep_mod, "CHECKPOINT_SECONDS", 0.0)

    def stop_after_two(done, total, elapsed):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sweep_mod.run_sweep(spec, tmp_path / "cut", progress=stop_after_two)
    partial = pd.read_parquet(tmp_path / "cut" / "metrics.parquet")
    assert sorted(partial["step"].unique()) == [10, 20]

    resumed = sweep_mod.run_sweep(spec, tmp_path / "cut")
    assert resumed.meta.status == "complete"
    on_disk = pd.read_parquet(tmp_path / "cut" / "metrics.parquet")
    assert len(on_disk) == len(full)  # no duplicated or missing rows
    key = ["point_id", "step"]
    pd.testing.assert_frame_equal(
        on_disk.sort_values(key).reset_index(drop=True),
        full.sort_values(key).reset_index(drop=True),
    )
    # a finished run is not trained again
    again = sweep_mod.run_sweep(spec, tmp_path / "cut")
    assert len(again.metrics) == len(full)


@pytest.mark.slow
def test_a_longer_train_steps_extends_the_run_to_the_from_scratch_result(
    tmp_path, tiny_spec
):
    """Rerunning a finished run with a larger train.steps continues its models from
    the checkpoint; a point's noise and batches depend on its own step only, so the
    metrics equal those of a run trained to the new length from the start."""
    full = sweep_mod.run_sweep(tiny_spec(train={"steps": 40}), tmp_path / "full")
    short = tmp_path / "short"
    sweep_mod.run_sweep(tiny_spec(train={"steps": 20}), short)
    chunks = []
    extended = sweep_mod.run_sweep(
        tiny_spec(train={"steps": 40}), short, progress=lambda d, t, e: chunks.append(d)
    )
    assert chunks == [3, 4]  # only the new chunks were trained
    assert extended.meta.status == "complete" and extended.meta.steps == 40
    on_disk = pd.read_parquet(short / "metrics.parquet")
    key = ["point_id", "step"]
    pd.testing.assert_frame_equal(
        on_disk.sort_values(key).reset_index(drop=True),
        full.metrics.sort_values(key).reset_index(drop=True),
    )
    assert load_spec(short / "spec.toml").train.steps == 40
    # shorter, or anything else changed, is another run
    with pytest.raises(sweep_mod.RunDirError, match="different spec"):
        sweep_mod.run_sweep(tiny_spec(train={"steps": 20}), short)
    with pytest.raises(sweep_mod.RunDirError, match="larger train.steps alone"):
        sweep_mod.run_sweep(tiny_spec(train={"steps": 60, "batch_size": 8}), short)


def _sweep_cmd(spec, out):
    return [sys.executable, "-m", "phasevae.cli", "sweep", str(spec), "--out", str(out)]


def _wait_for_save(out, proc, timeout=120.0):
    """Until the run has saved once: metrics, checkpoint, then meta.json, which is
    written last, so its presence means the whole save is on disk."""
    import time

    t0 = time.time()
    while time.time() - t0 < timeout and proc.poll() is None:
        if (out / "meta.json").exists():
            return
        time.sleep(0.05)
    raise AssertionError("the sweep saved nothing in time")


@pytest.mark.slow
def test_ctrl_c_at_random_moments_resumes_to_the_uninterrupted_result(tmp_path):
    """Ctrl-C (once, or twice in quick succession) at random moments of a run that
    saves after every chunk, so that most land during an asynchronous save: never a
    traceback, exit 130, and the rerun's metrics equal an uninterrupted run's."""
    import random
    import signal
    import time

    spec = write_spec(tmp_path, train={"steps": 300, "eval_every": 10})
    full = tmp_path / "full"
    assert subprocess.run(_sweep_cmd(spec, full), capture_output=True).returncode == 0
    want = pd.read_parquet(full / "metrics.parquet").sort_values(["point_id", "step"])
    rng = random.Random(7)
    interrupted = 0
    for trial in range(3):
        cut = tmp_path / f"cut{trial}"
        cmd = _sweep_cmd(spec, cut) + ["--checkpoint-every", "0"]
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        _wait_for_save(cut, proc)
        time.sleep(rng.uniform(0.0, 2.0))
        signals = rng.choice([1, 2])
        for _ in range(signals):
            proc.send_signal(signal.SIGINT)
            time.sleep(rng.uniform(0.0, 0.2))
        _, err = proc.communicate(timeout=120)
        assert "Traceback" not in err, (trial, signals, err[-3000:])
        assert proc.returncode in (0, 130), (trial, signals, err[-3000:])
        interrupted += proc.returncode == 130
        again = subprocess.run(_sweep_cmd(spec, cut), capture_output=True, text=True)
        assert again.returncode == 0, again.stderr
        got = pd.read_parquet(cut / "metrics.parquet").sort_values(["point_id", "step"])
        pd.testing.assert_frame_equal(
            got.reset_index(drop=True), want.reset_index(drop=True), check_exact=True
        )
    assert interrupted >= 2  # the moments fell inside the runs


CONV = {  # the convolutional VAE on 8x8 digits (issue 15)
    "data": {"source": "digits", "eval_samples": 128},
    "model": {"kind": "conv", "latent_dim": 2, "channels": [4, 8]},
}


# SIGKILL on the conv VAE, SIGTERM on the MLP: the store and the loop do not depend on
# the model, so each signal is tested once (the suite's time)
@pytest.mark.slow
@pytest.mark.parametrize(
    "how, model",
    [
        ("SIGTERM", "mlp"),
        ("SIGINT", "mlp"),
        ("SIGINT twice", "mlp"),
        ("SIGKILL", "conv"),
    ],
)
def test_a_killed_sweep_resumes_to_the_uninterrupted_result(tmp_path, how, model):
    import signal
    import time

    steps = 200 if model == "conv" else 400
    spec = write_spec(
        tmp_path,
        train={"steps": steps, "eval_every": 10},
        **(CONV if model == "conv" else {}),
    )
    if model == "conv":  # the MLP's widths do not apply
        raw = tomllib.loads(spec.read_text())
        del raw["model"]["encoder"], raw["model"]["decoder"]
        spec.write_text(tomli_w.dumps(raw))
    full = tmp_path / "full"
    assert subprocess.run(_sweep_cmd(spec, full), capture_output=True).returncode == 0

    cut = tmp_path / "cut"
    # with Ctrl-C, the default cadence: the first save comes after the first chunk
    every = [] if how.startswith("SIGINT") else ["--checkpoint-every", "0"]
    cmd = _sweep_cmd(spec, cut) + every
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    _wait_for_save(cut, proc)
    proc.send_signal(getattr(signal, how.split()[0]))
    if how == "SIGINT twice":  # the second at once: stop now, the last save intact
        time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    if how in ("SIGTERM", "SIGINT"):  # Ctrl-C saves as SIGTERM does (exit 130)
        status = 128 + getattr(signal, how)
        assert proc.returncode == status and f"stopped by {how} after step" in err
        assert "Traceback" not in err
    elif how == "SIGINT twice":
        assert proc.returncode == 130 and "Traceback" not in err, err
    else:
        assert proc.returncode == -signal.SIGKILL
    meta = json.loads((cut / "meta.json").read_text())
    assert meta["status"] == "running" and 0 < meta["steps_done"] < steps

    again = subprocess.run(_sweep_cmd(spec, cut), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    key = ["point_id", "step"]
    a = (
        pd.read_parquet(full / "metrics.parquet")
        .sort_values(key)
        .reset_index(drop=True)
    )
    b = pd.read_parquet(cut / "metrics.parquet").sort_values(key).reset_index(drop=True)
    assert len(b) == len(a) == 4 * steps // 10  # no duplicated or missing rows
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.slow
def test_a_second_process_on_the_same_run_directory_is_refused(tmp_path):
    from phasevae.store import RunDir

    spec = write_spec(tmp_path)
    out = tmp_path / "run"
    with RunDir(out).lock():  # as if another sweep were running
        proc = subprocess.run(_sweep_cmd(spec, out), capture_output=True, text=True)
    assert proc.returncode == 2
    assert "in use by another phasevae process" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_status_reports_progress(tmp_path, capsys, tiny_spec):
    from phasevae.engine.sweep import run_sweep

    run_sweep(tiny_spec(), tmp_path / "run")
    assert main(["status", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "(complete)" in out and "done 4, pending 0, diverged 0" in out
    assert "steps 20 of 20" in out
    assert main(["status", str(tmp_path / "nope")]) == 2


@pytest.mark.slow
def test_dry_run_plans_without_writing(tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(["sweep", str(write_spec(tmp_path)), "--out", str(out), "--dry-run"]) == 0
    )
    text = capsys.readouterr().out
    assert "grid: 4 points in 1 static group(s)" in text
    assert "memory per device" in text and "Nothing was written" in text
    assert not out.exists()
    # an adaptive sweep compiles per-slot start steps: planned as it would train
    slots = write_spec(tmp_path, train={"slots": 3, "retire": True})
    assert main(["sweep", str(slots), "--out", str(out), "--dry-run"]) == 0
    assert "grid: 4 points" in capsys.readouterr().out and not out.exists()


@pytest.mark.slow
def test_a_dry_run_times_two_short_probes_not_a_chunk(tmp_path, capsys):
    """With eval_every longer than the probes, the plan times chunks of 4 and 20
    steps and extrapolates: eval_s + eval_every x step_s per chunk."""
    from phasevae import api
    from phasevae.engine.devices import PROBE_STEPS

    spec = load_spec(write_spec(tmp_path, train={"steps": 400, "eval_every": 200}))
    plan = api.dry_run(spec)
    assert plan["step_s"] > 0 and plan["eval_s"] >= 0
    assert plan["chunk_s"] == pytest.approx(plan["eval_s"] + 200 * plan["step_s"])
    assert plan["estimated_train_s"] == pytest.approx(2 * plan["chunk_s"])
    assert 200 > max(PROBE_STEPS)
    # a chunk no longer than the probes is timed itself
    short = load_spec(write_spec(tmp_path, train={"steps": 40, "eval_every": 20}))
    plan = api.dry_run(short)
    assert plan["step_s"] is None and plan["chunk_s"] > 0


@pytest.mark.slow
def test_the_compile_cache_is_hit_on_a_second_run(tmp_path):
    """Two runs of one spec in fresh processes: the first compiles and fills the
    cache folder, the second loads every program from it (meta.json's counts)."""
    env = {
        **os.environ,
        "PHASEVAE_COMPILE_CACHE": "1",
        "PHASEVAE_CACHE_DIR": str(tmp_path / "cache"),
    }
    spec, counts = write_spec(tmp_path), []
    for name in ("first", "second"):
        proc = subprocess.run(
            _sweep_cmd(spec, tmp_path / name), env=env, capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr
        meta = json.loads((tmp_path / name / "meta.json").read_text())
        counts.append(meta["compile_cache"])
    first, second = counts
    assert first["dir"] == str(tmp_path / "cache") and any(
        (tmp_path / "cache").iterdir()
    )
    assert first["hits"] == 0 and first["misses"] > 0
    assert second["hits"] == first["misses"] and second["misses"] == 0
    assert f"({second['hits']} of {second['hits']} programs from the compile" in (
        proc.stdout
    )
    # off: no folder, no lookups
    env["PHASEVAE_COMPILE_CACHE"] = "0"
    proc = subprocess.run(
        _sweep_cmd(spec, tmp_path / "off"), env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((tmp_path / "off" / "meta.json").read_text())
    assert meta["compile_cache"] == {"dir": None, "hits": 0, "misses": 0}


def test_a_sweep_too_large_for_the_device_is_refused_before_training(
    tmp_path, capsys, monkeypatch
):
    import phasevae.engine.devices

    monkeypatch.setattr(phasevae.engine.devices, "device_memory", lambda place: 1000)
    out = tmp_path / "run"
    assert main(["sweep", str(write_spec(tmp_path)), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "GiB per device" in err and "--shard I/" in err
    assert not out.exists()


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--out", ""], "--out is empty"),
        (["--out", "{file}"], "not a directory"),
        (["--out", "{file}/run"], "is a file, not a directory"),
        (["--checkpoint-every", "-1"], ">= 0"),
        (["--checkpoint-every", "nan"], ">= 0"),
        (["--checkpoint-every", "inf"], ">= 0"),
        (["--set", "data.path=\udcff.npy", "--set", "data.source='array'"], "UTF-8"),
    ],
)
def test_bad_sweep_arguments_are_refused_before_any_work(
    tmp_path, capsys, monkeypatch, extra, words
):
    def no_data(*_):
        raise AssertionError("data loaded before the arguments were checked")

    monkeypatch.setattr(sweep_mod, "load_for_model", no_data)
    (tmp_path / "file").write_text("x")
    extra = [e.replace("{file}", str(tmp_path / "file")) for e in extra]
    if "--out" not in extra:
        extra += ["--out", str(tmp_path / "run")]
    assert main(["sweep", str(write_spec(tmp_path)), *extra]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_failed_write_is_a_message_and_the_run_resumes(tmp_path, capsys, monkeypatch):
    import errno

    import phasevae.safeio as safeio

    spec, out = write_spec(tmp_path), tmp_path / "run"
    real = safeio.atomic_write
    calls = []

    def disk_full(path, write):
        # the checkpoint's digest, written by the thread that seals a save once
        # orbax has written it: the error must reach the command all the same
        calls.append(path.name)
        if path.parent.name == "checkpoints":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, write)

    monkeypatch.setattr(safeio, "atomic_write", disk_full)
    assert main(["sweep", str(spec), "--out", str(out), "--checkpoint-every", "0"]) == 2
    err = capsys.readouterr().err
    assert "no space left on the device" in err.lower() and "rerun to resume" in err
    assert "Traceback" not in err
    monkeypatch.setattr(safeio, "atomic_write", real)
    assert main(["sweep", str(spec), "--out", str(out)]) == 0
    assert json.loads((out / "meta.json").read_text())["status"] == "complete"


def test_sigterm_during_start_up_is_a_message(tmp_path):
    import signal
    import time

    # the handler is in place once the command's module is imported (before that a
    # SIGTERM ends the process as Python's default does, with nothing written);
    # importing JAX and compiling take seconds more. On a loaded machine that import
    # alone took over 1 s, so the wait is measured here, under the same load.
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import phasevae.cli"], check=True)
    imported = time.perf_counter() - t0
    proc = subprocess.Popen(
        _sweep_cmd(write_spec(tmp_path), tmp_path / "run"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(max(1.0, 2 * imported))
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "SIGTERM" in err and "Traceback" not in err


@pytest.mark.slow
def test_analyze_fits_the_curves_it_can_when_one_diverged_entirely(tmp_path, capsys):
    grid = {"sigma2": [0.5, 1.0, 2.0, 4.0, 8.0], "beta": [1.0]}
    grid["learning_rate"] = [1e-2, 1e6]
    spec, out = write_spec(tmp_path, grid=grid), tmp_path / "run"
    assert main(["sweep", str(spec), "--out", str(out)]) == 2  # 5 models diverged
    capsys.readouterr()
    assert main(["analyze", str(out)]) == 0
    text = capsys.readouterr().out
    assert "not fitted (beta=1, learning_rate=1e+06" in text
    doc = json.loads((out / "analysis.json").read_text())
    assert [t["learning_rate"] for t in doc["transitions"]] == [1e-2]
    assert doc["skipped"][0]["learning_rate"] == 1e6


@pytest.mark.slow
def test_a_refined_sweep_refines_the_curves_that_did_not_diverge(tmp_path, capsys):
    """A curve whose every model diverged is left out of the refinement round; the
    other curve gets its new sigma^2 and the run completes."""
    grid = {"sigma2": {"min": 0.1, "max": 40.0, "num": 6, "refine": {"rounds": 1}}}
    grid |= {"beta": [1.0], "learning_rate": [1e-2, 1e6]}
    spec = write_spec(tmp_path, train={"steps": 30}, grid=grid)
    out = tmp_path / "run"
    assert main(["sweep", str(spec), "--out", str(out)]) == 2  # 6 models diverged
    assert "6 of " in capsys.readouterr().err
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "complete" and meta["rounds"] == 1
    added = pd.read_parquet(out / "metrics.parquet").query("round == 1")
    assert len(added) and set(added["learning_rate"]) == {1e-2}


def test_a_model_too_large_for_memory_is_refused_before_allocating(tmp_path, capsys):
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    spec = write_spec(tmp_path, model={"encoder": [100_000_000]})
    assert main(["sweep", str(spec), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "estimated from the spec before allocating anything" in err
    assert "GiB per device" in err and "Traceback" not in err
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 500 * 1024
    assert not (tmp_path / "run").exists()


def test_version_names_the_installed_build(capsys):
    from importlib import metadata

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"phasevae {metadata.version('phasevae')}"


@pytest.mark.slow
def test_meta_records_the_commit_and_the_installed_packages(tmp_path):
    spec = write_spec(tmp_path)
    assert main(["sweep", str(spec), "--out", str(tmp_path / "run")]) == 0
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert meta["packages"]["jax"] == meta["versions"]["jax"]
    assert re.fullmatch(r"[0-9a-f]{7,40}", meta["git_revision"])


def test_an_installed_copy_without_git_names_its_commit_from_its_version(monkeypatch):
    from phasevae.engine import loop

    def no_git(*a, **k):
        raise OSError("no git here")

    monkeypatch.setattr(loop.subprocess, "run", no_git)
    monkeypatch.setattr(loop.metadata, "version", lambda _: "0.1.1.dev9+gab12cd3")
    assert loop._git_revision() == "ab12cd3"
    monkeypatch.setattr(loop.metadata, "version", lambda _: "0.2.0")  # a release
    assert loop._git_revision() is None


def test_sigterm_stops_a_bench_at_once(tmp_path):
    import signal
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "phasevae.cli", "bench", "--models", "64"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(3.0)  # importing JAX, compiling
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-2000:]
    assert "bench stopped by SIGTERM" in err and "Traceback" not in err


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_help_shows_an_example(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "example" in out and f"phasevae {command}" in out.split("example")[-1]


def test_progress_on_a_terminal_in_a_log_and_quiet():
    import io

    from rich.console import Console

    from phasevae.cli.progress import Progress

    frame = pd.DataFrame(
        {
            "beta": [1.0, 1.0, 2.0],
            "sigma2": [1.0, 10.0, 10.0],
            "kl": [1.0, 0.001, 0.0],
            "diverged": [False, False, True],
        }
    )
    term = io.StringIO()
    show = Progress(console=Console(file=term, force_terminal=True, width=160))
    show(0, 3, 0.0)
    show.chunk(frame, {})
    show(3, 3, 2.0)
    out = term.getvalue()
    assert "3/3" in out and "ETA" in out
    assert "3 evaluated, 1 diverged, beta 1: collapsed from 10" in out
    log = io.StringIO()  # not a terminal: one line at the end
    show = Progress(console=Console(file=log))
    show(1, 2, 1.0)
    assert log.getvalue() == ""
    show(2, 2, 2.5)
    assert log.getvalue() == "trained 2/2 chunks in 2.5 s\n"
    quiet = io.StringIO()
    show = Progress(quiet=True, console=Console(file=quiet, force_terminal=True))
    show(0, 2, 0.0)
    show(2, 2, 1.0)
    assert quiet.getvalue() == ""


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path):
    """`phasevae theory SPEC | head -1`: stdout's pipe closes before the command
    writes. It ends with SIGPIPE's status (128 + 13) and no traceback; before, the
    BrokenPipeError came out as one."""
    spec = write_spec(tmp_path)
    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written
    proc = subprocess.run(
        [sys.executable, "-m", "phasevae.cli", "theory", str(spec)],
        stdout=write,
        stderr=subprocess.PIPE,
        text=True,
        timeout=300,
    )
    os.close(write)
    assert proc.returncode == 141, proc.stderr
    assert proc.stderr == ""


def test_a_file_given_as_a_run_directory_is_named_as_such(tmp_path, capsys):
    spec = write_spec(tmp_path)
    for command in ("analyze", "plot", "report"):
        assert main([command, str(spec)]) == 2
        assert f"run directory {spec} is not a directory" in capsys.readouterr().err
    assert main(["analyze", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_run_refuses_data_other_than_its_own(tmp_path, capsys):
    """A finished run whose CSV was replaced printed the old results; an interrupted
    one finished on the new data, mixing two data sets. The data's fingerprint is
    recorded when a run starts and compared whenever it is reused."""
    rng = np.random.default_rng(0)
    path = tmp_path / "x.csv"
    pd.DataFrame(rng.normal(size=(300, 4)) * [2.0, 1.0, 0.5, 0.2]).to_csv(
        path, index=False
    )
    raw = tiny_dict(data={"source": "array", "path": str(path), "normalize": "none"})
    del raw["data"]["eigenvalues"], raw["data"]["samples"]
    spec = tmp_path / "s.toml"
    spec.write_text(tomli_w.dumps(raw))
    out = tmp_path / "run"
    assert main(["sweep", str(spec), "--out", str(out)]) == 0
    assert main(["status", str(out)]) == 0
    assert "data: sha256 " in capsys.readouterr().out
    pd.DataFrame(rng.normal(size=(300, 4)) * 3.0).to_csv(path, index=False)
    for extra in ([], ["--set", "train.steps=40"]):  # rerun, extend
        assert main(["sweep", str(spec), "--out", str(out), *extra]) == 2
        err = capsys.readouterr().err
        assert "trained on other data" in err and str(path) in err


def test_status_lists_the_runs_and_tells_an_interrupted_run(
    tmp_path, capsys, monkeypatch
):
    """``phasevae status`` alone lists runs/; a run whose meta says running while no
    process holds its lock is interrupted (no ETA), and a held one is running."""
    import shutil
    from pathlib import Path

    from phasevae.store import RunDir

    monkeypatch.chdir(tmp_path)
    assert main(["status"]) == 0
    assert "no runs under runs/" in capsys.readouterr().out
    committed = Path(__file__).parent.parent / "results/default/default"
    shutil.copytree(committed, tmp_path / "runs/done")
    shutil.copytree(committed, tmp_path / "runs/cut")
    run = RunDir(tmp_path / "runs/cut")
    meta = run.meta()
    run.write_meta(meta.replace(status="running", steps_done=1000))
    assert main(["status"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["run", "state", "points", "steps", "last", "write"]
    assert lines[1].split()[:6] == [
        "runs/cut",
        "interrupted",
        "48",
        "1000",
        "of",
        "3000",
    ]
    assert lines[2].split()[:3] == ["runs/done", "complete", "48"]
    assert main(["status", "runs/cut"]) == 0
    out = capsys.readouterr().out
    assert "(interrupted)" in out and "ETA" not in out
    with run.lock():  # as while a sweep trains it
        assert main(["status", "runs/cut"]) == 0
        assert "(running)" in capsys.readouterr().out


def test_spec_prints_the_resolved_spec(tmp_path, capsys):
    from phasevae.spec import load_spec

    argv = ["spec", str(write_spec(tmp_path)), "--set", "grid.beta=[0.5, 3.0]"]
    assert main(argv) == 0
    printed = tmp_path / "printed.toml"
    printed.write_text(capsys.readouterr().out)
    assert load_spec(printed) == load_spec(
        tmp_path / "tiny.toml", ["grid.beta=[0.5, 3.0]"]
    )
    assert main(["spec", str(tmp_path / "tiny.toml"), "--set", "train.stepz=1"]) == 2


@pytest.mark.slow
def test_a_rerun_says_whether_it_resumes_extends_or_finds_the_run_complete(
    tmp_path, capsys
):
    from phasevae.store import RunDir

    spec, out = write_spec(tmp_path), tmp_path / "run"
    argv = ["sweep", str(spec), "--out", str(out)]
    assert main(argv) == 0
    assert "resuming" not in capsys.readouterr().err
    assert main(argv) == 0
    assert "is complete: nothing to train" in capsys.readouterr().err
    run = RunDir(out)
    run.write_meta(run.meta().replace(status="running", steps_done=10))
    assert main(argv) == 0
    assert "from its last save, step 10 of 20" in capsys.readouterr().err
    assert main([*argv, "--set", "train.steps=30"]) == 0
    assert f"extending {out} from 20 to 30 steps" in capsys.readouterr().err
