"""A careful but clumsy user: each mistake of issue 11's table, and what gradbridge now does about it.

Every test works from outside, as a user meets the tool: the exit status and the one line the command
prints, the bytes of the files (by hash), and the outputs read back by the ``wave`` module, mido and
midicsv. Rows covered elsewhere, with the same outside view: a disk that fills then frees, and one that
stays full, under the run log (tests/test_faults.py, "a disk that fills" and "a disk that stays full"); the
outputs process killed (tests/test_faults.py, "the follower killed"); one flipped byte and a corrupt header
length read by the library (tests/test_runlog.py). Full disks here are the kernel's real refusal of a write
past the file size limit (``RLIMIT_FSIZE``, EFBIG), which needs no root and fails writes as ENOSPC does.
"""

from __future__ import annotations

import hashlib
import os
import pty
import re
import resource
import select
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
import wave
import zlib
from collections.abc import Callable
from pathlib import Path

import mido
import numpy as np
import pytest
from pythonosc.osc_message import OscMessage
import torch
from torch import nn

import bridge
from bridge.cli import main
from bridge.errors import OutputPathError, RunLogError
from bridge.follower_link import FollowerProcess
from bridge.frames import Frame, RunInfo
from bridge.outputs import OutputSpec
from bridge.presets import load_preset
from bridge.runcsv import open_csv
from bridge.runlog import RunLogWriter
from bridge.wire import FollowerSetup

REPO_ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 60
STEP_SAMPLES = 1764  # perone2019 with 2 layers: two 10 ms tones and 20 ms of silence, 0.04 s at 44.1 kHz
STEP_S = 0.04


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_run(path: Path, steps: list[int] | range, names: tuple[str, ...] = ("a", "b"),
              mapping: str = "perone2019") -> Path:
    with RunLogWriter(path, RunInfo(names, {"mapping": mapping})) as writer:
        for step in steps:
            writer.append(Frame(step, 1000.0 + step, [0.5 + 0.01 * (step % 7)] * len(names), loss=1.0, lr=0.1))
    return path


def gradbridge(*args: str, limit_bytes: int | None = None, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run the real ``gradbridge`` command; ``limit_bytes``: files it writes may not grow past this size (a
    full disk, as the kernel refuses it: EFBIG)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(REPO_ROOT), os.environ.get("PYTHONPATH"))))}

    def limit() -> None:  # in the child, before exec: a write past the limit fails instead of killing it
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.run([sys.executable, "-m", "bridge", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, check=False, preexec_fn=limit if limit_bytes is not None else None)


def error_line(err: str) -> str:
    """The one error line of a command's stderr (and check there is exactly one, and no traceback)."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("gradbridge: error:")]
    assert len(lines) == 1, err
    return lines[0]


def leftovers(folder: Path) -> list[str]:
    """Temporary files of an unfinished output left in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))


def wav_frames(path: Path) -> int:
    with wave.open(str(path)) as f:
        return f.getnframes()


def midicsv(path: Path) -> list[list[str]]:
    out = subprocess.run(["midicsv", str(path)], capture_output=True, timeout=TIMEOUT_S, check=True)
    assert out.stdout.decode("ascii")  # every byte ASCII: nothing for a reader to show as mojibake
    return [[cell.strip() for cell in line.split(",", 3)] for line in out.stdout.decode("ascii").splitlines()]


def udp_receiver() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    return sock


def received_steps(sock: socket.socket) -> list[int]:
    """The step numbers of the ``/gradbridge/step`` messages that reached ``sock`` (the first message of
    each bundle)."""
    steps = []
    while True:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            return steps
        assert data[:8] == b"#bundle\x00"
        (size,) = struct.unpack_from(">i", data, 16)
        message = data[20:20 + size]
        assert message.startswith(b"/gradbridge/step\x00")
        steps.append(OscMessage(message).params[0])  # decoded by python-osc


# -- an output that is also an input; two outputs on one path --------------------------------------------------


