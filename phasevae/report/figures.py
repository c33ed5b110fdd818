"""Figures from a run directory's stored tables and analysis.json: the KL, ELBO and
latent-variance curves against sigma^2 with their fits and derivatives, training
curves near the transition, the data's components, the learned variance; and every
figure of a run at once (:func:`figures`, :func:`write_figures`). No JAX, no training.

Colour maps are perceptually uniform (viridis, cividis) and stay readable in
greyscale.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from phasevae.analysis import theory
from phasevae.analysis.constants import GAIN, KL_AXIS_MIN, LAYER
from phasevae.analysis.readings import step_columns
from phasevae.report.diagrams import (
    hysteresis_figure,
    phase_diagram,
    remedy_figure,
    scaling_figure,
)
from phasevae.report.figbase import (
    COLUMN_IN,
    REMEDY_AXES,
    PlotError,
    RunData,
    fit_texts,
    label,
    load,
    transition_panels,
)
from phasevae.store.records import Transition

MAX_BETAS = 4  # the ELBO figure draws at most this many beta values
ZOOM = 2.5  # the derivative panels span sigma_c^2 / ZOOM .. sigma_c^2 * ZOOM


def kl_figure(rd: RunData) -> Figure:
    """KL vs sigma^2 with the fitted piecewise function, the transition and its
    interval, the prediction, and the fit's first and second derivatives in sigma^2
    (paper Fig. 2c / eqs 28-29)."""
    ts, fig, axs = transition_panels(rd, rows=3, height=6.2, sharex=False)
    for col, t in enumerate(ts):
        ax, d1, d2 = axs[:, col]
        d2.sharex(d1)
        _kl_panel(ax, rd, t)
        _derivative_panels(ax, d1, d2, t)
    named = {}  # every entry of the KL panels once (a breakpoint may be in one only)
    for a in axs[0]:
        for handle, name in zip(*a.get_legend_handles_labels(), strict=True):
            named.setdefault(name, handle)
    fig.legend(
        list(named.values()),
        list(named),
        loc="outside lower center",
        ncol=2 if len(ts) == 1 else 3,
        fontsize=7,
        frameon=False,
    )
    fig.suptitle(rd.wrapped_title(60 * len(ts)), fontsize=8)
    return fig


def _kl_panel(ax, rd: RunData, t: Transition) -> None:
    """One transition's KL panel: the measured points, the fit on either side of
    sigma_c^2, its interval and the prediction."""
    pts = rd.curve(t)
    by = pts.groupby("sigma2")["kl"]
    spread = by.std(ddof=1).fillna(0.0) if pts["seed"].nunique() > 1 else None
    mean = by.mean()
    # a point still trending at the end (fit.settle) is drawn hollow: the fit
    # left it out, unless too few points had settled to fit without it
    still = np.isin(mean.index, t.unsettled_sigma2 or [])
    used = "in the fit" if t.fit_used_unsettled else "left out of the fit"
    labels = {
        "measured": "measured"
        + (" (mean ± sd over seeds)" if spread is not None else ""),
        "unsettled": f"not settled: still trending ({used})",
    }
    for part, kind in ((~still, "measured"), (still, "unsettled")):
        if part.any():
            ax.errorbar(
                mean.index[part],
                mean[part],
                yerr=None if spread is None else spread[part],
                fmt="o",
                ms=3 if kind == "measured" else 4,
                color="0.3",
                mfc="0.3" if kind == "measured" else "white",
                label=labels[kind],
            )
    u, kl = np.array(t.fit.ln_sigma2), np.array(t.fit.kl)
    s2 = np.exp(np.linspace(u[0], u[-1], 400))
    fitted = np.interp(np.log(s2), u, kl)
    s2c = t.sigma2_c
    below = s2 <= s2c if s2c else np.ones_like(s2, bool)
    ax.plot(s2[below], fitted[below], color="C0", label="fit, active")
    if s2c:
        ax.plot(s2[~below], fitted[~below], color="C1", label="fit, collapsed")
        ax.axvline(
            s2c, color="C3", lw=1, label=r"measured $\sigma_c^2$ (top dim's kink)"
        )
        if t.ci:  # none when the run has too few evaluations to bound it
            ax.axvspan(*t.ci, color="C3", alpha=0.3, lw=0, label="95 % interval")
    if t.theory_sigma2_c:
        ax.axvline(
            t.theory_sigma2_c,
            color="k",
            ls="--",
            lw=1,
            label=r"predicted $\lambda_{max}/\beta$",
        )
    ax.set_xscale("log")
    ax.set_ylabel("KL (nats)")
    title = label(t.curve, rd.varying_axes())
    if s2c:
        lo, hi = t.ci or (math.nan, math.nan)
        title += "\n" + rf"$\sigma_c^2$ = {s2c:.4g} [{lo:.4g}, {hi:.4g}]"
        if t.theory_sigma2_c:  # none at beta = 0
            title += f", predicted {t.theory_sigma2_c:.4g}"
    ax.set_title(title, fontsize=8)


def _derivative_panels(ax, d1, d2, t: Transition) -> None:
    """One transition's derivative panels: the fit's first and second derivatives in
    sigma^2 around the transition, and the total-KL fit's breakpoint where it is
    not sigma_c^2."""
    u, s2c = np.array(t.fit.ln_sigma2), t.sigma2_c
    # derivatives in sigma^2 of the fit, slope_ln / s2 and -slope_ln / s2^2,
    # around the transition (a factor ZOOM either side), where the jump is
    edges = np.exp(u)
    window = (edges[0], edges[-1])
    if s2c:
        window = (max(edges[0], s2c / ZOOM), min(edges[-1], s2c * ZOOM))
    slopes = np.array(t.slopes_ln)
    for k_, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        lo, hi = max(lo, window[0]), min(hi, window[1])
        if lo >= hi:
            continue
        seg = np.geomspace(lo, hi, 50)
        color = "C1" if s2c and lo >= s2c * (1 - 1e-9) else "C0"
        d1.plot(seg, slopes[k_] / seg, color=color)
        d2.plot(seg, -slopes[k_] / seg**2, color=color)
    # the derivatives jump at the total-KL fit's last breakpoint; where that is
    # not sigma_c^2 (the top dim's own kink), it is marked and named
    last = (t.breakpoints or [{}])[-1].get("sigma2")
    apart = bool(s2c and last and abs(last / s2c - 1) > 0.005)
    for a in (ax, d1, d2) if apart else ():
        a.axvline(
            last,
            color="0.3",
            ls=":",
            lw=1,
            label="total-KL fit's breakpoint (the derivatives' jump)"
            if a is ax
            else None,
        )
    for a in (d1, d2):
        if s2c:
            a.axvline(s2c, color="C3", lw=1)
            if t.ci:
                a.axvspan(*t.ci, color="C3", alpha=0.3, lw=0)
        a.axhline(0.0, color="0.6", lw=0.5)
    d1.set_xscale("log")
    d1.set_xlim(*window)
    ticks = [window[0], s2c, window[1]] if s2c else list(window)
    d1.set_xticks(ticks, [f"{v:.3g}" for v in ticks])
    d1.xaxis.set_minor_formatter(NullFormatter())
    d1.set_ylabel(r"$dKL/d\sigma^2$")
    d2.set_ylabel(r"$d^2KL/d(\sigma^2)^2$")
    d2.set_xlabel(r"decoder variance $\sigma^2$ (near $\sigma_c^2$)")


def elbo_figure(rd: RunData) -> Figure:
    """The trained objective's ELBO vs sigma^2 against the collapse line and the
    linear-VAE optimum, and for Gaussian synthetic data the exact E[log p(x)]
    (paper Fig. 2a)."""
    fig, ax = plt.subplots(figsize=(COLUMN_IN * 1.4, 3.0), layout="constrained")
    ev = np.array(rd.meta.spectrum["eigenvalues"])
    pts = rd.points[~rd.points["diverged"]]
    s2 = np.geomspace(pts["sigma2"].min(), pts["sigma2"].max(), 300)
    betas = sorted(pts["beta"].unique())
    if len(betas) > MAX_BETAS:  # a readable legend: the ends and evenly between
        picks = np.linspace(0, len(betas) - 1, MAX_BETAS).round().astype(int)
        betas = [betas[i] for i in picks]
    shown = []  # what the y range is made for: the trained runs and their optimum
    for i, beta in enumerate(betas):
        g = pts[pts["beta"] == beta].groupby("sigma2")["elbo"].mean()
        ax.plot(
            g.index, g, "o", ms=3, color=f"C{i}", label=rf"trained, $\beta$={beta:g}"
        )
        opt = -theory.optimal_loss(ev, s2, beta, rd.k)
        ax.plot(
            s2, opt, color=f"C{i}", lw=1, label=rf"linear-VAE optimum, $\beta$={beta:g}"
        )
        shown += [g.to_numpy(), opt]
    collapse = -theory.collapse_loss(ev.sum(), ev.size, s2)
    ax.plot(s2, collapse, "k--", lw=1, label="collapse line (Li et al. 2025, eq. 24)")
    d = rd.spec.data
    if d.source == "synthetic" and d.distribution == "gaussian":
        loglik = (
            -0.5 * ev.size * math.log(2 * math.pi * math.e) - 0.5 * np.log(ev).sum()
        )
        ax.axhline(loglik, color="0.4", ls=":", label=r"exact $E[\log p(x)]$")
        shown.append([loglik])
    # the collapse line falls steeply at small sigma^2: it leaves the frame there
    # rather than squash the trained curves into a sliver
    values = np.concatenate([np.ravel(v) for v in shown])
    values = values[np.isfinite(values)]
    if values.size:
        lo, hi = values.min(), values.max()
        pad = 0.08 * (hi - lo) or 1.0
        ax.set_ylim(lo - pad, hi + pad)
    ax.set_xscale("log")
    ax.set_xlabel(r"decoder variance $\sigma^2$")
    ax.set_ylabel(r"ELBO $= -(\mathrm{recon} + \beta\,\mathrm{KL})$ (nats)")
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    ax.set_title(rd.title, fontsize=8)
    return fig


def variance_figure(rd: RunData) -> Figure:
    """Mean encoder variance of each latent dim (ranked by KL) vs sigma^2: each
    reaches 1 at its own threshold, marked (paper Fig. 2b)."""
    ts, fig, axs = transition_panels(rd, rows=1, height=2.8)
    for ax, t in zip(axs[0], ts, strict=True):
        pts = rd.curve(t)
        for r in range(rd.k):
            g = pts.groupby("sigma2")[f"var_rank_{r}"].mean()
            ax.plot(g.index, g, "o-", ms=3, lw=1, color=f"C{r}", label=f"dim {r + 1}")
            ax.axvline(t.theory_thresholds[r], color=f"C{r}", ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.set_ylim(-0.03, 1.1)
        ax.set_xlabel(r"decoder variance $\sigma^2$ (dashed: $\lambda_i/\beta$)")
        ax.set_ylabel(r"mean encoder variance $s_j^2$")
        ax.set_title(label(t.curve, rd.varying_axes()), fontsize=9)
    axs[0, 0].legend(fontsize=7, frameon=False, title="by KL rank", title_fontsize=7)
    fig.suptitle(rd.wrapped_title(45 * len(ts)), fontsize=8)
    return fig


GAINS_SHOWN = 4  # the decoder's largest gains drawn (a VRNN has one per step)


def gains_figure(rd: RunData) -> Figure:
    """The decoder's gains (the singular values of its Jacobian in z, largest first,
    at most ``GAINS_SHOWN``) vs sigma^2: the decoder side of collapse, each falling
    towards 0 near its threshold, marked."""
    ts, fig, axs = transition_panels(rd, rows=1, height=2.8)
    for ax, t in zip(axs[0], ts, strict=True):
        pts = rd.curve(t)
        for r in range(min(rd.k, GAINS_SHOWN)):
            g = pts.groupby("sigma2")[f"decoder_gain_{r}"].mean()
            ax.plot(g.index, g, "o-", ms=3, lw=1, color=f"C{r}", label=f"gain {r + 1}")
            ax.axvline(t.theory_thresholds[r], color=f"C{r}", ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.set_ylim(bottom=0.0)
        ax.set_xlabel(r"decoder variance $\sigma^2$ (dashed: $\lambda_i/\beta$)")
        ax.set_ylabel(r"decoder gain in $z$")
        ax.set_title(label(t.curve, rd.varying_axes()), fontsize=9)
    axs[0, 0].legend(fontsize=7, frameon=False, title="largest first", title_fontsize=7)
    fig.suptitle(rd.wrapped_title(45 * len(ts)), fontsize=8)
    return fig


def layers_figure(rd: RunData) -> Figure:
    """A ladder latent's KL per layer (bottom and top, seeds averaged) vs sigma^2,
    each layer's fitted collapse marked (dotted, when the fit found one) and the
    model's derived one dashed: which layer holds the information, and which dies
    first."""
    ts, fig, axs = transition_panels(rd, rows=1, height=2.8)
    names = ("layer 1 (bottom)", "layer 2 (top)")
    for ax, t in zip(axs[0], ts, strict=True):
        pts = rd.curve(t)
        for layer in t.information["layers"]:
            i = layer["layer"]
            kl = pts.groupby("sigma2")[f"kl_layer_{i}"].mean()
            ax.plot(kl.index, kl, "o-", ms=3, lw=1, color=f"C{i}", label=names[i])
            if layer["sigma2_c"] is not None:
                ax.axvline(layer["sigma2_c"], color=f"C{i}", ls=":", lw=1)
        ax.axvline(t.theory_sigma2_c, color="k", ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.set_ylim(bottom=0.0)
        ax.set_xlabel(r"decoder variance $\sigma^2$ (dashed: derived collapse)")
        ax.set_ylabel("KL of the layer (nats)")
        ax.set_title(label(t.curve, rd.varying_axes()), fontsize=9)
    axs[0, 0].legend(
        fontsize=7, frameon=False, title="dotted: fitted", title_fontsize=7
    )
    fig.suptitle(rd.wrapped_title(45 * len(ts)), fontsize=8)
    return fig


def steps_figure(rd: RunData) -> Figure:
    """A VRNN's temporal collapse: I(x; z_t) of every step t (rows) against sigma^2
    (seeds averaged), white where the step carries no information, with each
    step's derived criterion theta_t / beta marked (docs/science.md, 'Recurrent
    latents'; exact for the last step to die, at the collapsed state for the
    others)."""
    ts, fig, axs = transition_panels(rd, rows=1, height=2.8, sharex=False)
    cov = rd.meta.spectrum.get("covariance")  # runs made before it have none
    columns = step_columns(rd.points)
    top = float(np.nanmax(rd.points[columns].to_numpy()))  # one colour scale
    for ax, t in zip(axs[0], ts, strict=True):
        mi = rd.curve(t).groupby("sigma2")[columns].mean().sort_index()
        steps = np.arange(mi.shape[1])
        mesh = ax.pcolormesh(
            mi.index,
            steps,
            mi.to_numpy().T,
            shading="nearest",
            cmap="Blues",
            vmin=0,
            vmax=top,
        )
        if cov is not None:
            theta = theory.reading_thresholds(cov, t.curve.get("state_noise", 0.0))
            ax.plot(theta / theory.weight(t.curve), steps, "k|", ms=8, mew=1.5)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(r"decoder variance $\sigma^2$ (|: derived collapse)")
        ax.set_ylabel("step t (0: the first)")
        ax.set_title(label(t.curve, rd.varying_axes()), fontsize=9)
        fig.colorbar(mesh, ax=ax, label=r"$I(x; z_t)$ (nats)")
    fig.suptitle(rd.wrapped_title(45 * len(ts)), fontsize=8)
    return fig


def training_figure(rd: RunData, per_side: int = 3) -> Figure:
    """KL against training step for grid points on both sides of the transition of
    the middle curve: near it, KL relaxes slowest (critical slowing down)."""
    found = [t for t in rd.analysis.transitions if t.sigma2_c is not None]
    t = (found or rd.analysis.transitions)[len(found or rd.analysis.transitions) // 2]
    center = t.sigma2_c or t.theory_sigma2_c
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
            np.maximum(h["kl"], KL_AXIS_MIN),
            "o-",
            ms=2,
            lw=1,
            color=cmap(i / max(len(chosen) - 1, 1)),
            label=rf"$\sigma^2$={s2:.3g} ({side})",
        )
    ax.axhline(KL_AXIS_MIN, color="0.6", lw=0.6, ls=":")
    ax.annotate(
        f"KL below {KL_AXIS_MIN:g} drawn at {KL_AXIS_MIN:g}",
        (1.0, KL_AXIS_MIN),
        xycoords=("axes fraction", "data"),
        xytext=(-2, -2),  # below the floor, where no curve is
        textcoords="offset points",
        ha="right",
        va="top",
        fontsize=6,
        color="0.4",
    )
    ax.set_yscale("log")
    ax.set_ylim(bottom=KL_AXIS_MIN / 4)  # room for the floor's words
    ax.set_xlabel("training step")
    ax.set_ylabel("KL (nats)")
    if len(chosen):  # beside the axes: no curve runs through it
        ax.legend(fontsize=6, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set_title(
        f"{rd.name}: {label(t.curve, rd.varying_axes())}, seed {seed}; "
        rf"$\sigma_c^2$ = {center:.3g}",
        fontsize=7,
    )
    return fig


def components_figure(rd: RunData, count: int = 8) -> Figure:
    """The leading principal components of image data as images, with their
    eigenvalues and the collapse threshold each sets (paper Fig. 3)."""
    spectrum = rd.meta.spectrum
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


def spectrum_figure(rd: RunData, count: int = 32) -> Figure:
    """The data's covariance eigenvalues, the top latent_dim of which set the kinks
    (beta sigma^2 = lambda_i), with the band of beta sigma^2 the grid covers."""
    ev = np.array(rd.meta.spectrum["eigenvalues"][:count])
    k = rd.k
    fig, ax = plt.subplots(figsize=(COLUMN_IN, 2.4), layout="constrained")
    idx = np.arange(1, len(ev) + 1)
    top = idx <= k
    ax.plot(idx[top], ev[top], "o", color="C3", ms=4, label=f"top {k} (latent dims)")
    ax.plot(idx[~top], ev[~top], "o", color="0.5", ms=3, label="the rest")
    theta = rd.points["beta"] * rd.points["sigma2"]
    ax.axhspan(theta.min(), theta.max(), color="C0", alpha=0.12, lw=0)
    ax.axhline(theta.max(), color="C0", lw=0.8, label=r"$\beta\sigma^2$ of the grid")
    ax.axhline(theta.min(), color="C0", lw=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("eigenvalue index i")
    ax.set_ylabel(r"$\lambda_i$")
    ax.legend(fontsize=6)
    ax.set_title(
        f"{rd.title}\ndata spectrum: dim i collapses at "
        r"$\beta\sigma^2 = \lambda_i$",
        fontsize=7,
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
        right.plot(h["step"], np.maximum(h["kl"], KL_AXIS_MIN), color=c, lw=1)
    left.axhline(
        rd.analysis.spectrum.lambda_max / beta,
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
        **({"decoder_gains": lambda: gains_figure(rd)} if GAIN in rd.points else {}),
        **({"layers": lambda: layers_figure(rd)} if LAYER in rd.points else {}),
        **({"steps": lambda: steps_figure(rd)} if step_columns(rd.points) else {}),
        "scaling": lambda: scaling_figure(rd),
        "training_curves": lambda: training_figure(rd),
        "spectrum": lambda: spectrum_figure(rd),
    }
    if rd.points["beta"].nunique() > 1 or (x, y) != ("sigma2", "beta"):
        out["phase_diagram"] = lambda: phase_diagram(rd, x, y)
    if "components" in rd.meta.spectrum:
        out["components"] = lambda: components_figure(rd)
    for axis in REMEDY_AXES:
        if axis in rd.points and rd.points[axis].nunique() > 1:
            out[f"remedy_{axis}"] = lambda a=axis: remedy_figure(rd, a)
            out[f"phase_diagram_{axis}"] = lambda a=axis: phase_diagram(rd, "sigma2", a)
    if rd.analysis.hysteresis:
        out["hysteresis"] = lambda: hysteresis_figure(rd)
    if "decoder_sigma2" in rd.metrics and rd.spec.model.sigma2 == "learned":
        out["learned_variance"] = lambda: learned_variance_figure(rd)
    return {name: (lambda m=make: fit_texts(m())) for name, make in out.items()}


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
