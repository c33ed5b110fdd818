"""Orbax checkpoints (phasevae.store.checkpoint): sealed by a digest, read back without
the padding, refused by name when damaged."""

import jax
import numpy as np
import pytest

from phasevae.engine.devices import Placement
from phasevae.store import RunDir, RunDirError
from phasevae.store.checkpoint import CheckpointError, Checkpoints


def _leaves(n: int, value: float):
    place = Placement.create(n)
    host = [np.full((n, 3), value, np.float32), np.arange(n, dtype=np.int32)]
    return place.models(host), host


def test_a_save_reads_back_without_padding_and_with_its_bookkeeping(tmp_path):
    ck = Checkpoints(tmp_path / "checkpoints")
    placed, host = _leaves(5, 1.5)
    warm = {"warm_a_0": np.ones((2, 2), np.float32)}
    ck.save(jax.tree.leaves(placed), 5, {"step": 40, "ids": list("abcde")}, warm)
    ck.wait()
    leaves, info, extra = Checkpoints(tmp_path / "checkpoints").load()
    assert info == {"step": 40, "ids": list("abcde"), "models": 5}
    for a, b in zip(leaves, host, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(extra["warm_a_0"], warm["warm_a_0"])


def test_an_unsealed_save_is_skipped_for_the_one_before(tmp_path):
    """A kill after orbax committed a save but before its digest was written."""
    ck = Checkpoints(tmp_path)
    for step in (10, 20):
        placed, _ = _leaves(2, float(step))
        ck.save(jax.tree.leaves(placed), 2, {"step": step, "ids": ["a", "b"]}, {})
        ck.wait()
    assert Checkpoints(tmp_path).load()[1]["step"] == 20
    (tmp_path / "1.sha256").unlink()
    leaves, info, _ = Checkpoints(tmp_path).load()
    assert info["step"] == 10 and leaves[0][0, 0] == 10.0


def test_a_damaged_save_is_refused_by_name(tmp_path):
    ck = Checkpoints(tmp_path)
    placed, _ = _leaves(2, 3.0)
    ck.save(jax.tree.leaves(placed), 2, {"step": 1, "ids": ["a", "b"]}, {})
    ck.wait()
    data = max(
        (p for p in (tmp_path / "0").rglob("*") if p.is_file()),
        key=lambda p: p.stat().st_size,
    )
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # orbax alone would restore this silently
    data.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"checkpoints|/0 is damaged"):
        Checkpoints(tmp_path).load()


def test_a_checkpoint_of_an_earlier_format_is_refused_with_what_to_do(tmp_path):
    run = RunDir(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "state.npz").write_bytes(b"PK")
    with pytest.raises(RunDirError, match="earlier phasevae.*delete"):
        run.load_checkpoint()


def test_a_full_disk_during_a_save_is_a_message(tmp_path, monkeypatch, tiny_spec):
    """orbax reports a full disk as ValueError('RESOURCE_EXHAUSTED: ...'), which
    ended a sweep with exit 1; it is a RunDirError (exit 2) that says what to do."""
    import orbax.checkpoint as ocp

    def full(*args, **kwargs):
        raise ValueError("RESOURCE_EXHAUSTED: write failed: No space left on device")

    monkeypatch.setattr(ocp.CheckpointManager, "save", full)
    placed, _ = _leaves(2, 1.0)
    run = RunDir(tmp_path)
    run.claim(tiny_spec())
    with pytest.raises(RunDirError, match="no space left.*rerun to resume"):
        run.save_checkpoint(jax.tree.leaves(placed), 2, 1, ["a", "b"])
