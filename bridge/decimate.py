"""Decimation for drawing long runs: per pixel column, the minimum and maximum of each series.

A run of a million steps drawn 1600 pixels wide puts hundreds of steps into each pixel column. Drawing
all of them costs time and shows nothing more than each column's lowest and highest value, so a series
is reduced to those two points per column, each a real (step, value) pair of the run, in step order.
Columns split the step range into equal parts: ``step_to_column``.

Alarms are never decimated: ``alarm_runs`` packs them into runs of consecutive frames of one layer and
kind, from which every alarm can be told back exactly.
"""

from __future__ import annotations

import numpy as np

__all__ = ["alarm_runs", "column_starts", "min_max_columns", "step_to_column"]


def step_to_column(steps: np.ndarray, columns: int) -> np.ndarray:
    """The pixel column (0 to ``columns - 1``) of each step, int64.

    The steps from the first to the last (inclusive) are split into ``columns`` equal parts:
    ``floor((step - first) × columns / (last - first + 1))``, in exact integers (in float64 when the span
    times ``columns`` passes 2**62, steps beyond any run's). ``steps`` must not decrease.
    """
    if isinstance(columns, bool) or not isinstance(columns, (int, np.integer)):
        raise TypeError(f"columns must be an int >= 1; got {type(columns).__name__}")
    if columns < 1:
        raise ValueError(f"columns must be >= 1 (the plot's width in pixels); got {columns}")
    steps = np.asarray(steps, dtype=np.int64)
    if steps.size == 0:
        return np.zeros(0, dtype=np.int64)
    first, span = int(steps[0]), int(steps[-1]) - int(steps[0]) + 1
    if span * int(columns) < 2**62:  # exact integer arithmetic
        return (steps - first) * int(columns) // span
    return np.minimum(np.floor((steps - first) / span * int(columns)).astype(np.int64), int(columns) - 1)


def column_starts(column: np.ndarray) -> np.ndarray:
    """Index of the first element of each non-empty column, given each element's (non-decreasing) column."""
    column = np.asarray(column)
    if column.size == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.diff(column, prepend=column[0] - 1))


def min_max_columns(column: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column and per series, the indices of the lowest and the highest finite value.

    Args:
        column: each row's pixel column, non-decreasing, shape ``(n,)`` (see ``step_to_column``).
        values: shape ``(n,)`` or ``(n, series)``; NaN and ±Inf are ignored (no value).

    Returns:
        ``(low, high)``, each of shape ``(columns_used, series)`` (or ``(columns_used,)`` for 1-D values):
        the row index of the first minimum and of the first maximum of the finite values of each used
        column, or -1 where a column holds no finite value of that series.
    """
    values = np.asarray(values)
    one_d = values.ndim == 1
    matrix = values[:, np.newaxis] if one_d else values
    column = np.asarray(column)
    if matrix.shape[0] != column.shape[0]:
        raise ValueError(f"column has {column.shape[0]} rows but values has {matrix.shape[0]}; give one column per row")
    starts = column_starts(column)
    if starts.size == 0:
        empty = np.zeros((0,) + matrix.shape[1:], dtype=np.int64)
        return (empty[:, 0], empty[:, 0]) if one_d else (empty, empty)
    low = np.empty((starts.size, matrix.shape[1]), dtype=np.int64)
    high = np.empty_like(low)
    # a few columns at a time, about _CHUNK_CELLS values each, so the temporaries stay small
    rows_per_chunk = max(1, _CHUNK_CELLS // max(1, matrix.shape[1]))
    bounds = np.append(starts, matrix.shape[0])
    first_column = 0
    while first_column < starts.size:
        last_column = int(np.searchsorted(bounds, bounds[first_column] + rows_per_chunk, side="right")) - 1
        last_column = min(max(last_column, first_column + 1), starts.size)
        top, bottom = int(bounds[first_column]), int(bounds[last_column])
        chunk = matrix[top:bottom]
        local = starts[first_column:last_column] - top
        finite = np.isfinite(chunk)
        for out, fill, ufunc in ((low, np.inf, np.minimum), (high, -np.inf, np.maximum)):
            found = _first_extreme(np.where(finite, chunk, fill), local, ufunc, finite)
            out[first_column:last_column] = np.where(found < 0, -1, found + top)
        first_column = last_column
    return (low[:, 0], high[:, 0]) if one_d else (low, high)


#: About how many values ``min_max_columns`` takes at once.
_CHUNK_CELLS = 1 << 18


def _first_extreme(matrix: np.ndarray, starts: np.ndarray, ufunc: np.ufunc, finite: np.ndarray) -> np.ndarray:
    """Row index of the first occurrence of each column segment's extreme (``ufunc.reduceat``), per series,
    -1 where a segment holds no finite value."""
    rows = matrix.shape[0]
    extreme = ufunc.reduceat(matrix, starts, axis=0)
    lengths = np.diff(np.append(starts, rows))
    hit = (matrix == np.repeat(extreme, lengths, axis=0)) & finite
    index = np.where(hit, np.arange(rows)[:, np.newaxis], rows)
    first = np.minimum.reduceat(index, starts, axis=0)
    return np.where(first == rows, -1, first)


def alarm_runs(kind: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Runs of consecutive equal non-zero codes down each column of ``kind`` (rows: frames, columns: layers).

    Returns ``(layer, first_row, last_row, code)``, int64 arrays with one entry per run, ordered by layer
    then row. Every non-zero cell lies in exactly one run, and every cell of a run holds its code, so the
    alarms can be told back exactly from the runs.
    """
    kind = np.asarray(kind)
    if kind.ndim != 2:
        raise ValueError(f"kind must be a (frames, layers) array; got shape {kind.shape}")
    rows = kind.shape[0]
    if rows == 0 or not kind.any():
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, empty
    by_layer = np.ascontiguousarray(kind.T).reshape(-1)
    # a run starts where the code changes, or where a layer's column starts
    edge = np.ones(by_layer.size, dtype=bool)
    edge[1:] = by_layer[1:] != by_layer[:-1]
    edge[::rows] = True
    starts = np.flatnonzero(edge)
    ends = np.append(starts[1:], by_layer.size) - 1
    code = by_layer[starts].astype(np.int64)
    keep = code != 0
    starts, ends, code = starts[keep], ends[keep], code[keep]
    return starts // rows, starts % rows, ends % rows, code
