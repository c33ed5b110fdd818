"""``phasevae bench --predict DEVICE``: what an accelerator would do with the bench's
program, on paper, before renting one. A prediction, to be replaced by a measured row
(``phasevae bench`` on the device) whenever one is lent.

The work of one model-step comes from XLA's cost analysis of the compiled chunk
program (:func:`step_cost`): its FLOPs and the bytes it reads and writes. XLA counts
a loop's body once, whatever its trip count, so the chunk is compiled for 1 step and
for 0 steps (the evaluation alone), and their difference is one step. The roofline
then gives a range: a model-step takes at least ``flops / peak`` (the device's matmul
peak at the precision, ``train.precision``), the range's high end; were every byte XLA
counts read from or written to memory it would also take ``bytes / bandwidth``, the
low end:

    1 / max(flops / peak, bytes / bandwidth)  <=  model-steps/s  <=  peak / flops

for any number of models M large enough to fill the device. XLA's bytes count every
operand of every operation, and caches serve part of them, so the low end is
pessimistic: on the development CPU the bench measured 2.5 x its low end and 46 % of
its high end (docs/speed.md). The largest M that fits is 90 % of the device's
memory over the compiled program's bytes per model (arguments, outputs and temporaries
of the chunk, per model). What the bound leaves out: the fixed cost of each step
(kernel launches, the loop), which dominates at small M on a GPU, and the efficiency
of the device's kernels for these thin (width 2 to 256) products. The bytes are the
CPU compilation's (its fusions, not a GPU's), so they are an estimate too.

The method can be checked where it runs: ``--predict this`` measures this device's
float32 matmul peak and memory bandwidth and predicts the bench here; docs/speed.md
sets that beside ``phasevae bench``.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from phasevae.errors import BadInput
from phasevae.safeio import available_memory


@dataclasses.dataclass(frozen=True)
class Device:
    """Published peaks of one accelerator: dense matmul FLOP/s per precision (no
    sparsity), memory bandwidth (bytes/s) and memory (bytes)."""

    name: str
    float32: float
    tf32: float
    bfloat16: float
    bandwidth: float
    memory: float
    source: str

    def peak(self, precision: str) -> float:
        return getattr(self, precision)


DEVICES = {
    # NVIDIA H100 Tensor Core GPU datasheet (SXM5): FP32 67 TFLOPS, TF32 Tensor Core
    # 989 TFLOPS and BF16 1,979 TFLOPS with sparsity (half dense), HBM3 3.35 TB/s, 80 GB
    "h100": Device(
        "NVIDIA H100 SXM",
        67e12,
        494.5e12,
        989.5e12,
        3.35e12,
        80e9,
        "NVIDIA H100 datasheet, SXM5",
    ),
    # NVIDIA H200 datasheet (SXM): the H100's compute, HBM3e 4.8 TB/s, 141 GB
    "h200": Device(
        "NVIDIA H200 SXM",
        67e12,
        494.5e12,
        989.5e12,
        4.8e12,
        141e9,
        "NVIDIA H200 datasheet, SXM",
    ),
    # NVIDIA A100 datasheet (80 GB SXM): FP32 19.5 TFLOPS, TF32 156, BF16 312 (dense),
    # HBM2e 2,039 GB/s
    "a100": Device(
        "NVIDIA A100 80GB SXM",
        19.5e12,
        156e12,
        312e12,
        2.039e12,
        80e9,
        "NVIDIA A100 datasheet, 80GB SXM",
    ),
    # NVIDIA L4 datasheet: FP32 30.3 TFLOPS, TF32 120 and BF16 242 TFLOPS with
    # sparsity (half dense), GDDR6 300 GB/s, 24 GB
    "l4": Device(
        "NVIDIA L4", 30.3e12, 60e12, 121e12, 300e9, 24e9, "NVIDIA L4 datasheet"
    ),
    # Google Cloud TPU v5e documentation: 197 TFLOPS bf16, HBM2 819 GB/s, 16 GB per
    # chip. The MXU multiplies bfloat16: float32 at JAX's "highest" precision takes 6
    # bf16 passes, "tensorfloat32" 3 (XLA's TPU precision modes), hence peak / 6, / 3
    "tpu-v5e": Device(
        "Google TPU v5e",
        197e12 / 6,
        197e12 / 3,
        197e12,
        819e9,
        16e9,
        "Google Cloud TPU v5e documentation",
    ),
}
MODELS = (64, 256, 1024, 4096, 16384)
FITS = 0.9  # the share of a device's memory the models may take


@dataclasses.dataclass(frozen=True)
class StepCost:
    """XLA's count for one model-step and one evaluation of the bench's program, and
    the compiled chunk's bytes per model (the data it shares left out)."""

    flops: float
    bytes: float
    eval_flops: float
    eval_bytes: float
    program_bytes: float


