"""Tests of the live synth: the ring buffer and the scheduling driven by hand (no device), then PyAudio
playing into ALSA's ``file`` plugin in a subprocess, compared sample for sample with the offline renderer."""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bridge.errors import SinkError
from bridge.events import Arrangement, StepEvents
from bridge.frames import Frame
from bridge.mapping import Mapping
from bridge.sinks.audio import AudioSink
from bridge.sinks.live_player import LiveBuffer, LivePlayer
from bridge.sinks.base import Sink
from bridge.sinks.synth import render_events

SR = 44100
LAYERS = ["conv1", "conv2", "fc1", "fc2"]
TIMEOUT_S = 30  # bound on every subprocess


def mapped(preset: str, steps: int, seed: int = 5) -> tuple[Arrangement, list[StepEvents]]:
    """A fresh mapping's arrangement and the events of ``steps`` frames of seeded norms."""
    mapping = Mapping.load(preset)
    arrangement = mapping.arrange(LAYERS)
    norms = np.random.default_rng(seed).uniform(0.1, 3.0, (steps, len(LAYERS)))
    return arrangement, [mapping.map_frame(Frame(step, 0.0, norms[step])) for step in range(steps)]


def play_all(player: LivePlayer, frames: int) -> np.ndarray:
    """What the audio callback hands out for the next ``frames`` frames, read 512 at a time."""
    chunks = []
    for begin in range(0, frames, 512):
        data, flag = player.buffer.callback(None, min(512, frames - begin), {}, 0)
        assert flag == 0  # paContinue in portaudio.h
        chunks.append(np.frombuffer(data, dtype=np.float32).reshape(-1, player.buffer.audio_channels))
    return np.concatenate(chunks)


# -- the ring buffer ------------------------------------------------------------------------------------------

def test_buffer_plays_written_frames_in_place_adds_overlaps_and_wraps_around() -> None:
    buffer = LiveBuffer(2, 8)
    ramp = np.array([[k, -k] for k in range(1, 6)], dtype=np.float32)  # frames 5..9: wraps past frame 8
    buffer.write(5, ramp)
    buffer.write(7, np.array([[10.0, 20.0]], dtype=np.float32))  # adds to frame 7
    assert np.array_equal(buffer.read(4), np.zeros((4, 2)))
    expected = np.array([[0, 0], [1, -1], [2, -2], [13, 17], [4, -4], [5, -5]], dtype=np.float32)
    assert np.array_equal(buffer.read(6), expected)  # frames 4..9
    assert np.array_equal(buffer.read(8), np.zeros((8, 2)))  # what was played is cleared
    assert buffer.read_position == 18 and buffer.written_end == 10


def test_buffer_grows_for_a_long_write_and_keeps_the_frames_not_played_yet() -> None:
    buffer = LiveBuffer(1, 4)
    buffer.write(1, np.array([[7.0]], dtype=np.float32))
    buffer.read(1)
    buffer.write(3, np.arange(1, 11, dtype=np.float32).reshape(-1, 1))  # frames 3..12, far past 4 frames
    assert buffer.capacity_frames >= 12
    expected = np.concatenate([[7.0, 0.0], np.arange(1, 11)]).reshape(-1, 1)
    assert np.array_equal(buffer.read(12), expected)  # frames 1..12


def test_callback_returns_interleaved_float32_bytes() -> None:
    buffer = LiveBuffer(2, 16)
    buffer.write(0, np.array([[0.5, -0.5], [0.25, -0.25]], dtype=np.float32))
    data, flag = buffer.callback(None, 3, {}, 0)
    assert data == np.array([0.5, -0.5, 0.25, -0.25, 0.0, 0.0], dtype="<f4").tobytes()
    assert flag == 0


def test_underrun_counted_when_due_frames_are_played_before_they_are_written() -> None:
    buffer = LiveBuffer(1, 2048)
    buffer.reserve(100, 300)  # a step's notes will sound at frames 100..299
    buffer.read(512)  # the callback reaches them first: 200 frames of silence where notes were due
    assert (buffer.underruns, buffer.underrun_frames) == (1, 200)
    sound = np.ones((200, 1), dtype=np.float32)
    sound[0] = 0.0  # a silent frame arriving late is no loss
    buffer.write(100, sound)
    buffer.release()
    assert buffer.late_frames == 199
    assert not buffer.read(512).any()  # the late sound is dropped, not played out of place
    buffer.reserve(1100, 1200)
    buffer.write(1100, np.ones((50, 1), dtype=np.float32))  # half written when the callback comes
    buffer.read(512)  # frames 1024..1535: frames 1150..1199 are missing
    assert (buffer.underruns, buffer.underrun_frames) == (2, 250)


