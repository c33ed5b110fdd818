"""meta.json as a typed, versioned record (phasevae.store.runmeta): every committed
meta.json parses (version 0 through its migration) and writes back its values; a
document that is not what phasevae writes is a RecordError naming the field; the
runs joined from others (shards, static groups, locate's stages) add up their
times by the one rule for each."""

import json
import shutil
from pathlib import Path

import pytest

from phasevae.cli import main
from phasevae.store import RunDir, canonical_json, sha256_text
from phasevae.store.records import RecordError
from phasevae.store.runmeta import FORMAT_VERSION, RunMeta, WallTimes

RESULTS = Path(__file__).parent.parent / "results"
DEFAULT = RESULTS / "default" / "default"


def test_every_committed_meta_parses_and_writes_back_its_values():
    files = sorted(RESULTS.rglob("meta.json"))
    assert len(files) > 100
    for path in files:
        doc = json.loads(path.read_text())
        meta = RunDir(path.parent).meta()  # digest, identity, then the parser
        back = meta.to_json()
        for key, value in doc.items():
            if key not in ("run", "digest"):
                assert back[key] == value, (path, key)
        absent = set(back) - set(doc) - {"format_version"}
        assert all(back[k] is None for k in absent if k != "merged_from"), path
        assert back["format_version"] == FORMAT_VERSION


def test_the_record_reads_what_the_readers_need():
    meta = RunDir(DEFAULT).meta()
    assert meta.complete and not meta.adaptive and meta.diverged == []
    assert meta.grid_size == len(meta.points) and meta.steps_done == meta.steps
    assert meta.spectrum["lambda_max"] == meta.spectrum["eigenvalues"][0]
    diverged = meta.replace(points={**meta.points, "x": "diverged"})
    assert diverged.diverged == ["x"]


def _doc() -> dict:
    doc = json.loads((DEFAULT / "meta.json").read_text())
    return {k: v for k, v in doc.items() if k not in ("run", "digest")}


def test_version_0_parses_and_a_newer_version_is_refused():
    doc = _doc()
    assert "format_version" not in doc  # committed before the field
    for key in ("data", "cores", "compile_cache"):
        doc.pop(key, None)
    meta = RunMeta.from_json(doc)
    assert meta.data is None and meta.cores is None and meta.compile_cache is None
    with pytest.raises(RecordError, match="format_version 2.*upgrade phasevae"):
        RunMeta.from_json({**doc, "format_version": FORMAT_VERSION + 1})


@pytest.mark.parametrize(
    "key, value, said",
    [
        ("status", "done", "status 'done' is neither"),
        ("points", {"p": "nan"}, "points holds 'nan'"),
        ("grid_size", "4", "grid_size is not an integer"),
        ("wall_times", {"train_s": "x"}, r"wall_times.train_s is not a number"),
        ("shard", [1], "shard does not have 2 values"),
        ("spectrum", {"lambda_max": 1.0}, "spectrum has no eigenvalues"),
        ("spec", None, "spec is not an object"),
    ],
)
def test_a_wrong_field_is_named(key, value, said):
    with pytest.raises(RecordError, match=said):
        RunMeta.from_json({**_doc(), key: value}, "meta.json")


def test_a_missing_field_is_named():
    doc = _doc()
    del doc["steps"]
    with pytest.raises(RecordError, match="meta.json lacks steps"):
        RunMeta.from_json(doc, "meta.json")


def test_a_meta_json_with_its_digest_but_a_wrong_field_exits_2(tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(DEFAULT, run)
    doc = json.loads((run / "meta.json").read_text())
    del doc["digest"]
    doc["status"] = "half"
    doc["digest"] = sha256_text(canonical_json(doc))
    (run / "meta.json").write_text(json.dumps(doc))
    assert main(["status", str(run)]) == 2
    assert "meta.json: status 'half' is neither" in capsys.readouterr().err


def test_joined_runs_add_their_times_by_how_they_ran():
    base = RunDir(DEFAULT).meta()
    a = base.replace(points={"p0": "ok"}, wall_times=WallTimes(2.0, 10.0))
    b = base.replace(points={"p1": "diverged"}, wall_times=WallTimes(None, 5.0))
    shards = RunMeta.joined([a, b], parallel=True, grid_size=2)
    assert shards.wall_times == WallTimes(2.0, 15.0)  # side by side: the longest
    assert shards.points == {"p0": "ok", "p1": "diverged"} and shards.grid_size == 2
    assert shards.diverged == ["p1"]
    c = a.replace(wall_times=WallTimes(3.0, 1.0))
    groups = RunMeta.joined([a, c], parallel=False)
    assert groups.wall_times == WallTimes(5.0, 11.0)  # one after another: the sum
