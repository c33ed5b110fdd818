"""The training program: a chunk of steps for a whole stack of models, one ``jit``.

What fixes array shapes or code (widths, latent dim, batch size, optimizer, chunk
length) is the frozen :class:`Static`, closed over at build time; the swept numbers
(sigma^2, beta, learning rate, seed) arrive as a traced :class:`Point` whose leaves
carry the models axis first. A grid of any size compiles once per static configuration.

Randomness (all from ``Static.seed``, never from a model's slot in the stack):
  * each model's initialisation and reparameterisation noise come from its grid
    ``seed`` value alone, so points that differ only in sigma^2 or beta share them
    (common random numbers: smoother KL(sigma^2) curves);
  * minibatches (drawn with replacement) depend only on the step and are shared by every
    model when ``shared_batches`` is set, else they also depend on the grid seed.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax import Array, shard_map
from jax.sharding import PartitionSpec as P

from phasevae.models.discrete import CategoricalVAE
from phasevae.models.ladder import LadderVAE
from phasevae.models.sphere import SphereVAE
from phasevae.models.vae import (
    VAE,
    Terms,
    collapse_grams,
    example_terms,
    mutual_information,
    objective,
)
from phasevae.spec import LATER_AXES


class Point(NamedTuple):
    """Traced hyper-parameters of one grid point (or, stacked, of many: shape (M,))."""

    sigma2: Array  # float32, decoder variance
    beta: Array  # float32, KL weight
    learning_rate: Array  # float32
    seed: Array  # uint32, the grid seed: chooses initialisation and noise
    kl_warmup_steps: Array  # float32, beta ramps from 0 over this many steps (0: none)
    decoder_init_scale: Array  # float32, scale of the decoder's last layer at init
    free_bits: Array  # float32, floor on each dim's minibatch KL in the objective
    kl_cycle_steps: Array  # float32, period of cyclical KL annealing (0: none)
    kl_cycle_ramp: Array  # float32, fraction of the period beta ramps over
    mi_weight: Array  # float32, weight of the -I(x; z) term in the objective
    entropy_target: Array  # float32, a target for each code's usage entropy (0: none)
    entropy_weight: Array  # float32, the weight of the entropy target's penalty
    top_kl_weight: Array  # float32, a ladder's weight on its top layer's KL (kappa)
    state_noise: Array  # float32, the variance of a VRNN state's reading noise
    context: Array  # float32, the features an AR head reads (-1: all it has)

    @classmethod
    def from_table(cls, table) -> Point:
        """Stacked points from columns (a grid table, or a dict of arrays); an axis
        that is absent takes its default (:data:`phasevae.spec.LATER_AXES`)."""
        n = len(table["sigma2"])
        cols = {
            f: np.asarray(table[f]) if f in table else np.full(n, LATER_AXES[f])
            for f in cls._fields
        }
        return cls(
            **{
                f: v.astype(np.uint32 if f == "seed" else np.float32)
                for f, v in cols.items()
            }
        )

    @classmethod
    def one(cls, **values) -> Point:
        """A single point (no models axis): sigma2, beta, learning_rate and seed
        given, the other axes at their defaults unless given."""
        table = cls.from_table({k: [v] for k, v in values.items()})
        return cls(*(a[0] for a in table))


@struct.dataclass
class TrainState:
    """Everything that changes during training, for one model (or a stack)."""

    params: Any
    opt_state: Any
    diverged: Array  # bool: a NaN/inf appeared; the model is frozen since


class Metrics(NamedTuple):
    """Evaluation of one model on the fixed evaluation set (means over examples)."""

    loss: Array  # ()  recon + beta * kl, nats (= -ELBO at beta = 1)
    recon: Array  # () nats
    mse: Array  # ()  ||x - f(z)||^2 summed over features
    kl: Array  # ()   nats, summed over latent dims
    kl_dim: Array  # (k,) nats per latent dim
    var_dim: Array  # (k,) mean encoder variance per latent dim
    mi: Array  # ()   estimate of I(x; z), nats, on the first MI_SAMPLES examples
    decoder_sigma2: Array  # () the decoder variance used (learned: its current value)
    # () the directions the encoder uses: the participation ratio (tr C)^2 / tr(C^2)
    # of the covariance C over the evaluation examples of the posterior mean E[z|x]
    # (1 .. k); 0 when tr C < ACTIVE_VAR, i.e. the means do not move with x
    directions: Array
    # (S, K, C_hh) of model.collapse_grams, finished on the host into the collapse
    # eigenvalue (model.collapse_eigenvalue); None with a skip path
    collapse_grams: tuple[Array, Array, Array] | None
    # (k, k) E[J^T J] over the first GAIN_SAMPLES evaluation examples, J = d f / d z
    # (the decoder's output in its latent) at z = E[z|x]: its eigenvalues' square
    # roots are the decoder's gains (finished on the host); None for a module
    # without ``decode``
    decoder_gram: Array | None
    # (k,) a categorical latent's usage of each code, the perplexity exp H of its
    # aggregate posterior over the evaluation examples; None for other latents
    usage: Array | None
    # (layers,) a ladder latent's KL per layer (bottom first); None for others
    kl_layer: Array | None
    # (T,) a VRNN's I(x; z_t) per step, estimated as ``mi`` is (on the latent
    # standardised by its prior: what z_t carries beyond its prior's prediction from
    # the past); None for other models
    mi_step: Array | None
    # () a learned negative binomial dispersion: the geometric mean of its r over
    # the features; None for other models
    dispersion: Array | None = None


# train.precision -> the precision every matmul of the chunk is traced with
# (jax.default_matmul_precision; on a CPU XLA computes float32 for all three and only
# the operands' dtype changes the arithmetic), and the dtype the built-in models cast
# their layers' operands to (None: as they are)
MATMUL = {"float32": "highest", "tf32": "tensorfloat32", "bfloat16": "bfloat16"}
COMPUTE = {"float32": None, "tf32": None, "bfloat16": jnp.bfloat16}


@dataclass(frozen=True)
class Static:
    """What fixes shapes and code; one compilation per distinct value."""

    data_dim: int
    latent_dim: int
    encoder: tuple[int, ...]
    decoder: tuple[int, ...]
    batch_size: int
    chunk_steps: int
    optimizer: str = "adam"
    seed: int = 0
    shared_batches: bool = True
    learned_sigma2: bool = False
    skip: str = "none"
    # "gaussian"; "sphere" (phasevae.models.sphere, MLP widths above) with the
    # concentration fixed at ``concentration`` (0: learned); "categorical"
    # (phasevae.models.discrete): ``latent_categories`` values per code, drawn by
    # ``estimator`` at ``temperature``
    latent: str = "gaussian"
    concentration: float = 0.0
    latent_categories: int = 0
    estimator: str = "gumbel"
    temperature: float = 1.0
    # "ladder" (phasevae.models.ladder): a top layer of ``top_dim`` dims above the
    # ``latent_dim`` ones, the decoder reading it too with ``top_skip``
    top_dim: int = 0
    top_skip: bool = False
    # the decoder's likelihood (model.likelihood), a negative binomial's r (with
    # ``learned_dispersion``: the start of each feature's own) and a categorical's
    # categories per position
    likelihood: str = "gaussian"
    dispersion: float = 1.0
    learned_dispersion: bool = False
    categories: int = 0
    # an autoregressive decoder's context (model.context; 0: none) or the width of
    # its GRU (model.recurrent; 0: none)
    context: int = 0
    recurrent: int = 0
    # a masked-convolution head's radius (model.mask; 0: none), the image (h, w),
    # and a PixelCNN stack's masked layers and their width
    mask: int = 0
    image: tuple[int, ...] = ()
    mask_layers: int = 1
    mask_channels: int = 16
    # objective terms some grid point uses (a grid without them compiles without)
    free_bits: bool = False
    mi_term: bool = False
    entropy_term: bool = False
    # the matmuls' precision (train.precision, MATMUL)
    precision: str = "float32"
    # each device trains its models one after another (lax.map), each through the
    # whole chunk, instead of all at once (vmap); None: on CPU devices (one thread
    # each, where one model's working set stays in the caches; measured 1.05-1.38x
    # faster in the bench, 10 % slower on the small default sweep, docs/speed.md),
    # not on accelerators (whose parallelism is the vmap)
    in_sequence: bool | None = None
    # a module following the protocol (phasevae.models.vae) in place of the MLP VAE of
    # the widths above, and the shape one example reaches it in (default (data_dim,))
    module: nn.Module | None = None
    example_shape: tuple[int, ...] | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.example_shape or (self.data_dim,)

    @property
    def probe(self) -> bool:
        """The collapse probe needs the Gaussian MLP's layout without a skip path."""
        return self.module is None and self.skip == "none" and self.latent == "gaussian"


