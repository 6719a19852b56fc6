"""Thinning the live steps a page is sent to what a listener can hear, as the speakers output does.

A page plays each step at its musical length, one after another, starting ``latency`` after it arrives or
where the step before it ends. Steps that arrive faster than they can be played would queue without end:
``SoundPacer`` keeps the queue at most ``max_backlog_s`` long, as the built-in speakers output does
(``bridge.sinks.live_player``), and lets the rest go, counted. An alarm (NaN, Inf or spike) is never let go:
a step with one that finds no room waits, and sounds in the next step's place (the latest alarm step waits,
and a step with spikes alone never takes the place of one with a NaN or Inf). Once live outputs play on one musical
clock, steps arrive at most as fast as they are played and nothing is thinned here.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from bridge.events import StepEvents

#: Longest a step may wait behind the steps queued before it, seconds (as the speakers output).
MAX_BACKLOG_S = 1.0


class SoundPacer:
    """Decides which live steps a page is sent.

    Args:
        max_backlog_s: a step that would start more than this many seconds from now is let go, > 0.
        clock: monotonic clock in seconds (for tests).
    """

    def __init__(self, max_backlog_s: float = MAX_BACKLOG_S, clock: Callable[[], float] = time.monotonic) -> None:
        if isinstance(max_backlog_s, bool) or not isinstance(max_backlog_s, (int, float)) or not max_backlog_s > 0:
            raise ValueError(f"max_backlog_s must be a number of seconds > 0, got {max_backlog_s!r}")
        self.max_backlog_s = float(max_backlog_s)
        self._clock = clock
        self._queue_end = -float("inf")
        self._held: StepEvents | None = None
        self.thinned = 0  #: steps let go (their alarms, if any, sounded later)

    def admit(self, events: StepEvents) -> StepEvents | None:
        """The step to send now (``events``, or a held alarm step in its place), or ``None`` to let it go."""
        now = self._clock()
        start = max(now, self._queue_end)
        if start - now > self.max_backlog_s:
            self.thinned += 1
            if _rank(events) and _rank(events) >= _rank(self._held):
                self._held = events  # the latest alarm waits for room; spikes alone do not replace a NaN/Inf
            return None
        sent = events
        if self._held is not None:
            if _rank(self._held) > _rank(events):
                sent = self._held
                self.thinned += 1  # this one gives its place to the alarm
            self._held = None
        duration = sent.duration_s if sent.duration_s > 0 else 0.0
        self._queue_end = start + duration
        return sent

    def held_alarm(self) -> StepEvents | None:
        """At the end: an alarm step still waiting for room, once; else ``None``."""
        held, self._held = self._held, None
        return held


def _rank(events: StepEvents | None) -> int:
    """How much a step must sound: 2 with a NaN/Inf alarm, 1 with spike alarms alone, else 0."""
    if events is None:
        return 0
    return 2 if events.alarms else 1 if events.spikes else 0
