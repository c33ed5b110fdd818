"""A hyperspherical latent: z on the unit sphere S^{k-1}, a uniform prior, and the
power-spherical posterior (De Cao and Aziz 2020), for ONE example.

    q(z|x) = PS(m(x), kappa(x)),  density (1 + m^T z)^kappa / C(kappa)
    p(z)   = uniform on S^{k-1}

with alpha = (k - 1)/2 + kappa, b = (k - 1)/2 and the normaliser
C = 2^(alpha + b) pi^b Gamma(alpha) / Gamma(alpha + b). The KL to the prior depends on
the concentration kappa alone, not on the direction m:

    KL = ln |S^{k-1}| - ln C + kappa (ln 2 + psi(alpha) - psi(alpha + b)),

0 at kappa = 0 (the posterior is the prior) and growing with kappa. So this latent
collapses when kappa(x) -> 0; with a *fixed* concentration the KL is a constant and
the objective has no pull towards the prior at all (the remedy of Xu and Durrett
2018): what can still collapse is the information, I(x; z), when the decoder stops
reading z. A sweep records the KL as ``kl_dim_0`` (one KL, the concentration's; the
other ``kl_dim_j`` are 0), the posterior's spread 1 - E[m^T z] = (k - 1) /
(kappa + k - 1) as every ``var_dim_j`` (1 at the prior, like a Gaussian's variance),
and I(x; z) through the aggregate posterior of power-spherical densities.

Sampling is reparameterised: t = 2 s - 1 with s ~ Beta(alpha, b) (JAX's gamma
sampler carries the gradient with respect to alpha), v uniform on S^{k-2}, and the
Householder reflection that takes e_1 to m. The noise of one example is
``noise_size(k)`` standard normals, not k (:meth:`SphereVAE.latent_noise`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import Array
from jax.scipy.special import betaln, digamma, ndtr

from phasevae.models.vae import MLP

TINY = 1e-30  # floor of 1 + m^T z inside a logarithm


def _log_norm_over_2k(kappa: Array, k: int) -> Array:
    """ln C(kappa) - kappa ln 2 = (k - 1) ln 2 + b ln pi + ln B(alpha, b) - ln Gamma(b),
    without the cancellation of ln Gamma(alpha) - ln Gamma(alpha + b) at large
    kappa (betaln is accurate there, and float32 would lose whole nats)."""
    b = 0.5 * (k - 1)
    return (
        (k - 1) * math.log(2.0)
        + b * math.log(math.pi)
        + betaln(b + kappa, b)
        - math.lgamma(b)
    )


def log_normaliser(kappa: Array, k: int) -> Array:
    """ln C(kappa) of the power-spherical density on S^{k-1}."""
    return _log_norm_over_2k(kappa, k) + kappa * math.log(2.0)


def log_area(k: int) -> float:
    """ln of the surface area of S^{k-1}: ln 2 + (k/2) ln pi - ln Gamma(k/2)."""
    return math.log(2.0) + 0.5 * k * math.log(math.pi) - math.lgamma(0.5 * k)


def digamma_gap(a: Array, b: float) -> Array:
    """psi(a + b) - psi(a) for a > 0, b > 0: directly below a = 10, above it by the
    asymptotic series in differences that do not cancel (error < 1e-8)."""
    safe = jnp.maximum(a, 10.0)
    series = (
        jnp.log1p(b / safe)
        + b / (2.0 * safe * (safe + b))
        + b * (2.0 * safe + b) / (12.0 * safe**2 * (safe + b) ** 2)
    )
    return jnp.where(a < 10.0, digamma(a + b) - digamma(jnp.minimum(a, 10.0)), series)


def kl_to_uniform(kappa: Array, k: int) -> Array:
    """KL(PS(m, kappa) || uniform on S^{k-1}), nats (any m):
    ln |S^{k-1}| - ln C + kappa (ln 2 + psi(alpha) - psi(alpha + b))."""
    b = 0.5 * (k - 1)
    gap = digamma_gap(b + kappa, b)
    return log_area(k) - _log_norm_over_2k(kappa, k) - kappa * gap


def log_density(z: Array, m: Array, kappa: Array) -> Array:
    """ln PS(z; m, kappa) = kappa ln((1 + m^T z) / 2) - (ln C - kappa ln 2), for z,
    m (k,) unit vectors."""
    k = m.shape[-1]
    half = jnp.maximum(0.5 * (1.0 + jnp.sum(m * z, axis=-1)), TINY)
    return kappa * jnp.log(half) - _log_norm_over_2k(kappa, k)


TRIALS = 4  # Marsaglia-Tsang proposals per gamma draw; all rejected: p < 1e-5
GAMMA_NOISE = 2 * TRIALS + 1  # standard normals one gamma draw uses


def noise_size(k: int) -> int:
    """Standard normals one draw of :func:`sample` uses on S^{k-1}."""
    return GAMMA_NOISE + 2 * (k - 1)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def gamma(noise: Array, a: Array) -> Array:
    """One Gamma(a, 1) draw, a > 0, from ``GAMMA_NOISE`` standard normals, without a
    loop: Marsaglia and Tsang's method for Gamma(a + 1) with ``TRIALS`` proposals (the
    first accepted is taken; each is accepted with probability > 0.95 for
    a + 1 >= 1), times U^(1/a); uniforms are Phi of normals. jax.random.gamma rejects
    in a while loop, whose batched condition, with the models axis sharded over CPU
    devices, synchronises the devices at every iteration (a sweep ran 10-50x
    slower). The derivative in a is the implicit one, d g / d a = -(d F / d a) / p
    at the draw (``jax.lax.random_gamma_grad``), as jax.random.gamma's."""
    n, u, boost = noise[:TRIALS], ndtr(noise[TRIALS:-1]), ndtr(noise[-1])
    d = a + 1.0 - 1.0 / 3.0
    c = 1.0 / jnp.sqrt(9.0 * d)
    v = (1.0 + c * n) ** 3
    safe_v = jnp.where(v > 0, v, 1.0)
    log_u = jnp.log(jnp.maximum(u, TINY))
    accept = (v > 0) & (log_u < 0.5 * n**2 + d - d * safe_v + d * jnp.log(safe_v))
    g = d * safe_v[jnp.argmax(accept)]  # none accepted (p < 1e-5): the first
    return g * jnp.maximum(boost, TINY) ** (1.0 / a)


