"""Rate control for live outputs: which steps sound, and what the free clock folds the others into."""

from __future__ import annotations

import math

import pytest

from bridge.clock import FreeClock
from bridge.frames import Frame
from bridge.presets import load_preset
from bridge.rate import RateControl
from bridge.ticks import Tick, TickGatherer


def frames(rows: list[list[float]]) -> list[Frame]:
    return [Frame(step=i, time_s=float(i), norms=row, loss=float(i), lr=0.1) for i, row in enumerate(rows)]


def ticks_of(rate: RateControl, given: list[Frame]) -> list[Tick]:
    """What the free live clock sounds of ``given`` under ``rate`` (the preset: pentatonic)."""
    got: list[Tick] = []
    layers = tuple("abcdefgh"[:given[0].layer_count])
    clock = FreeClock(TickGatherer(load_preset("pentatonic"), layers, rate.aggregate), rate, [got.append])
    for frame in given:
        clock.offer(frame)
    return got


def test_default_passes_every_frame_untouched() -> None:
    rate = RateControl()
    assert rate.passes_everything and [rate.arrived() for _ in range(3)] == [True, True, True]
    given = frames([[1.0], [2.0]])
    assert [(t.first_step, t.last_step, list(t.events.norms)) for t in ticks_of(RateControl(), given)] == \
        [(0, 0, [1.0]), (1, 1, [2.0])]


def test_every_third_step_with_max() -> None:
    rate = RateControl(every=3, aggregate="max")
    assert [rate.arrived() for _ in range(6)] == [False, False, True, False, False, True]
    got = ticks_of(RateControl(every=3, aggregate="max"), frames([[1, 5], [3, 2], [2, 4], [9, 0], [1, 1], [0, 2]]))
    assert [(t.first_step, t.last_step, t.frame_count) for t in got] == [(0, 2, 3), (3, 5, 3)]
    assert (list(got[0].events.norms), got[0].events.loss) == ([3.0, 5.0], 2.0)
    assert (list(got[1].events.norms), got[1].events.loss) == ([9.0, 2.0], 5.0)


def test_every_second_step_with_mean() -> None:
    # mean: each layer sounds the gathered step nearest the mean norm (the first of two as near), the
    # loss is the mean
    got = ticks_of(RateControl(every=2, aggregate="mean"), frames([[1.0], [3.0], [10.0], [20.0]]))
    assert [(list(t.events.norms), t.events.loss) for t in got] == [([1.0], 0.5), ([10.0], 2.5)]


def test_nan_is_never_averaged_away() -> None:
    for aggregate in ("max", "mean"):
        got = ticks_of(RateControl(every=3, aggregate=aggregate), frames([[1.0, 1.0], [math.nan, 1.0], [1.0, math.inf]]))
        assert len(got) == 1
        norms = got[0].events.norms
        assert math.isnan(norms[0]) and norms[1] == math.inf
        assert [(a.layer, a.kind) for a in got[0].events.alarms] == [(0, "nan"), (1, "+inf")]


def test_max_fps_uses_the_clock() -> None:
    now = [0.0]
    rate = RateControl(max_fps=10, clock=lambda: now[0])  # at most one tick each 0.1 s
    sounded = []
    for i in range(10):
        now[0] = i * 0.04  # 25 frames a second arrive
        if rate.arrived():
            sounded.append(i)
    # t = 0 sounds; then 0.12 (step 3, for steps 1..3), 0.24 (step 6), 0.36 (step 9)
    assert sounded == [0, 3, 6, 9]


@pytest.mark.parametrize("kwargs, message", [
    ({"every": 0}, "every must be an integer >= 1"),
    ({"max_fps": -1.0}, "max_fps must be a number >= 0"),
    ({"aggregate": "median"}, "aggregate must be one of max, mean"),
])
def test_bad_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RateControl(**kwargs)


def test_aggregate_does_not_change_the_offered_frames() -> None:
    given = frames([[1.0, 2.0], [3.0, 1.0]])
    got = ticks_of(RateControl(every=2), given)
    assert list(got[0].events.norms) == [3.0, 2.0]
    assert list(given[0].norms) == [1.0, 2.0] and list(given[1].norms) == [3.0, 1.0]
