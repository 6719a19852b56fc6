"""Tests for bridge.runlog: the binary run log, its crash safety, and telling it from a CSV (see test_runcsv)."""

from __future__ import annotations

import errno
import json
import math
import os
import signal
import struct
import subprocess
import sys
import textwrap
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest

from bridge import runlog
from bridge.errors import RunLogError
from bridge.frames import Frame, RunInfo
from bridge.runlog import (
    RunLogReader,
    RunLogWarning,
    RunLogWriter,
    open_run,
    read_run,
    record_bytes,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
EXPECTED_KINDS = ".gbrun run log written by gradbridge, or a CSV with a 'step' column"


def header_length(path: Path) -> int:
    """Header size read from the file itself: 5 magic + 2 version + 4 length + JSON + 4 CRC."""
    data = path.read_bytes()
    (json_len,) = struct.unpack_from("<I", data, 7)
    return 15 + json_len


def write_frames(path: Path, names: tuple[str, ...], count: int, **kwargs: object) -> None:
    with RunLogWriter(path, RunInfo(names), **kwargs) as writer:
        for step in range(count):
            writer.append(Frame(step, 100.0 + step, [step + 0.5] * len(names), loss=float(step), lr=0.1))


def assert_same_floats(actual: np.ndarray, expected: np.ndarray) -> None:
    """Bitwise-equal values, NaN equal to NaN."""
    np.testing.assert_array_equal(np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64))


# --- binary format --------------------------------------------------------------------------------------


def test_record_bytes_is_36_plus_4_per_layer() -> None:
    assert record_bytes(1) == 40
    assert record_bytes(3) == 48
    assert record_bytes(1000) == 4036
    with pytest.raises(ValueError, match="layer_count must be >= 1; got 0"):
        record_bytes(0)


def test_round_trip_keeps_specials_and_rounds_norms_to_float32(tmp_path: Path) -> None:
    path = tmp_path / "run.gbrun"
    info = RunInfo(("conv1", "fc.weight", "fc.bias", "out"), {"model": "cnn", "seed": "7"})
    frames = [
        Frame(0, 1700000000.123456, [0.1, math.nan, math.inf, -math.inf], loss=2.5, lr=math.nan),
        Frame(1, 1700000000.5, [0.0, 1e30, 3e38, 1e39], loss=math.inf, lr=1e-3),
        Frame(2**40, -1.0, [1.5, -0.0, 1e-46, 65504.0]),
    ]
    with RunLogWriter(path, info) as writer:
        for frame in frames:
            writer.append(frame)

    got_info, got = read_run(path)

    assert got_info == info
    assert [f.step for f in got] == [0, 1, 2**40]
    assert [f.time_s for f in got] == [1700000000.123456, 1700000000.5, -1.0]
    assert_same_floats([f.loss for f in got], [2.5, math.inf, math.nan])
    assert_same_floats([f.lr for f in got], [math.nan, 1e-3, math.nan])
    # float32(0.1) is 13421773 * 2**-27 exactly; 1e39 is beyond float32's 3.4e38 and becomes +Inf;
    # 1e-46 is below the smallest float32 subnormal (1.4e-45) and becomes 0.
    assert got[0].norms[0] == 13421773 * 2.0**-27 == 0.100000001490116119384765625
    assert_same_floats(got[0].norms[1:], [math.nan, math.inf, -math.inf])
    assert_same_floats(got[1].norms, [0.0, float(np.float32(1e30)), float(np.float32(3e38)), math.inf])
    assert abs(got[1].norms[1] / 1e30 - 1) < 2**-24
    assert_same_floats(got[2].norms, [1.5, -0.0, 0.0, 65504.0])
    assert got[0].norms.dtype == np.float64


def test_bytes_on_disk_follow_the_documented_layout(tmp_path: Path) -> None:
    path = tmp_path / "run.gbrun"
    info = RunInfo(("a", "b", "c"), {"k": "v"})
    with RunLogWriter(path, info) as writer:
        for step in range(5):
            writer.append(Frame(step, 10.0 * step, [step, 2 * step, 0.25], loss=1.0, lr=0.5))
    data = path.read_bytes()

    header_json = json.dumps({"layer_names": ["a", "b", "c"], "metadata": {"k": "v"}}, separators=(",", ":"))
    assert data[:5] == b"GBRUN"
    assert struct.unpack_from("<HI", data, 5) == (1, len(header_json))
    assert data[11:11 + len(header_json)].decode() == header_json
    header = 15 + len(header_json)
    assert struct.unpack_from("<I", data, header - 4)[0] == zlib.crc32(data[: header - 4])
    assert len(data) == header + 5 * (36 + 4 * 3)
    # record 3: step, time_s, loss, lr, three float32 norms, CRC32 of the 44 bytes before it
    record = data[header + 3 * 48: header + 4 * 48]
    assert struct.unpack("<qddd3fI", record)[:7] == (3, 30.0, 1.0, 0.5, 3.0, 6.0, 0.25)
    assert struct.unpack_from("<I", record, 44)[0] == zlib.crc32(record[:44])


