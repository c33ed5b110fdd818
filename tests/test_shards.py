"""Splitting a grid into shards for array jobs, and merging them back."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tomli_w

from phasevae.cli import main
from phasevae.engine.grid import grid_table, select_shard
from tests.conftest import tiny_dict

GRID = {"sigma2": [0.5, 1.0, 2.0, 4.0, 8.0], "beta": [0.5, 1.0]}


def spec_file(tmp_path, **grid):
    p = tmp_path / "s.toml"
    p.write_text(tomli_w.dumps(tiny_dict(grid={**GRID, **grid})))
    return p


def test_shards_partition_the_grid_deterministically(tiny_spec):
    grid = grid_table(tiny_spec(grid=GRID))
    parts = [select_shard(grid, (i, 3)) for i in range(3)]
    ids = [set(p["point_id"]) for p in parts]
    assert set().union(*ids) == set(grid["point_id"])
    assert sum(len(s) for s in ids) == len(grid)  # disjoint
    assert sorted(len(s) for s in ids) == [3, 3, 4]  # balanced
    again = select_shard(grid_table(tiny_spec(grid=GRID)), (1, 3))
    assert list(again["point_id"]) == list(parts[1]["point_id"])


@pytest.mark.slow
def test_sharded_runs_merge_into_the_single_run(tmp_path, capsys):
    spec = spec_file(tmp_path)
    assert main(["sweep", str(spec), "--out", str(tmp_path / "whole")]) == 0
    shards = []
    for i in range(3):
        out = tmp_path / f"shard{i}"
        assert main(["sweep", str(spec), "--out", str(out), "--shard", f"{i}/3"]) == 0
        shards.append(str(out))
    merged = tmp_path / "merged"
    assert main(["merge", *shards, "--out", str(merged)]) == 0
    assert "merged 10 grid points" in capsys.readouterr().out
    key = ["point_id", "step"]
    a = pd.read_parquet(tmp_path / "whole" / "metrics.parquet").sort_values(key)
    b = pd.read_parquet(merged / "metrics.parquet").sort_values(key)
    pd.testing.assert_frame_equal(
        a.reset_index(drop=True),
        b.reset_index(drop=True),
        check_exact=False,
        rtol=1e-5,
        atol=1e-6,
    )
    meta = json.loads((merged / "meta.json").read_text())
    assert meta["status"] == "complete" and meta["grid_size"] == 10
    assert main(["analyze", str(merged)]) == 0

    # a shard given twice is reported and kept once; a missing shard is refused
    assert main(["merge", *shards, shards[0], "--out", str(tmp_path / "m2")]) == 0
    assert "in several shards" in capsys.readouterr().out
    assert main(["merge", *shards[:2], "--out", str(tmp_path / "m3")]) == 2
    assert "in none of the shards" in capsys.readouterr().err
    assert not (tmp_path / "m3").exists()

    # never into one of the shards, never over a run unless asked, shards untouched
    def snapshot(path):
        return {p.name: p.read_bytes() for p in Path(path).rglob("*") if p.is_file()}

    before = snapshot(shards[0])
    assert main(["merge", *shards, "--out", shards[0]]) == 2
    assert "one of the shards" in capsys.readouterr().err
    assert main(["merge", *shards, "--out", shards[0], "--force"]) == 2
    assert snapshot(shards[0]) == before
    whole = snapshot(tmp_path / "whole")
    assert main(["merge", *shards, "--out", str(tmp_path / "whole")]) == 2
    assert "--force" in capsys.readouterr().err
    assert snapshot(tmp_path / "whole") == whole
    assert main(["merge", *shards, "--out", str(merged), "--force"]) == 0
    assert main(["analyze", str(merged)]) == 0
    assert not list(tmp_path.glob(".*merge-*")) and not list(tmp_path.glob(".*old-*"))
    # the shards' parent as --out deleted them all with --force; inside a shard
    # wrote there: both refused, every shard byte for byte as it was
    everything = {s: snapshot(s) for s in shards}
    for out in (tmp_path, Path(shards[0]) / "merged"):
        assert main(["merge", *shards, "--out", str(out), "--force"]) == 2
        assert "shard" in capsys.readouterr().err
    assert {s: snapshot(s) for s in shards} == everything
    assert not (Path(shards[0]) / "merged").exists()
    # the merged run is a directory like any other, not mkdtemp's 0700
    assert merged.stat().st_mode & 0o777 == (tmp_path / "whole").stat().st_mode & 0o777
    # the shard still continues as a shard
    assert main(["sweep", str(spec), "--out", shards[0], "--shard", "0/3"]) == 0


@pytest.mark.slow
def test_merge_refuses_shards_of_different_specs_and_bad_shard_arguments(
    tmp_path, capsys
):
    a, b = tmp_path / "a", tmp_path / "b"
    assert (
        main(["sweep", str(spec_file(tmp_path)), "--out", str(a), "--shard", "0/2"])
        == 0
    )
    other = spec_file(tmp_path, beta=[2.0])
    assert main(["sweep", str(other), "--out", str(b), "--shard", "1/2"]) == 0
    assert main(["merge", str(a), str(b), "--out", str(tmp_path / "m")]) == 2
    assert "different spec" in capsys.readouterr().err
    for bad in ("2/2", "x", "1/0"):
        assert main(["sweep", str(spec_file(tmp_path)), "--shard", bad]) == 2
    # a run directory keeps its shard
    code = main(["sweep", str(spec_file(tmp_path)), "--out", str(a), "--shard", "1/2"])
    assert code == 2 and "holds shard" in capsys.readouterr().err
    assert np.isfinite(pd.read_parquet(a / "metrics.parquet")["kl"]).all()
