"""Tests for bridge.runlog: the binary run log, its crash safety, and telling it from a CSV (see test_runcsv)."""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import signal
import struct
import subprocess
import sys
import socket
import textwrap
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


def header_bytes(body: object, version: int = 2) -> bytes:
    """A header with a correct CRC around ``body`` (JSON text, or bytes as they are)."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    head = b"GBRUN" + struct.pack("<HI", version, len(raw)) + raw
    return head + struct.pack("<I", zlib.crc32(head))


def v1_record(step: int, norms: list[float], loss: float = 1.0) -> bytes:
    """A record as gradbridge 0.1 wrote it: step, time, loss, lr, float32 norms, CRC32; no mark."""
    body = struct.pack(f"<qddd{len(norms)}f", step, 100.0 + step, loss, 0.1, *norms)
    return body + struct.pack("<I", zlib.crc32(body))


# --- binary format --------------------------------------------------------------------------------------


def test_record_bytes_is_40_plus_4_per_layer_and_36_plus_4_in_version_1() -> None:
    assert (record_bytes(1), record_bytes(3), record_bytes(1000)) == (44, 52, 4040)
    assert (record_bytes(1, version=1), record_bytes(3, version=1)) == (40, 48)
    with pytest.raises(ValueError, match="layer_count must be between 1 and 1000000; got 0"):
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

    header_json = json.dumps({"layer_names": ["a", "b", "c"], "metadata": {"k": "v"},
                              "writer": {"pid": os.getpid(), "host": socket.gethostname()}},
                             separators=(",", ":"))
    assert data[:5] == b"GBRUN"
    assert struct.unpack_from("<HI", data, 5) == (2, len(header_json))
    assert data[11:11 + len(header_json)].decode() == header_json
    header = 15 + len(header_json)
    assert struct.unpack_from("<I", data, header - 4)[0] == zlib.crc32(data[: header - 4])
    size = 40 + 4 * 3
    assert len(data) == header + 6 * size  # five frames and the end record
    # record 3: mark, step, time_s, loss, lr, three float32 norms, CRC32 of the 48 bytes before it
    record = data[header + 3 * size: header + 4 * size]
    assert struct.unpack("<4sqddd3fI", record)[:8] == (b"\x8eGRF", 3, 30.0, 1.0, 0.5, 3.0, 6.0, 0.25)
    assert struct.unpack_from("<I", record, 48)[0] == zlib.crc32(record[:48])
    # the end record: how many frames were written, when the log closed
    end = data[header + 5 * size:]
    mark, count, closed_at = struct.unpack_from("<4sqd", end)
    assert (mark, count) == (b"\x8eGRE", 5) and abs(closed_at - time.time()) < 60
    assert struct.unpack_from("<I", end, 48)[0] == zlib.crc32(end[:48])
    reader = RunLogReader(path)
    assert [f.step for f in reader] == [0, 1, 2, 3, 4] and reader.ended


@pytest.mark.parametrize("extra, frames_expected", [(0, 0), (1, 0), (47, 0), (48, 1), (48 * 2 + 17, 2),
                                                    (48 * 3 + 47, 3), (48 * 4, 4)])
def test_truncated_tail_is_ignored(tmp_path: Path, extra: int, frames_expected: int) -> None:
    path = tmp_path / "run.gbrun"
    write_frames(path, ("a", "b"), 4)  # records of 40 + 2 * 4 = 48 bytes, then the end record
    header = header_length(path)
    assert path.stat().st_size == header + 5 * 48
    with open(path, "r+b") as f:
        f.truncate(header + extra)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a torn tail is no damage: no warning
        reader = RunLogReader(path)
        frames = list(reader)

    assert [f.step for f in frames] == list(range(frames_expected))
    assert [f.norms[1] for f in frames] == [s + 0.5 for s in range(frames_expected)]
    assert not reader.ended  # the end record was cut off


def test_one_flipped_byte_in_the_first_record_loses_that_record_only(tmp_path: Path) -> None:
    path = tmp_path / "run.gbrun"
    write_frames(path, ("a", "b"), 5)
    header = header_length(path)
    data = bytearray(path.read_bytes())
    data[header + 37] ^= 0x40  # a bit inside record 0's first norm
    path.write_bytes(bytes(data))

    with pytest.warns(RunLogWarning, match=f"1 damaged record skipped \\(48 bytes from byte {header}\\); "
                                           "the other records were read"):
        reader = RunLogReader(path)
        frames = list(reader)

    assert [f.step for f in frames] == [1, 2, 3, 4]
    assert reader.damage.records == 1 and reader.ended
    with pytest.raises(RunLogError, match=f"the record at byte {header} is damaged"):
        read_run(path, strict=True)


def test_bytes_lost_or_inserted_cost_only_the_records_they_touch(tmp_path: Path) -> None:
    path = tmp_path / "run.gbrun"
    write_frames(path, ("a", "b"), 8)
    header = header_length(path)
    data = path.read_bytes()
    # 5 bytes gone from record 2, and 7 bytes of noise between records 5 and 6
    damaged = (data[: header + 2 * 48 + 10] + data[header + 2 * 48 + 15: header + 6 * 48] + b"\x8eGR garb"[:7]
               + data[header + 6 * 48:])
    path.write_bytes(damaged)

    with pytest.warns(RunLogWarning, match="2 damaged records skipped"):
        reader = RunLogReader(path)
        frames = list(reader)

    assert [f.step for f in frames] == [0, 1, 3, 4, 5, 6, 7]
    assert_same_floats([f.norms[0] for f in frames], [s + 0.5 for s in (0, 1, 3, 4, 5, 6, 7)])
    assert reader.ended


def test_a_version_1_log_is_still_read_and_a_damaged_record_of_it_skipped(tmp_path: Path) -> None:
    path = tmp_path / "old.gbrun"
    records = [v1_record(step, [step * 0.25, 2.0]) for step in range(4)]
    broken = bytearray(records[1])
    broken[33] ^= 1
    records[1] = bytes(broken)
    path.write_bytes(header_bytes({"layer_names": ["x", "y"], "metadata": {"mapping": "daw"}}, version=1)
                     + b"".join(records) + records[3][:20])  # and a torn last write

    with pytest.warns(RunLogWarning, match="1 damaged record skipped"):
        info, frames = read_run(path)

    assert info == RunInfo(("x", "y"), {"mapping": "daw"})
    assert [f.step for f in frames] == [0, 2, 3]
    assert [f.norms.tolist() for f in frames] == [[0.0, 2.0], [0.5, 2.0], [0.75, 2.0]]
    assert RunLogReader(path).version == 1


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
    header = path.read_bytes()[: header_length(path)]
    path.write_bytes(header)
    reader = RunLogReader(path)  # a header and no records: a run that stopped before its first step
    assert (reader.info.layer_names, reader.records_on_disk, list(reader)) == (("a",), 0, [])

    path.write_bytes(header[:-1])
    with pytest.raises(RunLogError, match=f"run log {path} has a truncated header"):
        read_run(path)
    path.write_bytes(header[:5] + struct.pack("<H", 3) + header[7:])
    with pytest.raises(RunLogError, match="has format version 3; this gradbridge reads versions 1, 2"):
        read_run(path)
    damaged = bytearray(header)
    damaged[12] ^= 1
    path.write_bytes(bytes(damaged))
    with pytest.raises(RunLogError, match="damaged header"):
        read_run(path)


def test_a_corrupt_header_length_is_refused_before_anything_is_allocated(tmp_path: Path) -> None:
    path = tmp_path / "run.gbrun"
    path.write_bytes(b"GBRUN" + struct.pack("<HI", 2, 0xFFFFFFF0) + b"{}")
    with pytest.raises(RunLogError, match=r"claims 4294967280 bytes of JSON, over the 16777216 a run log may have"):
        read_run(path)


@pytest.mark.parametrize("body, message", [
    (b"[" * 100_000 + b"]" * 100_000, "unreadable header: RecursionError"),
    ({"layer_names": [["a"]], "metadata": {}}, "layer_names must be a list of strings"),
    ({"layer_names": [], "metadata": {}}, "0 layer names, 1 to 1000000 expected"),
    ({"metadata": {}}, "KeyError"),
    (b"\xff\xfe", "UnicodeDecodeError"),
])
def test_an_unreadable_header_with_a_good_crc_is_a_run_log_error(tmp_path: Path, body: object, message: str) -> None:
    path = tmp_path / "run.gbrun"
    path.write_bytes(header_bytes(body))
    with pytest.raises(RunLogError, match=message) as error:
        read_run(path)
    assert str(path) in str(error.value)


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
    assert reader.records_on_disk == 4  # three frames and the end record
    assert [f.step for f in reader] == [0, 1, 2] == [f.step for f in reader]
    info, frames = open_run(path)
    assert info.layer_names == ("a", "b") and next(frames).norms.tolist() == [0.5, 0.5]


def test_missing_file_is_a_run_log_error(tmp_path: Path) -> None:
    with pytest.raises(RunLogError, match="No such file"):
        open_run(tmp_path / "absent.gbrun")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=400), keep=st.integers(0, 120), strict=st.booleans())
def test_any_bytes_give_frames_or_a_run_log_error_and_nothing_else(tmp_path: Path, data: bytes, keep: int,
                                                                  strict: bool) -> None:
    """Fuzz: noise alone, noise after a real header, noise inside real records: the reader never raises
    anything but RunLogError (damage warnings aside) and every frame it gives has the run's layer count."""
    path = tmp_path / "fuzz.gbrun"
    real = FUZZ_LOG[:keep] if keep < 60 else FUZZ_LOG[: len(FUZZ_HEADER) + keep]
    for candidate in (data, FUZZ_HEADER + data, real + data + FUZZ_LOG[len(real):]):
        path.write_bytes(candidate)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RunLogWarning)
                info, frames = read_run(path, strict=strict)
        except RunLogError:
            continue
        assert all(f.layer_count == len(info.layer_names) for f in frames)


