"""What a sweep spec is: the frozen dataclasses of its four sections, ``[data]``,
``[model]``, ``[train]`` and ``[grid]``, with every default, and what follows from
them alone (the axes' values, the static groups, the grid size). Loading and
validation are in :mod:`phasevae.spec`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from dataclasses import dataclass, field

import numpy as np

from phasevae.errors import BadInput
from phasevae.safeio import brief

_FACTORY = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
MAX_CONCENTRATION = 1e4  # a fixed power-spherical concentration (model.concentration)


class SpecError(BadInput):
    """A sweep spec that cannot be run as written."""


@dataclass(frozen=True)
class Refine:
    """Adaptive refinement of the sigma^2 axis: after the grid has trained, the KL
    curve of every (beta, ...) group is estimated and ``points`` new sigma^2 values
    are placed inside the transition's interval and around each other breakpoint of
    the KL fit (over its interval, and at least the grid cell it lies in); repeated
    ``rounds`` times, all in one run directory."""

    rounds: int = 2
    points: int = 4


@dataclass(frozen=True)
class Range:
    """An axis given as ``{min, max, num, scale}``: ``num`` points from min to max
    (``refine``, on sigma^2 only: see :class:`Refine`)."""

    min: float
    max: float
    num: int
    scale: str = "log"
    refine: Refine | None = None

    def values(self) -> tuple[float, ...]:
        if self.num == 1:
            return (float(self.min),)
        if self.scale == "log":
            v = np.geomspace(self.min, self.max, self.num)
        else:
            v = np.linspace(self.min, self.max, self.num)
        return tuple(float(x) for x in v)


Axis = tuple[float, ...] | Range


@dataclass(frozen=True)
class DataSpec:
    """Where the training data comes from and how it is normalised.

    ``synthetic``: zero-mean data with covariance eigenvalues ``eigenvalues`` in a
    random rotation drawn from ``seed``; its independent unit-variance components
    follow ``distribution``. ``digits``: scikit-learn's 8x8 digits, pixels scaled to
    [0, 1] (N = 64, n = 1797). ``patches``: ``samples`` 16x16 grayscale patches of
    scikit-image's photographs (N = 256). ``cifar10``: the official archive at
    ``path``, ``split`` of it, grayscale 16x16 (N = 256). ``array``: a user file
    (``.npy``, ``.npz`` with array ``key``, ``.csv``, ``.parquet``) of shape (n, N),
    or images (n, h, w) or (n, h, w, c), flattened. ``text``: ``samples`` windows of
    ``window`` characters of a corpus that ships with Python (the docstrings of 20
    standard-library modules, lower-cased: :mod:`phasevae.data.text`) at offsets
    drawn from ``seed``, as token ids: a character's place in ``alphabet``, any
    other character len(alphabet); for ``model.likelihood = "categorical"`` with
    ``model.categories`` = len(alphabet) + 1. ``series``: ``samples`` windows of
    ``window`` consecutive values of a real time series that ships inside
    matplotlib, ``series`` = ``membrane`` (a membrane potential, 12,000 values) or
    ``eeg`` (4 EEG channels of 800), at starts drawn from ``seed``
    (:mod:`phasevae.data.series`). A relative ``path`` written in
    a spec file is relative to that file's folder, one given with ``--set`` to the
    working directory; the run stores it absolute. ``normalize`` defaults to
    ``unit`` (pixels to [-1, 1]) for cifar10 and patches, ``global`` (one mean and
    scale, which keeps the covariance's shape) for series, else ``none``.
    """

    source: str = "synthetic"
    eigenvalues: tuple[float, ...] = (8.0, 2.0, 0.5, 0.125, 0.06, 0.04, 0.02, 0.01)
    distribution: str = "gaussian"
    samples: int = 20000
    seed: int = 0
    path: str = ""
    key: str = ""
    split: str = "train"
    normalize: str = "none"
    eval_samples: int = 2048
    alphabet: str = " etaoinshr"
    window: int = 8
    series: str = "membrane"


@dataclass(frozen=True)
class ModelSpec:
    """The VAE (every kind follows the protocol of :mod:`phasevae.models.vae`).

    ``kind``: "mlp", the paper's MLP VAE with hidden widths ``encoder`` and
    ``decoder`` (empty = linear); "vrnn", a variational recurrent network over each
    example's features read as a sequence in column order (:mod:`phasevae.models.vrnn`:
    a latent of one dim per step, a GRU state of ``state`` units, encoder and decoder
    MLPs of those widths; its steps collapse one by one, at beta sigma^2 = each
    step's innovation variance given the steps before, which the spectrum holds);
    "conv", the convolutional VAE of
    :mod:`phasevae.models.conv` for image data, ``channels`` per stride-2 layer and
    ``kernel``; "module", a user's flax module: ``module`` = "package.module:factory",
    a callable returning the module, called with ``options`` (a table) as keyword
    arguments, plus ``data_shape`` and ``latent_dim`` where it declares them.

    ``sigma2``: "fixed" keeps the decoder variance at the grid's sigma^2; "learned"
    starts it there and trains it with the rest (its value is recorded at every
    evaluation as ``decoder_sigma2``). ``skip`` (MLP only): a path from x into the
    decoder, "none", "plain" (x itself) or "gated" (x times a sigmoid gate computed
    from z).

    ``latent``: "gaussian" (a diagonal Gaussian posterior, a standard normal prior),
    or "sphere" (MLP only, latent_dim >= 2: z on the unit sphere, a uniform prior and
    a power-spherical posterior, :mod:`phasevae.models.sphere`) whose ``concentration``
    is learned per example (0) or fixed at a value > 0 (at most 1e4); with a fixed one
    the KL is a constant, and collapse can only show in I(x; z); or "categorical"
    (MLP only, Gaussian or Bernoulli likelihood, no skip path or head: ``latent_dim``
    codes of ``latent_categories`` = K >= 2 values each, a uniform prior, exact KL,
    :mod:`phasevae.models.discrete`), sampled by the ``estimator`` "gumbel" (the
    Gumbel-softmax relaxation at ``temperature``) or "straight_through" (one-hot
    forward, the relaxation's gradient backward). Collapse is then at beta sigma^2 =
    rho lambda_max with rho the relaxation's factor (docs/science.md, 'Discrete
    latents'), which the spectrum includes; or "ladder" (MLP only, Gaussian or
    Bernoulli likelihood, no skip path or head: two latent layers, ``latent_dim``
    dims below ``top_dim`` >= 1, top-down inference as in a Ladder VAE,
    :mod:`phasevae.models.ladder`; ``top_skip`` lets the decoder read the top layer
    too, and grid.top_kl_weight weights the top layer's KL).

    ``likelihood``: the decoder's, its output being the natural parameter:
    "gaussian" (the mean, variance sigma^2), "bernoulli" (the logit; data of 0s and
    1s), "poisson" (the log-rate; counts), "negative_binomial" (the log-mean;
    counts, variance m + m^2 / r with r = ``dispersion`` > 0, fixed, or with
    ``learned_dispersion`` one r per feature trained from that start, whose
    collapse criterion takes each feature's r at collapse, its maximum-likelihood
    value at the feature's mean) or
    "categorical" (K = ``categories`` >= 2 logits per position; data of token ids
    0 .. K - 1, one column per position, which the model sees one-hot). For all but
    the Gaussian the grid's sigma^2 is the temperature the negative log-likelihood is
    divided by (the Gaussian's sigma^2 plays exactly that part), so collapse is
    again at beta sigma^2 = lambda_max, of the data's covariance whitened by the
    likelihood's variances at the data mean (the categorical's: the covariance of
    each position's one-hot code) (docs/science.md, 'Other likelihoods'); they need
    ``sigma2 = "fixed"`` and ``data.normalize = "none"``, and the count and
    categorical likelihoods the MLP VAE with a Gaussian latent (the count models'
    encoder sees ln(1 + x)).

    ``context`` > 0 (MLP, Gaussian latent, no skip path, any likelihood but the
    categorical, a fixed dispersion): an
    autoregressive decoder, whose output for feature i also gets a learned linear
    prediction from the ``context`` features before it (in the data's column order),
    so it can model what x's predecessors predict without z. Collapse is then at
    beta sigma^2 = lambda_max of the covariance of x's innovations, x less its best
    linear prediction from that context (docs/science.md, 'Autoregressive
    decoders'), which ``phasevae theory`` prints; for another likelihood, of the
    score that the best generalised linear prediction leaves, whitened by its
    mean curvature (``phasevae.data.glm``). ``recurrent`` > 0 (the same
    models; not with ``context``): the head is a GRU of that width reading x's
    predecessors in column order, a nonlinear head that sees the whole past; the
    criterion printed is then that of the best linear prediction from the whole
    past (for Gaussian data no head does better), and the collapse probe reads the
    trained head's own innovations. ``mask`` = r > 0 (the same models, on images of
    one channel, also on the conv VAE; not with the other heads): a masked
    convolution, PixelCNN's mask A of radius r (:func:`mask_offsets`), one weight
    per offset shared by every pixel; the criterion is then lambda_max of the
    innovations of the best such shared prediction
    (``phasevae.data.masked_innovations``). ``mask_layers`` = L > 1
    makes it a PixelCNN: L masked convolutions of that radius, the first with mask
    A and the rest with mask B (the pixel's own position too), ``mask_channels``
    wide with ReLUs between them, the last to one channel (starting at 0); the
    criterion printed is that of the best shared linear prediction from the
    stack's receptive field (:func:`stack_offsets`), and the collapse probe reads
    the trained stack's own innovations.
    """

    latent_dim: int = 3
    encoder: tuple[int, ...] = (64, 32)
    decoder: tuple[int, ...] = (32, 64)
    sigma2: str = "fixed"
    skip: str = "none"
    kind: str = "mlp"
    channels: tuple[int, ...] = (16, 32)
    kernel: int = 3
    module: str = ""
    options: tuple[tuple[str, object], ...] = ()
    latent: str = "gaussian"
    concentration: float = 0.0
    latent_categories: int = 0
    estimator: str = "gumbel"
    temperature: float = 1.0
    top_dim: int = 0
    top_skip: bool = False
    state: int = 0
    likelihood: str = "gaussian"
    dispersion: float = 0.0
    learned_dispersion: bool = False
    categories: int = 0
    context: int = 0
    recurrent: int = 0
    mask: int = 0
    mask_layers: int = 1
    mask_channels: int = 16

    def kl_dims(self, data_dim: int) -> int:
        """The latent dims whose KL the metrics carry (``kl_dim_j``) for data of
        ``data_dim`` features: a VRNN's one per step (``data_dim``), a ladder's two
        layers, else ``latent_dim`` (a categorical latent's codes)."""
        if self.kind == "vrnn":
            return self.latent_dim * data_dim
        return self.latent_dim + self.top_dim


@dataclass(frozen=True)
class TrainSpec:
    """Optimisation; ``learning_rate`` is the default of the grid.learning_rate axis.

    ``shared_batches``: every grid point sees the same minibatch sequence (common random
    numbers); otherwise each grid seed draws its own.

    Scheduling (phasevae.engine.schedule): ``slots`` > 0 trains the grid through that
    many vmapped slots, a finished point's slot refilled with the next pending one at a
    chunk boundary (0: every point at once). ``retire``: a point stops once its KL has
    settled (the analysis's trend test), after at least ``min_steps``; ``steps`` is
    then the most any point trains. ``warm_start``: a refilled point starts from the
    parameters of the finished point nearest in sigma^2 with the same other axes
    (cheaper near a smooth curve; can carry one side's state across the transition,
    i.e. show hysteresis that a cold start would not). ``hysteresis``: every point is
    trained twice, in a chain up sigma^2 and in a chain down (column ``direction``
    +1 / -1), each point warm-started from the one before it in its chain; the
    analysis compares the two KL curves.

    ``until = "trusted"``: once every point of a curve has trained ``steps`` steps,
    the points inside the sigma^2 range the transition estimate asks to train longer
    (:func:`phasevae.analysis.estimate.estimate_transition`) keep training, chunk by
    chunk, until its verdict is ``trusted`` or they reach ``max_steps`` (0: 4 x
    ``steps``); the others stop. The estimate is redone after every chunk of that phase.

    ``precision`` of the matmuls (:data:`phasevae.engine.step.MATMUL`): ``float32``
    (the default: full float32 on every backend, also where JAX would use TF32 for
    float32 products on NVIDIA GPUs), ``tf32`` (TensorFloat-32 where the hardware has
    it; float32 on a CPU) or ``bfloat16`` (bfloat16 operands, float32 accumulation,
    parameters and optimizer state: the built-in models cast their layers' operands,
    so this holds on a CPU too; a user module gets only JAX's default precision).
    """

    steps: int = 3000
    batch_size: int = 128
    optimizer: str = "adam"
    learning_rate: float = 2e-3
    eval_every: int = 250
    seed: int = 0
    shared_batches: bool = True
    slots: int = 0
    retire: bool = False
    min_steps: int = 0
    warm_start: bool = False
    hysteresis: bool = False
    until: str = "steps"
    max_steps: int = 0
    precision: str = "float32"


# traced axes added after the first runs, with their defaults: a point's id hashes
# them only off the default, so the runs made before them keep their ids
LATER_AXES = {
    "kl_warmup_steps": 0.0,
    "decoder_init_scale": 1.0,
    "free_bits": 0.0,
    "kl_cycle_steps": 0.0,
    "kl_cycle_ramp": 0.5,
    "mi_weight": 0.0,
    "entropy_target": 0.0,
    "entropy_weight": 1.0,
    "top_kl_weight": 1.0,
    "state_noise": 0.0,
    "context": -1.0,  # the autoregressive head's whole reach (model.context, mask...)
}


@dataclass(frozen=True)
class GridSpec:
    """The traced axes; the grid is their Cartesian product.

    ``learning_rate`` absent means ``[train.learning_rate]``. ``kl_warmup_steps``: beta
    ramps linearly from 0 to its value over that many steps (0: no warm-up).
    ``decoder_init_scale``: the decoder's last layer starts scaled by it.
    ``free_bits``: a floor lambda (nats) on each latent dim's KL in the objective,
    which uses max(lambda, KL_j), KL_j averaged over the minibatch (0: none).
    ``kl_cycle_steps``, ``kl_cycle_ramp``: cyclical KL annealing, beta's factor
    rising linearly from 0 to 1 over the first ``kl_cycle_ramp`` fraction of every
    period of ``kl_cycle_steps`` steps and held at 1 for the rest (0: none).
    ``mi_weight``: alpha of a mutual-information term, the objective minus
    alpha I(x; z), I estimated on the minibatch through the aggregate posterior.
    ``entropy_target`` (a categorical latent only): a target H (nats) for each
    code's usage entropy, the entropy of its aggregate posterior over the
    minibatch; the objective adds w sum_d max(0, H - H_d) (0: none), w =
    ``entropy_weight`` (independent of beta: the target must act at small beta,
    where usage concentrates).
    ``top_kl_weight`` (a ladder latent only): kappa, the objective's weight on the
    top layer's KL relative to the bottom's, beta (KL_1 + kappa KL_2) (1: the ELBO's).
    ``state_noise`` (a VRNN only): s, the variance of the Gaussian noise on the x_t
    its recurrent state reads (0: none), which limits what the state can carry of
    the past (the guide's remedy for temporal collapse); it is part of the model, in
    training and in evaluation.
    ``context`` (an autoregressive decoder's reach): k per point, the number of
    preceding features a linear head reads (``model.context``), the radius of a
    masked head (``model.mask``, every layer of a PixelCNN stack; 0: no head) or
    the GRU state units a GRU head reads out (``model.recurrent``); its weights
    beyond are held at 0. The head is built for the largest k (``model.context``,
    which may be left out when no head is set, is set to it; ``model.mask`` or
    ``model.recurrent`` must equal it); absent, every point reads the whole head.
    Each k has its own criterion, lambda_max of what the best such head of reach k
    leaves (the innovations given k predecessors, or of a radius-k mask or stack;
    a GRU's is that of the whole past at any width)
    (:func:`phasevae.analysis.theory.curve_eigenvalues`).
    The training objective alone changes: evaluations report recon + beta KL.

    ``decoder`` and ``skip`` are static axes: a list of decoder hidden-width lists
    (``[]`` is a linear decoder) replacing ``model.decoder``, and a list of skip paths
    replacing ``model.skip``. Each combination compiles once and trains as its own
    group (:meth:`Spec.static_groups`).
    """

    sigma2: Axis = Range(0.05, 50.0, 16, "log")
    beta: Axis = (1.0,)
    seeds: tuple[int, ...] = (0,)
    learning_rate: Axis | None = None
    kl_warmup_steps: Axis = (0.0,)
    decoder_init_scale: Axis = (1.0,)
    free_bits: Axis = (0.0,)
    kl_cycle_steps: Axis = (0.0,)
    kl_cycle_ramp: Axis = (0.5,)
    mi_weight: Axis = (0.0,)
    entropy_target: Axis = (0.0,)
    entropy_weight: Axis = (1.0,)
    top_kl_weight: Axis = (1.0,)
    state_noise: Axis = (0.0,)
    context: Axis = (-1.0,)
    decoder: tuple[tuple[int, ...], ...] | None = None
    skip: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Spec:
    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    grid: GridSpec = field(default_factory=GridSpec)

    def static_groups(self) -> list[tuple[dict[str, str], Spec]]:
        """({static axis: value label}, spec of that group) per combination of the
        static axes' options; [] without any. A group's spec has its options in
        ``model`` and no static axis left."""
        g = self.grid
        axes = {}
        if g.decoder is not None:
            axes["decoder"] = [(decoder_label(d), {"decoder": d}) for d in g.decoder]
        if g.skip is not None:
            axes["skip"] = [(k, {"skip": k}) for k in g.skip]
        if not axes:
            return []
        bare = dataclasses.replace(g, decoder=None, skip=None)
        groups = []
        for combo in itertools.product(*axes.values()):
            model = self.model
            for _, change in combo:
                model = dataclasses.replace(model, **change)
            labels = dict(zip(axes, (label for label, _ in combo), strict=True))
            groups.append((labels, dataclasses.replace(self, model=model, grid=bare)))
        return groups

    def adaptive(self) -> bool:
        """Whether the sweep is scheduled adaptively (:mod:`phasevae.engine.schedule`:
        ``train.slots``, ``retire``, ``hysteresis``, ``until = "trusted"`` or
        ``grid.sigma2.refine``) rather than every point at once, in lockstep."""
        t, s2 = self.train, self.grid.sigma2
        refine = isinstance(s2, Range) and s2.refine is not None
        return t.slots > 0 or t.retire or t.hysteresis or refine or t.until == "trusted"

    def axes(self) -> dict[str, tuple[float, ...]]:
        """Value lists of every grid axis, in grid (row-major) order."""
        lr = self.grid.learning_rate
        return {
            "sigma2": axis_values(self.grid.sigma2),
            "beta": axis_values(self.grid.beta),
            "learning_rate": (
                (self.train.learning_rate,) if lr is None else axis_values(lr)
            ),
            "seed": tuple(float(s) for s in self.grid.seeds),
            **{a: axis_values(getattr(self.grid, a)) for a in LATER_AXES},
        }


def grid_size(spec: Spec) -> int:
    """The number of grid points, from the axes' lengths (nothing built)."""
    g = spec.grid
    lengths = [
        a.num if isinstance(a, Range) else len(a)
        for a in (g.sigma2, g.beta, *(getattr(g, k) for k in LATER_AXES))
    ]
    lr = g.learning_rate
    lengths += [
        len(g.seeds),
        1 if lr is None else (lr.num if isinstance(lr, Range) else len(lr)),
    ]
    lengths += [len(g.decoder or (None,)), len(g.skip or (None,))]
    lengths += [2 if spec.train.hysteresis else 1]
    return math.prod(lengths)


def decoder_label(widths: tuple[int, ...]) -> str:
    """How a decoder option is named in tables: "32-64", or "linear"."""
    return "-".join(str(w) for w in widths) or "linear"


def axis_values(axis: Axis) -> tuple[float, ...]:
    return axis.values() if isinstance(axis, Range) else tuple(axis)


LIKELIHOODS = ("gaussian", "bernoulli", "poisson", "negative_binomial", "categorical")
COUNTS = "counts (integers >= 0)"
WHAT_DATA = {
    "bernoulli": "0s and 1s",
    "poisson": COUNTS,
    "negative_binomial": COUNTS,
    "categorical": "token ids",
}
MAX_CATEGORIES = 4096  # a categorical's K: its one-hot code is K wide per position
OWN_SETTINGS = (  # (likelihood, the setting only it has, what it must be)
    ("negative_binomial", "dispersion", "> 0 (its r: variance m + m^2 / r)"),
    ("categorical", "categories", ">= 2 (K, the token ids' range 0 .. K - 1)"),
)
MAX_RECURRENT = 4096  # a GRU head's width
MAX_MASK = 64  # a masked-convolution head's radius
HEADLESS = ("categorical",)  # likelihoods that take no autoregressive head
MAX_MASK_LAYERS = 16  # a PixelCNN head's masked layers
MAX_MASK_CHANNELS = 1024  # and their width
MAX_DISPERSION = 1e6  # beyond it a negative binomial is a Poisson to float32


def likelihood_problem(spec: Spec) -> str | None:
    """What is wrong with ``model.likelihood`` and its settings, or None."""
    m = spec.model
    if m.likelihood != "gaussian" and m.sigma2 != "fixed":
        return (
            f'model.likelihood = "{m.likelihood}" needs model.sigma2 = "fixed": '
            "the grid's sigma^2 is its temperature, not a variance to learn"
        )
    if m.likelihood != "gaussian" and spec.data.normalize != "none":
        return (
            f'model.likelihood = "{m.likelihood}" needs data.normalize = "none": '
            f"its data are {WHAT_DATA[m.likelihood]}, which a rescaling would change"
        )
    mlp_only = m.likelihood in ("poisson", "negative_binomial", "categorical")
    if mlp_only and (m.kind != "mlp" or m.latent != "gaussian"):
        return (
            f'model.likelihood = "{m.likelihood}" is built on the MLP VAE: leave '
            'model.kind = "mlp" and model.latent = "gaussian"'
        )
    for owner, key, what in OWN_SETTINGS:
        if (m.likelihood == owner) != (getattr(m, key) > 0):
            return (
                f'model.likelihood = "{owner}" needs model.{key} {what}, and '
                f"model.{key} applies to it only"
            )
    if m.likelihood == "categorical" and not 2 <= m.categories <= MAX_CATEGORIES:
        return (
            f"model.categories = {m.categories} must be 2 .. {MAX_CATEGORIES} (a "
            "one-hot code per position of that width)"
        )
    if m.learned_dispersion and m.likelihood != "negative_binomial":
        return (
            "model.learned_dispersion applies to the negative binomial only "
            '(model.likelihood = "negative_binomial")'
        )
    if m.dispersion > MAX_DISPERSION:
        return (
            f"model.dispersion = {m.dispersion:g} is too large; at most "
            f"{MAX_DISPERSION:g} (beyond it use the Poisson)"
        )
    return None


def text_problem(spec: Spec) -> str | None:
    """What is wrong with ``data.source = "text"`` and its settings, or None."""
    d, m = spec.data, spec.model
    if d.source != "text":
        return None
    if len(set(d.alphabet)) != len(d.alphabet) or not d.alphabet:
        return (
            f"data.alphabet = {d.alphabet!r} must list at least one character, each "
            "once"
        )
    if m.likelihood != "categorical" or m.categories != len(d.alphabet) + 1:
        return (
            'data.source = "text" gives token ids for the categorical decoder: set '
            f'model.likelihood = "categorical" and model.categories = '
            f"{len(d.alphabet) + 1} (len(data.alphabet) + 1: the last is any other "
            "character)"
        )
    return None


def mask_offsets(radius: int) -> list[tuple[int, int]]:
    """The offsets (dy, dx) ``model.mask`` = ``radius`` covers, PixelCNN's mask A:
    every pixel of the ``radius`` rows above within ``radius`` columns either side,
    and the ``radius`` pixels to the left in the pixel's own row."""
    return [
        (dy, dx)
        for dy in range(-radius, 1)
        for dx in range(-radius, radius + 1)
        if dy < 0 or dx < 0
    ]


def stack_offsets(radius: int, layers: int = 1) -> list[tuple[int, int]]:
    """The offsets (dy, dx) a stack of ``layers`` masked convolutions of ``radius``
    reads (its receptive field): the first layer's mask A (:func:`mask_offsets`),
    then each later one's mask B (mask A and the pixel itself) added on, so the
    stack's blind spot, up and to the right, is left out as it is in PixelCNN."""
    field = set(mask_offsets(radius))
    step = [*mask_offsets(radius), (0, 0)]
    for _ in range(layers - 1):
        field = {(a + c, b + d) for a, b in field for c, d in step}
    return sorted(field)


def context_problem(spec: Spec) -> str | None:
    """What is wrong with ``model.context``, ``model.recurrent`` or ``model.mask``
    (an autoregressive decoder), or None."""
    m = spec.model
    heads = [k for k in ("context", "recurrent", "mask") if getattr(m, k)]
    ks = axis_values(spec.grid.context)
    if ks != (-1.0,):
        if any(k < 0 or k != int(k) for k in ks):
            return f"grid.context = {brief(list(ks))} must list whole numbers >= 0"
        if max(ks) == 0:
            return "grid.context has no value above 0: no autoregressive head to vary"
        head = heads[0] if len(heads) == 1 else "context"
        if getattr(m, head) != max(ks):
            return (
                f"grid.context (up to {max(ks):g}) needs model.{head} = {max(ks):g} "
                f"(the head's reach){' or left out' * (head == 'context')}; it is "
                f"{getattr(m, head)}"
            )
    stack = ModelSpec()
    if (m.mask_layers, m.mask_channels) != (stack.mask_layers, stack.mask_channels):
        if not m.mask:
            return "model.mask_layers and model.mask_channels apply to model.mask > 0"
        if m.mask_layers == 1:
            return (
                "model.mask_channels is the width of a stack's hidden layers: it "
                "applies to model.mask_layers > 1"
            )
        if m.mask_layers > MAX_MASK_LAYERS:
            return (
                f"model.mask_layers = {m.mask_layers} is too deep; at most "
                f"{MAX_MASK_LAYERS}"
            )
        if m.mask_channels > MAX_MASK_CHANNELS:
            return (
                f"model.mask_channels = {m.mask_channels} is too wide; at most "
                f"{MAX_MASK_CHANNELS}"
            )
    if not heads:
        return None
    key = "grid.context" if ks != (-1.0,) else f"model.{heads[0]}"
    if len(heads) > 1:
        return (
            "model.context (a linear head), model.recurrent (a GRU head) and "
            "model.mask (a masked-convolution head) are autoregressive decoders: set "
            f"one (set: {', '.join(heads)})"
        )
    kinds = ("mlp", "conv") if heads == ["mask"] else ("mlp",)
    plain = m.kind in kinds and (m.latent, m.skip) == ("gaussian", "none")
    if not plain or spec.grid.skip is not None or m.likelihood in HEADLESS:
        return (
            f"{key} (an autoregressive decoder) is built on the MLP VAE (a masked "
            "head also on the conv VAE) with a Gaussian latent, without a skip "
            f"path, and a likelihood other than {' or '.join(HEADLESS)}: leave "
            'model.kind = "mlp", model.latent = "gaussian", model.skip = "none" '
            "and grid.skip unset"
        )
    if m.learned_dispersion:
        return f"{key} (an autoregressive decoder) takes a fixed model.dispersion"
    d = spec.data
    if d.source == "synthetic" and m.context >= len(d.eigenvalues):
        return (
            f"model.context = {m.context} must be below the data's "
            f"{len(d.eigenvalues)} features (the first has no predecessors)"
        )
    if m.recurrent > MAX_RECURRENT:
        return f"model.recurrent = {m.recurrent} is too wide; at most {MAX_RECURRENT}"
    if m.mask and d.source in ("synthetic", "text"):
        return (
            f"model.mask (a masked convolution over an image) needs image data, not "
            f'data.source = "{d.source}"'
        )
    if m.mask > MAX_MASK:
        return f"model.mask = {m.mask} is too wide; at most {MAX_MASK}"
    return None


MAX_LATENT_CATEGORIES = 256  # a categorical latent's K per code
TEMPERATURES = (0.1, 10.0)  # a Gumbel-softmax temperature's range
MAX_TOP_DIM = 4096  # a ladder's top layer


def latent_problem(spec: Spec) -> str | None:
    """What is wrong with ``model.latent`` and its settings, or None."""
    m, g, default = spec.model, spec.grid, ModelSpec()
    if m.latent != "sphere" and m.concentration:
        return 'model.concentration applies to model.latent = "sphere"'
    own = (m.latent_categories, m.estimator, m.temperature)
    if m.latent != "categorical" and own != (0, default.estimator, default.temperature):
        return (
            "model.latent_categories, model.estimator and model.temperature apply to "
            'model.latent = "categorical"'
        )
    entropy = (any(axis_values(g.entropy_target)), axis_values(g.entropy_weight))
    if m.latent != "categorical" and entropy != (False, (1.0,)):
        return (
            "grid.entropy_target and grid.entropy_weight apply to model.latent = "
            '"categorical"'
        )
    ladder = (m.top_dim, m.top_skip, axis_values(g.top_kl_weight))
    if m.latent != "ladder" and ladder != (0, False, (1.0,)):
        return (
            "model.top_dim, model.top_skip and grid.top_kl_weight apply to "
            'model.latent = "ladder"'
        )
    if m.latent == "gaussian":
        return None
    if m.kind != "mlp" or m.skip != "none" or g.skip is not None:
        return (
            f'model.latent = "{m.latent}" is built on the MLP without a skip path: '
            'leave model.kind = "mlp", model.skip = "none" and grid.skip unset'
        )
    if m.latent == "sphere":
        if m.latent_dim < 2:
            return 'model.latent = "sphere" needs model.latent_dim >= 2'
        if m.concentration > MAX_CONCENTRATION:
            return (
                f"model.concentration = {m.concentration:g} is too large; at most "
                f"{MAX_CONCENTRATION:g} (beyond it a draw is the mean direction to "
                "float32 precision)"
            )
        return None
    if m.likelihood not in ("gaussian", "bernoulli"):
        return (
            f'model.latent = "{m.latent}" is built for model.likelihood = '
            f'"gaussian" or "bernoulli" (got "{m.likelihood}")'
        )
    if m.context or m.recurrent or m.mask:
        return f'model.latent = "{m.latent}" takes no autoregressive head'
    if m.latent == "ladder":
        if not 1 <= m.top_dim <= MAX_TOP_DIM:
            return (
                f'model.latent = "ladder" needs model.top_dim, the top layer\'s '
                f"dims, 1 .. {MAX_TOP_DIM} (got {m.top_dim})"
            )
        return None
    return categorical_latent_problem(spec)


def categorical_latent_problem(spec: Spec) -> str | None:
    """What is wrong with a ``model.latent = "categorical"`` spec, or None."""
    m, g = spec.model, spec.grid
    k = m.latent_categories
    if not 2 <= k <= MAX_LATENT_CATEGORIES:
        return (
            f'model.latent = "categorical" needs model.latent_categories = K, 2 .. '
            f"{MAX_LATENT_CATEGORIES} values per code (got {k})"
        )
    low, high = TEMPERATURES
    if not low <= m.temperature <= high:
        return (
            f"model.temperature = {m.temperature:g} must be {low:g} .. {high:g} "
            "(the Gumbel-softmax relaxation's)"
        )
    top = max(axis_values(g.entropy_target))
    if top > math.log(k):
        return (
            f"grid.entropy_target = {top:g} nats exceeds ln K = {math.log(k):.4g}, "
            f"the most a code of K = {k} values can have"
        )
    return None


def vrnn_problem(spec: Spec) -> str | None:
    """What is wrong with a ``model.kind = "vrnn"`` spec, or None."""
    m = spec.model
    plain = (m.latent, m.likelihood, m.skip) == ("gaussian", "gaussian", "none")
    if not plain or spec.grid.skip is not None or m.context or m.recurrent or m.mask:
        return (
            'model.kind = "vrnn" is built with a Gaussian latent and likelihood, '
            "without a skip path or an autoregressive head (its state is one)"
        )
    if m.latent_dim != 1:
        return (
            'model.kind = "vrnn" has one latent dim per step: set model.latent_dim '
            "= 1 (more per step is not built)"
        )
    if m.state > MAX_RECURRENT:
        return f"model.state = {m.state} is too wide; at most {MAX_RECURRENT}"
    return None


def model_problem(spec: Spec) -> str | None:
    """What is wrong with the ``[model]`` section given the rest, or None: the keys
    of one kind set for another, and remedies that need the MLP's layout."""
    m, g, default = spec.model, spec.grid, ModelSpec()
    if m.kind == "module" and not m.module:
        return 'model.kind = "module" needs model.module = "package.module:factory"'
    if m.kind != "module" and (m.module or m.options):
        return 'model.module and model.options apply to model.kind = "module"'
    mlp = m.kind in ("mlp", "vrnn")  # the kinds built of the MLP's widths
    if mlp and (m.channels, m.kernel) != (default.channels, default.kernel):
        return 'model.channels and model.kernel apply to model.kind = "conv"'
    if m.kind == "conv" and not m.channels:
        return 'model.kind = "conv" needs at least one layer in model.channels'
    if (m.kind == "vrnn") != (m.state > 0):
        return (
            'model.kind = "vrnn" needs model.state >= 1 (its GRU\'s units), and '
            "model.state applies to it only"
        )
    if m.kind != "vrnn" and any(axis_values(g.state_noise)):
        return 'grid.state_noise applies to model.kind = "vrnn"'
    if m.kind == "vrnn" and (problem := vrnn_problem(spec)):
        return problem
    if not mlp:
        if (m.encoder, m.decoder) != (default.encoder, default.decoder):
            return (
                f"model.encoder and model.decoder are the MLP's widths; with "
                f'model.kind = "{m.kind}" they do not apply (use model.channels for '
                '"conv", model.options for "module")'
            )
        if m.skip != "none" or g.skip is not None or g.decoder is not None:
            return (
                f"skip paths and the grid.decoder axis need the MLP's layout; with "
                f'model.kind = "{m.kind}" leave model.skip = "none" and grid.skip, '
                "grid.decoder unset"
            )
    problem = (
        latent_problem(spec)
        or likelihood_problem(spec)
        or text_problem(spec)
        or context_problem(spec)
    )
    if problem:
        return problem
    if m.kind == "module" and not (
        m.module.startswith("python:") or _FACTORY.fullmatch(m.module)
    ):
        return (
            f"model.module = {m.module!r} is not of the form "
            '"package.module:factory" (an importable callable)'
        )
    return None


def train_problem(spec: Spec) -> str | None:
    """What is wrong with the ``[train]`` section given the rest, or None."""
    t = spec.train
    refine = isinstance(spec.grid.sigma2, Range) and spec.grid.sigma2.refine
    if t.hysteresis and refine:
        return (
            "train.hysteresis and grid.sigma2.refine cannot be combined (a chain up "
            "and down sigma^2 needs its points fixed in advance)"
        )
    if t.min_steps > t.steps:
        return f"train.min_steps = {t.min_steps} exceeds train.steps = {t.steps}"
    if t.slots > grid_size(spec) and not refine:
        return (
            f"train.slots = {t.slots} exceeds the grid's {grid_size(spec)} points "
            "(a slot would train nothing); at most the grid size"
        )
    if t.max_steps and (t.max_steps < t.steps or t.max_steps % t.eval_every):
        return (
            f"train.max_steps = {t.max_steps} must be 0 (4 x train.steps) or a "
            f"multiple of train.eval_every = {t.eval_every} of at least train.steps "
            f"= {t.steps}"
        )
    if t.max_steps and t.until != "trusted":
        return 'train.max_steps applies to train.until = "trusted" only'
    for key in ("kl_warmup_steps", "kl_cycle_steps"):
        values = axis_values(getattr(spec.grid, key))
        if any(v != int(v) for v in values):
            return f"grid.{key} = {list(values)}: whole numbers of steps"
    if any(not 0 < r <= 1 for r in axis_values(spec.grid.kl_cycle_ramp)):
        return "grid.kl_cycle_ramp: fractions of the period in (0, 1]"
    if t.steps % t.eval_every:
        return (
            f"train.steps = {t.steps} must be a multiple of train.eval_every = "
            f"{t.eval_every} (training runs in chunks of eval_every steps)"
        )
    return None


def coerce_options(value: object, bad: str) -> tuple[tuple[str, object], ...]:
    """A table of keyword arguments (numbers, strings, booleans, lists of them) to
    sorted, hashable (name, value) pairs."""
    scalar = (bool, int, float, str)
    if not isinstance(value, dict) or not all(
        k.isidentifier()
        and (
            isinstance(v, scalar)
            or (isinstance(v, list) and all(isinstance(x, scalar) for x in v))
        )
        for k, v in value.items()
    ):
        raise SpecError(
            f"{bad} must be a table of keyword arguments whose values are numbers, "
            "strings, booleans or lists of them"
        )
    return tuple(
        (k, tuple(v) if isinstance(v, list) else v) for k, v in sorted(value.items())
    )
