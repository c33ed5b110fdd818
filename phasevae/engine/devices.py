"""Where the models axis lives: the CPU split into devices, the sharding of the models
axis over every device of every process, gathering results back to the host, and the
compiled chunk program with its inputs placed and its memory checked (:class:`Program`).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import jax
import numpy as np
import pandas as pd
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from phasevae import safeio
from phasevae.data import Dataset
from phasevae.engine.grid import estimate_bytes, static_config
from phasevae.engine.step import Point, Trainer
from phasevae.errors import BadInput
from phasevae.models.registry import footprint
from phasevae.spec import Spec

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


class TooLarge(BadInput):
    """A sweep whose compiled program needs more memory than a device has."""


class Program:
    """The compiled chunk program of a sweep, its inputs placed on the devices, and
    its memory checked against the devices' before anything runs."""

    def __init__(
        self, spec: Spec, data: Dataset, grid: pd.DataFrame, step_per_model=False
    ):
        """``grid``: one row per model slot. ``step_per_model``: compile the chunk
        for a start step per model (slots refilled at different times) rather than
        one shared by all."""
        self.grid, self.n = grid, len(grid)
        self.step_per_model = step_per_model
        self.place = Placement.create(self.n)
        static = static_config(spec, data.x.shape[1], data.image_shape)
        size = None
        if static.module is not None:
            size = footprint(static.module, static.shape, static.latent_dim)
        check_fits(
            self.place,
            spec,
            data.x.shape,
            size,
            f"the sweep of {self.n} models",
            "shrink the model or batch_size/eval_samples, or split the grid "
            "(--shard I/N)",
        )
        self.trainer = Trainer(static, self.place.shard)
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
        limit = device_memory(self.place)
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
        return self.place.models(Point.from_table(grid))

    def start(self, steps: np.ndarray):
        """The chunk's start argument for slots at ``steps``: one shared int32, or
        per model a placed int32 array (``step_per_model``)."""
        if self.step_per_model:
            return self.place.models(steps.astype(np.int32))
        return np.int32(steps.max())

    def run(self, state, start, points=None):
        """One chunk from ``start`` (an int, or per model a placed int32 array)."""
        points = self.points if points is None else points
        if np.ndim(start) == 0:
            start = np.int32(start)
        return self.compiled(state, points, self.x, self.eval_x, start)

    def plan(self, spec: Spec) -> dict:
        """Grid size, groups, memory per device and a timed one-chunk probe."""
        t0 = time.perf_counter()
        jax.block_until_ready(self.run(self.state, self.start(np.zeros(self.n))))
        chunk_s = time.perf_counter() - t0
        chunks = spec.train.steps // spec.train.eval_every
        return {
            "grid_size": self.n,
            "static_groups": 1,
            "devices": self.place.shard.mesh.size,
            "padded_size": self.place.size,
            "bytes_per_device": self.bytes_per_device,
            "device_memory": device_memory(self.place),
            "compile_s": self.compile_s,
            "chunk_s": chunk_s,
            "estimated_train_s": chunk_s * chunks,
        }


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


def check_fits(
    place: Placement,
    spec: Spec,
    data_shape: tuple[int, int],
    size: tuple[int, int] | None,
    what: str,
    advice: str,
) -> None:
    """Refuse (:class:`TooLarge`) ``place.size`` models of ``spec`` (``what``) whose
    estimated bytes per device (:func:`phasevae.engine.grid.estimate_bytes`) exceed 90 %
    of a device's memory, before anything is allocated."""
    limit = device_memory(place)
    need = estimate_bytes(spec, data_shape, place.size // place.shard.mesh.size, size)
    if limit and need > 0.9 * limit:
        raise TooLarge(
            f"{what} would need about {need / 2**30:.2f} GiB per device "
            f"(parameters, optimizer state, activations, data; estimated from the "
            f"spec before allocating anything), more than the "
            f"{limit / 2**30:.2f} GiB available; {advice}"
        )


def device_memory(place: Placement) -> int | None:
    """Memory of one device: its allocator's limit, or on the CPU the free RAM
    shared by the CPU devices this process uses."""
    stats = jax.local_devices()[0].memory_stats() or {}
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"])
    free = safeio.available_memory()
    local = len(place.shard.addressable_devices)
    return None if free is None else free // local


def init_distributed(args) -> bool:
    """Join a multi-process JAX job if ``args`` (the command line's
    ``--num-processes``, ``--coordinator``, ``--process-id``, ``--distributed``) ask
    for one; True for the process that writes."""
    if args.num_processes is None and not args.distributed:
        return True
    # CPU processes talk through gloo; accelerators use their own collectives
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if args.num_processes is None:  # auto-detect (TPU pods, SLURM, ...)
        jax.distributed.initialize()
    else:
        if args.coordinator is None or args.process_id is None:
            raise BadInput("--num-processes needs --coordinator and --process-id too")
        if not 0 <= args.process_id < args.num_processes:
            raise BadInput("--process-id must be in 0 .. --num-processes - 1")
        jax.distributed.initialize(
            coordinator_address=args.coordinator,
            num_processes=args.num_processes,
            process_id=args.process_id,
        )
    return jax.process_index() == 0
