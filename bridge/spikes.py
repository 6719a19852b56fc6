"""Spike detection and the robust medians it rests on, vectorised over layers and steps.

A layer *spikes* at a step when its norm exceeds ``ratio`` times the median of its own norms over the
``window`` steps before (counting only finite norms above the log floor, and once at least ``warmup`` of
them are there), in the spirit of Lightning's ``SpikeDetection``. Work is done on log10 norms, so the
ratio is a difference and the median of logs is the log of the median.

Blocks of steps and single steps give the same answers, bit for bit: every step's window is a slice of
the same history, and each slice's median is computed on its own.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["LOG_FLOOR", "SpikeDetector", "log_norms", "median_of_finite"]

#: Smallest norm the log scale distinguishes; zero and below (and NaN, ±Inf) are no usable norm.
LOG_FLOOR = 1e-12


def log_norms(norms: np.ndarray) -> np.ndarray:
    """log10 of each norm (any shape), NaN where a norm is not finite or not above ``LOG_FLOOR``: the input
    of ``SpikeDetector.detect``."""
    usable = np.isfinite(norms) & (norms > LOG_FLOOR)
    return np.where(usable, np.log10(np.where(usable, norms, 1.0)), np.nan)


def median_of_finite(values: np.ndarray) -> np.ndarray:
    """Median over the last axis of the non-NaN entries; NaN where there are none.

    The same arithmetic whatever the leading shape: the middle entry, or the mean of the two middle
    entries (``0.5 × (a + b)``), of each sorted row.
    """
    ordered = np.sort(values, axis=-1)  # NaN sorts last
    count = np.count_nonzero(~np.isnan(values), axis=-1)
    low = np.maximum(count - 1, 0) // 2  # count 0: both pick the first entry, a NaN
    high = count // 2
    a = np.take_along_axis(ordered, low[..., np.newaxis], axis=-1)[..., 0]
    b = np.take_along_axis(ordered, high[..., np.newaxis], axis=-1)[..., 0]
    return 0.5 * (a + b)


class SpikeDetector:
    """Finds spikes in a stream of per-layer log10 norms, keeping each layer's last ``window`` steps.

    Args:
        layers: number of layers.
        ratio: a norm above ``ratio`` × the window's median is a spike (> 1).
        window: steps of history each step is compared with (>= 1).
        warmup: finite norms the window must hold before a spike can be found there (1 to ``window``).
    """

    def __init__(self, layers: int, *, ratio: float, window: int, warmup: int) -> None:
        if not ratio > 1.0 or not math.isfinite(ratio):
            raise ValueError(f"spike ratio must be a finite number above 1 (times the running median); got {ratio!r}")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"spike window must be an int >= 1 (steps); got {window!r}")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or not 1 <= warmup <= window:
            raise ValueError(f"spike warmup must be an int from 1 to the window ({window}); got {warmup!r}")
        self.ratio, self.window, self.warmup = float(ratio), window, warmup
        self._threshold = math.log10(ratio)
        self._history = np.full((window, layers), np.nan)  # oldest first; NaN: no usable norm that step

    def detect(self, logs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Spikes of the steps in ``logs`` (steps, layers): log10 norms, NaN where a norm is not finite or
        not above the log floor (it neither spikes nor joins the history).

        Returns ``(spike, excess)``, both (steps, layers): whether each norm spikes, and its log10 ratio to
        the median before it (NaN where there is no median). Every step then joins the history.
        """
        steps = logs.shape[0]
        stacked = np.concatenate((self._history, logs), axis=0)
        if steps == 1:  # one step (live): the same medians, indexed straight from the history (cheaper)
            present = ~np.isnan(self._history)
            held = np.count_nonzero(present, axis=0)[np.newaxis]
            ordered = np.sort(self._history, axis=0)  # NaN last
            columns = np.arange(ordered.shape[1])
            a = ordered[np.maximum(held[0] - 1, 0) // 2, columns]
            b = ordered[held[0] // 2, columns]
            median = (0.5 * (a + b))[np.newaxis]
        else:
            windows = np.lib.stride_tricks.sliding_window_view(stacked, self.window, axis=0)[:steps]
            median = median_of_finite(windows)  # (steps, layers)
            held = np.count_nonzero(~np.isnan(windows), axis=-1)
        with np.errstate(invalid="ignore"):
            excess = logs - median
            spike = (held >= self.warmup) & (excess > self._threshold)  # NaN compares False
        self._history = stacked[-self.window:].copy()
        return spike, excess
