"""Schedule policies of the chunk loop (:func:`phasevae.engine.loop.train`): which grid
point each of a fixed number of vmapped slots trains, and for how many steps.

The plain grid is the trivial schedule (``lockstep``): every point has its own slot,
all advance together from one shared step, nothing is retired or refilled and no
round is added. The adaptive policies (``train.slots``, ``train.retire``,
``train.hysteresis``, ``grid.sigma2.refine``) give every slot its own step count.
After each chunk a point leaves its slot when it has trained ``train.steps`` steps,
diverged, or, with ``retire``, when its KL has settled
(:func:`phasevae.analysis.curves.settle`, bounded form, after ``min_steps``); the slot
is re-initialised with the next pending point, which starts again from step 0. A
point's initialisation, noise and minibatches depend on its own step and values only,
so it ends as it would have trained alone. When no point is pending or training, a
refinement round (:func:`refinement`) adds sigma^2 values inside each curve's
transition interval and around the other breakpoints of its fitted KL, and those
train next, until ``rounds`` are done. With ``train.until = "trusted"`` the points
the transition estimate still needs (:class:`UntilTrusted`) train on past
``train.steps``. The schedule (slot states, the grid with its refined rows, kept
warm-start parameters) is saved in the run directory's checkpoint with the training
state.

The loop keeps its host-side state in one record (:class:`Host`) and, after every
chunk, calls each policy :func:`policies` chose for the spec through one protocol
(:class:`Policy`: ``after_chunk(host, chunk)``): :class:`UntilTrusted`,
:class:`Retire`, :class:`Refine`; then the schedule refills free slots
(:meth:`Schedule.fill`, :func:`refill` with warm starts). Hysteresis is the order
the schedule hands points out (:func:`chains`) with warm starts.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from phasevae.analysis.constants import GRID_AXES, KL_RESOLUTION, curve_axes
from phasevae.analysis.curves import settle
from phasevae.analysis.estimate import (
    NEAR,
    estimate_transition,
    interval,
    interval_values,
)
from phasevae.analysis.fit import fit_piecewise, profile_interval, seed_average
from phasevae.engine.devices import to_host
from phasevae.engine.grid import point_id
from phasevae.spec import Range, Spec

EMPTY = -1
# a point retires when the 90 % interval of its KL's trend over the last half of its
# evaluations lies within the analysis's tolerance (settle(..., bounded=True))
RETIRE_SIGNIFICANCE = 0.90
UNTIL_TRUSTED_FACTOR = 4  # train.until = "trusted": max_steps = this x steps by default


def warm_starts(spec: Spec) -> bool:
    return spec.train.warm_start or spec.train.hysteresis


def chains(grid: pd.DataFrame) -> list[list[int]]:
    """A hysteresis sweep's chains: rows with equal axes but sigma^2 (direction and
    seed included), in the order they train: sigma^2 ascending for direction +1,
    descending for -1."""
    axes = [a for a in GRID_AXES if a in grid.columns and a != "sigma2"]
    out = []
    for _, g in grid.groupby(axes, sort=True):
        rows = g.sort_values("sigma2").index.tolist()
        out.append(rows if g["direction"].iloc[0] > 0 else rows[::-1])
    return out


class Schedule:
    """Host-side bookkeeping: the grid so far, which point each slot trains and for
    how many steps, which points are pending or finished, the refinement round.
    ``lockstep``: the plain grid (one slot per point, one shared step, a diverged
    point stays in its slot, frozen, to the end)."""

    def __init__(self, grid: pd.DataFrame, slots: int, lockstep: bool = False):
        self.lockstep = lockstep
        self.grid = grid.reset_index(drop=True)
        if not lockstep:  # the refinement round that added each point
            self.grid = self.grid.assign(round=0)
        self.slot_point = np.full(slots, EMPTY, np.int64)  # row of grid, or EMPTY
        self.slot_step = np.zeros(slots, np.int64)
        self.pending = list(range(len(self.grid)))
        self.finished: list[int] = []
        self.round = 0
        self._link_chains()

    def _link_chains(self) -> None:
        """In a hysteresis sweep a point waits for the one before it in its chain;
        the pending list runs through the chains position by position."""
        self.after: dict[int, int] = {}
        if "direction" not in self.grid.columns:
            return
        links = chains(self.grid)
        for chain in links:
            self.after.update(zip(chain[1:], chain[:-1], strict=True))
        order = {
            r: (i, c) for c, chain in enumerate(links) for i, r in enumerate(chain)
        }
        self.pending.sort(key=order.__getitem__)

    def to_json(self) -> str:
        return json.dumps(
            {
                "grid": self.grid.to_dict("list"),
                "slot_point": self.slot_point.tolist(),
                "slot_step": self.slot_step.tolist(),
                "pending": self.pending,
                "finished": self.finished,
                "round": self.round,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Schedule:
        d = json.loads(text)
        s = cls.__new__(cls)
        s.grid = pd.DataFrame(d["grid"])
        s.grid["seed"] = s.grid["seed"].astype(np.int64)
        s.slot_point = np.array(d["slot_point"], np.int64)
        s.slot_step = np.array(d["slot_step"], np.int64)
        s.finished, s.round = d["finished"], d["round"]
        s.lockstep = False  # a lockstep schedule is rebuilt from its step
        s.pending = d["pending"]
        pending = list(s.pending)
        s._link_chains()
        s.pending = pending  # keep the saved order
        return s

    @property
    def busy(self) -> np.ndarray:
        return self.slot_point != EMPTY

    def done(self) -> bool:
        return not self.pending and not self.busy.any()

    def slot_rows(self) -> pd.DataFrame:
        """The grid rows the slots hold (an empty slot shows the first point: it
        trains a throw-away copy whose results are dropped)."""
        rows = np.where(self.busy, self.slot_point, self.slot_point.max(initial=0))
        return self.grid.iloc[np.maximum(rows, 0)].reset_index(drop=True)

    def fill(self) -> np.ndarray:
        """Put pending points into empty slots; the mask of refilled slots."""
        refilled = np.zeros(len(self.slot_point), bool)
        done = set(self.finished)
        for slot in np.flatnonzero(~self.busy):
            ready = [r for r in self.pending if self.after.get(r, r) in done | {r}]
            if not ready:
                break
            self.pending.remove(ready[0])
            self.slot_point[slot] = ready[0]
            self.slot_step[slot] = 0
            refilled[slot] = True
        return refilled

    def progress(self, every: int, steps: int) -> tuple[int, int]:
        """(done, total): chunks in lockstep, else points finished."""
        if self.lockstep:
            return int(self.slot_step.max()) // every, steps // every
        return len(self.finished), max(len(self.grid), 1)

    def add_round(self, new: pd.DataFrame) -> None:
        self.round += 1
        start = len(self.grid)
        self.grid = pd.concat(
            [self.grid, new.assign(round=self.round)], ignore_index=True
        )
        self.pending.extend(range(start, len(self.grid)))


@dataclasses.dataclass
class Host:
    """The loop's host-side state between chunks, in one record: the schedule,
    every evaluation so far (``frames``, one table per chunk), the parameters kept
    for warm starts (``warm``: point id -> leaves), the points that train on past
    ``train.steps`` this chunk (``keep``, :class:`UntilTrusted`) and the model-steps
    trained."""

    sched: Schedule
    frames: list[pd.DataFrame]
    warm: dict[str, list[np.ndarray]]
    model_steps: int = 0
    keep: set[str] = dataclasses.field(default_factory=set)

    def history(self) -> pd.DataFrame:
        return pd.concat(self.frames, ignore_index=True)


@dataclasses.dataclass(frozen=True)
class Chunk:
    """What one chunk left on the host: its metrics rows (the slots that trained),
    which models diverged, which slots trained, and the device state after it."""

    frame: pd.DataFrame
    diverged: np.ndarray
    busy: np.ndarray
    state: Any


class Policy(Protocol):
    """A scheduling policy: after every chunk the loop calls each policy of
    :func:`policies` in turn; it reads and changes the host state (frees slots, adds
    points, keeps points training). Slots left empty are refilled from the pending
    points afterwards (:meth:`Schedule.fill`, :func:`refill`)."""

    def after_chunk(self, host: Host, chunk: Chunk) -> None: ...


def policies(spec: Spec, spectrum: dict) -> list[Policy]:
    """The policies ``spec`` asks for, in the order they run after each chunk: which
    points train on (``until``), which slots free up (always: a point done, settled
    or diverged), then whether a refinement round starts (``refine``). A new policy
    is one class with ``after_chunk`` and its line here."""
    out: list[Policy] = []
    if spec.train.until == "trusted":
        out.append(UntilTrusted(spec, spectrum))
    out.append(Retire(spec))
    s2 = spec.grid.sigma2
    if isinstance(s2, Range) and s2.refine:
        out.append(Refine(spec, spectrum))
    return out


@dataclasses.dataclass(frozen=True)
class Retire:
    """Free the slots whose point has trained its steps (unless it is kept,
    :class:`UntilTrusted`), has settled (with ``train.retire``) or diverged (not in
    lockstep); keep its parameters for warm starts."""

    spec: Spec

    def after_chunk(self, host: Host, chunk: Chunk) -> None:
        t, sched = self.spec.train, host.sched
        settled = {}
        if t.retire:
            history = host.history()
            ids = set(chunk.frame["point_id"])
            table = settle(
                history[history["point_id"].isin(ids)],
                ["kl"],
                significance=RETIRE_SIGNIFICANCE,
                bounded=True,
            )
            settled = dict(zip(table["point_id"], table["settled"], strict=True))
        leaving = []
        for slot in np.flatnonzero(chunk.busy):
            pid = sched.grid.at[sched.slot_point[slot], "point_id"]
            steps = sched.slot_step[slot]
            ripe = t.retire and steps >= max(t.min_steps, 1) and settled.get(pid, False)
            done = steps >= t.steps and pid not in host.keep
            if done or ripe or (chunk.diverged[slot] and not sched.lockstep):
                leaving.append(slot)
        if warm_starts(self.spec) and leaving:
            params = to_host(jax.tree.leaves(chunk.state.params))
            for slot in leaving:
                if not chunk.diverged[slot]:
                    pid = sched.grid.at[sched.slot_point[slot], "point_id"]
                    host.warm[pid] = [a[slot] for a in params]
        for slot in leaving:
            sched.finished.append(int(sched.slot_point[slot]))
            sched.slot_point[slot] = EMPTY


def max_steps(spec: Spec) -> int:
    """The most steps a point trains with ``train.until = "trusted"``."""
    return spec.train.max_steps or UNTIL_TRUSTED_FACTOR * spec.train.steps


@dataclasses.dataclass(frozen=True)
class UntilTrusted:
    """``train.until = "trusted"``: which training points go on past ``train.steps``
    (``host.keep``). A curve (the points sharing every axis but sigma^2 and seed) is
    estimated once all its points have trained ``train.steps`` steps and none is
    pending; while its verdict is ``train longer``, its points inside the sigma^2
    range the estimate names (the points that set the kink among them), and those
    within ``estimate.NEAR`` of the kink, go on, up to :func:`max_steps`. A curve
    whose points finished before it was complete (``train.slots`` smaller than the
    grid) is not extended: their state is gone."""

    spec: Spec
    spectrum: dict

    def after_chunk(self, host: Host, chunk: Chunk) -> None:
        host.keep = self._keep(host)

    def _keep(self, host: Host) -> set[str]:
        spec, sched = self.spec, host.sched
        grid, busy = sched.grid, sched.busy
        axes = curve_axes(grid.columns)
        rows = grid.iloc[sched.slot_point[busy]].assign(step=sched.slot_step[busy])
        due = rows[
            (rows["step"] >= spec.train.steps) & (rows["step"] < max_steps(spec))
        ]
        if due.empty:
            return set()
        waiting = set(grid.iloc[sched.pending]["point_id"])
        waiting |= set(rows.loc[rows["step"] < spec.train.steps, "point_id"])
        history = host.history()
        keep = set()
        for _, curve in due.groupby(axes):
            members = grid[(grid[axes] == curve[axes].iloc[0]).all(axis=1)]["point_id"]
            if waiting & set(members):
                continue  # not every point of the curve has trained train.steps yet
            rows = history[history["point_id"].isin(members)]
            if rows.loc[~rows["diverged"], "sigma2"].nunique() < 4:
                continue
            est = estimate_transition(
                rows,
                spec.model.kl_dims(self.spectrum.get("dim", 0)),
                self.spectrum["lambda_max"],
                self.spectrum.get("lambda_max_eval"),
            )
            if est.train_longer is None:  # trusted, or no transition to train for
                continue
            # the range to train (it holds the points that set the kink and have not
            # relaxed, whose shortest training bounds the estimate's bias), and every
            # point near it
            lo, hi = est.train_longer.sigma2
            c = math.exp(NEAR)
            lo, hi = min(lo, est.sigma2_c / c), max(hi, est.sigma2_c * c)
            inside = curve[(curve["sigma2"] >= lo) & (curve["sigma2"] <= hi)]
            keep |= set(inside["point_id"])
        return keep


@dataclasses.dataclass(frozen=True)
class Refine:
    """``grid.sigma2.refine``: when nothing is pending or training and rounds are
    left, add the next refinement round (:func:`add_refinement`)."""

    spec: Spec
    spectrum: dict

    def after_chunk(self, host: Host, chunk: Chunk) -> None:
        refine = self.spec.grid.sigma2.refine
        if host.sched.done() and host.sched.round < refine.rounds:
            latent_dim = self.spec.model.kl_dims(self.spectrum.get("dim", 0))
            add_refinement(
                host.sched, host.history(), refine.points, latent_dim, self.spectrum
            )


def refinement(
    metrics: pd.DataFrame,
    points: int,
    latent_dim: int,
    spectrum: dict | None = None,
    max_breaks: int = 4,
) -> list[dict]:
    """Where to add sigma^2 points: for every group of the non-sigma^2 axes (seeds
    pooled), ``points`` values spread strictly inside the interval of its transition
    estimate (:func:`phasevae.analysis.estimate.interval_values`: where the collapse may
    be and may still move with training; ``spectrum`` enables the stability probe), and
    as many around each breakpoint of the seed-averaged KL fit outside that interval
    (the cascade's lower kinks, or every kink where no transition was located), over
    the union of its profile interval and the grid cell it lies in (halfway to the
    sampled neighbours); values already sampled are left out. Points that diverged
    are left out of the fit, and a group with fewer than 4 sigma^2 left gets none.

    Returns:
      one dict per group that could be fitted: its axis values (without sigma2 and
      seed), ``breakpoints`` (sigma^2), ``sigma2_c`` (the transition estimate, or
      None) and ``sigma2``, the new values (sorted; may be empty).
    """
    diverged = metrics.loc[metrics["diverged"], "point_id"].unique()
    table = settle(metrics[~metrics["point_id"].isin(diverged)], ["kl"])
    axes = curve_axes(table.columns)
    lam = spectrum or {}
    out = []
    for key, g in table.groupby(axes, sort=True):
        if g["sigma2"].nunique() < 4:
            continue  # too few points that did not diverge to fit a curve
        u, y, sd = seed_average(g, "kl", floor=KL_RESOLUTION)
        fit = fit_piecewise(u, y, sd, max_breaks)
        t = estimate_transition(
            metrics[metrics["point_id"].isin(g["point_id"])],
            latent_dim,
            lam.get("lambda_max"),
            lam.get("lambda_max_eval"),
        )
        new = set(interval_values(t, np.exp(u), points))
        span = interval(t) or (np.inf, -np.inf)
        for i, b in enumerate(fit.breakpoints):
            if span[0] <= b <= span[1]:
                continue
            lo, hi = profile_interval(u, y, fit, i, sd)
            left, right = u[u < b], u[u > b]
            cell_lo = (left.max() + b) / 2 if left.size else b
            cell_hi = (right.min() + b) / 2 if right.size else b
            for v in np.linspace(min(lo, cell_lo), max(hi, cell_hi), points):
                if np.min(np.abs(u - v)) > 1e-6:
                    new.add(round(math.exp(v), 12))
        out.append(
            {
                **dict(zip(axes, key, strict=True)),
                "breakpoints": [math.exp(b) for b in fit.breakpoints],
                "sigma2_c": t.sigma2_c,
                "sigma2": sorted(new),
            }
        )
    return out


def add_refinement(
    sched: Schedule, history: pd.DataFrame, points: int, latent_dim: int, spectrum
) -> None:
    """Add the sigma^2 values :func:`refinement` proposes, for every seed."""
    seeds = sorted(sched.grid["seed"].unique())
    rows = []
    for group in refinement(history, points, latent_dim, spectrum):
        for s2 in group["sigma2"]:
            for seed in seeds:
                values = {
                    **{a: group[a] for a in GRID_AXES if a in group},
                    "sigma2": s2,
                    "seed": int(seed),
                }
                rows.append({"point_id": point_id(values), **values})
    if not rows:
        sched.round += 1  # nothing to add: the round is done
        return
    new = pd.DataFrame(rows)[list(sched.grid.columns[:-1])]
    new = new[~new["point_id"].isin(sched.grid["point_id"])]
    sched.add_round(new)


@jax.jit
def _merge(mask, new, old):
    """Per model, ``new`` where ``mask`` else ``old`` (on the devices)."""

    def pick(a, b):
        return jnp.where(mask.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)

    return jax.tree.map(pick, new, old)


def refill(program, state, sched, refilled, warm, spec):
    """Re-initialise the refilled slots for their new points (from a finished
    neighbour's parameters with ``warm_start``)."""
    fresh = program.trainer.init(program.points_for(sched.slot_rows()))
    merged = _merge(program.place.models(refilled), fresh, state)
    if not warm_starts(spec):
        return merged
    merged = jax.tree.map(np.array, to_host(merged))  # writable copies
    params = jax.tree.leaves(merged.params)
    for slot in np.flatnonzero(refilled):
        source = _nearest_finished(sched, sched.slot_point[slot], warm)
        if source is not None:
            for a, w in zip(params, warm[source], strict=True):
                a[slot] = w
    merged = merged.replace(
        params=jax.tree.unflatten(jax.tree.structure(merged.params), params)
    )
    return program.place.models(merged)


def _nearest_finished(sched: Schedule, row: int, warm: dict) -> str | None:
    """The finished point with the same non-sigma^2 axes (seed included) nearest in
    ln sigma^2 whose parameters were kept; None if there is none."""
    g = sched.grid
    axes = [a for a in GRID_AXES if a != "sigma2" and a in g.columns]
    target = g.iloc[row]
    same = np.ones(len(g), bool)
    for a in axes:
        same &= g[a].to_numpy() == target[a]
    candidates = [i for i in sched.finished if same[i] and g.at[i, "point_id"] in warm]
    if not candidates:
        return None
    u = np.log(g["sigma2"].to_numpy())
    best = min(candidates, key=lambda i: abs(u[i] - u[row]))
    return g.at[best, "point_id"]


def rows_up_to(metrics: pd.DataFrame, sched: Schedule) -> pd.DataFrame:
    """The metrics rows the checkpoint covers: all of a finished point's, a training
    point's up to its slot's step, none of a pending point's."""
    limit = {sched.grid.at[i, "point_id"]: np.inf for i in sched.finished}
    for slot in np.flatnonzero(sched.busy):
        pid = sched.grid.at[sched.slot_point[slot], "point_id"]
        limit[pid] = sched.slot_step[slot]
    cap = metrics["point_id"].map(limit).fillna(-1)
    return metrics[metrics["step"] <= cap].reset_index(drop=True)


def pack_warm(warm: dict) -> dict[str, np.ndarray]:
    """The kept parameters as named host arrays (``warm_<point id>_<leaf>``)."""
    return {
        f"warm_{pid}_{j}": np.asarray(leaf)
        for pid, leaves in warm.items()
        for j, leaf in enumerate(leaves)
    }


def unpack_warm(extra: dict[str, np.ndarray]) -> dict:
    """{point id: its kept parameter leaves} from :func:`pack_warm`'s arrays."""
    warm: dict[str, dict[int, np.ndarray]] = {}
    for name, a in extra.items():
        if name.startswith("warm_"):
            pid, j = name[5:].rsplit("_", 1)
            warm.setdefault(pid, {})[int(j)] = a
    return {pid: [d[j] for j in sorted(d)] for pid, d in warm.items()}
