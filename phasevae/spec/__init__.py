"""Sweep specifications: TOML files loaded into the frozen dataclasses of
:mod:`phasevae.spec.types` (re-exported here), validated.

A spec has four sections, ``[data]``, ``[model]``, ``[train]`` and ``[grid]``. Every key
has a default, so the resolved spec (written next to the results as ``spec.toml``) is
complete. Unknown keys and impossible values raise :class:`SpecError`, whose message
names the file, the key and what is allowed.

The package (``types``: the dataclasses and axes; ``reference``: the spec reference
the docs show) may import ``phasevae.errors`` and ``phasevae.safeio`` only: a spec
error is told before JAX is imported.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import tomli_w

from phasevae.safeio import SPEC_BYTES, brief, read_text
from phasevae.spec.types import (  # noqa: F401  (the spec's types, re-exported)
    LATER_AXES,
    LIKELIHOODS,
    MAX_DISPERSION,
    Axis,
    DataSpec,
    GridSpec,
    ModelSpec,
    Range,
    Refine,
    Spec,
    SpecError,
    TrainSpec,
    axis_values,
    coerce_options,
    decoder_label,
    grid_size,
    mask_offsets,
    model_problem,
    stack_offsets,
    train_problem,
)

MAX_INT = 2**31 - 1  # integers in a spec (steps, widths, sizes) fit int32
MAX_LAYERS = 64  # hidden layers of the encoder or the decoder
MAX_AXIS = 100_000  # values on one grid axis
MAX_ROUNDS = 100  # refinement rounds of grid.sigma2
MAX_POINTS = 1_000_000  # grid points in one spec (the grid table is built first)
# sources whose normalize is not "none" by default: images to [-1, 1], a series to
# one mean and scale
DEFAULT_SCALE = {"cifar10": "unit", "patches": "unit", "series": "global"}
SECTIONS = {"data": DataSpec, "model": ModelSpec, "train": TrainSpec, "grid": GridSpec}
CHOICES = {
    ("data", "source"): (
        "synthetic",
        "digits",
        "patches",
        "cifar10",
        "array",
        "text",
        "series",
    ),
    ("data", "series"): ("membrane", "eeg"),
    ("data", "split"): ("train", "test", "all"),
    ("data", "distribution"): ("gaussian", "laplace", "uniform", "bimodal"),
    ("data", "normalize"): ("none", "center", "standardize", "global", "unit"),
    ("train", "optimizer"): ("adam", "sgd"),
    ("model", "sigma2"): ("fixed", "learned"),
    ("model", "skip"): ("none", "plain", "gated"),
    ("model", "kind"): ("mlp", "conv", "module", "vrnn"),
    ("model", "latent"): ("gaussian", "sphere", "categorical", "ladder"),
    ("model", "estimator"): ("gumbel", "straight_through"),
    ("model", "likelihood"): LIKELIHOODS,
    ("train", "until"): ("steps", "trusted"),
    ("train", "precision"): ("float32", "tf32", "bfloat16"),
}
# (lower bound, inclusive?) for every number that has one.
FLOAT32 = (1.2e-38, 3.4e38)  # float32's smallest normal and (about) largest value
BOUNDS = {
    ("data", "eigenvalues"): (0.0, True),
    ("data", "samples"): (2, True),
    ("data", "eval_samples"): (1, True),
    ("data", "seed"): (0, True),
    ("data", "window"): (1, True),
    ("train", "seed"): (0, True),
    ("model", "latent_dim"): (1, True),
    ("model", "encoder"): (1, True),
    ("model", "decoder"): (1, True),
    ("model", "channels"): (1, True),
    ("model", "kernel"): (1, True),
    ("model", "concentration"): (0.0, True),
    ("model", "dispersion"): (0.0, True),
    ("model", "latent_categories"): (0, True),
    ("model", "temperature"): (0.0, False),
    ("model", "top_dim"): (0, True),
    ("model", "state"): (0, True),
    ("model", "categories"): (0, True),
    ("model", "context"): (0, True),
    ("model", "recurrent"): (0, True),
    ("model", "mask"): (0, True),
    ("model", "mask_layers"): (1, True),
    ("model", "mask_channels"): (1, True),
    ("train", "steps"): (1, True),
    ("train", "batch_size"): (1, True),
    ("train", "learning_rate"): (0.0, False),
    ("train", "eval_every"): (1, True),
    ("train", "slots"): (0, True),
    ("train", "min_steps"): (0, True),
    ("train", "max_steps"): (0, True),
    ("grid", "sigma2"): (0.0, False),
    ("grid", "beta"): (0.0, True),
    ("grid", "learning_rate"): (0.0, False),
    ("grid", "seeds"): (0, True),
    ("grid", "kl_warmup_steps"): (0.0, True),
    ("grid", "decoder_init_scale"): (0.0, True),
    ("grid", "free_bits"): (0.0, True),
    ("grid", "kl_cycle_steps"): (0.0, True),
    ("grid", "kl_cycle_ramp"): (0.0, False),
    ("grid", "mi_weight"): (0.0, True),
    ("grid", "entropy_target"): (0.0, True),
    ("grid", "entropy_weight"): (0.0, True),
    ("grid", "top_kl_weight"): (0.0, True),
    ("grid", "state_noise"): (0.0, True),
}


def _dims(m: ModelSpec) -> str:
    """The latent dims a model has, as a spec names them."""
    if m.top_dim:
        return f"model.latent_dim + model.top_dim = {m.latent_dim + m.top_dim}"
    return f"model.latent_dim = {m.latent_dim}"


def default_spec_path() -> Path:
    """The built-in default sweep (``sweeps/default.toml``, shipped in the package)."""
    return Path(str(resources.files("phasevae.sweeps") / "default.toml"))


def load_spec(path: str | Path | None = None, overrides: list[str] = ()) -> Spec:
    """Read a spec file, apply ``KEY=VALUE`` overrides, fill defaults and validate.

    Args:
      path: a TOML file; None means the built-in default sweep.
      overrides: ``--set`` strings: a dotted key and a TOML value
        (``grid.beta=[0.5, 1.0]``); a value that is not TOML is taken as a string.

    Raises:
      SpecError: unreadable file, unknown key or impossible value.
    """
    path = Path(path) if path is not None else default_spec_path()
    raw = parse_toml(read_text(path, "spec file", SPEC_BYTES, SpecError), str(path))
    _absolute_data_path(raw, path.parent)  # written in the file: beside the file
    apply_overrides(raw, overrides, path)
    _absolute_data_path(raw, Path.cwd())  # given with --set: where it was typed
    return spec_from_dict(raw, str(path))


def _absolute_data_path(raw: dict, base: Path) -> None:
    """Make a relative ``data.path`` absolute against ``base`` (the run then finds
    its data from any working directory)."""
    data = raw.get("data")
    value = data.get("path") if isinstance(data, dict) else None
    if isinstance(value, str) and value and not Path(value).is_absolute():
        data["path"] = os.path.abspath(base / value)


def apply_overrides(raw: dict, overrides: list[str], where: Path) -> None:
    """Apply ``--set`` strings to a spec's raw tables, in order (SpecError names
    ``where`` for a bad one)."""
    for item in overrides:
        _apply_override(raw, item, where)


def parse_toml(text: str, where: str) -> dict[str, Any]:
    """TOML text to a dict, every parse failure a SpecError naming ``where``."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{where}: not valid TOML ({e})") from None
    except RecursionError:
        raise SpecError(f"{where}: not valid TOML (nested too deeply)") from None