_INIT, _NOISE, _EVAL, _BATCH = range(4)


def scale_kernel(params: dict, path: tuple[str, ...], factor: Array) -> dict:
    """``params`` with the ``kernel`` at ``path`` multiplied by ``factor`` (the
    decoder-init-scale remedy on the decoder's last layer); unchanged for an empty
    path (the protocol check refuses a scale other than 1 for such a module)."""
    if not path:
        return params
    head, *rest = path
    if rest:
        return {**params, head: scale_kernel(params[head], tuple(rest), factor)}
    layer = params[head]
    return {**params, head: {**layer, "kernel": layer["kernel"] * factor}}


def kl_factor(point: Point, step: Array) -> Array:
    """The factor on beta at ``step``: the warm-up's min(1, step / kl_warmup_steps)
    times the cyclical annealing's min(1, (step mod P) / (ramp P)), each 1 without
    it. Evaluation always uses the full beta: the metrics are of the final
    objective."""
    ramp = step / jnp.maximum(point.kl_warmup_steps, 1.0)
    warm = jnp.where(point.kl_warmup_steps > 0, jnp.minimum(ramp, 1.0), 1.0)
    period = jnp.maximum(point.kl_cycle_steps, 1.0)
    phase = jnp.mod(step, period) / (point.kl_cycle_ramp * period)
    return warm * jnp.where(point.kl_cycle_steps > 0, jnp.minimum(phase, 1.0), 1.0)


