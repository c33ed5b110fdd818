"""A masked head's power as a grid axis (issue 30): the phase diagram over beta x
the radius r of a masked-convolution head (PixelCNN's mask A; ``model.mask`` = 3,
``grid.context`` = [0, 1, 2, 3]: one compiled program, a point of radius r holds
the weights beyond r at 0) on scikit-learn's digits (8x8, pixels / 16) at
sigma^2 = 0.5. One sweep per decoder trains 11 beta (0.25 to 8, factors of sqrt 2)
x every radius for 3000 steps, seed 0: the linear VAE and the default MLP with one
masked layer, the MLP with a PixelCNN stack of 2 layers (8 channels), and the
conv VAE (channels 16-32, kernel 3) with one masked layer. The
derived boundary is beta_c(r) = lambda_max / sigma^2 of the innovations of the best
shared linear prediction from the radius-r mask (the stack's: from its receptive
field, ``stack_offsets(r, 2)``; docs/science.md, 'Autoregressive decoders').

    python studies/radius_diagram.py

writes results/autoregressive/radius/<decoder>/ (the runs: a rerun reuses them),
radius.md, radius.json and radius.png.
"""

from __future__ import annotations

import json

from autoregressive import ROOT
from context_diagram import figure, run, table

OUT = ROOT / "radius"
RADII = (0, 1, 2, 3)
SIGMA2 = 0.5
DECODERS = {  # name: (architecture, head)
    "linear": ("linear", {"mask": 3}),
    "mlp": ("mlp", {"mask": 3}),
    "pixelcnn": ("mlp", {"mask": 3, "mask_layers": 2, "mask_channels": 8}),
    "conv": ("mlp", {"kind": "conv", "mask": 3}),  # channels 16-32, kernel 3
}
PANELS = (
    ("linear", "kl", "linear VAE, one masked layer"),
    ("mlp", "kl", "MLP VAE, one masked layer"),
    ("pixelcnn", "kl", "MLP VAE, PixelCNN stack of 2"),
    ("conv", "kl", "conv VAE, one masked layer"),
)


def sweep(name: str) -> list[dict]:
    """The rows of one decoder's sweep (:func:`context_diagram.run`)."""
    arch, head = DECODERS[name]
    data = {"source": "digits"}
    return run(arch, OUT, data, head, RADII, SIGMA2, name)


if __name__ == "__main__":
    rows = [row for name in DECODERS for row in sweep(name)]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "radius.json").write_text(json.dumps(rows, indent=1))
    (OUT / "radius.md").write_text(table(rows, "radius r"))
    figure(
        rows,
        OUT / "radius.png",
        PANELS,
        xlabel="mask radius r (0: no head)",
        ylabel=rf"$\beta$ ($\sigma^2$ = {SIGMA2:g})",
        title="scikit-learn digits (8x8): total KL over beta x the masked head's "
        "radius r, 3000 steps, seed 0",
    )
    print(table(rows, "radius r"))
