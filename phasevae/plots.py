"""Figures from a run directory's stored tables and analysis.json. No JAX, no training.

Points are the per-point values the analysis fitted (means of the last evaluations,
latent dims ranked by KL, see :mod:`phasevae.analysis`); fitted curves and boundaries
are read from analysis.json, never refitted here. Sizes suit a paper: 3.4 in per panel
column; colour maps are perceptually uniform (viridis, cividis) and stay readable in
greyscale.
"""

from __future__ import annotations

import json
import math
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules:  # a notebook keeps its inline backend
    matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import patheffects  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import (  # noqa: E402
    FixedLocator,
    FormatStrFormatter,
    NullLocator,
)

from phasevae import theory  # noqa: E402
from phasevae.analysis import GRID_AXES, rank_dims, settle  # noqa: E402
from phasevae.errors import BadInput  # noqa: E402
from phasevae.spec import Range, Spec  # noqa: E402
from phasevae.store import RunDir, RunDirError  # noqa: E402

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
        text = f"{self.name}: {self.meta['spectrum']['description']}"
        return "\n".join(textwrap.wrap(text, width))

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
        for a in self.group_axes():
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


def _transition_panels(rd: RunData, rows: int, height: float):
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
        sharex="col",
        layout="constrained",
    )
    return ts, fig, axs


def _label(t: dict, axes: list[str]) -> str:
    return ", ".join(f"{_AXIS_LABEL.get(a, a)} = {_value(t[a])}" for a in axes)


def _value(v) -> str:
    return v if isinstance(v, str) else f"{v:g}"


_AXIS_LABEL = {
    "sigma2": r"$\sigma^2$",
    "beta": r"$\beta$",
    "learning_rate": "learning rate",
    "seed": "seed",
    "kl_warmup_steps": "KL warm-up steps",
    "decoder_init_scale": "decoder init scale",
    "decoder": "decoder hidden widths",
    "skip": "skip path",
}


def kl_figure(rd: RunData) -> Figure:
    """KL vs sigma^2 with the fitted piecewise function, the transition and its
    interval, the prediction, and the fit's first and second derivatives in sigma^2
    (paper Fig. 2c / eqs 28-29)."""
    ts, fig, axs = _transition_panels(rd, rows=3, height=6.2)
    for col, t in enumerate(ts):
        ax, d1, d2 = axs[:, col]
        pts = rd.curve(t)
        by = pts.groupby("sigma2")["kl"]
        spread = by.std(ddof=1).fillna(0.0) if pts["seed"].nunique() > 1 else None
        ax.errorbar(
            by.mean().index,
            by.mean(),
            yerr=spread,
            fmt="o",
            ms=3,
            color="0.3",
            label="measured"
            + (" (mean ± sd over seeds)" if spread is not None else ""),
        )
        u, kl = np.array(t["fit"]["ln_sigma2"]), np.array(t["fit"]["kl"])
        s2 = np.exp(np.linspace(u[0], u[-1], 400))
        fitted = np.interp(np.log(s2), u, kl)
        s2c = t["sigma2_c"]
        below = s2 <= s2c if s2c else np.ones_like(s2, bool)
        ax.plot(s2[below], fitted[below], color="C0", label="fit, active")
        if s2c:
            ax.plot(s2[~below], fitted[~below], color="C1", label="fit, collapsed")
            ax.axvline(s2c, color="C3", lw=1, label=r"measured $\sigma_c^2$")
            if t["ci"]:  # none when the run has too few evaluations to bound it
                ax.axvspan(*t["ci"], color="C3", alpha=0.2, lw=0, label="95 % interval")
        if t["theory_sigma2_c"]:
            ax.axvline(
                t["theory_sigma2_c"],
                color="k",
                ls="--",
                lw=1,
                label=r"predicted $\lambda_{max}/\beta$",
            )
        ax.set_xscale("log")
        ax.set_ylabel("KL (nats)")
        title = _label(t, rd.group_axes())
        if s2c:
            lo, hi = t["ci"] or (math.nan, math.nan)
            title += "\n" + rf"$\sigma_c^2$ = {s2c:.4g} [{lo:.4g}, {hi:.4g}]"
            title += f", predicted {t['theory_sigma2_c']:.4g}"
        ax.set_title(title, fontsize=8)
        # derivatives in sigma^2 of the fit: slope_ln / s2 and -slope_ln / s2^2
        edges = np.exp(u)
        slopes = np.array(t["slopes_ln"])
        for k_, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
            seg = np.geomspace(lo, hi, 50)
            color = "C1" if s2c and lo >= s2c * (1 - 1e-9) else "C0"
            d1.plot(seg, slopes[k_] / seg, color=color)
            d2.plot(seg, -slopes[k_] / seg**2, color=color)
        for a in (d1, d2):
            if s2c:
                a.axvline(s2c, color="C3", lw=1)
            a.axhline(0.0, color="0.6", lw=0.5)
        d1.set_ylabel(r"$dKL/d\sigma^2$")
        d2.set_ylabel(r"$d^2KL/d(\sigma^2)^2$")
        d2.set_yscale("symlog", linthresh=1e-3)
        d2.set_ylim(bottom=-1e-3)
        d2.set_xlabel(r"decoder variance $\sigma^2$")
    fig.legend(
        *axs[0, 0].get_legend_handles_labels(),
        loc="outside lower center",
        ncol=2 if len(ts) == 1 else 3,
        fontsize=7,
        frameon=False,
    )
    fig.suptitle(rd.wrapped_title(45 * len(ts)), fontsize=8)
    return fig