MI_SAMPLES = 512  # the I(x; z) estimate costs n^2 per model: a subset of eval_x
GAIN_SAMPLES = 256  # the decoder's Jacobian costs k decoder passes per example
ACTIVE_VAR = 0.01  # total variance of E[z|x] over x below which no direction is used


def active_directions(means: Array) -> Array:
    """The participation ratio (tr C)^2 / tr(C^2) of the covariance C of ``means``
    (n, k) over its rows: the number of directions they spread over, between 1 and
    k; 0 when tr C < ``ACTIVE_VAR``."""
    centred = means - jnp.mean(means, axis=0, keepdims=True)
    cov = centred.T @ centred / means.shape[0]
    tr = jnp.trace(cov)
    ratio = tr**2 / jnp.maximum(jnp.sum(cov**2), 1e-30)
    return jnp.where(tr >= ACTIVE_VAR, ratio, 0.0)


def sequence_on(mesh) -> bool:
    """Whether models train in sequence by default on the devices of ``mesh``
    (None: JAX's default devices): on CPU devices (:attr:`Static.in_sequence`)."""
    platform = mesh.devices.flat[0].platform if mesh else jax.default_backend()
    return platform == "cpu"


class Trainer:
    """Builds the jitted programs for one static configuration.

    ``init(points)`` makes a stacked state; ``chunk(state, points, data, eval_x,
    start)`` runs ``chunk_steps`` steps from global step ``start`` and evaluates, for
    every model of the stack: vmapped over the models axis, or on CPU devices
    ``in_sequence`` (each device's models one after another,
    :attr:`Static.in_sequence`). ``traces`` counts how often ``chunk`` was traced.
    ``models_sharding`` (a sharding of the leading axis), when given, is where every
    output is placed.
    """

    def __init__(self, static: Static, models_sharding=None):
        self.static = static
        if static.module is not None:
            self.model = static.module
        elif static.latent == "categorical":
            self.model = CategoricalVAE(
                static.data_dim,
                static.latent_dim,
                static.encoder,
                static.decoder,
                static.latent_categories,
                static.estimator,
                static.temperature,
                compute_dtype=COMPUTE[static.precision],
            )
        elif static.latent == "ladder":
            self.model = LadderVAE(
                static.data_dim,
                static.latent_dim,
                static.top_dim,
                static.encoder,
                static.decoder,
                static.top_skip,
                compute_dtype=COMPUTE[static.precision],
            )
        elif static.latent == "sphere":
            self.model = SphereVAE(
                static.data_dim,
                static.latent_dim,
                static.encoder,
                static.decoder,
                static.concentration,
                compute_dtype=COMPUTE[static.precision],
            )
        else:
            self.model = VAE(
                static.data_dim,
                static.latent_dim,
                static.encoder,
                static.decoder,
                static.skip,
                log_input=static.likelihood in ("poisson", "negative_binomial"),
                compute_dtype=COMPUTE[static.precision],
                context=static.context,
                recurrent=static.recurrent,
                mask=static.mask,
                image=static.image,
                mask_layers=static.mask_layers,
                mask_channels=static.mask_channels,
            )
        self.tx = (
            optax.scale_by_adam() if static.optimizer == "adam" else optax.identity()
        )
        root = jax.random.key(static.seed)
        self._point_root, self._data_root = jax.random.split(root)
        self.traces = 0
        self._mesh = getattr(models_sharding, "mesh", None)
        self.in_sequence = (
            sequence_on(self._mesh)
            if static.in_sequence is None
            else static.in_sequence
        )
        # every output carries the models axis first: pin it to the models sharding so
        # that a chunk's outputs are laid out as its next call's inputs
        self.init = jax.jit(jax.vmap(self._init_one), out_shardings=models_sharding)
        self.chunk = jax.jit(
            self._chunk, donate_argnums=0, out_shardings=models_sharding
        )

    def _point_key(self, point: Point, tag: int) -> Array:
        return jax.random.fold_in(jax.random.fold_in(self._point_root, point.seed), tag)

    def _init_one(self, point: Point) -> TrainState:
        s = self.static
        params = self.model.init(
            self._point_key(point, _INIT),
            jnp.zeros(s.shape),
            self.noise(jax.random.key(0), 1)[0],  # its shape: values do not matter
        )
        params = {
            "params": scale_kernel(
                params["params"],
                getattr(self.model, "output_layer", None) or (),
                point.decoder_init_scale,
            )
        }
        if s.learned_sigma2:  # trained like any parameter, from the grid's value
            params["log_sigma2"] = jnp.log(point.sigma2)
        if s.learned_dispersion:  # one r per feature, from model.dispersion
            params["log_dispersion"] = jnp.full(s.data_dim, math.log(s.dispersion))
        return TrainState(params, self.tx.init(params), jnp.zeros((), bool))

    def noise(self, key: Array, n: int) -> Array:
        """The reparameterisation noise of n examples: standard normal (n, k), or
        the model's own (its ``latent_noise`` hook)."""
        if hasattr(self.model, "latent_noise"):
            return self.model.latent_noise(key, n)
        return jax.random.normal(key, (n, self.static.latent_dim))

    def mutual_information(self, terms: Terms, noise: Array) -> Array:
        """The I(x; z) estimate of :func:`phasevae.models.vae.mutual_information`, or
        the model's own (its ``latent_mi`` hook)."""
        if hasattr(self.model, "latent_mi"):
            return self.model.latent_mi(terms.mu, terms.var_dim, noise)
        k = terms.mu.shape[-1]  # a VRNN's noise goes on with its readings'
        return mutual_information(terms.mu, terms.var_dim, noise[:, :k])

    def _mi_steps(self, terms: Terms, noise: Array) -> Array | None:
        """A VRNN's I(x; z_t) per step (:attr:`Metrics.mi_step`); None for others."""
        if not hasattr(self.model, "steps_of"):
            return None
        t, k = self.model.steps_of
        n = terms.mu.shape[0]

        def by_step(a):  # (n, T k) -> (T, n, k)
            return a[:, : t * k].reshape(n, t, k).transpose(1, 0, 2)

        per = (by_step(terms.mu), by_step(terms.var_dim), by_step(noise))
        return jax.vmap(mutual_information)(*per)

    def _readings(self, eps: Array, point: Point) -> Array:
        """The noise with a VRNN's readings' part (its ``reading_noise`` trailing
        entries) scaled by sqrt(state_noise); other models' unchanged."""
        if not hasattr(self.model, "reading_noise"):
            return eps
        r = self.model.reading_noise
        scaled = eps[:, -r:] * jnp.sqrt(point.state_noise)
        return jnp.concatenate([eps[:, :-r], scaled], axis=1)

    def posterior_mean(self, terms: Terms) -> Array:
        """E[z|x] per example: the encoder mean, or the model's own (its
        ``latent_mean`` hook)."""
        if hasattr(self.model, "latent_mean"):
            return self.model.latent_mean(terms.mu, terms.var_dim)
        return terms.mu

    def kl_weights(self, point: Point) -> Array | None:
        """Each latent dim's weight on its KL in the objective: a ladder's top
        layer's are ``top_kl_weight``; None (all 1) for the other latents."""
        if not hasattr(self.model, "layers"):
            return None
        bottom, top = self.model.layers
        return jnp.concatenate([jnp.ones(bottom), jnp.full(top, point.top_kl_weight)])

    def _sigma2(self, params, point: Point) -> Array:
        """The decoder variance: the grid's, or the learned one."""
        if self.static.learned_sigma2:
            return jnp.exp(params["log_sigma2"])
        return point.sigma2

    def _dispersion(self, params) -> Array | float:
        """A negative binomial's r: model.dispersion, or the learned one per
        feature."""
        if self.static.learned_dispersion:
            return jnp.exp(params["log_dispersion"])
        return self.static.dispersion

    def _variables(self, params, point: Point) -> dict:
        """The model's variables at ``point``: with an autoregressive head, its
        weights beyond the point's reach (``grid.context``; -1: the whole head)
        held at 0 (:meth:`phasevae.models.heads.AutoregressiveHead.within_reach`),
        so that they have no gradient."""
        p = params["params"]
        s = self.static
        reach = s.context or s.recurrent or s.mask
        if reach:
            k = jnp.where(point.context < 0, reach, point.context)
            p = self.model.within_reach(p, k)
        return {"params": p}

    def _terms(self, params, point: Point, x: Array, eps: Array) -> Terms:
        """Loss terms of a batch x (n, N) with noise eps (n, k); each example
        reaches the model in its example shape."""
        terms = functools.partial(
            example_terms,
            likelihood=self.static.likelihood,
            dispersion=self._dispersion(params),
            categories=self.static.categories,
        )
        return jax.vmap(terms, (None, None, 0, 0, None))(
            self.model,
            self._variables(params, point),
            x.reshape(x.shape[0], *self.static.shape),
            self._readings(eps, point),
            self._sigma2(params, point),
        )

    def batch_loss(
        self, params, point: Point, xb: Array, eps: Array, step: Array
    ) -> Array:
        """The training objective of one model on a batch xb (n, N), noise eps
        (n, k): the mean of recon + beta' KL, beta' = beta * :func:`kl_factor`, plus
        beta' sum_j (max(lambda, KL_j) - KL_j) with the minibatch mean KL_j where
        free bits lambda > 0 (below the floor a dim's KL then has no gradient),
        minus mi_weight * I(x; z) (:func:`phasevae.models.vae.mutual_information`),
        plus w sum_d max(0, H - H_d) for a categorical latent's entropy target H > 0
        (w its entropy_weight), H_d the usage entropy of code d on the minibatch."""
        terms = self._terms(params, point, xb, eps)
        beta = point.beta * kl_factor(point, step)
        loss = jnp.mean(objective(terms, beta, self.kl_weights(point)))
        if self.static.free_bits:
            kl = jnp.mean(terms.kl_dim, axis=0)
            lift = jnp.where(
                point.free_bits > 0, jnp.maximum(point.free_bits, kl) - kl, 0
            )
            loss = loss + beta * jnp.sum(lift)
        if self.static.mi_term:
            loss = loss - point.mi_weight * self.mutual_information(terms, eps)
        if self.static.entropy_term:
            short = point.entropy_target - self.model.latent_usage(terms.mu)
            loss = loss + point.entropy_weight * jnp.sum(jnp.maximum(short, 0.0))
        return loss

    def _batch_indices(self, key: Array, step: Array, n: int) -> Array:
        return jax.random.randint(
            jax.random.fold_in(key, step), (self.static.batch_size,), 0, n
        )

    def _step_one(
        self, state: TrainState, point: Point, data: Array, step: Array
    ) -> TrainState:
        s = self.static
        # with a step shared by every model (the usual case) and shared batches the
        # indices do not depend on the model: vmap leaves them, and the batch, unbatched
        root = self._data_root if s.shared_batches else self._point_key(point, _BATCH)
        idx = self._batch_indices(root, step, data.shape[0])
        xb = data[idx]
        noise_key = jax.random.fold_in(self._point_key(point, _NOISE), step)
        eps = self.noise(noise_key, s.batch_size)
        loss, grads = jax.value_and_grad(self.batch_loss)(
            state.params, point, xb, eps, step
        )
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = jax.tree.map(
            lambda p, u: p - point.learning_rate * u, state.params, updates
        )
        # a non-finite gradient makes a non-finite step (Adam's too), so finite new
        # parameters mean a finite step. Deciding on the gradients gave them a second
        # consumer, which cost the conv VAE's step 0.7-1.0 ms of 2.7-2.9 on one core
        # (docs/speed.md, 'Where the conv step's time went')
        finite = jnp.isfinite(loss)
        for leaf in jax.tree.leaves(params):
            finite = finite & jnp.all(jnp.isfinite(leaf))
        ok = finite & ~state.diverged

        def keep(new, old):
            return jnp.where(ok, new, old)

        return TrainState(
            jax.tree.map(keep, params, state.params),
            jax.tree.map(keep, opt_state, state.opt_state),
            state.diverged | ~finite,
        )

    def _evaluate_one(self, params, point: Point, eval_x: Array) -> Metrics:
        n = eval_x.shape[0]
        m = min(n, MI_SAMPLES)
        eps = self.noise(self._point_key(point, _EVAL), n)
        t = self._terms(params, point, eval_x, eps)
        kl = jnp.sum(t.kl_dim, axis=-1)
        return Metrics(
            loss=jnp.mean(objective(t, point.beta, self.kl_weights(point))),
            recon=jnp.mean(t.recon),
            mse=jnp.mean(t.sq_err),
            kl=jnp.mean(kl),
            kl_dim=jnp.mean(t.kl_dim, axis=0),
            var_dim=jnp.mean(t.var_dim, axis=0),
            mi=self.mutual_information(jax.tree.map(lambda a: a[:m], t), eps[:m]),
            decoder_sigma2=self._sigma2(params, point),
            dispersion=(
                jnp.exp(jnp.mean(params["log_dispersion"]))
                if self.static.learned_dispersion
                else None
            ),
            directions=active_directions(self.posterior_mean(t)),
            collapse_grams=(
                collapse_grams(
                    self.model,
                    self._variables(params, point),
                    eval_x,
                    self.static.likelihood,
                    self._dispersion(params),
                    self.static.categories,
                )
                if self.static.probe
                else None
            ),
            decoder_gram=self._decoder_gram(
                self._variables(params, point), self.posterior_mean(t), eval_x
            ),
            usage=(
                jnp.exp(self.model.latent_usage(t.mu))
                if hasattr(self.model, "latent_usage")
                else None
            ),
            kl_layer=self._kl_layers(t.kl_dim),
            mi_step=self._mi_steps(jax.tree.map(lambda a: a[:m], t), eps[:m]),
        )

    def _kl_layers(self, kl_dim: Array) -> Array | None:
        """A ladder's mean KL per layer (bottom first); None for other latents."""
        if not hasattr(self.model, "layers"):
            return None
        bottom = self.model.layers[0]
        kl = jnp.mean(kl_dim, axis=0)
        return jnp.stack([jnp.sum(kl[:bottom]), jnp.sum(kl[bottom:])])

    def _decoder_gram(self, variables, z: Array, eval_x: Array) -> Array | None:
        """E[J^T J] (k, k) over the first GAIN_SAMPLES examples, J the Jacobian of the
        decoder's output (the likelihood's natural parameter, flattened) in z at
        ``z`` (E[z|x]); None for a module without ``decode``: the guide's
        "landscape" diagnostic, whose largest singular value goes to 0 at collapse."""
        if not hasattr(self.model, "decode"):
            return None
        m = min(eval_x.shape[0], GAIN_SAMPLES)

        def jacobian(zi, xi):
            def out(z):
                f = self.model.apply(variables, z, xi, method="decode")
                return f.reshape(-1).astype(jnp.float32)

            # J v as the transpose of the pullback v -> J^T v, one v per latent
            # dim: forward mode (jacfwd) fails on a layer with a custom VJP only
            f, pullback = jax.vjp(out, zi)
            push = jax.linear_transpose(lambda u: pullback(u)[0], f)
            basis = jnp.eye(zi.shape[0], dtype=zi.dtype)
            return jax.vmap(lambda v: push(v)[0], out_axes=1)(basis)  # (D, k)

        j = jax.vmap(jacobian)(z[:m], eval_x[:m])
        if hasattr(self.model, "latent_tangent"):  # only where a draw can move
            j = j @ self.model.latent_tangent()
        return jnp.einsum("mdi,mdj->ij", j, j) / m

    def _chunk(
        self, state: TrainState, points: Point, data: Array, eval_x: Array, start: Array
    ) -> tuple[TrainState, Metrics]:
        """Args: state and points stacked (M, ...); data (n, N); eval_x (n_eval, N);
        start: int32, the global step of the chunk's first step, () for every model or
        (M,) per model (a slot refilled with a new point starts again from 0)."""
        self.traces += 1  # Python side effect: runs once per trace, never per call
        with jax.default_matmul_precision(MATMUL[self.static.precision]):
            return self._traced_chunk(state, points, data, eval_x, start)

    def _traced_chunk(self, state, points, data, eval_x, start):
        if self.in_sequence:
            return self._chunk_in_sequence(state, points, data, eval_x, start)
        per_model = jnp.ndim(start) == 1
        step_all = jax.vmap(self._step_one, (0, 0, None, 0 if per_model else None))

        def body(state, i):
            return step_all(state, points, data, start + i), None

        steps = jnp.arange(self.static.chunk_steps, dtype=jnp.int32)
        state, _ = jax.lax.scan(body, state, steps)
        metrics = jax.vmap(self._evaluate_one, (0, 0, None))(
            state.params, points, eval_x
        )
        return state, metrics

    def _chunk_in_sequence(self, state, points, data, eval_x, start):
        """The chunk ``in_sequence`` (Static.in_sequence): each device takes its
        share of the models (shard_map over the models axis) one after another
        (lax.map), each through all its steps and its evaluation. The same
        arithmetic per model as the vmapped chunk."""
        per_model = jnp.ndim(start) == 1
        steps = jnp.arange(self.static.chunk_steps, dtype=jnp.int32)

        def share(state, points, data, eval_x, start):
            def one(args):
                state, point, begin = args
                state, _ = jax.lax.scan(
                    lambda s, i: (self._step_one(s, point, data, begin + i), None),
                    state,
                    steps,
                )
                return state, self._evaluate_one(state.params, point, eval_x)

            begin = start if per_model else jnp.full(points.seed.shape, start)
            return jax.lax.map(one, (state, points, begin))

        if self._mesh is None:
            return share(state, points, data, eval_x, start)
        models = P(*self._mesh.axis_names)
        return shard_map(
            share,
            mesh=self._mesh,
            in_specs=(models, models, P(), P(), models if per_model else P()),
            out_specs=models,
            check_vma=False,
        )(state, points, data, eval_x, start)
