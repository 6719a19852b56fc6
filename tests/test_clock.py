"""The live clock: beats on a grid, the steps on it, and the thread that sounds the gathered steps as ticks."""

from __future__ import annotations

import math
import threading
import time

import pytest

from bridge.beatgrid import BeatGrid, GridSteps, Plan
from bridge.clock import TempoClock
from bridge.dispatch import Delivery
from bridge.frames import Frame, RunInfo
from bridge.live import LiveSettings
from bridge.mapping import Mapping
from bridge.outputs import OutputSpec
from bridge.pipeline import build_outputs
from bridge.presets import load_preset
from bridge.ticks import Tick, TickGatherer


def test_a_tempo_change_keeps_the_beat_where_it_was_and_bends_the_ones_after() -> None:
    grid = BeatGrid(120.0, origin_s=100.0)
    assert (grid.time_of_beat(4), grid.beat_at(101.0)) == (102.0, 2.0)
    grid.set_tempo(60.0, at_s=101.0)  # at beat 2
    assert grid.time_of_beat(2) == 101.0 and grid.time_of_beat(4) == 103.0 and grid.tempo_bpm == 60.0
    assert grid.time_of_beat(1) == 100.0  # the past is laid out at the tempo now (nothing asks for it)


def test_steps_fall_on_exact_quarter_beats_and_a_late_clock_skips_to_the_next_to_come() -> None:
    grid = BeatGrid(120.0, origin_s=10.0)  # a beat is 0.5 s, a sixteenth 0.125 s
    steps = GridSteps(grid, 0.25)
    assert steps.upcoming(9.9) == Plan(0, 10.0, 0.125)
    steps.done(0)
    assert steps.upcoming(10.05) == Plan(1, 10.125, 0.125)
    steps.done(1)
    # the clock's thread slept through steps 2 to 5 (it is now 10.74: step 5 fell at 10.625): they are given up
    plan = steps.upcoming(10.74)
    assert plan == Plan(6, 10.75, 0.125) and steps.skipped == 4
    # step k falls on beat k / 4 exactly, the time of MIDI clock pulse 6k (k × 6 / 24)
    assert all(steps.beat_of_step(k) == (6 * k) / 24 for k in range(1000))
    assert "4 a beat at 120 BPM" in steps.describe()


class Recorder:
    """A live sink that keeps each tick and when it came; ``ahead`` gets ticks before their moment."""

    def __init__(self, name: str, ahead: bool) -> None:
        self.name, self.schedules_ahead = name, ahead
        self.ticks: list[tuple[float, Tick]] = []
        self.closed = False

    def open(self, arrangement: object) -> None:
        """Nothing to open."""

    def send(self, events: object) -> None:
        raise AssertionError("a tick sink is sent ticks")

    def send_tick(self, tick: Tick) -> None:
        self.ticks.append((time.monotonic(), tick))

    def close(self) -> None:
        self.closed = True


def test_each_tick_sounds_the_steps_since_the_last_on_every_output_at_its_moment() -> None:
    ahead, on_time = Recorder("midi", True), Recorder("osc", False)
    outputs = build_outputs(Mapping.load("daw"), RunInfo(("a", "b")), [], live_sinks=[ahead, on_time],
                            live=LiveSettings(clock="tempo"))
    delivery = Delivery(outputs.consumers)
    step = 0
    for burst in range(4):  # a burst of steps, then a wait longer than a tick: each burst is one tick
        for _ in range(5):
            delivery.deliver(Frame(step, 0.0, [1.0 + step % 3, math.nan if step == 7 else 2.0]))
            step += 1
        time.sleep(0.3)
    stats = outputs.finish_stats(delivery.close())
    assert ahead.closed and on_time.closed and not stats.errors
    ticks = [tick for _, tick in on_time.ticks]
    assert [tick for _, tick in ahead.ticks] == ticks  # one clock: the same ticks on both
    assert [(t.first_step, t.last_step, t.frame_count) for t in ticks] == [(0, 4, 5), (5, 9, 5), (10, 14, 5),
                                                                          (15, 19, 5)]
    assert [len(t.events.alarms) for t in ticks] == [0, 1, 0, 0]  # the NaN at step 7, in the second tick
    # ticks fall on the grid of daw's sixteenth notes (0.125 s), in order
    indices = [t.index for t in ticks]
    assert all(b > a for a, b in zip(indices, indices[1:]))
    assert all(t.events.duration_s == 0.125 and t.events.start_s == t.index * 0.125 for t in ticks)
    origin = ticks[0].due_s - ticks[0].index * 0.125
    assert all(t.due_s == pytest.approx(origin + t.index * 0.125, abs=1e-9) for t in ticks)
    # the scheduling output has each tick first; the other gets it at its moment, never before
    assert all(got_ahead <= got for (got_ahead, _), (got, _) in zip(ahead.ticks, on_time.ticks))
    assert all(got >= tick.due_s for got, tick in on_time.ticks)
    assert "4 ticks, 4 a beat at 120 BPM" in stats.notes["live clock"]