FUZZ_HEADER = header_bytes({"layer_names": ["a", "b"], "metadata": {}})
FUZZ_LOG = FUZZ_HEADER + b"".join(
    __import__("bridge.recordformat", fromlist=["encode_frame"]).encode_frame(Frame(s, 0.0, [s, 1.0]))
    for s in range(6))


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


def test_fsync_must_be_a_bool(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="fsync must be True or False"):
        RunLogWriter(tmp_path / "run.gbrun", RunInfo(("a",)), fsync=1)  # type: ignore[arg-type]
    assert not (tmp_path / "run.gbrun").exists()


def test_each_append_is_in_the_file_at_once_and_close_adds_the_end(tmp_path: Path) -> None:
    path = tmp_path / "run.gbrun"
    writer = RunLogWriter(path, RunInfo(("a",)))
    header = path.stat().st_size
    sizes = []
    for step in range(3):
        writer.append(Frame(step, 0.0, [1.0]))
        sizes.append(path.stat().st_size - header)
    assert sizes == [44, 88, 132] and (writer.pending, writer.written) == (0, 3)
    writer.close()
    assert path.stat().st_size - header == 4 * 44
    writer.close()  # idempotent
    with pytest.raises(RunLogError, match="is closed"):
        writer.append(Frame(3, 0.0, [1.0]))


