"""The Python API (phasevae.api): what a notebook uses and what the CLI calls."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import tomli_w
from matplotlib.figure import Figure

import phasevae as pv
from phasevae import api, cli
from phasevae.errors import BadInput
from phasevae.spec import SpecError, spec_from_dict
from phasevae.store import RunDirError
from tests.conftest import tiny_dict

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_dict_a_spec_and_a_file_give_the_same_run(tmp_path):
    raw = tiny_dict()
    path = tmp_path / "s.toml"
    path.write_text(tomli_w.dumps(raw))
    runs = [
        pv.run(raw, tmp_path / "dict"),
        pv.run(spec_from_dict(raw), tmp_path / "spec"),
        pv.run(path, tmp_path / "file"),
    ]
    for r in runs:
        assert r.complete and r.diverged == []
        assert r.spec == runs[0].spec
        pd.testing.assert_frame_equal(r.metrics, runs[0].metrics)
        # the object holds what the run directory holds
        pd.testing.assert_frame_equal(r.metrics, pv.open_run(r.path).metrics)


def test_on_chunk_sees_every_chunk_once_and_in_order(tmp_path):
    seen = []
    r = pv.run(tiny_dict(), tmp_path / "run", on_chunk=lambda f, m: seen.append((f, m)))
    steps = [int(f["step"].unique().item()) for f, _ in seen]
    assert steps == [10, 20]  # steps 20, eval_every 10
    assert all(m.spec["train"]["steps"] == 20 for _, m in seen)
    chunks = pd.concat([f for f, _ in seen], ignore_index=True)
    pd.testing.assert_frame_equal(chunks, r.metrics)


@pytest.mark.slow
def test_analyze_and_plot_return_objects_and_write_files(tmp_path):
    r = pv.run(tiny_dict(grid={"sigma2": [0.5, 1.0, 2.0, 4.0, 8.0, 16.0]}), tmp_path)
    r.plot()  # a run without its analysis is analysed on demand
    assert (tmp_path / "analysis.json").exists()
    doc = r.analyze()
    assert {t.beta for t in doc.transitions} == {0.5, 1.0}
    figures = r.plot()
    assert "kl_vs_sigma2" in figures
    assert all(isinstance(f, Figure) for f in figures.values())
    paths = r.plot(save="png")
    assert set(paths) == set(figures)
    assert all(
        p.parent == tmp_path / "figures" and p.stat().st_size for p in paths.values()
    )


def test_status_of_a_finished_run(tmp_path):
    r = pv.run(tiny_dict(), tmp_path)
    st = pv.open_run(tmp_path).status()
    assert st["status"] == "complete" and st["grid_size"] == 4
    assert st["steps_done"] == st["steps"] == 20 and st["diverged"] == 0
    assert st["eta_s"] is None and r.summary()["beta"].tolist() == [0.5, 1.0]


def test_bad_specs_and_run_directories_are_refused(tmp_path):
    with pytest.raises(SpecError, match="not to a Spec"):
        api.as_spec(spec_from_dict(tiny_dict()), ["grid.beta=[1.0]"])
    with pytest.raises(SpecError, match="not int"):
        api.as_spec(3)
    with pytest.raises(SpecError, match="unknown"):
        pv.run({**tiny_dict(), "extra": {}}, tmp_path / "x")
    assert not (tmp_path / "x").exists()
    with pytest.raises(RunDirError, match="not a phasevae run"):
        pv.open_run(tmp_path)


def test_the_cli_sweeps_through_the_api(tmp_path, monkeypatch, capsys):
    calls = []

    def spy(spec, out, **kw):
        calls.append((spec, out, kw))
        raise BadInput("stopped by the test")

    monkeypatch.setattr(api, "run", spy)
    assert cli.main(["sweep", "--out", str(tmp_path / "run")]) == 2
    assert "stopped by the test" in capsys.readouterr().err
    ((spec, out, kw),) = calls
    assert spec == pv.load_spec() and out == tmp_path / "run"
    assert kw["progress"] is not None


@pytest.mark.slow
def test_the_example_runs_on_every_cpu_device_as_the_cli_does(tmp_path):
    """examples/quickstart.py in a fresh process: the API splits the CPU into
    devices before JAX starts, as the command line does."""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS",)}
    env.pop("JAX_NUM_CPU_DEVICES", None)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py"), str(tmp_path / "r")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sigma2_c =" in proc.stdout and "kl_vs_sigma2" in proc.stdout
    meta = pv.open_run(tmp_path / "r").meta
    from phasevae.engine.devices import CPU_DEVICES_PER_CORE

    cores = len(os.sched_getaffinity(0))
    assert len(meta.devices) == CPU_DEVICES_PER_CORE * cores
