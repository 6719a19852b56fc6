"""Following a run log while it grows: the tail, the file watch, and ``gradbridge follow`` against real peers.

The writers here are separate Python processes that append frames with ``RunLogWriter`` (what the training
hook does), so each test sees exactly what a follower sees of a real run: a file that grows, an end record
at close, a lock that goes away when the writer dies.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import mido
import pytest

from bridge.filewatch import FileWatch
from bridge.frames import Frame, RunInfo
from bridge.runlog import RunLogReader, RunLogWriter, read_run
from bridge.tail import FileTail, StreamTail
from tests.conftest import MidiDump
from tests.test_osc import Peer, free_udp_port, need, READY

REPO = Path(__file__).resolve().parents[1]


def env() -> dict[str, str]:
    """This process's environment now (a JACK fixture may have named its server), with this checkout first."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


TIMEOUT_S = 60
PERONE_STEP_SAMPLES = 3 * 441 + 882  # perone2019, 3 layers: three 10 ms tones and 20 ms of silence at 44.1 kHz

WRITER = r"""
import math, sys, time
from bridge.frames import Frame, RunInfo
from bridge.runlog import RunLogWriter
path, steps, pause_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
nan_at = {int(s) for s in sys.argv[4].split(",") if s} if len(sys.argv) > 4 else set()
with RunLogWriter(path, RunInfo(("a", "b", "c"), {"mapping": "perone2019"})) as writer:
    for step in range(steps if steps >= 0 else 10**9):
        norms = [math.nan if step in nan_at else 0.5 + 0.01 * (step % 50), 1.0, 2.0]
        writer.append(Frame(step, time.time(), norms, loss=1.0, lr=0.1))
        print(step, flush=True)
        time.sleep(pause_s)
"""


class Writer:
    """A process appending frames to a run log (``steps`` < 0: until killed); its printed steps are kept."""

    def __init__(self, path: Path, steps: int, pause_s: float, nan_at: str = "") -> None:
        self.process = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(steps), str(pause_s), nan_at],
                                        stdout=subprocess.PIPE, text=True, env=env())
        self.steps: list[int] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.steps.append(int(line))

    def wait_steps(self, count: int) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while len(self.steps) < count:
            assert self.process.poll() is None or len(self.steps) >= count, "the writer ended early"
            assert time.monotonic() < deadline, f"the writer wrote {len(self.steps)} of {count} steps"
            time.sleep(0.01)

    def finish(self) -> None:
        self.process.wait(timeout=TIMEOUT_S)
        self._thread.join(5)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=TIMEOUT_S)


def follow(*args: str, stdin: object = None) -> subprocess.Popen[str]:
    """``gradbridge follow ...`` in its own process group, as a terminal starts it (so Ctrl-C reaches it)."""
    return subprocess.Popen([sys.executable, "-m", "bridge", "follow", *args], stdin=stdin, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env(), start_new_session=True)


def wav_frames(path: Path) -> int:
    with wave.open(str(path)) as f:
        return f.getnframes()


def notes_per_track(path: Path) -> list[int]:
    return [sum(m.type == "note_on" and m.velocity > 0 for m in track) for track in mido.MidiFile(str(path)).tracks]


@pytest.fixture
def writers() -> Iterator[list[Writer]]:
    started: list[Writer] = []
    yield started
    for writer in started:
        writer.stop()


# -- the tail and the file watch --------------------------------------------------------------------------


def test_a_file_tail_gives_each_frame_once_as_the_log_grows_then_ends_at_the_end_record(tmp_path: Path) -> None:
    path = tmp_path / "run.gbrun"
    writer = RunLogWriter(path, RunInfo(("a", "b")))
    writer.append(Frame(0, 0.0, [1.0, 2.0]))
    tail, late = FileTail(path), FileTail(path, from_start=False)
    assert [f.step for f in tail.read_new()] == [0] and late.read_new() == []
    assert tail.read_new() == [] and tail.writer_alive() is True
    writer.append(Frame(1, 0.0, [1.5, 2.5]))
    writer.append(Frame(2, 0.0, [math.nan, 3.0]))
    got = tail.read_new()
    assert [f.step for f in got] == [1, 2] and [f.step for f in late.read_new()] == [1, 2]
    assert math.isnan(got[1].norms[0]) and not tail.finished
    writer.close()
    assert tail.read_new() == [] and tail.finished and tail.reason == "the writer closed the run log"
    assert (tail.frames_written, late.skipped_at_start) == (3, 1)
    assert tail.writer_alive() is False
    tail.close()
    late.close()


