"""A CSV of norms, as TensorBoard or W&B export it, read into frames, and frames written back as CSV.

Reading (``open_csv``): one header row with a ``step`` column (any case, also W&B's ``_step``) and one
column per layer, in file order; the optional columns ``wall_time`` (also ``Wall time``, W&B's
``_timestamp``), ``loss`` and ``lr`` fill ``Frame.time_s``, ``loss`` and ``lr``, which are NaN (unknown)
when absent. A header ``layer:NAME`` is always a layer named ``NAME``. Empty cells and ``nan`` read as
NaN, ``inf``/``-inf`` as ±Inf; steps are whole numbers within int64 (negative ones too) that may repeat
but never decrease. Blank lines are skipped and a UTF-8 byte order mark is ignored.

Writing (``write_csv``): ``step,wall_time,loss,lr,<layers...>`` with floats written by ``repr``, so reading
the file back gives the very same float64 values.

``bridge.runlog.open_run`` reads any file that does not start with the run log's magic bytes as such a
CSV, so the errors here for a file that is neither name both kinds of run file.
"""

from __future__ import annotations

import csv
import math
import operator
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from bridge.atomic import replacing
from bridge.errors import RunLogError
from bridge.frames import Frame, RunInfo
from bridge.paths import path_text, require_parent

__all__ = ["EXPECTED_INPUT", "LAYER_PREFIX", "open_csv", "write_csv"]

#: A CSV column whose header starts with this is a layer named by the rest, whatever that rest is.
LAYER_PREFIX = "layer:"
#: What a run file may be; ends the errors about a file that is neither kind.
EXPECTED_INPUT = "expected a .gbrun run log written by gradbridge, or a CSV with a 'step' column"

# The start of a .gbrun run log (``bridge.runlog.MAGIC``), named when a file is neither kind of run file.
_NOT_A_RUN_LOG = "is not a run log: it does not start with b'GBRUN'"
# The steps a run may hold: int64, as a run log stores them.
_STEP_MIN, _STEP_MAX = -(2**63), 2**63 - 1
# What a cell starts with when a spreadsheet would run it as a formula (OWASP's list for CSV injection).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# CSV headers read as something other than a layer, after strip(), lower() and spaces -> "_".
_RESERVED = {"step": "step", "_step": "step", "wall_time": "wall_time", "_timestamp": "wall_time",
             "loss": "loss", "lr": "lr"}


def open_csv(path: str | os.PathLike[str]) -> tuple[RunInfo, Iterator[Frame]]:
    """Open a CSV of norms: its ``RunInfo`` (layer names from the header) and an iterator of its frames.

    The header is read at once, the rows lazily as the iterator is consumed; see the module docstring for
    the columns. Problems raise ``RunLogError`` naming the file, line and column.
    """
    path = path_text(path)
    try:
        layout = _read_layout(path)
    except OSError as exc:
        raise RunLogError(f"cannot read CSV {path}: {exc.strerror or exc}; {EXPECTED_INPUT}") from exc
    return layout.info, _iter_frames(path, layout)


def write_csv(path: str | os.PathLike[str], run_info: RunInfo, frames: Iterable[Frame]) -> int:
    """Write frames as CSV ``step,wall_time,loss,lr,<layers...>``; returns how many rows were written.

    Floats are written with ``repr`` (``nan``, ``inf``, ``-inf`` included), so ``open_csv`` reads back
    the very same float64 values. A layer whose name starts with ``layer:``, would read as a reserved
    column (``step``, ``_step``, ``wall_time``, ``_timestamp``, ``loss``, ``lr``, any case, spaces for
    underscores) or starts with a character a spreadsheet runs as a formula (``= + - @``, a tab or a
    carriage return) gets the header ``layer:`` + name, which reads back as the name itself; duplicate
    names are kept, in order. The file is written beside ``path`` and renamed into place once complete
    (``bridge.atomic``): a failure leaves an older file of that name as it was.
    """
    path = path_text(path)
    if not isinstance(run_info, RunInfo):
        raise TypeError(f"run_info must be a bridge.frames.RunInfo; got {type(run_info).__name__}")
    layers = len(run_info.layer_names)
    require_parent(path, "CSV")
    rows = 0
    with replacing(path, "CSV") as temporary:
        try:
            with open(temporary, "w", encoding="utf-8", newline="") as f:
                writer = csv.writer(f, lineterminator="\n")
                writer.writerow(["step", "wall_time", "loss", "lr",
                                 *(_layer_header(name) for name in run_info.layer_names)])
                for frame in frames:
                    if not isinstance(frame, Frame):
                        raise TypeError(f"frames must hold bridge.frames.Frame; got {type(frame).__name__}")
                    frame = frame.resolve()
                    if frame.layer_count != layers:
                        raise ValueError(f"frame at step {frame.step} has {frame.layer_count} layer norms but "
                                         f"run_info names {layers} layers")
                    writer.writerow([str(frame.step), repr(frame.time_s), repr(frame.loss), repr(frame.lr),
                                     *map(repr, frame.norms.tolist())])
                    rows += 1
        except OSError as exc:
            raise RunLogError(f"could not write CSV {path}: {exc.strerror or exc}; {path} was left as it "
                              f"was. Fix: free disk space, or choose another folder") from exc
    return rows


def _reserved_role(header: str) -> str | None:
    return _RESERVED.get(header.strip().lower().replace(" ", "_"))


def _layer_header(name: str) -> str:
    """The CSV header for a layer: its name, or ``layer:`` + name when that would read as something else
    (a reserved column, or a formula in a spreadsheet)."""
    if name.startswith(LAYER_PREFIX) or name.startswith(_FORMULA_STARTS) or _reserved_role(name) is not None:
        return LAYER_PREFIX + name
    return name


