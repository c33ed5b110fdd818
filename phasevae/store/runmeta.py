"""meta.json as a typed, versioned record: :class:`RunMeta`.

What a run records about itself: the resolved spec, the data's spectrum and
fingerprint, how far it trained (``status``, ``steps_done``, the adaptive sweep's
``model_steps``, ``rounds`` and ``schedule``), which points diverged, its wall times,
and where and with what it ran (versions, devices, git revision, ...;
docs/output.md lists every key). The engine builds it (:func:`phasevae.engine.loop.
base_meta`) and replaces fields as training goes on; the runs joined from others
(static groups, shards, locate's stages) are built by :meth:`RunMeta.joined`; every
reader gets it from :meth:`phasevae.store.RunDir.meta`, parsed.

Version 0 is every meta.json written before the ``format_version`` key: a key added
since (``data``, ``cores``, ``compile_cache``, ...) is absent there and reads as
None. No JAX, no pandas.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from phasevae.store.records import Json, Record, Versioned

FORMAT_VERSION = 1
COMPLETE, RUNNING = "complete", "running"
DIVERGED, OK = "diverged", "ok"


@dataclasses.dataclass(frozen=True)
class WallTimes(Record):
    """Seconds spent compiling (None before the first compile) and training."""

    compile_s: float | None = None
    train_s: float = 0.0


@dataclasses.dataclass(frozen=True)
class RunMeta(Versioned):
    """meta.json (docs/output.md). ``model_steps`` is set only for an adaptive sweep,
    whose points train for different lengths."""

    spec: dict[str, Json]
    spectrum: dict[str, Json]
    grid_size: int
    steps: int
    steps_done: int = 0
    status: str = RUNNING
    points: dict[str, str] = dataclasses.field(default_factory=dict)
    wall_times: WallTimes = WallTimes()
    data: dict[str, Json] | None = None
    shard: tuple[int, int] | None = None
    compiles: int | None = None
    model_steps: int | None = None
    rounds: int | None = None
    schedule: dict[str, int] | None = None
    static_groups: tuple[str, ...] | None = None
    locate: dict[str, Json] | None = None
    merged_from: tuple[str, ...] | None = None
    versions: dict[str, str | None] = dataclasses.field(default_factory=dict)
    git_revision: str | None = None
    packages: dict[str, str] | None = None
    argv: tuple[str, ...] | None = None
    host: str | None = None
    environment: dict[str, str] | None = None
    devices: tuple[str, ...] = ()
    cores: int | None = None
    processes: int | None = None
    platform: str | None = None
    compile_cache: dict[str, Json] | None = None
    format_version: int = FORMAT_VERSION

    FORMAT_VERSION = FORMAT_VERSION
    FILE = "meta.json"
    REMEDY = "rerun the sweep with this version"

    def _problem(self):
        if self.status not in (RUNNING, COMPLETE):
            return f"status {self.status!r} is neither {RUNNING!r} nor {COMPLETE!r}"
        odd = sorted(set(self.points.values()) - {OK, DIVERGED})
        if odd:
            return f"points holds {odd[0]!r}, not {OK!r} or {DIVERGED!r}"
        if not isinstance(self.spectrum.get("eigenvalues"), list):
            return "spectrum has no eigenvalues"
        return None

    @property
    def complete(self) -> bool:
        return self.status == COMPLETE

    @property
    def diverged(self) -> list[str]:
        """The ids of the points that diverged, in the grid's order."""
        return [p for p, s in self.points.items() if s == DIVERGED]

    @property
    def adaptive(self) -> bool:
        """Points trained for different lengths (``model_steps`` counts them)."""
        return self.model_steps is not None

    def replace(self, **changes) -> RunMeta:
        return dataclasses.replace(self, **changes)

    @classmethod
    def joined(cls, metas: Sequence[RunMeta], *, parallel: bool, **changes) -> RunMeta:
        """One run's meta from the metas of the runs it joins: the first one's, its
        points the union of theirs, its training time their sum, and its compile time
        the sum when they ran one after another (static groups, locate's stages) or
        the longest when they ran side by side (``parallel``: shards); then
        ``changes``."""
        compile_s = [m.wall_times.compile_s or 0.0 for m in metas]
        wall = WallTimes(
            compile_s=max(compile_s) if parallel else sum(compile_s),
            train_s=sum(m.wall_times.train_s for m in metas),
        )
        points = {k: v for m in metas for k, v in m.points.items()}
        return metas[0].replace(points=points, wall_times=wall, **changes)


def _from_v0(doc: dict) -> dict:
    """Version 0 (no ``format_version``): the keys added while it was current are
    absent and read as their defaults (None)."""
    return {**doc, "format_version": 1}


RunMeta.MIGRATIONS = {0: _from_v0}
