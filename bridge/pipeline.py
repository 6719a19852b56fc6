"""The pipe from frames to sinks: mapping once per frame, each sink its own isolated consumer.

A follower (``bridge.follower``) drives these consumers as a run log grows; offline renders drive the same
consumers over a finished log, so a rendered run and a live one are the same code.

Live sinks get each frame as it comes. File sinks (WAV, MIDI file) get ``FILE_BLOCK_STEPS`` frames at a
time, mapped and rendered as one block: a handful of NumPy calls per block instead of per step, which is
what makes offline rendering fast and lets a follower catch up when it falls behind.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from bridge.dispatch import Consumer, Delivery, DispatchStats
from bridge.errors import SinkError, UsageError
from bridge.events import Arrangement, StepEvents
from bridge.frames import Frame, RunInfo
from bridge.health import RunHealth
from bridge.mapping import Mapping
from bridge.rate import RateControl
from bridge.sinks.base import Sink

log = logging.getLogger("bridge")

#: Frames a file sink takes at once (the last block, shorter, comes at close).
FILE_BLOCK_STEPS = 64


class SharedMapping:
    """A mapping shared by several sinks: each frame is mapped once, whichever sink asks first.

    With a ``RateControl`` (live outputs), frames it holds back map to ``None`` (nothing to sound) and the
    frame it lets through carries the aggregate of the ones held back.
    """

    def __init__(self, mapping: Mapping, layer_names: Sequence[str], rate: RateControl | None = None) -> None:
        self.mapping = mapping
        self.rate = rate
        self.arrangement: Arrangement = mapping.arrange(tuple(layer_names))
        self._last_frame: Frame | None = None
        self._last_events: StepEvents | None = None
        self._block: list[Frame] = []
        self._block_events: list[StepEvents] = []
        self._held_alarm: StepEvents | None = None
        self._held_checked = False

    def events_for(self, frame: Frame) -> StepEvents | None:
        """The events of ``frame`` (computed on the first call for that frame), or ``None`` to stay quiet."""
        if frame is not self._last_frame:
            sounded = frame if self.rate is None else self.rate.offer(frame)
            self._last_events = None if sounded is None else self.mapping.map_frame(sounded)
            self._last_frame = frame
        return self._last_events

    def events_for_block(self, frames: list[Frame]) -> list[StepEvents]:
        """The events of a block of frames (computed on the first call for that block); no rate control.

        Every file sink of a run is handed the same frames in the same blocks, so a block is recognised by
        its first and last frame.
        """
        if self.rate is not None:
            raise UsageError("a rate-controlled mapping sounds frame by frame; use events_for(frame)")
        if not (self._block and frames and frames[0] is self._block[0] and frames[-1] is self._block[-1]
                and len(frames) == len(self._block)):
            self._block_events = self.mapping.map_frames(frames)
            self._block = list(frames)
        return self._block_events

    def held_alarm(self) -> StepEvents | None:
        """At the end: the events of the steps the rate control still holds back if an alarm (NaN, Inf) is
        among them, so that it sounds; else ``None``. The same answer for every sink that asks."""
        if not self._held_checked:
            self._held_checked = True
            held = None if self.rate is None else self.rate.held_alarm()
            self._held_alarm = None if held is None else self.mapping.map_frame(held)
        return self._held_alarm


class SinkConsumer:
    """Feeds one sink the mapped events of every frame."""

    def __init__(self, sink: Sink, shared: SharedMapping) -> None:
        self.sink = sink
        self.name = sink.name
        self._shared = shared

    def handle(self, frame: Frame) -> None:
        events = self._shared.events_for(frame)
        if events is not None:
            self.sink.send(events)

    def close(self) -> None:
        """Sound an alarm the rate control still holds back, then close the sink."""
        try:
            events = self._shared.held_alarm()
            if events is not None:
                self.sink.send(events)
        finally:
            self.sink.close()


class BlockSinkConsumer:
    """Feeds one file sink the mapped events of every frame, ``block_steps`` frames at a time.

    Frames wait here until a block is full; ``close`` hands over the last, shorter block before closing
    the sink, so Ctrl-C and the end of a run lose nothing. A sink with ``send_many(events)`` takes a block
    in one call; any other gets ``send`` for each step.
    """

    def __init__(self, sink: Sink, shared: SharedMapping, block_steps: int = FILE_BLOCK_STEPS) -> None:
        if isinstance(block_steps, bool) or not isinstance(block_steps, int) or block_steps < 1:
            raise ValueError(f"block_steps must be an int >= 1 (frames per block); got {block_steps!r}")
        self.sink = sink
        self.name = sink.name
        self._shared = shared
        self._block_steps = block_steps
        self._waiting: list[Frame] = []

    def handle(self, frame: Frame) -> None:
        self._waiting.append(frame)
        if len(self._waiting) >= self._block_steps:
            self._send_waiting()

    def close(self) -> None:
        try:
            self._send_waiting()
        finally:
            self.sink.close()

    def _send_waiting(self) -> None:
        frames, self._waiting = self._waiting, []
        if not frames:
            return
        events = self._shared.events_for_block(frames)
        send_many = getattr(self.sink, "send_many", None)
        if send_many is not None:
            send_many(events)
        else:
            for step in events:
                self.sink.send(step)


@dataclass
class Outputs:
    """The consumers of a run, the outputs that could not even be opened (reported, left out), and the
    run's ``health`` (its alarms and spikes, counted from every frame for the closing summary)."""

    consumers: list[Consumer]
    arrangement: Arrangement
    failed_to_open: dict[str, str] = field(default_factory=dict)
    health: RunHealth | None = None

    @property
    def sinks_open(self) -> int:
        """How many outputs were opened (the run's health aside)."""
        return sum(consumer is not self.health for consumer in self.consumers)

    def finish_stats(self, stats: DispatchStats) -> DispatchStats:
        """``stats`` with each output that could not be opened counted as one error "at start", the failures
        an output counted while going on (a sink's ``failures()``, e.g. OSC datagrams refused), and what the
        run's health says in place of its "ok"."""
        for name, text in self.failed_to_open.items():
            stats.add_error(name, f"at start ({text})")
        for consumer in self.consumers:
            failures = getattr(getattr(consumer, "sink", None), "failures", None)
            counted = failures() if callable(failures) else None
            if counted is not None and consumer.name not in stats.first_errors:
                stats.errors[consumer.name] = stats.errors.get(consumer.name, 0) + counted[0]
                stats.first_errors[consumer.name] = counted[1]
        if self.health is not None:
            stats.notes[self.health.name] = self.health.summary()
        return stats


