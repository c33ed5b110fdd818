"""The convolutional VAE (``model.kind = "conv"``), for ONE image x of shape
(h, w, c); it follows the model protocol of :mod:`phasevae.models.vae`.

    encoder  len(channels) convolutions, kernel x kernel, stride 2, 'SAME' padding,
             ReLU, flattened, then a dense layer to (mu, log s^2)
    decoder  a dense layer from z to the encoder's last feature map (ReLU), then
             len(channels) transposed convolutions, stride 2, with the channel counts
             in reverse, ReLU between them, the last one linear to c channels,
             cropped to (h, w)

Each stride halves the map (rounding up), so any h and w work; the decoder's map,
h0 * 2^depth >= h, is cropped back. With ``mask`` a masked-convolution head
(:mod:`phasevae.models.heads`) adds its prediction from each pixel's predecessors.

Layout (measured: docs/speed.md, the paragraph on ``--model conv``): a layer's value
is ``lax.conv`` (its transpose ``lax.conv_transpose``), and its gradients, through a
custom VJP, are those of the same map as matrix products: im2col, the kernel x
kernel shifted slices of the padded map concatenated, times the kernel as a matrix;
for the transpose, one product per input pixel (its k x k taps at once) and an
overlap-add of the taps into the output, so no inserted zero is multiplied or held.
The gradients XLA's CPU backend makes of ``lax.conv`` (a convolution with the batch
as features, and one with zeros inserted) ran a whole training step about 10x
slower, while its forward convolutions ran faster than im2col. Taken per example
(inside the batch's vmap), each kernel gradient is a batched product summed over the
batch, which XLA's CPU backend fuses and ran faster than one product over every
example's pixels. Forward mode is not defined (``jax.jvp`` of a layer raises). Under
a vmap over models the value is a grouped convolution (``feature_group_count`` =
models), which XLA's CPU backend runs slowly; a CPU trains its models in sequence,
so only an accelerator's vmapped program meets it (not measured).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import Array, lax

from phasevae.models.heads import AutoregressiveHead
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
        return _conv(x, w, self.compute_dtype, self.transpose) + b[None, None]


DIMENSIONS = ("NHWC", "HWIO", "NHWC")  # lax.conv's layout of map, kernel, output


def _same_padding(shape: tuple[int, ...], k: int) -> list[tuple[int, int]]:
    """'SAME' padding of a stride-2 convolution of a (h, w, ...) map, (lo, hi) per
    spatial axis."""
    total = [max((math.ceil(n / 2) - 1) * 2 + k - n, 0) for n in shape[:2]]
    return [(t // 2, t - t // 2) for t in total]


def _lax_conv(x: Array, w: Array, compute_dtype: Any, transpose: bool) -> Array:
    """The stride-2 convolution (or its transpose) of one map by ``lax.conv``,
    operands in ``compute_dtype`` if given, the result in float32."""
    if compute_dtype is not None:
        x, w = x.astype(compute_dtype), w.astype(compute_dtype)
    if transpose:
        y = lax.conv_transpose(
            x[None],
            w,
            (2, 2),
            "SAME",
            dimension_numbers=DIMENSIONS,
            preferred_element_type=jnp.float32,
        )
    else:
        y = lax.conv_general_dilated(
            x[None],
            w,
            (2, 2),
            _same_padding(x.shape, w.shape[0]),
            dimension_numbers=DIMENSIONS,
            preferred_element_type=jnp.float32,
        )
    return y[0]


def _unfold(x: Array, k: int) -> Array:
    """im2col: the k x k shifted slices of x (h, w, c) padded for a stride-2
    'SAME' convolution, concatenated, (ceil(h/2), ceil(w/2), k * k * c); times
    the kernel as a (k * k * c, c_out) matrix it is the convolution."""
    pad = [(lo, hi, 0) for lo, hi in _same_padding(x.shape, k)] + [(0, 0, 0)]
    x = lax.pad(x, 0.0, pad)
    h = (x.shape[0] - k) // 2 + 1
    v = (x.shape[1] - k) // 2 + 1
    cols = [
        x[i : i + 2 * (h - 1) + 1 : 2, j : j + 2 * (v - 1) + 1 : 2]
        for i in range(k)
        for j in range(k)
    ]
    return jnp.concatenate(cols, axis=-1)


def _tap_matrix(w: Array) -> Array:
    """A transposed convolution's kernel (k, k, c_in, c_out) as the (c_in,
    k * k * c_out) matrix that gives an input pixel's k x k taps at once."""
    return jnp.moveaxis(w, 2, 0).reshape(w.shape[2], -1)


