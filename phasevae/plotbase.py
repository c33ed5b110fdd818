"""What every figure reads: a finished, analysed run directory (:class:`RunData`),
and what the figure modules share (panel layout, axis labels, grid edges). No JAX, no
training.

Points are the per-point values the analysis fitted (means of the last evaluations,
latent dims ranked by KL, see :mod:`phasevae.analysis`); fitted curves and boundaries
are read from analysis.json, never refitted here. Sizes suit a paper: 3.4 in per panel
column. The matplotlib backend is left to the user (the command line picks Agg).
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from phasevae.analysis import GRID_AXES, rank_dims, settle
from phasevae.errors import BadInput
from phasevae.spec import LATER_AXES, Range, Spec
from phasevae.store import RunDir, RunDirError

COLUMN_IN = 3.4  # width of one paper column, inches
MAX_PANELS = 4  # transitions drawn side by side; more are subsampled evenly
KL_FLOOR = 1e-4  # nats: where log axes bottom out


class PlotError(BadInput):
    """A plot request that cannot be drawn from the run directory as it is."""


@dataclass
class RunData:
    """What the figures read: the run's tables, per-point values and analysis."""

    name: str
    spec: Spec
    meta: dict
    metrics: pd.DataFrame
    points: pd.DataFrame  # one row per point: the values the analysis fitted
    analysis: dict

    @property
    def title(self) -> str:
        return self.wrapped_title(70)

    def wrapped_title(self, width: int) -> str:
        """The run and its data, then the axes every transition shares, remedies at
        their defaults left out (panel titles name only what varies between them,
        :meth:`varying_axes`)."""
        text = f"{self.name}: {self.meta['spectrum']['description']}"
        first = self.analysis["transitions"][0]
        shared = [a for a in self.group_axes() if a in first]
        shared = [
            a
            for a in shared
            if a not in self.varying_axes() and first[a] != LATER_AXES.get(a)
        ]
        lines = textwrap.wrap(text, width)
        if shared:
            lines += textwrap.wrap(
                label(self.analysis["transitions"][0], shared), width
            )
        return "\n".join(lines)

    def varying_axes(self) -> list[str]:
        """The axes (but sigma^2 and seed) whose value differs between transitions."""
        ts = self.analysis["transitions"]
        return [a for a in self.group_axes() if len({str(t.get(a)) for t in ts}) > 1]

    @property
    def k(self) -> int:
        return self.spec.model.latent_dim

    def group_axes(self) -> list[str]:
        return [
            a for a in GRID_AXES if a in self.points and a not in ("sigma2", "seed")
        ]

    def curve(self, transition: dict) -> pd.DataFrame:
        """Points (all seeds) of one transition's curve, diverged ones left out."""
        mask = ~self.points["diverged"]
        # an analysis.json older than an axis lacks it: its rows are at the default
        for a in (a for a in self.group_axes() if a in transition):
            if isinstance(transition[a], str):
                mask &= self.points[a] == transition[a]
            else:
                mask &= np.isclose(self.points[a], transition[a])
        return self.points[mask].sort_values("sigma2")


def load(run_dir: str | Path) -> RunData:
    """Read a finished, analysed run directory.

    Raises:
      PlotError / RunDirError: missing directory, no metrics or no analysis.json.
    """
    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise RunDirError(f"run directory {run.path} does not exist")
    path = run.path / "analysis.json"
    if not path.exists():
        raise PlotError(
            f"{run.path} has no analysis.json; run `phasevae analyze {run.path}` first"
        )
    spec, meta, metrics = run.spec(), run.meta(), run.metrics()
    analysis = json.loads(path.read_text())
    k = spec.model.latent_dim
    columns = ["kl", *(f"kl_dim_{j}" for j in range(k)), "mi", "elbo"]
    columns += [f"var_dim_{j}" for j in range(k)]
    points = rank_dims(settle(metrics, columns), k)
    kl = points[[f"kl_dim_{j}" for j in range(k)]].to_numpy()
    var = points[[f"var_dim_{j}" for j in range(k)]].to_numpy()
    ranked = np.take_along_axis(var, np.argsort(-kl, axis=1), axis=1)
    for r in range(k):
        points[f"var_rank_{r}"] = ranked[:, r]
    return RunData(run.path.name, spec, meta, metrics, points, analysis)


def transition_panels(rd: RunData, rows: int, height: float, sharex="col"):
    """One column per transition (at most MAX_PANELS, evenly chosen)."""
    ts = rd.analysis["transitions"]
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


def label(t: dict, axes: list[str]) -> str:
    return ", ".join(f"{AXIS_LABEL.get(a, a)} = {value(t[a])}" for a in axes)


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
