"""Flax modules a user might write, plugged into sweeps by the tests: one that follows
the protocol of phasevae.models.vae and one of each way to break it."""

import math

import flax.linen as nn
import jax.numpy as jnp

from phasevae import model_factory


class TinyVAE(nn.Module):
    """An MLP VAE of the user's own, with a residual block in the decoder."""

    data_shape: tuple[int, ...]
    latent_dim: int
    width: int = 8

    output_layer = ("out",)

    @nn.compact
    def __call__(self, x, eps):
        h = nn.relu(nn.Dense(self.width)(x.reshape(-1)))
        stats = nn.Dense(2 * self.latent_dim)(h)
        mu, logvar = stats[: self.latent_dim], stats[self.latent_dim :]
        z = mu + jnp.exp(0.5 * logvar) * eps
        y = nn.relu(nn.Dense(self.width)(z))
        y = y + nn.relu(nn.Dense(self.width)(y))  # the residual block
        n = math.prod(self.data_shape)
        return mu, logvar, nn.Dense(n, name="out")(y).reshape(self.data_shape)


@model_factory
def make(data_shape, latent_dim, width=8):
    return TinyVAE(tuple(data_shape), latent_dim, width)


class _Broken(TinyVAE):
    how: str = ""

    @nn.compact
    def __call__(self, x, eps):
        if self.how == "shape":
            mu, logvar, xhat = TinyVAE.__call__(self, x, eps)
            return mu, logvar, xhat.reshape(-1)[:-1]
        if self.how == "nan":
            bad = self.param("bad", lambda key, s: jnp.full(s, jnp.nan), (1,))
            mu, logvar, xhat = TinyVAE.__call__(self, x, eps)
            return mu, logvar, xhat + bad
        if self.how == "batchnorm":
            x = nn.BatchNorm(use_running_average=False)(x)
        if self.how == "python_branch" and float(jnp.sum(x)) > 1e30:
            x = -x  # Python control flow on a value: cannot be traced
        return TinyVAE.__call__(self, x, eps)


@model_factory
def broken(data_shape, latent_dim, how):
    return _Broken(tuple(data_shape), latent_dim, how=how)


@model_factory
def raises(**kwargs):
    raise RuntimeError("the lab's config server is down")


@model_factory
def no_output_layer(data_shape, latent_dim):
    class Plain(TinyVAE):
        output_layer = None

    return Plain(tuple(data_shape), latent_dim)
