"""Grid expansion and the chunk loop: spec + data -> run directory.

The grid (Cartesian product of the traced axes) becomes the models axis of one
:class:`~phasevae.train.Trainer`, sharded over every device of every process
(:class:`Placement`). Training runs in chunks of ``eval_every`` steps; after each chunk
the metrics come back to the host (the only sync point), and every
``CHECKPOINT_SECONDS`` (and at the end, and on SIGTERM) metrics, checkpoint and meta are
written atomically by process 0, which holds the run directory's lock. Rerunning on
the same directory resumes from the last checkpoint. ``--shard I/N`` trains a share of
the grid; :func:`merge_runs` puts the shares back together.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import jax
import numpy as np
import pandas as pd
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from phasevae import theory
from phasevae.analysis import ACTIVE_KL
from phasevae.data import DataError, Dataset, available_memory, load_dataset
from phasevae.errors import TERM_REQUESTED, BadInput, stop_if_terminated
from phasevae.model import collapse_eigenvalue
from phasevae.safeio import brief
from phasevae.spec import Spec, SpecError, spec_to_dict
from phasevae.store import RunDir, RunDirError
from phasevae.train import Metrics, Point, Static, Trainer

CHECKPOINT_SECONDS = 30.0
KL_COLLAPSED = 0.01  # nats: "KL ~ 0" in the summary

# called after each chunk with (chunks done, chunks in all, seconds since start)
ProgressFn = Callable[[int, int, float], None]


CPU_DEVICES_PER_CORE = 4


def split_cpu_into_devices() -> None:
    """Expose the CPU as ``CPU_DEVICES_PER_CORE`` XLA devices per core, unless the user
    chose a count (XLA_FLAGS or JAX_NUM_CPU_DEVICES).

    The models axis is sharded over devices, so on a CPU each device trains its own
    share of the models on one thread, instead of every small (256 x 256) product
    being split across all cores and synchronised; with more devices than cores the
    OS fills one device's stalls with another's work. Measured on 2 cores at M = 64
    (results/README.md): 1 device 32 %, 2 devices 43-47 %, 8 devices 51-58 % of the
    matmul peak. Accelerator hosts are unaffected (their CPU backend trains nothing).
    Must run before JAX starts a backend; a no-op afterwards.
    """
    from jax._src import xla_bridge

    chosen = "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
    if chosen or "JAX_NUM_CPU_DEVICES" in os.environ:
        return
    if xla_bridge.backends_are_initialized():
        return
    cores = len(os.sched_getaffinity(0))
    jax.config.update("jax_num_cpu_devices", CPU_DEVICES_PER_CORE * cores)


@dataclass(frozen=True)
class Placement:
    """Where the models axis lives: sharded over every device of every process, the
    grid padded to a multiple of the device count (copies of the last point, dropped
    from all results); data and evaluation set replicated. Every process builds the
    same arrays from the same host data and keeps the pieces its devices hold."""

    size: int  # padded number of models
    shard: NamedSharding
    replicate: NamedSharding

    @staticmethod
    def create(n: int) -> Placement:
        """Over every device; in a single process over at most ``n`` of them, so a
        small grid is not padded up to the device count."""
        devices = jax.devices()
        if jax.process_count() == 1:
            devices = devices[: max(n, 1)]
        mesh = Mesh(np.array(devices), ("models",))
        size = -(-n // len(devices)) * len(devices)
        return Placement(
            size, NamedSharding(mesh, P("models")), NamedSharding(mesh, P())
        )

    def models(self, tree):
        """Pad every leaf's leading (models) axis to ``size`` and shard it."""

        def put(a):
            a = np.asarray(a)
            pad = [(0, self.size - a.shape[0])] + [(0, 0)] * (a.ndim - 1)
            a = np.pad(a, pad, mode="edge")
            return jax.make_array_from_callback(a.shape, self.shard, lambda i: a[i])

        return jax.tree.map(put, tree)

    def replicated(self, a: np.ndarray):
        return jax.make_array_from_callback(a.shape, self.replicate, lambda i: a[i])


