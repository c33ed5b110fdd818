"""The models of a device vmapped or in sequence (docs/speed.md, 'Models in
sequence on a CPU'): the bench's chunk program of ``MODEL`` at M models, built both
ways (``Static.in_sequence`` False: vmapped over the models axis; True: each device's
models one after another, each through the whole chunk), compiled, run once to warm
up and then alternately R times, the best of each kept; the largest parameter
difference after the warm-up chunk is printed too (rounding, grown over 100 Adam
steps).

    python studies/in_sequence.py M R [MODEL]   (MODEL: mlp, conv, ar, ...; conv)
"""

from __future__ import annotations

import dataclasses
import sys
import time

from phasevae.engine.devices import split_cpu_into_devices

split_cpu_into_devices()

import jax  # noqa: E402  (after the CPU is split into devices)
import numpy as np  # noqa: E402

from phasevae.engine.step import Trainer  # noqa: E402
from phasevae.tools import bench  # noqa: E402


def main(m: int, repeats: int, model: str) -> None:
    _, points, x, ex = bench.placed_inputs(m, model)
    static = bench.static_for(model)
    programs, states = {}, {}
    for flag in (False, True):
        trainer = Trainer(
            dataclasses.replace(static, in_sequence=flag), points.sigma2.sharding
        )
        state = trainer.init(points)
        t0 = time.perf_counter()
        programs[flag] = trainer.chunk.lower(
            state, points, x, ex, np.int32(0)
        ).compile()
        print(f"in_sequence={flag}: compile {time.perf_counter() - t0:.2f} s")
        states[flag], _ = programs[flag](state, points, x, ex, np.int32(0))
        jax.block_until_ready(states[flag])
    a, b = (jax.tree.leaves(states[f].params) for f in (False, True))
    diff = max(
        float(np.max(np.abs(np.asarray(u) - np.asarray(v))))
        for u, v in zip(a, b, strict=True)
    )
    print(f"largest parameter difference after one chunk: {diff:.3g}")
    best = {f: np.inf for f in programs}
    for r in range(repeats):
        for flag, program in programs.items():
            t0 = time.perf_counter()
            start = np.int32((r + 1) * bench.CHUNK)
            states[flag], out = program(states[flag], points, x, ex, start)
            jax.block_until_ready((states[flag], out))
            best[flag] = min(best[flag], time.perf_counter() - t0)
    devices = len(x.sharding.device_set)
    for flag in programs:
        rate = m * bench.CHUNK / best[flag]
        print(
            f"{model}, M = {m}, {devices} devices, in_sequence={flag}: "
            f"{rate:.1f} model-steps/s"
        )


if __name__ == "__main__":
    main(
        int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "conv"
    )