def build_outputs(mapping: Mapping, run_info: RunInfo, sinks: Sequence[Sink], *, live_sinks: Sequence[Sink] = (),
                  rate: RateControl | None = None) -> Outputs:
    """Arrange the mapping for the run's layers, open every sink, and wrap each as a consumer.

    ``sinks`` (files) take every frame at musical time, in blocks of ``FILE_BLOCK_STEPS``. ``live_sinks``
    (MIDI port, OSC, speakers) take, one by one, the frames ``rate`` lets through, mapped by their own copy
    of the mapping, since the running ranges of a rate-limited stream differ from the full one's. A sink that
    fails to open (port missing, file unwritable) is reported once and left out; the others go on. Last comes
    the run's ``health``, which counts the alarms and spikes of every frame.
    ``bridge.outputs.open_outputs`` makes the sinks a user asked for and calls this.
    """
    shared = SharedMapping(mapping, run_info.layer_names)
    outputs = Outputs(consumers=[], arrangement=shared.arrangement,
                      health=RunHealth(run_info.layer_names, mapping.preset))
    groups: list[tuple[SharedMapping, Sequence[Sink], type[BlockSinkConsumer | SinkConsumer]]] = [
        (shared, sinks, BlockSinkConsumer)]
    if live_sinks:
        live = SharedMapping(mapping.fresh(), run_info.layer_names, rate)
        groups.append((live, live_sinks, SinkConsumer))
    for group, members, consumer in groups:
        for sink in members:
            try:
                sink.open(group.arrangement)
            except Exception as exc:  # isolate: a missing output must not stop the run
                text = f"{type(exc).__name__}: {exc}"
                outputs.failed_to_open[sink.name] = text
                log.warning("output %r could not be opened (%s); going on without it", sink.name, text)
                continue
            outputs.consumers.append(consumer(sink, group))
    outputs.consumers.append(outputs.health)
    return outputs


def render_frames(frames: Iterable[Frame], outputs: Outputs) -> DispatchStats:
    """Offline: play ``frames`` (a run log, a CSV) into ``outputs`` on this thread.

    Raises ``SinkError`` naming each output that could not be opened or failed, after closing the others,
    so a command-line render never reports success with a missing file.
    """
    stats = Delivery(outputs.consumers).run(frames)
    problems = dict(outputs.failed_to_open)
    problems.update(stats.first_errors)
    if problems:
        detail = "; ".join(f"{name}: {text}" for name, text in problems.items())
        raise SinkError(f"rendering failed for {detail}")
    return stats
