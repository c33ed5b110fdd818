"""A variational recurrent network (VRNN, Chung et al. 2015) over the features of ONE
example read as a sequence x_1 .. x_T in column order, a latent z_t of ``latent_dim``
(= 1) dim at every step.

    prior     p(z_t | h_{t-1})      = N(mu_p(h_{t-1}), s_p^2(h_{t-1}))   (linear in h)
    encoder   q(z_t | x_t, h_{t-1}) = N(mu_q, s_q^2)                      (MLP)
    decoder   p(x_t | z_t, h_{t-1}) = N(f([z_t, h_{t-1}]), sigma^2)       (MLP)
    state     h_t = GRU(h_{t-1}, [y_t, z_t]),  h_0 = 0,  y_t = x_t + sqrt(s) n_t

The state reads x_t through Gaussian noise of variance s (``grid.state_noise``, 0 by
default: the plain VRNN): the guide's remedy for temporal collapse, which limits what
the state can carry of the past, so that the latent is needed for more of it.

The recurrent state can carry the past into the decoder, so the latent at step t is
needed only for what the past does not predict of x_t: its innovation. The KL of
step t is KL(q || p) at the step's prior; the model hands the sweep the posterior
standardised by the prior, mu = (mu_q - mu_p) / s_p and ln(s_q^2 / s_p^2), whose
Gaussian KL to N(0, 1) is exactly that. The metrics' ``kl_dim_t`` is step t's KL
and ``mi_step_t`` the information its standardised latent carries
(:attr:`VRNN.steps_of`).

The criterion (docs/science.md, 'Recurrent latents'): step t's latent collapses at
beta sigma^2 = D_t, the variance of x_t's innovation given x_1 .. x_{t-1} (for
Gaussian data, the Cholesky conditional variance), which is what the spectrum holds
for this model: so the per-dim cascade of the analysis is the order in which the
steps collapse, and the model's transition is at max_t D_t / beta (usually the first
step, which has no past). With state noise s > 0 the criterion is
:func:`phasevae.analysis.theory.reading_thresholds`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import Array

from phasevae.models.vae import MLP


class Step(nn.Module):
    """One step of the VRNN: (h_{t-1}, (x_t, e_t, n_t, given)) -> (h_t, (mu, logvar,
    xhat_t)). With ``given`` = 1, e_t is z_t itself (the decoder's input, for its
    gains); with 0 it is the standard normal noise of z_t = mu_q + s_q e_t. n_t is
    the noise of the state's reading of x_t, already scaled by sqrt(s)."""

    latent_dim: int
    state: int
    encoder: Sequence[int]
    decoder: Sequence[int]
    compute_dtype: Any = None

    @nn.compact
    def __call__(self, h: Array, inputs: tuple[Array, Array, Array]):
        x_t, e_t, n_t, given = inputs
        k = self.latent_dim
        prior = nn.Dense(2 * k, name="prior")(h)
        mu_p, lv_p = prior[:k], prior[k:]
        q = MLP(tuple(self.encoder), 2 * k, self.compute_dtype, name="enc")(
            jnp.concatenate([x_t[None], h])
        )
        mu_q, lv_q = q[:k], q[k:]
        z = jnp.where(given > 0, e_t, mu_q + jnp.exp(0.5 * lv_q) * e_t)
        xhat = MLP(tuple(self.decoder), 1, self.compute_dtype, name="dec")(
            jnp.concatenate([z, h])
        )[0]
        h = nn.GRUCell(features=self.state, name="cell")(
            h, jnp.concatenate([(x_t + n_t)[None], z])
        )[0]
        standardised = (mu_q - mu_p) * jnp.exp(-0.5 * lv_p)
        return h, (standardised, lv_q - lv_p, xhat)


class VRNN(nn.Module):
    """T = ``data_dim`` steps of a scalar x_t, each with a latent of ``latent_dim``
    dims; a GRU state of ``state`` units; encoder and decoder MLP widths."""

    data_dim: int
    latent_dim: int
    state: int
    encoder: Sequence[int]
    decoder: Sequence[int]
    compute_dtype: Any = None

    def setup(self):
        scan = nn.scan(
            Step,
            variable_broadcast="params",
            split_rngs={"params": False},
            in_axes=0,
            out_axes=0,
        )
        self.steps = scan(
            self.latent_dim, self.state, self.encoder, self.decoder, self.compute_dtype
        )

    @property
    def output_layer(self) -> tuple[str, ...]:
        return ("steps", "dec", f"Dense_{len(self.decoder)}")

    @property
    def steps_of(self) -> tuple[int, int]:
        """(T, dims per step): the metrics' ``mi_step_t`` is the information of
        step t's dims."""
        return (self.data_dim, self.latent_dim)

    @property
    def reading_noise(self) -> int:
        """How many trailing entries of an example's noise are the state's readings'
        (the sweep scales them by sqrt(``grid.state_noise``))."""
        return self.data_dim

    def latent_noise(self, key: Array, n: int) -> Array:
        """The noise of n examples: standard normal (n, T k + T), every step's
        latent's, then every step's reading's."""
        t, k = self.data_dim, self.latent_dim
        readings = jax.random.normal(jax.random.fold_in(key, 1), (n, t))
        return jnp.concatenate([jax.random.normal(key, (n, t * k)), readings], 1)

    def _run(self, x: Array, e: Array, readings: Array, given: float):
        t, k = self.data_dim, self.latent_dim
        flags = jnp.full((t,), given, x.dtype)
        h0 = jnp.zeros((self.state,), x.dtype)
        _, (mu, logvar, xhat) = self.steps(h0, (x, e.reshape(t, k), readings, flags))
        return mu.reshape(-1), logvar.reshape(-1), xhat

    def __call__(self, x: Array, eps: Array) -> tuple[Array, Array, Array]:
        """x (T,), eps (T k + T,): the latents' standard normal noise, then the
        state's readings' (scaled) -> (the standardised posterior means (T k,),
        log-variance ratios (T k,), x's reconstruction (T,))."""
        split = self.data_dim * self.latent_dim
        return self._run(x, eps[:split], eps[split:], 0.0)

    def decode(self, z: Array, x: Array | None = None) -> Array:
        """z (T k,), every step's latent, and x (T,), the sequence the state reads
        (without noise) -> the reconstruction (T,)."""
        return self._run(x, z, jnp.zeros_like(x), 1.0)[2]
