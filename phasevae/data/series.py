"""Real time series that ship offline, inside matplotlib (a dependency of phasevae):
the sample data of its examples. ``data.source = "series"`` reads windows of
consecutive values of one of them, for sequence models (an autoregressive decoder,
``model.context``; the VRNN):

- ``membrane``: 12,000 samples of a recorded membrane potential
  (``membrane.dat``, float32);
- ``eeg``: 4 channels of 800 samples of an EEG recording (``eeg.dat``, float64,
  samples x channels); a window never crosses from one channel to another.
"""

from __future__ import annotations

import numpy as np

from phasevae.errors import DataError

SERIES = {  # name: (matplotlib's file, dtype, channels)
    "membrane": ("membrane.dat", "<f4", 1),
    "eeg": ("eeg.dat", "<f8", 4),
}


def segments(name: str) -> list[np.ndarray]:
    """The series ``name`` as float64 segments, one per channel."""
    from matplotlib import cbook

    file, dtype, channels = SERIES[name]
    raw = np.fromfile(cbook.get_sample_data(file, asfileobj=False), dtype)
    return list(raw.astype(np.float64).reshape(-1, channels).T)


def series_windows(
    name: str, window: int, samples: int, seed: int
) -> tuple[np.ndarray, str]:
    """``samples`` windows of ``window`` consecutive values of the series ``name``
    at starts drawn from ``seed`` (without replacement where there are enough), in
    time order. Returns (windows (samples, window) float32, description).

    Raises:
      DataError: a series shorter than the window.
    """
    parts = segments(name)
    starts = [(i, t) for i, s in enumerate(parts) for t in range(len(s) - window + 1)]
    if not starts:
        raise DataError(
            f'data.series = "{name}" has segments of {len(parts[0])} values, fewer '
            f"than data.window = {window}"
        )
    rng = np.random.default_rng(seed)
    at = np.sort(rng.choice(len(starts), samples, replace=samples > len(starts)))
    x = np.stack(
        [parts[starts[a][0]][starts[a][1] : starts[a][1] + window] for a in at]
    )
    file, _, channels = SERIES[name]
    what = (
        f'series "{name}" (matplotlib\'s {file}, {channels} x {len(parts[0]):,} '
        f"values): {samples} windows of {window} consecutive values"
    )
    if samples > len(starts):
        what += f" (drawn with replacement from the {len(starts):,} there are)"
    return x.astype(np.float32), what
