"""Replay: frames go out at musical time, scaled by speed, to live sinks."""

from __future__ import annotations

import pytest

from bridge.errors import SinkError
from bridge.frames import Frame, RunInfo
from bridge.mapping import Mapping
from bridge.pipeline import build_outputs
from bridge.rate import RateControl
from bridge.replay import paced, replay


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 9))
        self.now += seconds


def test_paced_waits_for_each_steps_musical_time() -> None:
    clock = FakeClock()
    frames = [Frame(step=s, time_s=0.0, norms=[1.0]) for s in (10, 11, 13)]
    out = list(paced(frames, seconds_per_step=0.125, speed=2.0, clock=clock, sleep=clock.sleep))
    assert out == frames
    # each logged step is one musical step: step 11 is due 0.0625 s after step 10, step 13 0.0625 s later
    assert clock.sleeps == [0.0625, 0.0625]
    kept = FakeClock()
    assert list(paced(frames, seconds_per_step=0.125, speed=2.0, clock=kept, sleep=kept.sleep, keep_gaps=True)) == frames
    # with kept gaps step 13 is due at 3 x 0.0625 s = 0.1875 s: step 12's silence is waited out
    assert kept.sleeps == [0.0625, 0.125]


def test_paced_does_not_wait_when_behind() -> None:
    clock = FakeClock()
    frames = [Frame(step=s, time_s=0.0, norms=[1.0]) for s in range(3)]

    def slow_consumer():
        for frame in paced(frames, 0.1, clock=clock, sleep=clock.sleep):
            clock.now += 0.5  # each frame takes longer than a step to handle
            yield frame

    assert len(list(slow_consumer())) == 3
    assert clock.sleeps == []


def test_speed_must_be_positive() -> None:
    with pytest.raises(ValueError, match="speed must be > 0"):
        list(paced([Frame(0, 0.0, [1.0])], 0.1, speed=0))


class Recorder:
    name = "recorder"

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.closed = False

    def open(self, arrangement: object) -> None:
        """Nothing to open: this stand-in sink only records what it is sent."""

    def send(self, events) -> None:  # type: ignore[no-untyped-def]
        self.steps.append(events.step)

    def close(self) -> None:
        self.closed = True


def test_replay_sends_the_rate_controlled_frames_and_closes() -> None:
    frames = [Frame(step=s, time_s=0.0, norms=[1.0, 2.0]) for s in range(6)]
    sink = Recorder()
    outputs = build_outputs(Mapping.load("daw"), RunInfo(("a", "b")), [], live_sinks=[sink],
                            rate=RateControl(every=2))
    stats = replay(frames, outputs, speed=1000.0)
    assert sink.steps == [1, 3, 5] and sink.closed
    assert (stats.frames_in, stats.frames_done) == (6, 6)


def test_replay_closes_sinks_on_ctrl_c() -> None:
    def interrupted():
        yield Frame(step=0, time_s=0.0, norms=[1.0])
        raise KeyboardInterrupt

    sink = Recorder()
    with pytest.raises(KeyboardInterrupt):
        outputs = build_outputs(Mapping.load("daw"), RunInfo(("a",)), [], live_sinks=[sink])
        replay(interrupted(), outputs, speed=1000.0)
    assert sink.steps == [0] and sink.closed


class Unopenable(Recorder):
    def open(self, arrangement: object) -> None:
        raise OSError("port vanished")


def test_replay_with_nothing_to_play_to_is_an_error() -> None:
    outputs = build_outputs(Mapping.load("daw"), RunInfo(("a",)), [], live_sinks=[Unopenable()])
    with pytest.raises(SinkError, match="no output could be opened.*port vanished"):
        replay([Frame(0, 0.0, [1.0])], outputs)
