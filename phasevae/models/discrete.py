"""A discrete latent: D codes of K values each, a uniform prior, for ONE example.

    q(z_d = c | x) = softmax(l_d(x))_c      the encoder's logits l (D, K)
    p(z_d = c)     = 1 / K

The KL of each code to the prior is exact, KL_d = sum_c q_c ln(K q_c) (0 at the
prior, ln K for a one-hot posterior). The decoder reads the D one-hot codes side by
side (D K inputs), drawn by one of two estimators:

- ``"gumbel"``: the Gumbel-softmax (concrete) relaxation y_d = softmax((l_d + g_d) /
  tau), g standard Gumbel noise, tau the temperature: a differentiable sample,
  one-hot as tau -> 0;
- ``"straight_through"``: the one-hot argmax(l_d + g_d) (an exact draw of q) forward,
  and the relaxation's gradient backward.

Collapse (q = the prior for every x) loses stability at beta sigma^2 = rho
lambda_max, rho the estimator's factor (:func:`phasevae.data.latent_factor`,
docs/science.md 'Discrete latents'): 1 for exact draws with the exact gradient,
K alpha^2 / gamma for the relaxation, K alpha for straight-through, alpha and gamma
the slope and the spread of the relaxed draw at the prior.

A sweep records each code's KL as ``kl_dim_d``; as ``var_dim_d`` the posterior's
entropy over ln K (1 at the prior, 0 one-hot: the part a Gaussian's variance plays);
the usage of each code, the perplexity exp H(mean_x q(z_d | x)) over the evaluation
examples (K when every value is used equally, 1 when one is used alone), as
``usage_dim_d``; I(x; z) through the aggregate posterior, as for the Gaussian. The
hooks (``latent_noise``, ``latent_kl``, ``latent_mi``, ``latent_mean``) are those
:mod:`phasevae.models.vae` describes; the encoder's "mean" output is the logits
(D K,). Two more are this latent's own:
``latent_usage`` (the usage entropy, for the metrics and the entropy target) and
``latent_tangent`` (the decoder's gains are read in the directions a draw can move).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import Array

from phasevae.models.vae import MLP

TINY = 1e-30  # floor of a normalised entropy inside a logarithm


def code_kl(logits: Array) -> Array:
    """(..., D, K) -> (..., D): KL(softmax(l_d) || uniform) = sum_c q_c ln(K q_c)."""
    logq = jax.nn.log_softmax(logits, axis=-1)
    k = logits.shape[-1]
    return jnp.sum(jnp.exp(logq) * logq, axis=-1) + math.log(k)


def entropy(logits: Array) -> Array:
    """(..., D, K) -> (..., D): the entropy of softmax(l_d), nats."""
    logq = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.sum(jnp.exp(logq) * logq, axis=-1)


def usage_entropy(logits: Array) -> Array:
    """(n, D, K) -> (D,): the entropy of each code's aggregate posterior, the mean
    over the n examples of softmax(l_d), nats (ln K when every value is used
    equally)."""
    mean = jnp.mean(jax.nn.softmax(logits, axis=-1), axis=0)
    return -jnp.sum(mean * jnp.log(jnp.maximum(mean, TINY)), axis=-1)


def relaxed(logits: Array, gumbel: Array, temperature: float, hard: bool) -> Array:
    """One draw per code (..., D, K): softmax((l + g) / tau), or with ``hard`` the
    one-hot argmax(l + g) forward and the relaxation's gradient backward."""
    soft = jax.nn.softmax((logits + gumbel) / temperature, axis=-1)
    if not hard:
        return soft
    one_hot = jax.nn.one_hot(jnp.argmax(logits + gumbel, axis=-1), logits.shape[-1])
    return soft + jax.lax.stop_gradient(one_hot - soft)


