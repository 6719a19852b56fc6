"""Rate control for live outputs: which frames sound, and what the folded ones add up to."""

from __future__ import annotations

import math

import pytest

from bridge.frames import Frame
from bridge.rate import RateControl


def frames(rows: list[list[float]]) -> list[Frame]:
    return [Frame(step=i, time_s=float(i), norms=row, loss=float(i), lr=0.1) for i, row in enumerate(rows)]


def test_default_passes_every_frame_untouched() -> None:
    rate = RateControl()
    given = frames([[1.0], [2.0]])
    assert [rate.offer(f) for f in given] == given


def test_every_third_step_with_max() -> None:
    rate = RateControl(every=3, aggregate="max")
    out = [rate.offer(f) for f in frames([[1, 5], [3, 2], [2, 4], [9, 0], [1, 1], [0, 2]])]
    assert [o is None for o in out] == [True, True, False, True, True, False]
    assert (out[2].step, list(out[2].norms), out[2].loss) == (2, [3.0, 5.0], 2.0)
    assert (out[5].step, list(out[5].norms), out[5].loss) == (5, [9.0, 2.0], 5.0)
    assert rate.folded == 4


def test_every_second_step_with_mean() -> None:
    rate = RateControl(every=2, aggregate="mean")
    out = [rate.offer(f) for f in frames([[1.0], [3.0], [10.0], [20.0]])]
    assert list(out[1].norms) == [2.0] and out[1].loss == 0.5
    assert list(out[3].norms) == [15.0] and out[3].loss == 2.5


def test_nan_is_never_averaged_away() -> None:
    for aggregate in ("max", "mean"):
        rate = RateControl(every=3, aggregate=aggregate)
        out = [rate.offer(f) for f in frames([[1.0, 1.0], [math.nan, 1.0], [1.0, math.inf]])]
        assert math.isnan(out[2].norms[0]) and out[2].norms[1] == math.inf


def test_max_fps_uses_the_clock() -> None:
    now = [0.0]
    rate = RateControl(max_fps=10, clock=lambda: now[0])  # at most one frame each 0.1 s
    sounded = []
    for i, frame in enumerate(frames([[float(i)] for i in range(10)])):
        now[0] = i * 0.04  # 25 frames a second arrive
        out = rate.offer(frame)
        if out is not None:
            sounded.append((out.step, float(out.norms[0])))
    # t = 0 sounds; then 0.12 (step 3, max of 1..3), 0.24 (step 6), 0.36 (step 9)
    assert sounded == [(0, 0.0), (3, 3.0), (6, 6.0), (9, 9.0)]


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
    rate = RateControl(every=2)
    rate.offer(given[0])
    out = rate.offer(given[1])
    assert list(out.norms) == [3.0, 2.0]
    assert list(given[0].norms) == [1.0, 2.0] and list(given[1].norms) == [3.0, 1.0]