def _spread(taps: Array) -> Array:
    """The overlap-add of a transposed convolution's taps (h, w, k, k, c_out) into
    its (2h, 2w, c_out) output, lax.conv_transpose's 'SAME' padding. As lax does
    it, the transpose is a stride-1 convolution of x with zeros inserted between
    its pixels, padded by lo = k - 1 (k < 3) or ceil(k / 2) before: output pixel t
    gets x[p] w[i] wherever 2p + lo - i = t. So tap (i, j) is added at rows
    2p + lo - i, columns 2q + lo - j: its map with one zero between pixels,
    shifted (lax.pad with interior padding, negative low padding cropping); no
    inserted zero is multiplied."""
    h, v, k, _, c_out = taps.shape
    lo = k - 1 if k < 3 else math.ceil(k / 2)
    out = jnp.zeros((2 * h, 2 * v, c_out), taps.dtype)
    for i in range(k):
        for j in range(k):
            pad = ((lo - i, 1 - lo + i, 1), (lo - j, 1 - lo + j, 1), (0, 0, 0))
            out = out + lax.pad(taps[:, :, i, j], jnp.zeros((), taps.dtype), pad)
    return out


def _pixel_sum(a: Array, b: Array, compute_dtype: Any) -> Array:
    """sum over pixels of a[p] b[p]^T: (h, w, m), (h, w, n) -> (m, n), a kernel's
    gradient; operands in ``compute_dtype`` if given, the sum in float32."""
    if compute_dtype is None:
        return jnp.einsum("hvm,hvn->mn", a, b)
    return jnp.einsum(
        "hvm,hvn->mn",
        a.astype(compute_dtype),
        b.astype(compute_dtype),
        preferred_element_type=jnp.float32,
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x: Array, w: Array, compute_dtype: Any, transpose: bool) -> Array:
    """A stride-2 convolution (or its transpose): ``lax.conv``'s value, its
    gradients as matrix products (module docstring)."""
    return _lax_conv(x, w, compute_dtype, transpose)


def _conv_forward(x, w, compute_dtype, transpose):
    return _lax_conv(x, w, compute_dtype, transpose), (x, w)


def _conv_backward(compute_dtype, transpose, residuals, g):
    """The gradients in x and w of :func:`_conv` at cotangent g, one example's:
    the convolution is unfold(x) @ W, the transpose spread(x @ W') (W, W' the
    kernel as a matrix), and each is linear in x and in W. A kernel's gradient
    is a sum over pixels, per example here (inside the batch's vmap), which the
    batch then sums (module docstring)."""
    x, w = residuals
    k, c_out = w.shape[0], w.shape[-1]
    if transpose:
        h, v, c_in = x.shape
        shape = jax.ShapeDtypeStruct((h, v, k, k, c_out), g.dtype)
        (taps,) = jax.linear_transpose(_spread, shape)(g)
        taps = taps.reshape(h, v, -1)
        dx = product(taps, _tap_matrix(w).T, compute_dtype)
        dw = _pixel_sum(x, taps, compute_dtype).reshape(c_in, k, k, c_out)
        return dx, jnp.moveaxis(dw, 0, 2)
    cols, unfold_pullback = jax.vjp(lambda x: _unfold(x, k), x)
    (dx,) = unfold_pullback(product(g, w.reshape(-1, c_out).T, compute_dtype))
    return dx, _pixel_sum(cols, g, compute_dtype).reshape(w.shape)


_conv.defvjp(_conv_forward, _conv_backward)


def _float32_dot(*args, **kwargs) -> Array:
    """lax.dot_general accumulating and returning float32."""
    return lax.dot_general(*args, **kwargs, preferred_element_type=jnp.float32)


class ConvVAE(AutoregressiveHead):
    """Attributes:
    latent_dim: k.
    shape: (h, w, c) of one image.
    channels: the encoder's channel count per stride-2 layer (the decoder mirrors it).
    kernel: the convolutions' kernel size.
    mask, mask_layers, mask_channels: a masked-convolution head on images of one
      channel (a PixelCNN stack when ``mask_layers`` > 1), added to the decoder's
      output as in the MLP VAE (:class:`phasevae.models.vae.VAE`).
    """

    latent_dim: int
    shape: tuple[int, int, int]
    channels: Sequence[int] = (16, 32)
    kernel: int = 3
    compute_dtype: Any = None  # the products' operands (train.precision)
    mask: int = 0
    mask_layers: int = 1
    mask_channels: int = 16

    output_layer = ("out",)  # the protocol: the decoder's last layer
    context = recurrent = 0  # the heads it does not take (a mask is its only one)

    @property
    def image(self) -> tuple[int, int]:
        return self.shape[0], self.shape[1]

    @property
    def data_dim(self) -> int:
        return math.prod(self.shape)

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
        self.setup_head()

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
        """(k,), and x (h, w, 1) with a masked head -> f(z) (h, w, c), plus the
        head's prediction from x's predecessors (``x`` is not used without one)."""
        h0, w0 = self.bottom()
        y = nn.relu(self.lift(z)).reshape(h0, w0, self.channels[-1])
        for conv in self.up:
            y = nn.relu(conv(y))
        out = self.out(y)[: self.shape[0], : self.shape[1]]
        if not self.mask:
            return out
        return out + self.predicted(x.reshape(-1)).reshape(self.shape)

    def __call__(self, x: Array, eps: Array) -> tuple[Array, Array, Array]:
        mu, logvar = self.encode(x)
        return mu, logvar, self.decode(mu + jnp.exp(0.5 * logvar) * eps, x)