def test_silence_between_steps_and_steps_written_in_time_are_no_underruns() -> None:
    buffer = LiveBuffer(1, 2048)
    buffer.read(512)  # nothing due
    buffer.reserve(600, 700)
    buffer.write(600, np.ones((100, 1), dtype=np.float32))
    buffer.release()
    played = buffer.read(512)
    assert (buffer.underruns, buffer.underrun_frames, buffer.late_frames) == (0, 0, 0)
    assert played[88:188].min() == 1.0 and not played[:88].any() and not played[188:].any()


# -- scheduling (no device: the callback driven by hand) --------------------------------------------------------

@pytest.mark.parametrize("preset", ["pentatonic", "perone2019"])
def test_steps_arriving_together_play_back_to_back_exactly_as_rendered_offline(preset: str) -> None:
    arrangement, steps = mapped(preset, 10)
    player = LivePlayer(arrangement, latency_s=0.05, max_backlog_s=10.0)
    for step in steps:
        assert player.send(step)
    player.finish()
    expected = render_events(arrangement, steps)
    latency = round(0.05 * SR)  # 2205 frames: the first step starts that far after the play position 0
    played = play_all(player, latency + expected.shape[0] + 1000)
    assert not played[:latency].any()
    assert np.array_equal(played[latency:latency + expected.shape[0]], expected)
    assert not played[latency + expected.shape[0]:].any()
    assert (player.buffer.underruns, player.buffer.late_frames, player.steps_dropped) == (0, 0, 0)


def test_a_step_arriving_after_the_queue_ran_dry_starts_latency_after_the_play_position() -> None:
    arrangement, steps = mapped("pentatonic", 2)
    player = LivePlayer(arrangement, latency_s=0.05, max_backlog_s=10.0)
    player.send(steps[0])
    before = play_all(player, 10000)  # step 0 (5512 frames from 2205 on) is over by frame 10000
    player.send(steps[1])
    player.finish()
    after = play_all(player, 10000)
    offline = render_events(arrangement, steps)
    step1 = round(0.125 * SR)  # 5512: round half to even of 5512.5, as the synth places step 1
    assert np.array_equal(before[2205:2205 + step1], offline[:step1]) and not before[2205 + step1:].any()
    second = offline[step1:]  # step 1 keeps its phases from step 0 (continuous), only its place moves
    assert not after[:2205].any()  # now = 10000, so step 1 starts at 10000 + 2205
    assert np.array_equal(after[2205:2205 + second.shape[0]], second)


def test_a_step_arriving_while_the_previous_one_still_plays_follows_it_seamlessly() -> None:
    arrangement, steps = mapped("pentatonic", 2)
    player = LivePlayer(arrangement, latency_s=0.05, max_backlog_s=10.0)
    player.send(steps[0])  # frames 2205..7716
    before = play_all(player, 6144)  # step 0 ends 1573 frames ahead: more than half the latency (1102.5)
    player.send(steps[1])
    player.finish()
    after = play_all(player, 10000)
    offline = render_events(arrangement, steps)
    assert np.array_equal(np.concatenate([before, after])[2205:2205 + offline.shape[0]], offline)


def test_steps_beyond_the_backlog_are_dropped_and_counted() -> None:
    arrangement, steps = mapped("pentatonic", 5)
    player = LivePlayer(arrangement, latency_s=0.05, max_backlog_s=0.2)  # 8820 frames may wait
    # queued starts: step 0 at 2205 (waits 0), step 1 at 2205 + 5512 (waits 5512), step 2 would wait
    # 5512 + 5513 = 11025 > 8820 frames: dropped, and step 3 the same
    assert [player.send(step) for step in steps[:4]] == [True, True, False, False]
    assert (player.steps_received, player.steps_dropped) == (4, 2)
    play_all(player, 20000)  # the queue plays out
    assert player.send(steps[4])  # fits again: starts at 20000 + 2205
    player.finish()
    played = play_all(player, 10000)
    offline = render_events(arrangement, steps[:2] + steps[4:])  # step 4 after steps 0 and 1 (phases)
    start4 = round(0.5 * SR)  # 22050
    assert np.array_equal(played[2205:2205 + offline.shape[0] - start4], offline[start4:])


def test_underrun_when_a_step_is_rendered_later_than_its_latency() -> None:
    arrangement, steps = mapped("pentatonic", 1)
    player = LivePlayer(arrangement, latency_s=0.01, max_backlog_s=1.0)  # the step is due at frame 441
    render = player.synth.render

    def slow_render(events: StepEvents) -> None:  # the device plays on while the step renders
        player.buffer.read(2048)
        render(events)

    player.synth.render = slow_render  # type: ignore[method-assign]
    player.send(steps[0])
    # the notes sound from frame 441 for 0.12 s (5292 frames); frames 441..2047 were played as silence
    assert (player.buffer.underruns, player.buffer.underrun_frames) == (1, 2048 - 441)
    offline = render_events(arrangement, steps)
    assert player.buffer.late_frames == np.count_nonzero(offline[:2048 - 441].any(axis=1))
    played = play_all(player, 8000)  # frames 2048.. play as rendered
    assert np.array_equal(played[:5292 - 1607], offline[1607:5292])


