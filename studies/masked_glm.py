"""Time of a masked head's GLM fit (results/README.md, 'One device per core, ...'):
the bench's 16x16 patches, binarised at their median, a 3-layer radius-1 stack's
field (21 offsets). ``masked_fit`` (blockwise) against the fit of the explicit
design it stands for (a one-hot intercept column per pixel, then the
neighbours), on the first N patches; with ``--tiles T`` instead, the patches tiled
T times and the whole criterion (``head_whitening``) timed for the Gaussian and
the Bernoulli head.

    python studies/masked_glm.py N
    python studies/masked_glm.py --tiles T
"""

from __future__ import annotations

import sys
import time

import numpy as np

from phasevae.data import head_whitening
from phasevae.data.glm import fit, masked_fit, neighbours
from phasevae.spec import stack_offsets
from phasevae.tools.bench import bench_data

REACH = stack_offsets(1, 3)


def binarised(x: np.ndarray) -> np.ndarray:
    return (x > np.median(x)).astype(np.float64)


def against_the_design(n: int) -> None:
    x = binarised(bench_data("conv")[:n])
    t0 = time.perf_counter()
    blockwise = np.concatenate(masked_fit(x, (16, 16), REACH, "bernoulli"))
    t1 = time.perf_counter()
    eye = np.eye(x.shape[1])
    views = neighbours(x, (16, 16), REACH).reshape(-1, len(REACH))

    def design(lo, hi):
        return np.hstack([eye[np.arange(lo, hi) % x.shape[1]], views[lo:hi]])

    explicit = fit(design, x.reshape(-1), "bernoulli")
    t2 = time.perf_counter()
    gap = np.abs(blockwise - explicit).max()
    print(
        f"{n} images, {len(REACH)} offsets: blockwise {t1 - t0:.1f} s, explicit "
        f"design {t2 - t1:.1f} s, largest difference {gap:.1e}"
    )


def whole_criterion(tiles: int) -> None:
    x = np.tile(bench_data("conv"), (tiles, 1))
    for likelihood, data in (("gaussian", x), ("bernoulli", binarised(x))):
        t0 = time.perf_counter()
        head_whitening(data.astype(np.float32), likelihood, 1.0, 0, 1, 3, (16, 16), "x")
        print(f"{likelihood}, {len(x)} images: {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    if sys.argv[1] == "--tiles":
        whole_criterion(int(sys.argv[2]))
    else:
        against_the_design(int(sys.argv[1]))
