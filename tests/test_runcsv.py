"""Tests for bridge.runcsv: CSV of norms in (as TensorBoard and W&B export it) and out, through open_run too."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge import runlog
from bridge.errors import RunLogError
from bridge.frames import Frame, RunInfo
from bridge.runcsv import open_csv, write_csv
from bridge.runlog import RunLogWriter, open_run, read_run

EXPECTED_KINDS = ".gbrun run log written by gradbridge, or a CSV with a 'step' column"


def write_frames(path: Path, names: tuple[str, ...], count: int) -> None:
    with RunLogWriter(path, RunInfo(names)) as writer:
        for step in range(count):
            writer.append(Frame(step, 100.0 + step, [step + 0.5] * len(names), loss=float(step), lr=0.1))


def assert_same_floats(actual: np.ndarray, expected: np.ndarray) -> None:
    """Bitwise-equal values, NaN equal to NaN."""
    np.testing.assert_array_equal(np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64))


# --- through open_run / read_run, as users and the command line reach it ------------------------------------


def test_csv_export_import_round_trip_with_colliding_names(tmp_path: Path) -> None:
    names = ("loss", "Step", "layer:x", "wall time", "fc", "fc", "enc.0,attn", "")
    info = RunInfo(names)
    norms = np.array([[0.1, math.nan, math.inf, -math.inf, 0.0, 1e30, 3e38, 7.0]], dtype=np.float32)
    frames = [Frame(0, 1700000000.123456, norms[0], loss=0.1, lr=math.nan),
              Frame(3, math.nan, norms[0] / 2, loss=math.inf, lr=3e-4)]
    path = tmp_path / "norms.csv"

    assert write_csv(path, info, frames) == 2
    first_line = path.read_text().splitlines()[0]
    got_info, got = read_run(path)

    assert first_line == 'step,wall_time,loss,lr,layer:loss,layer:Step,layer:layer:x,layer:wall time,fc,fc,"enc.0,attn",'
    assert got_info.layer_names == names
    assert [f.step for f in got] == [0, 3]
    assert_same_floats([f.time_s for f in got], [1700000000.123456, math.nan])
    assert_same_floats([f.loss for f in got], [0.1, math.inf])
    assert_same_floats([f.lr for f in got], [math.nan, 3e-4])
    assert_same_floats(got[0].norms, norms[0].astype(np.float64))
    assert_same_floats(got[1].norms, (norms[0] / 2).astype(np.float64))
    assert got[0].norms[0] == 0.100000001490116119384765625


def test_binary_to_csv_and_back_is_exact(tmp_path: Path) -> None:
    log, csv_path = tmp_path / "run.gbrun", tmp_path / "run.csv"
    write_frames(log, ("a", "b"), 3)
    info, frames = read_run(log)
    write_csv(csv_path, info, frames)
    info2, frames2 = read_run(csv_path)
    assert info2.layer_names == ("a", "b")
    assert [(f.step, f.time_s, f.loss, f.lr, f.norms.tolist()) for f in frames2] == [
        (s, 100.0 + s, float(s), 0.1, [s + 0.5, s + 0.5]) for s in range(3)]


def test_csv_with_wandb_step_header(tmp_path: Path) -> None:
    path = tmp_path / "wandb.csv"
    path.write_text("\ufeff_step,enc.0/grad_norm,enc.1/grad_norm,_timestamp\n0,0.5,,1700000000.5\n"
                    "\n2,NaN,-inf,1700000001\n2, 1e-3 ,Infinity,\n")
    info, frames = read_run(path)
    assert info.layer_names == ("enc.0/grad_norm", "enc.1/grad_norm")
    assert [f.step for f in frames] == [0, 2, 2]
    assert_same_floats(np.array([f.norms for f in frames]), [[0.5, math.nan], [math.nan, -math.inf],
                                                             [0.001, math.inf]])
    assert_same_floats([f.time_s for f in frames], [1700000000.5, 1700000001.0, math.nan])
    assert_same_floats([f.loss for f in frames], [math.nan] * 3)


def test_csv_from_tensorboard_with_capitalised_headers(tmp_path: Path) -> None:
    path = tmp_path / "tb.csv"
    path.write_text("Wall time,Step,Value\n1700000000.25,0,0.75\n1700000000.5,10.0,1.25\n")
    info, frames = read_run(path)
    assert info.layer_names == ("Value",)
    assert [(f.step, f.time_s, f.norms.tolist()) for f in frames] == [(0, 1700000000.25, [0.75]),
                                                                      (10, 1700000000.5, [1.25])]


def test_csv_bad_cell_names_file_line_column_and_value(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("step,a,b\n0,1,2\n1,1,oops\n")
    _, frames = open_run(path)
    with pytest.raises(RunLogError) as error:
        list(frames)
    assert str(error.value).startswith(f"{path}, line 3, column 3 ('b'): cannot read 'oops' as a number")


def test_csv_cells_read_whatever_the_column_order(tmp_path: Path) -> None:
    path = tmp_path / "order.csv"
    path.write_text("lr,a,step,loss,b,wall_time\n0.25,1.5,0,2.5,,7\n0.5,  ,3,,-2e3,\n")
    info, frames = read_run(path)
    assert info.layer_names == ("a", "b")
    assert [f.step for f in frames] == [0, 3]
    assert_same_floats(np.array([f.norms for f in frames]), [[1.5, math.nan], [math.nan, -2000.0]])
    assert_same_floats([f.lr for f in frames], [0.25, 0.5])
    assert_same_floats([f.loss for f in frames], [2.5, math.nan])
    assert_same_floats([f.time_s for f in frames], [7.0, math.nan])


def test_csv_of_one_layer_and_no_other_column(tmp_path: Path) -> None:
    path = tmp_path / "one.csv"
    path.write_text("step,a\n0, 4 \n1,\n2,inf\n")
    _, frames = read_run(path)
    assert_same_floats([f.norms[0] for f in frames], [4.0, math.nan, math.inf])
    path.write_text("step,a\n0,4\n1,x\n")
    with pytest.raises(RunLogError, match=r"line 3, column 2 \('a'\): cannot read 'x' as a number"):
        read_run(path)


def test_csv_bad_optional_cell_after_an_empty_one_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("step,a,loss\n0,,1\n1,,1O\n")
    with pytest.raises(RunLogError) as error:
        read_run(path)
    assert str(error.value) == (f"{path}, line 3, column 3 ('loss'): cannot read '1O' as a number; expected a "
                                "decimal number, 'nan', 'inf', '-inf' or an empty cell")


def test_csv_bad_step_and_short_row(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("step,a\n0.5,1\n")
    with pytest.raises(RunLogError, match=r"line 2, column 1 \('step'\): cannot read '0.5' as a step"):
        read_run(path)
    path.write_text("step,a,b\n0,1\n")
    with pytest.raises(RunLogError, match="line 2: 2 cells, but the header has 3 columns"):
        read_run(path)


def test_csv_decreasing_step_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "unsorted.csv"
    path.write_text("step,a\n5,1\n6,1\n3,1\n")
    with pytest.raises(RunLogError, match=r"line 4, column 1 \('step'\): step 3 comes after step 6 \(line 3\)"):
        read_run(path)


def test_csv_without_step_column_or_layers(tmp_path: Path) -> None:
    path = tmp_path / "nostep.csv"
    path.write_text("epoch,a\n0,1\n")
    with pytest.raises(RunLogError) as error:
        read_run(path)
    assert str(path) in str(error.value) and EXPECTED_KINDS in str(error.value)
    assert "['epoch', 'a']" in str(error.value)
    path.write_text("Step,loss,LR\n0,1,2\n")
    with pytest.raises(RunLogError, match="has a 'step' column but no layer columns"):
        read_run(path)


# --- the module itself ---------------------------------------------------------------------------------------


def test_runlog_still_exports_the_csv_names() -> None:
    from bridge.runlog import LAYER_PREFIX, write_csv as runlog_write_csv

    assert runlog_write_csv is write_csv
    assert LAYER_PREFIX == "layer:"
    assert {"write_csv", "LAYER_PREFIX"} <= set(runlog.__all__)


def test_open_csv_reads_header_at_once_and_rows_lazily(tmp_path: Path) -> None:
    path = tmp_path / "norms.csv"
    path.write_text("step,lr,a,layer:loss\n4,0.5,1.25,2\n9,0.25,,-3e-2\n")
    info, frames = open_csv(str(path))
    assert info == RunInfo(("a", "loss"))
    path.write_text("step,lr,a,layer:loss\n4,0.5,1.25,2\n9,0.25,,-3e-2\n1,0,0,0\n")  # read when iterated
    first, second = next(frames), next(frames)
    assert (first.step, first.lr, first.norms.tolist()) == (4, 0.5, [1.25, 2.0])
    assert (second.step, second.lr) == (9, 0.25)
    assert_same_floats(second.norms, [math.nan, -0.03])
    assert_same_floats([first.time_s, first.loss], [math.nan, math.nan])
    with pytest.raises(RunLogError, match=r"line 4, column 1 \('step'\): step 1 comes after step 9"):
        next(frames)


def test_open_csv_of_a_missing_file_is_a_run_log_error(tmp_path: Path) -> None:
    with pytest.raises(RunLogError, match=f"cannot read CSV {tmp_path / 'absent.csv'}: No such file"):
        open_csv(tmp_path / "absent.csv")
    with pytest.raises(TypeError, match="path must be a str or os.PathLike; got int"):
        open_csv(3)  # type: ignore[arg-type]


def test_file_that_is_neither_names_the_run_log_magic(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("epoch,a\n0,1\n")
    with pytest.raises(RunLogError) as error:
        open_run(path)
    assert str(error.value).startswith(f"{path} is not a run log: it does not start with b'GBRUN' and its first "
                                       "row ['epoch', 'a'] has no 'step' column")
    assert runlog.MAGIC == b"GBRUN"


def test_write_csv_checks_its_arguments_and_directory(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such"
    with pytest.raises(RunLogError, match=f"cannot create CSV {missing / 'x.csv'}: directory {missing} does not"):
        write_csv(missing / "x.csv", RunInfo(("a",)), [])
    with pytest.raises(TypeError, match="run_info must be a bridge.frames.RunInfo; got tuple"):
        write_csv(tmp_path / "x.csv", ("a",), [])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="frame at step 2 has 2 layer norms but run_info names 1 layers"):
        write_csv(tmp_path / "x.csv", RunInfo(("a",)), [Frame(2, 0.0, [1.0, 2.0])])
    assert write_csv(tmp_path / "empty.csv", RunInfo(("a", "step")), []) == 0
    assert (tmp_path / "empty.csv").read_text() == "step,wall_time,loss,lr,a,layer:step\n"


def test_row_parsed_at_once_reads_every_spelling_float_reads(tmp_path: Path) -> None:
    # row 1 parses in one call; row 2 has a cell of spaces, which only the careful per-cell parse reads (as NaN)
    path = tmp_path / "spellings.csv"
    path.write_text("step,a,b,c,d,e,f,loss\n"
                    "0,+1.5,\t2.5 ,1e500,-Infinity,1e-400,,4.9e-324\n"
                    "1,   ,-nan,1_000,NaN,-0.0,.25,iNf\n")
    _, frames = open_csv(path)
    first, second = list(frames)
    assert_same_floats(first.norms, [1.5, 2.5, math.inf, -math.inf, 0.0, math.nan])
    assert first.loss == 5e-324  # the smallest subnormal, 2 ** -1074
    assert_same_floats(second.norms, [math.nan, math.nan, 1000.0, math.nan, -0.0, 0.25])
    assert np.signbit(second.norms[4]) and second.loss == math.inf
    assert math.isnan(first.time_s) and math.isnan(second.lr)


def test_optional_columns_between_layers_land_in_their_fields(tmp_path: Path) -> None:
    path = tmp_path / "mixed.csv"
    path.write_text("a,Wall time,b,step,lr,c\n0.5,12.5,,3,1e-4,7\n-1,,2,4,,8\n")
    _, frames = open_csv(path)
    first, second = list(frames)
    assert (first.step, first.time_s, first.lr) == (3, 12.5, 1e-4)
    assert_same_floats(first.norms, [0.5, math.nan, 7.0])
    assert second.step == 4 and math.isnan(second.time_s) and math.isnan(second.lr) and math.isnan(second.loss)
    assert_same_floats(second.norms, [-1.0, 2.0, 8.0])


def test_bad_cell_after_a_cell_of_spaces_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("step,lr,a,b,c\n0,0.1,1,2,3\n1,0.1,  ,2,3x\n")
    _, frames = open_csv(path)
    assert next(frames).norms.tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(RunLogError) as error:
        next(frames)
    assert str(error.value) == (f"{path}, line 3, column 5 ('c'): cannot read '3x' as a number; expected a "
                                "decimal number, 'nan', 'inf', '-inf' or an empty cell")


# --- fuzz -------------------------------------------------------------------------------------------------------

# Pieces a CSV of norms is made of, for text that gets past the header check and into the rows.
CSV_PIECES = st.sampled_from(["step", "_step", "Step", "loss", "lr", "wall_time", "layer:", "a", "b", ",", ",,", "\n",
                              "\r\n", '"', '""', " ", "0", "1", "-1", "12", "1.5", "1e308", "9223372036854775808",
                              "-9223372036854775809", "nan", "inf", "-inf", "1_0", "0x10", "\x00", "\ufeff", "é",
                              "=cmd|' /C calc'!A0", "\t", "1" * 40])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300), pieces=st.lists(CSV_PIECES, max_size=60))
def test_any_bytes_give_csv_frames_or_a_run_log_error_and_nothing_else(tmp_path: Path, data: bytes,
                                                                       pieces: list[str]) -> None:
    """Fuzz: noise alone, noise after a good header, and CSV-like text built from the pieces CSVs of norms are
    made of: reading never raises anything but RunLogError, and every frame it gives has the header's layer
    count, a step within int64 and steps that never decrease."""
    path = tmp_path / "fuzz.csv"
    text = "".join(pieces)
    for candidate in (data, b"step,a,b\n" + data, ("step,a,b\n" + text).encode("utf-8", "surrogatepass"),
                      text.encode("utf-8", "surrogatepass")):
        path.write_bytes(candidate)
        try:
            info, frames = open_csv(path)
            read = list(frames)
        except RunLogError:
            continue
        assert all(frame.layer_count == len(info.layer_names) for frame in read)
        assert all(-(2**63) <= frame.step < 2**63 for frame in read)
        assert [frame.step for frame in read] == sorted(frame.step for frame in read)


def test_a_step_outside_int64_is_refused_naming_the_cell(tmp_path: Path) -> None:
    for step in ("1e308", "9223372036854775808", "-9223372036854775809"):
        path = tmp_path / "big.csv"
        path.write_text(f"step,fc1\n0,1.0\n{step},2.0\n")
        with pytest.raises(RunLogError) as caught:
            read_run(path)
        assert str(caught.value) == (f"{path}, line 3, column 1 ('step'): step {step!r} is outside what a step can "
                                     f"be (-2**63 to 2**63-1); correct that cell")
    path.write_text("step,fc1\n-9223372036854775808,1.0\n9223372036854775807,2.0\n")  # the ends of int64 are steps
    assert [frame.step for frame in read_run(path)[1]] == [-(2**63), 2**63 - 1]


def test_layer_names_a_spreadsheet_would_run_as_formulas_are_written_escaped_and_read_back(tmp_path: Path) -> None:
    import csv

    names = ("=cmd|' /C calc'!A0", "+1", "-x", "@SUM(A1)", "\tt", "fc1", "layer:=y")
    path = tmp_path / "norms.csv"
    write_csv(path, RunInfo(names), [Frame(0, 1.0, [1.0] * len(names))])
    with open(path, newline="", encoding="utf-8") as f:
        header = next(csv.reader(f))
    assert header == ["step", "wall_time", "loss", "lr", "layer:=cmd|' /C calc'!A0", "layer:+1", "layer:-x",
                      "layer:@SUM(A1)", "layer:\tt", "fc1", "layer:layer:=y"]
    assert not any(cell.startswith(("=", "+", "-", "@", "\t", "\r")) for cell in header)
    assert read_run(path)[0].layer_names == names
