"""The model protocol, the paper's deep Gaussian VAE and its loss, for ONE example
(batch with jax.vmap).

The protocol, which every model a sweep trains follows (this MLP, the convolutional
VAE of :mod:`phasevae.models.conv`, a user's module through
:mod:`phasevae.models.registry`): a flax linen Module whose ``__call__(x, eps)`` takes
ONE example ``x`` in the data's example shape ((N,) for a table, (h, w, c) for images;
the MLP takes every example flat) and standard normal noise ``eps`` (k,), and returns
``(mu, logvar, xhat)``: the encoder's mean and log-variance (k,) and the decoder's mean
f(z) at z = mu + exp(logvar / 2) eps, of x's shape. Optionally ``output_layer``: the
path in ``params["params"]`` of the decoder's last layer, whose ``kernel`` the sweep
scales by grid.decoder_init_scale; and ``decode(z, x)``: the decoder's output for a
latent z (k,) and the example x (for a skip path or an autoregressive head; others
ignore it), whose Jacobian in z gives the decoder's gains (the metrics'
``decoder_gain_<j>``). The sweep supplies the rest: the initialisation from
the point's seed (``module.init(key, x, eps)``), the decoder variance sigma^2 (the
grid's, or learned), the loss below and the optimiser. Skip paths and the collapse probe
need the MLP's layout and are offered for it alone. A latent other than this Gaussian
one gives four hooks, ``latent_noise(key, n)``, ``latent_kl(mu, logvar)``,
``latent_mi(mu, var, noise)`` and ``latent_mean(mu, var)`` (the hyperspherical
latent of :mod:`phasevae.models.sphere`, the categorical one of
:mod:`phasevae.models.discrete`; a user's module has the Gaussian latent).

    encoder q(z|x) = N(mu(x), diag(s^2(x)))   MLP with ReLU, outputs (mu, log s^2)
    decoder p(x|z) = N(f(z), sigma^2 I)       MLP with ReLU, sigma^2 fixed
    prior   p(z)   = N(0, I)

All terms are in nats for one example. The objective minimised in training is
``recon + beta * kl`` with

    recon = ||x - f(z)||^2 / (2 sigma^2) + (N/2) ln(2 pi sigma^2)
    kl    = sum_j kl_j,   kl_j = 1/2 (mu_j^2 + s_j^2 - 1 - ln s_j^2)

and z = mu + s * eps, one reparameterised sample per example. With no hidden layers the
encoder and decoder are linear (the Lucas et al. linear VAE, the test oracle).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from phasevae.models.heads import AutoregressiveHead


class Dense(nn.Module):
    """y = x K^T + b with the kernel stored (out, in), as in torch.

    Under the models and examples vmaps the weight gradient is then the batched
    product d^T x laid out (models, out, in): XLA's CPU backend runs that form about
    3x faster than flax's (models, in, out) for the thin layers (out = 2k or N), and
    no slower for the wide ones (measured in results/README.md, speed section)."""

    features: int
    compute_dtype: Any = None  # operands cast to this, accumulated in float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel = self.param(
            "kernel",
            nn.initializers.lecun_normal(in_axis=-1, out_axis=-2),
            (self.features, x.shape[-1]),
        )
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        return product(x, kernel.T, self.compute_dtype) + bias


def product(a: Array, b: Array, compute_dtype: Any = None) -> Array:
    """a @ b, with ``compute_dtype`` (bfloat16 for ``train.precision``) its operands
    cast to it and the product accumulated and returned in float32."""
    if compute_dtype is None:
        return a @ b
    return jnp.matmul(
        a.astype(compute_dtype),
        b.astype(compute_dtype),
        preferred_element_type=jnp.float32,
    )


class MLP(nn.Module):
    """Dense layers with ReLU between them; the last layer is linear."""

    widths: Sequence[int]
    out: int
    compute_dtype: Any = None  # the layers' operands (Dense)

    @nn.compact
    def __call__(self, x: Array, hidden: bool = False) -> Array:
        """The output, or with ``hidden`` the last hidden layer's activations (x
        itself when there is none)."""
        for w in self.widths:
            x = nn.relu(Dense(w, self.compute_dtype)(x))
        return x if hidden else Dense(self.out, self.compute_dtype)(x)


class VAE(AutoregressiveHead):
    """Gaussian VAE for one example x of shape (N,).

    Attributes:
      data_dim: N.
      latent_dim: k.
      encoder: hidden widths of the encoder MLP.
      decoder: hidden widths of the decoder MLP.
      skip: a path from x into the decoder, which then sees [z, shortcut]:
        "none"; "plain", shortcut = x (the decoder can reconstruct without z);
        "gated", shortcut = sigmoid(G z) * x, a gate computed from z alone (no bias,
        so it cannot be held open without z).
      log_input: the encoder sees ln(1 + x) (counts: a Poisson decoder), as
        count VAEs do; the decoder and the loss see x.
      context: an autoregressive decoder when > 0: feature i's output also gets
        sum_j A[i, j] x[i - 1 - j] over the ``context`` features before it (a causal,
        banded linear head, A starting at 0), so the decoder can model what x's
        predecessors predict without z (docs/science.md, 'Autoregressive decoders').
      recurrent: a recurrent autoregressive decoder when > 0: feature i's output also
        gets a linear readout of the state of a GRU of that width that has read
        x[0], ..., x[i - 1] in column order (the readout starting at 0): a nonlinear
        head that sees the whole past. Not with ``context``.
      mask: a masked-convolution head when > 0, for images of shape ``image`` (h,
        w), one channel: pixel p's output also gets sum_o M[o] x[p + o] over the
        offsets o of PixelCNN's mask A of radius ``mask`` (the rows above within
        the radius, and the pixels to the left in p's own row), one weight per
        offset shared by every pixel, x zero outside the image (M starting at 0).
      mask_layers: with ``mask``, a PixelCNN head when > 1: that many masked
        convolutions of radius ``mask``, the first with mask A, the rest with mask
        B (:func:`phasevae.spec.stack_offsets`), ``mask_channels`` wide with ReLUs
        between them (zero padding), the last to one channel without a bias
        (starting at 0): a nonlinear head.
      compute_dtype: the dtype the layers' matmul operands are cast to (bfloat16
        for ``train.precision = "bfloat16"``), accumulated in float32; None: float32.
    """

    data_dim: int
    latent_dim: int
    encoder: Sequence[int]
    decoder: Sequence[int]
    skip: str = "none"
    log_input: bool = False
    compute_dtype: Any = None
    context: int = 0
    recurrent: int = 0
    mask: int = 0
    image: tuple[int, ...] = ()
    mask_layers: int = 1
    mask_channels: int = 16

    def setup(self):
        self.enc = MLP(tuple(self.encoder), 2 * self.latent_dim, self.compute_dtype)
        self.dec = MLP(tuple(self.decoder), self.data_dim, self.compute_dtype)
        if self.skip == "gated":
            self.gate = nn.Dense(self.data_dim, use_bias=False)
        self.setup_head()

    @property
    def output_layer(self) -> tuple[str, ...]:
        """The decoder's last layer in the params (the protocol's optional part)."""
        return ("dec", f"Dense_{len(self.decoder)}")

    def encode(self, x: Array) -> tuple[Array, Array]:
        """(N,) -> mu (k,), log s^2 (k,)."""
        h = self.enc(jnp.log1p(x) if self.log_input else x)
        return h[: self.latent_dim], h[self.latent_dim :]

    def features(self, x: Array) -> Array:
        """(N,) -> the encoder's last hidden activations h, from which (mu, log s^2)
        are affine."""
        return self.enc(jnp.log1p(x) if self.log_input else x, hidden=True)

    def decode(self, z: Array, x: Array | None = None) -> Array:
        """(k,), and x (N,) with a skip path or a context -> f(z) (N,), plus the
        autoregressive head's prediction from x's predecessors."""
        if self.skip == "none":
            out = self.dec(z)
        else:
            shortcut = x if self.skip == "plain" else nn.sigmoid(self.gate(z)) * x
            out = self.dec(jnp.concatenate([z, shortcut]))
        head = self.context or self.recurrent or self.mask
        return out + self.predicted(x) if head else out

    def __call__(self, x: Array, eps: Array) -> tuple[Array, Array, Array]:
        """x (N,), eps (k,) standard normal -> (mu, logvar, f(mu + s * eps))."""
        mu, logvar = self.encode(x)
        return mu, logvar, self.decode(mu + jnp.exp(0.5 * logvar) * eps, x)


def nll(
    x: Array,
    eta: Array,
    likelihood: str,
    dispersion: float | Array = 1.0,
    categories: int = 0,
) -> Array:
    """-ln p(x | eta) summed over features, for the decoder's output ``eta``: the
    mean of a unit-variance Gaussian, the logit of a Bernoulli, the log-rate of a
    Poisson, the log-mean of a negative binomial of dispersion r = ``dispersion``
    (variance m + m^2 / r; one r, or one per feature), the logits of a categorical
    per position (x one-hot in blocks of ``categories``) (docs/science.md, 'Other
    likelihoods')."""
    if likelihood == "categorical":
        logits = blocks(eta, categories)
        return jnp.sum(
            jax.nn.logsumexp(logits, axis=-1)
            - jnp.sum(blocks(x, categories) * logits, axis=-1)
        )
    if likelihood == "bernoulli":
        return jnp.sum(jax.nn.softplus(eta) - x * eta)
    if likelihood == "poisson":
        return jnp.sum(jnp.exp(eta) - x * eta + jax.scipy.special.gammaln(x + 1.0))
    if likelihood == "negative_binomial":
        r, gammaln = dispersion, jax.scipy.special.gammaln
        log_r = jnp.log(r)
        return jnp.sum(
            gammaln(r)
            + gammaln(x + 1.0)
            - gammaln(x + r)
            - r * log_r
            - x * eta
            + (r + x) * jnp.logaddexp(log_r, eta)
        )
    return jnp.sum(0.5 * (x - eta) ** 2 + 0.5 * math.log(2.0 * math.pi))


def blocks(v: Array, categories: int) -> Array:
    """(..., B x K) -> (..., B, K): a categorical's positions, K = ``categories``."""
    return v.reshape(*v.shape[:-1], -1, categories)


def mean_of(eta: Array, likelihood: str, categories: int = 0) -> Array:
    """The likelihood's mean E[x | eta]."""
    if likelihood == "categorical":
        return jax.nn.softmax(blocks(eta, categories), axis=-1).reshape(eta.shape)
    if likelihood == "bernoulli":
        return jax.nn.sigmoid(eta)
    if likelihood in ("poisson", "negative_binomial"):
        return jnp.exp(eta)
    return eta


def categorical_fisher_times(eta: Array, g: Array, categories: int) -> Array:
    """F g for the categorical's Fisher information F in its logits ``eta`` (N,)
    and g (N, d): per position, a block of ``categories`` logits, diag(p) - p p^T
    (p the softmax). It is also the second derivative of -ln p(x | eta) whatever x
    (the canonical link)."""
    p = blocks(mean_of(eta, "categorical", categories), categories)[..., None]
    gb = g.reshape(p.shape[0], categories, -1)
    return (p * gb - p * jnp.sum(p * gb, axis=1, keepdims=True)).reshape(g.shape)


def score_and_curvature(
    x: Array,
    eta: Array,
    likelihood: str,
    dispersion: float | Array = 1.0,
    categories: int = 0,
) -> tuple[Array, Array]:
    """For rows x (n, N) at their own decoder outputs eta (n, N): the score
    -d(-ln p(x | eta)) / d eta (n, N) (x - m for the canonical links, (x - m) r /
    (r + m) for the negative binomial's log-mean) and the second derivative of
    -ln p in each eta_i (n, N) (the variance at eta for the canonical links; for
    the negative binomial (x + r) r m / (r + m)^2, whose mean over the data is its
    Fisher information m r / (r + m) where m is the data mean). The second is
    meaningless for the categorical, whose logits couple within a position
    (:func:`categorical_fisher_times`)."""

    def one(xi, ei):
        def grad(e):
            return jax.grad(nll, argnums=1)(xi, e, likelihood, dispersion, categories)

        first, second = jax.jvp(grad, (ei,), (jnp.ones_like(ei),))
        return -first, second

    return jax.vmap(one)(x, eta)


class Terms(NamedTuple):
    """Loss terms of one example (nats, except ``sq_err``)."""

    # ()  Gaussian: ||x - f(z)||^2 / (2 sigma^2) + (N/2) ln(2 pi sigma^2); another
    # likelihood: -ln p(x | f(z)) / sigma^2 (sigma^2 its temperature)
    recon: Array
    sq_err: Array  # ()  ||x - E[x | f(z)]||^2
    kl_dim: Array  # (k,) KL of each latent dim to the prior
    var_dim: Array  # (k,) encoder variance s_j^2
    mu: Array  # (k,) encoder mean


def kl_per_dim(mu: Array, logvar: Array) -> Array:
    """Analytic KL(N(mu, e^logvar) || N(0, 1)) per dimension, nats."""
    return 0.5 * (mu**2 + jnp.exp(logvar) - 1.0 - logvar)


def example_terms(
    model: nn.Module,
    params,
    x: Array,
    eps: Array,
    sigma2: Array,
    likelihood: str = "gaussian",
    dispersion: float | Array = 1.0,
    categories: int = 0,
) -> Terms:
    """Loss terms for one example x (in the model's example shape) with noise eps
    (k,) and decoder variance sigma2 () (for another likelihood than the Gaussian,
    the temperature its negative log-likelihood is divided by). A model with another
    latent than the Gaussian gives its KL through its ``latent_kl`` hook
    (:mod:`phasevae.models.sphere`)."""
    mu, logvar, xhat = model.apply(params, x, eps)
    if likelihood == "gaussian":
        sq_err = jnp.sum((x - xhat) ** 2)
        n = x.size
        recon = sq_err / (2.0 * sigma2) + 0.5 * n * jnp.log(2.0 * math.pi * sigma2)
    else:
        sq_err = jnp.sum((x - mean_of(xhat, likelihood, categories)) ** 2)
        recon = nll(x, xhat, likelihood, dispersion, categories) / sigma2
    gaussian = not hasattr(model, "latent_kl")
    kl = kl_per_dim(mu, logvar) if gaussian else model.latent_kl(mu, logvar)
    return Terms(recon, sq_err, kl, jnp.exp(logvar), mu)


def mutual_information(mu: Array, var: Array, eps: Array) -> Array:
    """Estimate of I(x; z) under q for n examples, nats (the practitioner's guide).

    I = E_x E_{z ~ q(z|x)} [ln q(z|x) - ln q(z)] with q(z) the aggregate posterior
    (1/n) sum_j q(z|x_j), at one sample z_i = mu_i + sqrt(var_i) eps_i per example.
    The estimate is biased low near its ceiling ln n.

    Args:
      mu, var, eps: (n, k) encoder means, variances and standard normal noise.
    """
    z = mu + jnp.sqrt(var) * eps
    # log N(z_i; mu_j, var_j), summed over latent dims: (n, n)
    diff = z[:, None, :] - mu[None, :, :]
    log_q = -0.5 * jnp.sum(
        diff**2 / var[None] + jnp.log(2.0 * math.pi * var[None]), axis=-1
    )
    n = mu.shape[0]
    log_aggregate = jax.nn.logsumexp(log_q, axis=1) - jnp.log(n)
    return jnp.mean(jnp.diagonal(log_q) - log_aggregate)


def _z_path(model: VAE, z: Array) -> Array:
    return model.dec(z)


def collapse_grams(
    model: VAE,
    params,
    x: Array,
    likelihood: str = "gaussian",
    dispersion: float | Array = 1.0,
    categories: int = 0,
) -> tuple[Array, Array, Array]:
    """The three small matrices that :func:`collapse_eigenvalue` needs, measured on
    the data ``x`` (n, N): S = G^T D G (d_1, d_1), K = G^T C_rh (d_1, d_h) and
    C_hh (d_h, d_h), where h = model.features(x), C are covariances over x,
    G = d f / d a (N, d_1) at z = 0, a being the decoder's first pre-activation
    (obtained as the Jacobian with respect to the first layer's bias), r the
    likelihood's score at each example's decoder output eta(x) = f(0) + the
    autoregressive head's prediction from x's predecessors (x - eta(x) for the
    Gaussian: x's innovations) and D the mean over x of its second derivative
    (:func:`score_and_curvature`; the Gaussian's 1, sigma^2 being compared with
    lambda_c; block-diagonal for the categorical, which takes no head). At
    collapse that r is what is left for z to explain (docs/science.md, 'Other
    likelihoods' and 'Autoregressive decoders'). No skip path.

    Only matrix products run here, inside the compiled training program; the
    eigen-decompositions run on the host (XLA's CPU LAPACK calls, sharded over many
    CPU devices, deadlocked the program)."""
    p = params["params"]
    h = jax.vmap(lambda xi: model.apply(params, xi, method=VAE.features))(x)
    h = h - jnp.mean(h, axis=0, keepdims=True)
    # each example's decoder output at collapse: f(0) plus the autoregressive
    # head's prediction from x's predecessors (0 without a head)
    ahead = jax.vmap(lambda xi: model.apply(params, xi, method=VAE.predicted))(x)
    n = x.shape[0]

    def f_of_bias(b):
        dec0 = {**p["dec"]["Dense_0"], "bias": b}
        q = {"params": {**p, "dec": {**p["dec"], "Dense_0": dec0}}}
        # the decoder's z path (no skip path here; the head does not depend on z)
        return model.apply(q, jnp.zeros((model.latent_dim,)), method=_z_path)

    bias = p["dec"]["Dense_0"]["bias"]
    g = jax.jacfwd(f_of_bias)(bias)  # (N, d_1)
    f0 = f_of_bias(bias)
    score, curvature = score_and_curvature(
        x, f0[None, :] + ahead, likelihood, dispersion, categories
    )
    if likelihood == "categorical":
        dg = categorical_fisher_times(f0, g, categories)
    else:
        dg = jnp.mean(curvature, axis=0)[:, None] * g
    r = score - jnp.mean(score, axis=0, keepdims=True)
    return g.T @ dg, g.T @ (r.T @ h) / n, h.T @ h / n


EIG_RTOL = 1e-6  # eigenvalues of a Gram matrix below this fraction of its top are 0


def collapse_eigenvalue(s, k, c_hh) -> np.ndarray:
    """The eigenvalue lambda_c whose comparison with beta * sigma^2 decides whether the
    collapsed state of a network is stable: collapse is a local minimum of the loss
    when beta sigma^2 > lambda_c and a saddle that the encoder and decoder escape
    together when beta sigma^2 < lambda_c. For the linear VAE lambda_c = lambda_max, the
    top eigenvalue of the data covariance (docs/science.md); for a deep one it is
    lambda_max of the part of the data that the encoder's features h can encode and
    the decoder can output along its z-Jacobian:

        lambda_c = lambda_max( P_G C_xh C_hh^+ C_hx P_G )
                 = lambda_max( S^{+1/2} K C_hh^+ K^T S^{+1/2} ),

    with P_G the projection onto the range of G and S, K, C_hh from
    :func:`collapse_grams` (the second form needs only small matrices).

    Derivation: at collapse the mean head's weights W and the decoder's z-weights A
    are 0 and the decoder outputs f(0) for every x. To second order in a
    perturbation (w, a) of one latent dim (w a row of W, a a column of A) the loss
    changes by

        [ a^T G^T G a - 2 a^T G^T C_xh w + beta sigma^2 w^T C_hh w ] / (2 sigma^2),

    the other parameters decoupling because E[eps] = 0 and the mean head's gradient
    vanishes there; this form has a negative direction iff lambda_c > beta sigma^2.
    Every latent dim gives the same form, so lambda_c belongs to the model. It is
    computed at the model's current encoder features and decoder Jacobian, whatever
    the state: it describes the collapsed state only where the model is collapsed or
    nearly so (KL ~ 0).

    Args:
      s, k, c_hh: the grams, with any leading (models) axes; float64 numpy on the host.
    Returns:
      lambda_c with the leading axes.
    """
    s, k, c_hh = (np.asarray(a, np.float64) for a in (s, k, c_hh))
    b = _inv_sqrt(s) @ k @ _inv_sqrt(c_hh)
    return np.linalg.eigvalsh(b @ np.swapaxes(b, -1, -2))[..., -1]


def _inv_sqrt(a: np.ndarray) -> np.ndarray:
    """The pseudo-inverse square root of symmetric PSD matrices (..., d, d)."""
    e, v = np.linalg.eigh(a)
    keep = e > EIG_RTOL * e[..., -1:]
    scale = np.where(keep, 1.0 / np.sqrt(np.where(keep, e, 1.0)), 0.0)
    return (v * scale[..., None, :]) @ np.swapaxes(v, -1, -2)


def objective(terms: Terms, beta: Array, weights: Array | None = None) -> Array:
    """The minimised loss, recon + beta * KL (= -ELBO when beta = 1), each dim's KL
    times its weight where ``weights`` (k,) are given (a ladder's top layer)."""
    if weights is None:
        kl = terms.kl_dim
    else:
        kl = terms.kl_dim * jnp.broadcast_to(weights, terms.kl_dim.shape)
    return terms.recon + beta * jnp.sum(kl, axis=-1)
