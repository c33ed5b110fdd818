"""Typed, versioned records of what the analysis writes and every reader reads back:
analysis.json as :class:`Analysis`, one :class:`Transition` per curve, with its
:class:`Spectrum`, :class:`TrainLonger`, :class:`Fit` and :class:`PerDim` parts; a
transition is its curve's :class:`Estimate` (what the engine's policies and
``phasevae locate`` read) and what is read against the theory.

Each record is a frozen dataclass, built in one place (the estimate in
:mod:`phasevae.analysis.estimate`, the rest in :mod:`phasevae.analysis.curves`)
and written with ``to_json``; ``from_json`` is the parser every reader goes through.
It checks each field against its annotated type (a float is a number and not a bool,
a pair has two numbers, a record nested in a field is parsed as its own type) and the
few invariants the types cannot say (each record's ``_problem``), and names the first
field that is wrong: a :class:`RecordError` (exit status 2) instead of a KeyError
deep in a figure.

analysis.json carries ``format_version`` (:data:`FORMAT_VERSION`). A document of an
older version is brought up to date by the migrations of :data:`MIGRATIONS`, one per
version, applied in turn before parsing; a newer version than this phasevae knows is
refused. Version 0 is every analysis.json written before the version field: a
transition there may lack the keys added over time (the verdict and its interval
parts, the drift across training lengths, the advice), which the migration fills with
"not computed" (None, or {} for the fits by training length).

Fields whose values are open-ended evidence (the stability probe, the free-bits
floor, the mutual-information readings, the advice, the per-point table) stay plain
JSON objects, checked where a reader depends on their shape. No JAX, no pandas.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from phasevae.errors import BadInput
from phasevae.spec.types import LATER_AXES

FORMAT_VERSION = 1
# a transition's own keys that name a grid axis (its curve), in the grid's order
CURVE_AXES = ("beta", "learning_rate", *LATER_AXES, "direction", "decoder", "skip")

Pair = tuple[float, float]
HUGE = 1e100  # the lists of numbers a figure draws hold finite values below this
Json = Any  # a JSON value, checked by the reader that needs its shape


class RecordError(BadInput):
    """A record that is not what phasevae writes: a missing or mistyped field, or a
    format version this phasevae does not know."""


# -- the generic parser -------------------------------------------------------------


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _decode(value, kind, where: str):
    """``value`` as the annotated ``kind`` (raising RecordError naming ``where``)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _decode(value, inner, where)
    if kind is float:
        if not _is_number(value):
            raise RecordError(f"{where} is not a number")
        return float(value)
    if kind is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise RecordError(f"{where} is not an integer")
        return value
    if kind in (str, bool):
        if not isinstance(value, kind):
            raise RecordError(f"{where} is not a {kind.__name__}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise RecordError(f"{where} is not a list")
        if len(args) == 2 and args[1] is Ellipsis:
            out = tuple(
                _decode(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)
            )
            if args[0] is float and not all(abs(v) < HUGE for v in out):
                raise RecordError(f"{where} holds a value that is not finite")
            return out
        if len(value) != len(args):
            raise RecordError(f"{where} does not have {len(args)} values")
        return tuple(
            _decode(v, a, f"{where}[{i}]")
            for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    if origin is dict:
        if not isinstance(value, dict):
            raise RecordError(f"{where} is not an object")
        return {str(k): _decode(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if isinstance(kind, type) and issubclass(kind, Record):
        return kind.from_json(value, where)
    raise TypeError(f"no parser for {kind}")  # a record's own annotation is wrong


def _encode(value):
    if isinstance(value, Record):
        return value.to_json()
    if isinstance(value, tuple):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    return value


class Record:
    """A frozen dataclass written as a JSON object of its fields."""

    def to_json(self) -> dict:
        return {
            f.name: _encode(getattr(self, f.name)) for f in dataclasses.fields(self)
        }

    @classmethod
    def from_json(cls, doc, where: str | None = None):
        """Parse ``doc`` (RecordError naming the first wrong field)."""
        where = where or cls.__name__
        if not isinstance(doc, dict):
            raise RecordError(f"{where} is not an object")
        hints = typing.get_type_hints(cls)
        values = {}
        for f in dataclasses.fields(cls):
            if f.name not in doc:
                if f.default is not dataclasses.MISSING:
                    continue
                raise RecordError(f"{where} lacks {f.name}")
            values[f.name] = _decode(doc[f.name], hints[f.name], f"{where}.{f.name}")
        record = cls(**values)
        problem = record._problem()
        if problem:
            raise RecordError(f"{where}: {problem}")
        return record

    def _problem(self) -> str | None:
        """An invariant the field types cannot say, broken; or None."""
        return None


class Versioned(Record):
    """A record that is a file of its own: its documents carry ``format_version``
    (the class's :attr:`FORMAT_VERSION`). An older document is brought up to date by
    :attr:`MIGRATIONS` (version -> the function that takes a document of that version
    to the next), applied in turn before parsing; a newer one is refused."""

    FORMAT_VERSION: typing.ClassVar[int]
    MIGRATIONS: typing.ClassVar[dict]
    FILE: typing.ClassVar[str]  # the file's name, for messages
    REMEDY: typing.ClassVar[str]  # what to do with a file of an unknown version

    @classmethod
    def from_json(cls, doc, where: str | None = None):
        """Parse a document of any known version."""
        where = where or cls.FILE
        if not isinstance(doc, dict):
            raise RecordError(f"{where} is not an object")
        version = doc.get("format_version", 0)
        if not isinstance(version, int) or not 0 <= version <= cls.FORMAT_VERSION:
            raise RecordError(
                f"{where} has format_version {version!r}; this phasevae reads "
                f"versions 0 to {cls.FORMAT_VERSION}: upgrade phasevae or "
                f"{cls.REMEDY}"
            )
        for v in range(version, cls.FORMAT_VERSION):
            doc = cls.MIGRATIONS[v](doc)
        return super().from_json(doc, where)


# -- the records --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Spectrum(Record):
    """The data covariance's eigenvalues, largest first."""

    eigenvalues: tuple[float, ...]
    lambda_max: float


@dataclasses.dataclass(frozen=True)
class TrainLonger(Record):
    """What a ``train longer`` verdict asks for: these sigma^2 to ``steps``."""

    sigma2: Pair
    steps: int


@dataclasses.dataclass(frozen=True)
class Fit(Record):
    """The fitted piecewise-linear KL(ln sigma^2): its knots."""

    ln_sigma2: tuple[float, ...]
    kl: tuple[float, ...]

    def _problem(self):
        if len(self.kl) != len(self.ln_sigma2) or len(self.kl) < 2:
            return "fit: ln_sigma2 and kl are not two lists of the same length >= 2"
        return None


@dataclasses.dataclass(frozen=True)
class PerDim(Record):
    """One latent dim of the collapse cascade: its fitted threshold and the theory's."""

    dim: int
    sigma2_c: float | None
    ci: Pair | None
    ci_method: str | None
    theory: float
    slope_ln: float


@dataclasses.dataclass(frozen=True)
class Estimate(Record):
    """The collapse transition of one curve as its training trajectories locate it
    (:func:`phasevae.analysis.estimate.estimate_transition`; docs/analysis.md says
    more): ``sigma2_c``, ``ci`` (low, high), ``ci_statistical`` and
    ``ci_finite_training`` (half-widths in ln sigma^2, (below, above)),
    ``sigma2_c_final`` and ``sigma2_c_half`` (the fits at T and T/2),
    ``sigma2_c_by_steps`` (the fit at each evaluated length), ``drift_per_doubling``
    (u_T - u_{T/2}), ``holds_for_steps`` (absorbing collapse: the length the answer
    holds for), ``relaxation_scale`` (tau_0), ``probe`` (the stability probe),
    ``trapped`` (collapsed points that are not equilibria moved the estimate),
    ``ci_method`` (``jump`` where the KL jumps), ``jump`` (the cell (sigma2_low,
    sigma2_high) the top dim's KL jumps across, or None for a continuous kink),
    ``floor`` (with free bits), ``verdict``, for ``train longer`` ``train_longer``
    (what to train), and ``steps`` (T). The fields of the fit are None (or empty, or
    False) where the curve has no transition to fit."""

    sigma2_c: float | None
    ci: Pair | None
    ci_statistical: Pair | None
    ci_finite_training: Pair | None
    sigma2_c_final: float | None
    sigma2_c_half: float | None
    sigma2_c_by_steps: dict[str, float]
    drift_per_doubling: float | None
    holds_for_steps: int | None
    relaxation_scale: float | None
    probe: dict[str, Json] | None
    trapped: bool
    ci_method: str | None
    jump: Pair | None
    floor: dict[str, Json] | None
    verdict: str | None
    train_longer: TrainLonger | None
    steps: int


@dataclasses.dataclass(frozen=True)
class Transition(Estimate):
    """One curve's collapse transition: its :class:`Estimate`, read against the
    theory, with the fits of the total KL and of each latent dim
    (:func:`phasevae.analysis.curves.analyze`; docs/analysis.md). ``curve`` holds the
    value of every grid axis but sigma^2 and seed, written under the axis's own name
    (first, then the estimate's fields, then the rest)."""

    curve: dict[str, Json]
    theory_sigma2_c: float | None
    rel_error: float | None
    off_theory: dict[str, Json] | None
    theta_c: float | None
    converged: bool
    sigma2_c_total_kl: float | None
    ci_total_kl: Pair | None
    ci_method_total_kl: str | None
    points_settled: bool
    unsettled_sigma2: tuple[float, ...]
    fit_used_unsettled: bool
    diverged_points: int
    seeds_sigma2_c: tuple[float | None, ...] | None
    plateau: float
    slope_at_max_sigma2: float
    slopes_ln: tuple[float, ...]
    fit: Fit
    breakpoints: tuple[dict[str, Json], ...]
    theory_thresholds: tuple[float, ...]
    per_dim: tuple[PerDim, ...]
    information: dict[str, Json] | None
    advice: dict[str, Json] | None

    @property
    def beta(self) -> float:
        return self.curve.get("beta", 1.0)

    def to_json(self) -> dict:
        doc = super().to_json()
        return {**doc.pop("curve"), **doc}

    @classmethod
    def from_json(cls, doc, where: str | None = None):
        if not isinstance(doc, dict):
            raise RecordError(f"{where} is not an object")
        curve = {a: doc[a] for a in CURVE_AXES if a in doc}
        for a, v in curve.items():
            if a not in ("decoder", "skip") and not _is_number(v):
                raise RecordError(f"{where}.{a}: a grid axis value is not a number")
        own = {k: v for k, v in doc.items() if k not in curve}
        return super().from_json({**own, "curve": curve}, where)

    def _problem(self):
        if len(self.slopes_ln) != len(self.fit.ln_sigma2) - 1:
            return "slopes_ln does not have one slope per segment of the fit"
        if self.probe is not None and not (
            isinstance(self.probe.get("collapsed"), int)
            and _numbers(self.probe.get("unstable_sigma2"))
            and _numbers(self.probe.get("dead_sigma2"))
            and _is_number(self.probe.get("lambda_c_ratio"))
        ):
            return "probe is malformed"
        off = self.off_theory
        if off is not None and not (
            _is_number(off.get("shift"))
            and isinstance(off.get("evidence"), str)
            and (off["evidence"] != "probe" or _numbers(off.get("stable_sigma2"), 1))
        ):
            return "off_theory is malformed"
        return None


def _numbers(values, at_least: int = 0) -> bool:
    """A list of at least ``at_least`` finite numbers (as :data:`HUGE` says)."""
    return (
        isinstance(values, list)
        and len(values) >= at_least
        and all(_is_number(v) and abs(v) < HUGE for v in values)
    )


@dataclasses.dataclass(frozen=True)
class Analysis(Versioned):
    """analysis.json: the transitions of a run's curves and what is read across
    them (:func:`phasevae.analysis.curves.analyze`). ``run`` and ``digest`` are the
    store's (:meth:`phasevae.store.RunDir.write_analysis`)."""

    spectrum: Spectrum
    latent_dim: int
    settings: dict[str, Json]
    transitions: tuple[Transition, ...]
    skipped: tuple[dict[str, Json], ...]
    hysteresis: tuple[dict[str, Json], ...]
    boundary: dict[str, Json]
    boundary_by: tuple[dict[str, Json], ...]
    scaling: dict[str, Json] | None
    scaling_by: tuple[dict[str, Json], ...]
    points: tuple[dict[str, Json], ...]
    format_version: int = FORMAT_VERSION
    run: dict[str, Json] | None = None
    digest: str | None = None

    FORMAT_VERSION = FORMAT_VERSION
    FILE = "analysis.json"
    REMEDY = "rerun `phasevae analyze`"

    def to_json(self) -> dict:
        doc = super().to_json()
        for key in ("run", "digest"):  # the store adds them when it writes
            if doc[key] is None:
                del doc[key]
        return doc

    def _problem(self):
        if len(self.spectrum.eigenvalues) < 1:
            return "spectrum has no eigenvalues"
        for i, t in enumerate(self.transitions):
            if len(t.theory_thresholds) < self.latent_dim:
                return f"transition {i}: fewer theory_thresholds than latent dims"
        for name, b in [("boundary", self.boundary)] + [
            ("boundary_by", b) for b in self.boundary_by
        ]:
            if b.get("theta_c") is not None and not (
                _is_number(b["theta_c"])
                and _numbers(b.get("ci"))
                and len(b["ci"]) == 2
                and _is_number(b.get("theory_theta_c"))
            ):
                return f"{name} is malformed"
        if self.scaling is not None and not (
            self.scaling.get("rms_spread") is None
            or _is_number(self.scaling.get("rms_spread"))
        ):
            return "scaling is malformed"
        for h in self.hysteresis:
            if not (
                all(_numbers(h.get(k)) for k in ("sigma2", "kl_up", "kl_down"))
                and len(h["kl_up"]) == len(h["kl_down"]) == len(h["sigma2"]) > 0
                and (
                    not h.get("parted")
                    or (_numbers(h["parted"]) and len(h["parted"]) == 2)
                )
            ):
                return "hysteresis is malformed"
        return None

    def found(self) -> list[Transition]:
        """The transitions with a located sigma_c^2."""
        return [t for t in self.transitions if t.sigma2_c is not None]


def _from_v0(doc: dict) -> dict:
    """Version 0 (no ``format_version``): a transition may lack the keys added while
    that format was current; they are "not computed"."""
    later = {
        "verdict": None,
        "ci_statistical": None,
        "ci_finite_training": None,
        "train_longer": None,
        "probe": None,
        "off_theory": None,
        "sigma2_c_by_steps": {},
        "drift_per_doubling": None,
        "holds_for_steps": None,
        "advice": None,
    }
    transitions = doc.get("transitions")
    if isinstance(transitions, list):
        transitions = [
            {**later, **t} if isinstance(t, dict) else t for t in transitions
        ]
    return {**doc, "transitions": transitions, "format_version": 1}


MIGRATIONS = {0: _from_v0}  # version -> the function that brings it to version + 1
Analysis.MIGRATIONS = MIGRATIONS
