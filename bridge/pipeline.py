"""The pipe from frames to sinks: mapping once per frame, each sink its own isolated consumer.

A follower (``bridge.follower``) drives these consumers as a run log grows; offline renders drive the same
consumers over a finished log, so a rendered run and a live one are the same code.

File sinks (WAV, MIDI file) get every frame, ``FILE_BLOCK_STEPS`` at a time, mapped and rendered as one
block: a handful of NumPy calls per block instead of per step, which is what makes offline rendering fast
and lets a follower catch up when it falls behind. Live sinks (MIDI port, OSC, speakers) sound the ticks of
one clock (``bridge.live``): on the preset's tempo, or each step as it arrives.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from bridge.dispatch import Consumer, Delivery, DispatchStats
from bridge.errors import SinkError
from bridge.events import Arrangement, StepEvents
from bridge.frames import Frame, RunInfo
from bridge.health import RunHealth
from bridge.live import CLOCK_NAME, LiveSettings, LiveSide, build_live
from bridge.mapping import Mapping
from bridge.rate import RateControl
from bridge.sinks.base import Sink

log = logging.getLogger("bridge")

#: Frames a file sink takes at once (the last block, shorter, comes at close).
FILE_BLOCK_STEPS = 64


class SharedMapping:
    """A mapping shared by several file sinks: each block of frames is mapped once, whichever sink asks first."""

    def __init__(self, mapping: Mapping, layer_names: Sequence[str]) -> None:
        self.mapping = mapping
        self.arrangement: Arrangement = mapping.arrange(tuple(layer_names))
        self._block: list[Frame] = []
        self._block_events: list[StepEvents] = []

    def events_for_block(self, frames: list[Frame]) -> list[StepEvents]:
        """The events of a block of frames (computed on the first call for that block).

        Every file sink of a run is handed the same frames in the same blocks, so a block is recognised by
        its first and last frame.
        """
        if not (self._block and frames and frames[0] is self._block[0] and frames[-1] is self._block[-1]
                and len(frames) == len(self._block)):
            self._block_events = self.mapping.map_frames(frames)
            self._block = list(frames)
        return self._block_events


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
    """The consumers of a run, the outputs that could not even be opened (reported, left out), the run's
    ``health`` (its alarms and spikes, counted from every frame for the closing summary) and the ``live``
    side (the clock that drives the live outputs), when there is one."""

    consumers: list[Consumer]
    arrangement: Arrangement
    failed_to_open: dict[str, str] = field(default_factory=dict)
    health: RunHealth | None = None
    live: LiveSide | None = None

    @property
    def sinks_open(self) -> int:
        """How many outputs were opened (the run's health aside)."""
        extra = (self.health, *(self.live.consumers[:1] if self.live is not None else ()))
        return sum(all(consumer is not other for other in extra) for consumer in self.consumers)

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
                stats.add_error(consumer.name, counted[1], counted[0])
        if self.health is not None:
            stats.notes[self.health.name] = self.health.summary()
        if self.live is not None:
            stats.notes[CLOCK_NAME] = self.live.summary()
        return stats


def build_outputs(mapping: Mapping, run_info: RunInfo, sinks: Sequence[Sink], *, live_sinks: Sequence[Sink] = (),
                  rate: RateControl | None = None, live: LiveSettings | None = None) -> Outputs:
    """Arrange the mapping for the run's layers, open every sink, and wrap each as a consumer.

    ``sinks`` (files) take every frame at musical time, in blocks of ``FILE_BLOCK_STEPS``. ``live_sinks``
    (MIDI port, OSC, speakers) sound the ticks of one clock (``bridge.live``; ``live`` says which, by
    default the free clock with ``rate``), mapped by their own copy of the mapping. A sink that fails to
    open (port missing, file unwritable) is reported once and left out; the others go on. Last comes the
    run's ``health``, which counts the alarms and spikes of every frame.
    ``bridge.outputs.open_outputs`` makes the sinks a user asked for and calls this.
    """
    shared = SharedMapping(mapping, run_info.layer_names)
    outputs = Outputs(consumers=[], arrangement=shared.arrangement,
                      health=RunHealth(run_info.layer_names, mapping.preset))
    opened: dict[int, list[Sink]] = {0: [], 1: []}
    for group, members in enumerate((sinks, live_sinks)):
        for sink in members:
            try:
                sink.open(shared.arrangement)
            except Exception as exc:  # isolate: a missing output must not stop the run
                text = f"{type(exc).__name__}: {exc}"
                outputs.failed_to_open[sink.name] = text
                log.warning("output %r could not be opened (%s); going on without it", sink.name, text)
                continue
            opened[group].append(sink)
    outputs.consumers.extend(BlockSinkConsumer(sink, shared) for sink in opened[0])
    if opened[1]:
        settings = live if live is not None else LiveSettings(rate=rate)
        try:
            outputs.live = build_live(mapping, run_info.layer_names, opened[1], settings)
        except BaseException:
            _close_quietly([*opened[0], *opened[1]])
            raise
        outputs.consumers.extend(outputs.live.consumers)
    outputs.consumers.append(outputs.health)
    return outputs


def _close_quietly(sinks: Sequence[Sink]) -> None:
    """Close sinks that were opened for outputs that will not run (the error that stops them is raised)."""
    for sink in sinks:
        try:
            sink.close()
        except Exception as exc:  # the error that stopped the outputs is the one to report
            log.debug("closing %r after a failed start: %s", sink.name, exc)


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
