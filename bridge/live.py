"""The live side of a run's outputs: one clock, and every live output sounding its ticks.

``build_live`` is called by ``bridge.pipeline.build_outputs`` once the live sinks are open. It makes the
``TickGatherer`` (the live outputs' own mapping of every frame), the clock (``bridge.clock``): a
``TempoClock`` thread on the preset's tempo, an incoming MIDI clock (``bridge.clock_in``) or an Ableton
Link session (``bridge.link``), or a ``FreeClock`` and starts the MIDI clock of the sinks that send one
(``start_clock``). The follower sees plain consumers (``bridge.dispatch.Consumer``): "live clock", which
takes every frame for the next tick, and one per live sink, which reports that sink's failures (a sink
that fails is switched off; the others and the clock go on).

Closing the first of them stops the clock (the steps still gathered sound first), the MIDI clock (its
Stop goes out) and the incoming clock or Link session; then each sink closes.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bridge.beatgrid import BeatGrid, Grid, GridSteps, StepSource
from bridge.clock import FreeClock, TempoClock
from bridge.frames import Frame
from bridge.mapping import Mapping
from bridge.presets import Preset
from bridge.rate import CLOCKS, RateControl
from bridge.sinks.base import Sink
from bridge.ticks import Tick, TickGatherer

log = logging.getLogger("bridge")

#: The name of the consumer that feeds the clock (it shows in the closing summary).
CLOCK_NAME = "live clock"
#: From the outputs' opening to the first beat (the first MIDI clock pulse; Start goes out a pulse before).
START_LEAD_S = 0.2
#: Python's thread switch interval while a tempo clock or MIDI clock runs, seconds (Python's default: 0.005):
#: the clock's thread waits at most about this long for the interpreter lock when it wakes for a step.
SWITCH_INTERVAL_S = 0.0005


@dataclass(frozen=True)
class LiveSettings:
    """How the live outputs keep time. (MIDI clock out is asked of the sinks themselves: a sink whose
    ``wants_clock`` is True is told where the beats fall with ``start_clock(grid)``.)

    Attributes:
        clock: ``"tempo"`` (one tick per step length; the steps between aggregated) or ``"free"`` (each step
            as it arrives, thinned by ``rate``).
        rate: ``every`` and ``max_fps`` (free clock only) and the ``aggregate`` (both clocks).
        clock_in: follow the MIDI clock arriving at this input port (a unique part of its name).
        midi_api: the MIDI API for ``clock_in`` (``None``: the platform's own).
        link: follow an Ableton Link session (tempo and beat phase; needs the ``link`` extra).
        origin_s: when beat 0 of the preset's tempo falls, ``time.monotonic()`` seconds (``None``: just
            after the outputs open); another follower's, to tick with it.
    """

    clock: str = "free"
    rate: RateControl | None = None
    clock_in: str | None = None
    midi_api: str | None = None
    link: bool = False
    origin_s: float | None = None

    def __post_init__(self) -> None:
        if self.clock not in CLOCKS:
            raise ValueError(f"clock must be one of {', '.join(map(repr, CLOCKS))}, got {self.clock!r}")
        if self.clock_in is not None and not isinstance(self.clock_in, str):
            raise TypeError(f"clock_in must be a MIDI input port name (str) or None, got {type(self.clock_in).__name__}")
        if not isinstance(self.link, bool):
            raise TypeError(f"link must be True or False, got {self.link!r}")
        if self.clock_in is not None and self.link:
            raise ValueError("clock_in and link were both given: the live clock follows one of them. Fix: drop "
                             "one (--clock-in PORT follows a DAW's MIDI clock, --link an Ableton Link session)")
        if self.clock == "free" and (self.clock_in is not None or self.link):
            what = "clock_in" if self.clock_in is not None else "link"
            raise ValueError(f"{what} drives the tempo clock, but clock='free' was asked for (each step as it "
                             f"arrives). Fix: drop clock='free' (--clock free), or drop {what}")


class TickOutput:
    """One live sink: sounds each tick (the clock's thread) and reports the sink's failure to the follower
    (``handle`` raises it once, so the sink is counted and switched off; the others go on)."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.name = sink.name
        self.ahead = bool(getattr(sink, "schedules_ahead", False))
        self._send_tick = getattr(sink, "send_tick", None)
        self.before_close: Callable[[], None] = lambda: None  # the live side's stop
        self.error: Exception | None = None
        self._reported = False

    def deliver(self, tick: Tick) -> None:
        """Sound ``tick`` on the sink; a failure switches this output off."""
        if self.error is not None:
            return
        try:
            if self._send_tick is not None:
                self._send_tick(tick)
            else:
                self.sink.send(tick.events)
        except Exception as exc:  # isolate: reported by handle or close, the other outputs go on
            self.error = exc

    def handle(self, frame: Frame) -> None:
        """The follower's frame: the clock has it already; raise this sink's failure, once."""
        if self.error is not None and not self._reported:
            self._reported = True
            raise self.error

    def close(self) -> None:
        """Stop the clock (the last ticks sound first), then close the sink; raise a failure not yet told."""
        try:
            self.before_close()
        finally:
            self.sink.close()
        if self.error is not None and not self._reported:
            self._reported = True
            raise self.error


class ClockConsumer:
    """The follower's consumer that hands every frame to the clock."""

    name = CLOCK_NAME

    def __init__(self, side: "LiveSide") -> None:
        self._side = side
        self._reported = False

    def handle(self, frame: Frame) -> None:
        side = self._side
        side.clock.offer(frame)
        if side.clock.error is not None and not self._reported:
            self._reported = True
            raise side.clock.error

    def close(self) -> None:
        self._side.stop()


class LiveSide:
    """The clock, the outputs it drives, the sinks that send MIDI clock, and what to leave at the end (an
    incoming clock, a Link session)."""

    def __init__(self, clock: TempoClock | FreeClock, outputs: list[TickOutput], clocked: Sequence[Sink],
                 closers: Sequence[Callable[[], None]] = ()) -> None:
        self.clock = clock
        self.outputs = outputs
        self._clocked = list(clocked)
        self._closers = list(closers)
        self._stopped = False
        self._origin_s: float | None = None
        for output in outputs:
            output.before_close = self.stop
        self.consumers = [ClockConsumer(self), *outputs]

    def stop(self) -> None:
        """Sound what is gathered, stop the clock, send MIDI Stop, leave an incoming clock or Link. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        try:
            self.clock.stop()
        finally:
            for sink in self._clocked:
                try:
                    sink.stop_clock()  # type: ignore[attr-defined]
                except Exception as exc:  # the sink's close reports its port's failure
                    log.debug("%s: stopping its MIDI clock: %s", sink.name, exc)
            for close in self._closers:
                close()

    def summary(self) -> str:
        """The clock's work (and the MIDI clock's), for the closing summary."""
        parts = [self.clock.summary()]
        for sink in self._clocked:
            pulses = getattr(sink, "pulse_train", None)
            if pulses is not None:
                late = f", {pulses.late} written over 1 ms late (at most {pulses.max_late_s * 1000:.1f} ms)" \
                    if pulses.late else ", none over 1 ms late"
                parts.append(f"MIDI clock on {sink.name}: {pulses.sent} pulses{late}")
        return "; ".join(parts)

    @property
    def origin_s(self) -> float | None:
        """When beat 0 of the preset's tempo falls (``time.monotonic()`` seconds), or ``None`` (no such grid)."""
        return self._origin_s


