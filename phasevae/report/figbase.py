"""What every figure reads: a finished, analysed run directory (:class:`RunData`),
and what the figure modules share (panel layout, axis labels, grid edges). No JAX, no
training.

Points are the per-point values the analysis fitted (means of the last evaluations,
latent dims ranked by KL, see :mod:`phasevae.analysis.curves`); fitted curves and
boundaries are read from analysis.json, never refitted here. Sizes suit a paper: 3.4 in
per panel column. The matplotlib backend is left to the user (the command line picks
Agg).
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from phasevae.analysis.constants import GAIN, curve_axes
from phasevae.analysis.curves import rank_dims, settle
from phasevae.errors import BadInput
from phasevae.spec import LATER_AXES, Range, Spec
from phasevae.store import RunDir
from phasevae.store.records import Analysis, Transition
from phasevae.store.runmeta import RunMeta

COLUMN_IN = 3.4  # width of one paper column, inches
MAX_PANELS = 4  # transitions drawn side by side; more are subsampled evenly


class PlotError(BadInput):
    """A plot request that cannot be drawn from the run directory as it is."""


@dataclass
class RunData:
    """What the figures read: the run's tables, per-point values and analysis."""

    name: str
    spec: Spec
    meta: RunMeta
    metrics: pd.DataFrame
    points: pd.DataFrame  # one row per point: the values the analysis fitted
    analysis: Analysis

    @property
    def title(self) -> str:
        return self.wrapped_title(70)

    def wrapped_title(self, width: int) -> str:
        """The run and its data, then the axes every transition shares, remedies at
        their defaults left out (panel titles name only what varies between them,
        :meth:`varying_axes`)."""
        text = f"{self.name}: {self.meta.spectrum['description']}"
        first = self.analysis.transitions[0].curve
        shared = [a for a in self.group_axes() if a in first]
        shared = [
            a
            for a in shared
            if a not in self.varying_axes() and first[a] != LATER_AXES.get(a)
        ]
        lines = textwrap.wrap(text, width)
        if shared:
            lines += textwrap.wrap(label(first, shared), width)
        return "\n".join(lines)

    def varying_axes(self) -> list[str]:
        """The axes (but sigma^2 and seed) whose value differs between transitions."""
        ts = self.analysis.transitions
        return [
            a for a in self.group_axes() if len({str(t.curve.get(a)) for t in ts}) > 1
        ]

    @property
    def k(self) -> int:
        return self.spec.model.kl_dims(self.meta.spectrum.get("dim", 0))

    def group_axes(self) -> list[str]:
        return curve_axes(self.points)

    def curve(self, transition: Transition) -> pd.DataFrame:
        """Points (all seeds) of one transition's curve, diverged ones left out."""
        mask = ~self.points["diverged"]
        # an analysis.json older than an axis lacks it: its rows are at the default
        values = transition.curve
        for a in (a for a in self.group_axes() if a in values):
            if isinstance(values[a], str):
                mask &= self.points[a] == values[a]
            else:
                mask &= np.isclose(self.points[a], values[a])
        return self.points[mask].sort_values("sigma2")


def load(run_dir: str | Path) -> RunData:
    """Read a finished, analysed run directory.

    Raises:
      PlotError / RunDirError: missing directory, no metrics, no analysis.json or
        one that is not what ``phasevae analyze`` writes, or no transition fitted.
    """
    run = RunDir(run_dir).existing()
    analysis = read_analysis(run)
    spec, meta, metrics = run.spec(), run.meta(), run.metrics()
    k = spec.model.kl_dims(meta.spectrum.get("dim", 0))
    columns = ["kl", *(f"kl_dim_{j}" for j in range(k)), "mi", "elbo"]
    columns += [f"var_dim_{j}" for j in range(k)]
    if GAIN in metrics:  # runs made before the decoder's gains have none
        columns += [f"decoder_gain_{j}" for j in range(k)]
    # a ladder's layers' KL, a VRNN's steps' information
    columns += [c for c in metrics if c.startswith(("kl_layer_", "mi_step_"))]
    points = rank_dims(settle(metrics, columns), k)
    kl = points[[f"kl_dim_{j}" for j in range(k)]].to_numpy()
    var = points[[f"var_dim_{j}" for j in range(k)]].to_numpy()
    ranked = np.take_along_axis(var, np.argsort(-kl, axis=1), axis=1)
    for r in range(k):
        points[f"var_rank_{r}"] = ranked[:, r]
    return RunData(run.path.name, spec, meta, metrics, points, analysis)


def read_analysis(run: RunDir) -> Analysis:
    """The run's analysis (:meth:`RunDir.analysis`: its own, current, undamaged and
    parsed): one without any fitted transition is a PlotError that says what to do."""
    analysis = run.analysis()
    if not analysis.transitions:
        reasons = "; ".join(str(c.get("reason")) for c in analysis.skipped[:3])
        raise PlotError(f"no curve of {run.path} has a fitted transition ({reasons})")
    return analysis


