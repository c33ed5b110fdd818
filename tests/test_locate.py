"""phasevae locate (issue 26): from a data file, a spec or a finished sweep to a
located transition in one resumable run directory; advice that is a command which
continues the same run."""

import json
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import tomli_w

import phasevae.tools.locate as locate_mod
from phasevae.analysis.curves import analyze_run
from phasevae.cli import main
from phasevae.store import RunDir
from tests.conftest import tiny_dict

# a curve with a clear kink at lambda_max = 4 that a tiny network reaches in 200 steps
SMALL = {
    "data": {"source": "synthetic", "eigenvalues": [4.0, 0.5, 0.1], "samples": 1024},
    "model": {"latent_dim": 1, "encoder": [8], "decoder": [8]},
    "train": {"steps": 200, "eval_every": 20, "batch_size": 64, "learning_rate": 1e-2},
    "grid": {"sigma2": [1.0], "beta": [1.0], "seeds": [0]},
}


def small_spec(tmp_path, name="small.toml", **sections):
    raw = tiny_dict(**{k: {**v, **sections.get(k, {})} for k, v in SMALL.items()})
    raw["data"].pop("eval_samples", None)
    path = tmp_path / name
    path.write_text(tomli_w.dumps(raw))
    return path


@pytest.mark.slow
def test_locate_chains_stages_into_one_run_that_analyze_reads(tmp_path):
    spec = small_spec(tmp_path)
    out = tmp_path / "loc"
    result = locate_mod.locate(spec, out, budget=4_500, say=lambda _: None)
    (curve,) = result["curves"]
    record = json.loads((out / "locate.json").read_text())
    kinds = [s["kind"] for s in record["stages"]]
    assert kinds[0] == "coarse" and len(kinds) >= 2  # it did more than one sweep
    assert curve["model_steps"] <= 4_500 and curve["stopped"]
    # the coarse grid is placed by the theory: around lambda_max / beta
    lam = RunDir(out).meta().spectrum["lambda_max"]
    coarse = record["stages"][0]["sigma2"]
    assert coarse[0] < lam < coarse[-1]
    # OUT holds every stage's points, each step once, and reads as any run
    joined = RunDir(out).metrics()
    assert not joined.duplicated(["point_id", "step"]).any()
    n_points = sum(len(s["sigma2"]) for s in record["stages"] if s["kind"] != "longer")
    assert joined["point_id"].nunique() == n_points
    analysis = analyze_run(out)
    (t,) = analysis.transitions
    assert t.sigma2_c == pytest.approx(curve["sigma2_c"])
    # a rerun of a finished locate trains nothing and says the same
    again = locate_mod.locate(spec, out, budget=4_500, say=lambda _: None)
    assert again == result
    # as does one whose record was written before a spec key existed (at its default)
    record["base"]["model"].pop("context")
    (out / "locate.json").write_text(json.dumps(record))
    assert locate_mod.locate(spec, out, budget=4_500, say=lambda _: None) == result


