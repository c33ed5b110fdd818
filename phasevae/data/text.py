"""A character corpus that ships with Python itself: the docstrings of a fixed list
of standard-library modules (their own and their public functions' and classes'),
lower-cased, each run of white space one space. ``data.source = "text"`` reads
windows of it as token ids for the categorical decoder (model.likelihood =
"categorical", one position per character).

Docstrings change between Python releases, so the corpus does too: the description
names the Python version, and a run's data fingerprint (its SHA-256) tells one
release's corpus from another's.
"""

from __future__ import annotations

import importlib
import inspect
import platform
import re

import numpy as np

from phasevae.errors import DataError

CORPUS_MODULES = (
    "argparse",
    "collections",
    "csv",
    "datetime",
    "functools",
    "heapq",
    "itertools",
    "json",
    "logging",
    "os",
    "pathlib",
    "random",
    "re",
    "shutil",
    "statistics",
    "string",
    "subprocess",
    "textwrap",
    "threading",
    "unittest",
)


def corpus() -> str:
    """The corpus: every module's docstring, then its public members' (sorted by
    name, those defined in it), lower-cased, white space collapsed."""
    docs = []
    for name in CORPUS_MODULES:
        module = importlib.import_module(name)
        docs.append(inspect.getdoc(module) or "")
        for attr, member in sorted(vars(module).items()):  # no module __getattr__
            if attr.startswith("_") or getattr(member, "__module__", None) != name:
                continue
            if inspect.isfunction(member) or inspect.isclass(member):
                docs.append(inspect.getdoc(member) or "")
    return re.sub(r"\s+", " ", " ".join(docs).lower()).strip()


def text_windows(
    alphabet: str, window: int, samples: int, seed: int
) -> tuple[np.ndarray, str]:
    """``samples`` windows of ``window`` consecutive characters of :func:`corpus` at
    offsets drawn from ``seed`` (without replacement where the corpus is long
    enough), as token ids (samples, window): a character's place in ``alphabet``,
    any other character len(alphabet). Returns (ids, description).

    Raises:
      DataError: a corpus shorter than the window.
    """
    text = corpus()
    if len(text) < window:
        raise DataError(
            f"the text corpus has {len(text)} characters, fewer than data.window = "
            f"{window}"
        )
    codes = np.frombuffer(text.encode("utf-32-le"), np.uint32)
    ids = np.full(codes.shape, len(alphabet), np.int64)
    for i, c in enumerate(alphabet):
        ids[codes == ord(c)] = i
    starts = len(text) - window + 1
    rng = np.random.default_rng(seed)
    at = rng.choice(starts, samples, replace=samples > starts)
    x = ids[at[:, None] + np.arange(window)]
    what = (
        f"text: {samples} windows of {window} characters of the docstrings of "
        f"{len(CORPUS_MODULES)} standard-library modules (Python "
        f"{platform.python_version()}, {len(text):,} characters), alphabet "
        f"{alphabet!r} + other"
    )
    return x.astype(np.float32), what
