"""Your own VAE through a phasevae sweep: an MLP encoder and a decoder with a residual
block, written as any flax module, passed to ``pv.run`` as an object. Does the
collapse criterion beta * sigma^2 = lambda_max hold for it?

    python examples/residual_decoder.py [RUN_DIR]

The module follows the protocol of phasevae/models/vae.py: ``__call__(x, eps)`` on ONE
example returns ``(mu, logvar, xhat)``; the sweep does the rest (initialisation per
seed, the decoder variance of each grid point, the loss, the vmaps, checkpoints).
The same module can be named in a spec file instead:
``model.kind = "module"``, ``model.module = "residual_decoder:make"``.
"""

import sys

import flax.linen as nn
import jax.numpy as jnp

import phasevae as pv


class ResidualVAE(nn.Module):
    data_dim: int
    latent_dim: int
    width: int = 32

    output_layer = ("out",)  # lets grid.decoder_init_scale scale the last layer

    @nn.compact
    def __call__(self, x, eps):
        h = nn.relu(nn.Dense(self.width)(x))
        stats = nn.Dense(2 * self.latent_dim)(h)
        mu, logvar = stats[: self.latent_dim], stats[self.latent_dim :]
        z = mu + jnp.exp(0.5 * logvar) * eps
        y = nn.relu(nn.Dense(self.width)(z))
        y = y + nn.Dense(self.width)(nn.relu(nn.LayerNorm()(y)))  # residual block
        return mu, logvar, nn.Dense(self.data_dim, name="out")(y)


@pv.model_factory  # a spec may name only factories declared so (or Module classes)
def make(data_shape, latent_dim, width=32):
    """The factory a spec names (``model.options`` become its keyword arguments)."""
    return ResidualVAE(data_shape[0], latent_dim, width)


spec = {
    "data": {"source": "synthetic", "eigenvalues": [8.0, 2.0, 0.5, 0.125]},
    "model": {"latent_dim": 2},
    "train": {"steps": 1500, "eval_every": 250, "batch_size": 128},
    "grid": {"sigma2": {"min": 2.0, "max": 32.0, "num": 12}, "beta": [1.0]},
}

if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "runs/residual_decoder"
    run = pv.run(spec, out, model=ResidualVAE(4, 2))
    (t,) = run.analyze().transitions
    lo, hi = t.ci or (float("nan"), float("nan"))
    print(
        f"residual decoder: sigma2_c = {t.sigma2_c:.3g} [{lo:.3g}, {hi:.3g}], "
        f"lambda_max / beta = {t.theory_sigma2_c:.3g}, verdict: {t.verdict}"
    )
