"""What to do next about a transition, as the command that does it: every piece of
advice the analysis gives (train longer, add sigma^2 where the KL jumps, widen a grid
that holds no transition, sharpen a wide interval) is a command that continues the
same run directory, rounded to what the spec accepts. No JAX.

* A plain sweep (every point in lockstep) continues to a larger ``train.steps`` in
  place (``phasevae sweep RUN/spec.toml --out RUN --set train.steps=N``, N a multiple
  of ``train.eval_every``): its models go on from their checkpoint and only the new
  steps are trained. ``phasevae locate RUN`` continues it more cheaply, into
  ``RUN/locate``: only the points that set the kink train longer, and sigma^2 are
  added inside the interval.
* A ``locate`` run continues with a larger budget.
* An adaptive sweep (slots, retire, refine, until) cannot be continued (its finished
  points' states are gone): ``locate`` on its spec starts anew beside it.
"""

from __future__ import annotations

import math
import shlex
from pathlib import Path

from phasevae.analysis.estimate import LONGER, NONE, TRUSTED, half_width
from phasevae.spec import Spec
from phasevae.store.records import Transition
from phasevae.store.runmeta import RunMeta

SHARP = 0.02  # a trusted interval wider than +-this (relative) is worth sharpening


def round_steps(steps: int, every: int) -> int:
    """``steps`` rounded up to a multiple of ``every`` (what train.steps accepts)."""
    return int(math.ceil(steps / every) * every)


def advise(run: Path, spec: Spec, meta: RunMeta, t: Transition) -> dict | None:
    """The next step for transition ``t`` of the run at ``run``: ``why`` (one line)
    and ``command`` (a shell line), with ``alternative`` where there is a cheaper
    or a different route; None when there is nothing to do."""
    q = shlex.quote(str(run))
    verdict = t.verdict
    half = half_width(t.sigma2_c, t.ci)
    locate = meta.locate
    if locate is not None:
        result = locate.get("result") or {}
        budget = int(result.get("budget") or 0)
        if verdict == TRUSTED and half <= SHARP:
            return None
        source = shlex.quote(str(locate["source"]))
        return {
            "why": "the budget was spent before the answer was trusted and sharp",
            "command": f"phasevae locate {source} --out {q} --budget {2 * budget}",
        }
    wide = verdict == TRUSTED and SHARP < half < math.inf
    if verdict not in (LONGER, NONE) and not wide:
        return None
    if spec.adaptive() or spec.static_groups():
        anew = shlex.quote(f"{run}-locate")
        return {
            "why": "this sweep cannot be continued (adaptive or static groups): "
            "locate on its spec starts anew beside it",
            "command": f"phasevae locate {q}/spec.toml --out {anew}",
        }
    cheaper = {
        "command": f"phasevae locate {q}",
        "why": f"into {run / 'locate'}, continuing only the points that set the "
        "kink and adding sigma^2 inside the interval until it is trusted and "
        f"within +-{100 * SHARP:g} %",
    }
    if verdict == LONGER and t.train_longer:
        steps = round_steps(t.train_longer.steps, spec.train.eval_every)
        more = meta.grid_size * (steps - spec.train.steps)
        return {
            "why": f"train every point to {steps} steps, continuing this run "
            f"({more:,} model-steps more)",
            "command": f"phasevae sweep {q}/spec.toml --out {q} --set "
            f"train.steps={steps}",
            "alternative": cheaper,
        }
    why = (
        "no transition in the grid: widen it"
        if verdict == NONE
        else f"sharpen the interval (+-{100 * half:.1f} %)"
        if wide
        else "locate the transition"
    )
    return {**cheaper, "why": why + f": {cheaper['why']}"}
