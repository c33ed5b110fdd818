"""Integrity of a run directory: damaged files are named and never built upon."""

import re
import shutil

import pandas as pd
import pytest
import tomli_w

from phasevae.cli import main
from phasevae.store import RunDir
from tests.conftest import tiny_dict


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished run and one stopped half-way (as after a kill)."""
    root = tmp_path_factory.mktemp("runs")
    spec = root / "s.toml"
    grid = {"sigma2": [0.5, 1.0, 2.0, 4.0, 8.0], "beta": [1.0]}
    spec.write_text(tomli_w.dumps(tiny_dict(train={"steps": 40}, grid=grid)))
    assert main(["sweep", str(spec), "--out", str(root / "done")]) == 0
    # a shorter spec's run is the same as the first 20 steps of this one; give it
    # this spec so that a rerun continues it
    half = root / "half"
    short = root / "short.toml"
    short.write_text(tomli_w.dumps(tiny_dict(train={"steps": 20}, grid=grid)))
    assert main(["sweep", str(short), "--out", str(half)]) == 0
    rd = RunDir(half)
    meta = rd.meta()
    meta.update(status="running")
    shutil.copy(root / "done" / "spec.toml", half / "spec.toml")
    rd.write_meta(meta)
    return root, spec


def _largest(checkpoints):
    """The largest file of the newest save: the state's data."""
    newest = max(
        (p for p in checkpoints.iterdir() if p.is_dir()), key=lambda p: int(p.name)
    )
    return max(
        (p for p in newest.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size
    )


def _flip(path, where=0.5):
    data = bytearray(path.read_bytes())
    i = int(len(data) * where)
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {
    "metrics flipped": ("metrics.parquet", lambda p: _flip(p)),
    "metrics truncated": (
        "metrics.parquet",
        lambda p: p.write_bytes(p.read_bytes()[:300]),
    ),
    "checkpoint flipped": ("checkpoints", lambda p: _flip(_largest(p))),
    "checkpoint truncated": (
        "checkpoints",
        lambda p: _largest(p).write_bytes(_largest(p).read_bytes()[:100]),
    ),
    "checkpoint garbage": (
        "checkpoints",
        lambda p: _largest(p).write_bytes(b"x" * 999),
    ),
    "meta garbage": ("meta.json", lambda p: p.write_bytes(b"\xff{not json")),
    "meta edited": (
        "meta.json",
        lambda p: p.write_text(
            re.sub(r'"steps_done": \d+', '"steps_done": 10', p.read_text())
        ),
    ),
    "spec empty": ("spec.toml", lambda p: p.write_text("")),
    "spec edited": (
        "spec.toml",
        lambda p: p.write_text(p.read_text().replace("steps = 40", "steps = 60")),
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_file_is_named_and_never_built_upon(runs, tmp_path, capsys, damage):
    root, spec = runs
    name, hurt = DAMAGE[damage]
    for which, commands in (
        ("half", [["sweep", str(spec), "--out"], ["status"]]),
        ("done", [["analyze"], ["status"], ["sweep", str(spec), "--out"]]),
    ):
        run = tmp_path / which
        shutil.copytree(root / which, run)
        hurt(run / name)
        before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
        for command in commands:
            code = main([*command, str(run)])
            err = capsys.readouterr().err
            assert "Traceback" not in err
            # status reads meta and spec; a finished run's results do not
            # depend on its checkpoint
            needs = {
                "spec.toml": True,
                "meta.json": True,
                "metrics.parquet": command[0] != "status",
                "checkpoints": which == "half" and command[0] == "sweep",
            }[name]
            if needs:
                assert code == 2, (damage, which, command, err)
                assert "damaged" in err and name.split("/")[-1] in err, err
            else:
                assert code == 0, (damage, which, command, err)
        after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
        changed = {p for p in before if before[p] != after.get(p)}
        assert not changed - {run / "analysis.json"}, changed


def test_an_intact_run_verifies_and_continues(runs, tmp_path):
    root, spec = runs
    run = tmp_path / "half"
    shutil.copytree(root / "half", run)
    assert main(["sweep", str(spec), "--out", str(run)]) == 0
    a = pd.read_parquet(root / "done" / "metrics.parquet")
    b = RunDir(run).metrics()
    assert len(a) == len(b)
    assert RunDir(run).meta()["status"] == "complete"


def test_lost_metrics_and_an_empty_directory_get_messages_that_say_what_to_do(
    runs, tmp_path, capsys
):
    root, spec = runs
    run = tmp_path / "half"
    shutil.copytree(root / "half", run)
    (run / "metrics.parquet").unlink()
    assert main(["sweep", str(spec), "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert "metrics.parquet is gone" in err and "delete" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".lock").write_text("")
    assert main(["merge", str(empty), "--out", str(tmp_path / "m")]) == 2
    assert "stopped before writing anything" in capsys.readouterr().err


def test_nan_payloads_do_not_read_as_damage(tmp_path):
    """Diverged models write NaNs of any sign and payload; parquet need not keep
    them bit for bit, and the values digest must not call that damage."""
    import numpy as np

    bits = np.array(
        [0x7FF8000000000000, 0xFFF8000000000000, 0x7FF8000000000001], np.uint64
    )
    df = pd.DataFrame({"kl": bits.view(np.float64), "step": [1, 2, 3]})
    run = RunDir(tmp_path / "run")
    run.write_metrics(df)
    back = run.metrics()
    assert back["kl"].isna().all() and list(back["step"]) == [1, 2, 3]


def _snapshot(path):
    return {p.relative_to(path): p.read_bytes() for p in path.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    "entry", [".lock", "figures", "checkpoints", "meta.json", "analysis.json"]
)
def test_a_link_in_a_run_directory_is_refused_and_its_target_untouched(
    runs, tmp_path, capsys, entry
):
    """A run's own files and folders are real or refused: a linked .lock had its
    target truncated to a pid, a linked figures/ was written into, a linked
    checkpoints/ had an unrelated folder deleted by the checkpoint's cleanup."""
    root, spec = runs
    run = tmp_path / "run"
    shutil.copytree(root / "done", run)
    assert main(["analyze", str(run)]) == 0
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "mine.txt").write_text("keep me")
    (outside / "0").mkdir()  # a folder named as a checkpoint's
    (outside / "0" / "x").write_text("keep me too")
    target = run / entry
    if target.is_dir():
        shutil.rmtree(target)
    else:
        target.unlink(missing_ok=True)
    if entry in ("figures", "checkpoints"):
        target.symlink_to(outside, target_is_directory=True)
    else:
        target.symlink_to(outside / "mine.txt")
    before = _snapshot(outside)
    for argv in (
        ["sweep", str(spec), "--out", str(run), "--set", "train.steps=60"],
        ["plot", str(run)],
        ["report", str(run)],
        ["analyze", str(run)],
    ):
        assert main(argv) == 2, argv
        assert "symbolic link" in capsys.readouterr().err
    assert _snapshot(outside) == before