def elbo_figure(rd: RunData) -> Figure:
    """The trained objective's ELBO vs sigma^2 against the collapse line and the
    linear-VAE optimum, and for Gaussian synthetic data the exact E[log p(x)]
    (paper Fig. 2a)."""
    fig, ax = plt.subplots(figsize=(COLUMN_IN * 1.4, 3.0), layout="constrained")
    ev = np.array(rd.meta["spectrum"]["eigenvalues"])
    pts = rd.points[~rd.points["diverged"]]
    s2 = np.geomspace(pts["sigma2"].min(), pts["sigma2"].max(), 300)
    betas = sorted(pts["beta"].unique())
    for i, beta in enumerate(betas):
        g = pts[pts["beta"] == beta].groupby("sigma2")["elbo"].mean()
        ax.plot(
            g.index, g, "o", ms=3, color=f"C{i}", label=rf"trained, $\beta$={beta:g}"
        )
        opt = -theory.optimal_loss(ev, s2, beta, rd.k)
        ax.plot(
            s2, opt, color=f"C{i}", lw=1, label=rf"linear-VAE optimum, $\beta$={beta:g}"
        )
    collapse = -theory.collapse_loss(ev.sum(), ev.size, s2)
    ax.plot(s2, collapse, "k--", lw=1, label="collapse line (eq. 24)")
    d = rd.spec.data
    if d.source == "synthetic" and d.distribution == "gaussian":
        loglik = (
            -0.5 * ev.size * math.log(2 * math.pi * math.e) - 0.5 * np.log(ev).sum()
        )
        ax.axhline(loglik, color="0.4", ls=":", label=r"exact $E[\log p(x)]$")
    ax.set_xscale("log")
    ax.set_xlabel(r"decoder variance $\sigma^2$")
    ax.set_ylabel(r"ELBO $= -(\mathrm{recon} + \beta\,\mathrm{KL})$ (nats)")
    ax.legend(fontsize=6, frameon=False, loc="lower left")
    ax.set_title(rd.title, fontsize=8)
    return fig


