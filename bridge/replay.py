"""Replay a recorded run (or a CSV of norms) to live outputs at musical time."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence

from bridge.dispatch import Dispatcher, DispatchStats
from bridge.frames import Frame, RunInfo
from bridge.mapping import Mapping
from bridge.pipeline import build_outputs
from bridge.rate import RateControl
from bridge.sinks.base import Sink


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


def replay(frames: Iterable[Frame], run_info: RunInfo, mapping: Mapping, sinks: Sequence[Sink], *,
           speed: float = 1.0, rate: RateControl | None = None) -> DispatchStats:
    """Send ``frames`` to live ``sinks`` at musical time; returns what happened.

    Raises ``RuntimeError`` when no sink could be opened (there would be nothing to hear). Ctrl-C stops
    the replay; every sink is closed first, so no note is left hanging.
    """
    outputs = build_outputs(mapping, run_info, (), live_sinks=sinks, rate=rate)
    if not outputs.consumers:
        detail = "; ".join(f"{name}: {text}" for name, text in outputs.failed_to_open.items())
        raise RuntimeError(f"no output could be opened ({detail})")
    step_s = outputs.arrangement.seconds_per_step
    return outputs.count_open_failures(Dispatcher(outputs.consumers).run_sync(paced(frames, step_s, speed)))
