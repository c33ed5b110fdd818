"""The autoregressive decoder heads (``model.context``, ``model.recurrent``,
``model.mask``): a part of the decoder's output predicted from x's predecessors, for
the MLP VAE (:mod:`phasevae.models.vae`) and the convolutional VAE
(:mod:`phasevae.models.conv`), which mix :class:`AutoregressiveHead` in.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from jax import Array

from phasevae.spec import mask_offsets


class AutoregressiveHead(nn.Module):
    """The heads, mixed into a VAE that has the attributes ``data_dim`` (N),
    ``context``, ``recurrent``, ``mask``, ``image`` (h, w), ``mask_layers`` and
    ``mask_channels`` (:class:`phasevae.models.vae.VAE` documents each), and calls
    :meth:`setup_head` in its ``setup``. Its parameters sit at the model's top level
    (``ar``; ``gru`` and ``readout``; ``masked`` or ``stack_<i>``)."""

    def setup_head(self) -> None:
        """The head's parameters and layers (none without a head)."""
        if self.context:
            self.ar = self.param(
                "ar", nn.initializers.zeros, (self.data_dim, self.context)
            )
        if self.mask and self.mask_layers > 1:
            self.stack = [
                nn.Dense(self.mask_channels) for _ in range(self.mask_layers - 1)
            ] + [nn.Dense(1, use_bias=False, kernel_init=nn.initializers.zeros)]
        elif self.mask:
            self.masked = self.param(
                "masked", nn.initializers.zeros, (len(mask_offsets(self.mask)),)
            )
        if self.recurrent:
            self.gru = nn.GRUCell(features=self.recurrent)
            self.readout = nn.Dense(1, kernel_init=nn.initializers.zeros)

    def predicted(self, x: Array) -> Array:
        """(N,) -> the autoregressive head's part of the output: feature i's
        sum_j A[i, j] x[i - 1 - j], the readout of the GRU's state after x[i - 1],
        the masked convolution's sum_o M[o] x[p + o], or the PixelCNN stack's
        output (0 without a head)."""
        n = x.shape[-1]
        if self.mask and self.mask_layers > 1:
            return self._pixelcnn(x.reshape(*self.image, 1))
        if self.mask:
            views = masked_views(x.reshape(self.image), mask_offsets(self.mask))
            return views @ self.masked
        if self.recurrent:
            return self.readout(self._states(jnp.pad(x, (1, 0))[:n, None]))[:, 0]
        if not self.context:
            return jnp.zeros_like(x)
        lagged = jnp.stack(
            [jnp.pad(x, (j + 1, 0))[:n] for j in range(self.context)], axis=-1
        )  # (N, context): x[i - 1 - j], 0 before the first feature
        return jnp.sum(self.ar * lagged, axis=-1)

    def within_reach(self, params: dict, k: Array) -> dict:
        """``params`` with the autoregressive head's weights beyond reach ``k``
        (``grid.context``) held at 0: a linear head's beyond k predecessors, a
        masked head's (every layer of a stack) beyond radius k, and for a GRU head
        the state units from k on, which then reach neither the other units nor the
        readout. k = 0 leaves no head: its prediction is 0 (a GRU's readout bias
        and a stack's last layer, which would add a learned constant, held at 0)."""
        if self.context:
            return {**params, "ar": params["ar"] * (jnp.arange(self.context) < k)[None]}
        if self.recurrent:
            units = (jnp.arange(self.recurrent) < k)[:, None]  # kernels' input rows
            gru = {
                name: {**v, "kernel": v["kernel"] * units} if name[0] == "h" else v
                for name, v in params["gru"].items()
            }  # hr, hz, hn read the state
            readout = params["readout"]
            kernel, bias = readout["kernel"] * units, readout["bias"] * (k > 0)
            out = {"kernel": kernel, "bias": bias}
            return {**params, "gru": gru, "readout": out}
        if not self.mask:
            return params
        a_mask = mask_offsets(self.mask)

        def rows(offsets, channels: int) -> Array:  # masked_views' columns
            radius = np.array([max(abs(dy), abs(dx)) for dy, dx in offsets])
            return jnp.repeat(jnp.asarray(radius) <= k, channels)

        if self.mask_layers == 1:
            return {**params, "masked": params["masked"] * rows(a_mask, 1)}
        out = dict(params)
        for i in range(self.mask_layers):
            reads = (
                rows([*a_mask, (0, 0)], self.mask_channels) if i else rows(a_mask, 1)
            )
            if i == self.mask_layers - 1:  # the last layer, without a bias
                reads = reads & (k > 0)
            layer = params[f"stack_{i}"]
            out[f"stack_{i}"] = {**layer, "kernel": layer["kernel"] * reads[:, None]}
        return out

    def _pixelcnn(self, image: Array) -> Array:
        """(h, w, 1) -> the stack's output at every pixel (h * w,): each layer a
        masked convolution (mask A first, then B) as a matmul of each pixel's
        masked neighbourhood, ReLU between layers."""
        a_mask = mask_offsets(self.mask)
        b_mask = [*a_mask, (0, 0)]
        for i, layer in enumerate(self.stack[:-1]):
            out = layer(masked_views(image, b_mask if i else a_mask))
            image = nn.relu(out).reshape(*self.image, self.mask_channels)
        return self.stack[-1](masked_views(image, b_mask))[:, 0]

    def _states(self, inputs: Array) -> Array:
        """The GRU's state after each of ``inputs`` (N, 1), from a zero state."""

        def step(cell, carry, xi):
            return cell(carry, xi)

        scan = nn.scan(step, variable_broadcast="params", split_rngs={"params": False})
        return scan(self.gru, jnp.zeros((self.recurrent,), inputs.dtype), inputs)[1]


def masked_views(image: Array, offsets: list[tuple[int, int]]) -> Array:
    """(h, w) or (h, w, c) -> (h * w, offsets * c): pixel p's neighbours x[p + o]
    over ``offsets`` (dy <= 0; :func:`phasevae.spec.mask_offsets`), each with
    its c channels, zero outside the image."""
    h, w = image.shape[:2]
    up = -min(dy for dy, _ in offsets)
    side = max(abs(dx) for _, dx in offsets)
    pad = ((up, 0), (side, side)) + ((0, 0),) * (image.ndim - 2)
    padded = jnp.pad(image, pad)
    views = [
        padded[up + dy : up + dy + h, side + dx : side + dx + w] for dy, dx in offsets
    ]
    return jnp.stack(views, axis=2).reshape(h * w, -1)