def _cost(compiled) -> tuple[float, float]:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["flops"]), float(cost["bytes accessed"])


def step_cost(models: int, model: str = "mlp", precision: str = "float32") -> StepCost:
    """The cost of one model-step of the bench's program (:mod:`phasevae.tools.bench`)
    for ``models`` models: the chunk compiled for 1 step less the chunk for 0 (the
    evaluation alone), over the models one device holds (XLA analyses one device's
    share of the sharded program). The program is the vmapped one, as accelerators
    run it (a CPU's models in sequence are a loop, whose body XLA counts once)."""
    from phasevae.engine.step import Trainer
    from phasevae.tools import bench

    _, points, x, ex = bench.placed_inputs(models, model, precision)
    counts = []
    for steps in (0, 1):
        static = dataclasses.replace(
            bench.static_for(model, precision), chunk_steps=steps, in_sequence=False
        )
        trainer = Trainer(static)
        state = trainer.init(points)
        compiled = trainer.chunk.lower(state, points, x, ex, np.int32(0)).compile()
        counts.append(_cost(compiled))
    program = bench.program_bytes(compiled, x, ex)
    (f0, b0), (f1, b1) = counts
    # XLA counts one device's share of the sharded program
    per = -(-models // len(x.sharding.device_set))
    return StepCost((f1 - f0) / per, (b1 - b0) / per, f0 / per, b0 / per, program / per)


def roofline(cost: StepCost, device: Device, precision: str, models=MODELS) -> list:
    """One row per model count: the range of model-steps/s the roofline allows (its
    ``high`` end the compute roof, ``peak / flops``; its ``low`` end also held to
    ``bandwidth / bytes``, as if every byte XLA counts went to memory, which caches
    partly absorb), the fraction of the peak at each end, and whether that many models
    fit."""
    peak = device.peak(precision)
    high = peak / cost.flops
    low = min(high, device.bandwidth / cost.bytes)
    largest = int(FITS * device.memory // cost.program_bytes)
    return [
        {
            "device": device.name,
            "precision": precision,
            "models": m,
            "model_steps_per_s_low": low,
            "model_steps_per_s_high": high,
            "bound": "memory" if low < high else "compute",
            "fraction_of_peak_low": low * cost.flops / peak,
            "fits": m <= largest,
            "largest_models": largest,
        }
        for m in models
    ]


def measured_device(n: int = 2048, size: int = 2**27) -> Device:
    """This machine's default device as a :class:`Device`: its float32 matmul peak
    (:func:`phasevae.tools.bench.matmul_peak`) and memory bandwidth (the best of five
    passes of ``y = x + 1`` over ``size`` float32, read once and written once)."""
    from phasevae.tools.bench import matmul_peak

    peak = matmul_peak(n)
    x = jnp.zeros(size, jnp.float32)
    add = jax.jit(lambda a: a + 1.0)
    add(x).block_until_ready()
    best = np.inf
    for _ in range(5):
        t0 = time.perf_counter()
        add(x).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    bandwidth = 2 * 4 * size / best
    stats = jax.local_devices()[0].memory_stats() or {}
    memory = float(stats.get("bytes_limit") or available_memory() or 0)
    kind = jax.devices()[0].device_kind
    return Device(f"this {kind}", peak, peak, peak, bandwidth, memory, "measured here")


def device(name: str) -> Device:
    """A device of :data:`DEVICES`, or ``this`` (measured)."""
    if name == "this":
        return measured_device()
    try:
        return DEVICES[name.lower()]
    except KeyError:
        raise BadInput(
            f"--predict {name!r}: choose one of {', '.join(DEVICES)} or 'this'"
        ) from None