def to_host(tree):
    """Every leaf as a whole numpy array, on every process (a collective when there
    are several processes: all must call it, in the same order)."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, tree)
    return jax.tree.map(
        lambda a: np.asarray(multihost_utils.process_allgather(a, tiled=True)), tree
    )


def any_process(flag: bool) -> bool:
    """True on every process if it is true on any (a collective, like to_host)."""
    if jax.process_count() == 1:
        return bool(flag)
    return bool(np.any(multihost_utils.process_allgather(np.array([flag]))))


@dataclass
class SweepResult:
    run: RunDir
    metrics: pd.DataFrame  # the full table, as in metrics.parquet
    meta: dict
    diverged: list[str]  # point ids flagged diverged


# axes added after the first runs: hashed only when off their default, so that the ids
# of points that do not use them (and the runs that hold those points) stay the same
LATER_AXES = {"kl_warmup_steps": 0.0, "decoder_init_scale": 1.0}


def point_id(values: dict) -> str:
    """Stable 12-hex-digit id of a grid point from its axis values."""
    kept = {k: v for k, v in values.items() if LATER_AXES.get(k, object()) != v}
    canonical = json.dumps({k: kept[k] for k in sorted(kept)}, sort_keys=True)
    return hashlib.sha1(canonical.encode()).hexdigest()[:12]


def grid_table(spec: Spec) -> pd.DataFrame:
    """One row per grid point: ``point_id`` and one column per axis, in grid order
    (and ``direction``, +1 or -1, in a hysteresis sweep: each point twice).

    Raises:
      SpecError: an axis lists the same value twice.
    """
    axes = spec.axes()
    for name, values in axes.items():
        if len(set(values)) != len(values):
            twice = sorted({v for v in values if values.count(v) > 1})
            key = "seeds" if name == "seed" else name
            raise SpecError(
                f"grid.{key} gives a value twice (a range with min = max, or values "
                f"closer than float precision): {brief(twice)}"
            )
    if spec.train.hysteresis:
        axes["direction"] = (1.0, -1.0)
    df = pd.DataFrame(list(itertools.product(*axes.values())), columns=list(axes))
    df["seed"] = df["seed"].astype(np.int64)
    ids = [point_id(r) for r in df.to_dict("records")]
    df.insert(0, "point_id", ids)
    return df


def select_shard(grid: pd.DataFrame, shard: tuple[int, int] | None) -> pd.DataFrame:
    """The points of shard i of n: with the points sorted by stable id, every n-th
    from the i-th. The split depends on the grid alone, so every machine computes
    the same one, and shard sizes differ by at most one."""
    if shard is None:
        return grid
    i, n = shard
    rank = np.argsort(np.argsort(grid["point_id"].to_numpy()))
    return grid[rank % n == i].reset_index(drop=True)


def static_config(spec: Spec, data_dim: int) -> Static:
    m, t = spec.model, spec.train
    return Static(
        data_dim=data_dim,
        latent_dim=m.latent_dim,
        encoder=m.encoder,
        decoder=m.decoder,
        batch_size=t.batch_size,
        chunk_steps=t.eval_every,
        optimizer=t.optimizer,
        seed=t.seed,
        shared_batches=t.shared_batches,
        learned_sigma2=m.sigma2 == "learned",
        skip=m.skip,
    )


class Preempted(Exception):
    """SIGTERM arrived: the current chunk was finished and checkpointed."""

    def __init__(self, run: RunDir, step: int):
        super().__init__(
            f"stopped by SIGTERM after step {step}; everything up to it is saved in "
            f"{run.path}. Rerun the same command to resume."
        )


def run_sweep(
    spec: Spec,
    out: str | Path,
    progress: ProgressFn | None = None,
    checkpoint_seconds: float | None = None,
    shard: tuple[int, int] | None = None,
    dry_run: bool = False,
) -> SweepResult | dict:
    """Train the whole grid of ``spec`` into run directory ``out`` (or continue it).

    Holds a lock on ``out`` while it runs. On SIGTERM it finishes the current chunk,
    checkpoints and raises :class:`Preempted`.

    Args:
      checkpoint_seconds: least time between checkpoints (default CHECKPOINT_SECONDS);
        0 checkpoints after every chunk.
      shard: (i, n) trains only shard i of n (:func:`select_shard`), for array jobs
        whose run directories ``phasevae merge`` combines.
      dry_run: compile, time one chunk and return the plan (:meth:`_Program.plan`)
        without writing anything.

    Raises:
      BadInput (SpecError, DataError, RunDirError, TooLarge): before anything is
        written to ``out`` when the spec or the data is bad, when the sweep would not
        fit in device memory, or when ``out`` is in use.
    """
    # the scheduler builds on this module
    from phasevae.schedule import adaptive, chains, train_adaptive

    if spec.static_groups():
        return _run_static_groups(
            spec, out, progress, checkpoint_seconds, shard, dry_run
        )
    data = load_dataset(spec.data)
    stop_if_terminated()
    if spec.model.latent_dim > data.x.shape[1]:
        raise DataError(
            f"model.latent_dim = {spec.model.latent_dim} exceeds the data dimension "
            f"{data.x.shape[1]}"
        )
    grid = select_shard(grid_table(spec), shard)
    if grid.empty:
        raise SpecError(f"shard {shard[0]}/{shard[1]} holds no grid points")
    run = RunDir(out)
    if checkpoint_seconds is None:
        checkpoint_seconds = CHECKPOINT_SECONDS
    if not dry_run and _finished(run, spec, shard):
        return _result(run, [run.metrics()], run.meta())
    if adaptive(spec):
        if shard is not None:
            raise SpecError(
                "--shard splits a fixed grid; an adaptive sweep (train.slots, "
                "train.retire, grid.sigma2.refine) decides its points as it runs"
            )
        slots = spec.train.slots or len(chains(grid) if spec.train.hysteresis else grid)
        rows = grid.iloc[np.arange(slots) % len(grid)].reset_index(drop=True)
        program = _Program(spec, data, rows, step_per_model=True)
    else:
        program = _Program(spec, data, grid)
    stop_if_terminated()
    if dry_run:
        return program.plan(spec)
    primary = jax.process_index() == 0  # the one process that writes
    with run.lock() if primary else contextlib.nullcontext(), _sigterm_flag() as stop:
        error = None
        if primary:
            try:
                run.claim(spec)
                old = run.meta().get("shard")
                if run.meta() and old != (list(shard) if shard else None):
                    raise RunDirError(
                        f"{run.path} holds shard {old} of this spec, not {shard}; "
                        "choose another --out"
                    )
            except BadInput as e:
                error = e
        if any_process(error is not None):  # the others must not train alone
            raise error or RunDirError(f"process 0 refused {run.path}; see its message")
        if adaptive(spec):
            return train_adaptive(
                program, spec, data, grid, run, progress, checkpoint_seconds, stop
            )
        return _train(
            program, spec, data, run, progress, checkpoint_seconds, stop, shard
        )


def _run_static_groups(spec, out, progress, checkpoint_seconds, shard, dry_run):
    """One sweep per option of the static axes, each compiled once, in sequence, into
    ``out/groups/<label>`` (each resumable on its own); then their tables are joined
    into ``out`` with a column per static axis and ids that include it."""
    groups = [
        ("__".join(labels.values()), labels, g) for labels, g in spec.static_groups()
    ]
    run = RunDir(out)
    if dry_run:
        plans = [
            run_sweep(g, run.path / "groups" / name, dry_run=True, shard=shard)
            for name, _, g in groups
        ]
        return {
            **plans[0],
            "grid_size": sum(p["grid_size"] for p in plans),
            "static_groups": len(plans),
            "compile_s": sum(p["compile_s"] for p in plans),
            "estimated_train_s": sum(p["estimated_train_s"] for p in plans),
        }
    if _finished(run, spec, shard):
        return _result(run, [run.metrics()], run.meta())
    primary = jax.process_index() == 0
    with run.lock() if primary else contextlib.nullcontext():
        if primary:
            run.claim(spec)
        results = [
            (
                name,
                labels,
                run_sweep(
                    g,
                    run.path / "groups" / name,
                    progress,
                    checkpoint_seconds,
                    shard,
                ),
            )
            for name, labels, g in groups
        ]
        frames, points = [], {}
        for _, labels, r in results:
            df = r.metrics.assign(**labels)
            ids = {p: point_id({"point": p, **labels}) for p in df["point_id"]}
            df["point_id"] = df["point_id"].map(ids)
            frames.append(df)
            points.update({ids[p]: v for p, v in r.meta.get("points", {}).items()})
        metas = [r.meta for _, _, r in results]
        meta = {
            **metas[0],
            "spec": spec_to_dict(spec),
            "grid_size": sum(m["grid_size"] for m in metas),
            "static_groups": [name for name, _, _ in results],
            "compiles": sum(m.get("compiles", 0) for m in metas),
            "points": points,
            "wall_times": {
                "compile_s": sum(m["wall_times"]["compile_s"] or 0 for m in metas),
                "train_s": sum(m["wall_times"]["train_s"] for m in metas),
            },
            "shard": list(shard) if shard else None,
            "status": "complete",
        }
        if "model_steps" in metas[0]:
            meta["model_steps"] = sum(m["model_steps"] for m in metas)
        if primary:
            run.write_metrics(pd.concat(frames, ignore_index=True))
            run.write_meta(meta)
    return _result(run, frames, meta)


@contextlib.contextmanager
def _sigterm_flag():
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


def _finished(run: RunDir, spec: Spec, shard) -> bool:
    """A complete run of this very spec and shard: nothing to compile or train."""
    if not run.spec_file.exists() or run.meta().get("status") != "complete":
        return False
    same_shard = run.meta().get("shard") == (list(shard) if shard else None)
    return same_shard and run.spec() == spec


class TooLarge(BadInput):
    """A sweep whose compiled program needs more memory than a device has."""


class _Program:
    """The compiled chunk program of a sweep, its inputs placed on the devices, and
    its memory checked against the devices' before anything runs."""

    def __init__(
        self, spec: Spec, data: Dataset, grid: pd.DataFrame, step_per_model=False
    ):
        """``grid``: one row per model slot. ``step_per_model``: compile the chunk
        for a start step per model (slots refilled at different times) rather than
        one shared by all."""
        self.grid, self.n = grid, len(grid)
        self.place = Placement.create(self.n)
        limit = _device_memory(self.place)
        need = estimate_bytes(
            spec, data.x.shape, self.place.size // self.place.shard.mesh.size
        )
        if limit and need > 0.9 * limit:
            raise TooLarge(
                f"the sweep would need about {need / 2**30:.2f} GiB per device for "
                f"{self.n} models (parameters, optimizer state, activations, data; "
                f"estimated from the spec before allocating anything), more than the "
                f"{limit / 2**30:.2f} GiB available; shrink the model or "
                f"batch_size/eval_samples, or split the grid (--shard I/N)"
            )
        self.trainer = Trainer(static_config(spec, data.x.shape[1]), self.place.shard)
        self.points = self.points_for(grid)
        self.x = self.place.replicated(data.x)
        self.eval_x = self.place.replicated(data.eval_x)
        self.state = self.trainer.init(self.points)
        start = np.zeros(self.n, np.int32) if step_per_model else np.int32(0)
        start = self.place.models(start) if step_per_model else start
        t0 = time.perf_counter()
        self.compiled = self.trainer.chunk.lower(
            self.state, self.points, self.x, self.eval_x, start
        ).compile()
        self.compile_s = time.perf_counter() - t0
        self.bytes_per_device = _bytes_needed(self.compiled)
        limit = _device_memory(self.place)
        if self.bytes_per_device and limit and self.bytes_per_device > 0.9 * limit:
            parts = math.ceil(self.bytes_per_device / (0.9 * limit))
            raise TooLarge(
                f"the sweep needs about {self.bytes_per_device / 2**30:.2f} GiB per "
                f"device for {self.n} models, more than the {limit / 2**30:.2f} GiB "
                f"available; split it into at least {parts} shards (--shard I/{parts}) "
                "or shrink eval_samples / batch_size"
            )

    def points_for(self, grid: pd.DataFrame) -> Point:
        """The traced values of ``grid``'s rows, placed on the models axis."""
        return self.place.models(
            Point(
                sigma2=grid["sigma2"].to_numpy(np.float32),
                beta=grid["beta"].to_numpy(np.float32),
                learning_rate=grid["learning_rate"].to_numpy(np.float32),
                seed=grid["seed"].to_numpy(np.uint32),
                kl_warmup_steps=grid["kl_warmup_steps"].to_numpy(np.float32),
                decoder_init_scale=grid["decoder_init_scale"].to_numpy(np.float32),
            )
        )

    def run(self, state, start, points=None):
        """One chunk from ``start`` (an int, or per model a placed int32 array)."""
        points = self.points if points is None else points
        if np.ndim(start) == 0:
            start = np.int32(start)
        return self.compiled(state, points, self.x, self.eval_x, start)

    def plan(self, spec: Spec) -> dict:
        """Grid size, groups, memory per device and a timed one-chunk probe."""
        t0 = time.perf_counter()
        jax.block_until_ready(self.run(self.state, 0))
        chunk_s = time.perf_counter() - t0
        chunks = spec.train.steps // spec.train.eval_every
        return {
            "grid_size": self.n,
            "static_groups": 1,
            "devices": self.place.shard.mesh.size,
            "padded_size": self.place.size,
            "bytes_per_device": self.bytes_per_device,
            "device_memory": _device_memory(self.place),
            "compile_s": self.compile_s,
            "chunk_s": chunk_s,
            "estimated_train_s": chunk_s * chunks,
        }


