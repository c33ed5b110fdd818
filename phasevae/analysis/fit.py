"""Piecewise-linear fits of KL(ln sigma^2), their intervals, and the per-point
values they are fitted to. No JAX.

The fitted model follows the structure the linear VAE predicts (docs/science.md): KL is
piecewise linear in u = ln sigma^2, falling with slope -1/2 per active latent dim, with
a breakpoint where each dim collapses and a plateau (~0) beyond the last one,

    KL(u) = c + s0 (u_max - u) + sum_i a_i max(0, b_i - u),   s0, a_i >= 0.

The data decide the number of breakpoints (BIC, then breakpoints whose slope change is
below ``min_increment`` are dropped as not a dimension collapsing), their positions and
the slopes. A segment between two breakpoints holds at least two grid values of
sigma^2: through one value it is not identified, and the kink next to it could sit
anywhere in that cell. The last breakpoint is the collapse transition
sigma_c^2 = exp(b_max); a significant s0 means KL still falls at the largest sigma^2:
no transition in the grid.
For fixed breakpoints the coefficients solve a non-negative least-squares problem
(scipy.optimize.nnls), so only the breakpoints are searched: exhaustively on a grid for
one or two, greedily beyond, then refined with Nelder-Mead.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize, stats

from phasevae.analysis.constants import KL_RESOLUTION

OUTSIDE = 1e300  # the search's objective (finite) where breakpoints may not go
MIN_INCREMENT = 0.25  # nats per unit ln sigma^2: halfway between no dim and one (1/2)
LEVEL = 0.95


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
        self.grid = us

    def identified(self, breaks) -> bool:
        """Whether every segment between two breakpoints holds >= 2 grid values."""
        inner = np.histogram(self.grid, np.sort(np.asarray(breaks, np.float64)))[0]
        return bool(np.all(inner >= 2))

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
        """The search's objective: inf for breakpoints that are not identified."""
        return self.solve(breaks)[0] if self.identified(breaks) else math.inf

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

        def objective(bs):  # finite: Nelder-Mead subtracts values, inf - inf is nan
            if np.any(bs <= self.lo) or np.any(bs >= self.hi):
                return OUTSIDE
            return min(self.rss(np.sort(bs)), OUTSIDE)

        res = optimize.minimize(
            objective, np.array(best[1]), method="Nelder-Mead", options={"xatol": 1e-5}
        )
        if res.fun < min(best[0], OUTSIDE):
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


def discontinuity(u, y, fit: PiecewiseFit, sd=None, level=LEVEL):
    """The grid cell (u_low, u_high) across which the curve drops onto its plateau,
    or None when a continuous kink at ``fit.transition`` fits the data.

    The jump model fits the two sides of a cell apart: the points below with the
    fit's other breakpoints, those above with a constant (one parameter fewer than
    the continuous model; the kink's place in the cell does not change its RSS).
    Continuity is rejected when the continuous fit's excess RSS over it, against its
    residual variance, exceeds F(1, n - 2 m - 1; level), for the best-fitting cell up
    to the kink's and the next (a continuous fit of a drop overshoots it) that is a
    drop: its upper edge is on the plateau (within the two-sided ``level`` quantile
    of its noise; a point still relaxing past a kink is on the fall), and the active
    side, continued along its last two values, would still be above zero half a cell
    past it (the fit's slopes can only flatten towards the kink, so a curve that
    steepens into it would otherwise pass for a drop, however small its noise)."""
    b = fit.transition
    u, y = np.asarray(u, np.float64), np.asarray(y, np.float64)
    w = 1.0 / (np.ones_like(u) if sd is None else np.asarray(sd, np.float64))
    grid = np.unique(u)
    m = len(fit.breakpoints)
    dof = len(u) - 2 * m - 1
    if b is None or dof < 1:
        return None
    i = int(np.searchsorted(grid, b)) - 1  # the cell (grid[i], grid[i + 1]) holds b
    best = (math.inf, None)
    z = stats.norm.ppf(0.5 + level / 2)

    def mean(rows):
        return np.average(y[rows], weights=w[rows] ** 2)

    for j in range(max(2 * m - 1, 1), min(i + 2, len(grid) - 1)):
        below, above = u <= grid[j], u >= grid[j + 1]
        edge, rest = u == grid[j + 1], u > grid[j + 1]
        if rest.any():
            # the cell's upper edge must be plateau: a point still above it (one
            # that has not finished decaying near a kink, say) is on the fall
            if np.any((y[edge] - mean(rest)) * w[edge] > z):
                continue
        # a drop, not a kink rounded off: the active side, continued along its
        # last two values, would still be above zero half a cell past the upper
        # edge
        last, before = (mean(u == grid[k]) for k in (j, j - 1))
        fall = (before - last) / (grid[j] - grid[j - 1])
        reach = grid[j] + last / fall if fall > 0 else math.inf
        if reach <= grid[j + 1] + (grid[j + 1] - grid[j]) / 2:
            continue
        rss = _Problem(u[below], y[below], 1 / w[below]).search(m - 1)[0] + np.sum(
            (w[above] * (y[above] - mean(above))) ** 2
        )
        best = min(best, (rss, (float(grid[j]), float(grid[j + 1]))))
    if best[1] is None:
        return None
    rss, cell = best
    excess = (fit.rss - rss) / max(rss / dof, len(u) * 1e-14)
    return cell if excess > stats.f.ppf(level, 1, dof) else None


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
    atol: float = KL_RESOLUTION,
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
    per_seed = []
    for _, g in points.groupby("seed"):
        sd = np.hypot(g[f"{column}_se"].to_numpy(), KL_RESOLUTION)
        f = fit_piecewise(np.log(g["sigma2"]), g[column], sd, max_breaks)
        per_seed.append(None if f.transition is None else math.exp(f.transition))
    u, y, sd = seed_average(points, column, KL_RESOLUTION)
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


def seed_average(points: pd.DataFrame, column: str, floor: float):
    """(u = ln sigma^2, the seed-averaged column, its standard deviation) per sigma^2
    of a :func:`settle` table: seed spread, evaluation noise and ``floor`` combined."""
    by = points.groupby("sigma2")
    y = by[column].mean()
    n_seeds = by[column].count()
    spread = by[column].std(ddof=1).fillna(0.0) ** 2 / n_seeds
    noise = (by[f"{column}_se"].apply(lambda v: np.mean(v**2))) / n_seeds
    sd = np.sqrt(spread + noise + floor**2).to_numpy()
    return np.log(y.index.to_numpy()), y.to_numpy(), sd


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