def variance_figure(rd: RunData) -> Figure:
    """Mean encoder variance of each latent dim (ranked by KL) vs sigma^2: each
    reaches 1 at its own threshold, marked (paper Fig. 2b)."""
    ts, fig, axs = _transition_panels(rd, rows=1, height=2.8)
    for ax, t in zip(axs[0], ts, strict=True):
        pts = rd.curve(t)
        for r in range(rd.k):
            g = pts.groupby("sigma2")[f"var_rank_{r}"].mean()
            ax.plot(g.index, g, "o-", ms=3, lw=1, color=f"C{r}", label=f"dim {r + 1}")
            ax.axvline(t["theory_thresholds"][r], color=f"C{r}", ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.set_ylim(-0.03, 1.1)
        ax.set_xlabel(r"decoder variance $\sigma^2$ (dashed: $\lambda_i/\beta$)")
        ax.set_ylabel(r"mean encoder variance $s_j^2$")
        ax.set_title(_label(t, rd.group_axes()), fontsize=9)
    axs[0, 0].legend(fontsize=7, frameon=False, title="by KL rank", title_fontsize=7)
    fig.suptitle(rd.wrapped_title(45 * len(ts)), fontsize=8)
    return fig


def phase_diagram(rd: RunData, x: str = "sigma2", y: str = "beta") -> Figure:
    """Heat map of KL over two grid axes (others averaged), unsettled points marked;
    over (sigma^2, beta) also the measured boundary with its interval, the predicted
    beta sigma^2 = lambda_max and the per-dim lines beta sigma^2 = lambda_i."""
    grid_axes = [a for a in GRID_AXES if a in rd.points]
    for a in (x, y):
        if a not in grid_axes:
            raise PlotError(
                f"--x/--y: {a!r} is not a grid axis; choose from {grid_axes}"
            )
        if rd.points[a].nunique() < 2:
            raise PlotError(f"--x/--y: the grid has a single {a} value; nothing to map")
    if x == y:
        raise PlotError("--x and --y must be different axes")
    pts = rd.points[~rd.points["diverged"]]
    names = {}  # a static axis ("decoder", "skip") is drawn at positions 0, 1, ...
    for a in (x, y):
        if isinstance(pts[a].iloc[0], str):
            names[a] = list(dict.fromkeys(rd.points[a]))
            pts = pts.assign(**{a: pts[a].map({n: i for i, n in enumerate(names[a])})})
    table = pts.pivot_table(index=y, columns=x, values="kl", aggfunc="mean")
    xs, ys = table.columns.to_numpy(float), table.index.to_numpy(float)
    fig, ax = plt.subplots(figsize=(COLUMN_IN * 1.3, 3.3), layout="constrained")
    x_edges, y_edges = _edges(xs, _is_log(rd, x)), _edges(ys, _is_log(rd, y))
    mesh = ax.pcolormesh(
        x_edges,
        y_edges,
        np.maximum(table.to_numpy(), KL_FLOOR),
        cmap="viridis",
        norm=LogNorm(vmin=KL_FLOOR, vmax=max(table.to_numpy().max(), 10 * KL_FLOOR)),
    )
    fig.colorbar(mesh, ax=ax, label="KL (nats)")
    unsettled = pts[~pts["settled"]]
    if len(unsettled):
        ax.plot(unsettled[x], unsettled[y], "x", color="w", ms=4, label="not settled")
    if {x, y} == {"sigma2", "beta"}:
        _boundaries(ax, rd, swap=x == "beta", ys=ys if x == "sigma2" else xs)
    for a, setter in ((x, ax.set_xscale), (y, ax.set_yscale)):
        if _is_log(rd, a):
            setter("log")
    ax.set_xlim(x_edges[0], x_edges[-1])
    ax.set_ylim(y_edges[0], y_edges[-1])
    ax.set_xlabel(_AXIS_LABEL.get(x, x))
    ax.set_ylabel(_AXIS_LABEL.get(y, y))
    for a, axis in ((x, ax.xaxis), (y, ax.yaxis)):
        if a in names:
            axis.set_major_locator(FixedLocator(range(len(names[a]))))
            axis.set_ticklabels(names[a])
            axis.set_minor_locator(NullLocator())
        elif not isinstance(getattr(rd.spec.grid, a, None), Range) and _is_log(rd, a):
            values = table.columns if axis is ax.xaxis else table.index
            axis.set_major_locator(FixedLocator(np.asarray(values, float)))
            axis.set_major_formatter(FormatStrFormatter("%g"))
            axis.set_minor_locator(NullLocator())
    if ax.get_legend_handles_labels()[0]:  # nothing unsettled and no boundary: none
        fig.legend(loc="outside lower center", ncol=2, fontsize=6, frameon=False)
    ax.set_title(rd.title, fontsize=7)
    return fig


def _boundaries(ax, rd: RunData, swap: bool, ys: np.ndarray) -> None:
    """Draw on a (sigma2, beta) map; ``swap`` when beta is on the x axis."""
    ev = rd.analysis["spectrum"]["eigenvalues"]
    betas = np.geomspace(ys.min(), ys.max(), 100)
    found = [t for t in rd.analysis["transitions"] if t["sigma2_c"] is not None]
    outline = [patheffects.withStroke(linewidth=2.4, foreground="k")]

    def xy(s2, b):
        return (b, s2) if swap else (s2, b)

    ax.plot(
        *xy(ev[0] / betas, betas),
        "w--",
        lw=1.2,
        path_effects=outline,
        label=r"predicted $\beta\sigma^2=\lambda_{max}$",
    )
    for i, lam in enumerate(ev[1 : rd.k]):
        ax.plot(
            *xy(lam / betas, betas),
            "w:",
            lw=1,
            path_effects=outline,
            label=r"$\beta\sigma^2=\lambda_i$, $i > 1$" if i == 0 else None,
        )
    if found:
        s2c = np.array([t["sigma2_c"] for t in found])
        b = np.array([t["beta"] for t in found])
        err = np.array(
            [
                [s - (t["ci"] or [s])[0], (t["ci"] or [s, s])[1] - s]
                for s, t in zip(s2c, found, strict=True)
            ]
        ).T
        kw = {"yerr": err} if swap else {"xerr": err}
        ax.errorbar(
            *xy(s2c, b),
            **kw,
            fmt="o",
            color="C3",
            ms=4,
            mec="w",
            label="measured boundary",
            gid="measured-boundary",
        )


def scaling_figure(rd: RunData) -> Figure:
    """KL against theta = beta sigma^2 for every beta: one curve if scaling holds."""
    fig, ax = plt.subplots(figsize=(COLUMN_IN, 2.8), layout="constrained")
    pts = rd.points[~rd.points["diverged"]]
    ev = rd.analysis["spectrum"]["eigenvalues"]
    for i, (beta, g) in enumerate(pts.groupby("beta")):
        m = g.groupby("sigma2")["kl"].mean()
        ax.plot(m.index * beta, m, "o", ms=3, color=f"C{i}", label=rf"$\beta$={beta:g}")
    theta = np.geomspace(
        (pts["sigma2"] * pts["beta"]).min(), (pts["sigma2"] * pts["beta"]).max(), 300
    )
    ax.plot(
        theta,
        theory.kl_per_dim(ev, theta, 1.0, rd.k).sum(-1),
        "k-",
        lw=1,
        label="linear-VAE optimum",
    )
    ax.axvline(ev[0], color="k", ls="--", lw=1, label=r"$\lambda_{max}$")
    s = rd.analysis.get("scaling")
    if s and s.get("rms_spread") is not None:
        ax.text(
            0.97,
            0.42,
            f"RMS spread {s['rms_spread']:.3g} nats",
            transform=ax.transAxes,
            ha="right",
            fontsize=7,
        )
    ax.set_xscale("log")
    ax.set_xlabel(r"$\theta = \beta\sigma^2$")
    ax.set_ylabel("KL (nats)")
    ax.legend(fontsize=7, frameon=False, loc="upper right")
    ax.set_title(rd.wrapped_title(55), fontsize=7)
    return fig


def training_figure(rd: RunData, per_side: int = 3) -> Figure:
    """KL against training step for grid points on both sides of the transition of
    the middle curve: near it, KL relaxes slowest (critical slowing down)."""
    found = [t for t in rd.analysis["transitions"] if t["sigma2_c"] is not None]
    t = (found or rd.analysis["transitions"])[
        len(found or rd.analysis["transitions"]) // 2
    ]
    center = t["sigma2_c"] or t["theory_sigma2_c"]
    pts = rd.curve(t)
    values = np.sort(pts["sigma2"].unique())
    below = values[values < center][-per_side:]
    above = values[values >= center][:per_side]
    chosen = np.concatenate([below, above])
    seed = pts["seed"].min()
    ids = pts[(pts["seed"] == seed) & pts["sigma2"].isin(chosen)].set_index("sigma2")[
        "point_id"
    ]
    fig, ax = plt.subplots(figsize=(COLUMN_IN * 1.3, 2.8), layout="constrained")
    cmap = plt.get_cmap("cividis")
    for i, s2 in enumerate(chosen):
        h = rd.metrics[rd.metrics["point_id"] == ids[s2]].sort_values("step")
        side = "below" if s2 < center else "above"
        ax.plot(
            h["step"],
            np.maximum(h["kl"], KL_FLOOR),
            "o-",
            ms=2,
            lw=1,
            color=cmap(i / max(len(chosen) - 1, 1)),
            label=rf"$\sigma^2$={s2:.3g} ({side})",
        )
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("KL (nats)")
    ax.legend(fontsize=6, frameon=False, ncol=2)
    ax.set_title(
        f"{rd.name}: {_label(t, rd.group_axes())}, seed {seed}; "
        rf"$\sigma_c^2$ = {center:.3g}",
        fontsize=7,
    )
    return fig


def components_figure(rd: RunData, count: int = 8) -> Figure:
    """The leading principal components of image data as images, with their
    eigenvalues and the collapse threshold each sets (paper Fig. 3)."""
    spectrum = rd.meta["spectrum"]
    comps = np.array(spectrum["components"])[:count]
    h, w = spectrum["image_shape"]
    ev = spectrum["eigenvalues"]
    cols = min(4, len(comps))
    rows = math.ceil(len(comps) / cols)
    fig, axs = plt.subplots(
        rows,
        cols,
        figsize=(COLUMN_IN * 1.4, 1.1 * rows + 0.6),
        squeeze=False,
        layout="constrained",
    )
    for i, ax in enumerate(axs.flat):
        ax.set_axis_off()
        if i < len(comps):
            img = comps[i][: h * w].reshape(h, w)  # colour data: the first channel
            lim = np.abs(img).max()
            ax.imshow(img, cmap="gray", vmin=-lim, vmax=lim)
            ax.set_title(rf"$\lambda_{{{i + 1}}}$ = {ev[i]:.3g}", fontsize=7)
    fig.suptitle(f"{rd.title}\nleading principal components", fontsize=7)
    return fig


REMEDY_AXES = (
    "learning_rate",
    "kl_warmup_steps",
    "decoder_init_scale",
    "decoder",  # static axes: categorical, drawn at positions 0, 1, ...
    "skip",
)


def remedy_figure(rd: RunData, axis: str) -> Figure:
    """theta_c = beta sigma_c^2 with its 95 % interval against a remedy's strength,
    one line per value of the other axes, and the prediction lambda_max: does the
    remedy move the boundary? Strengths without a transition in the grid are marked
    at the top."""
    lam = rd.analysis["spectrum"]["lambda_max"]
    ts = pd.DataFrame(rd.analysis["transitions"])
    others = [a for a in rd.group_axes() if a != axis and rd.points[a].nunique() > 1]
    fig, ax = plt.subplots(figsize=(COLUMN_IN, 2.9), layout="constrained")
    categorical = isinstance(ts[axis].iloc[0], str)  # a static axis: "decoder"
    names = list(dict.fromkeys(ts[axis])) if categorical else []
    positions = {n: i for i, n in enumerate(names)}
    groups = ts.groupby(others) if others else [((), ts)]
    for i, (key, g) in enumerate(groups):
        g = g.sort_values(axis)
        if categorical:
            g = g.assign(**{axis: g[axis].map(positions)})
        found = g[g["sigma2_c"].notna()]
        theta = found["sigma2_c"] * found["beta"]
        pairs = zip(found["ci"], found["sigma2_c"], strict=True)
        ci = [c if c else [s, s] for c, s in pairs]
        lo = np.array([c[0] for c in ci]) * found["beta"]
        hi = np.array([c[1] for c in ci]) * found["beta"]
        key = key if isinstance(key, tuple) else (key,)
        values = dict(zip(others, key, strict=True))
        ax.errorbar(
            found[axis],
            theta,
            yerr=[theta - lo, hi - theta],
            fmt="o-",
            ms=3,
            color=f"C{i}",
            label=_label(values, others) or "measured",
        )
        missing = g[g["sigma2_c"].isna()]
        if len(missing):
            top = lam * 1.5
            ax.plot(missing[axis], [top] * len(missing), "^", color=f"C{i}")
    ax.axhline(lam, color="k", ls="--", lw=1, label=r"predicted $\lambda_{max}$")
    if categorical:
        ax.set_xticks(range(len(names)), names)
    elif _is_log(rd, axis):
        ax.set_xscale("log")
    ax.set_xlabel(_AXIS_LABEL.get(axis, axis))
    ax.set_ylabel(r"$\theta_c = \beta\sigma_c^2$")
    fig.legend(loc="outside lower center", ncol=2, fontsize=6, frameon=False)
    ax.set_title(rd.title, fontsize=7)
    return fig


def hysteresis_figure(rd: RunData) -> Figure:
    """KL of the sweep up sigma^2 and of the sweep down (each point warm-started from
    the one before it), the area between them and where they part."""
    hs = rd.analysis["hysteresis"]
    fig, axs = plt.subplots(
        1,
        len(hs),
        figsize=(COLUMN_IN * max(1, len(hs)), 2.9),
        squeeze=False,
        layout="constrained",
    )
    axes = [
        a for a in rd.group_axes() if a != "direction" and rd.points[a].nunique() > 1
    ]
    for ax, h in zip(axs[0], hs, strict=True):
        s2 = np.array(h["sigma2"])
        ax.plot(s2, h["kl_up"], ">-", ms=3, color="C0", label=r"up $\sigma^2$")
        ax.plot(s2, h["kl_down"], "<-", ms=3, color="C1", label=r"down $\sigma^2$")
        ax.fill_between(s2, h["kl_up"], h["kl_down"], color="0.7", alpha=0.5, lw=0)
        if h["parted"]:
            ax.axvspan(*h["parted"], color="C3", alpha=0.12, lw=0, label="parted")
        ax.set_xscale("log")
        ax.set_xlabel(_AXIS_LABEL["sigma2"])
        ax.set_ylabel("KL (nats)")
        ax.set_title(
            f"{_label(h, axes)}\narea {h['area']:.3g} nats, "
            f"largest gap {h['max_gap']:.3g}",
            fontsize=7,
        )
    fig.legend(
        *axs[0, 0].get_legend_handles_labels(),
        loc="outside lower center",
        ncol=3,
        fontsize=6,
        frameon=False,
    )
    return fig


def learned_variance_figure(rd: RunData, beta: float | None = None) -> Figure:
    """Training curves of the learned decoder variance and of the KL, one colour per
    starting sigma^2 (first seed, one beta): the self-deafening loop is sigma^2
    growing while KL falls."""
    m = rd.metrics[~rd.metrics["diverged"]]
    beta = m["beta"].min() if beta is None else beta
    m = m[(m["beta"] == beta) & (m["seed"] == m["seed"].min())]
    starts = np.sort(m["sigma2"].unique())
    colours = plt.cm.viridis(np.linspace(0, 1, len(starts)))
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(COLUMN_IN * 2, 2.9), layout="constrained"
    )
    for s2, c in zip(starts, colours, strict=True):
        h = m[m["sigma2"] == s2].sort_values("step")
        left.plot(h["step"], h["decoder_sigma2"], color=c, lw=1)
        right.plot(h["step"], np.maximum(h["kl"], KL_FLOOR), color=c, lw=1)
    left.axhline(
        rd.analysis["spectrum"]["lambda_max"] / beta,
        color="k",
        ls="--",
        lw=1,
        label=r"$\lambda_{max}/\beta$",
    )
    left.set_yscale("log")
    right.set_yscale("log")
    for ax in (left, right):
        ax.set_xlabel("training step")
    left.set_ylabel(r"learned decoder $\sigma^2$")
    right.set_ylabel("KL (nats)")
    left.legend(fontsize=6, frameon=False)
    sm = plt.cm.ScalarMappable(
        cmap="viridis", norm=LogNorm(vmin=starts.min(), vmax=starts.max())
    )
    fig.colorbar(sm, ax=right, label=r"starting $\sigma^2$")
    fig.suptitle(f"{rd.title} (beta = {beta:g})", fontsize=7)
    return fig


