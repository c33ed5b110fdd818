"""The one chunk loop (:func:`train`): training runs in chunks of ``eval_every``
steps; after each chunk the metrics come back to the host (the only sync point), the
schedule's policies (:mod:`phasevae.engine.schedule`: the plain grid in lockstep, or
retire/refill, refinement rounds, hysteresis chains, warm starts) decide what each
slot trains next, and every ``CHECKPOINT_SECONDS`` (and at the end, and on SIGTERM)
metrics, checkpoint and meta are written atomically by process 0, which holds the
run directory's lock. Rerunning on the same directory resumes from the last
checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pandas as pd

from phasevae.analysis import theory
from phasevae.analysis.constants import COLLAPSED_KL
from phasevae.data import Dataset
from phasevae.engine.devices import CACHE, Program, any_process, to_host
from phasevae.engine.schedule import (
    EMPTY,
    Chunk,
    Host,
    Schedule,
    pack_warm,
    policies,
    refill,
    rows_up_to,
    unpack_warm,
    warm_starts,
)
from phasevae.engine.step import Metrics
from phasevae.errors import TERM_REQUESTED
from phasevae.models.vae import collapse_eigenvalue
from phasevae.spec import Spec, spec_to_dict
from phasevae.store import RunDir, RunDirError
from phasevae.store.runmeta import (
    COMPLETE,
    DIVERGED,
    OK,
    RUNNING,
    RunMeta,
    WallTimes,
)

CHECKPOINT_SECONDS = 30.0

# called after each chunk with (chunks done, chunks in all, seconds since start)
ProgressFn = Callable[[int, int, float], None]
# called after each chunk with (that chunk's metrics rows, the run's meta)
ChunkFn = Callable[[pd.DataFrame, RunMeta], None]


@dataclass
class SweepResult:
    run: RunDir
    metrics: pd.DataFrame  # the full table, as in metrics.parquet
    meta: RunMeta

    @property
    def diverged(self) -> list[str]:
        """The ids of the points flagged diverged."""
        return self.meta.diverged


class Preempted(Exception):
    """SIGTERM or a first Ctrl-C arrived: the current chunk was finished and
    checkpointed. ``status`` is the exit status the signal's name calls for."""

    def __init__(self, run: RunDir, step: int, signum: int = signal.SIGTERM):
        name = signal.Signals(signum).name
        self.status = 128 + signum
        super().__init__(
            f"stopped by {name} after step {step}; everything up to it is saved in "
            f"{run.path}. Rerun the same command to resume."
        )


class StopFlag(threading.Event):
    """Set by SIGTERM or a first Ctrl-C (SIGINT); ``signum`` says which."""

    signum = signal.SIGTERM


@contextlib.contextmanager
def sigterm_flag():
    """A flag that SIGTERM and a first Ctrl-C set, instead of stopping the process,
    for the block: training finishes its chunk, saves and stops. A second Ctrl-C
    exits at once (status 130) without waiting for anything: the last complete
    save stays valid (a save is sealed only once whole), and no thread is left to
    print a traceback."""
    stop = StopFlag()
    if TERM_REQUESTED.is_set():  # arrived during start-up: stop at the first chunk
        stop.set()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def on_signal(signum, _frame):
        if signum == signal.SIGINT and stop.is_set():
            os.write(
                2,
                b"phasevae: interrupted again: stopped at once; the last "
                b"complete save is intact, rerun the same command to resume\n",
            )
            os._exit(130)
        stop.signum = signum
        stop.set()
        if signum == signal.SIGINT:
            os.write(
                2,
                b"phasevae: interrupted: finishing the chunk and saving "
                b"(Ctrl-C again to stop at once)\n",
            )

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def train(
    program: Program,
    spec: Spec,
    data: Dataset,
    grid: pd.DataFrame,
    run: RunDir,
    stop: threading.Event,
    shard: tuple[int, int] | None = None,
    checkpoint_seconds: float = CHECKPOINT_SECONDS,
    progress: ProgressFn | None = None,
    on_chunk: ChunkFn | None = None,
) -> SweepResult:
    """THE chunk loop: train ``grid`` with ``program`` into ``run`` (from its
    checkpoint if there is one), one chunk of ``eval_every`` steps at a time, the
    schedule (:mod:`phasevae.engine.schedule`) deciding which point each slot trains."""
    host, state = _start(program, spec, grid, run)
    sched = host.sched
    meta = base_meta(spec, data, sched.grid, run.meta(), shard)
    if sched.done() and meta.complete:
        return make_result(run, host.frames, meta)
    trained_before = meta.wall_times.train_s
    meta = meta.replace(
        wall_times=WallTimes(program.compile_s, trained_before), status=RUNNING
    )
    # the first save comes after the first chunk (the compile came before it)
    t_train, last_save = time.perf_counter(), -float("inf")
    every = spec.train.eval_every
    host.model_steps = meta.model_steps or 0
    rules = policies(spec, meta.spectrum)
    points = program.points_for(sched.slot_rows())
    saved = False
    try:
        while not sched.done():
            state, metrics = program.run(state, program.start(sched.slot_step), points)
            diverged, metrics = to_host((state.diverged, metrics))
            diverged, metrics = jax.tree.map(
                lambda a: a[: program.n], (diverged, metrics)
            )
            busy = sched.busy
            sched.slot_step[busy] += every
            host.model_steps += int(busy.sum()) * every
            rows = sched.slot_rows()
            frame = metrics_frame(rows, metrics, diverged, sched.slot_step, data)[busy]
            host.frames.append(frame)
            chunk = Chunk(frame, diverged, busy, state)
            for policy in rules:
                policy.after_chunk(host, chunk)
            refilled = sched.fill()
            if refilled.any():
                state = refill(program, state, sched, refilled, host.warm, spec)
                points = program.points_for(sched.slot_rows())
            elapsed = time.perf_counter() - t_train
            stopping = any_process(stop.is_set())
            due = any_process(time.perf_counter() - last_save >= checkpoint_seconds)
            if sched.done() or due or stopping:
                meta = meta.replace(
                    wall_times=WallTimes(program.compile_s, trained_before + elapsed),
                    compiles=program.trainer.traces,  # of the chunk program: 1
                )
                meta = _save(run, host, state, meta)
                saved, last_save = sched.done(), time.perf_counter()
            if jax.process_index() == 0:
                if on_chunk is not None:
                    on_chunk(frame, meta)
                if progress is not None:
                    progress(*sched.progress(every, spec.train.steps), elapsed)
            if stopping and not sched.done():
                run.wait_for_checkpoint()
                raise Preempted(run, int(sched.slot_step.max()), stop.signum)
    except BaseException:
        with contextlib.suppress(Exception):  # keep what was being written
            run.wait_for_checkpoint()
        raise
    meta = meta.replace(status=COMPLETE)
    if not saved:  # resumed from a final checkpoint whose meta was not written
        meta = _save(run, host, state, meta)
    run.wait_for_checkpoint()
    if jax.process_index() == 0:
        run.write_meta(meta)
    return make_result(run, host.frames, meta)