class CategoricalVAE(nn.Module):
    """The MLP VAE of :class:`phasevae.models.vae.VAE` with D = ``latent_dim``
    categorical codes of K = ``categories`` values.

    Attributes:
      data_dim, latent_dim, encoder, decoder: as for the Gaussian VAE; the encoder
        outputs D K logits, the decoder reads D K inputs.
      categories: K >= 2.
      estimator: "gumbel" or "straight_through".
      temperature: tau of the relaxation.
    """

    data_dim: int
    latent_dim: int
    encoder: Sequence[int]
    decoder: Sequence[int]
    categories: int
    estimator: str = "gumbel"
    temperature: float = 1.0
    compute_dtype: Any = None  # as the Gaussian VAE's

    def setup(self):
        width = self.latent_dim * self.categories
        self.enc = MLP(tuple(self.encoder), width, self.compute_dtype)
        self.dec = MLP(tuple(self.decoder), self.data_dim, self.compute_dtype)

    @property
    def output_layer(self) -> tuple[str, ...]:
        return ("dec", f"Dense_{len(self.decoder)}")

    def codes(self, flat: Array) -> Array:
        """(..., D K) -> (..., D, K)."""
        return flat.reshape(*flat.shape[:-1], self.latent_dim, self.categories)

    def __call__(self, x: Array, gumbel: Array) -> tuple[Array, Array, Array]:
        """x (N,), standard Gumbel noise (D K,) -> (the logits (D K,), ln of each
        code's posterior entropy over ln K (D,), f(y)) for the estimator's draw y."""
        logits = self.enc(x)
        y = relaxed(
            self.codes(logits),
            self.codes(gumbel),
            self.temperature,
            self.estimator == "straight_through",
        )
        spread = entropy(self.codes(logits)) / math.log(self.categories)
        return logits, jnp.log(jnp.maximum(spread, TINY)), self.decode(y.reshape(-1))

    def decode(self, z: Array, x: Array | None = None) -> Array:
        """z (D K,), the codes side by side -> f(z) (N,) (``x`` is not used)."""
        return self.dec(z)

    # the latent's hooks (phasevae.models.vae.example_terms and the trainer use them)

    def latent_noise(self, key: Array, n: int) -> Array:
        """The noise of n examples: standard Gumbel (n, D K)."""
        return jax.random.gumbel(key, (n, self.latent_dim * self.categories))

    def latent_kl(self, logits: Array, logvar: Array) -> Array:
        """(D,): each code's exact KL to the uniform prior."""
        return code_kl(self.codes(logits))

    def latent_mean(self, logits: Array, var: Array) -> Array:
        """E[y|x] as the decoder reads it: the posteriors side by side (n, D K)."""
        return jax.nn.softmax(self.codes(logits), axis=-1).reshape(logits.shape)

    def latent_tangent(self) -> Array:
        """(D K, D K): the projection onto the directions a draw can move in, the
        centring P = I - 1 1^T / K of each code (its values sum to 1), through which
        the decoder's gains are read."""
        k = self.categories
        centring = jnp.eye(k) - jnp.full((k, k), 1.0 / k)
        return jnp.kron(jnp.eye(self.latent_dim), centring)

    def latent_usage(self, logits: Array) -> Array:
        """Each code's usage entropy over the n examples (:func:`usage_entropy`)."""
        return usage_entropy(self.codes(logits))

    def latent_mi(self, logits: Array, var: Array, gumbel: Array) -> Array:
        """The aggregate-posterior estimate of I(x; z) for n examples (as
        :func:`phasevae.models.vae.mutual_information`) at the exact draws
        z_i = argmax(l_i + g_i): ln q(z_i | x_j) = sum_d ln q_d(z_id | x_j)."""
        draws = jax.nn.one_hot(
            jnp.argmax(self.codes(logits + gumbel), axis=-1), self.categories
        ).reshape(logits.shape)
        logq = jax.nn.log_softmax(self.codes(logits), axis=-1).reshape(logits.shape)
        log_q = draws @ logq.T  # (n, n): ln q(z_i | x_j)
        n = logits.shape[0]
        log_aggregate = jax.nn.logsumexp(log_q, axis=1) - jnp.log(n)
        return jnp.mean(jnp.diagonal(log_q) - log_aggregate)