@pytest.mark.parametrize("extra, frames_expected", [(0, 0), (1, 0), (43, 0), (44, 1), (44 * 2 + 17, 2),
                                                    (44 * 3 + 43, 3), (44 * 4, 4)])
def test_truncated_tail_is_ignored(tmp_path: Path, extra: int, frames_expected: int) -> None:
    path = tmp_path / "run.gbrun"
    write_frames(path, ("a", "b"), 4)  # records of 36 + 2 * 4 = 44 bytes
    header = header_length(path)
    assert path.stat().st_size == header + 4 * 44
    with open(path, "r+b") as f:
        f.truncate(header + extra)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a torn tail is no damage: no warning
        _, frames = read_run(path)

    assert [f.step for f in frames] == list(range(frames_expected))
    assert [f.norms[1] for f in frames] == [s + 0.5 for s in range(frames_expected)]


def test_crc_mismatch_stops_reading_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "run.gbrun"
    write_frames(path, ("a", "b"), 5)
    header = header_length(path)
    data = bytearray(path.read_bytes())
    data[header + 2 * 44 + 33] ^= 0x40  # a bit inside record 2's first norm
    path.write_bytes(bytes(data))

    with pytest.warns(RunLogWarning, match=f"record 2 at byte {header + 88} fails its CRC check; "
                                           f"reading stops there, {3 * 44} bytes skipped"):
        _, frames = read_run(path)

    assert [f.step for f in frames] == [0, 1]


def test_not_a_run_log_and_empty_file_name_the_path_and_what_is_expected(tmp_path: Path) -> None:
    garbage = tmp_path / "noise.gbrun"
    garbage.write_bytes(b"\x7fELF\x02\x01\x01\x00garbage")
    empty = tmp_path / "empty.gbrun"
    empty.write_bytes(b"")

    with pytest.raises(RunLogError) as bad:
        open_run(garbage)
    with pytest.raises(RunLogError) as nothing:
        read_run(empty)
    with pytest.raises(RunLogError) as direct:
        RunLogReader(garbage)

    assert str(garbage) in str(bad.value) and EXPECTED_KINDS in str(bad.value)
    assert str(empty) in str(nothing.value) and "is empty" in str(nothing.value)
    assert EXPECTED_KINDS in str(nothing.value)
    assert "does not start with b'GBRUN'" in str(direct.value)


def test_damaged_header_and_unknown_version_are_run_log_errors(tmp_path: Path) -> None:
    path = tmp_path / "run.gbrun"
    write_frames(path, ("a",), 0)
    header = path.read_bytes()
    assert len(header) == header_length(path)
    reader = RunLogReader(path)  # a header and no records: a run that stopped before its first step
    assert (reader.info.layer_names, reader.records_on_disk, list(reader)) == (("a",), 0, [])

    path.write_bytes(header[:-1])
    with pytest.raises(RunLogError, match=f"run log {path} has a truncated header"):
        read_run(path)
    path.write_bytes(header[:5] + struct.pack("<H", 2) + header[7:])
    with pytest.raises(RunLogError, match="has format version 2; this gradbridge reads version 1"):
        read_run(path)
    damaged = bytearray(header)
    damaged[12] ^= 1
    path.write_bytes(bytes(damaged))
    with pytest.raises(RunLogError, match="damaged header"):
        read_run(path)


def test_binary_noise_that_is_not_utf8_is_a_run_log_error(tmp_path: Path) -> None:
    path = tmp_path / "noise.bin"
    path.write_bytes(b"\xff\xfe\xfa\x00\x81" * 10)
    with pytest.raises(RunLogError, match="not a readable CSV") as error:
        read_run(path)
    assert str(path) in str(error.value) and EXPECTED_KINDS in str(error.value)


