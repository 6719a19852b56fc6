"""Rate control for live outputs: sound every Nth step, or at most K steps a second.

Offline outputs (WAV, MIDI file, run log) take every frame; a live MIDI port or OSC receiver may not keep
up with thousands of steps a second, and a listener cannot follow them. ``RateControl`` says when the
steps that arrived since the last sounded one should sound; the free live clock gathers them and folds
them into one tick by ``aggregate`` (``bridge.ticks``: ``max`` or ``mean`` per layer, every alarm kept).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

AGGREGATES = ("max", "mean")
#: Live clocks: "tempo" (one tick per step length of the preset's tempo, the steps between aggregated) or
#: "free" (each step as it arrives, thinned by ``every`` and ``max_fps``). See ``bridge.live``.
CLOCKS = ("tempo", "free")


class RateControl:
    """Decides when the steps gathered for a live output sound.

    Args:
        every: sound at most once per ``every`` steps (>= 1).
        max_fps: sound at most this many times per second of wall-clock time (0: no limit).
        aggregate: ``"max"`` or ``"mean"``: how the gathered steps fold into one (``bridge.ticks``).
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
        self._arrived = 0
        self._last_sounded_s = -math.inf

    @property
    def passes_everything(self) -> bool:
        """True when every step sounds as it arrives."""
        return self.every == 1 and self.min_interval_s == 0.0

    def arrived(self) -> bool:
        """Count one frame's arrival; True when the frames since the last ``True`` should sound now: ``every``
        of them have come and at least ``1 / max_fps`` seconds have passed."""
        self._arrived += 1
        if self._arrived < self.every:
            return False
        now = self._clock() if self.min_interval_s else 0.0
        if now - self._last_sounded_s < self.min_interval_s:
            return False
        self._arrived, self._last_sounded_s = 0, now
        return True