def _start(program, spec, grid, run) -> tuple[Host, Any]:
    """The host state (schedule, metrics so far, warm-start parameters) and the
    device state: from the run's checkpoint, or fresh with every slot filled."""
    lockstep = not spec.adaptive()
    checkpoint = run.load_checkpoint()
    if checkpoint is None:
        sched = Schedule(grid, program.n, lockstep)
        refilled = sched.fill()
        state, warm = program.state, {}
        fresh = np.array_equal(
            sched.slot_rows()["point_id"].to_numpy(),
            program.grid["point_id"].to_numpy(),
        )
        if not fresh or warm_starts(spec):
            state = refill(program, state, sched, refilled, warm, spec)
        return Host(sched, [], warm), state
    step, ids = checkpoint["step"], checkpoint["ids"]
    if lockstep:  # the step and the grid's ids are the whole schedule
        if ids != list(grid["point_id"]):
            raise RunDirError(f"{run.path}: checkpoint does not match the spec's grid")
        sched = Schedule(grid, program.n, lockstep)
        sched.fill()
        sched.slot_step[:] = step
        if step >= spec.train.steps:
            sched.finished, sched.slot_point[:] = list(range(len(grid))), EMPTY
    elif checkpoint["schedule"] is not None:
        sched = Schedule.from_json(checkpoint["schedule"])
        if len(sched.slot_point) != program.n:
            raise RunDirError(f"{run.path}: checkpoint has a different slot count")
    else:
        raise RunDirError(f"{run.path}: checkpoint is not of an adaptive sweep")
    if not run.metrics_file.exists():
        raise RunDirError(
            f"{run.path} has a checkpoint at step {step} but its metrics.parquet "
            "is gone: the evaluations up to that step cannot be recovered; delete "
            f"{run.checkpoints.dir} to train again from step 0"
        )
    treedef = jax.tree.structure(program.state)
    state = program.place.models(jax.tree.unflatten(treedef, checkpoint["leaves"]))
    warm = unpack_warm(checkpoint["extra"])
    return Host(sched, [rows_up_to(run.metrics(), sched)], warm), state


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
    df["active_directions"] = np.asarray(m.directions, np.float64)
    df["decoder_sigma2"] = np.asarray(m.decoder_sigma2, np.float64)
    if m.dispersion is not None:
        df["dispersion"] = np.asarray(m.dispersion, np.float64)
    df["collapse_eigenvalue"] = _collapse_eigenvalues(m.collapse_grams, len(df))
    gains = _decoder_gains(m.decoder_gram, len(df), m.kl_dim.shape[1])
    for j, gain in enumerate(gains):
        df[f"decoder_gain_{j}"] = gain
    if m.kl_layer is not None:
        for j in range(m.kl_layer.shape[1]):
            df[f"kl_layer_{j}"] = np.asarray(m.kl_layer[:, j], np.float64)
    if m.mi_step is not None:
        for j in range(m.mi_step.shape[1]):
            df[f"mi_step_{j}"] = np.asarray(m.mi_step[:, j], np.float64)
    if m.usage is not None:
        for j in range(m.usage.shape[1]):
            df[f"usage_dim_{j}"] = np.asarray(m.usage[:, j], np.float64)
    df["active_units"] = (m.kl_dim > COLLAPSED_KL).sum(axis=1).astype(np.int64)
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