@gamma.defjvp
def _gamma_jvp(noise, primals, tangents):
    (a,), (da,) = primals, tangents
    a = jnp.asarray(a, jnp.result_type(float))
    g = gamma(noise, a)
    return g, jax.lax.random_gamma_grad(a, g) * da


def sample(noise: Array, m: Array, kappa: Array) -> Array:
    """One reparameterised draw z (k,) of PS(m, kappa) from ``noise_size(k)``
    standard normals: t = 2 s - 1 with s = G_alpha / (G_alpha + G_b) ~ Beta(alpha,
    b), G_b = chi^2_{k-1} / 2 exactly."""
    k = m.shape[-1]
    b = 0.5 * (k - 1)
    g_a = gamma(noise[:GAMMA_NOISE], b + kappa)
    g_b = 0.5 * jnp.sum(noise[GAMMA_NOISE : GAMMA_NOISE + k - 1] ** 2)
    t = 2.0 * g_a / (g_a + g_b) - 1.0
    v = noise[GAMMA_NOISE + k - 1 :]
    v = v / jnp.linalg.norm(v)
    y = jnp.concatenate([t[None], jnp.sqrt(jnp.maximum(1.0 - t**2, 0.0)) * v])
    # the reflection in the hyperplane normal to u = e_1 - m takes e_1 to m
    u = jnp.zeros((k,)).at[0].set(1.0) - m
    norm = jnp.linalg.norm(u)
    u = u / jnp.where(norm > 1e-6, norm, 1.0)
    z = y - 2.0 * jnp.dot(u, y) * u
    return jnp.where(norm > 1e-6, z, y)  # m = e_1: no reflection


def spread_to_kappa(logvar: Array, k: int) -> Array:
    """kappa from the spread ln(1 - E[m^T z]) = -ln(1 + kappa / (k - 1))."""
    return (k - 1) * jnp.expm1(-logvar)


def kappa_to_spread(kappa: Array, k: int) -> Array:
    return -jnp.log1p(kappa / (k - 1))