def spec_from_dict(raw: dict[str, Any], where: str = "<spec>") -> Spec:
    """Build and validate a :class:`Spec` from a nested dict (as TOML gives)."""
    unknown = set(raw) - set(SECTIONS)
    if unknown:
        raise SpecError(
            f"{where}: unknown section [{sorted(unknown)[0]}]; "
            f"allowed: {', '.join(f'[{s}]' for s in SECTIONS)}"
        )
    sections = {}
    for name, cls in SECTIONS.items():
        table = raw.get(name, {})
        if not isinstance(table, dict):
            raise SpecError(f"{where}: [{name}] must be a table")
        sections[name] = _build_section(name, cls, table, where)
    if (
        "normalize" not in raw.get("data", {})
        and sections["data"].source in DEFAULT_SCALE
    ):
        scale = DEFAULT_SCALE[sections["data"].source]
        sections["data"] = dataclasses.replace(sections["data"], normalize=scale)
    spec = Spec(**sections)
    widest = max(axis_values(spec.grid.context))
    headless = not (spec.model.context or spec.model.recurrent or spec.model.mask)
    if widest > 0 and widest == int(widest) and headless:
        # a context axis builds a linear head for the largest context
        model = dataclasses.replace(spec.model, context=int(widest))
        spec = dataclasses.replace(spec, model=model)
    _check_spec(spec, where)
    return spec