def _decoder_gains(grams, n: int, k: int) -> np.ndarray:
    """(k, n): the decoder's k largest gains per model, largest first: the square
    roots of the eigenvalues of E[J^T J] (NaN without them or where not finite; a
    categorical latent's decoder reads k K inputs)."""
    out = np.full((k, n), np.nan)
    if grams is None:
        return out
    grams = np.asarray(grams, np.float64)
    ok = np.isfinite(grams).all(axis=(1, 2))
    if ok.any():
        ev = np.linalg.eigvalsh(grams[ok])[:, ::-1][:, :k]  # descending
        out[:, ok] = np.sqrt(np.clip(ev, 0.0, None)).T
    return out


def _save(run: RunDir, host: Host, state, meta: RunMeta) -> RunMeta:
    """Metrics, then the checkpoint they belong to (state and schedule; its files
    are written while training goes on), then meta; the metrics and meta by process
    0, the checkpoint by every process, each its own shards. Returns the meta saved:
    ``meta`` with the points' status and the schedule's progress."""
    sched, frames = host.sched, host.frames
    diverged = pd.concat(frames).groupby("point_id")["diverged"].any()
    points = {
        pid: (DIVERGED if diverged[pid] else OK)
        for pid in sched.grid["point_id"]
        if pid in diverged.index
    }
    step = int(sched.slot_step.max())
    if sched.lockstep:  # every point at this step
        meta = meta.replace(points=points, steps_done=step, model_steps=None)
    else:
        meta = meta.replace(
            points=points,
            steps_done=host.model_steps,
            model_steps=host.model_steps,
            grid_size=len(sched.grid),
            rounds=sched.round,
            schedule={
                "finished": len(sched.finished),
                "training": int(sched.busy.sum()),
                "pending": len(sched.pending),
            },
        )
    if jax.process_index() == 0:
        run.write_metrics(pd.concat(frames, ignore_index=True))
    leaves, n = jax.tree.leaves(state), len(sched.slot_point)
    if sched.lockstep:  # the step and the grid's ids are the whole schedule
        run.save_checkpoint(leaves, n, step, list(sched.grid["point_id"]))
    else:
        ids = [str(sched.grid.at[max(i, 0), "point_id"]) for i in sched.slot_point]
        extra = pack_warm(host.warm)
        run.save_checkpoint(leaves, n, step, ids, sched.to_json(), extra)
    if jax.process_index() == 0:
        run.write_meta(meta)
    return meta


def make_result(run: RunDir, frames: list[pd.DataFrame], meta: RunMeta) -> SweepResult:
    return SweepResult(run, pd.concat(frames, ignore_index=True), meta)


def base_meta(
    spec: Spec,
    data: Dataset,
    grid: pd.DataFrame,
    old: RunMeta | None,
    shard: tuple[int, int] | None = None,
) -> RunMeta:
    """This process's meta for ``spec``'s run of ``grid``: where and with what it
    runs, and from ``old`` (the run's meta so far) how far it trained."""
    versions = {"python": platform.python_version()}
    for pkg in ("phasevae", "jax", "jaxlib", "flax", "optax", "numpy", "pandas"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return RunMeta(
        spec=spec_to_dict(spec),
        spectrum=data.spectrum(),
        data=data.fingerprint(),
        grid_size=len(grid),
        steps=spec.train.steps,
        steps_done=old.steps_done if old else 0,
        status=old.status if old else RUNNING,
        points=old.points if old else {},
        wall_times=old.wall_times if old else WallTimes(),
        shard=tuple(shard) if shard else None,
        compiles=old.compiles if old else None,
        model_steps=old.model_steps if old else None,
        rounds=old.rounds if old else None,
        schedule=old.schedule if old else None,
        versions=versions,
        git_revision=_git_revision(),
        packages={
            d.metadata["Name"]: d.version
            for d in sorted(metadata.distributions(), key=lambda d: d.metadata["Name"])
        },
        argv=tuple(sys.argv),
        host=platform.node(),
        # the settings that change how JAX and XLA run (device split, threads, ...)
        environment={
            k: v for k, v in os.environ.items() if k.startswith(("XLA_", "JAX_"))
        },
        devices=tuple(str(d) for d in jax.devices()),
        cores=len(os.sched_getaffinity(0)),  # a CPU split into XLA devices
        processes=jax.process_count(),
        platform=jax.default_backend(),
        # the persistent compile cache: its folder and this process's lookups
        compile_cache=dict(CACHE),
    )


def _git_revision() -> str | None:
    """The commit the code came from: HEAD of the checkout it runs from, else the
    one setuptools-scm baked into the installed version (``...+g<commit>``)."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        if out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        found = re.search(r"\+g([0-9a-f]{7,40})", metadata.version("phasevae"))
    except metadata.PackageNotFoundError:
        return None
    return found.group(1) if found else None