def test_steps_slower_than_the_tempo_each_sound_on_the_next_tick() -> None:
    gatherer = TickGatherer(load_preset("daw"), ("a",))
    grid = BeatGrid(600.0, origin_s=time.monotonic() + 0.02)  # sixteenths of 25 ms
    got: list[Tick] = []
    clock = TempoClock(gatherer, GridSteps(grid, 0.25), [], [got.append]).start()
    for step in range(4):
        clock.offer(Frame(step, 0.0, [1.0 + step]))
        time.sleep(0.08)  # about three ticks per step
    clock.stop()
    assert [(t.first_step, t.last_step) for t in got] == [(0, 0), (1, 1), (2, 2), (3, 3)]
    assert clock.ticks == 4 and clock.silent >= 4  # the ticks between had nothing new


def test_the_last_steps_sound_at_stop_even_when_the_source_has_stopped() -> None:
    class Stopped:
        skipped = 0

        def upcoming(self, now_s: float) -> None:
            return None

        def done(self, step: int) -> None:
            raise AssertionError("no step comes from a stopped source")

        def set_waker(self, wake: threading.Event | None) -> None:
            """Nothing will come to wake the clock for."""

        def describe(self) -> str:
            return "stopped"

        def close(self) -> None:
            """Nothing to leave."""

    got: list[Tick] = []
    gatherer = TickGatherer(load_preset("daw"), ("a",))
    clock = TempoClock(gatherer, Stopped(), [], [got.append]).start()  # type: ignore[arg-type]
    clock.offer(Frame(0, 0.0, [math.nan]))
    clock.stop()
    assert len(got) == 1 and got[0].events.alarms[0].kind == "nan"  # an alarm is never lost with the end


def test_the_clock_is_the_preset_s_unless_every_or_max_fps_or_a_choice_says_otherwise() -> None:
    daw, perone = Mapping.load("daw"), Mapping.load("perone2019")
    assert (OutputSpec().live_for(daw).clock, OutputSpec().live_for(perone).clock) == ("tempo", "free")
    assert OutputSpec(every=10).live_for(daw).clock == "free"  # every thins the free clock: it picks it
    assert OutputSpec(clock="tempo").live_for(perone).clock == "tempo"
    assert OutputSpec(clock_in="DAW").live_for(perone).clock == "tempo"  # an incoming clock drives the tempo one
    with pytest.raises(ValueError, match="every thins the free clock, but clock='tempo' was asked for"):
        OutputSpec(every=10, clock="tempo").live_for(daw)
    with pytest.raises(ValueError, match="clock_in drives the tempo clock, but clock='free'"):
        OutputSpec(clock="free", clock_in="DAW").live_for(daw)
    with pytest.raises(ValueError, match="clock must be one of 'tempo', 'free' or None"):
        OutputSpec(clock="swing")
    with pytest.raises(ValueError, match="midi_clock=True sends MIDI clock on the live MIDI port, but no port"):
        OutputSpec(midi_clock=True)
    with pytest.raises(ValueError, match="midi_clock and clock_in were both given"):
        OutputSpec(midi="DAW", midi_clock=True, clock_in="DAW")
    with pytest.raises(ValueError, match="clock_in and link were both given"):
        OutputSpec(clock_in="DAW", link=True).live_for(daw)