@pytest.mark.slow
def test_a_longer_stage_continues_the_models_it_forks(tmp_path):
    """A 'longer' stage starts from its parent's checkpoint and metrics: its rows up
    to the fork are the parent's, and it goes on as a run of those points trained
    to the new length from the start would (same program shape: exact)."""
    from phasevae.engine.sweep import run_sweep
    from phasevae.spec import load_spec

    base = load_spec(small_spec(tmp_path))
    loc = locate_mod.Locator(small_spec(tmp_path), tmp_path / "loc", say=print)
    beta = 1.0
    parent = locate_mod.Stage("00-coarse", "coarse", beta, (2.0, 4.0, 8.0), 100, "")
    child = locate_mod.Stage(
        "01-longer",
        "longer",
        beta,
        (2.0, 4.0),
        200,
        "",
        parents=("00-coarse",),
        start=100,
    )
    loc.stages[beta] = [parent, child]
    loc._run_stage(parent)
    forked = loc._run_stage(child)
    scratch = run_sweep(
        locate_mod.stage_spec(base, child), tmp_path / "scratch"
    ).metrics
    first = RunDir(loc._dir(parent)).metrics()
    key = ["point_id", "step"]
    early = forked[forked["step"] <= 100].sort_values(key).reset_index(drop=True)
    mine = first[first["sigma2"].isin([2.0, 4.0])].sort_values(key)
    pd.testing.assert_frame_equal(early, mine.reset_index(drop=True))
    late = forked[forked["step"] > 100].sort_values(key).reset_index(drop=True)
    ref = scratch[scratch["step"] > 100].sort_values(key).reset_index(drop=True)
    cols = ["kl", "recon", "elbo"]
    np.testing.assert_allclose(late[cols], ref[cols], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_locate_resumes_after_sigkill_to_the_uninterrupted_answer(tmp_path):
    spec = small_spec(tmp_path)
    args = ["--budget", "4500", "--json"]

    def cmd(out):
        return [sys.executable, "-m", "phasevae.cli", "locate", str(spec), "--out"] + [
            str(out),
            *args,
        ]

    full = subprocess.run(cmd(tmp_path / "full"), capture_output=True, text=True)
    assert full.returncode == 0, full.stderr
    cut = tmp_path / "cut"
    proc = subprocess.Popen(cmd(cut), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    t0 = time.time()  # kill once the second stage has started
    while not list(cut.glob("stages/*/01-*")) and time.time() - t0 < 240:
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    again = subprocess.run(cmd(cut), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    a, b = json.loads(full.stdout), json.loads(again.stdout)
    a.pop("out"), b.pop("out")
    assert a == b
    key = ["point_id", "step"]
    pd.testing.assert_frame_equal(
        RunDir(cut).metrics().sort_values(key).reset_index(drop=True),
        RunDir(tmp_path / "full").metrics().sort_values(key).reset_index(drop=True),
    )


@pytest.mark.slow
def test_a_data_file_alone_is_enough_and_prints_its_spec(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 3)) * np.sqrt([3.0, 0.5, 0.1])
    path = tmp_path / "mine.csv"
    pd.DataFrame(x, columns=["a", "b", "c"]).to_csv(path, index=False)
    sets = ["train.steps=100", "train.eval_every=20", "model.encoder=[8]"]
    sets += ["model.decoder=[8]", "model.latent_dim=1"]
    argv = ["locate", str(path), "--out", str(tmp_path / "loc"), "--budget", "1700"]
    assert main(argv + [a for s in sets for a in ("--set", s)]) == 0
    out = capsys.readouterr().out
    assert 'source = "array"' in out  # the spec the defaults amount to
    assert "beta 1:" in out and "model-steps" in out


def test_locate_refuses_what_it_cannot_chain(tmp_path, capsys):
    spec = small_spec(tmp_path)
    bad = ["--set", "grid.learning_rate=[0.01, 0.02]"]
    assert main(["locate", str(spec), "--out", str(tmp_path / "a"), *bad]) == 2
    assert "one curve per beta" in capsys.readouterr().err
    assert main(["locate", str(tmp_path / "x.txt"), "--out", str(tmp_path / "b")]) == 2
    assert main(["locate", str(spec), "--out", str(tmp_path / "c"), "--target", "2"])
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


@pytest.mark.slow
def test_every_advice_is_a_command_that_continues_the_same_run(tmp_path, capsys):
    """A short plain sweep gets 'train longer'; its advice command, run as printed,
    continues that run directory (more steps, same models), and so does the
    cheaper alternative (locate into RUN/locate)."""
    spec = small_spec(tmp_path, grid={"sigma2": {"min": 1.0, "max": 12.0, "num": 8}})
    run = tmp_path / "run"
    assert main(["sweep", str(spec), "--out", str(run), "--set", "train.steps=60"]) == 0
    (t,) = analyze_run(run).transitions
    advice = t.advice
    assert advice is not None, t.verdict
    printed = capsys.readouterr()
    assert main(["analyze", str(run)]) == 0
    assert advice["command"] in capsys.readouterr().out
    argv = shlex.split(advice["command"])
    assert argv[0] == "phasevae"
    before = RunDir(run).metrics()
    assert main(argv[1:]) == 0, printed
    after = RunDir(run).metrics()
    if argv[1] == "sweep":  # the same points, trained on from where they were
        assert after["step"].max() > before["step"].max()
        assert set(after["point_id"]) == set(before["point_id"])
        steps = int(argv[-1].split("=")[1])
        assert steps % 20 == 0  # what the spec accepts
        alt = shlex.split(advice["alternative"]["command"])
        assert main(alt[1:] + ["--budget", "3000"]) == 0
    assert (run / "locate").exists() or argv[1] == "sweep"


def test_the_preflight_warns_before_training_when_the_grid_misses(tmp_path, capsys):
    """lambda_max ~ 4 (beta = 1), sigma^2 in [0.2, 1]: the transition lies above
    the grid. sweep and theory say so before any training; --strict-grid refuses
    (exit 2, nothing written)."""
    spec = small_spec(tmp_path, grid={"sigma2": [0.2, 0.5, 1.0]})
    out = tmp_path / "run"
    assert main(["sweep", str(spec), "--out", str(out), "--strict-grid"]) == 2
    err = capsys.readouterr().err
    assert "beta = 1: the theory puts the transition at sigma^2 = " in err
    assert "does not reach" in err and not out.exists()
    assert main(["theory", str(spec)]) == 0
    assert "warning: beta = 1" in capsys.readouterr().out
    ok = ["--set", "grid.sigma2={min = 1.0, max = 12.0, num = 6}"]
    assert main(["theory", str(spec), *ok]) == 0
    assert "warning" not in capsys.readouterr().out
    assert main(["sweep", str(spec), "--out", str(out), "--set", "train.steps=20"]) == 0
    captured = capsys.readouterr()
    assert "phasevae: warning: beta = 1" in captured.err
    assert f"next: phasevae analyze {out}" in captured.out