@dataclass(frozen=True)
class _Layout:
    info: RunInfo
    width: int
    roles: dict[str, int]  # reserved role -> column index
    layer_columns: tuple[int, ...]


def _rows(path: str, f: Iterable[str]) -> Iterator[tuple[int, list[str]]]:
    """Rows as (line number, cells), blank lines skipped, decoding and CSV errors as ``RunLogError``."""
    reader = csv.reader(f)
    try:
        for row in reader:
            if any(cell.strip() for cell in row):
                yield reader.line_num, row
    except (csv.Error, UnicodeDecodeError) as exc:
        raise RunLogError(f"{path}, line {reader.line_num + 1}: not a readable CSV ({exc}); "
                          f"{EXPECTED_INPUT}") from exc


def _read_layout(path: str) -> _Layout:
    with open(path, encoding="utf-8-sig", newline="") as f:
        header = next(iter(_rows(path, f)), (0, []))[1]
    roles: dict[str, int] = {}
    names: list[str] = []
    columns: list[int] = []
    for index, cell in enumerate(header):
        role = None if cell.startswith(LAYER_PREFIX) else _reserved_role(cell)
        if role is None:
            names.append(cell[len(LAYER_PREFIX):] if cell.startswith(LAYER_PREFIX) else cell)
            columns.append(index)
        elif role in roles:
            raise RunLogError(f"{path}: columns {roles[role] + 1} ({header[roles[role]]!r}) and {index + 1} "
                              f"({cell!r}) both give {role!r}; keep one of them")
        else:
            roles[role] = index
    if "step" not in roles:
        raise RunLogError(f"{path} {_NOT_A_RUN_LOG} and its first row {header[:6]!r} has no 'step' column; "
                          f"{EXPECTED_INPUT} (also '_step' or 'Step') and one column per layer")
    if not names:
        raise RunLogError(f"{path} has a 'step' column but no layer columns; add one column of norms per layer")
    return _Layout(RunInfo(tuple(names)), len(header), roles, tuple(columns))


def _parse_float(text: str, where: str) -> float:
    stripped = text.strip()
    if not stripped:
        return math.nan
    try:
        return float(stripped)
    except ValueError:
        raise RunLogError(f"{where}: cannot read {text!r} as a number; expected a decimal number, "
                          f"'nan', 'inf', '-inf' or an empty cell") from None


def _parse_step(text: str, where: str) -> int:
    stripped = text.strip()
    try:
        return int(stripped)
    except ValueError:
        pass
    try:
        value = float(stripped)
    except ValueError:
        value = math.nan
    if not value.is_integer():
        raise RunLogError(f"{where}: cannot read {text!r} as a step; expected a whole number such as 0 or 12")
    return int(value)


def _cell_locator(path: str, line: int, header: list[str]) -> Callable[[int], str]:
    """A function naming a cell of ``line`` for error messages: file, line, column number and header."""
    return lambda col: f"{path}, line {line}, column {col + 1} ({header[col]!r})"


def _iter_frames(path: str, layout: _Layout) -> Iterator[Frame]:
    step_col = layout.roles["step"]
    optional = [layout.roles.get(role) for role in ("wall_time", "loss", "lr")]
    value_cols = [col for col in optional if col is not None] + list(layout.layer_columns)
    skip = len(value_cols) - len(layout.layer_columns)  # how many of the values are time, loss, lr
    # time, loss and lr from the parsed values with NaN appended: index -1 (an absent column) gives the NaN
    pick_optional = operator.itemgetter(*_positions(optional))
    pick: Callable[[list[str]], Sequence[str]] = operator.itemgetter(*value_cols)
    if len(value_cols) == 1:  # itemgetter of one index gives the cell itself, not a tuple
        only = value_cols[0]
        pick = lambda row: (row[only],)
    previous: tuple[int, int] | None = None  # (step, line)
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = _rows(path, f)
        header = next(rows, (0, []))[1]
        for line, row in rows:
            if len(row) != layout.width:
                raise RunLogError(f"{path}, line {line}: {len(row)} cells, but the header has {layout.width} "
                                  f"columns; every row needs one cell per column")
            try:
                step = int(row[step_col])
            except ValueError:  # a float such as 12.0, or no number: the careful parse says which
                step = _parse_step(row[step_col], _cell_locator(path, line, header)(step_col))
            if not _STEP_MIN <= step <= _STEP_MAX:
                raise RunLogError(f"{_cell_locator(path, line, header)(step_col)}: step {row[step_col].strip()!r} "
                                  f"is outside what a step can be (-2**63 to 2**63-1); correct that cell")
            if previous is not None and step < previous[0]:
                raise RunLogError(f"{_cell_locator(path, line, header)(step_col)}: step {step} comes after step "
                                  f"{previous[0]} (line {previous[1]}); steps must not decrease, sort the rows by step")
            previous = (step, line)
            cells = pick(row)
            if "" in cells:
                cells = [cell or "nan" for cell in cells]
            try:  # the whole row at once (NumPy parses as float() does); the careful parse names a bad cell
                values = np.array(cells, dtype=np.float64)
            except ValueError:
                where = _cell_locator(path, line, header)
                values = np.array([_parse_float(row[col], where(col)) for col in value_cols], dtype=np.float64)
            time_s, loss, lr = pick_optional([*values[:skip].tolist(), math.nan])
            yield Frame(step, time_s, values[skip:], loss, lr)


def _positions(optional: list[int | None]) -> list[int]:
    """Index of each present optional column among the parsed values (-1 for an absent one)."""
    out, seen = [], 0
    for col in optional:
        out.append(-1 if col is None else seen)
        seen += col is not None
    return out