def spec_to_dict(spec: Spec) -> dict[str, Any]:
    """The resolved spec as a TOML-ready dict (every default filled in)."""
    out: dict[str, Any] = {}
    for name in SECTIONS:
        section = {}
        for f in dataclasses.fields(getattr(spec, name)):
            v = getattr(getattr(spec, name), f.name)
            if v is None:
                continue
            if (name, f.name) == ("model", "options"):
                v = {k: _plain(x) for k, x in v}
            section[f.name] = _range_dict(v) if isinstance(v, Range) else _plain(v)
        out[name] = section
    return out


def spec_to_toml(spec: Spec) -> str:
    return tomli_w.dumps(spec_to_dict(spec))


def _range_dict(r: Range) -> dict:
    d = dataclasses.asdict(r)
    return d if r.refine is not None else {k: v for k, v in d.items() if v is not None}


def _plain(v: Any) -> Any:
    return [_plain(x) for x in v] if isinstance(v, tuple) else v


def _apply_override(raw: dict, item: str, where: Path) -> None:
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise SpecError(
            f"--set {brief(item)}: expected KEY=VALUE, e.g. grid.beta=[0.5,1.0]"
        )
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text  # a bare string such as data.path=x.npy (the shell ate the quotes)
    except RecursionError:
        raise SpecError(f"--set {brief(key)}: the value is nested too deeply") from None
    parts = key.split(".")
    if parts[0] not in SECTIONS or len(parts) < 2:
        raise SpecError(
            f"--set {brief(key)}: unknown key; keys look like SECTION.NAME with "
            f"SECTION one of {', '.join(SECTIONS)}"
        )
    node = raw
    for i, p in enumerate(parts[:-1]):
        child = node.get(p)
        if child is None and i == 1:
            # e.g. grid.sigma2.num on an axis left at its default range
            default = getattr(SECTIONS[parts[0]](), p, None)
            child = dataclasses.asdict(default) if isinstance(default, Range) else {}
        elif child is None:
            child = {}
        if not isinstance(child, dict):
            raise SpecError(
                f"--set {key}: {'.'.join(parts[: i + 1])} is not a table "
                f"(it is {brief(child)}); set it whole instead"
            )
        node[p] = child
        node = child
    node[parts[-1]] = value


def _build_section(name: str, cls: type, table: dict, where: str):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in table.items():
        if key not in fields:
            raise SpecError(
                f"{where}: unknown key {name}.{key}; allowed in [{name}]: "
                f"{', '.join(fields)}"
            )
        default = getattr(cls(), key)
        kwargs[key] = _coerce(name, key, value, default, where)
    return cls(**kwargs)