@pytest.mark.parametrize("verb", ["render", "midi", "export", "plot"])
@pytest.mark.parametrize("kind", ["gbrun", "csv"])
def test_an_output_on_its_own_input_is_refused_and_the_input_kept(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                  verb: str, kind: str) -> None:
    run = write_run(tmp_path / "a.gbrun", range(5))
    if kind == "csv":
        assert main(["export", str(run), "-o", str(tmp_path / "a.csv")]) == 0
        run = tmp_path / "a.csv"
    before = sha(run)
    capsys.readouterr()
    assert main([verb, str(run), "-o", str(run)]) == 1
    assert error_line(capsys.readouterr().err) == (
        f"gradbridge: error: output={str(run)!r} is the same file as run={str(run)!r}: one would destroy the other. "
        "Fix: give each its own path")
    assert sha(run) == before and leftovers(tmp_path) == []
    link = tmp_path / "link.out"
    link.symlink_to(run)  # another name for the same file is refused too
    assert main([verb, str(run), "-o", str(link)]) == 1
    assert "is the same file as run=" in capsys.readouterr().err and sha(run) == before


@pytest.mark.parametrize("verb", ["render", "midi", "export"])
def test_an_output_that_is_a_device_is_written_in_place_never_replaced(tmp_path: Path, verb: str) -> None:
    run = write_run(tmp_path / "run.gbrun", range(5))
    before = os.stat(os.devnull)
    done = gradbridge(verb, str(run), "-o", os.devnull)
    assert done.returncode == 0, done.stderr
    after = os.stat(os.devnull)  # still the very same character device, not a file renamed over it
    assert stat.S_ISCHR(after.st_mode) and (after.st_ino, after.st_rdev) == (before.st_ino, before.st_rdev)
    assert not [name for name in os.listdir(os.path.dirname(os.devnull)) if name.endswith(".part")]
    exported = gradbridge("export", str(run), "-o", "/dev/stdout")  # a pipe: the CSV comes out on stdout
    assert exported.returncode == 0 and exported.stdout.splitlines()[0] == "step,wall_time,loss,lr,a,b"


def test_watch_refuses_the_run_log_or_a_file_on_another_output_before_anything_opens(tmp_path: Path) -> None:
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    kept = tmp_path / "kept.bin"
    kept.write_bytes(b"an older file")
    for outputs, first, second in (({"record": kept, "wav": kept}, "record", "wav"),
                                   ({"wav": kept, "midi_file": kept}, "wav", "midi_file"),
                                   ({"record": kept, "midi_file": tmp_path / "." / "kept.bin"}, "record", "midi_file")):
        with pytest.raises(OutputPathError) as caught:
            bridge.watch(model, optimizer, mapping="perone2019", announce=None, **outputs)
        assert str(caught.value).startswith(f"{second}={str(outputs[second])!r} is the same file as "
                                            f"{first}={str(outputs[first])!r}: one would destroy the other")
        assert kept.read_bytes() == b"an older file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.bin"]  # nothing was opened
    assert not optimizer._optimizer_step_pre_hooks  # and nothing hooked


# -- a render that fails part-way over a good file ----------------------------------------------------------------


@pytest.mark.parametrize("verb, good", [("render", "good.wav"), ("midi", "good.mid")])
def test_a_render_that_fails_part_way_leaves_the_older_file_untouched(tmp_path: Path, verb: str, good: str) -> None:
    rows = "".join(f"{step},0.5,1.0\n" for step in range(300))
    (tmp_path / "ok.csv").write_text("step,a,b\n" + rows)
    (tmp_path / "bad.csv").write_text("step,a,b\n" + rows + "300,0.5,oops\n")
    target = tmp_path / good
    assert gradbridge(verb, str(tmp_path / "ok.csv"), "-o", str(target), "-m", "perone2019").returncode == 0
    before = sha(target)
    done = gradbridge(verb, str(tmp_path / "bad.csv"), "-o", str(target), "-m", "perone2019")
    assert done.returncode == 1
    line = error_line(done.stderr)
    assert "line 302, column 3 ('b'): cannot read 'oops' as a number" in line
    assert f"{target} was left as it was" in line and ".part" not in line
    assert sha(target) == before and leftovers(tmp_path) == []