def figures(
    run_dir: str | Path, x: str = "sigma2", y: str = "beta"
) -> dict[str, Callable[[], Figure]]:
    """Every figure a run has, as {name: a function that draws it}."""
    rd = load(run_dir)
    out = {
        "kl_vs_sigma2": lambda: kl_figure(rd),
        "elbo_vs_sigma2": lambda: elbo_figure(rd),
        "latent_variance": lambda: variance_figure(rd),
        "scaling": lambda: scaling_figure(rd),
        "training_curves": lambda: training_figure(rd),
    }
    if rd.points["beta"].nunique() > 1 or (x, y) != ("sigma2", "beta"):
        out["phase_diagram"] = lambda: phase_diagram(rd, x, y)
    if "components" in rd.meta["spectrum"]:
        out["components"] = lambda: components_figure(rd)
    for axis in REMEDY_AXES:
        if axis in rd.points and rd.points[axis].nunique() > 1:
            out[f"remedy_{axis}"] = lambda a=axis: remedy_figure(rd, a)
            out[f"phase_diagram_{axis}"] = lambda a=axis: phase_diagram(rd, "sigma2", a)
    if rd.analysis.get("hysteresis"):
        out["hysteresis"] = lambda: hysteresis_figure(rd)
    if "decoder_sigma2" in rd.metrics and rd.spec.model.sigma2 == "learned":
        out["learned_variance"] = lambda: learned_variance_figure(rd)
    return out


