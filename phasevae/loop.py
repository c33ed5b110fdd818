"""The chunk loop of a fixed grid and what every loop shares: training runs in chunks of
``eval_every`` steps; after each chunk the metrics come back to the host (the only sync
point), and every ``CHECKPOINT_SECONDS`` (and at the end, and on SIGTERM) metrics,
checkpoint and meta are written atomically by process 0, which holds the run
directory's lock. Rerunning on the same directory resumes from the last checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import jax
import numpy as np
import pandas as pd

from phasevae import theory
from phasevae.analysis import ACTIVE_KL
from phasevae.data import Dataset
from phasevae.errors import TERM_REQUESTED
from phasevae.model import collapse_eigenvalue
from phasevae.placement import any_process, to_host
from phasevae.spec import Spec, spec_to_dict
from phasevae.store import RunDir, RunDirError
from phasevae.train import Metrics

CHECKPOINT_SECONDS = 30.0

# called after each chunk with (chunks done, chunks in all, seconds since start)
ProgressFn = Callable[[int, int, float], None]


@dataclass
class SweepResult:
    run: RunDir
    metrics: pd.DataFrame  # the full table, as in metrics.parquet
    meta: dict
    diverged: list[str]  # point ids flagged diverged


class Preempted(Exception):
    """SIGTERM arrived: the current chunk was finished and checkpointed."""

    def __init__(self, run: RunDir, step: int):
        super().__init__(
            f"stopped by SIGTERM after step {step}; everything up to it is saved in "
            f"{run.path}. Rerun the same command to resume."
        )


@contextlib.contextmanager
def sigterm_flag():
    """A flag that SIGTERM sets, instead of killing the process, for the block."""
    stop = threading.Event()
    if TERM_REQUESTED.is_set():  # arrived during start-up: stop at the first chunk
        stop.set()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    old = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        yield stop
    finally:
        signal.signal(signal.SIGTERM, old)


def train_grid(
    program, spec, data, run, progress, checkpoint_seconds, stop, shard
) -> SweepResult:
    grid, n, place, trainer = program.grid, program.n, program.place, program.trainer
    state = program.state
    treedef = jax.tree.structure(state)
    every, total = spec.train.eval_every, spec.train.steps
    done, frames = 0, []

    checkpoint = run.load_checkpoint()
    if checkpoint is not None:
        leaves, done, ids = checkpoint
        if ids != list(grid["point_id"]):
            raise RunDirError(f"{run.path}: checkpoint does not match the spec's grid")
        state = place.models(jax.tree.unflatten(treedef, leaves))
        if not run.metrics_file.exists():
            raise RunDirError(
                f"{run.path} has a checkpoint at step {done} but its metrics.parquet "
                "is gone: the evaluations up to that step cannot be recovered; delete "
                f"{run.checkpoint_file.parent} to train again from step 0"
            )
        old = run.metrics()
        frames.append(old[old["step"] <= done])

    meta = base_meta(spec, data, grid, run.meta())
    meta["shard"] = list(shard) if shard else None
    if done == total:
        return make_result(run, frames, meta)

    meta["wall_times"]["compile_s"] = program.compile_s
    meta["status"] = "running"

    trained_before = meta["wall_times"]["train_s"]
    t_train, last_save = time.perf_counter(), time.perf_counter()
    n_chunks = total // every
    for c in range(done // every, n_chunks):
        state, metrics = program.run(state, c * every)
        done = (c + 1) * every
        diverged, metrics = to_host((state.diverged, metrics))
        diverged, metrics = diverged[:n], jax.tree.map(lambda a: a[:n], metrics)
        frames.append(metrics_frame(grid, metrics, diverged, done, data))
        elapsed = time.perf_counter() - t_train
        stopping = any_process(stop.is_set())
        due = any_process(time.perf_counter() - last_save >= checkpoint_seconds)
        if done == total or due or stopping:
            meta["wall_times"]["train_s"] = trained_before + elapsed
            meta["compiles"] = trainer.traces  # traces of the chunk program: 1
            save(run, frames, state, done, grid, meta, diverged)
            last_save = time.perf_counter()
        if progress is not None and jax.process_index() == 0:
            progress(c + 1, n_chunks, elapsed)
        if stopping and done < total:
            raise Preempted(run, done)
    meta["status"] = "complete"
    if jax.process_index() == 0:
        run.write_meta(meta)
    return make_result(run, frames, meta)


def metrics_frame(
    grid: pd.DataFrame, m: Metrics, diverged: np.ndarray, step, data: Dataset
) -> pd.DataFrame:
    """The long-format rows of one evaluation: one per grid point; ``step`` one for
    all or one per row."""
    df = grid.copy()
    df["step"] = np.asarray(step, np.int64)
    df["loss"] = np.asarray(m.loss, np.float64)
    df["elbo"] = -df["loss"]
    df["recon"] = np.asarray(m.recon, np.float64)
    df["mse"] = np.asarray(m.mse, np.float64)
    df["kl"] = np.asarray(m.kl, np.float64)
    for j in range(m.kl_dim.shape[1]):
        df[f"kl_dim_{j}"] = np.asarray(m.kl_dim[:, j], np.float64)
    for j in range(m.var_dim.shape[1]):
        df[f"var_dim_{j}"] = np.asarray(m.var_dim[:, j], np.float64)
    df["mi"] = np.asarray(m.mi, np.float64)
    df["decoder_sigma2"] = np.asarray(m.decoder_sigma2, np.float64)
    df["collapse_eigenvalue"] = _collapse_eigenvalues(m.collapse_grams, len(df))
    df["active_units"] = (m.kl_dim > ACTIVE_KL).sum(axis=1).astype(np.int64)
    trace, dim = float(np.sum(data.eigenvalues)), data.x.shape[1]
    sigma2 = df["decoder_sigma2"].to_numpy()
    df["collapse_elbo"] = -theory.collapse_loss(trace, dim, sigma2)
    df["diverged"] = diverged.astype(bool)
    return df


def _collapse_eigenvalues(grams, n: int) -> np.ndarray:
    """lambda_c per model from its grams (NaN without them or where not finite)."""
    out = np.full(n, np.nan)
    if grams is None:
        return out
    grams = [np.asarray(g, np.float64) for g in grams]
    ok = np.all([np.isfinite(g).all(axis=(1, 2)) for g in grams], axis=0)
    if ok.any():
        out[ok] = collapse_eigenvalue(*(g[ok] for g in grams))
    return out


def save(run, frames, state, done, grid, meta, diverged) -> None:
    """Metrics, then the checkpoint they belong to, then meta; written by process 0
    (every process takes part in gathering the state)."""
    n = len(grid)
    leaves = [a[:n] for a in to_host(jax.tree.leaves(state))]  # padding dropped
    meta["steps_done"] = done
    meta["points"] = {
        pid: ("diverged" if d else "ok")
        for pid, d in zip(grid["point_id"], diverged, strict=True)
    }
    if jax.process_index() != 0:
        return
    run.write_metrics(pd.concat(frames, ignore_index=True))
    run.save_checkpoint(leaves, done, list(grid["point_id"]))
    run.write_meta(meta)


def make_result(run: RunDir, frames: list[pd.DataFrame], meta: dict) -> SweepResult:
    df = pd.concat(frames, ignore_index=True)
    diverged = [pid for pid, s in meta.get("points", {}).items() if s == "diverged"]
    return SweepResult(run, df, meta, diverged)


def base_meta(spec: Spec, data: Dataset, grid: pd.DataFrame, old: dict) -> dict:
    versions = {"python": platform.python_version()}
    for pkg in ("phasevae", "jax", "jaxlib", "flax", "optax", "numpy", "pandas"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    wall = old.get("wall_times", {})
    return {
        **old,
        "spec": spec_to_dict(spec),
        "versions": versions,
        "git_revision": _git_revision(),
        "argv": sys.argv,
        "host": platform.node(),
        # the settings that change how JAX and XLA run (device split, threads, ...)
        "environment": {
            k: v for k, v in os.environ.items() if k.startswith(("XLA_", "JAX_"))
        },
        "devices": [str(d) for d in jax.devices()],
        "processes": jax.process_count(),
        "platform": jax.default_backend(),
        "spectrum": data.spectrum(),
        "grid_size": len(grid),
        "steps": spec.train.steps,
        "steps_done": old.get("steps_done", 0),
        "wall_times": {
            "compile_s": wall.get("compile_s"),
            "train_s": wall.get("train_s", 0.0),
        },
        "status": old.get("status", "running"),
    }


def _git_revision() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None
