"""``bridge.watch(..., process=True)``: the outputs run in a child process, fed through a pipe."""

from __future__ import annotations

import copy
import fcntl
import json
import math
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import wave
from pathlib import Path

import mido
import numpy as np
import pytest
import torch
from pythonosc.osc_bundle import OscBundle

import bridge
from bridge import process_link
from bridge.dispatch import DispatchStats
from bridge.errors import SinkError
from bridge.events import Arrangement, StepEvents
from bridge.frames import Frame
from bridge.outputs_process import decode_frame, encode_frame, preset_from_dict, preset_to_dict, record_bytes
from bridge.presets import builtin_names, load_preset
from bridge.process_link import Forwarder, merge_stats
from bridge.runlog import read_run

REPO = Path(__file__).resolve().parent.parent
#: perone2019 with 2 layers: (2 x 10 ms tone + 20 ms gap) x 44100 Hz = 1764 mono samples a step
PERONE_SAMPLES_PER_STEP = 1764


def two_layer_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))


def train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, w: bridge.watching.Watch, steps: int) -> None:
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        loss = model(torch.randn(8, 4, generator=generator)).pow(2).mean()
        loss.backward()
        w.record_loss(loss)
        optimizer.step()
        optimizer.zero_grad()


def small_pipe(fd: int) -> None:
    fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, 4096)
    assert fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ) == 4096


