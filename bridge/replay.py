"""Replay a recorded run (or a CSV of norms) to live outputs at musical time."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

from bridge.dispatch import Delivery, DispatchStats
from bridge.errors import SinkError
from bridge.frames import Frame
from bridge.pipeline import Outputs


def paced(frames: Iterable[Frame], seconds_per_step: float, speed: float = 1.0,
          clock: Callable[[], float] = time.monotonic,
          sleep: Callable[[float], None] = time.sleep) -> Iterator[Frame]:
    """Yield each frame when its musical time comes: ``(step - first step) × seconds_per_step / speed``."""
    if not speed > 0:
        raise ValueError(f"speed must be > 0 (2 plays twice as fast), got {speed!r}")
    start_s: float | None = None
    first_step = 0
    for frame in frames:
        if start_s is None:
            start_s, first_step = clock(), frame.step
        wait_s = start_s + (frame.step - first_step) * seconds_per_step / speed - clock()
        if wait_s > 0:
            sleep(wait_s)
        yield frame


def replay(frames: Iterable[Frame], outputs: Outputs, *, speed: float = 1.0) -> DispatchStats:
    """Send ``frames`` to the live ``outputs`` (``bridge.outputs.open_outputs``) at musical time.

    Raises ``SinkError`` when no output could be opened (there would be nothing to hear). Ctrl-C stops
    the replay; every output is closed first, so no note is left hanging.
    """
    if not outputs.sinks_open:
        detail = "; ".join(f"{name}: {text}" for name, text in outputs.failed_to_open.items())
        raise SinkError(f"no output could be opened ({detail})")
    step_s = outputs.arrangement.seconds_per_step
    return outputs.finish_stats(Delivery(outputs.consumers).run(paced(frames, step_s, speed)))
