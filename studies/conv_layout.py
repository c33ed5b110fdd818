"""Which layout of a convolution trains M models fastest under the models vmap
(issue 15)? Four layers shaped like the bench's conv VAE (16x16x1 -> 8x8x16 ->
4x4x32 -> 8x8x16 -> 16x16x1, kernel 3, stride 2), a squared error, 20 jitted gradient
steps of M models x 64 examples, one XLA device on every core:

* ``lax``: ``lax.conv_general_dilated`` (``conv_transpose`` for the decoder), which
  XLA batches over models into one grouped convolution (``feature_group_count``);
* ``im2col``: :class:`phasevae.models.conv.Conv`, shifted slices and a matrix product,
which
  batches into plain batched matmuls (what ``model.kind = "conv"`` uses).

    python studies/conv_layout.py [M ...]     (default 1 8)
"""

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from phasevae.models.conv import Conv

SHAPES = [(1, 16, False), (16, 32, False), (32, 16, True), (16, 1, True)]
DN = ("NHWC", "HWIO", "NHWC")


def lax_layer(x, w, transpose):
    if transpose:
        return lax.conv_transpose(x[None], w, (2, 2), "SAME", dimension_numbers=DN)[0]
    return lax.conv_general_dilated(x[None], w, (2, 2), "SAME", dimension_numbers=DN)[0]


def im2col_layer(x, w, transpose):
    layer = Conv(w.shape[-1], 3, transpose)
    return layer.apply({"params": {"kernel": w, "bias": jnp.zeros(w.shape[-1])}}, x)


def rate(layer, m: int, steps: int = 20) -> tuple[float, bool]:
    """Model-steps/s, and whether the compiled HLO holds a grouped convolution."""
    rng = np.random.default_rng(0)
    ws = [
        jnp.asarray(0.1 * rng.standard_normal((m, 3, 3, a, b)), jnp.float32)
        for a, b, _ in SHAPES
    ]
    x = jnp.asarray(rng.standard_normal((64, 16, 16, 1)), jnp.float32)

    def one(w, xi):
        y = xi
        for i, (_, _, transpose) in enumerate(SHAPES):
            y = layer(y, w[i], transpose)
            y = jax.nn.relu(y) if i < len(SHAPES) - 1 else y
        return jnp.sum((y - xi) ** 2)

    def loss(ws):
        per_model = jax.vmap(lambda w: jnp.mean(jax.vmap(lambda xi: one(w, xi))(x)))
        return jnp.sum(per_model(ws))

    grad = jax.jit(jax.grad(loss))
    grouped = "feature_group_count" in grad.lower(ws).compile().as_text()
    jax.block_until_ready(grad(ws))
    t0 = time.perf_counter()
    for _ in range(steps):
        ws = [w - 1e-4 * g for w, g in zip(ws, grad(ws), strict=True)]
    jax.block_until_ready(ws)
    return steps * m / (time.perf_counter() - t0), grouped


if __name__ == "__main__":
    for m in [int(a) for a in sys.argv[1:]] or [1, 8]:
        for name, layer in (("lax", lax_layer), ("im2col", im2col_layer)):
            r, grouped = rate(layer, m)
            print(
                f"M = {m:3d} {name:7s} {r:8.1f} model-steps/s  grouped conv: {grouped}"
            )