def read_available(fd: int) -> bytes:
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 1 << 20)
    finally:
        os.set_blocking(fd, True)


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie waiting for a reaper that is not us counts as exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def wait_until(condition, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


# --- the wire format ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", builtin_names())
def test_every_builtin_preset_crosses_the_pipe_unchanged(name: str) -> None:
    preset = load_preset(name)
    assert preset_from_dict(json.loads(json.dumps(preset_to_dict(preset)))) == preset


def test_a_frame_record_is_32_bytes_plus_8_a_layer_and_decodes_exactly() -> None:
    frame = Frame(7, 1_700_000_000.123456, np.array([0.1, math.nan, math.inf]), loss=2.5, lr=1e-3)
    record = encode_frame(frame)
    assert len(record) == record_bytes(3) == 56
    back = decode_frame(record, 3)
    assert (back.step, back.time_s, back.loss, back.lr) == (7, 1_700_000_000.123456, 2.5, 1e-3)
    np.testing.assert_array_equal(back.norms, [0.1, math.nan, math.inf])


def test_whole_records_fill_the_pipe_then_frames_are_dropped_and_counted() -> None:
    read_end, write_end = os.pipe()
    small_pipe(write_end)
    os.set_blocking(write_end, False)
    with os.fdopen(write_end, "wb", buffering=0) as pipe:
        forwarder = Forwarder(pipe)
        for step in range(100):
            forwarder.handle(Frame(step, 0.0, np.array([1.0, 2.0])))
        # 48-byte records: 4096 // 48 = 85 fit in a 4096-byte pipe, the other 15 are dropped
        assert (forwarder.frames_sent, forwarder.frames_dropped) == (85, 15)
        data = read_available(read_end)
    os.close(read_end)
    assert [decode_frame(data[i:i + 48], 2).step for i in range(0, len(data), 48)] == list(range(85))


def test_a_record_taken_in_part_is_finished_before_the_next_so_the_stream_stays_whole() -> None:
    read_end, write_end = os.pipe()
    small_pipe(write_end)
    os.set_blocking(write_end, False)
    layers = 600  # 4832-byte records: longer than the pipe, so a record goes in parts
    frames = [Frame(step, float(step), np.full(layers, step + 0.5)) for step in range(3)]
    received = b""
    with os.fdopen(write_end, "wb", buffering=0) as pipe:
        forwarder = Forwarder(pipe)
        forwarder.handle(frames[0])  # 4096 bytes go in, 736 wait
        forwarder.handle(frames[1])  # no room even for the rest: dropped
        received += read_available(read_end)
        forwarder.handle(frames[2])  # the rest of frame 0, then the start of frame 2
        received += read_available(read_end)
        forwarder.close()  # the rest of frame 2, then the end
    received += os.read(read_end, 1 << 20)
    os.close(read_end)
    assert (forwarder.frames_sent, forwarder.frames_dropped) == (2, 1)
    assert len(received) == 2 * 4832
    steps = [decode_frame(received[i:i + 4832], layers) for i in (0, 4832)]
    assert [f.step for f in steps] == [0, 2]
    np.testing.assert_array_equal(steps[1].norms, np.full(layers, 2.5))


def test_merged_stats_count_every_frame_once() -> None:
    parent = DispatchStats(frames_in=100, frames_dropped=4, frames_done=96, consumers=("outputs process", "mine"),
                           errors={"mine": 1}, first_errors={"mine": "at step 3 (boom)"})
    forwarder = Forwarder.__new__(Forwarder)
    forwarder.frames_sent, forwarder.frames_dropped = 90, 6
    child = DispatchStats(frames_in=90, frames_done=89, frames_unreadable=1, consumers=("run log", "wav"),
                          errors={"wav": 1}, first_errors={"wav": "at close (disk full)"})
    merged = merge_stats(parent, forwarder, child, None, {"MIDI port x": "no such port"})
    # 100 in = 89 done + 1 unreadable + (4 queue + 6 pipe) dropped
    assert (merged.frames_in, merged.frames_done, merged.frames_unreadable, merged.frames_dropped) == (100, 89, 1, 10)
    assert merged.consumers == ("run log", "wav", "mine")
    assert merged.errors == {"wav": 1, "MIDI port x": 1, "mine": 1}
    assert merged.first_errors["MIDI port x"] == "at start (no such port)"
    lost = merge_stats(parent, forwarder, None, "exited with status -9 before reporting", {})
    assert (lost.frames_done, lost.frames_dropped) == (90, 10)
    assert lost.consumers == ("mine", "outputs process")
    assert lost.first_errors["outputs process"] == "exited with status -9 before reporting"


def test_the_outputs_process_never_imports_torch() -> None:
    code = ("import sys, bridge.outputs_process, bridge.sinks.wav, bridge.sinks.midi_file, bridge.sinks.osc, "
            "bridge.sinks.midi_port; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.stdout.strip() == "[]"


# --- a real training run --------------------------------------------------------------------------------


class Collector:
    """A sink of the user's own: stays in the training process."""

    name = "collector"

    def __init__(self) -> None:
        self.steps: list[int] = []

    def open(self, arrangement: Arrangement) -> None:
        """Nothing to prepare: the collector only keeps the steps it is sent."""

    def send(self, events: StepEvents) -> None:
        self.steps.append(events.step)

    def close(self) -> None:
        """Nothing to release: the steps stay for the test to read."""


def osc_steps(receiver: socket.socket) -> list[int]:
    steps = []
    receiver.settimeout(0.5)
    while True:
        try:
            datagram = receiver.recv(65536)
        except TimeoutError:
            return steps
        steps += [m.params[0] for m in OscBundle(datagram) if m.address == "/gradbridge/step"]


def run_watched(folder: Path, process: bool, model: torch.nn.Module, steps: int, osc_port: int,
                collector: Collector) -> tuple[DispatchStats, int | None]:
    folder.mkdir()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    w = bridge.watch(model, optimizer, mapping="pentatonic", record=folder / "run.gbrun", wav=folder / "run.wav",
                     midi_file=folder / "run.mid", osc=f"127.0.0.1:{osc_port}", sinks=[collector], process=process,
                     announce=None)
    pid = w.outputs_pid
    if process:  # the real child, while it runs: no torch library mapped into it
        assert "libtorch" not in Path(f"/proc/{pid}/maps").read_text()
    train(model, optimizer, w, steps)
    return w.remove(), pid


def test_process_outputs_equal_the_thread_outputs_for_the_same_training(tmp_path: Path) -> None:
    steps, model = 40, two_layer_model()
    results = {}
    for process in (True, False):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
            receiver.bind(("127.0.0.1", 0))
            collector = Collector()
            folder = tmp_path / ("process" if process else "thread")
            stats, pid = run_watched(folder, process, copy.deepcopy(model), steps, receiver.getsockname()[1],
                                     collector)
            results[process] = folder
            assert osc_steps(receiver) == list(range(steps))
        assert collector.steps == list(range(steps))
        assert (stats.frames_in, stats.frames_done, stats.frames_dropped, stats.errors) == (steps, steps, 0, {})
        assert stats.consumers == ("run log", "wav", f"MIDI file {folder / 'run.mid'}", "osc", "collector", "health")
        assert (pid is not None) == process
    assert gone(pid)
    info_p, frames_p = read_run(results[True] / "run.gbrun")
    info_t, frames_t = read_run(results[False] / "run.gbrun")
    assert info_p == info_t and len(frames_p) == steps
    for a, b in zip(frames_p, frames_t):
        assert (a.step, a.loss, a.lr) == (b.step, b.loss, b.lr)
        np.testing.assert_array_equal(a.norms, b.norms)
    with wave.open(str(results[True] / "run.wav")) as wav:  # pentatonic: 125 ms a step, 44.1 kHz stereo
        assert (wav.getnframes(), wav.getnchannels()) == (steps * 5512 + steps // 2, 2)
    assert (results[True] / "run.wav").read_bytes() == (results[False] / "run.wav").read_bytes()
    assert (results[True] / "run.mid").read_bytes() == (results[False] / "run.mid").read_bytes()


def test_a_missing_midi_port_is_reported_and_training_goes_on_with_explicit_steps(tmp_path: Path) -> None:
    model = two_layer_model()
    w = bridge.watch(model, None, mapping="perone2019", record=tmp_path / "run.gbrun", midi="no such port here",
                     auto=False, process=True, announce=None)
    for _ in range(5):
        model(torch.ones(1, 4)).sum().backward()
        w.step(loss=0.25)
        model.zero_grad()
    stats = w.remove()
    assert (stats.frames_in, stats.frames_done, stats.consumers) == (5, 5, ("run log", "health"))
    (name, first), = stats.first_errors.items()
    assert name.startswith("MIDI port") and first.startswith("at start (") and stats.errors == {name: 1}
    _, frames = read_run(tmp_path / "run.gbrun")
    assert [f.step for f in frames] == [0, 1, 2, 3, 4] and {f.loss for f in frames} == {0.25}


def test_a_child_that_cannot_start_raises_before_training_with_its_error_and_the_fix(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(process_link, "CHILD_MODULE", "bridge.no_such_module")
    model = two_layer_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(SinkError, match=r"exited with status 1 .*No module named bridge.no_such_module.*process=False"):
        bridge.watch(model, optimizer, wav=tmp_path / "run.wav", process=True, announce=None)
    assert not optimizer._optimizer_step_pre_hooks  # nothing attached
    assert not (tmp_path / "run.wav").exists()


def test_process_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match=r"process must be True .* got 'yes'"):
        bridge.watch(two_layer_model(), None, auto=False, process="yes", announce=None)  # type: ignore[arg-type]


def test_a_bad_setting_refused_by_the_child_raises_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sample_format"):
        bridge.watch(two_layer_model(), None, auto=False, wav=tmp_path / "run.wav", wav_format="int8",
                     process=True, announce=None)


def test_a_stalled_child_makes_the_pipe_drop_frames_and_every_frame_is_counted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(process_link, "PIPE_BYTES", 4096)
    model = two_layer_model()
    w = bridge.watch(model, None, mapping="perone2019", record=tmp_path / "run.gbrun", auto=False, process=True,
                     announce=None)
    pid = w.outputs_pid
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_until(lambda: Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T")
        for _ in range(100):
            model(torch.ones(1, 4)).sum().backward()
            w.step()
            model.zero_grad()
        wait_until(lambda: w.stats.frames_done == 100)  # all handed to the forwarder: written or dropped
    finally:
        os.kill(pid, signal.SIGCONT)
    stats = w.remove()
    # 2 layers: 48-byte records, 4096 // 48 = 85 fit in the stalled child's pipe; the other 15 are dropped
    assert (stats.frames_in, stats.frames_done, stats.frames_dropped) == (100, 85, 15)
    _, frames = read_run(tmp_path / "run.gbrun")
    assert [f.step for f in frames] == list(range(85))


def test_a_child_that_hangs_at_the_end_is_killed_and_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(process_link, "FINISH_TIMEOUT_S", 0.5)
    model = two_layer_model()
    w = bridge.watch(model, None, mapping="perone2019", record=tmp_path / "run.gbrun", auto=False, process=True,
                     announce=None)
    pid = w.outputs_pid
    os.kill(pid, signal.SIGSTOP)  # stopped: it never reads the end of its input
    model(torch.ones(1, 4)).sum().backward()
    w.step()
    stats = w.remove()
    assert gone(pid)
    assert stats.first_errors == {"outputs process": "did not finish within 0.5 s and was killed; files may be "
                                                     "incomplete"}
    assert (stats.frames_in, stats.frames_done, stats.frames_dropped) == (1, 1, 0)


# --- the training process dies ---------------------------------------------------------------------------

SCRIPT = """
import sys, time, torch, bridge
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
with bridge.watch(model, optimizer, mapping="perone2019", record="run.gbrun", wav="run.wav",
                  midi_file="run.mid", process=True) as w:
    step = 0
    while True:
        model(torch.randn(8, 4)).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        step += 1
        if step == {steps}:
            while w.stats.frames_done < step:  # every frame is in the pipe
                time.sleep(0.01)
            print(w.outputs_pid, flush=True)
            {after}
"""


def start_training(folder: Path, steps: int, after: str) -> tuple[subprocess.Popen[str], int]:
    (folder / "train.py").write_text(textwrap.dedent(SCRIPT).format(steps=steps, after=after))
    training = subprocess.Popen([sys.executable, "train.py"], cwd=folder, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
                                start_new_session=True)  # its own process group, as a terminal's foreground job
    line = training.stdout.readline()  # type: ignore[union-attr]
    if not line:
        raise AssertionError(f"training script failed: {training.communicate()[1]}")
    return training, int(line)


def check_complete(folder: Path, steps: int) -> None:
    _, frames = read_run(folder / "run.gbrun")
    assert [f.step for f in frames] == list(range(steps))
    with wave.open(str(folder / "run.wav")) as wav:
        assert wav.getnframes() == steps * PERONE_SAMPLES_PER_STEP
    midi = mido.MidiFile(folder / "run.mid")
    assert len(midi.tracks) == 3  # the tempo track, then one per layer
    assert [sum(m.type == "note_on" and m.velocity > 0 for m in t) for t in midi.tracks[1:]] == [steps, steps]


def test_kill_9_of_training_still_leaves_complete_files(tmp_path: Path) -> None:
    training, child = start_training(tmp_path, 30, "time.sleep(60)")
    training.kill()
    training.wait()
    wait_until(lambda: gone(child))
    check_complete(tmp_path, 30)


def test_ctrl_c_closes_the_child_cleanly_and_leaves_complete_files(tmp_path: Path) -> None:
    training, child = start_training(tmp_path, 20, "time.sleep(60)")
    os.killpg(training.pid, signal.SIGINT)  # Ctrl-C: the whole foreground group, which the child is not in
    _, err = training.communicate(timeout=60)
    assert training.returncode != 0 and "KeyboardInterrupt" in err
    assert "gradbridge: 20 frames in, 0 dropped; run log: ok; wav: ok" in err
    assert gone(child)
    check_complete(tmp_path, 20)
