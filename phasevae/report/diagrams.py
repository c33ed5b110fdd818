"""Figures over two axes: the phase diagram with its measured and predicted
boundaries, the beta * sigma^2 scaling collapse, a remedy's effect on theta_c, and
hysteresis loops. No JAX, no training.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib import patheffects
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import (
    FixedLocator,
    FormatStrFormatter,
    NullLocator,
)

from phasevae.analysis import theory
from phasevae.analysis.constants import GRID_AXES, KL_AXIS_MIN
from phasevae.analysis.curves import locates_collapse
from phasevae.analysis.estimate import HELD, NONE
from phasevae.report.figbase import (
    AXIS_LABEL,
    COLUMN_IN,
    PlotError,
    RunData,
    edges,
    is_log,
    label,
)
from phasevae.spec import Range

FEW_VALUES = 12  # a linear axis listed with at most this many values: a tick at each


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
    x_edges, y_edges = edges(xs, is_log(rd, x)), edges(ys, is_log(rd, y))
    mesh = ax.pcolormesh(
        x_edges,
        y_edges,
        np.maximum(table.to_numpy(), KL_AXIS_MIN),
        cmap="viridis",
        norm=LogNorm(
            vmin=KL_AXIS_MIN, vmax=max(table.to_numpy().max(), 10 * KL_AXIS_MIN)
        ),
    )
    fig.colorbar(mesh, ax=ax, label="KL (nats)")
    unsettled = pts[~pts["settled"]]
    if len(unsettled):
        ax.plot(
            unsettled[x],
            unsettled[y],
            "x",
            color="w",
            ms=4,
            mew=1.2,
            path_effects=[patheffects.withStroke(linewidth=2.4, foreground="k")],
            label="not settled (KL still changing)",
        )
    if {x, y} == {"sigma2", "beta"}:
        _boundaries(ax, rd, swap=x == "beta", ys=ys if x == "sigma2" else xs)
    elif "sigma2" in (x, y) and not names:
        _curve_boundaries(ax, rd, other=y if x == "sigma2" else x, swap=x != "sigma2")
    for a, setter in ((x, ax.set_xscale), (y, ax.set_yscale)):
        if is_log(rd, a):
            setter("log")
    ax.set_xlim(x_edges[0], x_edges[-1])
    ax.set_ylim(y_edges[0], y_edges[-1])
    ax.set_xlabel(AXIS_LABEL.get(x, x))
    ax.set_ylabel(AXIS_LABEL.get(y, y))
    for a, axis in ((x, ax.xaxis), (y, ax.yaxis)):
        if a in names:
            axis.set_major_locator(FixedLocator(range(len(names[a]))))
            axis.set_ticklabels(names[a])
            axis.set_minor_locator(NullLocator())
        elif not isinstance(getattr(rd.spec.grid, a, None), Range) and (
            is_log(rd, a) or rd.points[a].nunique() <= FEW_VALUES
        ):  # a list of values: ticks at them
            values = table.columns if axis is ax.xaxis else table.index
            axis.set_major_locator(FixedLocator(np.asarray(values, float)))
            axis.set_major_formatter(FormatStrFormatter("%g"))
            axis.set_minor_locator(NullLocator())
    if ax.get_legend_handles_labels()[0]:  # nothing unsettled and no boundary: none
        fig.legend(  # grey behind the white, outlined symbols; long enough to read
            loc="outside lower center",
            ncol=2,
            fontsize=6,
            facecolor="0.75",
            edgecolor="none",
            handlelength=4,
        )
    ax.set_title(rd.title, fontsize=7)
    return fig


def _curve_boundaries(ax, rd: RunData, other: str, swap: bool) -> None:
    """Draw on a (sigma2, ``other``) map each curve's predicted sigma_c^2 (its own
    criterion: a context's innovations, a ladder's kappa, a VRNN's state noise) and
    its measured boundary; ``swap`` when sigma2 is on the y axis."""
    ts = [t for t in rd.analysis.transitions if other in t.curve]
    outline = [patheffects.withStroke(linewidth=2.4, foreground="k")]

    def xy(s2, v):
        return (v, s2) if swap else (s2, v)

    predicted = [(t.theory_sigma2_c, t.curve[other]) for t in ts if t.theory_sigma2_c]
    if predicted:
        s2, v = np.array(predicted).T
        ax.plot(
            *xy(s2, v),
            "w_" if swap else "w|",
            ms=14,
            mew=2.2,
            ls="none",
            path_effects=outline,
            label=r"predicted $\sigma^2_c$ (each curve's criterion)",
        )
    found = [t for t in ts if locates_collapse(t)]
    _measured(ax, found, [t.curve[other] for t in found], swap)


def _boundaries(ax, rd: RunData, swap: bool, ys: np.ndarray) -> None:
    """Draw on a (sigma2, beta) map; ``swap`` when beta is on the x axis."""
    ev = rd.analysis.spectrum.eigenvalues
    betas = np.geomspace(ys.min(), ys.max(), 100)
    found = [t for t in rd.analysis.transitions if locates_collapse(t)]
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
    _measured(ax, found, [t.beta for t in found], swap)


def _measured(ax, found: list, values: list, swap: bool) -> None:
    """The located transitions ``found`` at sigma_c^2 with their intervals, against
    ``values`` of the other axis (on x when ``swap``)."""
    if not found:
        return
    s2c = np.array([t.sigma2_c for t in found])
    err = np.array(
        [
            [s - (t.ci or [s])[0], (t.ci or [s, s])[1] - s]
            for s, t in zip(s2c, found, strict=True)
        ]
    ).T
    v = np.asarray(values, float)
    xy = (v, s2c) if swap else (s2c, v)
    ax.errorbar(
        *xy,
        **({"yerr": err} if swap else {"xerr": err}),
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
    ev = rd.analysis.spectrum.eigenvalues
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
    s = rd.analysis.scaling
    if s and s.get("rms_spread") is not None:
        ax.text(
            0.97,
            0.42,
            f"RMS spread {s['rms_spread']:.3g} nats",
            transform=ax.transAxes,
            ha="right",
            fontsize=7,
            bbox={"facecolor": "white", "edgecolor": "none", "pad": 1},
        )
    ax.set_xscale("log")
    ax.set_xlabel(r"$\theta = \beta\sigma^2$")
    ax.set_ylabel("KL (nats)")
    # framed: the lambda_max line passes behind it, not through its words
    ax.legend(fontsize=7, loc="upper right", framealpha=1.0, edgecolor="0.85")
    ax.set_title(rd.wrapped_title(45), fontsize=7)
    return fig


def remedy_figure(rd: RunData, axis: str) -> Figure:
    """theta_c = beta sigma_c^2 with its 95 % interval against a remedy's strength,
    one line per value of the other axes, and the prediction: lambda_max, or each
    curve's own criterion where the axis moves it (a ladder's kappa, a VRNN's state
    noise): does the remedy move the boundary, and as derived? Strengths without a
    transition in the grid (triangles) or whose KL a free-bits floor holds up
    (squares) are marked at the top."""
    lam = rd.analysis.spectrum.lambda_max
    ts = pd.DataFrame([t.to_json() for t in rd.analysis.transitions])
    own = pd.to_numeric(ts["theory_sigma2_c"], errors="coerce") * ts["beta"]
    moving = not np.allclose(own.dropna(), lam, rtol=1e-9)
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
        held = g.get("verdict", pd.Series("", index=g.index)) == HELD
        found = g[g["sigma2_c"].notna() & ~held]
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
            label=label(values, others) or "measured",
        )
        if moving:
            pred = pd.to_numeric(g["theory_sigma2_c"], errors="coerce") * g["beta"]
            ax.plot(g[axis], pred, "--", color=f"C{i}", lw=1)
        top = lam * 1.5
        for rows, marker in ((g[g["sigma2_c"].isna() & ~held], "^"), (g[held], "s")):
            if len(rows):
                ax.plot(rows[axis], [top] * len(rows), marker, color=f"C{i}")
    verdicts = set(ts.get("verdict", []))
    if NONE in verdicts:
        ax.plot([], [], "^", color="0.4", label="no transition in grid")
    if HELD in verdicts:
        ax.plot([], [], "s", color="0.4", label="held at the free-bits floor")
    if moving:
        ax.plot([], [], "k--", lw=1, label="predicted (each setting's criterion)")
    else:
        ax.axhline(lam, color="k", ls="--", lw=1, label=r"predicted $\lambda_{max}$")
    if categorical:
        ax.set_xticks(range(len(names)), names)
    elif is_log(rd, axis):
        ax.set_xscale("log")
    ax.set_xlabel(AXIS_LABEL.get(axis, axis))
    ax.set_ylabel(r"$\theta_c = \beta\sigma_c^2$")
    fig.legend(loc="outside lower center", ncol=2, fontsize=6, frameon=False)
    ax.set_title(rd.wrapped_title(45), fontsize=7)
    return fig


def hysteresis_figure(rd: RunData) -> Figure:
    """KL of the sweep up sigma^2 and of the sweep down (each point warm-started from
    the one before it), the area between them and where they part."""
    hs = rd.analysis.hysteresis
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
        ax.set_xlabel(AXIS_LABEL["sigma2"])
        ax.set_ylabel("KL (nats)")
        ax.set_title(
            f"{label(h, axes)}\narea {h['area']:.3g} nats, "
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
