"""The run directory: atomic, idempotent writes and reading results back.

    RUN_DIR/spec.toml               the resolved spec
    RUN_DIR/meta.json               versions, devices, spectrum, times, point status
    RUN_DIR/metrics.parquet         one row per (grid point, eval step)
    RUN_DIR/checkpoints/state.npz   the stacked training state at the last checkpoint

Every file is written to a temporary name in the same directory and renamed over the
target, so a kill leaves either the old or the new file, never half of one. Metrics are
written before the checkpoint they belong to; on resume, rows newer than the checkpoint
are dropped and recomputed, so re-running a chunk never duplicates rows.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from phasevae.errors import BadInput
from phasevae.spec import Spec, SpecError, load_spec, spec_to_dict, spec_to_toml


class RunDirError(BadInput):
    """A run directory that is missing, unfinished or belongs to another spec."""


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` then rename ``tmp`` over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # a fresh name (not mkstemp, whose 0600 mode would ignore the umask)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


class RunDir:
    """Paths and atomic I/O of one run directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.spec_file = self.path / "spec.toml"
        self.meta_file = self.path / "meta.json"
        self.metrics_file = self.path / "metrics.parquet"
        self.checkpoint_file = self.path / "checkpoints" / "state.npz"

    def claim(self, spec: Spec) -> None:
        """Make the directory for ``spec``, or check that it already holds ``spec``.

        Raises:
          RunDirError: the directory holds a run of a different spec.
        """
        if self.spec_file.exists():
            try:
                stored = load_spec(self.spec_file)
            except SpecError as e:
                raise RunDirError(
                    f"{self.path} holds an unreadable spec: {e}"
                ) from None
            if stored != spec:
                raise RunDirError(
                    f"{self.path} already holds a run of a different spec "
                    f"({_describe_difference(stored, spec)}); choose another --out "
                    f"or rerun with the same spec to continue it"
                )
            return
        if self.path.exists() and any(p.name != ".lock" for p in self.path.iterdir()):
            raise RunDirError(
                f"{self.path} exists, is not empty and is not a phasevae run; "
                f"choose another --out"
            )
        atomic_write_text(self.spec_file, spec_to_toml(spec))

    @contextlib.contextmanager
    def lock(self):
        """Hold an exclusive lock on the run directory for the block. The kernel drops
        it when the process dies, so a killed run never leaves a stale lock.

        Raises:
          RunDirError: another process holds it.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / ".lock", "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                pid = f.read().strip() or "?"
                raise RunDirError(
                    f"{self.path} is in use by another phasevae process (pid {pid}); "
                    "wait for it or choose another --out"
                ) from None
            f.seek(0)
            f.truncate()
            f.write(str(os.getpid()))
            f.flush()
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def spec(self) -> Spec:
        if not self.spec_file.exists():
            raise RunDirError(f"{self.path} is not a phasevae run (no spec.toml)")
        return load_spec(self.spec_file)

    def meta(self) -> dict[str, Any]:
        if not self.meta_file.exists():
            return {}
        return json.loads(self.meta_file.read_text())

    def write_meta(self, meta: dict[str, Any]) -> None:
        atomic_write_text(self.meta_file, json.dumps(meta, indent=1, sort_keys=True))

    def metrics(self) -> pd.DataFrame:
        if not self.metrics_file.exists():
            raise RunDirError(f"{self.path} has no metrics yet (run phasevae sweep)")
        return pd.read_parquet(self.metrics_file)

    def write_metrics(self, df: pd.DataFrame) -> None:
        atomic_write(self.metrics_file, lambda tmp: df.to_parquet(tmp, index=False))

    def save_checkpoint(
        self,
        leaves: list[np.ndarray],
        step: int,
        ids: list[str],
        extra: dict[str, np.ndarray] | None = None,
    ) -> None:
        """Store the flattened stacked state after global step ``step``, and
        ``extra`` arrays (bookkeeping that must change together with the state)."""
        arrays = {f"leaf_{i}": a for i, a in enumerate(leaves)}
        arrays.update({f"extra_{k}": v for k, v in (extra or {}).items()})

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, step=np.int64(step), point_ids=np.array(ids), **arrays)

        atomic_write(self.checkpoint_file, write)

    def load_checkpoint(self) -> tuple[list[np.ndarray], int, list[str]] | None:
        """(leaves, step, point ids) of the last checkpoint, or None if none."""
        if not self.checkpoint_file.exists():
            return None
        with np.load(self.checkpoint_file, allow_pickle=False) as z:
            n = sum(1 for k in z.files if k.startswith("leaf_"))
            leaves = [z[f"leaf_{i}"] for i in range(n)]
            return leaves, int(z["step"]), [str(s) for s in z["point_ids"]]

    def checkpoint_extra(self) -> dict[str, np.ndarray]:
        """The ``extra`` arrays of the last checkpoint ({} if none)."""
        if not self.checkpoint_file.exists():
            return {}
        with np.load(self.checkpoint_file, allow_pickle=False) as z:
            return {k[6:]: z[k] for k in z.files if k.startswith("extra_")}


def _describe_difference(a: Spec, b: Spec) -> str:
    da, db = spec_to_dict(a), spec_to_dict(b)
    diffs = [
        f"{section}.{key}: {da[section].get(key)!r} there, {db[section].get(key)!r} now"
        for section in da
        for key in sorted(set(da[section]) | set(db[section]))
        if da[section].get(key) != db[section].get(key)
    ]
    return "; ".join(diffs[:3]) + (" ..." if len(diffs) > 3 else "")
