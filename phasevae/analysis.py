"""Locate collapse transitions in a sweep and hold them against the theory. No JAX.

The fitted model follows the structure the linear VAE predicts (SCIENCE.md): KL is
piecewise linear in u = ln sigma^2, falling with slope -1/2 per active latent dim, with
a breakpoint where each dim collapses and a plateau (~0) beyond the last one,

    KL(u) = c + s0 (u_max - u) + sum_i a_i max(0, b_i - u),   s0, a_i >= 0.

The data decide the number of breakpoints (BIC, then breakpoints whose slope change is
below ``min_increment`` are dropped as not a dimension collapsing), their positions and
the slopes. The last breakpoint is the collapse transition sigma_c^2 = exp(b_max); a
significant s0 means KL still falls at the largest sigma^2: no transition in the grid.
For fixed breakpoints the coefficients solve a non-negative least-squares problem
(scipy.optimize.nnls), so only the breakpoints are searched: exhaustively on a grid for
one or two, greedily beyond, then refined with Nelder-Mead.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize, stats

from phasevae import theory
from phasevae.store import RunDir, RunDirError, atomic_write_text

MIN_INCREMENT = 0.25  # nats per unit ln sigma^2: halfway between no dim and one (1/2)
LEVEL = 0.95
ACTIVE_KL = 0.01  # nats: a latent dim with more KL than this is an active unit
GRID_AXES = (  # the metrics table's axis columns (those a grid has)
    "sigma2",
    "beta",
    "learning_rate",
    "seed",
    "kl_warmup_steps",
    "decoder_init_scale",
    "direction",  # a hysteresis sweep's +1 (sigma^2 up) or -1 (down); not traced
    "decoder",  # static: the decoder's hidden widths, "32-64" or "linear"
    "skip",  # static: the skip path from x into the decoder
)


@dataclass(frozen=True)
class PiecewiseFit:
    """A fitted KL(u), u = ln sigma^2. Breakpoints ascending."""

    u_min: float
    u_max: float
    c: float
    s0: float
    breakpoints: np.ndarray  # (m,) in u
    increments: np.ndarray  # (m,) slope change a_i at each breakpoint
    rss: float
    n: int

    def __call__(self, u) -> np.ndarray:
        u = np.asarray(u, np.float64)
        hinge = np.maximum(0.0, self.breakpoints - u[..., None])
        return self.c + self.s0 * (self.u_max - u) + hinge @ self.increments

    def slope(self, u, side: str = "left") -> np.ndarray:
        """dKL/du just left (or right) of u."""
        u = np.asarray(u, np.float64)[..., None]
        active = self.breakpoints > u if side == "right" else self.breakpoints >= u
        return -(self.s0 + active @ self.increments)

    @property
    def transition(self) -> float | None:
        """u of the collapse transition, or None without a plateau inside the grid."""
        if len(self.breakpoints) == 0 or self.s0 >= MIN_INCREMENT:
            return None
        return float(self.breakpoints[-1])

    def knots(self) -> dict:
        """The fitted function exactly: it is linear in ln sigma^2 between these."""
        u = np.array([self.u_min, *self.breakpoints, self.u_max])
        return {"ln_sigma2": [float(v) for v in u], "kl": [float(v) for v in self(u)]}

    def segment_slopes(self) -> list[float]:
        """dKL/du on each linear piece, left to right."""
        return [float(self.slope(b, "left")) for b in self.breakpoints] + [-self.s0]


class _Problem:
    """Weighted least squares of the hinge model; for fixed breakpoints it is a
    non-negative least-squares problem in (c+, c-, s0, a_1..a_m)."""

    def __init__(self, u, y, sd=None):
        self.u, self.y = np.asarray(u, np.float64), np.asarray(y, np.float64)
        self.w = 1.0 / (np.ones_like(self.u) if sd is None else np.asarray(sd))
        self.n, self.u_max = len(self.u), float(self.u.max())
        one = np.ones_like(self.u)
        self.base = np.stack([one, -one, self.u_max - self.u], 1) * self.w[:, None]
        self.yw = self.y * self.w
        us = np.unique(self.u)
        self.lo, self.hi = float(us[0]), float(us[-1])
        # breakpoint candidates strictly inside the grid, ~3 per grid interval
        self.cand = np.linspace(self.lo, self.hi, min(3 * len(us), 90) + 2)[1:-1]

    def solve(self, breaks) -> tuple[float, np.ndarray]:
        """(weighted rss, [c, s0, a_1..a_m]) for fixed breakpoints."""
        hinge = np.maximum(
            0.0, np.asarray(breaks, np.float64)[None, :] - self.u[:, None]
        )
        design = np.concatenate([self.base, hinge * self.w[:, None]], axis=1)
        try:
            coef, resid = optimize.nnls(design, self.yw, maxiter=50 * design.shape[1])
        except RuntimeError:  # degenerate, e.g. two breakpoints on top of each other
            return math.inf, np.full(design.shape[1] - 1, np.nan)
        return resid**2, np.concatenate([[coef[0] - coef[1]], coef[2:]])

    def rss(self, breaks) -> float:
        return self.solve(breaks)[0]

    def search(self, m: int, start=()) -> tuple[float, tuple]:
        """Best m breakpoints: exhaustive on the candidates for m <= 2; beyond,
        ``start`` (extended greedily if it has m - 1) improved by coordinate passes;
        then refined continuously with Nelder-Mead."""
        if m <= 2:
            combos = itertools.combinations(self.cand, m)
            best = min(((self.rss(bs), bs) for bs in combos), key=lambda t: t[0])
        else:
            if len(start) < m:
                trials = ((*start, b) for b in self.cand)
                best = min(((self.rss(bs), bs) for bs in trials), key=lambda t: t[0])
            else:
                best = (self.rss(start), tuple(start))
            for _ in range(3):
                improved = False
                for i in range(m):
                    for b in self.cand:
                        bs = tuple(sorted((*best[1][:i], b, *best[1][i + 1 :])))
                        r = self.rss(bs)
                        if r < best[0] - 1e-15:
                            best, improved = (r, bs), True
                if not improved:
                    break
        if m == 0:
            return best

        def objective(bs):
            if np.any(bs <= self.lo) or np.any(bs >= self.hi):
                return np.inf
            return self.rss(np.sort(bs))

        res = optimize.minimize(
            objective, np.array(best[1]), method="Nelder-Mead", options={"xatol": 1e-5}
        )
        if res.fun < best[0]:
            best = (float(res.fun), tuple(np.sort(res.x)))
        return best

    def build(self, breaks) -> PiecewiseFit:
        rss, coef = self.solve(breaks)
        order = np.argsort(breaks)
        return PiecewiseFit(
            u_min=self.lo,
            u_max=self.u_max,
            c=float(coef[0]),
            s0=float(coef[1]),
            breakpoints=np.asarray(breaks, np.float64)[order],
            increments=np.asarray(coef[2:], np.float64)[order],
            rss=float(rss),
            n=self.n,
        )


def fit_piecewise(
    u, y, sd=None, max_breaks: int = 4, min_increment: float = MIN_INCREMENT
) -> PiecewiseFit:
    """Fit KL(u) with the number of breakpoints chosen by BIC.

    Args:
      u: (n,) ln sigma^2 (repeats allowed, e.g. several seeds).
      y: (n,) KL in nats.
      sd: (n,) uncertainty of each y (weights 1/sd^2); None: equal weights.
      max_breaks: most breakpoints tried (capped by the number of points).
      min_increment: breakpoints with a smaller slope change are dropped.
    """
    prob = _Problem(u, y, sd)
    floor = prob.n * 1e-14  # exact data would give ln(0) in the BIC
    m_max = max(0, min(max_breaks, (len(np.unique(prob.u)) - 2) // 2))
    best_bic, best_breaks, breaks = np.inf, (), ()
    for m in range(m_max + 1):
        rss, breaks = prob.search(m, breaks)
        bic = prob.n * math.log(max(rss, floor) / prob.n) + (2 + 2 * m) * math.log(
            prob.n
        )
        if bic < best_bic:
            best_bic, best_breaks = bic, breaks
    fit = prob.build(best_breaks)
    while len(fit.breakpoints) and fit.increments.min() < min_increment:
        keep = tuple(np.delete(fit.breakpoints, np.argmin(fit.increments)))
        fit = prob.build(prob.search(len(keep), keep)[1] if keep else ())
    return fit


def profile_interval(u, y, fit: PiecewiseFit, index: int, sd=None, level=LEVEL):
    """Profile interval of breakpoint ``index`` (in u), the other breakpoints held:
    the b with (RSS(b) - RSS) / (RSS / (n - p)) <= F(1, n - p; level), the
    finite-sample form for nonlinear least squares (Bates & Watts 1988), p = 2 + 2m."""
    prob = _Problem(u, y, sd)
    bs = list(fit.breakpoints)
    b = bs[index]
    lo = bs[index - 1] if index > 0 else fit.u_min
    hi = bs[index + 1] if index + 1 < len(bs) else fit.u_max
    dof = max(fit.n - 2 - 2 * len(bs), 1)
    scale = max(fit.rss, fit.n * 1e-14) / dof
    cut = stats.f.ppf(level, 1, dof)

    def excess(x: float) -> float:
        return (prob.rss([*bs[:index], x, *bs[index + 1 :]]) - fit.rss) / scale - cut

    def edge(limit: float) -> float:
        # walk out from b in small steps, then bisect the step that crosses the cut
        for inner, outer in itertools.pairwise(np.linspace(b, limit, 401)):
            if excess(outer) > 0:
                return optimize.brentq(excess, inner, outer, xtol=1e-9)
        return float(limit)

    return float(edge(lo)), float(edge(hi))


def derivative_jumps(fit: PiecewiseFit) -> list[dict]:
    """For each breakpoint: first derivative left/right/jump in ln sigma^2, and first
    and second derivatives left/right/jump in sigma^2 (jump = right - left).

    With KL linear in u between breakpoints, dKL/dsigma^2 = KL'(u) / sigma^2 and
    d2KL/d(sigma^2)^2 = -KL'(u) / sigma^4.
    """
    out = []
    for b in fit.breakpoints:
        left, right = float(fit.slope(b, "left")), float(fit.slope(b, "right"))
        s2 = math.exp(b)
        out.append(
            {
                "sigma2": s2,
                "ln_sigma2": float(b),
                "d1_left_ln": left,
                "d1_right_ln": right,
                "d1_jump_ln": right - left,
                "d1_left": left / s2,
                "d1_right": right / s2,
                "d1_jump": (right - left) / s2,
                "d2_left": -left / s2**2,
                "d2_right": -right / s2**2,
                "d2_jump": -(right - left) / s2**2,
            }
        )
    return out


def settle(
    metrics: pd.DataFrame,
    columns: list[str],
    window: int = 3,
    atol: float = 2e-3,
    rtol: float = 0.02,
    significance: float = 0.99,
    bounded: bool = False,
) -> pd.DataFrame:
    """Per grid point: each column averaged over the last ``window`` evaluations,
    its standard error, and whether the KL had settled.

    Constant-step training makes KL jitter between evaluations, so settling is a
    trend test: a line is fitted to KL over the last half of the evaluations (at least
    2 * window), and the point is unsettled when the slope is significant (t-test at
    ``significance``) and the change it implies over those evaluations exceeds
    atol + rtol * KL. A slow
    relaxation (critical slowing down, near the transition) has a smooth, highly
    significant trend and is flagged; jitter alone is not. With two evaluations the
    change alone decides; with one, nothing can be judged and the point is unsettled.

    ``bounded`` asks for positive evidence instead, as a scheduler deciding to stop
    training must (few evaluations make any trend insignificant): settled only when
    the whole two-sided ``significance`` interval of the change lies within
    atol + rtol * KL.

    Returns:
      one row per point_id with the last row's values, ``<col>`` (the mean) and
      ``<col>_se`` for each column, ``kl_drift`` (the trend's change) and ``settled``.
    """
    rows = []
    for _, g in metrics.sort_values("step").groupby("point_id", sort=False):
        row = g.iloc[-1].to_dict()
        w = min(window, len(g))
        tail = g.iloc[-w:]
        for c in columns:
            row[c] = float(tail[c].mean())
            sd = float(tail[c].std(ddof=1)) if w > 1 else 0.0
            row[f"{c}_se"] = sd / math.sqrt(w)
        trend = g.iloc[-max(2 * window, len(g) // 2) :]
        drift, half = _trend(
            trend["step"].to_numpy(), trend["kl"].to_numpy(), significance
        )
        allowed = atol + rtol * abs(row["kl"])
        if math.isnan(drift):
            settled = False
        elif bounded:
            settled = len(trend) > 2 and abs(drift) + half <= allowed
        else:
            settled = not (abs(drift) > half and abs(drift) > allowed)
        row.update(kl_drift=drift, settled=bool(settled))
        rows.append(row)
    return pd.DataFrame(rows)


def _trend(x: np.ndarray, y: np.ndarray, significance: float) -> tuple[float, float]:
    """The change of the least-squares line over x, and the half-width of its
    two-sided ``significance`` interval (the change is significant when it exceeds
    it). Two points: their difference, taken as significant (width 0); one: nan."""
    n = len(x)
    if n < 2:
        return float("nan"), 0.0
    if n == 2:
        return float(y[1] - y[0]), 0.0
    x = x.astype(np.float64)
    dx = x - x.mean()
    slope = float(dx @ (y - y.mean()) / (dx @ dx))
    resid = y - y.mean() - slope * dx
    se = math.sqrt(float(resid @ resid) / (n - 2) / float(dx @ dx))
    t_crit = stats.t.ppf(0.5 + significance / 2, n - 2)
    span = float(x[-1] - x[0])
    return slope * span, t_crit * se * span


def fit_curve(points: pd.DataFrame, column: str = "kl", max_breaks: int = 4):
    """Fit one curve from a :func:`settle` table (one row per point).

    The seed-averaged curve gives the estimate. The interval comes from the spread
    of per-seed estimates when at least 3 seeds show a transition, else from the
    profile of the seed-averaged fit.

    Returns:
      (fit, sigma2_c or None, [low, high] or None, interval method, per-seed sigma2_c)
    """
    floor = 2e-3  # nats: no point is trusted to better than this
    per_seed = []
    for _, g in points.groupby("seed"):
        sd = np.hypot(g[f"{column}_se"].to_numpy(), floor)
        f = fit_piecewise(np.log(g["sigma2"]), g[column], sd, max_breaks)
        per_seed.append(None if f.transition is None else math.exp(f.transition))
    u, y, sd = _seed_average(points, column, floor)
    fit = fit_piecewise(u, y, sd, max_breaks)
    b = fit.transition
    if b is None:
        return fit, None, None, "none", per_seed
    found = np.log([v for v in per_seed if v is not None])
    if len(found) >= 3:
        half = stats.t.ppf(0.5 + LEVEL / 2, len(found) - 1) * found.std(ddof=1)
        half /= math.sqrt(len(found))
        return (
            fit,
            math.exp(b),
            [math.exp(b - half), math.exp(b + half)],
            "seeds",
            per_seed,
        )
    lo, hi = profile_interval(u, y, fit, len(fit.breakpoints) - 1, sd)
    return fit, math.exp(b), [math.exp(lo), math.exp(hi)], "profile", per_seed


def _seed_average(points: pd.DataFrame, column: str, floor: float):
    """(u = ln sigma^2, the seed-averaged column, its standard deviation) per sigma^2
    of a :func:`settle` table: seed spread, evaluation noise and ``floor`` combined."""
    by = points.groupby("sigma2")
    y = by[column].mean()
    n_seeds = by[column].count()
    spread = by[column].std(ddof=1).fillna(0.0) ** 2 / n_seeds
    noise = (by[f"{column}_se"].apply(lambda v: np.mean(v**2))) / n_seeds
    sd = np.sqrt(spread + noise + floor**2).to_numpy()
    return np.log(y.index.to_numpy()), y.to_numpy(), sd


def refinement(metrics: pd.DataFrame, points: int, max_breaks: int = 4) -> list[dict]:
    """Where to add sigma^2 points: for every group of the non-sigma^2 axes (seeds
    pooled), the seed-averaged KL curve is fitted and ``points`` values are spread
    evenly in ln sigma^2 around each breakpoint, over the union of its profile
    interval and the grid cell it lies in (halfway to the sampled neighbours), less
    values already sampled.

    Returns:
      one dict per group: its axis values (without sigma2 and seed), ``breakpoints``
      (sigma^2) and ``sigma2``, the new values (sorted; may be empty).
    """
    table = settle(metrics, ["kl"])
    axes = [a for a in GRID_AXES if a in table.columns and a not in ("sigma2", "seed")]
    out = []
    for key, g in table.groupby(axes, sort=True):
        u, y, sd = _seed_average(g, "kl", floor=2e-3)
        fit = fit_piecewise(u, y, sd, max_breaks)
        new: set[float] = set()
        for i, b in enumerate(fit.breakpoints):
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
                "sigma2": sorted(new),
            }
        )
    return out


def analyze_run(path) -> dict:
    """Analyse a finished run directory and write its analysis.json (atomically).

    Raises:
      RunDirError: the directory is missing, unfinished, or has too few points.
    """
    run = RunDir(path)
    if not run.path.is_dir():
        raise RunDirError(f"run directory {run.path} does not exist")
    spec, meta = run.spec(), run.meta()
    if meta.get("status") != "complete":
        raise RunDirError(
            f"{run.path} is unfinished ({meta.get('steps_done', 0)} of "
            f"{spec.train.steps} steps); run `phasevae sweep` on it again to finish it"
        )
    try:
        result = analyze(run.metrics(), meta["spectrum"], spec.model.latent_dim)
    except ValueError as e:
        raise RunDirError(f"{run.path}: cannot fit: {e}") from None
    atomic_write_text(run.path / "analysis.json", json.dumps(result, indent=1))
    return result


def analyze(metrics: pd.DataFrame, spectrum: dict, latent_dim: int) -> dict:
    """The analysis.json document for a finished sweep's metrics table.

    Raises:
      ValueError: fewer than 4 sigma^2 values on a curve.
    """
    columns = ["kl", *(f"kl_dim_{j}" for j in range(latent_dim)), "mi"]
    columns += [f"var_dim_{j}" for j in range(latent_dim)]
    table = rank_dims(settle(metrics, columns), latent_dim)
    axes = [a for a in GRID_AXES if a in table and a not in ("sigma2", "seed")]
    ev = np.asarray(spectrum["eigenvalues"], np.float64)
    transitions = []
    for key, group in table.groupby(axes, sort=True):
        values = dict(zip(axes, key if isinstance(key, tuple) else (key,), strict=True))
        transitions.append(_transition(group, values, ev, latent_dim))
    return {
        "spectrum": {
            "eigenvalues": [float(v) for v in ev],
            "lambda_max": float(ev[0]),
        },
        "latent_dim": latent_dim,
        "settings": {
            "min_increment": MIN_INCREMENT,
            "level": LEVEL,
            "active_kl": ACTIVE_KL,
        },
        "transitions": transitions,
        "hysteresis": hysteresis(table) if "direction" in table else [],
        "boundary": boundary(transitions, float(ev[0])),
        "scaling": scaling_collapse(table),
        "scaling_by": scaling_by_group(table),
        "points": _points(table),
    }


def _transition(group: pd.DataFrame, values: dict, ev: np.ndarray, k: int) -> dict:
    beta = values.get("beta", 1.0)
    usable = group[~group["diverged"]]
    if usable["sigma2"].nunique() < 4:
        raise ValueError(
            f"{values}: only {usable['sigma2'].nunique()} usable sigma2 values; "
            "a fit needs at least 4"
        )
    settled = usable[usable["settled"]]
    trusted = settled["sigma2"].nunique() >= 4
    data = settled if trusted else usable
    fit, s2c, ci, method, seeds = fit_curve(data)
    predicted = theory.thresholds(ev, beta, k)
    jumps = derivative_jumps(fit)
    for j in jumps:
        # the theory's jump at a threshold: slope -1/2 -> 0 in u for one dim
        j["theory_d1_jump_ln"] = 0.5
        j["theory_d1_jump"] = 0.5 / j["sigma2"]
        j["theory_d2_jump"] = -0.5 / j["sigma2"] ** 2
    theory_s2c = float(predicted[0]) if beta > 0 else None
    return {
        **{k_: _num(v) for k_, v in values.items()},
        "sigma2_c": s2c,
        "ci": ci,
        "ci_method": method,
        "theory_sigma2_c": theory_s2c,
        "rel_error": None if s2c is None or not theory_s2c else s2c / theory_s2c - 1,
        "theta_c": None if s2c is None else s2c * beta,
        "converged": bool(usable["settled"].all()),
        "unsettled_sigma2": sorted(
            float(s) for s in usable.loc[~usable["settled"], "sigma2"].unique()
        ),
        "fit_used_unsettled": not trusted,
        "diverged_points": int(group["diverged"].sum()),
        "seeds_sigma2_c": seeds,
        "plateau": fit.c,
        "slope_at_max_sigma2": -fit.s0,
        "slopes_ln": fit.segment_slopes(),
        "fit": fit.knots(),
        "breakpoints": jumps,
        "theory_thresholds": [float(t) for t in predicted],
        "per_dim": _per_dim(data, k, predicted),
    }


def hysteresis(table: pd.DataFrame, tolerance: float = 0.01) -> list[dict]:
    """Up- against down-sweep KL curves of a hysteresis sweep (:func:`settle` table,
    column ``direction``), per group of the other axes, seeds averaged.

    ``area``: the integral of |KL_up - KL_down| over ln sigma^2 (nats; trapezoids on
    the shared sigma^2 values). The curves part where they differ by more than
    3 standard errors + ``tolerance`` nats: ``parted`` = [first, last] such sigma^2
    (None when they never do), ``max_gap`` the largest difference.
    """
    axes = [a for a in GRID_AXES if a in table and a not in ("sigma2", "seed")]
    axes.remove("direction")
    usable = table[~table["diverged"]]
    out = []
    for key, g in usable.groupby(axes, sort=True) if axes else [((), usable)]:
        by = g.groupby(["direction", "sigma2"])["kl"]
        mean, se = by.mean(), by.std(ddof=1).fillna(0.0) / np.sqrt(by.count())
        up, down = mean.loc[1.0], mean.loc[-1.0]
        shared = up.index.intersection(down.index)
        gap = (up[shared] - down[shared]).to_numpy()
        noise = np.hypot(se.loc[1.0][shared], se.loc[-1.0][shared]).to_numpy()
        u = np.log(shared.to_numpy())
        apart = shared[np.abs(gap) > 3 * noise + tolerance]
        values = dict(zip(axes, key if isinstance(key, tuple) else (key,), strict=True))
        out.append(
            {
                **{k: _num(v) for k, v in values.items()},
                "sigma2": [float(v) for v in shared],
                "kl_up": [float(v) for v in up[shared]],
                "kl_down": [float(v) for v in down[shared]],
                "area": float(np.trapezoid(np.abs(gap), u)) if len(u) > 1 else 0.0,
                "max_gap": float(np.max(np.abs(gap))) if len(gap) else 0.0,
                "parted": [float(apart.min()), float(apart.max())]
                if len(apart)
                else None,
            }
        )
    return out


def rank_dims(table: pd.DataFrame, k: int) -> pd.DataFrame:
    """Add ``kl_rank_<r>`` (and ``_se``): the r-th largest per-dim KL of each point.

    Latent dims are exchangeable: which label carries which direction differs from
    model to model (and seed to seed), so per-label curves cannot be averaged. The
    order statistics can: at the linear-VAE optimum the r-th largest KL is
    1/2 ln(lambda_r / theta), whatever the labels.
    """
    kl = table[[f"kl_dim_{j}" for j in range(k)]].to_numpy()
    se = table[[f"kl_dim_{j}_se" for j in range(k)]].to_numpy()
    order = np.argsort(-kl, axis=1)
    ranked = np.take_along_axis(kl, order, axis=1)
    ranked_se = np.take_along_axis(se, order, axis=1)
    out = table.copy()
    for r in range(k):
        out[f"kl_rank_{r}"] = ranked[:, r]
        out[f"kl_rank_{r}_se"] = ranked_se[:, r]
    return out


def _per_dim(points: pd.DataFrame, k: int, predicted: np.ndarray) -> list[dict]:
    """The collapse cascade: the r-th most informative latent dim's KL (see
    :func:`rank_dims`) fitted for its single threshold, against lambda_r / beta."""
    out = []
    for r in range(k):
        fit, s2c, ci, method, _ = fit_curve(points, f"kl_rank_{r}", max_breaks=1)
        out.append(
            {
                "dim": r,
                "sigma2_c": s2c,
                "ci": ci,
                "ci_method": method,
                "theory": float(predicted[r]),
                "slope_ln": -float(fit.increments.sum() + fit.s0),
            }
        )
    return out


def boundary(transitions: list[dict], lambda_max: float) -> dict:
    """theta_c = beta * sigma_c^2 pooled over the curves (inverse-variance weights on
    ln theta_c from each interval), and the exponent of sigma_c^2 ~ beta^p (theory:
    p = -1) when there are at least 3 beta values."""
    found = [t for t in transitions if t["sigma2_c"] is not None and t["ci"]]
    out = {"theory_theta_c": lambda_max, "theta_c": None, "ci": None}
    if not found:
        return out
    ln_t = np.log([t["theta_c"] for t in found])
    z = stats.norm.ppf(0.5 + LEVEL / 2)
    se = np.array(
        [(math.log(t["ci"][1]) - math.log(t["ci"][0])) / (2 * z) for t in found]
    )
    w = 1.0 / np.maximum(se, 1e-6) ** 2
    mean = float(np.sum(w * ln_t) / np.sum(w))
    half = z / math.sqrt(np.sum(w))
    out.update(
        theta_c=math.exp(mean),
        ci=[math.exp(mean - half), math.exp(mean + half)],
        rel_error=math.exp(mean) / lambda_max - 1,
    )
    betas = np.array([t.get("beta", 1.0) for t in found])
    if len(np.unique(betas)) >= 3 and np.all(betas > 0):
        res = stats.linregress(np.log(betas), np.log([t["sigma2_c"] for t in found]))
        out.update(beta_exponent=float(res.slope), beta_exponent_se=float(res.stderr))
    return out


def scaling_collapse(table: pd.DataFrame, grid_points: int = 100) -> dict | None:
    """How well KL curves of different beta fall onto one curve of theta = beta sigma^2.

    Each curve (seeds averaged) is interpolated in ln theta on the range all curves
    share; ``rms_spread`` is the RMS over that range of the standard deviation across
    curves (nats), ``relative_spread`` the same divided by the RMS of the mean curve.
    """
    ok = table[~table["diverged"] & (table["beta"] > 0)]
    pairs = [
        (b, g.groupby("sigma2")["kl"].mean())
        for b, g in ok.groupby("beta")
        if g["sigma2"].nunique() > 1
    ]
    if len(pairs) < 2:
        return None
    betas, curves = zip(*pairs, strict=True)
    lt = [np.log(c.index.to_numpy() * b) for c, b in zip(curves, betas, strict=True)]
    lo, hi = max(x.min() for x in lt), min(x.max() for x in lt)
    if hi <= lo:
        return {"overlap": None, "rms_spread": None, "relative_spread": None}
    grid = np.linspace(lo, hi, grid_points)
    ys = np.stack(
        [np.interp(grid, x, c.to_numpy()) for x, c in zip(lt, curves, strict=True)]
    )
    rms = float(np.sqrt(np.mean(ys.std(axis=0) ** 2)))
    scale = float(np.sqrt(np.mean(ys.mean(axis=0) ** 2)))
    return {
        "overlap_theta": [math.exp(lo), math.exp(hi)],
        "rms_spread": rms,
        "relative_spread": rms / scale if scale > 0 else None,
    }


def scaling_by_group(table: pd.DataFrame) -> list[dict]:
    """:func:`scaling_collapse` separately for each value of the axes other than
    sigma^2, beta and seed (a remedy's strength, a decoder, ...): which settings keep
    the beta sigma^2 symmetry and which break it. [] when no such axis varies."""
    axes = [
        a
        for a in GRID_AXES
        if a in table and a not in ("sigma2", "beta", "seed") and table[a].nunique() > 1
    ]
    if not axes:
        return []
    out = []
    for key, g in table.groupby(axes, sort=True):
        s = scaling_collapse(g)
        if s is not None:
            key = key if isinstance(key, tuple) else (key,)
            values = {a: _num(v) for a, v in zip(axes, key, strict=True)}
            out.append({**values, **s})
    return out


def _points(table: pd.DataFrame) -> list[dict]:
    """Per grid point: KL and I(x;z) (means over the last evaluations), active units
    at the last evaluation, and the convergence verdict."""
    cols = [c for c in ("point_id", *GRID_AXES) if c in table]
    cols += ["kl", "kl_se", "kl_drift", "settled", "active_units", "mi", "diverged"]
    return [{k: _num(v) for k, v in r.items()} for r in table[cols].to_dict("records")]


def _num(v):
    if isinstance(v, np.generic):
        return v.item()
    return v