def test_an_export_that_fails_part_way_leaves_the_older_csv_untouched(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run.gbrun", range(50))
    good = tmp_path / "good.csv"
    assert gradbridge("export", str(run), "-o", str(good)).returncode == 0
    before = sha(good)
    data = bytearray(run.read_bytes())
    data[-200] ^= 0xFF  # a byte of a late record: damage found part-way through
    run.write_bytes(bytes(data))
    done = gradbridge("export", str(run), "-o", str(good), "--strict")
    assert done.returncode == 1 and "is damaged (its mark or CRC does not check)" in error_line(done.stderr)
    assert sha(good) == before and leftovers(tmp_path) == []


def test_a_disk_that_fills_mid_render_leaves_the_older_file_untouched(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run.gbrun", range(200))  # 200 x 1764 frames x 2 bytes: 706 kB of WAV
    good = tmp_path / "good.wav"
    assert gradbridge("render", str(write_run(tmp_path / "short.gbrun", range(3))), "-o", str(good)).returncode == 0
    before = sha(good)
    done = gradbridge("render", str(run), "-o", str(good), limit_bytes=300_000)
    assert done.returncode == 1
    line = error_line(done.stderr)
    assert f"cannot write WAV file {good}: File too large" in line and f"{good} was left as it was" in line
    assert sha(good) == before and leftovers(tmp_path) == []


# -- odd steps -----------------------------------------------------------------------------------------------------


def test_a_csv_logged_every_10_steps_plays_each_logged_step_once_and_keeps_the_real_numbers(tmp_path: Path) -> None:
    csv = tmp_path / "tb.csv"
    csv.write_text("step,a,b\n" + "".join(f"{step},{0.5 + step / 1000},1.0\n" for step in range(0, 500, 10)))
    done = gradbridge("render", str(csv), "-o", str(tmp_path / "tb.wav"), "-m", "perone2019")
    assert done.returncode == 0, done.stderr
    assert "writing" in done.stderr and f"{tmp_path / 'tb.wav'}: 50 steps, 2.00 s of audio" in done.stderr
    assert "wrote" in done.stderr and "50 steps, 2.00 s of music" in done.stderr
    assert wav_frames(tmp_path / "tb.wav") == 50 * STEP_SAMPLES  # no silence for the 450 steps not logged
    kept = gradbridge("render", str(csv), "-o", str(tmp_path / "kept.wav"), "-m", "perone2019", "--keep-gaps")
    assert kept.returncode == 0, kept.stderr
    assert wav_frames(tmp_path / "kept.wav") == 491 * STEP_SAMPLES  # steps 0 to 490, the gaps silent
    # the MIDI file: one step after another, and a marker naming each real step number that does not follow on
    assert gradbridge("midi", str(csv), "-o", str(tmp_path / "tb.mid"), "-m", "perone2019").returncode == 0
    rows = midicsv(tmp_path / "tb.mid")
    division = int(rows[0][3].split(",")[-1])
    markers = [(int(row[1]), row[3].strip('"')) for row in rows if row[2] == "Marker_t"]
    assert markers == [(round(i * STEP_S * 2 * division), f"step {10 * i}") for i in range(1, 50)]  # 120 BPM
    assert sum(row[2] == "Note_on_c" and not row[3].endswith(", 0") for row in rows) == 100
    # OSC carries the real step numbers too
    receiver = udp_receiver()
    with receiver:
        port = receiver.getsockname()[1]
        assert gradbridge("replay", str(csv), "--osc", f"127.0.0.1:{port}", "--speed", "100").returncode == 0
        assert received_steps(receiver) == list(range(0, 500, 10))


def test_steps_0_and_10_million_make_two_steps_or_a_clear_refusal_with_kept_gaps(tmp_path: Path) -> None:
    run = write_run(tmp_path / "gap.gbrun", [0, 10_000_000])
    done = gradbridge("render", str(run), "-o", str(tmp_path / "gap.wav"))
    assert done.returncode == 0 and wav_frames(tmp_path / "gap.wav") == 2 * STEP_SAMPLES
    done = gradbridge("render", str(run), "-o", str(tmp_path / "kept.wav"), "--keep-gaps")
    assert done.returncode == 1
    assert error_line(done.stderr) == (
        f"gradbridge: error: {run}: steps 0 and 10000000 are 10000000 steps apart: with kept gaps (--keep-gaps) a "
        "gap may be at most 10000 steps of silence. Fix: leave out --keep-gaps (each logged step then sounds as "
        "one step)")
    assert not (tmp_path / "kept.wav").exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("step", ["1e308", "9223372036854775808"])
def test_a_csv_step_beyond_int64_is_refused_naming_the_cell(tmp_path: Path, step: str) -> None:
    csv = tmp_path / "big.csv"
    csv.write_text(f"step,fc1\n0,1.0\n{step},1.0\n")
    done = gradbridge("midi", str(csv), "-o", str(tmp_path / "big.mid"))
    assert done.returncode == 1
    assert error_line(done.stderr) == (f"gradbridge: error: {csv}, line 3, column 1 ('step'): step {step!r} is "
                                       "outside what a step can be (-2**63 to 2**63-1); correct that cell; "
                                       f"{tmp_path / 'big.mid'} was not written")
    assert not (tmp_path / "big.mid").exists() and leftovers(tmp_path) == []


# -- damaged run logs and presets ------------------------------------------------------------------------------------


def flip_first_record(run: Path) -> None:
    data = bytearray(run.read_bytes())
    (json_len,) = struct.unpack_from("<I", data, 7)
    data[15 + json_len + 10] ^= 0x01  # a byte of the first record's step
    run.write_bytes(bytes(data))


def test_one_flipped_byte_costs_one_step_with_a_warning_and_strict_refuses_it(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run.gbrun", range(20))
    flip_first_record(run)
    done = gradbridge("render", str(run), "-o", str(tmp_path / "run.wav"))
    assert done.returncode == 0, done.stderr
    warned = [line for line in done.stderr.splitlines() if line.startswith("gradbridge: warning:")]
    assert len(warned) == 1 and f"run log {run}: 1 damaged record skipped" in warned[0]
    assert wav_frames(tmp_path / "run.wav") == 19 * STEP_SAMPLES
    strict = gradbridge("render", str(run), "-o", str(tmp_path / "strict.wav"), "--strict")
    assert strict.returncode == 1
    assert f"run log {run}: the record at byte" in error_line(strict.stderr)
    assert not (tmp_path / "strict.wav").exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("verb", ["render", "midi", "export", "plot", "replay", "follow"])
def test_strict_turns_damage_into_a_failure_for_every_command_that_reads_runs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], verb: str) -> None:
    run = write_run(tmp_path / "run.gbrun", range(20))
    flip_first_record(run)
    receiver = udp_receiver()
    out = {"render": ["-o", str(tmp_path / "x.wav")], "midi": ["-o", str(tmp_path / "x.mid")],
           "export": ["-o", str(tmp_path / "x.csv")], "plot": ["-o", str(tmp_path / "x.png")],
           "replay": ["--osc", f"127.0.0.1:{receiver.getsockname()[1]}", "--speed", "1000"],
           "follow": ["--from-start", "--wav", str(tmp_path / "x.wav")]}[verb]
    with receiver:
        assert main([verb, str(run), *out, "--strict"]) == 1
    assert "damaged (its mark or CRC does not check)" in error_line(capsys.readouterr().err)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("x.")] == ([] if verb != "follow" else ["x.wav"])


