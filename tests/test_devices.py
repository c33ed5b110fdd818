"""The models axis sharded over several (simulated CPU) devices."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from phasevae.engine.sweep import run_sweep
from phasevae.spec import spec_from_dict
from tests.conftest import tiny_dict

GRID = {"sigma2": [0.5, 2.0, 8.0], "beta": [0.5, 1.0]}  # 6 points: padded to 8


@pytest.mark.slow
def test_four_devices_give_the_metrics_of_one(tmp_path, tiny_spec):
    one = run_sweep(tiny_spec(grid=GRID), tmp_path / "one").metrics
    script = (
        "import sys, jax; from phasevae.spec import spec_from_dict;"
        "from phasevae.engine.sweep import run_sweep;"
        "from tests.conftest import tiny_dict;"
        "assert len(jax.local_devices()) == 4;"
        f"r = run_sweep(spec_from_dict(tiny_dict(grid={GRID!r})), sys.argv[1]);"
        "assert r.meta.grid_size == 6 and len(r.meta.devices) == 4"
    )
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "four")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    four = pd.read_parquet(tmp_path / "four" / "metrics.parquet")
    assert len(four) == len(one) == 6 * 2  # the padding never reaches the results
    key = ["point_id", "step"]
    a = one.sort_values(key).reset_index(drop=True)
    b = four.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_two_processes_give_the_metrics_of_one(tmp_path, tiny_spec):
    """Multi-process JAX on the CPU: gloo collectives on a free loopback port."""
    import socket

    import tomli_w

    from tests.conftest import tiny_dict

    spec = tmp_path / "s.toml"
    spec.write_text(tomli_w.dumps(tiny_dict(grid=GRID)))
    one = run_sweep(tiny_spec(grid=GRID), tmp_path / "one").metrics
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "two"
    base = [sys.executable, "-m", "phasevae.cli", "sweep", str(spec), "--out", str(out)]
    base += ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"]
    procs = [
        subprocess.Popen(
            [*base, "--process-id", str(i)],
            env=dict(os.environ, JAX_NUM_CPU_DEVICES="1"),  # one device per process
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in (1, 0)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    two = pd.read_parquet(out / "metrics.parquet")
    key = ["point_id", "step"]
    a = one.sort_values(key).reset_index(drop=True)
    b = two.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-5, atol=1e-6)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["processes"] == 2 and len(meta["devices"]) == 2


@pytest.mark.slow
def test_a_run_checkpointed_on_eight_devices_resumes_on_one(tmp_path, tiny_spec):
    """The checkpoint holds the models without the padding and without the device
    layout: a run stopped on 8 devices finishes on 1 with the same results."""
    spec = tiny_spec(grid=GRID, train={"steps": 40})
    script = (
        "import sys, jax, phasevae as pv; from tests.conftest import tiny_dict\n"
        "assert len(jax.devices()) == 8\n"
        "class Stop(Exception): pass\n"
        "def stop(frame, meta): raise Stop\n"
        "try:\n"
        f"    pv.run(tiny_dict(grid={GRID!r}, train={{'steps': 40}}), sys.argv[1],\n"
        "           on_chunk=stop, checkpoint_seconds=0)\n"
        "except Stop: pass\n"
    )
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "run")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert meta["steps_done"] == 10 and len(meta["devices"]) == 8
    resumed = run_sweep(spec, tmp_path / "run")
    assert len(resumed.meta.devices) == 1 and resumed.meta.status == "complete"
    alone = run_sweep(spec, tmp_path / "alone").metrics
    key = ["point_id", "step"]
    a = alone.sort_values(key).reset_index(drop=True)
    b = resumed.metrics.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-5, atol=1e-6)


def test_a_scanned_gru_turns_the_cpu_scheduler_off_and_nothing_else(monkeypatch):
    from jax._src import xla_bridge

    from phasevae.engine import devices

    monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: False)
    monkeypatch.setenv("JAX_NUM_CPU_DEVICES", "1")  # no device split here
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/nowhere")
    devices.split_cpu_into_devices()
    assert os.environ["XLA_FLAGS"] == "--xla_dump_to=/nowhere"
    devices.split_cpu_into_devices(scanned_gru=True)
    devices.split_cpu_into_devices(scanned_gru=True)  # added once
    assert os.environ["XLA_FLAGS"] == f"--xla_dump_to=/nowhere {devices.SCHEDULER_OFF}"
    chosen = "--xla_cpu_enable_concurrency_optimized_scheduler=true"
    monkeypatch.setenv("XLA_FLAGS", chosen)  # the user's own setting stays
    devices.split_cpu_into_devices(scanned_gru=True)
    assert os.environ["XLA_FLAGS"] == chosen


@pytest.mark.parametrize(
    "model",
    [
        {},
        {"context": 2},
        {"recurrent": 3},
        {"kind": "vrnn", "state": 4, "latent_dim": 1},
    ],
)
def test_a_scanned_gru_keeps_the_cpu_one_device(monkeypatch, model):
    """Unless the user chose a count: CPU_DEVICES_PER_CORE devices per core, one
    for a model that scans a GRU over the features (a GRU head or a VRNN, whose
    programs hung on 2 or 8 devices, docs/science.md)."""
    import jax
    from jax._src import xla_bridge

    from phasevae.engine import devices

    spec = spec_from_dict(tiny_dict(model=model))
    scanned = "recurrent" in model or "kind" in model
    assert devices.scans_a_gru(spec) == scanned
    monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: False)
    monkeypatch.delenv("JAX_NUM_CPU_DEVICES", raising=False)
    monkeypatch.setenv("XLA_FLAGS", "")
    asked = {}
    monkeypatch.setattr(jax.config, "update", lambda k, v: asked.update({k: v}))
    devices.split_cpu_into_devices(scanned_gru=devices.scans_a_gru(spec))
    cores = len(os.sched_getaffinity(0))
    want = 1 if scanned else devices.CPU_DEVICES_PER_CORE * cores
    assert asked == {"jax_num_cpu_devices": want}


def test_models_in_sequence_hold_one_models_activations(tiny_spec):
    """The memory estimate with the models in sequence (CPU devices): every model's
    parameters and Adam state, one model's activations; vmapped, every model's."""
    from phasevae.engine.grid import estimate_bytes

    spec = tiny_spec()
    shape = (500, 8)
    seq = [estimate_bytes(spec, shape, m, in_sequence=True) for m in (1, 2, 64)]
    vmapped = [estimate_bytes(spec, shape, m) for m in (1, 2, 64)]
    assert seq[0] == vmapped[0]  # one model: the same
    state = seq[1] - seq[0]  # per model: 4 float32 copies of the parameters
    assert state % 16 == 0 and seq[2] - seq[0] == 63 * state
    assert vmapped[2] - vmapped[0] == 63 * (vmapped[1] - vmapped[0]) > 63 * state


@pytest.mark.parametrize("recurrent", [0, 32])
def test_locate_turns_the_scheduler_off_for_a_gru_head_spec(
    tmp_path, monkeypatch, recurrent
):
    """``phasevae locate`` reads its source's spec before JAX starts, so a GRU
    head's run gets the flag as a sweep's does (it once started without it)."""
    from phasevae import api

    spec = tmp_path / "gru.toml"
    spec.write_text(f"[model]\nrecurrent = {recurrent}\n")
    asked = []

    def stop(scanned_gru=False):
        asked.append(scanned_gru)
        raise KeyboardInterrupt  # nothing is trained

    monkeypatch.setattr(api, "split_cpu_into_devices", stop)
    with pytest.raises(KeyboardInterrupt):
        api.locate(spec, tmp_path / "out")
    assert asked == [recurrent > 0]


@pytest.mark.slow
@pytest.mark.parametrize(
    "model",
    [
        "recurrent = 32\nencoder = [256, 128]\ndecoder = [128, 256]\nlatent_dim = 2\n"
        "[train]\nsteps = 20\neval_every = 10\n",
        'kind = "vrnn"\nstate = 32\nencoder = [64]\ndecoder = [64]\nlatent_dim = 1\n'
        "[train]\nsteps = 100\neval_every = 50\n",
    ],
    ids=["gru_head", "vrnn"],
)
def test_a_sweep_of_64_models_scanning_a_gru_finishes(tmp_path, model):
    """With XLA's concurrency-optimised scheduler on, the GRU-head sweep hung for
    good in 5 of 5 runs (jax 0.10.2, 8 CPU devices); with it off, the paper's
    widths and batch still hung on 8 or 2 devices. The VRNN sweep hung on 8
    devices in 1 of 2 runs. phasevae turns the scheduler off for both and keeps
    the CPU one device."""
    import numpy as np

    from tests.test_autoregressive import ar1_windows

    np.save(tmp_path / "ar.npy", ar1_windows(n=256, dim=8))
    spec = tmp_path / "gru.toml"
    spec.write_text(
        f'[data]\nsource = "array"\npath = "{tmp_path / "ar.npy"}"\n'
        f'normalize = "none"\n[model]\n{model}batch_size = 256\n'
        "[grid]\nsigma2 = { min = 0.5, max = 20.0, num = 64 }\nbeta = [1.0]\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    cmd = [sys.executable, "-m", "phasevae.cli", "sweep", str(spec)]
    proc = subprocess.Popen(
        [*cmd, "--out", str(tmp_path / "run"), "--quiet"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        proc.kill()  # a hung XLA program does not honour SIGTERM
        proc.communicate()
        pytest.fail("the sweep of 64 models hung")
    assert proc.returncode == 0, err[-3000:]
    assert len(pd.read_parquet(tmp_path / "run" / "metrics.parquet")) == 64 * 2
