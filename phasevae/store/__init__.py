"""The run directory: atomic, idempotent writes and reading results back.

    RUN_DIR/spec.toml               the resolved spec
    RUN_DIR/meta.json               versions, devices, spectrum, times, point status
    RUN_DIR/metrics.parquet         one row per (grid point, eval step)
    RUN_DIR/metrics.parquet.sha256  digests of the last two metrics files written
    RUN_DIR/checkpoints/            orbax checkpoints of the training state, each
                                    with its digest (:mod:`phasevae.store.checkpoint`)

Every file is written to a temporary name in the same directory and renamed over the
target, so a kill leaves either the old or the new file, never half of one. Metrics are
written before the checkpoint they belong to; on resume, rows newer than the checkpoint
are dropped and recomputed, so re-running a chunk never duplicates rows.

Every file carries the SHA-256 digest of its own content, written in the same atomic
step (spec.toml a first comment line, meta.json a ``digest`` key, metrics.parquet a
digest of its values in its schema metadata plus page checksums), the bytes of
metrics.parquet also have theirs beside it, a checkpoint the digest of all its files,
and every read verifies them: a damaged file is refused with its name and never built
upon. Every file also names its run: a random run id, made when the run is first
claimed, in spec.toml's first line, meta.json's ``run`` key, the metrics digests'
record, each checkpoint's info and analysis.json's ``run`` (which also holds the
digests of the spec and metrics it was computed from). A file of another run, or a
run's file without its digest, is refused. Runs written by earlier versions (format
0: no digests; 1: digests but no run id) are read only after ``phasevae upgrade``
(:mod:`phasevae.store.upgrade`) rewrote them in this format.

The package (``checkpoint``: orbax checkpoints; ``upgrade``: runs of earlier formats)
may import ``phasevae.spec``, ``phasevae.data``, ``phasevae.errors`` and
``phasevae.safeio``: never the analysis, the engine or the report.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

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
from phasevae.store.checkpoint import CheckpointError, Checkpoints
from phasevae.store.records import Analysis, RecordError
from phasevae.store.runmeta import RunMeta

FORMAT = 2  # of a run directory's files: 2 names the run in each
SPEC_HEADER = re.compile(
    r"# phasevae run spec, format (\d+), run ([0-9a-f]{16}), sha256 ([0-9a-f]{64})"
)
MAX_ANALYSIS_BYTES = 256 * 2**20


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
        self.id: str | None = None  # the run id, once read or made

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
        run_id = secrets.token_hex(8)
        if self.spec_file.exists():
            stored = self.spec()
            if stored == spec:
                return
            run_id = self.run_id()  # an extension: the same run, trained longer
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
        self.write_spec(spec_to_toml(spec), run_id)

    def write_spec(self, text: str, run_id: str) -> None:
        """Write the spec's TOML ``text`` as run ``run_id``'s, with its digest."""
        self.id = run_id
        digest = sha256_text(f"{run_id}\n{text}")
        head = f"# phasevae run spec, format {FORMAT}, run {run_id}, sha256 {digest}"
        atomic_write_text(self.spec_file, f"{head}\n{text}")

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

    def in_use(self) -> bool:
        """Whether a process holds this run's lock now (a sweep is training it)."""
        try:
            fd = os.open(self.path / ".lock", os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing drops a lock taken here
        return False

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
        _, body = self._spec_text()
        try:
            return spec_from_dict(
                parse_toml(body, str(self.spec_file)), str(self.spec_file)
            )
        except SpecError as e:
            raise self._damaged(self.spec_file, str(e)) from None

    def run_id(self) -> str:
        """The id that every file of this run carries (from spec.toml's first line).

        Raises:
          RunDirError: no spec.toml, a damaged one, or one of an older format."""
        if self.id is None:
            self.id = self._spec_text()[0]
        return self.id

    def _spec_text(self) -> tuple[str, str]:
        """(run id, TOML text) of spec.toml, verified against its digest."""
        if not self.spec_file.exists():
            raise RunDirError(f"{self.path} is not a phasevae run (no spec.toml)")
        text = read_text(self.spec_file, "run spec", SPEC_BYTES, RunDirError)
        head, _, body = text.partition("\n")
        found = SPEC_HEADER.fullmatch(head)
        if found is None:
            if head.startswith("# phasevae run spec, sha256 ") or text.startswith(
                "[data]"
            ):
                raise self.older()
            raise self._damaged(self.spec_file, "its digest line is missing")
        if int(found[1]) != FORMAT:
            raise RunDirError(
                f"{self.spec_file} declares format {found[1]}; this phasevae reads "
                f"format {FORMAT}: use the phasevae that wrote it"
            )
        if found[3] != sha256_text(f"{found[2]}\n{body}"):
            raise self._damaged(self.spec_file, "its digest does not match")
        return found[2], body

    def older(self) -> RunDirError:
        """The error for a run written by an earlier phasevae."""
        return RunDirError(
            f"{self.path} was written by an earlier phasevae, whose files do not all "
            f"carry a digest and the run's id; `phasevae upgrade {self.path}` "
            "rewrites it in the current format (it vouches for the files as they "
            "are: upgrade only runs you trust)"
        )

    def meta(self) -> RunMeta | None:
        """meta.json verified against its digest and parsed (None before the first
        save).

        Raises:
          RunDirError: a damaged meta.json; RecordError: one that is not what
          phasevae writes."""
        if not self.meta_file.exists():  # before the first save finished
            return None
        self.run_id()  # an older run is refused as one
        text = read_text(self.meta_file, "run meta", META_BYTES, RunDirError)
        try:
            meta = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as e:
            raise self._damaged(self.meta_file, f"not JSON: {e}") from None
        if not isinstance(meta, dict):
            raise self._damaged(self.meta_file, "not a JSON object")
        digest = meta.pop("digest", None)
        if digest is None:
            raise self._damaged(self.meta_file, "its digest is missing")
        if digest != sha256_text(canonical_json(meta)):
            raise self._damaged(self.meta_file, "its digest does not match")
        self._mine(self.meta_file, meta.pop("run", None))
        return RunMeta.from_json(meta, str(self.meta_file))

    def write_meta(self, meta: RunMeta) -> None:
        doc = {**meta.to_json(), "run": self.run_id()}
        doc["digest"] = sha256_text(canonical_json(doc))
        atomic_write_text(self.meta_file, json.dumps(doc, indent=1, sort_keys=True))

    def _mine(self, path: Path, run_id) -> None:
        """Refuse ``path`` unless it names this run."""
        if run_id != self.run_id():
            raise RunDirError(
                f"{path} belongs to another run (run id {run_id!r}, this run is "
                f"{self.run_id()}): phasevae does not mix files of different runs; "
                "restore this run's own file, or start again in a new --out"
            )

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
        self.run_id()  # an older run is refused as one
        self._verify(self.metrics_file, "run metrics")
        try:
            table = pq.read_table(self.metrics_file, page_checksum_verification=True)
            df = table.to_pandas()
        except Exception as e:  # pyarrow raises many types for a damaged file
            raise self._damaged(self.metrics_file, _first_line(e)) from None
        digest = (table.schema.metadata or {}).get(b"phasevae_digest")
        if digest is None:
            raise self._damaged(self.metrics_file, "its content digest is missing")
        if digest.decode() != frame_digest(df):
            raise self._damaged(self.metrics_file, "its digest does not match")
        # rows written before an axis existed trained at its default
        for axis, default in LATER_AXES.items():
            df[axis] = df[axis].fillna(default) if axis in df else default
        return df

    def write_metrics(self, df: pd.DataFrame) -> None:
        table = pa.Table.from_pandas(df, preserve_index=False)
        meta = {**(table.schema.metadata or {}), b"phasevae_digest": frame_digest(df)}
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
        known = self._digests(path) if digest_record(path).exists() else []

        def write_and_record(tmp: Path) -> None:
            write(tmp)
            self.record_digests(path, [file_sha256(tmp), *known[:1]])

        atomic_write(path, write_and_record)

    def record_digests(self, path: Path, digests: list[str]) -> None:
        """Write the record beside ``path`` of its bytes' digests (newest first)."""
        doc = {"run": self.run_id(), "sha256": digests}
        atomic_write_text(digest_record(path), json.dumps(doc))

    def _verify(self, path: Path, what: str) -> None:
        """Check that ``path`` is a regular file whose bytes match a digest recorded
        for this run."""
        check_file(path, what, error=RunDirError)
        if file_sha256(path) not in self._digests(path):
            raise self._damaged(path, "its digest does not match")

    def _digests(self, path: Path) -> list[str]:
        """[current, previous] SHA-256 recorded for ``path`` by this run.

        Raises:
          RunDirError: no record, a damaged one, or one of another run."""
        record = digest_record(path)
        if not record.exists():
            raise self._damaged(path, f"the record of its digest, {record}, is missing")
        text = read_text(record, "run digest", 4 * KIB, RunDirError)
        try:
            doc = json.loads(text)
        except json.JSONDecodeError:
            raise self._damaged(record, "not JSON") from None
        digests = doc.get("sha256") if isinstance(doc, dict) else None
        if not isinstance(digests, list) or not all(
            isinstance(d, str) for d in digests
        ):
            raise self._damaged(record, "not a record of digests")
        self._mine(record, doc.get("run"))
        return digests

    def identity(self) -> dict[str, str]:
        """What an analysis of this run names: the run id and the digests of the
        spec and the metrics it was computed from."""
        run_id, body = self._spec_text()
        metrics = self._digests(self.metrics_file)[0]
        return {"id": run_id, "spec": sha256_text(body), "metrics": metrics}

    def write_analysis(
        self, doc: dict[str, Any], identity: dict[str, str] | None = None
    ) -> None:
        """Write analysis.json: ``doc`` with this run's :meth:`identity` (or the one
        given) and a digest."""
        doc = {**doc, "run": identity or self.identity()}
        doc["digest"] = sha256_text(canonical_json(doc))
        atomic_write_text(self.path / "analysis.json", json.dumps(doc, indent=1))

    def analysis(self) -> Analysis:
        """analysis.json, verified against its digest, refused unless it was
        computed from this run's current spec and metrics, and parsed as its record
        (an older format version migrated).

        Raises:
          RunDirError: missing, damaged, of another run, out of date, or not what
            ``phasevae analyze`` writes."""
        path = self.path / "analysis.json"
        redo = f"rerun `phasevae analyze {self.path}`"
        self.existing()  # a linked analysis.json is refused as a link
        self.run_id()  # an older run is refused as one
        if not path.exists():
            raise RunDirError(f"{self.path} has no analysis.json; {redo} first")
        text = read_text(path, "analysis.json", MAX_ANALYSIS_BYTES, RunDirError)
        try:
            doc = json.loads(text)
        except (ValueError, RecursionError) as e:
            raise RunDirError(f"{path} is damaged ({e}); {redo}") from None
        if not isinstance(doc, dict) or "digest" not in doc:
            raise RunDirError(f"{path} is damaged (its digest is missing); {redo}")
        digest = doc.pop("digest")
        if digest != sha256_text(canonical_json(doc)):
            raise RunDirError(f"{path} is damaged (its digest does not match); {redo}")
        if doc.pop("run", None) != self.identity():
            raise RunDirError(
                f"{path} is not an analysis of this run's current spec and metrics "
                f"(it was copied from another run, or the run changed since); {redo}"
            )
        try:
            return Analysis.from_json(doc)
        except RecordError as e:
            raise RunDirError(
                f"{path} is not what phasevae analyze writes ({e}); {redo}"
            ) from None

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
        info = {
            "step": int(step),
            "ids": list(ids),
            "schedule": schedule,
            "run": self.run_id(),
        }
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
        if info.get("run") != self.run_id():
            raise RunDirError(
                f"{self.checkpoints.dir} holds a checkpoint of another run (run id "
                f"{info.get('run')!r}, this run is {self.run_id()}); restore this "
                f"run's own, or delete {self.checkpoints.dir} to train again from "
                "step 0"
            )
        return {**info, "leaves": leaves, "extra": extra}


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def digest_record(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def canonical_json(doc: dict) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def frame_digest(df: pd.DataFrame) -> str:
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
