"""What a sweep spec is: the frozen dataclasses of its four sections, ``[data]``,
``[model]``, ``[train]`` and ``[grid]``, with every default, and what follows from
them alone (the axes' values, the static groups, the grid size). Loading and
validation are in :mod:`phasevae.spec`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass, field

import numpy as np

from phasevae.errors import BadInput


class SpecError(BadInput):
    """A sweep spec that cannot be run as written."""


@dataclass(frozen=True)
class Refine:
    """Adaptive refinement of the sigma^2 axis: after the grid has trained, the KL
    curve of every (beta, ...) group is fitted and ``points`` new sigma^2 values are
    placed around each breakpoint (over its interval, and at least the grid cell it
    lies in); repeated ``rounds`` times, all in one run directory."""

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
    or images (n, h, w) or (n, h, w, c), flattened. ``normalize`` defaults to
    ``unit`` (pixels to [-1, 1]) for cifar10 and patches, else ``none``.
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


@dataclass(frozen=True)
class ModelSpec:
    """The MLP VAE: hidden widths of encoder and decoder (empty = linear).

    ``sigma2``: "fixed" keeps the decoder variance at the grid's sigma^2; "learned"
    starts it there and trains it with the rest (its value is recorded at every
    evaluation as ``decoder_sigma2``). ``skip``: a path from x into the decoder,
    "none", "plain" (x itself) or "gated" (x times a sigmoid gate computed from z).
    """

    latent_dim: int = 3
    encoder: tuple[int, ...] = (64, 32)
    decoder: tuple[int, ...] = (32, 64)
    sigma2: str = "fixed"
    skip: str = "none"


@dataclass(frozen=True)
class TrainSpec:
    """Optimisation; ``learning_rate`` is the default of the grid.learning_rate axis.

    ``shared_batches``: every grid point sees the same minibatch sequence (common random
    numbers); otherwise each grid seed draws its own.

    Scheduling (phasevae.schedule): ``slots`` > 0 trains the grid through that many
    vmapped slots, a finished point's slot refilled with the next pending one at a
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
    (:func:`phasevae.estimate.estimate_transition`) keep training, chunk by chunk,
    until its verdict is ``trusted`` or they reach ``max_steps`` (0: 4 x ``steps``);
    the others stop. The estimate is redone after every chunk of that phase.
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


@dataclass(frozen=True)
class GridSpec:
    """The traced axes; the grid is their Cartesian product.

    ``learning_rate`` absent means ``[train.learning_rate]``. ``kl_warmup_steps``: beta
    ramps linearly from 0 to its value over that many steps (0: no warm-up).
    ``decoder_init_scale``: the decoder's last layer starts scaled by it.

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
            "kl_warmup_steps": axis_values(self.grid.kl_warmup_steps),
            "decoder_init_scale": axis_values(self.grid.decoder_init_scale),
        }


def grid_size(spec: Spec) -> int:
    """The number of grid points, from the axes' lengths (nothing built)."""
    g = spec.grid
    lengths = [
        a.num if isinstance(a, Range) else len(a)
        for a in (g.sigma2, g.beta, g.kl_warmup_steps, g.decoder_init_scale)
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