def test_a_frozen_tail_gives_the_log_as_it_stood_and_a_replaced_log_ends_the_tail(tmp_path: Path) -> None:
    path = tmp_path / "run.gbrun"
    writer = RunLogWriter(path, RunInfo(("a",)))
    for step in range(3):
        writer.append(Frame(step, 0.0, [1.0]))
    tail = FileTail(path)
    tail.freeze()
    writer.append(Frame(3, 0.0, [1.0]))  # after the freeze: not read
    assert tail.frames_left() == 3
    assert [f.step for f in tail.read_new()] == [0, 1, 2] and tail.read_new() == []
    writer.close()
    other = FileTail(path)
    os.replace(tmp_path / "run.gbrun", tmp_path / "old.gbrun")
    RunLogWriter(path, RunInfo(("a",))).close()  # a new run at the same path
    assert [f.step for f in other.read_new()] == [0, 1, 2, 3]
    tail.close()
    other.close()


def test_a_stream_tail_reads_a_pipe_to_its_end(tmp_path: Path) -> None:
    path = tmp_path / "run.gbrun"
    with RunLogWriter(path, RunInfo(("a",))) as writer:
        for step in range(5):
            writer.append(Frame(step, 0.0, [step + 0.5]))
    data = path.read_bytes()
    read_end, write_end = os.pipe()
    with os.fdopen(read_end, "rb") as stream:
        os.write(write_end, data[:200])  # the header and part of the records
        tail = StreamTail(stream)
        first = tail.read_new()
        os.write(write_end, data[200:-10])  # all but the end record's last bytes
        os.close(write_end)
        rest = []
        while not tail.finished:
            tail.wait(0.1)
            rest += tail.read_new()
    assert [f.step for f in first + rest] == [0, 1, 2, 3, 4]
    assert tail.reason == "standard input ended" and tail.frames_written is None


def test_the_file_watch_wakes_on_a_write_and_times_out_otherwise(tmp_path: Path) -> None:
    path = tmp_path / "grows.bin"
    path.write_bytes(b"")
    with FileWatch(str(path)) as watch:
        if sys.platform.startswith("linux"):
            assert watch.kind == "inotify"
        assert watch.wait(0.05) is (watch.kind == "poll")  # nothing written: a timeout (polling: "maybe")
        timer = threading.Timer(0.05, lambda: path.write_bytes(b"x"))
        timer.start()
        assert watch.wait(10.0) is True
        timer.join()
        watch.wait(0.05)  # the same write's later events (its close), if they came after the wake-up
        read_end, write_end = os.pipe()
        os.write(write_end, b"!")
        assert watch.wait(10.0, also=(read_end,)) is (watch.kind == "poll")  # woken by the pipe, not the file
        os.close(read_end)
        os.close(write_end)