def estimate_bytes(spec: Spec, data_shape: tuple[int, int], models: int) -> int:
    """An estimate of what one device holds for ``models`` models of ``spec`` on
    data of ``data_shape`` (n, N), from the spec alone: float32 parameters, their
    gradients and Adam's two moments; the activations of a training step (forward
    and backward) and of an evaluation; and the replicated training and evaluation
    data. Made before anything is allocated; the compiled program's own figure is
    checked after compiling."""
    n, dim = data_shape
    m, k = spec.model, spec.model.latent_dim
    skip = 0 if m.skip == "none" else dim
    widths_enc = [dim, *m.encoder, 2 * k]
    widths_dec = [k + skip, *m.decoder, dim]
    params = sum(
        (a + 1) * b for w in (widths_enc, widths_dec) for a, b in itertools.pairwise(w)
    )
    units = sum(widths_enc) + sum(widths_dec)
    evals = min(spec.data.eval_samples, n)
    per_model = 4 * params + 3 * spec.train.batch_size * units + 2 * evals * units
    per_model += evals * (max(m.encoder or (dim,)) + dim)  # the collapse probe
    data = n * dim + evals * dim
    return 4 * (models * per_model + data)


def _bytes_needed(compiled) -> int | None:
    """Bytes one device holds while the chunk runs (arguments, outputs, temporaries;
    donated buffers counted once), from XLA's memory analysis."""
    try:
        m = compiled.memory_analysis()
    except (NotImplementedError, RuntimeError):
        return None
    if m is None:
        return None
    size = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
    return int(size - m.alias_size_in_bytes)


