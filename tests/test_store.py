"""Integrity of a run directory: damaged files are named and never built upon."""

import hashlib
import json
import re
import shutil

import pandas as pd
import pyarrow.parquet as pq
import pytest
import tomli_w

from phasevae.cli import main
from phasevae.spec import spec_to_toml
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
    meta = rd.meta().replace(status="running")
    rd.write_spec(spec_to_toml(RunDir(root / "done").spec()), rd.run_id())
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_an_intact_run_verifies_and_continues(runs, tmp_path):
    root, spec = runs
    run = tmp_path / "half"
    shutil.copytree(root / "half", run)
    assert main(["sweep", str(spec), "--out", str(run)]) == 0
    a = pd.read_parquet(root / "done" / "metrics.parquet")
    b = RunDir(run).metrics()
    assert len(a) == len(b)
    assert RunDir(run).meta().status == "complete"


@pytest.mark.slow
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


def test_nan_payloads_do_not_read_as_damage(tmp_path, tiny_spec):
    """Diverged models write NaNs of any sign and payload; parquet need not keep
    them bit for bit, and the values digest must not call that damage."""
    import numpy as np

    bits = np.array(
        [0x7FF8000000000000, 0xFFF8000000000000, 0x7FF8000000000001], np.uint64
    )
    df = pd.DataFrame({"kl": bits.view(np.float64), "step": [1, 2, 3]})
    run = RunDir(tmp_path / "run")
    run.claim(tiny_spec())
    run.write_metrics(df)
    back = run.metrics()
    assert back["kl"].isna().all() and list(back["step"]) == [1, 2, 3]


def _snapshot(path):
    return {p.relative_to(path): p.read_bytes() for p in path.rglob("*") if p.is_file()}


@pytest.mark.slow
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


@pytest.fixture(scope="module")
def twin(runs):
    """The same grid trained from another seed, in a run of its own; ``done`` and
    the twin analysed."""
    root, spec = runs
    twin = root / "twin"
    argv = ["sweep", str(spec), "--out", str(twin), "--set", "train.seed=1"]
    assert main(argv) == 0
    for run in (root / "done", twin):
        assert main(["analyze", str(run)]) == 0
    return twin