def beats_per_step(preset: Preset, layer_count: int) -> float:
    """The preset's step length in beats of its tempo (a sixteenth note: 0.25)."""
    return preset.seconds_per_step(layer_count) * preset.tempo_bpm / 60.0


def build_live(mapping: Mapping, layer_names: Sequence[str], sinks: Sequence[Sink], settings: LiveSettings) -> LiveSide:
    """Make the clock for the opened live ``sinks`` (mapped with ``mapping``'s preset and step rule), start
    their MIDI clock (those that send one) and it.

    Raises ``SinkError`` when the incoming clock's port or the Link session cannot be joined.
    """
    rate, preset = settings.rate or RateControl(), mapping.preset
    gatherer = TickGatherer(mapping, layer_names, rate.aggregate)
    per_step = beats_per_step(preset, len(layer_names))
    clocked = [s for s in sinks if getattr(s, "wants_clock", False)]
    grid: Grid | None = None
    source: StepSource | None = None
    closers: list[Callable[[], None]] = []
    if settings.clock_in is not None:
        from bridge.clock_in import ClockInSteps

        source = ClockInSteps(settings.clock_in, per_step, tempo_bpm=preset.tempo_bpm, api=settings.midi_api)
    elif settings.link:
        from bridge.link import LinkGrid

        grid = LinkGrid(preset.tempo_bpm)
    elif settings.clock == "tempo" or clocked:
        origin_s = time.monotonic() + START_LEAD_S if settings.origin_s is None else settings.origin_s
        grid = BeatGrid(preset.tempo_bpm, origin_s=origin_s)
    if source is None and grid is not None and settings.clock == "tempo":
        source = GridSteps(grid, per_step, what="(Ableton Link)" if settings.link else "")
    if source is not None:
        closers.append(source.close)
    outputs = [TickOutput(sink) for sink in sinks]
    clock: TempoClock | FreeClock
    if settings.clock == "tempo" and source is not None:
        clock = TempoClock(gatherer, source, [o.deliver for o in outputs if o.ahead],
                           [o.deliver for o in outputs if not o.ahead])
    else:
        clock = FreeClock(gatherer, rate, [o.deliver for o in outputs])
    side = LiveSide(clock, outputs, clocked if grid is not None else [], closers)
    if isinstance(clock, TempoClock) or (clocked and grid is not None):
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))
    if isinstance(grid, BeatGrid):
        side._origin_s = grid.origin_s
    try:
        if grid is not None:
            for sink in clocked:
                sink.start_clock(grid)  # type: ignore[attr-defined]
        clock.start()
    except BaseException:
        side.stop()
        raise
    return side
