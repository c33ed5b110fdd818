"""The collapse transition of one curve from its training trajectories: an estimate,
an interval that holds the finite-training bias, reported as its two parts
(statistical, finite-training), and a verdict. No JAX.

Why trajectories: near the kink the relaxation time grows like 1 / |lambda_max - theta|
(critical slowing down, docs/science.md), so a point just below sigma_c^2 escapes the
collapsed state slowly and a point just above it decays slowly. A run of T steps rounds
the kink over the zone that has not relaxed, and a fit of the final KL is biased by an
amount that falls as T grows, in a direction that depends on the data and the start.
The metrics table holds every evaluation of every point, which is enough to measure
how large that bias can still be:

1. The curve is the top latent dim's KL (``kl_rank_0``,
:func:`phasevae.analysis.fit.rank_dims`):
   the collapse transition is where the last active dim dies, and that dim's own curve
   has a single kink, so a second dim collapsing close by (a flat top,
   lambda_1 ~ lambda_2) cannot merge with it in the fit. Each point's value is the mean
   of its last quarter of evaluations (at least 3): SGD noise is large near the kink.
2. It is fitted (:func:`phasevae.analysis.fit.fit_curve`, at most 2 breakpoints, the
last is the
   transition) on the evaluations up to the final step T, which gives the estimate,
   and up to T/2, which measures the drift u_T - u_{T/2}. Where the data reject a
   continuous kink (:func:`phasevae.analysis.fit.discontinuity`: the KL drops from a
   finite value to the plateau across one grid cell, as when a small network's units
   die), the transition is anywhere in that cell: the estimate is the cell's middle and
   the statistical part reaches its edges. Where continuity is not rejected, the
   statistical part still reaches from the last point below the kink whose KL is
   clearly above 0 (``COLLAPSED_KL``) to the first grid point above it: the grid
   cannot tell a continuous kink from a drop anywhere in that span (a kink fitted
   from the active slope can sit just above points that have collapsed), and on the
   validation suite's refined grids 9 of 13 transitions were drops, 3 of them inside
   cells whose coarse values fitted a continuous kink. Where the continuous kink
   lies further above the first collapsed point (top-dim KL below ``COLLAPSED_KL``)
   than its slope of 1/2 allows (2 ``COLLAPSED_KL`` in ln sigma^2), the fit has
   extrapolated the active slope past collapsed points, and the KL drops somewhere
   between the last active point and that collapsed one: that cell is the jump
   (:func:`_past_collapsed`). A continuous fit of a jump
   puts its kink wherever the two sides' residuals balance, which moved with
   training by up to 5 % inside an unchanged cell on the validation suite; only more
   sigma^2 inside the cell (``grid.sigma2.refine``) locates a jump better. (With a
   bias falling like 1/t, the Richardson step u_T + (u_T - u_{T/2}) would remove it;
   on the validation suite it made the median error worse, 4.6 % against 2.2 %
   (results/validation), since the bias of trained VAEs does not fall that
   regularly. The drift enters the interval instead.)
3. The finite-training part of the interval is the larger of
   * ``SLOW_DECAY`` * |u_T - u_{T/2}|: for a bias falling like t^-p, what remains at
     T is |u_T - u_{T/2}| / (2^p - 1): 2.4 times the drift at p = 1/2, 1 at p = 1,
     1/3 at p = 2; 1.5 covers any decay faster than about t^-0.74; and
   * tau_0 / T, the half-width (in ln sigma^2) of the zone that cannot have relaxed by
     T: each point relaxes in t_r ~ tau_0 / |u - u_c|, and tau_0 is the median of
     t_r |u - u_c| over the points that moved (:func:`relaxation_scale`).
     This catches what the drift cannot: a bias that has not started to move
     yet (points trapped near the collapsed saddle look settled).
4. The interval is the estimate -/+ (statistical half-width + finite-training part),
   the statistical half-widths being those of the profile (or over-seed) interval at
   T.
5. The stability probe (:func:`stability_probe`): every model logs its collapse
   eigenvalue lambda_c (:func:`phasevae.models.vae.collapse_eigenvalue`), and a
   collapsed point is an equilibrium exactly when beta sigma^2 > lambda_c. So the
   collapsed side of the kink needs no waiting: a collapsed point whose lambda_c exceeds
   beta sigma^2 is trapped on the saddle, the equilibrium transition lies above it,
   and the estimate moves to the probe's threshold lambda_c / beta, its interval the
   bracket from the last unstable to the first stable collapsed point (+- the
   probe's tolerance; verdict ``train longer``). An unstable point within
   2 ``COLLAPSED_KL`` below the fit's kink is not trapped (:func:`_trapped`): its KL
   is below ``COLLAPSED_KL`` because the kink is that close, as the fit says. A
   stable collapse does not make the interval one-sided: active points just below
   the kink can still be growing slowly out of near-collapse, which moves the kink
   up with training.
   Where points trained for different lengths (``train.until = "trusted"``,
   ``phasevae locate``), T is the shortest training among the points that set the
   kink (the fit's support: the active segment that ends at the kink, from the
   breakpoint before it or the grid's first point, and ``NEAR`` past it) and have
   not relaxed, and tau_0 is measured over the steps every point has. A point at
   distance |u - u_c| relaxes in t_r ~ tau_0 / |u - u_c| steps, so one that trained
   ``RELAXED`` x that long no longer biases the fit, however short its training:
   without that, a fit is as trained as its least-trained point, and the far end of
   the active side (which relaxes first) would have to train as long as the kink's
   neighbours. Without a tau_0 (too few common evaluations) every point of the
   support counts: points of the active side stopped early can keep their bias in
   the slope, and a run trained longer only near the kink must not come out
   ``trusted`` where the same grid trained longer everywhere did not
   (tests/test_estimate.py).
6. Verdict: ``trusted`` when the finite-training part is at most ``TOLERANCE``, no
   point of the fit's support still trends (the per-point trend test of
   :func:`phasevae.analysis.fit.settle` on the KL over the last half of the evaluations)
   and the kink lies inside the grid with sampled values on both sides; ``train longer``
   otherwise, with the sigma^2 range to train (the interval, and the points of the
   fit's support that have not relaxed or still trend) and the step count at
   which the finite-training part, falling like 1/t, would be within the tolerance;
   ``no transition in grid`` when the top dim's KL still falls at the largest sigma^2.
7. Absorbing collapse (:func:`absorbing`): where the collapsed points nearest the
   kink have lost their escape direction (the probe's lambda_c below ``DEAD``
   lambda_max: their units died), a point that collapses stays collapsed and more
   points die the longer the run trains, so the transition is a function of the
   training length T, not a limit the run approaches; on the validation suite it
   moved down by up to 7 % from T to 4 T. When, besides, every point that sets the
   kink trained the same T, the estimate is the transition **at T**: the interval
   is its statistical part alone, the verdict ``trusted`` holds for T steps
   (``holds_for_steps``), and the drift is reported beside it: the fits at T/4, T/2
   and T (``sigma2_c_by_steps``) and ``drift_per_doubling`` = u_T - u_{T/2}.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
from scipy import stats

from phasevae.analysis import readings
from phasevae.analysis.constants import COLLAPSED_KL, KL_RESOLUTION
from phasevae.analysis.fit import (
    LEVEL,
    MIN_INCREMENT,
    discontinuity,
    fit_curve,
    rank_dims,
    seed_average,
    settle,
)
from phasevae.store.records import Estimate, TrainLonger

PROBE_TOL = 0.03  # ln: lambda_c this far above beta sigma^2 makes a collapsed point
# unstable (lambda_c is measured on the evaluation subset: a few % of sampling noise,
# mostly removed by scaling with lambda_max / lambda_max_eval)
DEAD = 0.1  # lambda_c below this fraction of lambda_max: the escape direction is gone
NEAREST = 3  # the probe's threshold is the median over this many collapsed sigma^2

TOLERANCE = 0.01  # finite-training part (ln sigma^2, ~ relative) a trusted estimate has
SLOW_DECAY = 1.5  # see the module docstring, step 3
MAX_BREAKS = 2
NEAR = 0.25  # ln sigma^2: a point this close to the kink still trending vetoes trust
RELAXED = 2.0  # a point has relaxed when its steps x |u - u_c| reach this x tau_0
TRUSTED, LONGER, NONE = "trusted", "train longer", "no transition in grid"
JUMP = "jump"  # interval method: the KL jumps across a grid cell, the interval is it
HELD = "held at the free-bits floor"  # free bits kept the top dim's KL up
LEARNED = "sigma^2 learned: the grid holds its starts"  # model.sigma2 = "learned"


def top_dim_table(metrics: pd.DataFrame, latent_dim: int) -> pd.DataFrame:
    """Per point: ``kl_rank_0`` (and ``_se``), the top dim's KL averaged over the last
    quarter (at least 3) of the evaluations in ``metrics``, with the point's axes."""
    evals = metrics.groupby("point_id")["step"].nunique().min()
    columns = [f"kl_dim_{j}" for j in range(latent_dim)]
    table = settle(metrics, columns, window=max(3, int(evals) // 4))
    return rank_dims(table, latent_dim)


def relaxation_scale(
    metrics: pd.DataFrame, latent_dim: int, u_c: float
) -> float | None:
    """tau_0 (steps x ln sigma^2): the median of t_r |u - u_c| over the points (seeds
    averaged) within one unit of ln sigma^2 of ``u_c`` that relaxed, or are relaxing,
    towards their final value.

    A point's band is the last quarter's mean +- (3 jitters, from successive
    differences so that a trend is not taken for noise, + 10 % of the mean +
    ``KL_RESOLUTION``). A point moved when its first evaluation lies outside the
    band; points that never did (stationary from the start) say nothing and are left
    out. t_r is the first evaluation from which the KL stays inside the band; a point
    still moving at the end (the quarter before the last outside the band) counts with
    t_r = T, a lower bound. None when no point moved.
    """
    kl = metrics[[f"kl_dim_{j}" for j in range(latent_dim)]].max(axis=1)
    curves = kl.groupby([metrics["sigma2"], metrics["step"]]).mean().unstack("step")
    steps = curves.columns.to_numpy(np.float64)
    if len(steps) < 8:
        return None
    q = max(3, len(steps) // 4)
    found = []
    for sigma2, row in curves.iterrows():
        du = abs(math.log(sigma2) - u_c)
        y = row.to_numpy(np.float64)
        if not 0 < du <= 1.0 or not np.all(np.isfinite(y)):
            continue
        tail, before = y[-q:], y[-2 * q : -q]
        jitter = np.std(np.diff(tail), ddof=1) / math.sqrt(2)
        band = 3 * jitter + 0.1 * abs(tail.mean()) + KL_RESOLUTION
        outside = np.nonzero(np.abs(y - tail.mean()) > band)[0]
        if len(outside) == 0 or outside[0] != 0:
            continue  # never moved: nothing to learn about its relaxation
        moving = abs(before.mean() - tail.mean()) > band
        last = outside[-1] + 1
        t_r = steps[-1] if moving or last >= len(steps) else steps[last]
        found.append(t_r * du)
    return float(np.median(found)) if found else None


def stability_probe(
    table: pd.DataFrame, lambda_max: float, lambda_max_eval: float | None = None
) -> dict | None:
    """Which collapsed points are equilibria, from their collapse eigenvalues.

    ``table`` is :func:`top_dim_table` (its ``collapse_eigenvalue`` column is each
    point's last evaluation). A point is collapsed when its top dim's KL is below
    ``COLLAPSED_KL``. Its threshold is lambda_c / beta, lambda_c scaled by
    lambda_max / lambda_max_eval (lambda_c is measured on the evaluation subset, so the
    ratio lambda_c / lambda_max_eval is its sampling-robust part); it is unstable when
    the threshold exceeds its sigma^2 (the learned one, for a learned variance) by more
    than ``PROBE_TOL``, and dead when lambda_c < ``DEAD`` lambda_max.

    Returns:
      None when the run has no collapse eigenvalues (a skip path) or no collapsed
      point; else ``collapsed`` (count), ``unstable_sigma2`` and ``dead_sigma2``
      (sorted grid sigma^2 of such points), ``threshold`` (median threshold over the
      ``NEAREST`` smallest collapsed sigma^2, the ones nearest the kink),
      ``lambda_c_ratio`` (their median lambda_c / lambda_max),
      ``first_stable_sigma2`` (the smallest sigma^2 of a stable collapsed point) and
      ``points``: per collapsed point its sigma2, threshold and unstable flag.
    """
    if "collapse_eigenvalue" not in table:
        return None
    c = table[
        (table["kl_rank_0"] < COLLAPSED_KL) & table["collapse_eigenvalue"].notna()
    ]
    if c.empty:
        return None
    scale = lambda_max / (lambda_max_eval or lambda_max)
    lam_c = c["collapse_eigenvalue"].to_numpy(np.float64) * scale
    sigma2 = c["sigma2"].to_numpy(np.float64)
    used = c["decoder_sigma2"].to_numpy(np.float64) if "decoder_sigma2" in c else sigma2
    beta = c["beta"].to_numpy(np.float64) if "beta" in c else np.ones_like(sigma2)
    threshold = lam_c / np.maximum(beta, 1e-300)
    unstable = threshold > used * math.exp(PROBE_TOL)
    near = np.isin(sigma2, np.sort(np.unique(sigma2))[:NEAREST])
    stable = sigma2[~unstable]
    return {
        "collapsed": int(len(c)),
        "unstable_sigma2": sorted(float(v) for v in np.unique(sigma2[unstable])),
        "dead_sigma2": sorted(
            float(v) for v in np.unique(sigma2[lam_c < DEAD * lambda_max])
        ),
        "threshold": float(np.median(threshold[near])),
        "lambda_c_ratio": float(np.median(lam_c[near]) / lambda_max),
        "first_stable_sigma2": float(stable.min()) if len(stable) else None,
        "points": {
            "sigma2": sigma2.tolist(),
            "threshold": threshold.tolist(),
            "unstable": unstable.tolist(),
        },
    }


def _fit_top(metrics: pd.DataFrame, latent_dim: int, drops: bool = True):
    """(u_c or None, statistical half-widths (below, above) in u, interval method,
    the per-point table, the fit's support, the jump's cell (u_low, u_high) or None)
    of the top dim's curve from ``metrics``; with ``drops``, a curve no kink fits
    that falls to nothing across one cell is located to that cell. The support is
    the span of ln sigma^2 whose points set the kink: the active segment that ends
    at it (from the breakpoint before, or the grid's first point) and ``NEAR`` past
    it on the collapsed side, whose flat segment is pinned at zero. Where the KL jumps
    (:func:`phasevae.analysis.fit.discontinuity`), u_c is the middle of the cell it
    jumps across and the statistical half-widths reach its edges."""
    table = top_dim_table(metrics, latent_dim)
    fit, s2c, ci, method, _ = fit_curve(table, "kl_rank_0", MAX_BREAKS)
    if s2c is None:
        # no kink (the active side's slope is below MIN_INCREMENT), but a small KL
        # can still fall to nothing across one cell: a categorical latent's collapse
        drop = _drop_without_kink(table) if drops else None
        if drop is None:
            return None, None, method, table, None, None
        u, stat, support, cell = drop
        return u, stat, JUMP, table, support, cell
    u = math.log(s2c)
    before = [b for b in fit.breakpoints if b < u - 1e-9]
    support = (max(before) if before else fit.u_min, u + NEAR)
    stat = (u - math.log(ci[0]), math.log(ci[1]) - u)
    u_pts, y, sd = seed_average(table, "kl_rank_0", KL_RESOLUTION)
    cell = discontinuity(u_pts, y, fit, sd) or _past_collapsed(u_pts, y, u)
    if cell is not None:
        # the KL jumps across the cell: the transition is anywhere in it
        u, method = (cell[0] + cell[1]) / 2, JUMP
        stat = (u - cell[0], cell[1] - u)
        support = (min(support[0], cell[0]), max(support[1], cell[1]))
    else:
        # the grid cannot tell this kink from a drop anywhere between the last point
        # still clearly active below it (a fit's kink can sit just above collapsed
        # points, extrapolated from the active slope) and the next point above it
        grid = np.unique(u_pts)
        active = u_pts[(y >= COLLAPSED_KL) & (u_pts < u)]
        below = active if active.size else grid[grid < u]
        above = grid[grid >= u]
        if below.size and above.size:
            stat = (max(stat[0], u - below.max()), max(stat[1], above.min() - u))
    return u, stat, method, table, support, cell


def _drop_without_kink(table: pd.DataFrame):
    """(u, statistical half-widths, support, cell) of :func:`_fit_top` for a
    top-dim curve no kink fits that falls to nothing across one cell
    (:func:`_steep_drop`), located to that cell; None when it does not."""
    u_pts, y, sd = seed_average(table, "kl_rank_0", KL_RESOLUTION)
    cell = _steep_drop(u_pts, y, sd)
    if cell is None:
        return None
    u = (cell[0] + cell[1]) / 2
    return u, (u - cell[0], cell[1] - u), (float(u_pts.min()), cell[1] + NEAR), cell


def _steep_drop(u_pts, y, sd, level: float = LEVEL) -> tuple[float, float] | None:
    """The cell [last active point, first collapsed point] when the top dim's KL
    (seed-averaged, ``u_pts`` ascending) is below ``COLLAPSED_KL`` from that point
    on and falls across the cell by more than its noise (the two-sided ``level``
    quantile) and at least as steeply as a kink's active side must rise
    (``MIN_INCREMENT`` per unit ln sigma^2): a drop, however small the KL before it.
    None where the curve has no such cell."""
    active = np.flatnonzero(y >= COLLAPSED_KL)
    if not active.size or active[-1] == len(y) - 1:
        return None
    a = active[-1]
    d = a + 1  # every point from here on is collapsed
    fall = y[a] - y[d]
    z = stats.norm.ppf(0.5 + level / 2)
    steep = fall >= MIN_INCREMENT * (u_pts[d] - u_pts[a])
    if steep and fall > z * math.hypot(sd[a], sd[d]):
        return float(u_pts[a]), float(u_pts[d])
    return None


def _past_collapsed(u_pts, y, u: float) -> tuple[float, float] | None:
    """The cell [last active point, first collapsed point above it] when the fit's
    kink ``u`` lies further above that collapsed point than a continuous kink can:
    with the slope of 1/2 the top dim's KL falls below ``COLLAPSED_KL`` only within
    2 ``COLLAPSED_KL`` (in ln sigma^2) of the kink, so the fit extrapolated the active
    slope past points that had collapsed, and the KL drops somewhere in the cell."""
    active = u_pts[y >= COLLAPSED_KL]
    if not active.size:
        return None
    dead = u_pts[(y < COLLAPSED_KL) & (u_pts > active.max())]
    if dead.size and u > dead.min() + 2 * COLLAPSED_KL:
        return float(active.max()), float(dead.min())
    return None


def estimate_transition(
    metrics: pd.DataFrame,
    latent_dim: int,
    lambda_max: float | None = None,
    lambda_max_eval: float | None = None,
) -> Estimate:
    """The transition of one curve (one value of every axis but sigma^2 and seed) from
    the metrics rows of its points, every evaluation included; rows flagged
    ``diverged`` are left out, and a point that diverged does not count towards the
    training length. ``lambda_max`` (of the training data) and ``lambda_max_eval``
    (of the evaluation subset) enable the stability probe. Returns the curve's
    :class:`phasevae.store.records.Estimate`; where the grid's sigma^2 holds no
    collapse (:func:`grid_reading`: a free-bits floor, a learned variance) the
    verdict says so, with no ``train_longer``: training longer would locate nothing.
    """
    metrics, lengths = _usable(metrics)
    final = int(metrics["step"].max())
    free_bits = float(metrics["free_bits"].iloc[0]) if "free_bits" in metrics else 0.0
    floor = readings.floor(top_dim_table(metrics, latent_dim), free_bits)
    reading = grid_reading(metrics, floor)
    drops = reading is None  # a drop without a kink: only where collapse can be
    u_t, stat, method, table, support, cell = _fit_top(metrics, latent_dim, drops)
    probe = None
    if lambda_max is not None:
        probe = stability_probe(table, lambda_max, lambda_max_eval)
    none = _unlocated(probe, method, cell, floor, reading or NONE, final)
    if u_t is None:
        return none
    near, tau0 = _bounding_points(metrics, lengths, latent_dim, u_t, support)
    final = int(near["step"].min()) if len(near) else final
    by_steps = fits_by_steps(metrics, latent_dim, final, drops)
    u_h = by_steps.get(final // 2)
    delta = None if u_h is None else u_t - u_h
    finite = _finite_part(delta, tau0, final)
    trapped_at = _trapped(probe, u_t)
    trapped = bool(trapped_at.any())
    # absorbing collapse, the points that set the kink trained one length: the
    # transition is that length's, not a limit the run approaches, so there is no
    # finite-training part to add (the drift per doubling says how it moves)
    held = absorbing(probe) and near["step"].nunique() == 1 and not trapped
    if held:
        finite = 0.0
    # symmetric even when every collapsed point is an equilibrium: the points just
    # below the kink may still be growing out of near-collapse (on the validation
    # suite the kink moved up with training in every case)
    finite_ci = [finite, finite]
    u_c, lo, hi = u_t, u_t - stat[0] - finite_ci[0], u_t + stat[1] + finite_ci[1]
    if trapped:  # the probe brackets the transition itself
        u_c, lo, hi, finite_ci = _probe_bracket(probe, trapped_at)
        stat = (PROBE_TOL, PROBE_TOL)
    us = np.log(np.sort(metrics["sigma2"].unique()))
    inside = (us < lo).sum() >= 2 and (us > hi).sum() >= 2
    # a point that sets the kink and whose KL still trends (settle's test) is still
    # moving it
    u_pts = np.log(table["sigma2"].to_numpy())
    unsettled = ~table["settled"].to_numpy() & (u_pts >= support[0] - 1e-9)
    unsettled &= u_pts <= support[1]
    relaxed = held or (finite <= TOLERANCE and not unsettled.any())
    trusted = delta is not None and inside and not trapped and relaxed
    train_longer = None
    if not trusted and not reading:  # the points that set it and have not relaxed
        moving = table.loc[unsettled, "sigma2"].to_numpy()
        train = np.concatenate([near["s2"].to_numpy(), moving])
        train_longer = _train_longer((u_c, lo, hi), stat, finite, train, final)
    return dataclasses.replace(
        none,
        sigma2_c=math.exp(u_c),
        ci=None if math.isnan(lo + hi) else (math.exp(lo), math.exp(hi)),
        ci_statistical=tuple(stat),
        ci_finite_training=None if math.isnan(finite) else tuple(finite_ci),
        sigma2_c_final=math.exp(u_t),
        sigma2_c_half=None if u_h is None else math.exp(u_h),
        sigma2_c_by_steps={str(k): math.exp(v) for k, v in sorted(by_steps.items())},
        drift_per_doubling=delta,
        holds_for_steps=final if held else None,
        relaxation_scale=tau0,
        trapped=trapped,
        verdict=reading or (TRUSTED if trusted else LONGER),
        train_longer=train_longer,
    )


def _usable(metrics: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows that did not diverge, and the rows that tell training lengths: those
    of points that never diverged (a diverged point's length does not count), or
    where every point diverged at some step, every row that did not."""
    if "diverged" not in metrics:
        return metrics, metrics
    diverged = metrics.loc[metrics["diverged"], "point_id"].unique()
    whole = metrics[~metrics["point_id"].isin(diverged)]
    usable = metrics[~metrics["diverged"]]
    return usable, (whole if len(whole) else usable)


def _finite_part(delta: float | None, tau0: float | None, final: int) -> float:
    """The finite-training half-width (ln sigma^2): the larger of SLOW_DECAY x the
    drift u_T - u_{T/2} and tau_0 / T (NaN where neither can be measured)."""
    parts = [SLOW_DECAY * abs(delta)] if delta is not None else []
    parts += [tau0 / final] if tau0 is not None else []
    return max(parts) if parts else math.nan


def _unlocated(probe, method, cell, floor, verdict: str, steps: int) -> Estimate:
    """The estimate of a curve whose transition is not (yet) located: what the
    probe, the fit's method and cell, and the free-bits floor say."""
    return Estimate(
        sigma2_c=None,
        ci=None,
        ci_statistical=None,
        ci_finite_training=None,
        sigma2_c_final=None,
        sigma2_c_half=None,
        sigma2_c_by_steps={},
        drift_per_doubling=None,
        holds_for_steps=None,
        relaxation_scale=None,
        probe=probe,
        trapped=False,
        ci_method=method,
        jump=None if cell is None else (math.exp(cell[0]), math.exp(cell[1])),
        floor=floor,
        verdict=verdict,
        train_longer=None,
        steps=steps,
    )


def _bounding_points(metrics, lengths, latent_dim: int, u_t: float, support):
    """The points whose training length bounds the bias (``step``: their last
    evaluation, ``s2``: their sigma^2), and tau_0 (None where it cannot be
    measured).

    Points may have trained for different lengths (train.until = "trusted" trains
    on only some): the length that bounds the bias is the shortest among the points
    that set the kink, and tau_0, a property of the dynamics, is measured over the
    length every point has. A point of the support far enough from the kink to have
    relaxed in its own training (t_r ~ tau_0 / |u - u_c|) no longer biases the fit,
    however short that training was; the rest bound the length (all of the support
    without tau_0)."""
    last = lengths.groupby("point_id").agg(step=("step", "max"), s2=("sigma2", "first"))
    u_last = np.log(last["s2"].to_numpy())
    common = metrics[metrics["step"] <= last["step"].min()]
    tau0 = relaxation_scale(common, latent_dim, u_t)
    relaxed = (
        np.abs(u_last - u_t) * last["step"].to_numpy() >= RELAXED * tau0
        if tau0 is not None
        else np.zeros(len(last), bool)
    )
    sets_kink = (u_last >= support[0] - 1e-9) & (u_last <= support[1])
    unrelaxed = sets_kink & ~relaxed
    return (last[unrelaxed] if np.any(unrelaxed) else last[sets_kink]), tau0


def _probe_bracket(probe: dict, trapped_at: np.ndarray):
    """Where trapped points put the transition, in ln sigma^2: the estimate, the
    interval's ends and its finite-training part [below, above]. The equilibrium
    transition lies above every unstable collapsed point and below the first stable
    one above them: there, at the probe's threshold. The fit's parts no longer
    apply; what is left is the bracket and the probe's sampling tolerance."""
    pts = pd.DataFrame(probe["points"]).assign(trapped=trapped_at)
    top = pts.loc[pts["trapped"], "sigma2"].max()
    stable_above = pts.loc[~pts["unstable"] & (pts["sigma2"] > top), "sigma2"]
    u_c = math.log(pts.loc[pts["trapped"], "threshold"].median())
    lo = math.log(top)
    hi = math.log(stable_above.min()) if len(stable_above) else u_c + PROBE_TOL
    u_c = min(max(u_c, lo), hi)
    return u_c, lo - PROBE_TOL, hi + PROBE_TOL, [u_c - lo, hi - u_c]


def _train_longer(at, stat, finite: float, train, final: int) -> TrainLonger:
    """What ``train longer`` asks for: the sigma^2 from the interval ``at`` = (u_c,
    lo, hi) widened by the finite-training part (or twice the tolerance where it
    could not be measured) and by the points ``train`` (sigma^2) that must train on,
    to at least twice ``final`` steps, more where that part exceeds the
    tolerance."""
    u_c, lo, hi = at
    width = finite if not math.isnan(finite) else 2 * TOLERANCE
    lo_u = min(lo, u_c - stat[0] - width) if not math.isnan(lo) else u_c - width
    hi_u = max(hi, u_c + stat[1] + width) if not math.isnan(hi) else u_c + width
    train = np.log(train)
    if train.size:
        lo_u, hi_u = min(lo_u, train.min()), max(hi_u, train.max())
    need = final * max(2.0, width / TOLERANCE)
    return TrainLonger(
        # padded by a rounding's width: the points at its ends belong to it
        sigma2=(math.exp(lo_u - 1e-9), math.exp(hi_u + 1e-9)),
        steps=int(math.ceil(need / 100.0) * 100),
    )


def fits_by_steps(
    metrics: pd.DataFrame, latent_dim: int, final: int, drops: bool = True
) -> dict:
    """{steps: u_c} of the top dim's fit on the evaluations up to ``final`` / 4,
    ``final`` / 2 and ``final`` (those with at least two evaluations and a kink, or
    with ``drops`` a drop without one): where the transition was as training went
    on."""
    out = {}
    for steps in (final // 4, final // 2, final):
        part = metrics[metrics["step"] <= steps]
        if part["step"].nunique() >= 2:
            u = _fit_top(part, latent_dim, drops)[0]
            if u is not None:
                out[steps] = u
    return out


def _trapped(probe: dict | None, u_t: float) -> np.ndarray:
    """Per collapsed point of ``probe`` (its ``points``): whether it is trapped on the
    collapsed saddle, the probe calling it unstable. An unstable point within
    2 ``COLLAPSED_KL`` (in ln sigma^2) below the fit's kink ``u_t`` is not: there the
    top dim's KL of an active point, falling with slope 1/2 to the kink, is below
    ``COLLAPSED_KL`` already, so the point is the active side's last, whose collapsed
    state is unstable because it lies below the transition, as the fit says."""
    if probe is None:
        return np.zeros(0, bool)
    u = np.log(np.asarray(probe["points"]["sigma2"], np.float64))
    active_side = (u < u_t) & (u >= u_t - 2 * COLLAPSED_KL)
    return np.asarray(probe["points"]["unstable"], bool) & ~active_side


def absorbing(probe: dict | None) -> bool:
    """Whether collapse near the kink is absorbing: the collapsed points nearest
    it have lost the escape direction (lambda_c below ``DEAD`` lambda_max: their
    units died), so a point that collapses stays collapsed, and the transition is
    a function of the training length, not a point the run converges to."""
    return probe is not None and probe["lambda_c_ratio"] < DEAD


def grid_reading(metrics: pd.DataFrame, floor: dict | None) -> str | None:
    """Why the grid's sigma^2 holds no collapse to locate, or None: ``HELD`` when
    free bits hold the top dim's KL up at the largest sigma^2 (``floor``), ``LEARNED``
    when the decoder learned its variance and it moved off the grid's value (a kink
    in the starting sigma^2 is no collapse threshold)."""
    if "decoder_sigma2" in metrics and not np.allclose(
        metrics["decoder_sigma2"], metrics["sigma2"]
    ):
        return LEARNED
    return HELD if floor is not None and floor["held"] else None


def half_width(sigma2_c: float | None, ci) -> float:
    """A 95 % interval's larger half-width in ln sigma^2 (~ relative); inf without
    an estimate or an interval."""
    if sigma2_c is None or not ci:
        return math.inf
    u = math.log(sigma2_c)
    return max(u - math.log(ci[0]), math.log(ci[1]) - u)


def interval(t: Estimate) -> tuple[float, float] | None:
    """Where the transition ``t`` may be and may still move with training, as
    [low, high] in ln sigma^2: its interval, or the statistical part alone where the
    finite-training part could not be measured; None without a transition."""
    if t.sigma2_c is None or t.ci_statistical is None:
        return None
    if t.ci:
        return math.log(t.ci[0]), math.log(t.ci[1])
    u = math.log(t.sigma2_c)
    return u - t.ci_statistical[0], u + t.ci_statistical[1]


def interval_values(t: Estimate, grid, points: int) -> list[float]:
    """``points`` values of sigma^2 spread evenly in ln sigma^2 strictly inside the
    :func:`interval` of the transition ``t``, less values already on ``grid``; none
    without a transition."""
    span = interval(t)
    if span is None:
        return []
    values = np.exp(np.linspace(*span, points + 2)[1:-1])
    have = np.log(np.asarray(grid, np.float64))
    return [
        round(float(v), 12) for v in values if np.min(np.abs(have - math.log(v))) > 1e-6
    ]
