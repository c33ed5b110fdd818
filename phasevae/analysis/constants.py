"""The thresholds the analysis and the figures share, the grid's axes and the curve
key: each defined here once, with one name and one meaning (docs/analysis.md explains
the words). Imports nothing of the package but the spec's axis defaults.
"""

from __future__ import annotations

from collections.abc import Iterable

from phasevae.spec.types import LATER_AXES

# nats: a latent dim with more KL than this is an active unit, and a point whose top
# dim has less is collapsed (the summary's "KL ~ 0", the estimate's collapsed side)
COLLAPSED_KL = 0.01
# nats: no point's KL is trusted to better than this (the fit's noise floor, the
# settle test's absolute tolerance, the relaxation band's margin)
KL_RESOLUTION = 2e-3
# nats: where the figures' log KL axes bottom out (smaller values are drawn there)
KL_AXIS_MIN = 1e-4
# nats: I(x; z) below this carries no information
NO_INFORMATION = 0.01
# the metrics column of the decoder's largest gain (the top singular value of its
# Jacobian in z, engine/step.py: Metrics.decoder_gram); runs made before it lack it
GAIN = "decoder_gain_0"
# the metrics column of a ladder latent's bottom layer's KL (the top's: kl_layer_1)
LAYER = "kl_layer_0"

GRID_AXES = (  # the metrics table's axis columns (those a grid has)
    "sigma2",
    "beta",
    "learning_rate",
    "seed",
    *LATER_AXES,  # the remedies' traced axes
    "direction",  # a hysteresis sweep's +1 (sigma^2 up) or -1 (down); not traced
    "decoder",  # static: the decoder's hidden widths, "32-64" or "linear"
    "skip",  # static: the skip path from x into the decoder
)
POINT_ONLY = ("sigma2", "seed")  # the axes a curve runs along or averages over


def curve_axes(columns: Iterable[str], leave_out: Iterable[str] = ()) -> list[str]:
    """The curve key: the grid axes among ``columns`` but sigma^2 and seed (and
    ``leave_out``), in GRID_AXES order. One curve per value of these is one
    KL(sigma^2) function, one transition."""
    have, out = set(columns), set(POINT_ONLY) | set(leave_out)
    return [a for a in GRID_AXES if a in have and a not in out]
