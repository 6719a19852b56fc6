"""Rate control for live outputs: sound every Nth step, or at most K steps a second, aggregating between.

Offline outputs (WAV, MIDI file, run log) take every frame; a live MIDI port or OSC receiver may not keep
up with thousands of steps a second, and a listener cannot follow them. The steps that fall between two
sounded ones are folded into the next sounded frame by ``max`` or ``mean`` per layer. NaN and Inf
propagate through both, so an alarm is never averaged away.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np

from bridge.frames import Frame

AGGREGATES = ("max", "mean")
#: Live clocks: "tempo" (one tick per step length of the preset's tempo, the steps between aggregated) or
#: "free" (each step as it arrives, thinned by ``every`` and ``max_fps``). See ``bridge.live``.
CLOCKS = ("tempo", "free")


class RateControl:
    """Decides which frames a live output sounds, and folds the others into them.

    Args:
        every: sound at most one frame per ``every`` steps (>= 1).
        max_fps: sound at most this many frames per second of wall-clock time (0: no limit).
        aggregate: ``"max"`` or ``"mean"``: how the norms (and loss) of the folded steps combine.
        clock: monotonic clock in seconds (for tests).
    """

    def __init__(self, every: int = 1, max_fps: float = 0.0, aggregate: str = "max",
                 clock: Callable[[], float] = time.monotonic) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an integer >= 1 (steps), got {every!r}; use 1 to sound every step")
        if isinstance(max_fps, bool) or not isinstance(max_fps, (int, float)) or not 0 <= max_fps < math.inf:
            raise ValueError(f"max_fps must be a number >= 0 (frames per second, 0 = no limit), got {max_fps!r}")
        if aggregate not in AGGREGATES:
            raise ValueError(f"aggregate must be one of {', '.join(AGGREGATES)}, got {aggregate!r}")
        self.every = every
        self.min_interval_s = 1.0 / max_fps if max_fps > 0 else 0.0
        self.aggregate = aggregate
        self._clock = clock
        self._last_emit_s = -math.inf
        self._count = 0
        self._norms: np.ndarray | None = None
        self._loss = 0.0
        self._last: Frame | None = None
        self.folded = 0  # frames folded into a later one, in total
        self._arrived = 0
        self._last_arrived_emit_s = -math.inf

    @property
    def passes_everything(self) -> bool:
        """True when every frame is sounded as is."""
        return self.every == 1 and self.min_interval_s == 0.0

    def offer(self, frame: Frame) -> Frame | None:
        """Take one frame; return the frame to sound now (aggregated), or ``None`` to stay quiet."""
        if self.passes_everything:
            return frame
        norms = np.asarray(frame.norms, dtype=np.float64)
        if self._norms is None:
            self._norms, self._loss = norms.copy(), frame.loss
        elif self.aggregate == "max":
            np.maximum(self._norms, norms, out=self._norms)  # NaN propagates
            self._loss = float(np.maximum(self._loss, frame.loss))
        else:
            self._norms += norms
            self._loss += frame.loss
        self._count += 1
        self._last = frame
        now = self._clock()
        if self._count < self.every or now - self._last_emit_s < self.min_interval_s:
            return None
        norms_out, loss_out = self._norms, self._loss
        if self.aggregate == "mean":
            norms_out, loss_out = norms_out / self._count, loss_out / self._count
        self.folded += self._count - 1
        self._norms, self._count, self._last_emit_s = None, 0, now
        return Frame(step=frame.step, time_s=frame.time_s, norms=norms_out, loss=loss_out, lr=frame.lr)

    def arrived(self) -> bool:
        """Count one frame's arrival; True when the frames since the last ``True`` should sound now: ``every``
        of them have come and at least ``1 / max_fps`` seconds have passed. For the free live clock, which
        gathers and aggregates the frames itself (``bridge.ticks``)."""
        self._arrived += 1
        if self._arrived < self.every:
            return False
        now = self._clock() if self.min_interval_s else 0.0
        if now - self._last_arrived_emit_s < self.min_interval_s:
            return False
        self._arrived, self._last_arrived_emit_s = 0, now
        return True

    def held_alarm(self) -> Frame | None:
        """The aggregate of the frames held back since the last one sounded, if a norm among them is NaN or
        ±Inf (an alarm must sound even when the run ends before the next sounded frame); else ``None``."""
        if self._norms is None or self._last is None or bool(np.isfinite(self._norms).all()):
            return None
        norms, loss = self._norms, self._loss
        if self.aggregate == "mean":
            norms, loss = norms / self._count, loss / self._count
        last, self._norms, self._count = self._last, None, 0
        return Frame(step=last.step, time_s=last.time_s, norms=norms, loss=loss, lr=last.lr)