FOREIGN = {  # what is copied from the twin, the run that reads it, the commands
    "meta.json": ("done", ["status", "analyze", "plot", "report", "sweep"]),
    "metrics.parquet": ("done", ["analyze", "plot", "report", "sweep"]),
    "analysis.json": ("done", ["plot", "report"]),
    "checkpoints": ("half", ["sweep"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("entry", list(FOREIGN))
def test_a_file_of_another_run_is_refused(runs, twin, tmp_path, capsys, entry):
    """Every file names its run; a file copied from another run (with its digest
    and the record beside it) is refused by every command that reads it, and
    nothing of the run is changed."""
    root, spec = runs
    which, commands = FOREIGN[entry]
    run = tmp_path / "run"
    shutil.copytree(root / which, run)
    if entry == "checkpoints":
        shutil.rmtree(run / entry)
        shutil.copytree(twin / entry, run / entry)
    else:
        for name in (entry, f"{entry}.sha256"):
            if (twin / name).exists():
                shutil.copy(twin / name, run / name)
    before = _snapshot(run)
    for command in commands:
        argv = [command, str(spec), "--out"] if command == "sweep" else [command]
        assert main([*argv, str(run)]) == 2, command
        err = capsys.readouterr().err
        assert "Traceback" not in err
        said = "not an analysis of this run" if entry == "analysis.json" else None
        assert (said or "belongs to another run") in err or (
            "checkpoint of another run" in err
        ), (command, err)
    assert _snapshot(run) == before


def _strip_meta(p):
    doc = json.loads(p.read_text())
    del doc["digest"]
    p.write_text(json.dumps(doc))


def _strip_parquet(p):
    table = pq.read_table(p)
    pq.write_table(table.replace_schema_metadata({}), p)
    digest = hashlib.sha256(p.read_bytes()).hexdigest()  # and the record recomputed
    record = p.with_name(p.name + ".sha256")
    record.write_text(
        json.dumps({**json.loads(record.read_text()), "sha256": [digest]})
    )


def _edit_analysis(p):
    doc = json.loads(p.read_text())
    doc["transitions"][0]["verdict"] = "trusted"
    doc["transitions"][0]["sigma2_c"] = 1.0
    p.write_text(json.dumps(doc))


UNSEALED = {  # a file of the current format edited, its digest removed
    "meta.json": (_strip_meta, "its digest is missing", ["status", "analyze"]),
    "metrics.parquet.sha256": (
        lambda p: p.unlink(),
        "is missing",
        ["analyze", "plot"],
    ),
    "metrics.parquet": (_strip_parquet, "content digest is missing", ["analyze"]),
    "analysis.json": (_edit_analysis, "digest does not match", ["plot", "report"]),
    "spec.toml": (
        lambda p: p.write_text(p.read_text().partition("\n")[2]),
        "earlier phasevae",
        ["status", "analyze", "plot"],
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(UNSEALED))
def test_a_current_file_without_its_digest_is_refused(
    runs, twin, tmp_path, capsys, name
):
    """Only a run of an older format may lack digests, and it is read only after
    ``phasevae upgrade``: removing a digest (or recomputing the bytes' record) does
    not make an edit pass."""
    root, _ = runs
    run = tmp_path / "run"
    shutil.copytree(root / "done", run)
    hurt, said, commands = UNSEALED[name]
    hurt(run / name)
    for command in commands:
        assert main([command, str(run)]) == 2, command
        err = capsys.readouterr().err
        assert said in err and "Traceback" not in err, (command, err)


def _as_format_0(run):
    """``run`` as phasevae wrote it before digests: no spec line, no meta or
    analysis digest, no record of the metrics' bytes, no content digest."""
    spec = run / "spec.toml"
    spec.write_text(spec.read_text().partition("\n")[2])
    for name in ("meta.json", "analysis.json"):
        doc = json.loads((run / name).read_text())
        for key in ("digest", "run"):
            doc.pop(key)
        (run / name).write_text(json.dumps(doc))
    (run / "metrics.parquet.sha256").unlink()
    table = pq.read_table(run / "metrics.parquet")
    pq.write_table(table.replace_schema_metadata({}), run / "metrics.parquet")
    shutil.rmtree(run / "checkpoints")


@pytest.mark.slow
def test_an_older_run_is_read_after_upgrade_with_the_same_values(
    runs, twin, tmp_path, capsys
):
    root, spec = runs
    run = tmp_path / "run"
    shutil.copytree(root / "done", run)
    _as_format_0(run)
    for command in ("status", "analyze", "plot"):
        assert main([command, str(run)]) == 2
        assert f"phasevae upgrade {run}" in capsys.readouterr().err
    # a damaged file of a format that had digests is not vouched for
    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    (broken / "metrics.parquet.sha256").write_text('["0"]')
    assert main(["upgrade", str(broken)]) == 2
    assert "metrics.parquet is damaged" in capsys.readouterr().err
    assert main(["upgrade", str(run)]) == 0
    said = capsys.readouterr().out
    assert "upgraded (taken as they were: spec.toml, meta.json" in said
    assert main(["upgrade", str(run)]) == 0
    assert "already of the current format" in capsys.readouterr().out
    old, new = RunDir(root / "done"), RunDir(run)
    assert new.spec() == old.spec() and new.meta() == old.meta()
    pd.testing.assert_frame_equal(new.metrics(), old.metrics())
    assert new.analysis() == old.analysis()  # the values are kept, not recomputed
    assert new.run_id() != old.run_id()
    assert main(["plot", str(run)]) == 0


def test_every_committed_run_is_of_the_current_format():
    """The committed results were upgraded once (``phasevae upgrade``); every file
    verifies against its digest and names its run."""
    from pathlib import Path

    root = Path(__file__).parent.parent / "results"
    runs = sorted(p.parent for p in root.rglob("spec.toml"))
    assert len(runs) > 100
    for path in runs:
        run = RunDir(path)
        run.spec(), run.meta(), run.metrics()
        if (path / "analysis.json").exists():
            assert run.analysis().transitions, path