def _device_memory(place: Placement) -> int | None:
    """Memory of one device: its allocator's limit, or on the CPU the free RAM
    shared by the CPU devices this process uses."""
    stats = jax.local_devices()[0].memory_stats() or {}
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"])
    free = available_memory()
    local = len(place.shard.addressable_devices)
    return None if free is None else free // local


def _train(
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

    meta = _base_meta(spec, data, grid, run.meta())
    meta["shard"] = list(shard) if shard else None
    if done == total:
        return _result(run, frames, meta)

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
            _save(run, frames, state, done, grid, meta, diverged)
            last_save = time.perf_counter()
        if progress is not None and jax.process_index() == 0:
            progress(c + 1, n_chunks, elapsed)
        if stopping and done < total:
            raise Preempted(run, done)
    meta["status"] = "complete"
    if jax.process_index() == 0:
        run.write_meta(meta)
    return _result(run, frames, meta)


def merge_runs(
    run_dirs: list[str | Path], out: str | Path, force: bool = False
) -> dict:
    """Combine the run directories of one spec's shards into ``out``.

    Refuses (RunDirError, nothing written) an ``out`` that is one of the shards, an
    ``out`` that exists and is not empty unless ``force`` (which then replaces it
    whole, at once, after the merge is complete), shards of different specs,
    unfinished shards, points missing from the grid, and a point run twice with
    different results; a point run twice with equal results is kept once and
    reported. The shards are only read.

    Returns:
      report: ``points``, ``duplicated`` (ids found in several shards).
    """
    runs = [RunDir(p) for p in run_dirs]
    dest_path = Path(out)
    for r in runs:
        if dest_path.exists() and r.path.exists() and dest_path.samefile(r.path):
            raise RunDirError(
                f"--out {out} is one of the shards being merged; merge into a new "
                "directory (the shards are never written to)"
            )
        r.spec()  # a run, its spec intact
    if dest_path.exists() and any(dest_path.iterdir()) and not force:
        raise RunDirError(
            f"--out {out} exists and is not empty; choose a new directory, or add "
            "--force to replace it with the merged run"
        )
    spec = runs[0].spec()
    for r in runs[1:]:
        if r.spec() != spec:
            raise RunDirError(f"{r.path} holds a different spec than {runs[0].path}")
    metas = [r.meta() for r in runs]
    unfinished = [
        str(r.path)
        for r, m in zip(runs, metas, strict=True)
        if m.get("status") != "complete"
    ]
    if unfinished:
        raise RunDirError(
            f"unfinished shards (resume them first): {', '.join(unfinished)}"
        )
    tables = [r.metrics() for r in runs]
    full = grid_table(spec)
    seen: dict[str, int] = {}
    duplicated, keep = [], []
    for i, t in enumerate(tables):
        for pid, rows in t.groupby("point_id", sort=False):
            if pid in seen:
                first = tables[seen[pid]]
                first = first[first["point_id"] == pid].reset_index(drop=True)
                if not _same_rows(first, rows.reset_index(drop=True)):
                    where = f"{runs[seen[pid]].path} and {runs[i].path}"
                    raise RunDirError(
                        f"point {pid} was run in {where} with different results"
                    )
                duplicated.append(pid)
                continue
            seen[pid] = i
            keep.append(rows)
    missing = sorted(set(full["point_id"]) - set(seen))
    if missing:
        raise RunDirError(
            f"{len(missing)} of {len(full)} grid points are in none of the shards "
            f"({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''})"
        )
    # built beside ``out`` and moved into place whole: a failure leaves ``out`` as it
    # was, and --force replaces it only once the merged run is complete
    dest_path.parent.mkdir(parents=True, exist_ok=True)
    build = Path(
        tempfile.mkdtemp(prefix=f".{dest_path.name}.merge-", dir=dest_path.parent)
    )
    try:
        dest = RunDir(build)
        dest.claim(spec)
        merged = pd.concat(keep, ignore_index=True)
        dest.write_metrics(merged.sort_values(["step", "point_id"], ignore_index=True))
        meta = dict(metas[0])
        meta.update(
            grid_size=len(full),
            shard=None,
            merged_from=[str(r.path) for r in runs],
            points={k: v for m in metas for k, v in m.get("points", {}).items()},
            wall_times={
                "compile_s": max(m["wall_times"]["compile_s"] or 0 for m in metas),
                "train_s": sum(m["wall_times"]["train_s"] for m in metas),
            },
            status="complete",
        )
        dest.write_meta(meta)
        with RunDir(dest_path).lock():  # not while a sweep runs in it
            _replace_dir(build, dest_path)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return {"points": len(seen), "duplicated": sorted(set(duplicated))}


def _replace_dir(new: Path, dest: Path) -> None:
    """Move directory ``new`` to ``dest``, replacing what is there (renames only)."""
    if dest.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
        os.rename(dest, old / dest.name)
        os.rename(new, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(new, dest)


def _same_rows(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    """Equal up to float32 drift: shards batch points differently."""
    try:
        pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-4, atol=1e-6)
    except AssertionError:
        return False
    return True


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


def summary_table(metrics: pd.DataFrame, lambda_max: float) -> pd.DataFrame:
    """Per combination of non-sigma2 axes (seeds averaged): KL at the smallest and
    largest sigma^2 and the first sigma^2 where KL < KL_COLLAPSED, at each point's
    last evaluation."""
    last = metrics.sort_values("step").groupby("point_id").tail(1)
    keys = ["beta"] + [
        k
        for k in ("learning_rate", *LATER_AXES, "decoder", "skip")
        if k in last and last[k].nunique() > 1
    ]
    rows = []
    for key, g in last.groupby(keys):
        curve = g[~g["diverged"]].groupby("sigma2")["kl"].mean().sort_index()
        below = curve[curve < KL_COLLAPSED]
        row = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))
        row.update(
            kl_at_min_sigma2=curve.iloc[0] if len(curve) else np.nan,
            kl_at_max_sigma2=curve.iloc[-1] if len(curve) else np.nan,
            first_sigma2_collapsed=below.index[0] if len(below) else np.nan,
            predicted_sigma2_c=lambda_max / row["beta"] if row["beta"] > 0 else np.inf,
            diverged=int(g["diverged"].sum()),
        )
        rows.append(row)
    return pd.DataFrame(rows)


def _save(run, frames, state, done, grid, meta, diverged) -> None:
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


def _result(run: RunDir, frames: list[pd.DataFrame], meta: dict) -> SweepResult:
    df = pd.concat(frames, ignore_index=True)
    diverged = [pid for pid, s in meta.get("points", {}).items() if s == "diverged"]
    return SweepResult(run, df, meta, diverged)


def _base_meta(spec: Spec, data: Dataset, grid: pd.DataFrame, old: dict) -> dict:
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
