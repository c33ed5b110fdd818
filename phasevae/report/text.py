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
    its settings against its own criterion: the pooled one mixes settings that may
    move the transition."""
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
            f"{hi:.4g}] (theory {theory:.4g}{err})"
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
    per beta (per curve when another axis varies)."""
    per, who = _curve_names(result)
    notes = [
        f"  {who(t)}: train longer over sigma^2 in "
        f"[{t.train_longer.sigma2[0]:.4g}, {t.train_longer.sigma2[1]:.4g}]"
        f", to about {t.train_longer.steps} steps"
        for t in result.transitions
        if t.train_longer
    ]
    parts = [
        f"  {who(t)}: interval = statistical "
        f"-{t.ci_statistical[0]:.3f} / +{t.ci_statistical[1]:.3f} and "
        f"finite-training -{t.ci_finite_training[0]:.3f} / "
        f"+{t.ci_finite_training[1]:.3f} (in ln sigma^2)"
        for t in result.transitions
        if t.ci_statistical and t.ci_finite_training is not None
    ]
    jumps = [
        f"  {who(t)}: the top dim's KL falls to 0 between sigma^2 = "
        f"{t.jump[0]:.4g} and {t.jump[1]:.4g} faster than a kink can (a jump "
        "or a steep fall); the transition is somewhere in that cell: add sigma^2 "
        "there (grid.sigma2.refine) to narrow it"
        for t in result.transitions
        if t.jump
    ]
    blind = [
        f"  {who(t)}: too few evaluations to measure the finite-training "
        "part, so no interval: evaluate more often (train.eval_every) or train longer"
        for t in result.transitions
        if t.sigma2_c is not None and t.ci is None and t.ci_finite_training is None
    ]
    probes = [probe_line(t, who(t)) for t in result.transitions if t.probe]
    held = [
        f"  {who(t)}: trusted for {t.holds_for_steps} steps of "
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
        for line in _advice_lines(who(t), t.advice)
    ]
    extra = [f"interval parts, {per}:", *parts] if parts else []
    extra += [f"discontinuous collapse, {per}:", *jumps] if jumps else []
    extra += [f"no interval, {per}:", *blind] if blind else []
    extra += (
        [f"stability probe of the collapsed points, {per}:", *probes] if probes else []
    )
    extra += [f"verdict 'train longer', {per}:", *notes] if notes else []
    extra += [f"for this training length, {per}:", *held] if held else []
    extra += [f"next, {per}:", *nexts] if nexts else []
    return extra


def _drift(t: Transition) -> str:
    d = t.drift_per_doubling
    return "by an unmeasured amount" if d is None else f"{100 * d:+.1f} %"


def _curve_names(result: Analysis):
    """("per beta", a transition's beta) or, when an axis other than beta varies
    among the transitions, ("per curve", its varying axes' values)."""
    ts = result.transitions
    axes = list(ts[0].curve) if ts else []
    varying = [a for a in axes if len({t.curve.get(a) for t in ts}) > 1]
    if set(varying) <= {"beta"}:
        return "per beta", lambda t: f"{t.beta:g}"
    return "per curve", lambda t: _setting({a: t.curve[a] for a in varying})


def _advice_lines(who: str, a: dict) -> list[str]:
    lines = [f"  {who}: {a['why']}:", f"      {a['command']}"]
    if a.get("alternative"):
        alt = a["alternative"]
        lines += [f"    or, {alt['why']}:", f"      {alt['command']}"]
    return lines


def probe_line(t: Transition, who: str = "") -> str:
    """The stability probe's line for ``t``, labelled ``who`` (default: its beta)."""
    p, who = t.probe, who or f"{t.beta:g}"
    line = (
        f"  {who}: {p['collapsed']} collapsed, {len(p['unstable_sigma2'])} "
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