def test_reader_streams_and_can_iterate_twice(tmp_path: Path) -> None:
    path = tmp_path / "run.gbrun"
    write_frames(path, ("a", "b"), 3)
    reader = RunLogReader(path)
    assert reader.records_on_disk == 3
    assert [f.step for f in reader] == [0, 1, 2] == [f.step for f in reader]
    info, frames = open_run(path)
    assert info.layer_names == ("a", "b") and next(frames).norms.tolist() == [0.5, 0.5]


def test_missing_file_is_a_run_log_error(tmp_path: Path) -> None:
    with pytest.raises(RunLogError, match="No such file"):
        open_run(tmp_path / "absent.gbrun")


# --- writer ----------------------------------------------------------------------------------------------


def test_wrong_layer_count_names_both_counts(tmp_path: Path) -> None:
    with RunLogWriter(tmp_path / "run.gbrun", RunInfo(("a", "b"))) as writer:
        with pytest.raises(ValueError, match="step 7 has 3 layer norms but run log .* with 2 layers"):
            writer.append(Frame(7, 0.0, [1.0, 2.0, 3.0]))
        assert writer.pending == 0 and writer.written == 0


def test_missing_parent_directory_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such"
    with pytest.raises(RunLogError, match=f"directory {missing} does not exist"):
        RunLogWriter(missing / "run.gbrun", RunInfo(("a",)))


