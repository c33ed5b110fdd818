"""The run directory: atomic, idempotent writes and reading results back.

    RUN_DIR/spec.toml               the resolved spec
    RUN_DIR/meta.json               versions, devices, spectrum, times, point status
    RUN_DIR/metrics.parquet         one row per (grid point, eval step)
    RUN_DIR/metrics.parquet.sha256  digests of the last two metrics files written
    RUN_DIR/checkpoints/            orbax checkpoints of the training state, each
                                    with its digest (:mod:`phasevae.checkpoint`)

Every file is written to a temporary name in the same directory and renamed over the
target, so a kill leaves either the old or the new file, never half of one. Metrics are
written before the checkpoint they belong to; on resume, rows newer than the checkpoint
are dropped and recomputed, so re-running a chunk never duplicates rows.

Every file carries the SHA-256 digest of its own content, written in the same atomic
step (spec.toml a first comment line, meta.json a ``digest`` key, metrics.parquet a
digest of its values in its schema metadata plus page checksums), the bytes of
metrics.parquet also have theirs beside it, a checkpoint the digest of all its files,
and every read verifies them: a damaged file is refused with its name and never built
upon. Files written before digests are read as they are.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from phasevae.checkpoint import CheckpointError, Checkpoints
from phasevae.errors import BadInput
from phasevae.safeio import (
    KIB,
    META_BYTES,
    SPEC_BYTES,
    atomic_write,
    atomic_write_text,
    check_file,
    read_text,
)
from phasevae.spec import (
    LATER_AXES,
    Spec,
    SpecError,
    parse_toml,
    spec_from_dict,
    spec_to_dict,
    spec_to_toml,
)

SPEC_HEADER = "# phasevae run spec, sha256 "


class RunDirError(BadInput):
    """A run directory that is missing, unfinished or belongs to another spec."""


class RunDir:
    """Paths and atomic I/O of one run directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.spec_file = self.path / "spec.toml"
        self.meta_file = self.path / "meta.json"
        self.metrics_file = self.path / "metrics.parquet"
        self.checkpoints = Checkpoints(self.path / "checkpoints")

    def existing(self) -> RunDir:
        """This run directory, or RunDirError when it is missing, not a directory
        or holds links (:meth:`check_links`)."""
        if not self.path.is_dir():
            what = "is not a directory" if self.path.exists() else "does not exist"
            raise RunDirError(f"run directory {self.path} {what}")
        return self.check_links()

    def check_links(self) -> RunDir:
        """This run directory, or RunDirError when any of its own files or folders
        (or what its folders hold, one level down) is a symbolic link: a run writes
        and deletes only what it made, never through a link to somewhere else (a
        linked figures/ was written into, a linked checkpoints/ had an unrelated
        folder deleted by the checkpoint's cleanup)."""
        if not self.path.is_dir():
            return self
        found = []
        for entry in self.path.iterdir():
            if entry.is_symlink():
                found.append(entry)
            elif entry.is_dir():
                found += [p for p in entry.iterdir() if p.is_symlink()]
        if found:
            raise RunDirError(
                f"{self.path} holds symbolic links ({', '.join(map(str, found[:3]))}"
                f"{' ...' if len(found) > 3 else ''}); phasevae writes only real files "
                "and folders of a run: replace the links by what they point to, or "
                "use a new --out"
            )
        return self

    def claim(self, spec: Spec, extendable: bool = False) -> None:
        """Make the directory for ``spec``, or check that it already holds ``spec``.
        With ``extendable``, a stored spec that differs from ``spec`` only in a
        smaller ``train.steps`` is an extension: the stored spec is replaced by
        ``spec`` and the run continues from its checkpoint to the new length.

        Raises:
          RunDirError: the directory holds a run of a different spec.
        """
        if self.spec_file.exists():
            stored = self.spec()
            if stored == spec:
                return
            if not (extendable and lengthens(stored, spec)):
                more = (
                    " (a larger train.steps alone continues a run)"
                    if extendable
                    else ""
                )
                raise RunDirError(
                    f"{self.path} already holds a run of a different spec "
                    f"({_describe_difference(stored, spec)}); choose another --out "
                    f"or rerun with the same spec to continue it{more}"
                )
        elif self.path.exists() and any(p.name != ".lock" for p in self.path.iterdir()):
            raise RunDirError(
                f"{self.path} exists, is not empty and is not a phasevae run; "
                f"choose another --out"
            )
        text = spec_to_toml(spec)
        atomic_write_text(self.spec_file, f"{SPEC_HEADER}{_sha256(text)}\n{text}")

    @contextlib.contextmanager
    def lock(self):
        """Hold an exclusive lock on the run directory for the block. The kernel drops
        it when the process dies, so a killed run never leaves a stale lock.

        Raises:
          RunDirError: another process holds it.
        """
        created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        self.check_links()
        try:
            with self._locked():
                yield
        finally:
            # a run that failed before writing anything leaves no directory behind
            with contextlib.suppress(OSError):
                if created and [p.name for p in self.path.iterdir()] == [".lock"]:
                    (self.path / ".lock").unlink()
                    self.path.rmdir()

    @contextlib.contextmanager
    def _locked(self):
        try:  # never through a link (a+ truncated and wrote the link's target)
            fd = os.open(
                self.path / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644
            )
        except OSError as e:
            raise RunDirError(f"{self.path / '.lock'}: {e.strerror}") from None
        with open(fd, "r+") as f:
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
        """The run's spec, verified against its digest.

        Raises:
          RunDirError: no spec.toml, or a damaged one."""
        if not self.spec_file.exists():
            if self.path.is_dir() and {p.name for p in self.path.iterdir()} <= {
                ".lock"
            }:
                raise RunDirError(
                    f"{self.path} holds no run yet (its sweep stopped before writing "
                    "anything); rerun that sweep command"
                )
            raise RunDirError(f"{self.path} is not a phasevae run (no spec.toml)")
        text = read_text(self.spec_file, "run spec", SPEC_BYTES, RunDirError)
        head, _, body = text.partition("\n")
        if head.startswith(SPEC_HEADER):
            if head[len(SPEC_HEADER) :] != _sha256(body):
                raise self._damaged(self.spec_file, "its digest does not match")
        elif text.startswith("[data]"):
            body = text  # written before digests, by tomli_w
        else:
            raise self._damaged(self.spec_file, "its digest line is missing")
        try:
            return spec_from_dict(
                parse_toml(body, str(self.spec_file)), str(self.spec_file)
            )
        except SpecError as e:
            raise self._damaged(self.spec_file, str(e)) from None

    def meta(self) -> dict[str, Any]:
        """meta.json verified against its digest ({} before the first save).

        Raises:
          RunDirError: a damaged meta.json."""
        if not self.meta_file.exists():  # before the first save finished
            return {}
        text = read_text(self.meta_file, "run meta", META_BYTES, RunDirError)
        try:
            meta = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as e:
            raise self._damaged(self.meta_file, f"not JSON: {e}") from None
        if not isinstance(meta, dict):
            raise self._damaged(self.meta_file, "not a JSON object")
        digest = meta.pop("digest", None)
        if digest is not None and digest != _sha256(_canonical(meta)):
            raise self._damaged(self.meta_file, "its digest does not match")
        return meta

    def write_meta(self, meta: dict[str, Any]) -> None:
        doc = {**meta, "digest": _sha256(_canonical(meta))}
        atomic_write_text(self.meta_file, json.dumps(doc, indent=1, sort_keys=True))

    def _damaged(self, path: Path, why: str) -> RunDirError:
        return RunDirError(
            f"{path} is damaged ({why}); phasevae does not build on damaged files: "
            f"restore it, or start again in a new --out"
        )

    def metrics(self) -> pd.DataFrame:
        """metrics.parquet verified: its bytes against the digests beside it, its
        pages against their checksums and its values against the content digest.

        Raises:
          RunDirError: missing or damaged."""
        if not self.metrics_file.exists():
            raise RunDirError(f"{self.path} has no metrics yet (run phasevae sweep)")
        self._verify(self.metrics_file, "run metrics")
        try:
            table = pq.read_table(self.metrics_file, page_checksum_verification=True)
            df = table.to_pandas()
        except Exception as e:  # pyarrow raises many types for a damaged file
            raise self._damaged(self.metrics_file, _first_line(e)) from None
        digest = (table.schema.metadata or {}).get(b"phasevae_digest")
        if digest is not None and digest.decode() != _frame_digest(df):
            raise self._damaged(self.metrics_file, "its digest does not match")
        # rows written before an axis existed trained at its default
        for axis, default in LATER_AXES.items():
            df[axis] = df[axis].fillna(default) if axis in df else default
        return df

    def write_metrics(self, df: pd.DataFrame) -> None:
        table = pa.Table.from_pandas(df, preserve_index=False)
        meta = {**(table.schema.metadata or {}), b"phasevae_digest": _frame_digest(df)}
        table = table.replace_schema_metadata(meta)
        self._write_verified(
            self.metrics_file,
            lambda tmp: pq.write_table(table, tmp, write_page_checksum=True),
        )

    def _write_verified(self, path: Path, write: Callable[[Path], None]) -> None:
        """Write ``path`` atomically; the digest of the new file is recorded beside
        it (``<name>.sha256``, with the previous file's, so that a kill between the
        two renames leaves a pair that verifies) before the file is renamed into
        place."""
        known = self._digests(path)

        def write_and_record(tmp: Path) -> None:
            write(tmp)
            digests = [_file_sha256(tmp), *known[:1]]
            atomic_write_text(_digest_file(path), json.dumps(digests))

        atomic_write(path, write_and_record)

    def _verify(self, path: Path, what: str) -> None:
        """Check that ``path`` is a regular file whose bytes match a recorded digest
        (files written before digests pass)."""
        check_file(path, what, error=RunDirError)
        known = self._digests(path)
        if known and _file_sha256(path) not in known:
            raise self._damaged(path, "its digest does not match")

    def _digests(self, path: Path) -> list[str]:
        """[current, previous] SHA-256 recorded for ``path`` ([] if none)."""
        record = _digest_file(path)
        if not record.exists():
            return []
        text = read_text(record, "run digest", 4 * KIB, RunDirError)
        try:
            digests = json.loads(text)
        except json.JSONDecodeError:
            raise self._damaged(record, "not JSON") from None
        if not isinstance(digests, list) or not all(
            isinstance(d, str) for d in digests
        ):
            raise self._damaged(record, "not a list of digests")
        return digests

    def save_checkpoint(
        self,
        leaves: list,
        models: int,
        step: int,
        ids: list[str],
        schedule: str | None = None,
        extra: dict[str, np.ndarray] | None = None,
    ) -> None:
        """Start saving the stacked state's (placed) leaves, of which the first
        ``models`` rows are real, after global step ``step``, with the point id of
        each slot, the adaptive ``schedule`` (JSON) and ``extra`` host arrays
        (bookkeeping that must change together with the state). Every process calls
        it; it returns while the files are written (:meth:`wait_for_checkpoint`)."""
        info = {"step": int(step), "ids": list(ids), "schedule": schedule}
        try:
            self.checkpoints.save(leaves, models, info, extra or {})
        except CheckpointError as e:
            raise RunDirError(str(e)) from None

    def wait_for_checkpoint(self) -> None:
        """Block until the last checkpoint is on disk and sealed."""
        try:
            self.checkpoints.wait()
        except CheckpointError as e:
            raise RunDirError(str(e)) from None

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The last checkpoint: ``leaves`` (host arrays, one row per model),
        ``step``, ``ids``, ``schedule`` (JSON or None) and ``extra``; None if there
        is none. Raises RunDirError for a damaged one, or one of an older format."""
        legacy = self.checkpoints.legacy()
        if legacy is not None:
            raise RunDirError(
                f"{legacy} is a checkpoint of an earlier phasevae (before orbax): "
                "finish this run with that version, or delete "
                f"{legacy.parent} to train it again from step 0"
            )
        try:
            found = self.checkpoints.load()
        except CheckpointError as e:
            raise RunDirError(
                f"{e}; delete {self.checkpoints.dir} to train again from step 0"
            ) from None
        if found is None:
            return None
        leaves, info, extra = found
        return {**info, "leaves": leaves, "extra": extra}


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _digest_file(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _canonical(doc: dict) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def _frame_digest(df: pd.DataFrame) -> str:
    """SHA-256 of a table's column names and values, independent of how a pandas or
    pyarrow version names the dtypes (numbers by their bytes as numpy arrays, every
    NaN as the same NaN, the rest by their text)."""
    h = hashlib.sha256()
    for name in df.columns:
        values = df[name].to_numpy()
        h.update(f"{name}:{values.dtype.kind in 'biuf'}:{len(values)};".encode())
        if values.dtype.kind == "f":  # one NaN: its payload may not survive a write
            values = np.where(np.isnan(values), np.nan, values)
        if values.dtype.kind in "biuf":
            h.update(np.ascontiguousarray(values).tobytes())
        else:
            h.update("\x1f".join(map(str, values.tolist())).encode("utf-8", "replace"))
    return h.hexdigest()


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def lengthens(old: Spec, new: Spec) -> bool:
    """Whether ``new`` is ``old`` trained longer: equal but for a larger
    ``train.steps``."""
    same = dataclasses.replace(
        new, train=dataclasses.replace(new.train, steps=old.train.steps)
    )
    return same == old and new.train.steps > old.train.steps


def _describe_difference(a: Spec, b: Spec) -> str:
    da, db = spec_to_dict(a), spec_to_dict(b)
    diffs = [
        f"{section}.{key}: {da[section].get(key)!r} there, {db[section].get(key)!r} now"
        for section in da
        for key in sorted(set(da[section]) | set(db[section]))
        if da[section].get(key) != db[section].get(key)
    ]
    return "; ".join(diffs[:3]) + (" ..." if len(diffs) > 3 else "")
