"""Faults during real training runs: outputs that are missing, refuse, fill the disk or raise; Ctrl-C and kill -9.

Every run trains a tiny model for real through ``bridge.watch``. In each case training must complete, each
problem must be reported once, and every output that still works must hold every frame: the run log's
frames, the WAV's length and the MIDI file's notes are checked against counts worked out from the steps.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mido
import pytest
import torch
from torch import nn

import bridge
import bridge.runlog
from bridge.runlog import RunLogReader, read_run
from bridge.sinks.osc import OscSink

TIMEOUT_S = 60  # bound on every subprocess
STEP_SAMPLES = 1764  # perone2019, 2 layers: per step two 10 ms tones and 20 ms of silence = 0.04 s at 44.1 kHz
LAYERS = 2


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """A tiny model trains fastest on one thread; spinning helper threads only compete with the dispatcher."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int, w: Any) -> None:
    torch.manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        w.record_loss(loss)
        optimizer.step()


def watched_run(tmp_path: Path, steps: int, **outputs: Any) -> Any:
    """Train ``steps`` steps under watch with the run log, WAV and MIDI file plus ``outputs``; return the stats."""
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with bridge.watch(model, optimizer, mapping="perone2019", record=tmp_path / "run.gbrun",
                      wav=tmp_path / "run.wav", midi_file=tmp_path / "run.mid", announce=None, **outputs) as w:
        train(model, optimizer, steps, w)
    return w.stats


def run_log_steps(path: Path) -> list[int]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a damaged record would warn
        return [frame.step for frame in read_run(path)[1]]


def wav_frames(path: Path) -> int:
    with wave.open(str(path)) as f:
        assert (f.getnchannels(), f.getframerate()) == (1, 44100)
        return f.getnframes()


def midi_notes(path: Path) -> tuple[int, int, list[str]]:
    """Note-ons and note-offs in the file (read by mido), and the layer tracks' names."""
    midi = mido.MidiFile(str(path))
    messages = [m for track in midi.tracks for m in track]
    ons = sum(m.type == "note_on" and m.velocity > 0 for m in messages)
    offs = sum(m.type == "note_off" or (m.type == "note_on" and m.velocity == 0) for m in messages)
    return ons, offs, [t.name for t in midi.tracks[1:]]


def assert_files_complete(tmp_path: Path, steps: int) -> None:
    """The WAV and the MIDI file hold every one of ``steps`` steps of the 2-layer model."""
    assert wav_frames(tmp_path / "run.wav") == steps * STEP_SAMPLES
    assert midi_notes(tmp_path / "run.mid") == (steps * LAYERS, steps * LAYERS, ["0", "2"])


def warnings_about(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and text in r.getMessage()]


def closed_udp_port() -> int:
    """A UDP port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- outputs that are missing or refuse --------------------------------------------------------------------------


def follower_warnings(capfd: pytest.CaptureFixture[str], text: str) -> list[str]:
    """The follower process's warnings (on the stderr it shares with this process) that mention ``text``."""
    return [line for line in capfd.readouterr().err.splitlines() if line.startswith("gradbridge: ") and text in line]