def test_the_follower_process_never_imports_torch() -> None:
    code = ("import sys, bridge.follower_process, bridge.sinks.wav, bridge.sinks.midi_file, bridge.sinks.osc, "
            "bridge.sinks.midi_port, bridge.cli; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env())
    assert out.stdout.strip() == "[]"


# -- gradbridge follow --------------------------------------------------------------------------------------


def test_follow_started_mid_run_delivers_every_later_step_to_oscdump_and_ends_with_the_run(
        tmp_path: Path, writers: list[Writer]) -> None:
    need("oscdump")
    port = free_udp_port()
    dump = Peer(["oscdump", "-L", str(port)])
    try:
        dump.wait_ready(port, READY, "/ready")
        run = tmp_path / "run.gbrun"
        writers.append(writer := Writer(run, 300, 0.005))
        writer.wait_steps(30)
        follower = follow(str(run), "--osc", f"127.0.0.1:{port}")
        out, err = follower.communicate(timeout=TIMEOUT_S)
        writer.finish()
        lines = dump.wait_for(lambda seen: any(" /gradbridge/step " in l and l.split()[3] == "299" for l in seen))
    finally:
        dump.stop()
    assert follower.returncode == 0, err
    assert "from now" in err and "the writer closed the run log" in err
    steps = [int(line.split()[3]) for line in lines if line.split()[1:3] == ["/gradbridge/step", "ifffifii"]]
    first = steps[0]
    assert 30 <= first < 300  # it joined mid-run: the steps before it were left to the past
    assert steps == list(range(first, 300))  # and from there on every step arrived, once, in order


def test_follow_of_a_stream_writes_complete_files_and_ends_when_the_stream_ends(tmp_path: Path) -> None:
    run = tmp_path / "run.gbrun"
    with RunLogWriter(run, RunInfo(("a", "b", "c"), {"mapping": "perone2019"})) as writer:
        for step in range(40):
            writer.append(Frame(step, 0.0, [0.5, 1.0, 2.0]))
    data = run.read_bytes()
    cut = data[: len(data) - 100]  # the stream stops inside a record: like `cat` of a log still growing
    (tmp_path / "cut.gbrun").write_bytes(cut)
    cat = subprocess.Popen(["cat", str(tmp_path / "cut.gbrun")], stdout=subprocess.PIPE)  # as `ssh host cat ...`
    follower = follow("-", "--wav", str(tmp_path / "s.wav"), "--midi-file", str(tmp_path / "s.mid"),
                      stdin=cat.stdout)
    assert cat.stdout is not None
    cat.stdout.close()  # the follower holds the pipe's reading end now
    out, err = follower.communicate(timeout=TIMEOUT_S)
    cat.wait(timeout=TIMEOUT_S)
    assert follower.returncode == 0, err
    whole = (len(cut) - RunLogReader(run).header_bytes) // 52  # 52-byte records; the end record and a torn one cut
    assert whole == 39 and "standard input ended" in err
    assert wav_frames(tmp_path / "s.wav") == whole * PERONE_STEP_SAMPLES
    assert notes_per_track(tmp_path / "s.mid") == [0, whole, whole, whole]
    csv = subprocess.run(["midicsv", str(tmp_path / "s.mid")], capture_output=True, text=True, check=True,
                         encoding="latin-1").stdout
    ons = [line for line in csv.splitlines() if ", Note_on_c, " in line and not line.endswith(", 0")]
    assert len(ons) == 3 * whole  # read independently of mido


def test_follow_waits_for_the_log_and_ctrl_c_finishes_its_files(tmp_path: Path, writers: list[Writer]) -> None:
    run = tmp_path / "later.gbrun"
    follower = follow(str(run), "--from-start", "--wav", str(tmp_path / "f.wav"), "--midi-file",
                      str(tmp_path / "f.mid"))
    time.sleep(0.5)
    writers.append(writer := Writer(run, -1, 0.002))  # writes until killed
    writer.wait_steps(100)
    os.killpg(follower.pid, signal.SIGINT)
    out, err = follower.communicate(timeout=TIMEOUT_S)
    assert follower.returncode == 130, err
    assert f"waiting for {run} to be written" in err and "asked to stop" in err
    frames = wav_frames(tmp_path / "f.wav") // PERONE_STEP_SAMPLES
    assert wav_frames(tmp_path / "f.wav") == frames * PERONE_STEP_SAMPLES and frames >= 100
    assert notes_per_track(tmp_path / "f.mid") == [0, frames, frames, frames]
    assert writer.process.poll() is None  # the writer never noticed


def test_follow_ends_by_itself_when_the_writer_is_killed(tmp_path: Path, writers: list[Writer]) -> None:
    run = tmp_path / "run.gbrun"
    writers.append(writer := Writer(run, -1, 0.002))
    writer.wait_steps(20)
    follower = follow(str(run), "--from-start", "--wav", str(tmp_path / "k.wav"))
    writer.wait_steps(120)
    writer.process.send_signal(signal.SIGKILL)
    writer.finish()
    out, err = follower.communicate(timeout=TIMEOUT_S)
    assert follower.returncode == 0, err
    assert "the writer is gone" in err
    logged = len(read_run(run)[1])
    assert wav_frames(tmp_path / "k.wav") == logged * PERONE_STEP_SAMPLES  # every frame the log holds


def test_follow_refuses_nothing_to_do_and_an_output_on_the_log_itself(tmp_path: Path) -> None:
    run = tmp_path / "run.gbrun"
    RunLogWriter(run, RunInfo(("a",))).close()
    before = run.read_bytes()
    for args, message in ((["follow", str(run)], "nothing to follow to. Fix: add --osc"),
                          (["follow", str(run), "--wav", str(run)], f"wav='{run}' is the same file as run=")):
        done = subprocess.run([sys.executable, "-m", "bridge", *args], capture_output=True, text=True, env=env(),
                              timeout=TIMEOUT_S)
        assert done.returncode == 1 and message in done.stderr
    assert run.read_bytes() == before


def test_an_alarm_in_a_thinned_live_stretch_still_reaches_the_midi_port(tmp_path: Path, midi_dump: object) -> None:
    dump: MidiDump = midi_dump()  # type: ignore[operator]
    run = tmp_path / "run.gbrun"
    with RunLogWriter(run, RunInfo(("a", "b", "c"), {"mapping": "daw"})) as writer:
        for step in range(2500):
            norms = [math.nan if step in (1500, 2200) else 1.0 + (step % 7), 1.0, 2.0]
            writer.append(Frame(step, 0.0, norms))
    # every=1000 sounds steps 999, 1999 (folding 1000-1999, NaN at 1500 among them) and, at the end, what is
    # still held back (2000-2499, NaN at 2200): the alarm must not be lost with the run's end
    done = subprocess.run([sys.executable, "-m", "bridge", "follow", str(run), "--from-start", "--midi", dump.port,
                           "--midi-api", "jack", "--every", "1000"], capture_output=True, text=True, env=env(),
                          timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    messages = [m for _, m in dump.wait_for(lambda ms: sum(m[:2] == (0x99, 49) and m[2] > 0 for m in ms) >= 2)]
    alarms = [m for m in messages if m[0] == 0x99 and m[2] > 0]
    assert alarms and {m[1] for m in alarms} == {49} and len(alarms) == 2  # GM crash cymbal, NaN, twice
    melodic = [m for m in messages if m[0] & 0xF0 == 0x90 and m[0] != 0x99 and m[2] > 0]
    assert len(melodic) == 3 + 2 + 2  # step 999: three layers; 1999 and the held stretch: layers b and c only


def test_a_watch_with_its_follower_on_a_thread_writes_the_same_files_as_with_its_follower_process(
        tmp_path: Path) -> None:
    import torch
    from torch import nn

    import bridge

    outputs = {}
    for process in (True, False):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        stem = tmp_path / ("process" if process else "thread")
        with bridge.watch(model, optimizer, mapping="pentatonic", wav=f"{stem}.wav", midi_file=f"{stem}.mid",
                          process=process, announce=None) as w:
            for _ in range(30):
                optimizer.zero_grad()
                nn.functional.cross_entropy(model(torch.randn(8, 4)), torch.randint(0, 3, (8,))).backward()
                optimizer.step()
        assert w.stats.frames_done == 30 and not w.stats.errors
        # pentatonic: 0.125 s a step; the last step starts at sample round(29 x 0.125 x 44100) and lasts
        # round(0.125 x 44100) samples (Python rounds halves to even: 159862 + 5512)
        assert wav_frames(Path(f"{stem}.wav")) == 159862 + 5512
        outputs[process] = (Path(f"{stem}.wav").read_bytes(), Path(f"{stem}.mid").read_bytes())
    assert outputs[True] == outputs[False]
