"""Tests for ``bridge.decimate``: pixel columns, lowest and highest per column, alarm runs (NumPy only)."""

from __future__ import annotations

import numpy as np
import pytest

from bridge.decimate import alarm_runs, column_starts, min_max_columns, step_to_column


def test_step_to_column_splits_the_step_range_into_equal_parts() -> None:
    # steps 10..19 (span 10) into 4 columns: floor((s - 10) * 4 / 10)
    assert step_to_column(np.arange(10, 20), 4).tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]
    # gaps and repeats keep their place on the step axis
    assert step_to_column(np.array([0, 0, 5, 99]), 10).tolist() == [0, 0, 0, 9]
    # more columns than steps: each step its own column
    assert step_to_column(np.array([3, 4, 5]), 100).tolist() == [0, 33, 66]


def test_step_to_column_with_huge_steps_stays_in_range() -> None:
    # span × columns beyond int64: computed in float64, so 2**61 / (2**62 + 1) × 1000 = 499.9999... rounds
    # to 500; the first and last steps still take the first and last column
    steps = np.array([0, 2**61, 2**62], dtype=np.int64)
    assert step_to_column(steps, 1000).tolist() == [0, 500, 999]


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-3, ValueError), (2.5, TypeError), (True, TypeError)])
def test_step_to_column_rejects_bad_column_counts(bad: object, error: type) -> None:
    with pytest.raises(error, match="columns"):
        step_to_column(np.arange(5), bad)  # type: ignore[arg-type]


def test_column_starts() -> None:
    assert column_starts(np.array([0, 0, 2, 2, 2, 5])).tolist() == [0, 2, 5]
    assert column_starts(np.array([], dtype=np.int64)).tolist() == []


@pytest.mark.parametrize("chunk_cells", [1, 4, 1 << 18])
def test_min_max_columns_finds_the_first_extreme_and_skips_non_finite(monkeypatch: pytest.MonkeyPatch,
                                                                      chunk_cells: int) -> None:
    monkeypatch.setattr("bridge.decimate._CHUNK_CELLS", chunk_cells)
    column = np.array([0, 0, 0, 1, 1, 2, 2])
    values = np.array([[3.0, np.nan],
                       [1.0, np.nan],
                       [1.0, np.inf],
                       [np.nan, 5.0],
                       [7.0, 5.0],
                       [2.0, -np.inf],
                       [9.0, 4.0]])
    low, high = min_max_columns(column, values)
    # column 0: layer 0 min 1.0 first at row 1, max 3.0 at row 0; layer 1 has nothing finite
    # column 1: layer 0 only row 4; layer 1 5.0 twice: the first, row 3
    # column 2: layer 0 min row 5, max row 6; layer 1 only row 6
    assert low.tolist() == [[1, -1], [4, 3], [5, 6]]
    assert high.tolist() == [[0, -1], [4, 3], [6, 6]]


@pytest.mark.parametrize("chunk_cells", [1, 7, 64, 1 << 18])
def test_min_max_columns_one_dimensional_matches_a_plain_loop(monkeypatch: pytest.MonkeyPatch,
                                                              chunk_cells: int) -> None:
    monkeypatch.setattr("bridge.decimate._CHUNK_CELLS", chunk_cells)  # a few columns at a time, or all at once
    rng = np.random.default_rng(3)
    values = rng.normal(size=1000)
    values[rng.choice(1000, 50, replace=False)] = np.nan
    column = np.sort(rng.integers(0, 37, size=1000))
    low, high = min_max_columns(column, values)
    used = np.unique(column)
    assert low.shape == high.shape == (used.size,)
    for k, c in enumerate(used):
        rows = np.flatnonzero(column == c)
        finite = rows[np.isfinite(values[rows])]
        if finite.size == 0:
            assert low[k] == high[k] == -1
        else:
            assert low[k] == finite[np.argmin(values[finite])]
            assert high[k] == finite[np.argmax(values[finite])]


def test_min_max_columns_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="column has 3 rows but values has 2"):
        min_max_columns(np.arange(3), np.ones(2))


def test_alarm_runs_pack_every_alarm_and_nothing_else() -> None:
    kind = np.zeros((8, 3), dtype=np.int8)
    kind[2:5, 0] = 1          # a run of three NaNs on layer 0
    kind[5, 0] = 2            # then an Inf: a new run
    kind[7, 0] = 1
    kind[0, 2] = 3            # -Inf at the first frame of layer 2
    kind[6:8, 2] = 1          # and a NaN run at the end
    layer, first, last, code = alarm_runs(kind)
    assert list(zip(layer.tolist(), first.tolist(), last.tolist(), code.tolist())) == [
        (0, 2, 4, 1), (0, 5, 5, 2), (0, 7, 7, 1), (2, 0, 0, 3), (2, 6, 7, 1)]


def test_alarm_runs_do_not_join_the_end_of_one_layer_to_the_next() -> None:
    kind = np.zeros((4, 2), dtype=np.int8)
    kind[3, 0] = 1
    kind[0, 1] = 1
    layer, first, last, _ = alarm_runs(kind)
    assert list(zip(layer.tolist(), first.tolist(), last.tolist())) == [(0, 3, 3), (1, 0, 0)]


def test_alarm_runs_round_trip_on_random_alarms() -> None:
    rng = np.random.default_rng(11)
    kind = rng.choice(np.array([0, 0, 0, 1, 2, 3], dtype=np.int8), size=(300, 5))
    rebuilt = np.zeros_like(kind)
    for layer, first, last, code in zip(*alarm_runs(kind)):
        assert (rebuilt[first:last + 1, layer] == 0).all()  # runs never overlap
        rebuilt[first:last + 1, layer] = code
    assert np.array_equal(rebuilt, kind)
    assert alarm_runs(np.zeros((5, 2), dtype=np.int8))[0].size == 0
