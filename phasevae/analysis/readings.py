"""What a curve shows besides its collapse transition, read from its per-point table
(one row per grid point, :func:`phasevae.analysis.fit.settle`'s columns): whether a
free-bits floor holds its KL up, and what happens to the information the encoder
carries, for a ladder latent where each layer's KL collapses, and for a VRNN where
each step's information goes. No JAX."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from phasevae.analysis.constants import GAIN, LAYER, NO_INFORMATION
from phasevae.analysis.fit import fit_curve

# a top-dim KL at least this fraction of free_bits at the largest sigma^2 is held by
# the floor, not collapsed
HELD_FRACTION = 0.5


def floor(points: pd.DataFrame, free_bits: float) -> dict | None:
    """With free bits lambda > 0: the top dim's KL at the largest sigma^2 (seeds
    averaged) and whether the floor holds it there (>= ``HELD_FRACTION`` lambda).
    Then the curve has no collapse: its kink (``sigma2_c``) is where the KL meets the
    floor, and the verdict says so."""
    if not free_bits:
        return None
    top = points.loc[points["sigma2"] == points["sigma2"].max(), "kl_rank_0"].mean()
    return {
        "free_bits": float(free_bits),
        "kl_top_at_max_sigma2": float(top),
        "held": bool(top >= HELD_FRACTION * free_bits),
    }


def information(points: pd.DataFrame) -> dict:
    """I(x; z) along the curve (seeds averaged): at both ends of sigma^2 and the
    smallest sigma^2 from which it stays below ``NO_INFORMATION`` nats (None: never),
    which is where the encoder's information collapses even where the KL cannot (a
    hyperspherical latent of fixed concentration has a constant KL); and the active
    directions (the participation ratio of E[z|x], 0 .. k), the decoder's largest
    gain (the top singular value of d f / d z, 0 when f ignores z) and, for a
    categorical latent, the codes' mean usage (perplexity, 1 .. K) at both ends; a
    ladder's layers (:func:`_layer`) and a VRNN's steps (:func:`_steps`)."""
    mi = points.groupby("sigma2")["mi"].mean().sort_index()
    out = {
        "mi_at_min_sigma2": float(mi.iloc[0]),
        "mi_at_max_sigma2": float(mi.iloc[-1]),
        "mi_lost_sigma2": _lost(mi),
    }
    if "active_directions" in points:  # runs made before it have none
        d = points.groupby("sigma2")["active_directions"].mean().sort_index()
        out["directions_at_min_sigma2"] = float(d.iloc[0])
        out["directions_at_max_sigma2"] = float(d.iloc[-1])
    if GAIN in points:  # nor these
        g = points.groupby("sigma2")[GAIN].mean().sort_index()
        out["decoder_gain_at_min_sigma2"] = float(g.iloc[0])
        out["decoder_gain_at_max_sigma2"] = float(g.iloc[-1])
    usage = [c for c in points if c.startswith("usage_dim_")]
    if usage:
        u = points.groupby("sigma2")[usage].mean().mean(axis=1).sort_index()
        out["usage_at_min_sigma2"] = float(u.iloc[0])
        out["usage_at_max_sigma2"] = float(u.iloc[-1])
    if LAYER in points:
        out["layers"] = [_layer(points, c) for c in (LAYER, "kl_layer_1")]
    if steps := step_columns(points):
        out["steps"] = _steps(points.groupby("sigma2")[steps].mean().sort_index())
    return out


def step_columns(points: pd.DataFrame) -> list[str]:
    """A VRNN's ``mi_step_t`` columns in step order ([] for other models)."""
    steps = [c for c in points if re.fullmatch(r"mi_step_\d+", c)]
    return sorted(steps, key=lambda c: int(c.rsplit("_", 1)[1]))


def _lost(mi: pd.Series) -> float | None:
    """The smallest sigma^2 (``mi``'s index, ascending) from which I(x; z) stays
    below ``NO_INFORMATION``; None: never."""
    low = (mi < NO_INFORMATION).to_numpy()
    above = np.logical_and.accumulate(low[::-1])[::-1]  # low here and everywhere above
    lost = mi.index[above]
    return float(lost[0]) if len(lost) else None


def _steps(mi: pd.DataFrame) -> dict:
    """A VRNN's temporal collapse, from I(x; z_t) per step (columns, in step order;
    rows: sigma^2 ascending, seeds averaged): the fraction of steps whose latent
    carries information at each sigma^2, and the sigma^2 from which each step's
    stays below ``NO_INFORMATION`` (None: never)."""
    live = (mi >= NO_INFORMATION).mean(axis=1)
    return {
        "informative_fraction": [[float(s), float(f)] for s, f in live.items()],
        "mi_lost_sigma2": [_lost(mi[c]) for c in mi],
    }


def _layer(points: pd.DataFrame, column: str) -> dict:
    """One layer of a ladder latent: its KL (the sum over its dims, seeds averaged)
    at both ends of sigma^2, and where it collapses, fitted as the total KL is
    (one break, :func:`phasevae.analysis.fit.fit_curve`; None: no transition)."""
    _, s2c, ci, method, _ = fit_curve(points, column, max_breaks=1)
    kl = points.groupby("sigma2")[column].mean().sort_index()
    return {
        "layer": int(column.rsplit("_", 1)[1]),
        "sigma2_c": None if s2c is None else float(s2c),
        "ci": None if ci is None else [float(ci[0]), float(ci[1])],
        "ci_method": method,
        "kl_at_min_sigma2": float(kl.iloc[0]),
        "kl_at_max_sigma2": float(kl.iloc[-1]),
    }