def test_a_step_out_of_order_is_skipped_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    arrangement, steps = mapped("pentatonic", 3)
    player = LivePlayer(arrangement, latency_s=0.05)
    with caplog.at_level(logging.WARNING, logger="bridge"):
        assert player.send(steps[2]) and not player.send(steps[0]) and not player.send(steps[1])
    assert player.steps_dropped == 2
    assert sum("order of start time" in r.getMessage() for r in caplog.records) == 1


def test_arguments_are_checked_with_messages_that_name_the_field() -> None:
    with pytest.raises(ValueError, match="latency_s must be a number of seconds from 0 to 10; got -1"):
        AudioSink(latency_s=-1)
    with pytest.raises(ValueError, match="frames_per_buffer"):
        AudioSink(frames_per_buffer=100000)
    with pytest.raises(TypeError, match="device must be None, an int index or a str name; got float"):
        AudioSink(device=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_backlog_s"):
        AudioSink(max_backlog_s=math.nan)
    sink = AudioSink()
    assert isinstance(sink, Sink) and sink.name == "audio"
    with pytest.raises(SinkError, match="before open"):
        sink.send(mapped("pentatonic", 1)[1][0])
    sink.close()  # closing what was never opened does nothing
    assert (sink.frames_played, sink.steps_received, sink.underruns) == (0, 0, 0)


def test_open_without_pyaudio_says_which_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyaudio", None)  # "import pyaudio" raises ImportError
    with pytest.raises(SinkError, match=r"pip install 'gradbridge\[audio\]'"):
        AudioSink().open(mapped("pentatonic", 1)[0])


# -- real playback: PyAudio → ALSA in a subprocess --------------------------------------------------------------

CHILD = r'''
import json, os, sys, threading, time
import numpy as np
from bridge.errors import SinkError
from bridge.frames import Frame
from bridge.mapping import Mapping
from bridge.sinks.audio import AudioSink

job = json.loads(sys.argv[1])
report = {}

def tasks():
    return len(os.listdir("/proc/self/task"))

def events(preset):
    mapping = Mapping.load(preset)
    arrangement = mapping.arrange(job["layers"])
    return arrangement, [mapping.map_frame(Frame(s, 0.0, n)) for s, n in enumerate(job["norms"])]

if job["mode"] == "errors":
    arrangement, steps = events("pentatonic")
    for key, device in (("default", None), ("by_name", "no such output"), ("by_index", 97)):
        sink = AudioSink(device=device)
        try:
            sink.open(arrangement)
            sink.close()
            report[key] = "opened"
        except SinkError as error:
            report[key] = str(error)
else:
    arrangement, steps = events(job["preset"])
    sink = AudioSink(latency_s=job["latency_s"], max_backlog_s=10.0)
    report["tasks_before"], report["threads_before"] = tasks(), sorted(t.name for t in threading.enumerate())
    sink.open(arrangement)
    report["tasks_open"] = tasks()
    for step in steps:
        sink.send(step)
    sink.close()
    played = sink.frames_played
    time.sleep(0.1)
    sink.close()
    report.update(tasks_after=tasks(), threads_after=sorted(t.name for t in threading.enumerate()),
                  frames_played=played, frames_played_later=sink.frames_played, steps=sink.steps_received,
                  underruns=sink.underruns, late_frames=sink.late_frames, dropped=sink.steps_dropped)
print(json.dumps(report))
'''


def run_child(tmp_path: Path, asoundrc: str, job: dict, jack_server_name: str) -> tuple[dict, str]:
    """Run ``CHILD`` with a HOME whose ``.asoundrc`` is ``asoundrc``; return its report and its stderr."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    (home / ".asoundrc").write_text(asoundrc)
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_CONFIG_HOME", "ALSA_CONFIG_PATH")}
    env.update(HOME=str(home), JACK_DEFAULT_SERVER=jack_server_name, JACK_NO_START_SERVER="1")
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(job)], env=env, capture_output=True,
                          text=True, timeout=TIMEOUT_S)  # on timeout the child is killed
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


@pytest.fixture
def pyaudio_installed() -> None:
    pytest.importorskip("pyaudio", reason="PyAudio not installed (pip install 'gradbridge[audio]')")


def jack_pcm_plugin_installed() -> None:
    if not glob.glob("/usr/lib/*/alsa-lib/libasound_module_pcm_jack.so"):
        pytest.skip("ALSA's jack plugin not installed (Debian package libasound2-plugins)")


def norms_job(steps: int) -> list[list[float]]:
    return np.random.default_rng(5).uniform(0.1, 3.0, (steps, len(LAYERS))).tolist()


@pytest.mark.parametrize("preset", ["pentatonic", "perone2019"])
def test_playback_through_alsa_is_the_offline_rendering_sample_for_sample(
        tmp_path: Path, pyaudio_installed: None, jack_server: str, preset: str) -> None:
    """ALSA's file plugin records what PortAudio plays into a JACK (dummy driver) sink, which paces the
    stream in real time. PortAudio opens the file plugin as float32 (the jack plugin takes no other
    format, and no plug plugin sits between to convert), so the file holds the very float32 samples the
    callback handed out, and the comparison is exact: no tolerance."""
    jack_pcm_plugin_installed()
    arrangement, steps = mapped(preset, 12)
    channels = arrangement.audio_channels
    ports = " ".join(f"{c} system:playback_{c + 1}" for c in range(channels))
    raw = tmp_path / "out.raw"
    asoundrc = (f'pcm.!default {{ type file; slave.pcm "gbjack"; file "{raw}"; format "raw" }}\n'
                f"pcm.gbjack {{ type jack; playback_ports {{ {ports} }} }}\n")
    job = {"mode": "play", "preset": preset, "layers": LAYERS, "norms": norms_job(12), "latency_s": 0.2}
    report, stderr = run_child(tmp_path, asoundrc, job, jack_server)
    assert "ALSA lib" not in stderr and "jack server" not in stderr  # the libraries' chatter is kept quiet
    data = np.fromfile(raw, dtype="<f4")
    assert data.shape[0] % channels == 0
    played = data.reshape(-1, channels)
    expected = render_events(arrangement, steps)
    # align on the first sound: live adds leading silence (device priming, then latency_s after arrival)
    offset = int(np.flatnonzero(played.any(axis=1))[0] - np.flatnonzero(expected.any(axis=1))[0])
    assert offset >= round(0.2 * SR)  # no step starts earlier than latency_s after the play position 0
    assert np.array_equal(played[offset:offset + expected.shape[0]], expected)
    assert not played[:offset].any() and not played[offset + expected.shape[0]:].any()
    assert report["steps"] == 12 and report["dropped"] == 0 and report["underruns"] == 0
    assert offset + expected.shape[0] <= played.shape[0] and report["frames_played"] <= played.shape[0]


def test_close_twice_stops_the_stream_and_leaves_no_thread_behind(tmp_path: Path, pyaudio_installed: None) -> None:
    raw = tmp_path / "null.raw"
    asoundrc = f'pcm.!default {{ type file; slave.pcm "null"; file "{raw}"; format "raw" }}\n'
    job = {"mode": "play", "preset": "perone2019", "layers": LAYERS, "norms": norms_job(3), "latency_s": 0.05}
    report, _ = run_child(tmp_path, asoundrc, job, f"gbtest-none-{os.getpid()}")
    assert report["tasks_open"] > report["tasks_before"]  # the stream's callback thread ran...
    assert report["tasks_after"] == report["tasks_before"]  # ...and was joined at close
    assert report["threads_after"] == report["threads_before"]
    assert report["steps"] == 3 and report["frames_played"] > 0
    assert report["frames_played_later"] == report["frames_played"]  # stopped: nothing plays after close
    assert raw.stat().st_size >= report["frames_played"] * 4  # mono float32


def test_open_without_an_output_device_says_so_and_suggests_a_file(tmp_path: Path,
                                                                   pyaudio_installed: None) -> None:
    asoundrc = "pcm.!default { type hw; card 7 }\nctl.!default { type hw; card 7 }\n"  # no card 7 here
    job = {"mode": "errors", "layers": LAYERS, "norms": norms_job(1)}
    report, stderr = run_child(tmp_path, asoundrc, job, f"gbtest-none-{os.getpid()}")
    for key in ("default", "by_name", "by_index"):
        assert report[key].startswith("no audio output device (no sound card?)"), report[key]
        assert "wav='run.wav'" in report[key] and "JACK" in report[key]
    assert "ALSA lib" not in stderr


def test_an_unknown_device_is_refused_with_the_outputs_that_exist(tmp_path: Path, pyaudio_installed: None) -> None:
    asoundrc = f'pcm.!default {{ type file; slave.pcm "null"; file "{tmp_path / "null.raw"}"; format "raw" }}\n'
    job = {"mode": "errors", "layers": LAYERS, "norms": norms_job(1)}
    report, _ = run_child(tmp_path, asoundrc, job, f"gbtest-none-{os.getpid()}")
    assert report["default"] == "opened"
    assert report["by_name"].startswith("no audio output named like 'no such output'; the outputs are ")
    assert report["by_index"].startswith("audio device 97 is not an output device; the outputs are ")
    assert "'default'" in report["by_name"] and "'default'" in report["by_index"]
