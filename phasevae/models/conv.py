"""The convolutional VAE (``model.kind = "conv"``), for ONE image x of shape
(h, w, c); it follows the model protocol of :mod:`phasevae.models.vae`.

    encoder  len(channels) convolutions, kernel x kernel, stride 2, 'SAME' padding,
             ReLU, flattened, then a dense layer to (mu, log s^2)
    decoder  a dense layer from z to the encoder's last feature map (ReLU), then
             len(channels) transposed convolutions, stride 2, with the channel counts
             in reverse, ReLU between them, the last one linear to c channels,
             cropped to (h, w)

Each stride halves the map (rounding up), so any h and w work; the decoder's map,
h0 * 2^depth >= h, is cropped back.

Layout (measured, results/README.md, speed section): a convolution here is
im2col, the kernel x kernel shifted slices of the padded map concatenated, times the
kernel as a matrix (:class:`Conv`). Under the models vmap XLA turns ``lax.conv`` with a
kernel per model into one grouped convolution (``feature_group_count`` = models),
which XLA's CPU backend runs slowly; slices and a batched matrix product vmap into
plain batched matmuls, and are faster for a single model as well. A transposed
convolution is one matrix product per input pixel (its k x k taps at once) and an
overlap-add of the taps into the output, so no inserted zero is multiplied or held
(im2col of the zero-dilated map held 4x the products, three quarters zeros).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import Array, lax

from phasevae.models.vae import product


class Conv(nn.Module):
    """A stride-2 convolution of one map (h, w, c_in) -> (ceil(h/2), ceil(w/2),
    features) with 'SAME' padding, or with ``transpose`` its transpose
    (h, w, c_in) -> (2h, 2w, features): zeros inserted between the pixels, then a
    stride-1 convolution. The kernel is (k, k, c_in, features), as flax stores it."""

    features: int
    kernel: int = 3
    transpose: bool = False
    compute_dtype: Any = None  # the products' operands (train.precision)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        k = self.kernel
        w = self.param(
            "kernel",
            nn.initializers.lecun_normal(),
            (k, k, x.shape[-1], self.features),
        )
        b = self.param("bias", nn.initializers.zeros, (self.features,))
        if self.transpose:
            return _overlap_add(x, w, self.compute_dtype) + b[None, None]
        total = [max((math.ceil(n / 2) - 1) * 2 + k - n, 0) for n in x.shape[:2]]
        pad = [(t // 2, t - t // 2, 0) for t in total] + [(0, 0, 0)]
        x = lax.pad(x, 0.0, pad)
        h = (x.shape[0] - k) // 2 + 1
        v = (x.shape[1] - k) // 2 + 1
        cols = [
            x[i : i + 2 * (h - 1) + 1 : 2, j : j + 2 * (v - 1) + 1 : 2]
            for i in range(k)
            for j in range(k)
        ]
        cols = jnp.concatenate(cols, axis=-1)
        return (
            product(cols, w.reshape(-1, self.features), self.compute_dtype)
            + b[None, None]
        )


def _overlap_add(x: Array, w: Array, compute_dtype: Any = None) -> Array:
    """The stride-2 transposed convolution of x (h, w, c_in) by w (k, k, c_in, c_out)
    with lax.conv_transpose's 'SAME' padding, (2h, 2w, c_out). As lax does it, it is
    a stride-1 convolution of x with zeros inserted between its pixels, padded by lo
    = k - 1 (k < 3) or ceil(k / 2) before: output pixel t gets x[p] w[i] wherever
    2p + lo - i = t. Here each input pixel's k x k products are one matrix product
    (no zeros multiplied), and tap (i, j)'s products are added at rows 2p + lo - i,
    columns 2q + lo - j: its map with one zero between pixels, shifted (lax.pad
    with interior padding, negative low padding cropping)."""
    h, v, _ = x.shape
    k, c_out = w.shape[0], w.shape[-1]
    lo = k - 1 if k < 3 else math.ceil(k / 2)
    taps = product(
        x, jnp.moveaxis(w, 2, 0).reshape(x.shape[-1], -1), compute_dtype
    ).reshape(h, v, k, k, c_out)
    out = jnp.zeros((2 * h, 2 * v, c_out), taps.dtype)
    for i in range(k):
        for j in range(k):
            pad = ((lo - i, 1 - lo + i, 1), (lo - j, 1 - lo + j, 1), (0, 0, 0))
            out = out + lax.pad(taps[:, :, i, j], jnp.zeros((), taps.dtype), pad)
    return out


def _float32_dot(*args, **kwargs) -> Array:
    """lax.dot_general accumulating and returning float32."""
    return lax.dot_general(*args, **kwargs, preferred_element_type=jnp.float32)


class ConvVAE(nn.Module):
    """Attributes:
    latent_dim: k.
    shape: (h, w, c) of one image.
    channels: the encoder's channel count per stride-2 layer (the decoder mirrors it).
    kernel: the convolutions' kernel size.
    """

    latent_dim: int
    shape: tuple[int, int, int]
    channels: Sequence[int] = (16, 32)
    kernel: int = 3
    compute_dtype: Any = None  # the products' operands (train.precision)

    output_layer = ("out",)  # the protocol: the decoder's last layer

    def setup(self):
        k, dtype = self.kernel, self.compute_dtype
        # flax's Dense with bfloat16 operands and a float32 product (dtype None:
        # flax's float32 product, as before the setting existed)
        dense = {"dtype": dtype, "dot_general": _float32_dot} if dtype else {}
        self.down = [Conv(c, k, compute_dtype=dtype) for c in self.channels]
        self.head = nn.Dense(2 * self.latent_dim, **dense)
        h0, w0 = self.bottom()
        self.lift = nn.Dense(h0 * w0 * self.channels[-1], **dense)
        up = reversed(tuple(self.channels[:-1]))
        self.up = [Conv(c, k, True, compute_dtype=dtype) for c in up]
        self.out = Conv(self.shape[2], k, True, compute_dtype=dtype)

    def bottom(self) -> tuple[int, int]:
        """The encoder's last feature map, (h0, w0)."""
        depth = 2 ** len(self.channels)
        return math.ceil(self.shape[0] / depth), math.ceil(self.shape[1] / depth)

    def encode(self, x: Array) -> tuple[Array, Array]:
        """(h, w, c) -> mu (k,), log s^2 (k,)."""
        for conv in self.down:
            x = nn.relu(conv(x))
        out = self.head(x.reshape(-1))
        return out[: self.latent_dim], out[self.latent_dim :]

    def decode(self, z: Array, x: Array | None = None) -> Array:
        """(k,) -> f(z) (h, w, c) (``x`` is not used: the protocol's signature)."""
        h0, w0 = self.bottom()
        y = nn.relu(self.lift(z)).reshape(h0, w0, self.channels[-1])
        for conv in self.up:
            y = nn.relu(conv(y))
        return self.out(y)[: self.shape[0], : self.shape[1]]

    def __call__(self, x: Array, eps: Array) -> tuple[Array, Array, Array]:
        mu, logvar = self.encode(x)
        return mu, logvar, self.decode(mu + jnp.exp(0.5 * logvar) * eps)
