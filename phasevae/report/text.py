"""The analysis as text: the transition table, its notes and the boundary lines
that ``phasevae analyze`` prints and the HTML report shows."""

from __future__ import annotations

from typing import TYPE_CHECKING

from phasevae.spec import LATER_AXES

if TYPE_CHECKING:  # the command line imports this before JAX, pandas or the store
    from phasevae.store.records import Analysis, Transition


def transition_table(result: Analysis) -> str:
    """The table ``phasevae analyze`` prints: one row per transition, then the
    notes (interval parts, stability probe, where to train longer)."""
    table = transition_frame(result).to_string(
        index=False, float_format=lambda v: f"{v:.4g}", na_rep="-"
    )
    return "\n".join([table, *transition_notes(result)])


BOUNDARY_KEYS = {"theory_theta_c", "theta_c", "ci", "rel_error"}
BOUNDARY_KEYS |= {"beta_exponent", "beta_exponent_se"}


def boundary_lines(result: Analysis) -> list[str]:
    """The pooled boundary theta_c = beta sigma_c^2 against lambda_max, then, when an
    axis other than beta varies (a remedy's strength, ...), the boundary of each of
    its settings: the pooled one mixes settings that may move the transition."""
    by = result.boundary_by or []
    pooled = (result.boundary or {}, "pooled over every setting" if by else "")
    lines = []
    for b, where in [pooled, *((g, _setting(g)) for g in by)]:
        head = f"{where}: " if where else ""
        if b.get("theta_c") is None:
            lines += [f"{head}no transition located with an interval"] if where else []
            continue
        (lo, hi), theory = b["ci"], b["theory_theta_c"]
        err = f", {100 * (b['theta_c'] / theory - 1):+.1f} %" if theory > 0 else ""
        lines.append(
            f"{head}theta_c = beta * sigma_c^2 = {b['theta_c']:.4g} [{lo:.4g}, "
            f"{hi:.4g}] (theory lambda_max = {theory:.4g}{err})"
        )
    return lines


def _setting(group: dict) -> str:
    return ", ".join(
        f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in group.items()
        if k not in BOUNDARY_KEYS
    )


def transition_frame(result: Analysis):
    """One row per transition of an analysis: its varying axes, sigma_c^2 with its
    95 % interval, the prediction, the error, the verdict and the per-dim kinks."""
    import pandas as pd

    rows = []
    for t in result.transitions:
        c = t.curve
        axes = {k: c[k] for k in ("beta", "learning_rate") if k in c}
        axes.update({k: c[k] for k, d in LATER_AXES.items() if c.get(k, d) != d})
        axes.update({k: c[k] for k in ("direction", "decoder", "skip") if k in c})
        ci = t.ci or [float("nan")] * 2
        rows.append(
            {
                **axes,
                "sigma2_c": t.sigma2_c,
                "ci_low": ci[0],
                "ci_high": ci[1],
                "predicted": t.theory_sigma2_c,
                "rel_err_%": None if t.rel_error is None else 100 * t.rel_error,
                "verdict": t.verdict or "-",
                "dims_c": "["
                + ", ".join(
                    "-" if d.sigma2_c is None else f"{d.sigma2_c:.3g}"
                    for d in t.per_dim
                )
                + "]",
                "dims_theory": "["
                + ", ".join(f"{d.theory:.3g}" for d in t.per_dim)
                + "]",
            }
        )
    return pd.DataFrame(rows)


def transition_notes(result: Analysis) -> list[str]:
    """Lines under the table: the interval's statistical and finite-training parts,
    jumps, missing intervals, the stability probe and the 'train longer' advice,
    per beta."""
    notes = [
        f"  {t.beta:g}: train longer over sigma^2 in "
        f"[{t.train_longer.sigma2[0]:.4g}, {t.train_longer.sigma2[1]:.4g}]"
        f", to about {t.train_longer.steps} steps"
        for t in result.transitions
        if t.train_longer
    ]
    parts = [
        f"  {t.beta:g}: interval = statistical "
        f"-{t.ci_statistical[0]:.3f} / +{t.ci_statistical[1]:.3f} and "
        f"finite-training -{t.ci_finite_training[0]:.3f} / "
        f"+{t.ci_finite_training[1]:.3f} (in ln sigma^2)"
        for t in result.transitions
        if t.ci_statistical and t.ci_finite_training is not None
    ]
    jumps = [
        f"  {t.beta:g}: the top dim's KL falls to 0 between sigma^2 = "
        f"{t.jump[0]:.4g} and {t.jump[1]:.4g} faster than a kink can (a jump "
        "or a steep fall); the transition is somewhere in that cell: add sigma^2 "
        "there (grid.sigma2.refine) to narrow it"
        for t in result.transitions
        if t.jump
    ]
    blind = [
        f"  {t.beta:g}: too few evaluations to measure the finite-training "
        "part, so no interval: evaluate more often (train.eval_every) or train longer"
        for t in result.transitions
        if t.sigma2_c is not None and t.ci is None and t.ci_finite_training is None
    ]
    probes = [probe_line(t) for t in result.transitions if t.probe]
    held = [
        f"  {t.beta:g}: trusted for {t.holds_for_steps} steps of "
        "training: collapse is absorbing (the collapsed points' units died), so "
        "the transition moves with the training length; it moved "
        f"{_drift(t)} per doubling of the steps"
        for t in result.transitions
        if t.holds_for_steps and t.verdict == "trusted"
    ]
    nexts = [
        line
        for t in result.transitions
        if t.advice
        for line in _advice_lines(t.beta, t.advice)
    ]
    extra = ["interval parts, per beta:", *parts] if parts else []
    extra += ["discontinuous collapse, per beta:", *jumps] if jumps else []
    extra += ["no interval, per beta:", *blind] if blind else []
    extra += (
        ["stability probe of the collapsed points, per beta:", *probes]
        if probes
        else []
    )
    extra += ["verdict 'train longer', per beta:", *notes] if notes else []
    extra += ["for this training length, per beta:", *held] if held else []
    extra += ["next, per beta:", *nexts] if nexts else []
    return extra


def _drift(t: Transition) -> str:
    d = t.drift_per_doubling
    return "by an unmeasured amount" if d is None else f"{100 * d:+.1f} %"


def _advice_lines(beta: float, a: dict) -> list[str]:
    lines = [f"  {beta:g}: {a['why']}:", f"      {a['command']}"]
    if a.get("alternative"):
        alt = a["alternative"]
        lines += [f"    or, {alt['why']}:", f"      {alt['command']}"]
    return lines


def probe_line(t: Transition) -> str:
    p, beta = t.probe, t.beta
    line = (
        f"  {beta:g}: {p['collapsed']} collapsed, {len(p['unstable_sigma2'])} "
        f"unstable (trapped), {len(p['dead_sigma2'])} dead; lambda_c / lambda_max "
        f"= {p['lambda_c_ratio']:.3f} near the kink"
    )
    off = t.off_theory
    if off and off["evidence"] == "probe":
        line += (
            f"; collapse is stable below lambda_max/beta (from sigma^2 = "
            f"{off['stable_sigma2'][0]:.4g}): the transition is off the theory by "
            f"{100 * off['shift']:+.1f} %"
        )
    if t.trapped:
        line += "; the estimate moved to the probe's threshold"
    return line