def test_existing_file_is_emptied_at_open(tmp_path: Path) -> None:
    path = tmp_path / "run.gbrun"
    write_frames(path, ("a",), 9)
    write_frames(path, ("a",), 2)
    assert path.stat().st_size == header_length(path) + 3 * 44
    assert [f.step for f in read_run(path)[1]] == [0, 1]


def test_a_second_writer_on_a_log_being_written_is_refused_and_leaves_it_alone(tmp_path: Path) -> None:
    path = tmp_path / "run.gbrun"
    with RunLogWriter(path, RunInfo(("a",))) as first:
        first.append(Frame(0, 0.0, [1.0]))
        with pytest.raises(RunLogError, match="is being written by another process; give this run another record="):
            RunLogWriter(path, RunInfo(("b",)))
        first.append(Frame(1, 0.0, [2.0]))
    info, frames = read_run(path)
    assert info.layer_names == ("a",) and [f.norms[0] for f in frames] == [1.0, 2.0]


def test_a_full_disk_never_raises_in_append_and_the_log_catches_up_when_space_returns(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
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
    with caplog.at_level(logging.WARNING, logger="bridge"):
        for step in (1, 2, 3):
            writer.append(Frame(step, float(step), [step + 0.5, step + 1.5], loss=step))
        assert writer.pending == 3 and writer.written == 1
        assert path.stat().st_size == header + 48 + 10  # record 0 and the torn start of record 1
        monkeypatch.undo()  # the disk "recovers"
        writer.append(Frame(4, 4.0, [4.5, 5.5], loss=4))
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert messages[0].startswith(f"run log {path}: cannot write (No space left on device); keeping up to 64 MiB")
    assert messages[1].startswith(f"run log {path}: writing again after ")
    assert writer.first_error == "at frame 1 (No space left on device)" and writer.dropped == 0
    writer.close()

    _, frames = read_run(path)
    assert path.stat().st_size == header + 6 * 48
    assert [f.step for f in frames] == [0, 1, 2, 3, 4]
    assert_same_floats([f.loss for f in frames], [math.nan, 1.0, 2.0, 3.0, 4.0])


def test_close_on_a_full_disk_names_the_file_the_frames_lost_and_the_fix(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "run.gbrun"
    writer = RunLogWriter(path, RunInfo(("a",)))
    writer.append(Frame(0, 0.0, [1.0]))
    inode, real_write = path.stat().st_ino, os.write

    def full_disk(fd: int, data: bytes) -> int:
        if os.fstat(fd).st_ino == inode:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_disk)
    writer.append(Frame(1, 0.0, [1.0]))
    writer.append(Frame(2, 0.0, [1.0]))
    with pytest.raises(RunLogError) as error:
        writer.close()
    assert str(error.value) == (f"could not finish run log {path} while closing (No space left on device): 2 frame(s) "
                                f"lost, the 1 before them are in the file. Fix: free disk space; `gradbridge render "
                                f"{path}` reads what was written")
    assert writer.closed and writer.dropped == 2 and writer.written == 1


# --- kill -9 ---------------------------------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import sys
    from bridge.frames import Frame, RunInfo
    from bridge.runlog import RunLogWriter
    print("torch" in sys.modules, flush=True)
    path = sys.argv[1]
    with RunLogWriter(path, RunInfo(("a", "b", "c"))) as w:
        for step in range(2_000_000):
            w.append(Frame(step, 1000.0 + step, [step * 0.25, step + 0.5, -step], 1 / (step + 1), step * 1e-3))
            print(step, flush=True)
""")


def run_and_kill(tmp_path: Path, lines_before_kill: int) -> tuple[list[int], list[Frame]]:
    """Start a child appending frames, SIGKILL it after it printed enough steps; return printed, read."""
    script, log = tmp_path / "child.py", tmp_path / "killed.gbrun"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    child = subprocess.Popen([sys.executable, str(script), str(log)],
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


def test_kill_9_loses_nothing_that_was_appended(tmp_path: Path) -> None:
    printed, frames = run_and_kill(tmp_path, lines_before_kill=300)
    assert printed == list(range(len(printed)))
    # every printed step was appended and written; one more may have been appended before the print
    assert len(printed) <= len(frames) <= len(printed) + 1
    assert_frames_are_the_childs(frames)