class SphereVAE(nn.Module):
    """The MLP VAE of :class:`phasevae.models.vae.VAE` with a hyperspherical latent.

    Attributes:
      data_dim, latent_dim (k >= 2), encoder, decoder: as for the Gaussian VAE; the
        encoder outputs the direction (k, normalised) and, for a learned
        concentration, kappa = softplus(one more output).
      concentration: 0 for a learned kappa(x), else kappa fixed at this value.
    """

    data_dim: int
    latent_dim: int
    encoder: Sequence[int]
    decoder: Sequence[int]
    concentration: float = 0.0
    compute_dtype: Any = None  # as the Gaussian VAE's

    def setup(self):
        extra = 1 if self.concentration == 0 else 0
        self.enc = MLP(tuple(self.encoder), self.latent_dim + extra, self.compute_dtype)
        self.dec = MLP(tuple(self.decoder), self.data_dim, self.compute_dtype)

    @property
    def output_layer(self) -> tuple[str, ...]:
        return ("dec", f"Dense_{len(self.decoder)}")

    def encode(self, x: Array) -> tuple[Array, Array]:
        """(N,) -> the direction m (k,) and kappa ()."""
        h = self.enc(x)
        raw = h[: self.latent_dim]
        m = raw / jnp.maximum(jnp.linalg.norm(raw), 1e-12)
        if self.concentration == 0:
            return m, jax.nn.softplus(h[self.latent_dim])
        return m, jnp.asarray(self.concentration, h.dtype)

    def __call__(self, x: Array, noise: Array) -> tuple[Array, Array, Array]:
        """x (N,), noise (``noise_size(k)`` normals) -> (m, the spread
        ln(1 - E[m^T z]) for every dim (k,), f(z)) with z ~ PS(m, kappa)."""
        m, kappa = self.encode(x)
        spread = jnp.full((self.latent_dim,), kappa_to_spread(kappa, self.latent_dim))
        return m, spread, self.decode(sample(noise, m, kappa))

    def decode(self, z: Array, x: Array | None = None) -> Array:
        """z (k,) on the sphere -> f(z) (N,) (``x`` is not used)."""
        return self.dec(z)

    # the latent's hooks (phasevae.models.vae.example_terms and the trainer use them in
    # place of the Gaussian's): pure functions, no parameters

    def latent_noise(self, key: Array, n: int) -> Array:
        """The noise of n examples: ``noise_size(k)`` standard normals each."""
        return jax.random.normal(key, (n, noise_size(self.latent_dim)))

    def latent_mean(self, m: Array, var: Array) -> Array:
        """E[z|x] = E[m^T z] m = (1 - spread) m, per example (n, k)."""
        return (1.0 - var) * m

    def latent_kl(self, m: Array, logvar: Array) -> Array:
        """(k,): the KL to the uniform prior in the first entry, 0 elsewhere."""
        k = self.latent_dim
        kl = kl_to_uniform(spread_to_kappa(logvar[0], k), k)
        return jnp.zeros((k,)).at[0].set(kl)

    def latent_mi(self, m: Array, var: Array, noise: Array) -> Array:
        """The aggregate-posterior estimate of I(x; z) for n examples (as
        :func:`phasevae.models.vae.mutual_information`), m (n, k), var (n, k) the
        spreads, noise the draws z_i were made with."""
        k = self.latent_dim
        kappa = spread_to_kappa(jnp.log(var[:, 0]), k)
        z = jax.vmap(sample)(noise, m, kappa)
        # ln q(z_i | x_j) (n, n) from the products z_i^T m_j as one matrix product
        # (a nested vmap of log_density, its products broadcast and summed, came out
        # of XLA's CPU fusion wrong under jit at n >= 256, jax 0.10.2)
        half = jnp.maximum(0.5 * (1.0 + z @ m.T), TINY)
        log_q = kappa[None, :] * jnp.log(half) - _log_norm_over_2k(kappa, k)[None, :]
        n = m.shape[0]
        log_aggregate = jax.nn.logsumexp(log_q, axis=1) - jnp.log(n)
        return jnp.mean(jnp.diagonal(log_q) - log_aggregate)