@pytest.mark.parametrize("kwargs, error, message", [
    ({"flush_every": 0}, ValueError, "flush_every must be >= 1"),
    ({"flush_every": 2.0}, TypeError, "flush_every must be an int"),
    ({"flush_every": True}, TypeError, "flush_every must be an int"),
    ({"flush_interval_s": 0}, ValueError, "flush_interval_s must be > 0 seconds"),
    ({"flush_interval_s": math.nan}, ValueError, "flush_interval_s must be > 0 seconds"),
    ({"flush_interval_s": "1"}, TypeError, "flush_interval_s must be a number"),
    ({"fsync": 1}, TypeError, "fsync must be True or False"),
])
def test_arguments_are_validated(tmp_path: Path, kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        RunLogWriter(tmp_path / "run.gbrun", RunInfo(("a",)), **kwargs)
    assert not (tmp_path / "run.gbrun").exists()


def test_existing_file_is_truncated_at_open(tmp_path: Path) -> None:
    path = tmp_path / "run.gbrun"
    write_frames(path, ("a",), 9)
    write_frames(path, ("a",), 2)
    assert path.stat().st_size == header_length(path) + 2 * 40
    assert [f.step for f in read_run(path)[1]] == [0, 1]


def test_flush_every_buffers_that_many_frames(tmp_path: Path) -> None:
    path = tmp_path / "run.gbrun"
    writer = RunLogWriter(path, RunInfo(("a",)), flush_every=3, flush_interval_s=math.inf)
    header = path.stat().st_size
    sizes = []
    for step in range(7):
        writer.append(Frame(step, 0.0, [1.0]))
        sizes.append((path.stat().st_size - header) // 40)
    assert sizes == [0, 0, 3, 3, 3, 6, 6]
    assert (writer.pending, writer.written) == (1, 6)
    writer.close()
    assert (path.stat().st_size - header) // 40 == 7
    assert writer.closed and writer.pending == 0 and writer.written == 7
    writer.close()  # idempotent
    with pytest.raises(RunLogError, match="is closed"):
        writer.append(Frame(7, 0.0, [1.0]))


def test_flush_interval_writes_when_time_has_passed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(runlog.time, "monotonic", lambda: clock[0])
    path = tmp_path / "run.gbrun"
    writer = RunLogWriter(path, RunInfo(("a",)), flush_every=100, flush_interval_s=2.0)
    header = path.stat().st_size
    written = []
    for now in (1000.5, 1001.9, 1002.0, 1002.1, 1004.1):
        clock[0] = now
        writer.append(Frame(0, 0.0, [1.0]))
        written.append((path.stat().st_size - header) // 40)
    # 2 s after the open (t=1000) comes at t=1002.0: 3 frames go; the next write is due at t=1004.0
    assert written == [0, 0, 3, 3, 5]
    writer.close()


def test_disk_full_keeps_frames_and_writes_them_after_recovery(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "run.gbrun"
    writer = RunLogWriter(path, RunInfo(("a", "b")))
    header = path.stat().st_size
    real_write = os.write
    inode = path.stat().st_ino
    calls = []

    def full_disk(fd: int, data: bytes) -> int:
        if os.fstat(fd).st_ino != inode:
            return real_write(fd, data)
        calls.append(len(data))
        if len(calls) == 2:  # a short write of 10 bytes, as a filling disk gives, before ENOSPC
            return real_write(fd, bytes(data[:10]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    writer.append(Frame(0, 0.0, [0.5, 1.5]))
    monkeypatch.setattr(os, "write", full_disk)
    for step in (1, 2, 3):
        with pytest.raises(RunLogError) as failure:
            writer.append(Frame(step, float(step), [step + 0.5, step + 1.5], loss=step))
        assert str(path) in str(failure.value) and "No space left on device" in str(failure.value)
    assert f"{3} frame(s) kept in memory" in str(failure.value)
    assert writer.pending == 3 and writer.written == 1
    assert path.stat().st_size == header + 44 + 10  # record 0 and the torn start of record 1
    monkeypatch.undo()  # the disk "recovers"

    writer.flush()
    writer.close()

    _, frames = read_run(path)
    assert path.stat().st_size == header + 4 * 44
    assert [f.step for f in frames] == [0, 1, 2, 3]
    assert_same_floats(np.array([f.norms for f in frames]), [[0.5, 1.5], [1.5, 2.5], [2.5, 3.5], [3.5, 4.5]])
    assert_same_floats([f.loss for f in frames], [math.nan, 1.0, 2.0, 3.0])


def test_close_on_a_full_disk_reports_the_lost_frames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "run.gbrun"
    writer = RunLogWriter(path, RunInfo(("a",)), flush_every=5, flush_interval_s=math.inf)
    writer.append(Frame(0, 0.0, [1.0]))
    writer.append(Frame(1, 0.0, [1.0]))
    inode, real_write = path.stat().st_ino, os.write

    def full_disk(fd: int, data: bytes) -> int:
        if os.fstat(fd).st_ino == inode:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(RunLogError, match="while closing: No space left on device; 2 frame"):
        writer.close()
    assert writer.closed and writer.dropped == 2 and writer.written == 0


# --- kill -9 ---------------------------------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import sys
    from bridge.frames import Frame, RunInfo
    from bridge.runlog import RunLogWriter
    print("torch" in sys.modules, flush=True)
    path, flush_every = sys.argv[1], int(sys.argv[2])
    with RunLogWriter(path, RunInfo(("a", "b", "c")), flush_every=flush_every, flush_interval_s=1e9) as w:
        for step in range(2_000_000):
            w.append(Frame(step, 1000.0 + step, [step * 0.25, step + 0.5, -step], 1 / (step + 1), step * 1e-3))
            print(step, flush=True)
""")


def run_and_kill(tmp_path: Path, flush_every: int, lines_before_kill: int) -> tuple[list[int], list[Frame]]:
    """Start a child appending frames, SIGKILL it after it printed enough steps; return printed, read."""
    script, log = tmp_path / "child.py", tmp_path / "killed.gbrun"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    child = subprocess.Popen([sys.executable, str(script), str(log), str(flush_every)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "False"  # the run log never imports torch
        for _ in range(lines_before_kill):
            if not child.stdout.readline():
                pytest.fail(f"child ended early: {child.stderr.read() if child.stderr else ''}")
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        printed_after = child.stdout.read()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL
    printed = list(range(lines_before_kill)) + [int(s) for s in printed_after.split()]
    return printed, read_run(log)[1]


def assert_frames_are_the_childs(frames: list[Frame]) -> None:
    steps = [f.step for f in frames]
    assert steps == list(range(len(frames)))
    for f in frames:
        s = f.step
        assert (f.time_s, f.loss, f.lr) == (1000.0 + s, 1 / (s + 1), s * 1e-3)
        assert f.norms.tolist() == [s * 0.25, s + 0.5, -s]  # all exact in float32 below 2**22


def test_kill_9_loses_nothing_that_was_appended_with_flush_every_1(tmp_path: Path) -> None:
    printed, frames = run_and_kill(tmp_path, flush_every=1, lines_before_kill=300)
    assert printed == list(range(len(printed)))
    # every printed step was appended and written; one more may have been appended before the print
    assert len(printed) <= len(frames) <= len(printed) + 1
    assert_frames_are_the_childs(frames)


def test_kill_9_loses_at_most_flush_every_minus_1_frames(tmp_path: Path) -> None:
    printed, frames = run_and_kill(tmp_path, flush_every=10, lines_before_kill=305)
    appended_at_least = len(printed)
    assert len(frames) % 10 == 0  # only whole flushes of 10 frames reach the file
    assert appended_at_least - 9 <= len(frames) <= appended_at_least + 1
    assert_frames_are_the_childs(frames)