def test_a_missing_midi_system_is_reported_once_and_the_run_goes_on(
        tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    if os.path.exists("/dev/snd/seq"):
        pytest.skip("this machine has an ALSA sequencer, so MIDI can start; the JACK case below covers a missing port")
    monkeypatch.setenv("JACK_DEFAULT_SERVER", f"gbtest-absent-{os.getpid()}")  # no such JACK server
    monkeypatch.setenv("JACK_NO_START_SERVER", "1")
    stats = watched_run(tmp_path, 12, midi="no such port")
    name = "MIDI port no such port"
    assert (stats.frames_in, stats.frames_done, stats.errors) == (12, 12, {name: 1})
    assert stats.first_errors[name].startswith("at start (SinkError: MIDI cannot start")
    reported = follower_warnings(capfd, "MIDI cannot start")
    assert len(reported) == 1 and name in reported[0]
    assert "no JACK server is running" in reported[0] and "Fix: " in reported[0]
    assert run_log_steps(tmp_path / "run.gbrun") == list(range(12))
    assert_files_complete(tmp_path, 12)


def test_a_midi_port_that_does_not_exist_is_reported_once_and_the_run_goes_on(
        tmp_path: Path, capfd: pytest.CaptureFixture[str], jack_server: str) -> None:
    stats = watched_run(tmp_path, 12, midi="no such port", midi_api="jack")
    name = "MIDI port no such port"
    assert (stats.frames_done, stats.errors) == (12, {name: 1})
    reported = follower_warnings(capfd, "no MIDI output matches")
    assert len(reported) == 1
    assert "no MIDI output matches 'no such port'" in reported[0] and "JACK" in reported[0] and "Fix: " in reported[0]
    assert run_log_steps(tmp_path / "run.gbrun") == list(range(12))
    assert_files_complete(tmp_path, 12)


def test_an_osc_receiver_that_is_down_is_reported_once_and_nothing_else_is_lost(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    port = closed_udp_port()
    stats = watched_run(tmp_path, 15, osc=f"127.0.0.1:{port}")
    # UDP does not fail the send itself: the refusal of one datagram is reported on the next send, from step 1
    # on, and the closing summary counts them (the sink goes on, so the frames are still done)
    assert (stats.frames_done, stats.errors) == (15, {"osc": 14})
    assert f"osc: failed 14 time(s) from step 1 (refused: nothing listens on 127.0.0.1:{port})" in stats.summary()
    reported = follower_warnings(capfd, "OSC to")
    assert len(reported) == 1
    assert f"OSC to 127.0.0.1:{port} failed (ConnectionRefusedError" in reported[0]
    assert "is sclang/Pd/Max listening" in reported[0]
    assert run_log_steps(tmp_path / "run.gbrun") == list(range(15))
    assert_files_complete(tmp_path, 15)


def test_an_osc_sink_counts_every_refused_step(tmp_path: Path) -> None:
    osc = OscSink("127.0.0.1", closed_udp_port())
    stats = watched_run(tmp_path, 15, sinks=[osc])
    assert stats.frames_done == 15
    # each send after the first finds the previous datagram refused, then retries and succeeds: every
    # datagram is handed to the OS, and each of the 14 later steps counts one error
    assert (osc.sent, osc.dropped, osc.errors) == (15, 0, 14)


# -- the run log's disk fills up; a sink that raises -----------------------------------------------------------

class DiskFillsUp:
    """Stands in for ``os`` in ``bridge.runlog``: from the ``full_after``-th call on, ``write`` fails with ENOSPC
    ``failures`` times (then the disk has room again: ``failures=None`` never)."""

    def __init__(self, full_after: int, failures: int | None) -> None:
        self.full_after = full_after
        self.failures = failures
        self.calls = 0
        self.failed = 0

    def write(self, fd: int, data: Any) -> int:
        self.calls += 1
        if self.calls > self.full_after and (self.failures is None or self.failed < self.failures):
            self.failed += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return os.write(fd, data)

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)


def test_a_disk_that_fills_then_frees_loses_no_frame_anywhere_and_says_so(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    disk = DiskFillsUp(full_after=1 + 7, failures=5)  # the header and 7 frames; the next 5 writes fail
    monkeypatch.setattr(bridge.runlog, "os", disk)
    with caplog.at_level(logging.WARNING, logger="bridge"):
        stats = watched_run(tmp_path, 20)
    assert (stats.frames_in, stats.frames_done, stats.frames_dropped, stats.errors) == (20, 20, 0, {})
    assert "the run log could not be written at frame 7 (No space left on device) and caught up later" in stats.remarks
    reported = warnings_about(caplog, "run log")
    assert len(reported) == 2
    assert "cannot write (No space left on device); keeping up to 64 MiB" in reported[0]
    assert "writing again after" in reported[1]
    monkeypatch.undo()
    assert run_log_steps(tmp_path / "run.gbrun") == list(range(20))
    assert_files_complete(tmp_path, 20)


def test_a_disk_that_stays_full_fails_the_run_log_at_close_naming_the_file_and_the_fix(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    disk = DiskFillsUp(full_after=1 + 7, failures=None)
    monkeypatch.setattr(bridge.runlog, "os", disk)
    stats = watched_run(tmp_path, 20)
    run_log = tmp_path / "run.gbrun"
    assert (stats.frames_in, stats.frames_done, stats.frames_dropped) == (20, 7, 13)
    assert stats.errors == {"run log": 2}  # at frame 7, then at close
    assert stats.first_errors["run log"] == "at frame 7 (No space left on device); 13 frame(s) lost"
    assert stats.summary().startswith("20 frames in, 13 dropped; run log: failed at frame 7")
    monkeypatch.undo()
    assert run_log_steps(run_log) == list(range(7))  # what reached the disk reads back, and the files hold it
    assert_files_complete(tmp_path, 7)


class FailingSink:
    """A live sink that raises in ``send`` from its ``fail_at``-th step on (0-based), and/or in ``close``."""

    def __init__(self, name: str, fail_at: int | None = None, fail_close: bool = False) -> None:
        self.name = name
        self.fail_at = fail_at
        self.fail_close = fail_close
        self.sent = 0
        self.closed = 0

    def open(self, arrangement: object) -> None:
        """Nothing to open: this stand-in sink only records what it is sent."""

    def send(self, events: object) -> None:
        if self.fail_at is not None and self.sent >= self.fail_at:
            raise ConnectionResetError(f"{self.name} lost its peer")
        self.sent += 1

    def close(self) -> None:
        self.closed += 1
        if self.fail_close:
            raise OSError(f"{self.name} could not flush")


def test_sinks_that_raise_are_each_reported_once_and_nothing_else_is_lost(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    on_send = FailingSink("fails at step 3", fail_at=3)
    always = FailingSink("fails always", fail_at=0, fail_close=True)
    on_close = FailingSink("fails at close", fail_close=True)
    with caplog.at_level(logging.WARNING, logger="bridge"):
        stats = watched_run(tmp_path, 16, sinks=[on_send, always, on_close])
    assert (stats.frames_in, stats.frames_done) == (16, 16)
    assert stats.errors == {"fails at step 3": 1, "fails always": 2, "fails at close": 1}
    assert stats.first_errors["fails at step 3"] == "at step 3 (ConnectionResetError: fails at step 3 lost its peer)"
    assert stats.first_errors["fails always"] == "at step 0 (ConnectionResetError: fails always lost its peer)"
    assert stats.first_errors["fails at close"] == "at close (OSError: fails at close could not flush)"
    for sink in (on_send, always, on_close):
        assert len(warnings_about(caplog, repr(sink.name))) == 1
        assert sink.closed == 1  # a failed sink is still closed, once
    assert (on_send.sent, always.sent, on_close.sent) == (3, 0, 16)
    assert run_log_steps(tmp_path / "run.gbrun") == list(range(16))
    assert_files_complete(tmp_path, 16)


# -- a short soak: a fast run into every output --------------------------------------------------------------

SOAK_PRESET = """
[timing]
layout = "chord"
step_s = 0.005
note_s = 0.005
[pitch]
mode = "scale"
[sound]
sample_rate = 8000
channels = 1
attack_s = 0.0
release_s = 0.0
max_frequency_hz = 3900.0
"""
SOAK_STEP_SAMPLES = 40  # 0.005 s at 8 kHz


class UdpCounter:
    """Counts the datagrams that reach a UDP socket on 127.0.0.1, on a thread of its own, until ``stop()``."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.received = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-udp-counter", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                self.sock.recv(65536)
                self.received += 1
            except TimeoutError:
                if self._stop.is_set():
                    return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def test_a_fast_run_into_every_output_has_no_thread_of_ours_and_every_frame_in_every_file(tmp_path: Path) -> None:
    steps = 1000
    preset = tmp_path / "soak.toml"
    preset.write_text(SOAK_PRESET)
    before = set(threading.enumerate())
    counter = UdpCounter()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    w = bridge.watch(model, optimizer, mapping=preset, record=tmp_path / "run.gbrun", wav=tmp_path / "run.wav",
                     midi_file=tmp_path / "run.mid", osc=f"127.0.0.1:{counter.port}", announce=None)
    train(model, optimizer, steps, w)
    during = set(threading.enumerate()) - before - {counter._thread}
    stats = w.remove()
    counter.stop()
    assert during == set()  # the hook writes the run log itself: no thread of ours in the training process
    assert set(threading.enumerate()) - before == set()

    assert (stats.frames_in, stats.frames_done, stats.frames_dropped, stats.frames_unreadable) == (steps, steps, 0, 0)
    assert stats.errors == {}
    assert run_log_steps(tmp_path / "run.gbrun") == list(range(steps))
    assert 0 < counter.received <= steps  # one bundle per step; UDP may lose datagrams to a busy reader
    midi = mido.MidiFile(str(tmp_path / "run.mid"))
    for track in midi.tracks[1:]:
        assert sum(m.type == "note_on" and m.velocity > 0 for m in track) == steps
    with wave.open(str(tmp_path / "run.wav")) as f:
        assert (f.getframerate(), f.getnframes()) == (8000, steps * SOAK_STEP_SAMPLES)


# -- runs in a child process: no audio device, Ctrl-C, kill -9 ------------------------------------------------
# The children start together with this file's first test; the signalled ones wait for "go" on stdin before
# they train, so the signal always lands in the middle of training.

AUDIO_CHILD = r"""
import json, logging, sys
import torch
from torch import nn
import bridge

torch.set_num_threads(1)
out = sys.argv[1]
messages = []
class Keep(logging.Handler):
    def emit(self, record):
        messages.append(record.getMessage())
logging.getLogger("bridge").addHandler(Keep(logging.WARNING))
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
with bridge.watch(model, optimizer, mapping="perone2019", record=out + "/run.gbrun", wav=out + "/run.wav",
                  midi_file=out + "/run.mid", play=True, announce=None) as w:
    for _ in range(10):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(torch.randn(16, 4)), torch.randint(0, 3, (16,))).backward()
        optimizer.step()
s = w.stats
print(json.dumps({"in": s.frames_in, "done": s.frames_done, "errors": s.errors, "first": s.first_errors,
                  "warnings": messages}))
"""

SIGNAL_CHILD = r"""
import json, sys, time
import torch
from torch import nn
import bridge

torch.set_num_threads(1)
out = sys.argv[1]
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
print("ready", flush=True)
sys.stdin.readline()
steps = 0
try:
    with bridge.watch(model, optimizer, mapping="perone2019", record=out + "/run.gbrun", wav=out + "/run.wav",
                      midi_file=out + "/run.mid", announce=sys.stderr) as w:
        print(f"follower {w.outputs_pid}", flush=True)
        while True:
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(torch.randn(16, 4)), torch.randint(0, 3, (16,)))
            loss.backward()
            w.record_loss(loss)
            optimizer.step()
            steps += 1
            print(f"step {steps}", flush=True)
            time.sleep(0.002)
except (KeyboardInterrupt, SystemExit) as ended:
    s = w.stats
    # on a line of its own: the interrupt may have cut a "step N" line short
    print("\n" + json.dumps({"in": s.frames_in, "done": s.frames_done, "dropped": s.frames_dropped,
                             "errors": s.errors}), flush=True)
    sys.exit(130 if isinstance(ended, KeyboardInterrupt) else ended.code)
"""


def process_gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (a zombie no parent reaped yet counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


class Child:
    """A child Python process whose stdout lines are collected by a thread (so reading never blocks)."""

    def __init__(self, code: str, out: Path, env: dict[str, str]) -> None:
        self.out = out
        self.process = subprocess.Popen([sys.executable, "-c", code, str(out)], env=env, text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines: list[str] = []
        self.stderr = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._errors = threading.Thread(target=self._read_errors, daemon=True)
        self._errors.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.strip())

    def _read_errors(self) -> None:
        assert self.process.stderr is not None
        self.stderr = self.process.stderr.read()

    def wait_for(self, predicate: Any, what: str) -> None:
        """Wait (at most ``TIMEOUT_S``) until ``predicate()`` holds."""
        deadline = time.monotonic() + TIMEOUT_S
        while not predicate():
            if self.process.poll() is not None:
                self._reader.join(5)
                self._errors.join(5)
                if predicate():
                    return
                pytest.fail(f"the child ended ({self.process.returncode}) before {what}:\n{self.stderr[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} within {TIMEOUT_S} s")
            time.sleep(0.005)

    def follower_pid(self) -> int:
        self.wait_for(lambda: any(line.startswith("follower ") for line in self.lines), "the follower's pid")
        return next(int(line.split()[1]) for line in self.lines if line.startswith("follower "))

    def steps_printed(self) -> int:
        return max((int(line[5:]) for line in list(self.lines) if re.fullmatch(r"step \d+", line)), default=0)

    def go(self) -> None:
        self.wait_for(lambda: "ready" in self.lines, "'ready'")
        assert self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    def finish(self) -> int:
        """Wait for the child to end; its return code (all its output read)."""
        code = self.process.wait(TIMEOUT_S)
        self._reader.join(5)
        self._errors.join(5)
        return code

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(TIMEOUT_S)


@pytest.fixture(scope="module", autouse=True)
def children(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Child]]:
    """The child runs of this file: "audio" (no sound card), "sigint" and "kill". They start with the file's
    first test, so that their imports of torch overlap the tests that run in this process."""
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_CONFIG_HOME", "ALSA_CONFIG_PATH")}
    env.update(JACK_DEFAULT_SERVER=f"gbtest-none-{os.getpid()}", JACK_NO_START_SERVER="1", OMP_NUM_THREADS="1")
    started: dict[str, Child] = {}
    if importlib.util.find_spec("pyaudio") is not None:
        out = tmp_path_factory.mktemp("audio")
        home = out / "home"
        home.mkdir()
        (home / ".asoundrc").write_text("pcm.!default { type hw; card 7 }\nctl.!default { type hw; card 7 }\n")
        started["audio"] = Child(AUDIO_CHILD, out, dict(env, HOME=str(home)))  # there is no card 7
    for name in ("sigint", "sigterm", "kill"):
        started[name] = Child(SIGNAL_CHILD, tmp_path_factory.mktemp(name), env)
    yield started
    for child in started.values():
        child.stop()


def test_a_missing_audio_device_is_reported_once_and_the_files_are_complete(children: dict[str, Child]) -> None:
    if "audio" not in children:
        pytest.skip("PyAudio not installed (pip install 'gradbridge[audio]')")
    child = children["audio"]
    assert child.finish() == 0, child.stderr[-3000:]
    report = json.loads(child.lines[-1])
    assert (report["in"], report["done"], report["errors"]) == (10, 10, {"audio": 1})
    assert report["first"]["audio"].startswith("at start (SinkError: no audio output device (no sound card?)")
    reported = [line for line in child.stderr.splitlines() if "'audio' could not be opened" in line]
    assert len(reported) == 1  # said once, by the follower process, on the stderr it shares
    assert run_log_steps(child.out / "run.gbrun") == list(range(10))
    assert_files_complete(child.out, 10)


@pytest.mark.parametrize("name, signum, status", [("sigint", signal.SIGINT, 130), ("sigterm", signal.SIGTERM, 143)])
def test_ctrl_c_or_sigterm_mid_run_leaves_every_output_complete_and_no_process_behind(
        children: dict[str, Child], name: str, signum: int, status: int) -> None:
    child = children[name]
    child.go()
    follower = child.follower_pid()
    child.wait_for(lambda: child.steps_printed() >= 40, "40 steps")
    child.process.send_signal(signum)
    assert child.finish() == status, child.stderr[-3000:]
    report = json.loads(child.lines[-1])
    printed = child.steps_printed()
    # the signal may land inside an optimizer step, after its frame was taken and before "step" printed
    assert report["in"] in (printed, printed + 1)
    assert (report["done"], report["dropped"], report["errors"]) == (report["in"], 0, {})
    frames = report["done"]
    assert f"gradbridge: {frames} frames in, 0 dropped" in child.stderr
    assert run_log_steps(child.out / "run.gbrun") == list(range(frames))
    assert_files_complete(child.out, frames)
    assert process_gone(follower)


def test_kill_9_of_training_the_follower_still_finishes_every_file_from_the_log_and_exits(
        children: dict[str, Child]) -> None:
    child = children["kill"]
    child.go()
    follower = child.follower_pid()
    child.wait_for(lambda: child.steps_printed() >= 150, "150 steps")
    run_log = child.out / "run.gbrun"
    child.wait_for(lambda: RunLogReader(run_log).records_on_disk >= 150, "150 frames in the run log")
    child.process.send_signal(signal.SIGKILL)
    assert child.finish() == -signal.SIGKILL
    printed = child.steps_printed()
    deadline = time.monotonic() + TIMEOUT_S
    while not process_gone(follower):  # its pipe from training ended: it finishes from the log, then exits
        assert time.monotonic() < deadline, "the follower process is still there (an orphan)"
        time.sleep(0.02)
    steps = run_log_steps(run_log)  # a torn last record is ignored without a warning
    assert 150 <= len(steps) <= printed + 1  # every step written before the kill is there
    assert steps == list(range(len(steps)))
    assert_files_complete(child.out, len(steps))
    rendered = child.out / "again.mid"
    done = subprocess.run([sys.executable, "-m", "bridge", "midi", str(run_log), "-o", str(rendered)],
                          check=False, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    assert midi_notes(rendered) == (len(steps) * LAYERS, len(steps) * LAYERS, ["0", "2"])


def test_the_follower_killed_leaves_training_unaffected_and_the_summary_says_how_to_regenerate(
        tmp_path: Path) -> None:
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run_log = tmp_path / "run.gbrun"
    with bridge.watch(model, optimizer, mapping="perone2019", record=run_log, wav=tmp_path / "run.wav",
                      midi_file=tmp_path / "run.mid", announce=None) as w:
        train(model, optimizer, 10, w)
        os.kill(w.outputs_pid, signal.SIGKILL)
        train(model, optimizer, 10, w)
    stats = w.stats
    assert (stats.frames_in, stats.errors) == (20, {"outputs process": 1})
    assert stats.first_errors["outputs process"] == "when it was killed by SIGKILL"
    assert "outputs process: failed when it was killed by SIGKILL" in stats.summary()
    assert (f"the run log {run_log} holds every frame: `gradbridge render {run_log} -o run.wav` and "
            f"`gradbridge midi {run_log} -o run.mid` write the files again") in stats.remarks
    assert run_log_steps(run_log) == list(range(20))
    done = subprocess.run([sys.executable, "-m", "bridge", "render", str(run_log), "-o", str(tmp_path / "again.wav")],
                          check=False, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    assert wav_frames(tmp_path / "again.wav") == 20 * STEP_SAMPLES