def _coerce(section: str, key: str, value: Any, default: Any, where: str):
    """Check one value's type against its default's and convert lists to tuples."""
    full = f"{section}.{key}"
    bad = f"{where}: {full} = {brief(value)}:"
    if (section, key) == ("model", "options"):
        return coerce_options(value, bad)
    if (section, key) == ("grid", "decoder"):
        return _coerce_widths_axis(full, value, bad)
    if (section, key) == ("grid", "skip"):
        choices = CHOICES[("model", "skip")]
        if (
            not isinstance(value, list)
            or not value
            or any(v not in choices for v in value)
            or len(set(value)) != len(value)
        ):
            raise SpecError(
                f"{bad} must be a list of distinct skip paths from "
                f"{', '.join(repr(c) for c in choices)}"
            )
        return tuple(value)
    if section == "grid":
        return _coerce_axis(
            full, value, bad, integer=key == "seeds", refinable=key == "sigma2"
        )
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise SpecError(f"{bad} must be true or false")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(f"{bad} must be an integer")
        if abs(value) > MAX_INT:
            raise SpecError(f"{bad} must be an integer below 2^31")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SpecError(f"{bad} must be a number")
        try:
            return float(value)
        except OverflowError:
            raise SpecError(f"{bad} is too large for a number") from None
    if isinstance(default, str):
        if not isinstance(value, str):
            raise SpecError(f"{bad} must be a string")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise SpecError(
                f"{bad} must be UTF-8 text (a path with odd bytes?)"
            ) from None
        if "\x00" in value:
            raise SpecError(f"{bad} must not contain a NUL character")
        return value
    if isinstance(default, tuple):
        if not isinstance(value, list):
            raise SpecError(f"{bad} must be a list")
        is_int = key in ("encoder", "decoder", "channels")
        for v in value:
            if isinstance(v, bool) or not isinstance(v, int if is_int else int | float):
                kind = "integers" if is_int else "numbers"
                raise SpecError(f"{bad} must be a list of {kind}")
            if is_int and abs(v) > MAX_INT:
                raise SpecError(f"{bad} widths must be below 2^31")
        if is_int and len(value) > MAX_LAYERS:
            raise SpecError(f"{bad} at most {MAX_LAYERS} hidden layers")
        return tuple(v if is_int else float(v) for v in value)
    raise AssertionError(f"no coercion for {full}")


def _coerce_axis(
    full: str, value: Any, bad: str, integer: bool, refinable: bool
) -> Axis:
    allowed = "a list of numbers or a table {min, max, num, scale = 'log'|'linear'}"
    if integer:
        if not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            raise SpecError(f"{bad} must be a list of integers")
        if not value:
            raise SpecError(f"{bad} must not be empty")
        if any(not 0 <= v < 2**32 for v in value):
            raise SpecError(f"{bad} seeds must be integers in [0, 2^32)")
        if len(set(value)) != len(value):
            raise SpecError(f"{bad} lists a seed twice")
        return tuple(value)
    if isinstance(value, list):
        if not value:
            raise SpecError(f"{bad} must not be empty")
        if not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in value
        ):
            raise SpecError(f"{bad} must be {allowed}")
        if len(value) > MAX_AXIS:
            raise SpecError(f"{bad} at most {MAX_AXIS:,} values per axis")
        try:
            values = tuple(float(v) for v in value)
        except OverflowError:
            raise SpecError(f"{bad} a value is too large for a number") from None
        if len(set(values)) != len(values):
            raise SpecError(f"{bad} lists a value twice")
        return values
    if isinstance(value, dict):
        keys = {"min", "max", "num", "scale"} | ({"refine"} if refinable else set())
        if set(value) - keys:
            extra = sorted(set(value) - keys)[0]
            raise SpecError(
                f"{bad} unknown key {full}.{extra}; allowed: {sorted(keys)}"
            )
        if not {"min", "max", "num"} <= set(value):
            raise SpecError(f"{bad} a range needs min, max and num")
        num, lo, hi = value["num"], value["min"], value["max"]
        scale = value.get("scale", "log")
        if (
            isinstance(num, bool)
            or not isinstance(num, int)
            or not 1 <= num <= MAX_AXIS
        ):
            raise SpecError(f"{bad} {full}.num must be an integer in [1, {MAX_AXIS:,}]")
        for k, v in (("min", lo), ("max", hi)):
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise SpecError(f"{bad} {full}.{k} must be a number")
        if scale not in ("log", "linear"):
            raise SpecError(f"{bad} {full}.scale must be 'log' or 'linear'")
        if hi < lo:
            raise SpecError(f"{bad} {full}.max must be >= {full}.min")
        if scale == "log" and lo <= 0:
            raise SpecError(f"{bad} a log-scale range needs min > 0")
        refine = _coerce_refine(full, value.get("refine"), bad)
        return Range(float(lo), float(hi), num, scale, refine)
    raise SpecError(f"{bad} must be {allowed}")


