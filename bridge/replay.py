"""Replay a recorded run (or a CSV of norms) to live outputs at musical time."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator

from bridge.dispatch import Delivery, DispatchStats
from bridge.errors import SinkError
from bridge.frames import Frame
from bridge.pipeline import Outputs
from bridge.steps import StepClock

#: The slowest and fastest replay speeds accepted (1 plays at the preset's tempo, 2 twice as fast).
MIN_SPEED, MAX_SPEED = 1e-3, 1e6


def check_speed(speed: float) -> float:
    """``speed`` as a float when it is a number from ``MIN_SPEED`` to ``MAX_SPEED``; ``ValueError`` naming
    the range otherwise (a step that would wait for ages, or no time at all, is a mistake)."""
    if isinstance(speed, bool) or not isinstance(speed, (int, float)):
        raise TypeError(f"speed must be a number (2 plays twice as fast); got {type(speed).__name__}")
    if not (math.isfinite(speed) and speed > 0):
        raise ValueError(f"speed must be > 0 (2 plays twice as fast), got {speed!r}")
    if not MIN_SPEED <= speed <= MAX_SPEED:
        raise ValueError(f"speed must be from {MIN_SPEED:g} to {MAX_SPEED:g} (2 plays twice as fast, 0.5 half as "
                         f"fast); got {speed!r}. Fix: pick a speed in that range")
    return float(speed)


def paced(frames: Iterable[Frame], seconds_per_step: float, speed: float = 1.0,
          clock: Callable[[], float] = time.monotonic,
          sleep: Callable[[float], None] = time.sleep, *, keep_gaps: bool = False) -> Iterator[Frame]:
    """Yield each frame when its musical time comes: its step position (``bridge.steps``: the n-th frame at
    n by default, ``step - first step`` with ``keep_gaps``) × ``seconds_per_step / speed``."""
    speed = check_speed(speed)
    steps = StepClock(keep_gaps)
    start_s: float | None = None
    for frame in frames:
        if start_s is None:
            start_s = clock()
        wait_s = start_s + steps.position(frame.step) * seconds_per_step / speed - clock()
        if wait_s > 0:
            sleep(wait_s)
        yield frame


def replay(frames: Iterable[Frame], outputs: Outputs, *, speed: float = 1.0, keep_gaps: bool = False) -> DispatchStats:
    """Send ``frames`` to the live ``outputs`` (``bridge.outputs.open_outputs``) at musical time.

    Raises ``SinkError`` when no output could be opened (there would be nothing to hear). Ctrl-C stops
    the replay; every output is closed first, so no note is left hanging. ``keep_gaps``: missing steps
    wait as silence (``bridge.steps``).
    """
    check_speed(speed)
    if not outputs.sinks_open:
        detail = "; ".join(f"{name}: {text}" for name, text in outputs.failed_to_open.items())
        raise SinkError(f"no output could be opened ({detail})")
    step_s = outputs.arrangement.seconds_per_step
    return outputs.finish_stats(Delivery(outputs.consumers).run(paced(frames, step_s, speed, keep_gaps=keep_gaps)))
