"""Where the models axis lives: the CPU split into devices, the sharding of the models
axis over every device of every process, gathering results back to the host, and the
compiled chunk program with its inputs placed and its memory checked (:class:`Program`).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np
import pandas as pd
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from phasevae import safeio
from phasevae.data import Dataset
from phasevae.engine.grid import estimate_bytes, static_config
from phasevae.engine.step import Point, Trainer, sequence_on
from phasevae.errors import BadInput
from phasevae.models.registry import footprint
from phasevae.spec import Spec

CPU_DEVICES_PER_CORE = 1  # with the models in sequence on each (docstring below)


# XLA's concurrency-optimised scheduler, off for programs that scan a GRU
SCHEDULER_OFF = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def split_cpu_into_devices(scanned_gru: bool = False) -> None:
    """Expose the CPU as ``CPU_DEVICES_PER_CORE`` XLA devices per core, unless the user
    chose a count (XLA_FLAGS or JAX_NUM_CPU_DEVICES).

    The models axis is sharded over devices, so on a CPU each device trains its own
    share of the models on one thread, instead of every small (256 x 256) product
    being split across all cores and synchronised. With the models vmapped, four
    devices per core did best (the OS filled one device's stalls with another's
    work: at M = 64 on 2 cores, 1 device 32 %, 2 devices 43-47 %, 8 devices 51-58 %
    of the matmul peak); since each device trains its models in sequence
    (``Trainer._chunk_in_sequence``), one device per core does: 2 devices against 8
    gave 71-73 % against 65-67 % (MLP), 20.0-20.4 % against 17.1-18.9 % (conv VAE),
    69.6 % against 58.6 % (``ar``), 32.6 % against 26.3 % (PixelCNN head), and the
    built-in default sweep the same within the noise (results/README.md, docs/
    speed.md). Accelerator hosts are unaffected (their CPU backend trains nothing).

    With ``scanned_gru`` (a GRU scanned over the features: a spec's
    ``model.recurrent`` > 0 or ``model.kind = "vrnn"``, :func:`scans_a_gru`) the
    CPU stays one device and XLA's concurrency-optimised scheduler is turned off
    (``SCHEDULER_OFF`` added to XLA_FLAGS, unless the user set that flag). The CPU
    backend of jax 0.10.2 left such programs hung for good, every thread idle:
    GRU-head sweeps of 64 models on 8 devices with the scheduler on (0 of 8
    finished); with it off, still 64 models of the paper's widths (256-128 /
    128-256) on 8 or 2 devices (the bench's program, and a sweep), while on one
    device they finished in 17 s (docs/science.md, 'Autoregressive decoders');
    the VRNN bench's 64 models on 8 devices, and on 2 with the scheduler off, and
    a sweep of 64 VRNNs (32 units, 64-wide) on 8 devices, while on one device with
    the scheduler off both finished (docs/science.md). The scheduler costs
    the MLP sweep about 7 %, so only these runs lose it. XLA reads the flag when
    its backend starts; as a per-program compiler option it did not take
    effect. Must run before JAX starts a backend; a no-op afterwards.
    """
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        return
    flags = os.environ.get("XLA_FLAGS", "")
    if scanned_gru and "concurrency_optimized_scheduler" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {SCHEDULER_OFF}".strip()
    chosen = "xla_force_host_platform_device_count" in flags
    if chosen or "JAX_NUM_CPU_DEVICES" in os.environ:
        return
    cores = len(os.sched_getaffinity(0))
    jax.config.update(
        "jax_num_cpu_devices", 1 if scanned_gru else CPU_DEVICES_PER_CORE * cores
    )


def scans_a_gru(spec: Spec) -> bool:
    """Whether ``spec``'s model scans a GRU over the features (a GRU head or a
    VRNN): :func:`split_cpu_into_devices` keeps such a CPU one device."""
    return spec.model.recurrent > 0 or spec.model.kind == "vrnn"


CACHE_MAX_BYTES = 4 * 2**30  # the compile cache's size; the least recently used go
CACHE_OFF = ("0", "off", "no", "false")
# the persistent compile cache: its folder (None: off) and this process's lookups
CACHE: dict = {"dir": None, "hits": 0, "misses": 0}
_LISTENING: list = []  # the lookup counter is registered once per process


def compile_cache() -> Path | None:
    """Turn on JAX's persistent compilation cache, so that a rerun, a resume or an
    extension of a sweep (and a sweep after its dry run) loads its compiled programs
    instead of compiling them again. The folder is ``PHASEVAE_CACHE_DIR``, else
    ``phasevae/xla`` in the user cache folder (``XDG_CACHE_HOME`` or ``~/.cache``),
    at most ``CACHE_MAX_BYTES`` (the least recently used entries go first); a folder
    the user gave JAX (``jax_compilation_cache_dir``) is kept. Off with
    ``PHASEVAE_COMPILE_CACHE=0`` (or where the folder cannot be made). Lookups are
    counted in ``CACHE`` (meta.json's ``compile_cache``). Returns the folder, or None
    when off."""
    if os.environ.get("PHASEVAE_COMPILE_CACHE", "").lower() in CACHE_OFF:
        return None
    if not _LISTENING:
        jax.monitoring.register_event_listener(_count_cache_lookup)
        _LISTENING.append(True)
    where = jax.config.jax_compilation_cache_dir
    if not where:
        home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        where = os.environ.get("PHASEVAE_CACHE_DIR") or home / "phasevae" / "xla"
        try:
            Path(where).mkdir(parents=True, exist_ok=True)
        except OSError:
            return None
        jax.config.update("jax_compilation_cache_dir", str(where))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_compilation_cache_max_size", CACHE_MAX_BYTES)
    CACHE["dir"] = str(where)
    return Path(where)


def _count_cache_lookup(event: str, **_) -> None:
    if event == "/jax/compilation_cache/cache_hits":
        CACHE["hits"] += 1
    elif event == "/jax/compilation_cache/cache_misses":
        CACHE["misses"] += 1


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
        self,
        spec: Spec,
        data: Dataset,
        grid: pd.DataFrame,
        step_per_model=False,
        chunk_steps: int | None = None,
    ):
        """``grid``: one row per model slot. ``step_per_model``: compile the chunk
        for a start step per model (slots refilled at different times) rather than
        one shared by all. ``chunk_steps``: steps per chunk, if not
        ``train.eval_every`` (a dry run's probes, :func:`plan`)."""
        self.grid, self.n = grid, len(grid)
        self.step_per_model = step_per_model
        self.place = Placement.create(self.n)
        static = static_config(spec, data.x.shape[1], data.image_shape)
        if chunk_steps is not None:
            static = dataclasses.replace(static, chunk_steps=chunk_steps)
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
        self._compile()
        limit = device_memory(self.place)
        if self.bytes_per_device and limit and self.bytes_per_device > 0.9 * limit:
            parts = math.ceil(self.bytes_per_device / (0.9 * limit))
            raise TooLarge(
                f"the sweep needs about {self.bytes_per_device / 2**30:.2f} GiB per "
                f"device for {self.n} models, more than the {limit / 2**30:.2f} GiB "
                f"available; split it into at least {parts} shards (--shard I/{parts}) "
                "or shrink eval_samples / batch_size"
            )

    def _compile(self) -> None:
        start = self.start(np.zeros(self.n, np.int64))
        t0 = time.perf_counter()
        self.compiled = self.trainer.chunk.lower(
            self.state, self.points, self.x, self.eval_x, start
        ).compile()
        self.compile_s = time.perf_counter() - t0
        self.bytes_per_device = _bytes_needed(self.compiled)

    def probe(self, steps: int) -> Program:
        """This program with its chunk compiled for ``steps`` steps, on the same
        placed inputs and state (a dry run's probe, :func:`plan`)."""
        other = copy.copy(self)
        static = dataclasses.replace(self.trainer.static, chunk_steps=steps)
        other.trainer = Trainer(static, self.place.shard)
        other._compile()
        return other

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

    def timed(self, repeats: int = 3) -> float:
        """Seconds one chunk takes: run once (allocation, threads), then the fastest
        of ``repeats`` timed runs (another process's load only ever adds time; the
        chunk donates its input state: each run goes on from the last)."""
        start = self.start(np.zeros(self.n))
        self.state = jax.block_until_ready(self.run(self.state, start))[0]
        best = math.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            self.state = jax.block_until_ready(self.run(self.state, start))[0]
            best = min(best, time.perf_counter() - t0)
        return best


PROBE_STEPS = (4, 20)  # a dry run times chunks of these many steps


def plan(spec: Spec, data: Dataset, grid: pd.DataFrame, step_per_model=False) -> dict:
    """A dry run's plan: grid size, memory per device, compile time and the training
    time, extrapolated from two short probes instead of a whole chunk: the chunk
    program compiled for each of ``PROBE_STEPS`` steps (the same step and
    evaluation, a shorter scan), each timed (:meth:`Program.timed`). Their
    difference is the time per step, the rest the evaluation's, so a chunk of
    ``train.eval_every`` steps takes ``eval_s + eval_every * step_s``. Where
    ``eval_every`` is no longer than the probes the chunk itself is timed. Where
    the difference is lost in the timing's noise (not positive: a tiny model on a
    loaded machine), the longer probe counts as steps alone, an upper bound. The
    probes' compile time is the sweep's (the scan's length does not change what is
    compiled), and so is their memory (a scan keeps one step's activations)."""
    every = spec.train.eval_every
    if every <= PROBE_STEPS[1]:
        program = Program(spec, data, grid, step_per_model)
        chunk_s = program.timed()
        step_s, eval_s = None, None
    else:
        program = Program(spec, data, grid, step_per_model, PROBE_STEPS[0])
        short = program.timed()
        longer = program.probe(PROBE_STEPS[1]).timed()
        step_s = (longer - short) / (PROBE_STEPS[1] - PROBE_STEPS[0])
        if step_s <= 0:
            # the steps are lost in the timing's noise: the longer probe counts as
            # steps alone, an upper bound
            step_s = longer / PROBE_STEPS[1]
        eval_s = max(short - PROBE_STEPS[0] * step_s, 0.0)
        chunk_s = eval_s + every * step_s
    return {
        "grid_size": program.n,
        "static_groups": 1,
        "devices": program.place.shard.mesh.size,
        "padded_size": program.place.size,
        "bytes_per_device": program.bytes_per_device,
        "device_memory": device_memory(program.place),
        "compile_s": program.compile_s,
        "step_s": step_s,
        "eval_s": eval_s,
        "chunk_s": chunk_s,
        "estimated_train_s": chunk_s * (spec.train.steps // every),
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
    per_device = place.size // place.shard.mesh.size
    in_sequence = sequence_on(place.shard.mesh)
    need = estimate_bytes(spec, data_shape, per_device, size, in_sequence)
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
