"""A hierarchical latent with top-down inference (a two-layer Ladder VAE), for ONE
example.

    p(z2) = N(0, I),  p(z1 | z2) = N(m(z2), I),  p(x | z1) = N(f(z1), sigma^2 I)

with m linear (the top-down path) and f the decoder MLP (with ``top_skip``, the
guide's remedy, f also reads z2: f([z1, z2])). Inference is Ladder-VAE style: one
bottom-up pass (the encoder MLP) gives z2's posterior N(mu2, s2^2) and a bottom-up
estimate N(mu_hat, s_hat^2) for z1, which is merged with the top-down prior
N(m(z2), 1) by precision weighting:

    v = 1 / (1 / s_hat^2 + 1),   mu1 = v (mu_hat / s_hat^2 + m(z2)),
    q(z1 | x, z2) = N(mu1, v).

The KLs are those of the two layers, KL(q(z2|x) || N(0, I)) and, at the sampled z2,
KL(q(z1|x,z2) || N(m(z2), I)); the model hands the sweep mu = [mu1 - m(z2), mu2] and
the log-variances [ln v, ln s2^2], so the Gaussian latent's per-dim KL is each
layer's. The metrics' ``kl_dim_j`` are layer 1's dims first (``latent_dim`` of
them), then layer 2's (``top_dim``); ``kl_layer_0`` and ``kl_layer_1`` are their
sums. The top layer's KL is weighted by ``grid.top_kl_weight`` (kappa) in the
objective: beta (KL_1 + kappa KL_2).

The criterion (docs/science.md, 'Hierarchical latents'): layer 1 collapses at beta
sigma^2 = lambda_max, as a one-layer VAE; with this top-down merge, in the linear
model, the top layer's collapsed state is unstable exactly when kappa < 1 while layer
1 is alive (kappa = 1, the plain ELBO, is the marginal case), and it dies with layer 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import Array

from phasevae.models.vae import MLP


class LadderVAE(nn.Module):
    """Two latent layers, z1 (``latent_dim``) below z2 (``top_dim``).

    Attributes:
      data_dim, latent_dim, encoder, decoder: as for the Gaussian VAE; the encoder's
        last layer gives (mu_hat, ln s_hat^2) for z1 and (mu2, ln s2^2) for z2.
      top_dim: z2's dims.
      top_skip: the decoder also reads z2 (a skip connection past layer 1).
    """

    data_dim: int
    latent_dim: int
    top_dim: int
    encoder: Sequence[int]
    decoder: Sequence[int]
    top_skip: bool = False
    compute_dtype: Any = None  # as the Gaussian VAE's

    def setup(self):
        k1, k2 = self.latent_dim, self.top_dim
        self.enc = MLP(tuple(self.encoder), 2 * (k1 + k2), self.compute_dtype)
        self.down = nn.Dense(k1, name="down")
        self.dec = MLP(tuple(self.decoder), self.data_dim, self.compute_dtype)

    @property
    def output_layer(self) -> tuple[str, ...]:
        return ("dec", f"Dense_{len(self.decoder)}")

    @property
    def layers(self) -> tuple[int, int]:
        """The dims of each layer, bottom first (the metrics' ``kl_layer_l``)."""
        return (self.latent_dim, self.top_dim)

    def __call__(self, x: Array, eps: Array) -> tuple[Array, Array, Array]:
        """x (N,), eps (k1 + k2,) standard normal -> ([mu1 - m(z2), mu2], [ln v,
        ln s2^2], f(z1) or f([z1, z2]))."""
        k1, k2 = self.latent_dim, self.top_dim
        h = self.enc(x)
        mu_hat, lv_hat = h[:k1], h[k1 : 2 * k1]
        mu2, lv2 = h[2 * k1 : 2 * k1 + k2], h[2 * k1 + k2 :]
        z2 = mu2 + jnp.exp(0.5 * lv2) * eps[k1:]
        m = self.down(z2)
        # precision weighting with the unit prior variance: v = sigmoid(ln s_hat^2),
        # mu1 = (1 - v) mu_hat + v m
        v = jax.nn.sigmoid(lv_hat)
        mu1 = (1.0 - v) * mu_hat + v * m
        z1 = mu1 + jnp.sqrt(v) * eps[:k1]
        mu = jnp.concatenate([mu1 - m, mu2])
        logvar = jnp.concatenate([jax.nn.log_sigmoid(lv_hat), lv2])
        return mu, logvar, self.decode(jnp.concatenate([z1, z2]))

    def latent_noise(self, key: Array, n: int) -> Array:
        """The noise of n examples: standard normal (n, k1 + k2)."""
        return jax.random.normal(key, (n, self.latent_dim + self.top_dim))

    def decode(self, z: Array, x: Array | None = None) -> Array:
        """z = [z1, z2] (k1 + k2,) -> f(z1), or f([z1, z2]) with ``top_skip``."""
        return self.dec(z if self.top_skip else z[: self.latent_dim])