def transition_panels(rd: RunData, rows: int, height: float, sharex="col"):
    """One column per transition (at most MAX_PANELS, evenly chosen)."""
    ts = rd.analysis.transitions
    if len(ts) > MAX_PANELS:
        idx = np.linspace(0, len(ts) - 1, MAX_PANELS).round().astype(int)
        ts = [ts[i] for i in idx]
    fig, axs = plt.subplots(
        rows,
        len(ts),
        figsize=(COLUMN_IN * len(ts), height),
        squeeze=False,
        sharex=sharex,
        layout="constrained",
    )
    return ts, fig, axs


def label(values: Mapping, axes: list[str]) -> str:
    """The values of ``axes`` in ``values`` (a curve's, a hysteresis pair's)."""
    return ", ".join(f"{AXIS_LABEL.get(a, a)} = {value(values[a])}" for a in axes)


def value(v) -> str:
    return v if isinstance(v, str) else f"{v:.4g}"


AXIS_LABEL = {
    "sigma2": r"$\sigma^2$",
    "beta": r"$\beta$",
    "learning_rate": "learning rate",
    "seed": "seed",
    "kl_warmup_steps": "KL warm-up steps",
    "decoder_init_scale": "decoder init scale",
    "free_bits": "free bits (nats per dim)",
    "kl_cycle_steps": "KL cycle period (steps)",
    "kl_cycle_ramp": "KL cycle ramp fraction",
    "mi_weight": "mutual-information weight",
    "decoder": "decoder hidden widths",
    "skip": "skip path",
    "context": "head's reach k (predecessors, mask radius or GRU units)",
}


REMEDY_AXES = (
    "learning_rate",
    *LATER_AXES,
    "decoder",  # static axes: categorical, drawn at positions 0, 1, ...
    "skip",
)


def is_log(rd: RunData, axis: str) -> bool:
    """A range axis uses its own scale; a list is log when positive and spanning at
    least a factor 3."""
    spec_axis = getattr(rd.spec.grid, axis, None)
    if isinstance(spec_axis, Range):
        return spec_axis.scale == "log"
    if isinstance(rd.points[axis].iloc[0], str):
        return False
    values = rd.points[axis].to_numpy(float)
    return axis != "seed" and values.min() > 0 and values.max() >= 3 * values.min()


def edges(centers: np.ndarray, log: bool) -> np.ndarray:
    """Cell edges around sorted centres (geometric midpoints on a log axis)."""
    c = np.log(centers) if log else centers.astype(float)
    if len(c) == 1:
        e = np.array([c[0] - 0.5, c[0] + 0.5])
    else:
        mid = (c[1:] + c[:-1]) / 2
        e = np.concatenate([[2 * c[0] - mid[0]], mid, [2 * c[-1] - mid[-1]]])
    return np.exp(e) if log else e


def drawn_texts(fig) -> list:
    """The figure's visible, non-empty texts, tick labels only of ticks in view."""
    from matplotlib.text import Text

    texts = fig.findobj(Text)  # first: listing an axis' children may make ticks
    ticks = {}
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            for tick in axis.majorTicks + axis.minorTicks:
                slack = 1e-9 * abs(hi - lo)
                shown = ax.axison and lo - slack <= tick.get_loc() <= hi + slack
                ticks.update({id(tick.label1): shown, id(tick.label2): shown})
    return [
        t
        for t in texts
        if t.get_visible() and t.get_text().strip() and ticks.get(id(t), True)
    ]


def fit_texts(fig):
    """``fig`` with every text that would cross the figure's left or right edge
    (a long data description in a title) wrapped to fit, so that no title or label
    is clipped at any size."""
    renderer = fig.canvas.get_renderer()
    width = fig.bbox.width
    for _ in range(4):
        fig.canvas.draw()
        wide = [
            t
            for t in drawn_texts(fig)
            if " " in t.get_text()
            and ((e := t.get_window_extent(renderer)).x0 < 0 or e.x1 > width)
        ]
        if not wide:
            break
        for t in wide:
            e = t.get_window_extent(renderer)
            room = 0.96 * min(e.x0 + e.x1, 2 * width - e.x0 - e.x1)  # centred
            lines = t.get_text().split("\n")
            chars = max(12, int(max(map(len, lines)) * min(room, width) / e.width))
            t.set_text("\n".join(_wrap(line, chars) for line in lines))
    return fig


def _wrap(line: str, chars: int) -> str:
    """``line`` wrapped at ``chars``, never inside a $math$ span."""
    parts = line.split("$")  # odd parts are math: their spaces do not break
    kept = "$".join(
        p.replace(" ", "\u00a0") if i % 2 else p for i, p in enumerate(parts)
    )
    return textwrap.fill(kept, chars).replace("\u00a0", " ")
