"""Locate collapse transitions in a sweep and hold them against the theory. No JAX.

The analysis.json document: per curve (a value of every axis but sigma^2 and seed) the
collapse transition from :mod:`phasevae.analysis.estimate` (estimate, interval split
into its statistical and finite-training parts, verdict), the fitted piecewise KL(ln
sigma^2) of :mod:`phasevae.analysis.fit` with its derivative jumps, the per-dim cascade,
and across curves the boundary theta_c = beta sigma_c^2, the beta sigma^2 scaling check,
hysteresis and per-point values.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
from scipy import stats

from phasevae.analysis import estimate, readings, theory
from phasevae.analysis.advice import advise
from phasevae.analysis.constants import COLLAPSED_KL, GAIN, GRID_AXES, curve_axes
from phasevae.analysis.fit import (
    LEVEL,
    MIN_INCREMENT,
    derivative_jumps,
    fit_curve,
    rank_dims,
    settle,
)
from phasevae.store import RunDir, RunDirError
from phasevae.store.records import (
    Analysis,
    Estimate,
    Fit,
    PerDim,
    Spectrum,
    Transition,
)


def analyze_run(path) -> Analysis:
    """Analyse a finished run directory and write its analysis.json (atomically).

    Raises:
      RunDirError: the directory is missing, unfinished, or has too few points.
    """
    run = RunDir(path).existing()
    spec, meta = run.spec(), run.meta()
    if meta is None or not meta.complete:
        raise RunDirError(
            f"{run.path} is unfinished ({meta.steps_done if meta else 0} of "
            f"{spec.train.steps} steps); run `phasevae sweep` on it again to finish it"
        )
    try:
        result = analyze(
            run.metrics(),
            meta.spectrum,
            spec.model.kl_dims(meta.spectrum.get("dim", 0)),
        )
    except ValueError as e:
        raise RunDirError(f"{run.path}: cannot fit: {e}") from None
    result = dataclasses.replace(
        result,
        transitions=tuple(
            dataclasses.replace(t, advice=advise(run.path, spec, meta, t))
            for t in result.transitions
        ),
    )
    run.write_analysis(result.to_json())
    return result


def analyze(metrics: pd.DataFrame, spectrum: dict, latent_dim: int) -> Analysis:
    """The analysis (analysis.json's record) of a finished sweep's metrics table.

    Raises:
      ValueError: fewer than 4 sigma^2 values on a curve.
    """
    columns = ["kl", *(f"kl_dim_{j}" for j in range(latent_dim)), "mi"]
    columns += [f"var_dim_{j}" for j in range(latent_dim)]
    columns += [c for c in ("active_directions", GAIN) if c in metrics]
    own = ("usage_dim_", "kl_layer_", "mi_step_")  # a model's own columns
    columns += [c for c in metrics if c.startswith(own)]
    with np.errstate(invalid="ignore", over="ignore"):  # diverged points: NaN, inf
        table = rank_dims(settle(metrics, columns), latent_dim)
    axes = curve_axes(table)
    stored = np.asarray(spectrum["eigenvalues"], np.float64)
    lam_eval = spectrum.get("lambda_max_eval")  # absent in runs made before it
    transitions, skipped = [], []
    for key, group in table.groupby(axes, sort=True):
        values = dict(zip(axes, key if isinstance(key, tuple) else (key,), strict=True))
        rows = metrics[metrics["point_id"].isin(group["point_id"])]
        ev = theory.curve_eigenvalues(spectrum, values)
        # the evaluation subset's top value, moved as the curve's criterion moves
        scaled = lam_eval and lam_eval * ev[0] / stored[0]
        try:
            t = _transition(group, rows, values, ev, latent_dim, scaled)
        except ValueError as e:  # e.g. every point of this curve diverged
            skipped.append(
                {**{k: _num(v) for k, v in values.items()}, "reason": str(e)}
            )
            continue
        transitions.append(t)
    if not transitions:
        raise ValueError(
            "no curve can be fitted: "
            + "; ".join(f"{curve_label(s)}: {s['reason']}" for s in skipped[:4])
        )
    return Analysis(
        spectrum=Spectrum(
            eigenvalues=tuple(float(v) for v in stored), lambda_max=float(stored[0])
        ),
        latent_dim=latent_dim,
        settings={
            "min_increment": MIN_INCREMENT,
            "level": LEVEL,
            "active_kl": COLLAPSED_KL,
        },
        transitions=tuple(transitions),
        skipped=tuple(skipped),  # curves that could not be fitted, and why
        hysteresis=tuple(hysteresis(table) if "direction" in table else []),
        boundary=boundary(transitions, float(stored[0])),
        boundary_by=tuple(boundary_by_group(transitions, float(stored[0]), axes)),
        scaling=scaling_collapse(table),
        scaling_by=tuple(scaling_by_group(table)),
        points=tuple(_points(table)),
    )


def curve_label(curve: dict) -> str:
    """A curve's axis values as text, for messages: "beta=1, learning_rate=2"."""
    return ", ".join(
        f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in curve.items()
        if k != "reason"
    )


def _transition(
    group: pd.DataFrame,
    rows: pd.DataFrame,
    values: dict,
    ev: np.ndarray,
    k: int,
    lam_eval: float | None,
) -> Transition:
    """One curve: ``group`` its per-point table, ``rows`` its metrics rows;
    ``lam_eval`` the top eigenvalue of the evaluation subset."""
    beta = values.get("beta", 1.0)
    usable = group[~group["diverged"]]
    if usable["sigma2"].nunique() < 4:
        raise ValueError(
            f"only {usable['sigma2'].nunique()} usable (not diverged) sigma2 values; "
            "a fit needs at least 4"
        )
    settled = usable[usable["settled"]]
    trusted = settled["sigma2"].nunique() >= 4
    data = settled if trusted else usable
    fit, s2c, ci, method, seeds = fit_curve(data)
    est = estimate.estimate_transition(rows, k, float(ev[0]), lam_eval)
    predicted = theory.thresholds(ev, theory.weight(values), k)
    jumps = derivative_jumps(fit)
    for j in jumps:
        # the theory's jump at a threshold: slope -1/2 -> 0 in u for one dim
        j["theory_d1_jump_ln"] = 0.5
        j["theory_d1_jump"] = 0.5 / j["sigma2"]
        j["theory_d2_jump"] = -0.5 / j["sigma2"] ** 2
    theory_s2c = float(predicted[0]) if beta > 0 else None
    s2c_est = est.sigma2_c
    return Transition(
        **{f.name: getattr(est, f.name) for f in dataclasses.fields(est)},
        curve={k_: _num(v) for k_, v in values.items()},
        theory_sigma2_c=theory_s2c,
        rel_error=None
        if s2c_est is None or not theory_s2c
        else s2c_est / theory_s2c - 1,
        off_theory=_off_theory(est, theory_s2c),
        theta_c=None if s2c_est is None else s2c_est * beta,
        converged=est.verdict == estimate.TRUSTED,
        sigma2_c_total_kl=s2c,
        ci_total_kl=_pair(ci),
        ci_method_total_kl=method,
        points_settled=bool(usable["settled"].all()),
        unsettled_sigma2=tuple(
            sorted(float(s) for s in usable.loc[~usable["settled"], "sigma2"].unique())
        ),
        fit_used_unsettled=not trusted,
        diverged_points=int(group["diverged"].sum()),
        seeds_sigma2_c=None if seeds is None else tuple(seeds),
        plateau=fit.c,
        slope_at_max_sigma2=-fit.s0,
        slopes_ln=tuple(fit.segment_slopes()),
        fit=Fit(**{k_: tuple(v) for k_, v in fit.knots().items()}),
        breakpoints=tuple(jumps),
        theory_thresholds=tuple(float(t) for t in predicted),
        per_dim=tuple(_per_dim(data, k, predicted)),
        information=readings.information(usable),
        advice=None,
    )


def _pair(v):
    return None if v is None else tuple(v)


def _off_theory(est: Estimate, theory_s2c: float | None) -> dict | None:
    """A finding, not an error: the transition sits off the theory's lambda_max / beta,
    with the shift (relative), its interval and the evidence:

    * ``"probe"``: collapsed models that are equilibria (stability probe) at sigma^2
      below lambda_max / beta: collapse there is stable, however long the training,
      so the transition is below the theory's (``stable_sigma2``: those points; their
      ``lambda_c_ratio``, lambda_c / lambda_max, says how much of the top direction
      the collapsed network can still reach: 0 when its units have died);
    * ``"trusted interval"``: a trusted interval that excludes lambda_max / beta.
    """
    if not theory_s2c or est.sigma2_c is None or est.ci is None:
        return None
    lo, hi = est.ci
    probe = est.probe
    if probe is not None:
        pts = probe["points"]
        stable = sorted(
            {
                s
                for s, bad in zip(pts["sigma2"], pts["unstable"], strict=True)
                if not bad and s < theory_s2c * math.exp(-estimate.PROBE_TOL)
            }
        )
        if stable:
            return {
                "shift": est.sigma2_c / theory_s2c - 1,
                "ci": [lo / theory_s2c - 1, min(hi, stable[0]) / theory_s2c - 1],
                "evidence": "probe",
                "stable_sigma2": stable,
                "lambda_c_ratio": probe["lambda_c_ratio"],
            }
    if est.verdict != estimate.TRUSTED or lo <= theory_s2c <= hi:
        return None
    return {
        "shift": est.sigma2_c / theory_s2c - 1,
        "ci": [lo / theory_s2c - 1, hi / theory_s2c - 1],
        "evidence": "trusted interval",
    }


def hysteresis(table: pd.DataFrame, tolerance: float = 0.01) -> list[dict]:
    """Up- against down-sweep KL curves of a hysteresis sweep (:func:`settle` table,
    column ``direction``), per group of the other axes, seeds averaged.

    ``area``: the integral of |KL_up - KL_down| over ln sigma^2 (nats; trapezoids on
    the shared sigma^2 values). The curves part where they differ by more than
    3 standard errors + ``tolerance`` nats: ``parted`` = [first, last] such sigma^2
    (None when they never do), ``max_gap`` the largest difference.
    """
    axes = curve_axes(table, leave_out=["direction"])
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


def _per_dim(points: pd.DataFrame, k: int, predicted: np.ndarray) -> list[PerDim]:
    """The collapse cascade: the r-th most informative latent dim's KL (see
    :func:`rank_dims`) fitted for its single threshold, against lambda_r / beta."""
    out = []
    for r in range(k):
        fit, s2c, ci, method, _ = fit_curve(points, f"kl_rank_{r}", max_breaks=1)
        out.append(
            PerDim(
                dim=r,
                sigma2_c=s2c,
                ci=_pair(ci),
                ci_method=method,
                theory=float(predicted[r]),
                slope_ln=-float(fit.increments.sum() + fit.s0),
            )
        )
    return out


def boundary(transitions: list[Transition], lambda_max: float) -> dict:
    """theta_c = beta * sigma_c^2 pooled over the curves (inverse-variance weights on
    ln theta_c from each interval), and the exponent of sigma_c^2 ~ beta^p (theory:
    p = -1) when there are at least 3 beta values. A curve whose KL free bits held up
    has no collapse to pool, and one whose decoder learned its variance has none in
    the grid's sigma^2. The pooled interval is symmetric in ln theta; a single curve
    keeps its own."""
    found = [t for t in transitions if locates_collapse(t) and t.ci]
    out = {"theory_theta_c": lambda_max, "theta_c": None, "ci": None}
    if not found:
        return out
    ln_t = np.log([t.theta_c for t in found])
    z = stats.norm.ppf(0.5 + LEVEL / 2)
    se = np.array([(math.log(t.ci[1]) - math.log(t.ci[0])) / (2 * z) for t in found])
    w = 1.0 / np.maximum(se, 1e-6) ** 2
    mean = float(np.sum(w * ln_t) / np.sum(w))
    half = z / math.sqrt(np.sum(w))
    ci = [math.exp(mean - half), math.exp(mean + half)]
    if len(found) == 1:  # one curve: its own (asymmetric) interval, not the pooled
        ci = [found[0].beta * c for c in found[0].ci]
    out.update(theta_c=math.exp(mean), ci=ci, rel_error=math.exp(mean) / lambda_max - 1)
    betas = np.array([t.beta for t in found])
    if len(np.unique(betas)) >= 3 and np.all(betas > 0):
        res = stats.linregress(np.log(betas), np.log([t.sigma2_c for t in found]))
        out.update(beta_exponent=float(res.slope), beta_exponent_se=float(res.stderr))
    return out


def locates_collapse(t: Transition) -> bool:
    """Whether a transition's sigma_c^2 is a collapse threshold: found, and not the
    kink where a free-bits floor takes over or one in a learned variance's starts."""
    return t.sigma2_c is not None and t.verdict not in (
        estimate.HELD,
        estimate.LEARNED,
    )


def boundary_by_group(
    transitions: list[Transition], lambda_max: float, axes: list[str]
) -> list[dict]:
    """:func:`boundary` separately for each value of the curve axes other than beta
    (a remedy's strength, a decoder, a learning rate): the pooled boundary mixes
    settings that may move the transition. [] when no such axis varies. Each
    group's theory is its curves' own criterion (a ladder's kappa or a VRNN's state
    noise move it), lambda_max where they have none."""
    varying = [
        a for a in axes if a != "beta" and len({t.curve[a] for t in transitions}) > 1
    ]
    groups: dict[tuple, list[Transition]] = {}
    for t in transitions if varying else []:
        groups.setdefault(tuple(t.curve[a] for a in varying), []).append(t)

    def criterion(ts: list[Transition]) -> float:
        own = [t.theory_sigma2_c * t.beta for t in ts if t.theory_sigma2_c]
        return own[0] if own else lambda_max

    return [
        {**dict(zip(varying, key, strict=True)), **boundary(ts, criterion(ts))}
        for key, ts in groups.items()  # in the transitions' (sorted) order
    ]


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
    axes = [a for a in curve_axes(table, ["beta"]) if table[a].nunique() > 1]
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
    cols += [c for c in ("active_directions", GAIN) if c in table]
    return [{k: _num(v) for k, v in r.items()} for r in table[cols].to_dict("records")]


def _num(v):
    if isinstance(v, np.generic):
        return v.item()
    return v