def _coerce_widths_axis(full: str, value: Any, bad: str) -> tuple[tuple[int, ...], ...]:
    rule = "must be a non-empty list of width lists, e.g. [[32, 64], [128, 256], []]"
    if not isinstance(value, list) or not value:
        raise SpecError(f"{bad} {rule}")
    options = []
    for option in value:
        ok = isinstance(option, list) and all(
            isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in option
        )
        if not ok:
            raise SpecError(f"{bad} {rule} (widths are integers >= 1)")
        options.append(tuple(option))
    if len(set(options)) != len(options):
        raise SpecError(f"{bad} lists an option twice")
    return tuple(options)


def _coerce_refine(full: str, value: Any, bad: str) -> Refine | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise SpecError(f"{bad} {full}.refine must be a table {{rounds, points}}")
    keys = {f.name for f in dataclasses.fields(Refine)}
    if set(value) - keys:
        extra = sorted(set(value) - keys)[0]
        raise SpecError(
            f"{bad} unknown key {full}.refine.{extra}; allowed: {sorted(keys)}"
        )
    most = {"rounds": MAX_ROUNDS, "points": MAX_AXIS}
    for k, v in value.items():
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= most[k]:
            raise SpecError(
                f"{bad} {full}.refine.{k} must be an integer from 1 to {most[k]:,}"
            )
    if value.get("points", Refine.points) * value.get("rounds", Refine.rounds) > (
        MAX_AXIS
    ):
        raise SpecError(
            f"{bad} {full}.refine adds rounds x points sigma^2 values, at most "
            f"{MAX_AXIS:,} (as any axis)"
        )
    return Refine(**value)


def _check_spec(spec: Spec, where: str) -> None:
    for (section, key), choices in CHOICES.items():
        v = getattr(getattr(spec, section), key)
        if v not in choices:
            raise SpecError(
                f"{where}: {section}.{key} = {brief(v)} is not allowed; "
                f"choose one of {', '.join(repr(c) for c in choices)}"
            )
    for (section, key), (lo, inclusive) in BOUNDS.items():
        v = getattr(getattr(spec, section), key)
        if v is None:
            continue
        values = axis_values(v) if section == "grid" else v
        for x in values if isinstance(values, tuple) else (values,):
            ok = math.isfinite(x) and (x >= lo if inclusive else x > lo)
            if not ok:
                rel = ">=" if inclusive else ">"
                raise SpecError(
                    f"{where}: {section}.{key} = {brief(x)} is impossible; "
                    f"it must be finite and {rel} {lo}"
                )
            traced = isinstance(x, float) or (section == "grid" and key != "seeds")
            if traced and x and not FLOAT32[0] <= abs(x) <= FLOAT32[1]:
                raise SpecError(
                    f"{where}: {section}.{key} = {brief(x)} would be "
                    f"{'0' if abs(x) < FLOAT32[0] else 'inf'} in float32, in which "
                    f"models train; nonzero values must lie in [{FLOAT32[0]:.2g}, "
                    f"{FLOAT32[1]:.2g}]"
                )
    problem = model_problem(spec) or train_problem(spec)
    if problem:
        raise SpecError(f"{where}: {problem}")
    d = spec.data
    if d.source == "synthetic" and len(d.eigenvalues) < 1:
        raise SpecError(f"{where}: data.eigenvalues must list at least one eigenvalue")
    dims = spec.model.latent_dim + spec.model.top_dim
    if d.source == "synthetic" and dims > len(d.eigenvalues):
        raise SpecError(
            f"{where}: {_dims(spec.model)} exceeds the data dimension "
            f"{len(d.eigenvalues)} (len(data.eigenvalues))"
        )
    if d.source in ("array", "cifar10") and not d.path:
        raise SpecError(f"{where}: data.source = {d.source!r} needs data.path (a file)")
    points = grid_size(spec)
    if points > MAX_POINTS:
        raise SpecError(
            f"{where}: the grid has {points:,} points (the product of its axes); at "
            f"most {MAX_POINTS:,} fit one spec: split the sweep into several specs"
        )
