"""The plan of a sweep, from the spec alone: the grid (Cartesian product of the traced
axes) with a stable id per point, its shards, the static configuration that fixes the
compiled program, and the memory it will need. Nothing here touches a device.
"""

from __future__ import annotations

import hashlib
import itertools
import json

import numpy as np
import pandas as pd

from phasevae.engine.step import COMPUTE, Static
from phasevae.models.registry import build, example_shape
from phasevae.safeio import brief
from phasevae.spec import LATER_AXES, Spec, SpecError, axis_values


def point_id(values: dict) -> str:
    """Stable 12-hex-digit id of a grid point from its axis values."""
    kept = {k: v for k, v in values.items() if LATER_AXES.get(k, object()) != v}
    canonical = json.dumps({k: kept[k] for k in sorted(kept)}, sort_keys=True)
    return hashlib.sha1(canonical.encode()).hexdigest()[:12]


def grid_table(spec: Spec) -> pd.DataFrame:
    """One row per grid point: ``point_id`` and one column per axis, in grid order
    (and ``direction``, +1 or -1, in a hysteresis sweep: each point twice).

    Raises:
      SpecError: an axis lists the same value twice.
    """
    axes = spec.axes()
    for name, values in axes.items():
        if len(set(values)) != len(values):
            twice = sorted({v for v in values if values.count(v) > 1})
            key = "seeds" if name == "seed" else name
            raise SpecError(
                f"grid.{key} gives a value twice (a range with min = max, or values "
                f"closer than float precision): {brief(twice)}"
            )
    if spec.train.hysteresis:
        axes["direction"] = (1.0, -1.0)
    df = pd.DataFrame(list(itertools.product(*axes.values())), columns=list(axes))
    df["seed"] = df["seed"].astype(np.int64)
    ids = [point_id(r) for r in df.to_dict("records")]
    df.insert(0, "point_id", ids)
    return df


def select_shard(grid: pd.DataFrame, shard: tuple[int, int] | None) -> pd.DataFrame:
    """The points of shard i of n: with the points sorted by stable id, every n-th
    from the i-th. The split depends on the grid alone, so every machine computes
    the same one, and shard sizes differ by at most one."""
    if shard is None:
        return grid
    i, n = shard
    rank = np.argsort(np.argsort(grid["point_id"].to_numpy()))
    return grid[rank % n == i].reset_index(drop=True)


def static_config(
    spec: Spec, data_dim: int, image_shape: tuple[int, ...] | None = None
) -> Static:
    """What fixes the compiled program: the spec's static options and the module
    (:mod:`phasevae.models.registry`) for examples of the data's shape."""
    m, t = spec.model, spec.train
    shape = example_shape(m.kind, data_dim, image_shape)
    return Static(
        data_dim=data_dim,
        latent_dim=m.latent_dim,
        encoder=m.encoder,
        decoder=m.decoder,
        batch_size=t.batch_size,
        chunk_steps=t.eval_every,
        optimizer=t.optimizer,
        seed=t.seed,
        shared_batches=t.shared_batches,
        learned_sigma2=m.sigma2 == "learned",
        skip=m.skip,
        latent=m.latent,
        concentration=m.concentration,
        latent_categories=m.latent_categories,
        estimator=m.estimator,
        temperature=m.temperature,
        top_dim=m.top_dim,
        top_skip=m.top_skip,
        likelihood=m.likelihood,
        dispersion=m.dispersion or 1.0,
        learned_dispersion=m.learned_dispersion,
        categories=m.categories,
        context=m.context,
        recurrent=m.recurrent,
        mask=m.mask,
        image=tuple(image_shape[:2]) if m.mask and image_shape else (),
        mask_layers=m.mask_layers,
        mask_channels=m.mask_channels,
        module=build(m, shape, COMPUTE[t.precision]),
        example_shape=shape,
        free_bits=any(axis_values(spec.grid.free_bits)),
        mi_term=any(axis_values(spec.grid.mi_weight)),
        entropy_term=any(axis_values(spec.grid.entropy_target)),
        precision=t.precision,
    )


def estimate_bytes(
    spec: Spec,
    data_shape: tuple[int, int],
    models: int,
    size: tuple[int, int] | None = None,
    in_sequence: bool = False,
) -> int:
    """An estimate of what one device holds for ``models`` models of ``spec`` on
    data of ``data_shape`` (n, N), from the spec alone: float32 parameters, their
    gradients and Adam's two moments; the activations of a training step (forward
    and backward) and of an evaluation, of every model, or of one with the models
    ``in_sequence`` (:attr:`phasevae.engine.step.Static.in_sequence`); and the
    replicated training and evaluation data. Made before anything is allocated; the
    compiled program's own figure is checked after compiling. ``size``:
    (parameters, activations per example) of a module other than the MLP
    (:func:`phasevae.models.registry.footprint`)."""
    n, dim = data_shape
    m, k = spec.model, spec.model.latent_dim
    skip = 0 if m.skip == "none" else dim
    widths_enc = [dim, *m.encoder, 2 * k]
    widths_dec = [k + skip, *m.decoder, dim]
    head, head_units = _head_size(m, dim)
    params = head + sum(
        (a + 1) * b for w in (widths_enc, widths_dec) for a, b in itertools.pairwise(w)
    )
    units = sum(widths_enc) + sum(widths_dec) + head_units
    if size is not None:
        params, units = size
    evals = min(spec.data.eval_samples, n)
    working = 3 * spec.train.batch_size * units + 2 * evals * units
    if size is None:
        working += evals * (max(m.encoder or (dim,)) + dim)  # the collapse probe
    data = n * dim + evals * dim
    return 4 * (models * 4 * params + (1 if in_sequence else models) * working + data)


def _head_size(m, dim: int) -> tuple[int, int]:
    """An autoregressive head's (parameters, activations per example) for data of
    ``dim`` features: a context's weights, a GRU's (3 gates' weights and biases,
    the readout), a masked convolution's, or a PixelCNN stack's (each layer's
    weights and its masked neighbourhoods, gathered for its matmul)."""
    h = m.recurrent
    params = dim * m.context + (3 * h * h + 7 * h + h + 1 if h else 0)
    offsets = 2 * m.mask * (m.mask + 1)  # mask A's; mask B's is one more
    if m.mask_layers == 1:
        return params + offsets, dim * offsets
    c, inner = m.mask_channels, m.mask_layers - 2
    params += offsets * c + c + inner * ((offsets + 1) * c * c + c) + (offsets + 1) * c
    units = dim * (offsets + c + (inner + 1) * ((offsets + 1) * c + c))
    return params, units
