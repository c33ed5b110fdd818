"""The "overly expressive decoder" made a number (issue 30): the phase diagram over
beta x the autoregressive decoder's context k, at sigma^2 = 1, on the AR(2) windows of
``studies/autoregressive.py`` (x_t = 0.2 x_{t-1} + 0.7 x_{t-2} + e_t, windows of 8,
scaled to unit variance). One sweep per decoder trains 11 beta (0.25 to 8, factors
of sqrt 2) x every context k (``grid.context``: one compiled program) for 3000 steps,
seed 0, for the linear VAE (the exact oracle) and the default MLP. The derived
boundary is beta_c(k) = lambda_max of the innovations' covariance given k
predecessors (docs/science.md, 'Autoregressive decoders'); for the linear VAE
the whole diagram has a closed form, its KL (docs/science.md, the linear VAE), drawn
beside the measured one.

    python studies/context_diagram.py

writes results/autoregressive/diagram/<arch>/ (the runs: a rerun reuses them),
diagram.md, diagram.json and diagram.png.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from autoregressive import ARCHS, ROOT, windows

from phasevae.analysis.constants import COLLAPSED_KL, KL_AXIS_MIN
from phasevae.analysis.theory import curve_eigenvalues, kl_per_dim
from phasevae.api import run as train

OUT = ROOT / "diagram"
CONTEXTS = (0, 1, 2, 3, 4, 6)
BETAS = tuple(float(f"{0.25 * 2 ** (i / 2):.6g}") for i in range(11))  # 0.25 .. 8
LATENT = 3


def run(
    arch: str,
    out: Path = OUT,
    data: dict | None = None,
    head: dict | None = None,
    reaches: tuple[int, ...] = CONTEXTS,
    sigma2: float = 1.0,
    name: str | None = None,
) -> list[dict]:
    """One sweep over beta x the head's reach k (``grid.context``: one compiled
    program; default: the linear head's context on the AR(2) windows), in
    ``out / name`` (default: the architecture's name): per k the final KL per
    beta, the derived boundary beta_c = lambda_max / sigma^2, the collapse probe's
    lambda_c / sigma^2 at the largest beta (the trained network's own criterion)
    and, for the linear VAE with a linear head, the closed-form KL."""
    if data is None:
        path = ROOT / "data" / "ar2.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, windows("ar2"))
        data = {"source": "array", "path": str(path), "normalize": "global"}
    spec = {
        "data": data,
        "model": {"latent_dim": LATENT, **ARCHS[arch], **(head or {})},
        "train": {"steps": 3000},
        "grid": {
            "sigma2": [sigma2],
            "beta": list(BETAS),
            "seeds": [0],
            "context": list(reaches),
        },
    }
    name = name or arch
    result = train(spec, out / name)
    m = result.metrics
    last = m[m["step"] == m["step"].max()]
    closed_form = arch == "linear" and not head  # docs/science.md, the linear VAE
    rows = []
    for k in reaches:
        own = curve_eigenvalues(result.meta.spectrum, {"context": k})
        kl = last[last["context"] == k].sort_values("beta")["kl"].tolist()
        exact = [float(kl_per_dim(own, sigma2, b, LATENT).sum()) for b in BETAS]
        beta_c = float(own[0]) / sigma2
        deepest = last[(last["context"] == k) & (last["beta"] == max(BETAS))]
        probe = deepest["collapse_eigenvalue"].iloc[0]  # NaN: the probe needs the MLP
        rows.append(
            {
                "arch": name,
                "context": k,
                "beta_c": beta_c,
                "probe_beta_c": float(probe) / sigma2 if np.isfinite(probe) else None,
                "betas": list(BETAS),
                "kl": kl,
                "exact_kl": exact if closed_form else None,
                "boundary_cell": boundary_cell(kl),
                "used_at_beta_1": kl[BETAS.index(1.0)] > COLLAPSED_KL,
                "exact_used_at_beta_1": exact[BETAS.index(1.0)] > COLLAPSED_KL
                if closed_form
                else beta_c > 1.0,
                "train_s": result.meta.wall_times.train_s,
                "compile_s": result.meta.wall_times.compile_s,
            }
        )
    return rows


def boundary_cell(kl: list[float]) -> list[float] | None:
    """The beta cell where the KL first falls to collapse (at most COLLAPSED_KL) and
    stays there: [last beta with the latent used, first beta collapsed]; None when
    the latent is used at every beta or at none."""
    used = [v > COLLAPSED_KL for v in kl]
    if all(used) or not used[0]:
        return None
    i = max(j for j, u in enumerate(used) if u)
    return [BETAS[i], BETAS[i + 1]] if i + 1 < len(BETAS) else None


def table(rows: list[dict], reach: str = "context k") -> str:
    """The rows as markdown, the axis named ``reach``; the closed form's column
    where a row has it (``exact_kl``)."""
    lines = [
        f"| decoder | {reach} | derived beta_c = lambda_max(innovations) / sigma^2 | "
        f"probe lambda_c / sigma^2 at beta = {max(BETAS):g} | "
        "measured boundary (beta cell) | derived in cell | latent used at beta = 1 "
        "(measured / derived) | max abs KL - closed form (nats) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cell = r["boundary_cell"]
        inside = "-" if cell is None else _yes(cell[0] <= r["beta_c"] <= cell[1])
        cells = "-" if cell is None else f"[{cell[0]:.3g}, {cell[1]:.3g}]"
        gap = (
            f"{np.max(np.abs(np.subtract(r['kl'], r['exact_kl']))):.3f}"
            if r.get("exact_kl")
            else "- (no closed form)"
        )
        probe = "-" if r.get("probe_beta_c") is None else f"{r['probe_beta_c']:.3g}"
        lines.append(
            f"| {r['arch']} | {r['context']} | {r['beta_c']:.3g} | {probe} | {cells} "
            f"| {inside} "
            f"| {_yes(r['used_at_beta_1'])} / {_yes(r['exact_used_at_beta_1'])} "
            f"| {gap} |"
        )
    return "\n".join(lines) + "\n"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


PANELS = (  # (decoder, column, title) per panel of the figure
    ("linear", "kl", "linear VAE, measured"),
    ("linear", "exact_kl", "linear VAE, closed form"),
    ("mlp", "kl", "MLP VAE, measured"),
)


def figure(
    rows: list[dict],
    path: Path,
    panels=PANELS,
    xlabel: str = "context k",
    ylabel: str = r"$\beta$ ($\sigma^2$ = 1)",
    title: str = "AR(2) windows of 8 (unit variance): total KL over beta x the "
    "decoder's context k (the predecessors it sees), 3000 steps, seed 0",
) -> None:
    """Per panel a decoder's final total KL over (reach, beta) as a colour map (log
    scale, bottoming out at KL_AXIS_MIN), the derived boundary beta_c(k) and the
    line beta = 1; for the linear VAE on the AR(2) windows the closed form's
    boundary is the same line, and its KL is a panel of its own."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    fig, axes = plt.subplots(
        1, len(panels), figsize=(4.4 * len(panels), 3.8), sharey=True, squeeze=False
    )
    axes = axes[0]
    norm = LogNorm(KL_AXIS_MIN, 10.0)
    ks = np.array(sorted({r["context"] for r in rows}))
    for ax, (arch, column, name) in zip(axes, panels, strict=True):
        mine = [r for r in rows if r["arch"] == arch]  # in context order
        z = np.array([np.maximum(r[column], KL_AXIS_MIN) for r in mine]).T
        image = ax.pcolormesh(
            np.arange(len(ks) + 1) - 0.5,
            _edges(np.array(BETAS)),
            z,
            norm=norm,
            cmap="viridis",
        )
        ax.plot(
            np.arange(len(ks)),
            [r["beta_c"] for r in mine],
            "w_",
            ms=22,
            mew=2.5,
            label=r"derived $\beta_c$ = $\lambda_{max}$(innovations) / $\sigma^2$",
        )
        ax.axhline(1.0, color="w", ls=":", lw=1, label=r"$\beta$ = 1")
        ax.set(
            yscale="log",
            title=name,
            xlabel=xlabel,
            xticks=np.arange(len(ks)),
            xticklabels=[str(k) for k in ks],
        )
    axes[0].set_ylabel(ylabel)
    fig.suptitle(title, fontsize=10)
    axes[0].legend(fontsize=7, loc="upper right", facecolor="0.4", labelcolor="w")
    closed = any(column == "exact_kl" for _, column, _ in panels)
    label = "total KL (nats; closed form: equilibrium)" if closed else "total KL (nats)"
    fig.colorbar(image, ax=axes, label=label)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _edges(values: np.ndarray) -> np.ndarray:
    """Cell edges of log-spaced values: geometric midpoints, the ends mirrored."""
    mid = np.sqrt(values[1:] * values[:-1])
    return np.concatenate([[values[0] ** 2 / mid[0]], mid, [values[-1] ** 2 / mid[-1]]])


if __name__ == "__main__":
    rows = [row for arch in ("linear", "mlp") for row in run(arch)]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "diagram.json").write_text(json.dumps(rows, indent=1))
    (OUT / "diagram.md").write_text(table(rows))
    figure(rows, OUT / "diagram.png")
    print(table(rows))