def test_a_corrupt_header_length_or_deeply_nested_header_is_one_line_naming_the_file(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run.gbrun", range(3))
    data = bytearray(run.read_bytes())
    data[7:11] = struct.pack("<I", 0xFFFFFFF0)
    run.write_bytes(bytes(data))
    done = gradbridge("render", str(run), "-o", str(tmp_path / "x.wav"))
    assert done.returncode == 1
    assert error_line(done.stderr) == (f"gradbridge: error: run log {run} has a damaged header: it claims 4294967280 "
                                       "bytes of JSON, over the 16777216 a run log may have")
    nested = tmp_path / "nested.gbrun"
    body = ("[" * 100_000 + "]" * 100_000).encode()
    head = b"GBRUN" + struct.pack("<HI", 2, len(body)) + body
    nested.write_bytes(head + struct.pack("<I", zlib.crc32(head)))
    done = gradbridge("midi", str(nested), "-o", str(tmp_path / "x.mid"))
    assert done.returncode == 1
    assert error_line(done.stderr).startswith(f"gradbridge: error: run log {nested} has an unreadable header: "
                                              "RecursionError")


def test_a_deeply_nested_preset_is_a_preset_error_naming_the_file(tmp_path: Path) -> None:
    preset = tmp_path / "deep.toml"
    preset.write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
    run = write_run(tmp_path / "run.gbrun", range(3))
    done = gradbridge("render", str(run), "-o", str(tmp_path / "x.wav"), "-m", str(preset))
    assert done.returncode == 1
    assert error_line(done.stderr) == (
        f"gradbridge: error: {preset}: nested too deeply to read (arrays or tables within each other hundreds of "
        "levels deep). Fix: a preset holds flat tables of numbers and words; see mappings/perone2019.toml for a "
        "working example")


# -- replay, OSC and MIDI ports --------------------------------------------------------------------------------------


@pytest.mark.parametrize("speed", ["1e-300", "1e300", "inf", "nan", "0", "-2"])
def test_an_absurd_replay_speed_is_refused_before_anything_is_sent(tmp_path: Path, speed: str) -> None:
    run = write_run(tmp_path / "run.gbrun", range(3))
    with udp_receiver() as receiver:
        done = gradbridge("replay", str(run), "--osc", f"127.0.0.1:{receiver.getsockname()[1]}", "--speed", speed)
        assert received_steps(receiver) == []
    assert done.returncode == 1
    line = error_line(done.stderr)
    assert line.startswith("gradbridge: error: speed must be ")
    assert ("from 0.001 to 1e+06" in line) if speed in ("1e-300", "1e300") else ("> 0" in line)


def closed_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def summary_line(err: str) -> str:
    lines = [line for line in err.splitlines() if " frames in, " in line]
    assert len(lines) == 1, err
    return lines[0]


def test_osc_to_a_port_where_nothing_listens_is_a_failure_in_the_summary(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run.gbrun", range(30))
    port = closed_udp_port()
    done = gradbridge("replay", str(run), "--osc", f"127.0.0.1:{port}", "--speed", "20")
    assert done.returncode == 1, done.stderr
    summary = summary_line(done.stderr)
    assert "osc: ok" not in summary
    found = re.search(rf"osc: failed (\d+) time\(s\) from step (\d+) \(refused: nothing listens on 127.0.0.1:{port}\)",
                      summary)
    assert found is not None, summary
    assert 20 <= int(found[1]) <= 29 and int(found[2]) <= 9  # each send after a refused one learns of it


def test_a_midi_port_that_does_not_exist_is_named_in_the_summary(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JACK_DEFAULT_SERVER", f"gbtest-absent-{os.getpid()}")  # no such JACK server
    monkeypatch.setenv("JACK_NO_START_SERVER", "1")
    run = write_run(tmp_path / "run.gbrun", range(5))
    with udp_receiver() as receiver:
        done = gradbridge("replay", str(run), "--midi", "no such port", "--midi-api", "jack",
                          "--osc", f"127.0.0.1:{receiver.getsockname()[1]}", "--speed", "100")
        assert received_steps(receiver) == list(range(5))
    assert done.returncode == 1
    summary = summary_line(done.stderr)
    assert "MIDI port no such port: failed at start (SinkError: " in summary and "osc: ok" in summary


# -- full disks under a live run's files ----------------------------------------------------------------------------


def test_a_wav_on_a_full_disk_has_a_header_that_counts_the_samples_on_disk(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run.gbrun", range(200))
    out = tmp_path / "out.wav"
    done = gradbridge("follow", str(run), "--from-start", "--wav", str(out), limit_bytes=300_000)
    assert done.returncode == 1
    summary = summary_line(done.stderr)
    assert "wav: failed at step " in summary and f"cannot write WAV file {out}: File too large" in summary
    assert "Fix: free disk space, then write it from the run log: gradbridge render RUN.gbrun -o" in summary
    frames = wav_frames(out)
    assert frames > 0 and 44 + 2 * frames == out.stat().st_size <= 300_000  # the header counts what is there
    with wave.open(str(out)) as f:
        assert len(f.readframes(frames)) == 2 * frames


def test_a_live_wav_is_valid_after_its_writer_is_killed_and_no_half_midi_file_appears(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run.gbrun", range(30_000))  # 30 000 x 1764 frames: 106 MB of WAV to write
    wav, mid = tmp_path / "out.wav", tmp_path / "out.mid"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    child = subprocess.Popen([sys.executable, "-m", "bridge", "follow", str(run), "--from-start", "--wav", str(wav),
                              "--midi-file", str(mid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not (wav.exists() and wav.stat().st_size > 2_000_000):
            assert time.monotonic() < deadline and child.poll() is None, "the follower wrote no audio"
            time.sleep(0.01)
    finally:
        child.kill()
        child.wait(timeout=TIMEOUT_S)
    frames = wav_frames(wav)  # the header counts the audio of every batch patched before the kill
    assert frames > 0 and frames % STEP_SAMPLES == 0 and 44 + 2 * frames <= wav.stat().st_size
    with wave.open(str(wav)) as f:
        assert len(f.readframes(frames)) == 2 * frames
    assert not mid.exists()  # assembled at close, which never came: no half-written MIDI file


def test_a_midi_file_that_fails_at_close_names_its_path_and_the_fix_and_keeps_the_older_file(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run.gbrun", range(2000))  # 8000 notes: about 40 kB of MIDI file
    out = tmp_path / "out.mid"
    assert gradbridge("midi", str(write_run(tmp_path / "short.gbrun", range(2))), "-o", str(out)).returncode == 0
    before = sha(out)
    done = gradbridge("follow", str(run), "--from-start", "--midi-file", str(out), limit_bytes=10_000)
    assert done.returncode == 1
    summary = summary_line(done.stderr)
    assert (f"MIDI file {out}: failed at close (SinkError: could not finish the MIDI file {str(out)!r} at close: "
            "File too large (errno 27); it was not written (an older file of that name is left as it was). Fix: "
            f"free disk space, then write it from the run log: gradbridge midi RUN.gbrun -o {out})") in summary
    assert "Traceback" not in done.stderr and "OSError" not in done.stderr
    assert sha(out) == before and leftovers(tmp_path) == []
    assert len(mido.MidiFile(str(out)).tracks) == 3  # the older file, still whole


# -- long renders say how long they will be --------------------------------------------------------------------------


def run_on_a_terminal(args: list[str], until: Callable[[str], bool] | None = None,
                      timeout: float = TIMEOUT_S) -> tuple[int, str]:
    """Run ``gradbridge args`` with its stderr on a terminal (a pty) to its end, or until ``until(what it
    printed)`` and then Ctrl-C (SIGINT to its process group); its exit status and what it printed."""
    master, slave = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    child = subprocess.Popen([sys.executable, "-m", "bridge", *args], stdout=subprocess.DEVNULL, stderr=slave,
                             env=env, start_new_session=True)
    os.close(slave)
    printed = ""
    deadline = time.monotonic() + timeout
    interrupted = False
    try:
        while time.monotonic() < deadline:
            if until is not None and not interrupted and until(printed):
                os.killpg(child.pid, signal.SIGINT)
                interrupted = True
            if not select.select([master], [], [], 0.2)[0]:
                continue
            try:
                chunk = os.read(master, 4096).decode()
            except OSError:  # the child ended and closed the terminal
                break
            if not chunk:
                break
            printed += chunk
        return child.wait(timeout=timeout), printed
    finally:
        os.close(master)
        if child.poll() is None:
            child.kill()


def test_a_preset_asking_for_hours_of_audio_says_so_first_and_shows_progress(tmp_path: Path) -> None:
    preset = tmp_path / "long.toml"
    preset.write_text("[timing]\nlayout = \"chord\"\nstep_s = 60.0\nnote_s = 60.0\n"
                      "[sound]\nchannels = 1\nsample_rate = 22050\nmax_frequency_hz = 10000.0\n")
    csv = tmp_path / "r20.csv"
    csv.write_text("step,a,b\n" + "".join(f"{step},1.0,2.0\n" for step in range(20)))
    out = tmp_path / "long.wav"
    status, printed = run_on_a_terminal(["render", str(csv), "-o", str(out), "-m", str(preset)])
    assert status == 0, printed
    assert f"gradbridge: writing {out}: 20 steps, 20 min 0 s of audio, about 52.9 MB" in printed
    bars = re.findall(r"wav long\.wav \[([#.]+)\] +(\d+)%", printed)
    assert [int(percent) for _, percent in bars] == sorted(int(percent) for _, percent in bars)
    assert len(bars) >= 3 and bars[-1] == ("#" * 30, "100") and 0 < int(bars[1][1]) < 100  # on its way, then done
    assert printed.index("writing") < printed.index("wav long.wav [") < printed.index("wrote")  # the length first
    assert wav_frames(out) == 20 * 60 * 22050
    csv.write_text("step,a,b\n" + "".join(f"{step},1.0,2.0\n" for step in range(2000)))  # 33 h 20 min of audio
    done = gradbridge("render", str(csv), "-o", str(tmp_path / "huge.wav"), "-m", str(preset))
    assert done.returncode == 1 and error_line(done.stderr) == (
        f"gradbridge: error: {tmp_path / 'huge.wav'} would hold 2000 steps, 33 h 20 min of audio, about 5.29 GB: "
        "over the 4 GiB a WAV file can hold. Fix: render a shorter run, a preset with shorter steps or fewer "
        "channels, or write a MIDI file (gradbridge midi)")
    assert not (tmp_path / "huge.wav").exists() and leftovers(tmp_path) == []


def test_ctrl_c_during_a_render_leaves_the_older_file_untouched(tmp_path: Path) -> None:
    csv = tmp_path / "many.csv"
    rng = np.random.default_rng(3)
    norms = np.exp(rng.normal(0.0, 1.0, size=(20_000, 8)))
    csv.write_text("step," + ",".join(f"l{i}" for i in range(8)) + "\n"
                   + "".join(f"{step}," + ",".join(f"{v:.4g}" for v in row) + "\n" for step, row in enumerate(norms)))
    good = tmp_path / "good.wav"
    assert gradbridge("render", str(write_run(tmp_path / "short.gbrun", range(3))), "-o", str(good)).returncode == 0
    before = sha(good)
    status, printed = run_on_a_terminal(["render", str(csv), "-o", str(good)],
                                        until=lambda text: re.search(r"\] +[1-9]\d*%", text) is not None)
    assert status == 130, printed
    assert f"gradbridge: interrupted; nothing was written to {good} (an older file of that name is left as it was)" \
        in printed
    assert sha(good) == before and leftovers(tmp_path) == []  # Ctrl-C wrote nothing half-way


# -- text a spreadsheet or a MIDI reader would misread ---------------------------------------------------------------


def test_export_escapes_formulas_and_midi_text_is_ascii(tmp_path: Path) -> None:
    names = ("=cmd|' /C calc'!A0", "conv–1 é")
    run = write_run(tmp_path / "run.gbrun", range(4), names=names, mapping="pentatonic")
    assert gradbridge("export", str(run), "-o", str(tmp_path / "norms.csv")).returncode == 0
    header = (tmp_path / "norms.csv").read_text(encoding="utf-8").splitlines()[0]
    assert header == "step,wall_time,loss,lr,layer:=cmd|' /C calc'!A0,conv–1 é"
    assert open_csv(tmp_path / "norms.csv")[0].layer_names == names  # read back unchanged
    assert gradbridge("midi", str(run), "-o", str(tmp_path / "run.mid")).returncode == 0
    rows = midicsv(tmp_path / "run.mid")
    titles = [row[3] for row in rows if row[2] == "Title_t"]
    assert titles == ['"gradbridge: pentatonic"', "\"=cmd|' /C calc'!A0\"", '"conv-1 e"']
    text = next(row[3] for row in rows if row[2] == "Text_t")
    assert "MIDI velocity 40-127" in text and "channels 1-2" in text
    tempo_track = mido.MidiFile(str(tmp_path / "run.mid")).tracks[0]
    assert next(m.text for m in tempo_track if m.type == "text").isascii()


# -- errors are ours -------------------------------------------------------------------------------------------------


def test_every_mistake_from_the_command_line_is_one_line_and_the_help_lists_the_exit_codes(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run.gbrun", range(3))
    (tmp_path / "notes.txt").write_text("hello\n")
    (tmp_path / "bad.toml").write_text("[timing]\nnote_s = -1\n")
    mistakes = [
        ["render", str(tmp_path / "absent.gbrun")],
        ["render", str(tmp_path / "notes.txt"), "-o", str(tmp_path / "x.wav")],
        ["render", str(run), "-o", str(tmp_path / "no-folder" / "x.wav")],
        ["render", str(run), "-o", str(tmp_path)],
        ["midi", str(run), "-o", str(tmp_path / "x.mid"), "-m", "pentatonc"],
        ["midi", str(run), "-o", str(tmp_path / "x.mid"), "-m", str(tmp_path / "bad.toml")],
        ["plot", str(run), "-o", str(tmp_path / "x.jpg")],
        ["replay", str(run)],
        ["replay", str(run), "--osc", "localhost"],
        ["replay", str(run), "--osc", ":9", "--every", "0"],
        ["follow", str(run), "--from-start"],
        ["demo", "--steps", "-3", "--out-dir", str(tmp_path)],
    ]
    for args in mistakes:
        done = gradbridge(*args)
        assert done.returncode == 1, (args, done.stderr)
        assert error_line(done.stderr).count("gradbridge: error:") == 1, args
    assert gradbridge("render").returncode == 2  # argparse: a missing argument
    assert leftovers(tmp_path) == [] and not (tmp_path / "x.wav").exists()
    helped = gradbridge("--help")
    assert helped.returncode == 0
    codes = helped.stdout[helped.stdout.index("exit status:"):]
    assert [line.split()[0] for line in codes.splitlines()[1:] if line[:5].strip().isdigit()] == ["0", "1", "2", "130", "143"]


def test_the_follower_process_keeps_the_type_of_the_error_it_refuses_with(tmp_path: Path) -> None:
    not_a_log = tmp_path / "notes.txt"
    not_a_log.write_text("hello\n")
    with pytest.raises(RunLogError, match=f"the follower process could not open the outputs: {not_a_log} is not a "):
        FollowerProcess.start(FollowerSetup(str(not_a_log), load_preset("perone2019"), OutputSpec()))
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="the follower process could not open the outputs: api must be one of"):
        bridge.watch(model, optimizer, midi="x", midi_api="beos", announce=None)
    with pytest.raises(ValueError, match="OSC target 'localhost' has no port"):  # refused before anything starts
        bridge.watch(model, optimizer, osc="localhost", announce=None)
    with pytest.raises(TypeError, match="announce must be a text stream such as sys.stderr, or None"):
        bridge.watch(model, optimizer, announce=5)  # type: ignore[arg-type]
    assert not optimizer._optimizer_step_pre_hooks
