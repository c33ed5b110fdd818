"""Checkpoints of the training state with orbax-checkpoint: sharded, per process,
asynchronous, and verified.

    RUN_DIR/checkpoints/<k>/        save number k (orbax's step), committed by orbax
                                    (written under a temporary name, renamed whole):
                                    ``state`` each process's shards of the stacked
                                    state (models axis padded to the device count),
                                    ``info`` (JSON: training step, point ids, models,
                                    schedule), ``extra`` (host arrays: warm starts)
    RUN_DIR/checkpoints/<k>.sha256  SHA-256 of every file of save k, written by
                                    process 0 once orbax has committed it

A save returns as soon as the state has been copied off the devices (training goes on
while the files are written); the next save, and the end of training, wait for it. A
checkpoint is read back as host arrays without the padding, so it resumes on any
device count. A save without its digest (a kill between the commit and the digest) is
skipped for the one before it; a save whose files do not match their digest is
refused by name (orbax itself does not checksum the data).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import re
import shutil
import threading
import warnings
from pathlib import Path

import jax
import numpy as np

from phasevae.safeio import KIB, atomic_write_text, read_text

KEEP = 2  # saves kept: the newest, and the one before while the newest is written


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message names the file."""


class Checkpoints:
    """The checkpoints of one run directory."""

    def __init__(self, directory: Path):
        self.dir = directory
        self._manager = None
        self._sealing: threading.Thread | None = None
        self._failure: BaseException | None = None

    def exists(self) -> bool:
        return bool(self._committed())

    def sealed_at(self) -> float | None:
        """When the newest save was sealed (a time.time() stamp), or None."""
        records = [p.stat().st_mtime for p in self.dir.glob("*.sha256")]
        return max(records) if records else None

    def legacy(self) -> Path | None:
        """The single-file checkpoint of phasevae before orbax, if there is one."""
        path = self.dir / "state.npz"
        return path if path.exists() else None

    def save(self, leaves, models: int, info: dict, extra: dict) -> None:
        """Start saving ``leaves`` (the stacked state's leaves, placed; the first
        ``models`` rows are real), ``info`` (JSON) and ``extra`` (host arrays);
        every process calls it. Returns once the arrays are off the devices."""
        import orbax.checkpoint as ocp

        self.wait()
        manager = self._open(create=True)
        k = max(self._committed(), default=-1) + 1
        items = {
            "state": ocp.args.PyTreeSave({f"{i:05d}": a for i, a in enumerate(leaves)}),
            "info": ocp.args.JsonSave({**info, "models": models}),
        }
        if extra:
            items["extra"] = ocp.args.PyTreeSave(dict(extra))
        try:
            manager.save(k, args=ocp.args.Composite(**items))
        except Exception as e:
            full = _full(e, self.dir)
            if full is None:
                raise
            raise full from None
        if jax.process_index() == 0:
            self._sealing = threading.Thread(target=self._seal, args=(k,), daemon=True)
            self._sealing.start()

    def wait(self) -> None:
        """Block until the last save is committed and sealed; re-raise its error."""
        if self._sealing is not None:
            self._sealing.join()
            self._sealing = None
        if self._manager is not None:
            self._manager.wait_until_finished()
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise _full(failure, self.dir) or failure

    def _seal(self, k: int) -> None:
        """(A thread) once save k is committed, record its digest; drop the digests
        of saves orbax has removed."""
        try:
            self._manager.wait_until_finished()
            atomic_write_text(self.dir / f"{k}.sha256", _tree_sha256(self.dir / str(k)))
            for record in self.dir.glob("*.sha256"):
                if not (self.dir / record.stem).is_dir():
                    record.unlink(missing_ok=True)
        except BaseException as e:  # handed to the main thread by wait()
            self._failure = e

    def load(self) -> tuple[list[np.ndarray], dict, dict] | None:
        """(leaves without the padding, info, extra) of the newest sealed save, or
        None if there is none. Raises CheckpointError for a damaged one."""
        import orbax.checkpoint as ocp

        sealed = [k for k in self._committed() if (self.dir / f"{k}.sha256").exists()]
        if not sealed:
            return None
        k = max(sealed)
        where = self.dir / str(k)
        record = self.dir / f"{k}.sha256"
        want = read_text(record, "checkpoint digest", 4 * KIB, CheckpointError).strip()
        if _tree_sha256(where) != want:
            raise CheckpointError(f"{where} is damaged: its digest does not match")
        manager = self._open(create=False)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # orbax: sharding read from the file
                meta = manager.item_metadata(k)
                args = {"info": ocp.args.JsonRestore()}
                for name in ("state", "extra"):
                    if name in meta and meta[name] is not None:
                        as_numpy = jax.tree.map(
                            lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                            dict(meta[name]),
                        )
                        args[name] = ocp.args.PyTreeRestore(restore_args=as_numpy)
                got = manager.restore(k, args=ocp.args.Composite(**args))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{where} is damaged: {e}") from None
        info = dict(got["info"])
        state = got["state"] if "state" in args else {}
        leaves = [np.asarray(state[key])[: info["models"]] for key in sorted(state)]
        extra = {key: np.asarray(v) for key, v in (got.get("extra") or {}).items()}
        return leaves, info, extra

    def _committed(self) -> list[int]:
        """Save numbers orbax committed (temporary directories of an interrupted
        save are not among them)."""
        if not self.dir.is_dir():
            return []
        return sorted(
            int(p.name)
            for p in self.dir.iterdir()
            if p.is_dir()
            and re.fullmatch(r"\d+", p.name)
            and (p / "_CHECKPOINT_METADATA").exists()
        )

    def _open(self, create: bool):
        if self._manager is None:
            import orbax.checkpoint as ocp

            logging.getLogger("absl").setLevel(logging.ERROR)
            self._manager = ocp.CheckpointManager(
                self.dir.absolute(),
                item_handlers={
                    "state": ocp.PyTreeCheckpointHandler(),
                    "info": ocp.JsonCheckpointHandler(),
                    "extra": ocp.PyTreeCheckpointHandler(),
                },
                options=ocp.CheckpointManagerOptions(
                    max_to_keep=KEEP,
                    enable_async_checkpointing=True,
                    create=create,
                    cleanup_tmp_directories=True,  # of saves cut short by a kill
                ),
            )
        return self._manager

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _full(e: BaseException, where: Path) -> CheckpointError | None:
    """A full disk, as orbax and the OS say it (``RESOURCE_EXHAUSTED``, ENOSPC,
    EDQUOT), as a CheckpointError that says what to do; None for anything else."""
    text = f"{type(e).__name__}: {e}"
    codes = (errno.ENOSPC, errno.EDQUOT)
    if (
        "RESOURCE_EXHAUSTED" in text
        or getattr(e, "errno", None) in codes
        or ("No space left" in text)
    ):
        return CheckpointError(
            f"{where}: no space left on the device while saving a checkpoint; the "
            "last complete save is intact: free space and rerun to resume"
        )
    return None


def _tree_sha256(root: Path) -> str:
    """SHA-256 over the relative paths and bytes of every file under ``root``."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode() + b"\0")
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    return h.hexdigest()
