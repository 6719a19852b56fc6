"""Each layer's reference level for ``range = "reference"``: where the layer started.

A layer's pitch is placed by the ratio of its norm to this reference, in semitones around a centre
note. The reference is the median of the layer's first ``steps`` finite norms above the log floor, or
its first such norm when that is lower, and then holds for the rest of the run. The median keeps one
early spike from capturing it (a spike at the first step included); the first norm keeps a run that
explodes from its second step on from capturing it, so that run is heard climbing. Until ``steps``
norms have come, the median is of those seen so far (the first norm sounds at the centre). Levels are
log10 norms; blocks of steps and single steps give the same levels, bit for bit.
"""

from __future__ import annotations

import numpy as np

from bridge.spikes import median_of_finite

__all__ = ["ReferenceLevels", "reference_value"]


class ReferenceLevels:
    """Running reference levels (log10 norms) of ``layers`` layers, fixed after ``steps`` usable norms each:
    the median of those norms, or the first of them when it is lower."""

    def __init__(self, layers: int, steps: int) -> None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"reference steps must be an int >= 1; got {steps!r}")
        self.steps = steps
        self._samples = np.full((steps, layers), np.nan)
        self._count = np.zeros(layers, dtype=np.int64)
        self._level = np.full(layers, np.nan)

    @property
    def levels(self) -> np.ndarray:
        """Each layer's reference now, log10 norm (NaN before its first usable norm); a copy."""
        return self._level.copy()

    def update(self, logs: np.ndarray, usable: np.ndarray) -> np.ndarray:
        """Take the steps' log10 norms (steps, layers), ``usable`` marking those that may join a reference;
        return the reference each one is placed against (steps, layers): a usable norm joins its layer's
        reference (while it is still being formed) before it is placed."""
        if bool((self._count >= self.steps).all()):  # the usual case after the first steps: fixed
            return np.broadcast_to(self._level, logs.shape)
        counts = self._count + np.cumsum(usable, axis=0)  # each layer's count including each step
        joining = usable & (counts <= self.steps)
        out = np.empty(logs.shape)
        out[:] = self._level
        for step in np.flatnonzero(joining.any(axis=1)).tolist():
            layers = np.flatnonzero(joining[step])
            self._samples[self._count[layers], layers] = logs[step, layers]
            self._count[layers] += 1
            # the median of the norms so far, or the first norm (row 0) when it is lower
            self._level[layers] = np.minimum(median_of_finite(self._samples[:, layers].T), self._samples[0, layers])
            out[step:, layers] = self._level[layers]
        return out


def reference_value(logs: np.ndarray, levels: np.ndarray, centre: float, semitones_per_decade: float,
                    low_note: int, high_note: int) -> np.ndarray:
    """Place log10 norms against their reference levels: ``centre + semitones_per_decade × (log - level)``
    semitones, as a position 0–1 between ``low_note`` and ``high_note`` (clamped there)."""
    semitones = centre + semitones_per_decade * (logs - levels)
    position = (semitones - low_note) / float(high_note - low_note)
    return np.minimum(np.maximum(position, 0.0), 1.0)