def write_figures(
    run_dir: str | Path, fmt: str = "png", x: str = "sigma2", y: str = "beta"
) -> dict[str, Path]:
    """Write every figure of a run to RUN_DIR/figures/ (atomically); returns
    {name: path}."""
    if fmt not in ("png", "pdf", "svg"):
        raise PlotError(f"--format {fmt!r}: choose png, pdf or svg")
    makers = figures(run_dir, x, y)
    out = Path(run_dir) / "figures"
    out.mkdir(exist_ok=True)
    paths = {}
    for name, make in makers.items():
        fig = make()
        path = out / f"{name}.{fmt}"
        tmp = path.with_name(f".{path.name}.tmp.{fmt}")
        fig.savefig(tmp, dpi=150)
        plt.close(fig)
        tmp.replace(path)
        paths[name] = path
    return paths


def _is_log(rd: RunData, axis: str) -> bool:
    """A range axis uses its own scale; a list is log when positive and spanning at
    least a factor 3."""
    spec_axis = getattr(rd.spec.grid, axis, None)
    if isinstance(spec_axis, Range):
        return spec_axis.scale == "log"
    if isinstance(rd.points[axis].iloc[0], str):
        return False
    values = rd.points[axis].to_numpy(float)
    return axis != "seed" and values.min() > 0 and values.max() >= 3 * values.min()


def _edges(centers: np.ndarray, log: bool) -> np.ndarray:
    """Cell edges around sorted centres (geometric midpoints on a log axis)."""
    c = np.log(centers) if log else centers.astype(float)
    if len(c) == 1:
        e = np.array([c[0] - 0.5, c[0] + 0.5])
    else:
        mid = (c[1:] + c[:-1]) / 2
        e = np.concatenate([[2 * c[0] - mid[0]], mid, [2 * c[-1] - mid[-1]]])
    return np.exp(e) if log else e
