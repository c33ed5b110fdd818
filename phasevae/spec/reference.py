"""The spec reference, generated from the spec's own definitions: the section
dataclasses of :mod:`phasevae.spec.types` with their defaults and docstrings, and the
choices and bounds :mod:`phasevae.spec` enforces. The documentation site is built
from :func:`reference_markdown`, so it cannot drift from what a spec accepts."""

from __future__ import annotations

import dataclasses
import inspect
import json
import re

from phasevae.spec import BOUNDS, CHOICES, SECTIONS, Spec, spec_to_dict

AXIS = 'list of numbers, or a range `{ min, max, num, scale = "log" or "linear" }`'
TYPES = {
    "str": "string",
    "int": "integer",
    "float": "number",
    "bool": "true / false",
    "tuple[float, ...]": "list of numbers",
    "tuple[int, ...]": "list of integers",
    "tuple[tuple[str, object], ...]": "table",
    "Axis": AXIS,
    "Axis | None": AXIS,
    "tuple[tuple[int, ...], ...] | None": "list of lists of integers (static axis)",
    "tuple[str, ...] | None": "list of strings (static axis)",
}


def reference_markdown() -> str:
    """Every section of a spec as Markdown: its docstring, then a table of its keys
    with type, default and what is allowed."""
    defaults = spec_to_dict(Spec())
    parts = []
    for section, cls in SECTIONS.items():
        parts.append(f"### [{section}]\n\n{_prose(cls)}\n")
        parts.append("| key | type | default | allowed |\n|---|---|---|---|")
        for f in dataclasses.fields(cls):
            kind = TYPES.get(str(f.type), str(f.type))
            value = defaults[section].get(f.name)
            default = "absent" if value is None else f"`{_toml(value)}`"
            parts.append(
                f"| `{f.name}` | {kind} | {default} | {_allowed(section, f.name)} |"
            )
        parts.append("")
    return "\n".join(parts)


def _prose(cls) -> str:
    """A dataclass's docstring as Markdown (``code`` becomes `code`)."""
    text = inspect.cleandoc(cls.__doc__ or "")
    text = re.sub(r":(?:mod|func|class|meth):`~?([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


def _toml(value) -> str:
    """A value as inline TOML, on one line."""
    if isinstance(value, dict):
        inner = ", ".join(f"{k} = {_toml(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)  # strings, numbers and true / false read as in TOML


def _allowed(section: str, key: str) -> str:
    if (section, key) in CHOICES:
        return ", ".join(f"`{c}`" for c in CHOICES[(section, key)])
    if (section, key) in BOUNDS:
        lo, inclusive = BOUNDS[(section, key)]
        return f"finite, {'>=' if inclusive else '>'} {lo:g}"
    return ""
