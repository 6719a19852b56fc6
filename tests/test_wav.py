"""Tests of the WAV sink: headers and samples read back by independent readers, streaming, errors."""

from __future__ import annotations

import math
import struct
import wave
from pathlib import Path

import numpy as np
import pytest
from scipy.io import wavfile

from bridge.errors import SinkError
from bridge.events import Arrangement, LayerVoice, Notes, StepEvents
from bridge.sinks.base import Sink
from bridge.sinks.synth import render_events
from bridge.sinks.wav import WavSink

SR = 22050


def make_arrangement(channels: int) -> Arrangement:
    voices = tuple(LayerVoice(index=i, name=f"layer{i}", channel=i, program=0, waveform=w, pan=p)
                   for i, (w, p) in enumerate([("sine", -0.5), ("saw", 0.5), ("square", 0.0)]))
    return Arrangement(voices=voices, mapping_name="test", description="", sample_rate=SR,
                       audio_channels=channels, seconds_per_step=0.05, tempo_bpm=120.0, attack_s=0.002,
                       release_s=0.005, phase="continuous", max_frequency_hz=8000.0)


def make_steps(count: int) -> list[StepEvents]:
    rng = np.random.default_rng(3)
    steps = []
    for s in range(count):
        n = 3
        notes = Notes(layer=np.arange(n), start_s=s * 0.05 + np.array([0.0, 0.01, 0.02]),
                      duration_s=np.full(n, 0.045), frequency_hz=rng.uniform(100, 3000, n),
                      midi_note=np.full(n, 60), velocity=np.full(n, 100), amplitude=np.array([0.9, 0.5, 0.3]),
                      value=np.full(n, 0.5))
        steps.append(StepEvents(step=s, start_s=s * 0.05, duration_s=0.05, wall_time_s=0.0, loss=math.nan,
                                lr=math.nan, norms=np.ones(n), notes=notes, alarms=()))
    return steps


def write(path: Path, channels: int, sample_format: str, steps: list[StepEvents]) -> WavSink:
    sink = WavSink(path, sample_format=sample_format)
    sink.open(make_arrangement(channels))
    for step in steps:
        sink.send(step)
    sink.close()
    return sink


def note_end(start_s: float, duration_s: float) -> int:
    """Where a note ends, in samples: it starts at round(start_s × rate) and lasts round(duration_s × rate)."""
    return round(start_s * SR) + round(duration_s * SR)


# the last of 40 steps starts at 39 × 0.05 s; its last note starts 0.02 s later and lasts 0.045 s
EXPECTED_FRAMES = note_end(39 * 0.05 + 0.02, 0.045)


@pytest.mark.parametrize("channels", [1, 2])
def test_int16_wav_reads_back_with_the_wave_module(tmp_path: Path, channels: int) -> None:
    steps = make_steps(40)
    sink = write(tmp_path / "run.wav", channels, "int16", steps)
    expected = render_events(make_arrangement(channels), steps)
    assert expected.shape == (EXPECTED_FRAMES, channels) and np.max(np.abs(expected)) > 0.5
    with wave.open(str(tmp_path / "run.wav"), "rb") as reader:
        assert reader.getnchannels() == channels
        assert reader.getsampwidth() == 2
        assert reader.getframerate() == SR
        assert reader.getnframes() == EXPECTED_FRAMES == sink.frames_written
        data = np.frombuffer(reader.readframes(reader.getnframes()), dtype="<i2").reshape(-1, channels)
    assert np.max(np.abs(data / 32767.0 - expected)) <= 0.5 / 32767 + 1e-7
    assert np.array_equal(data, np.rint(expected.astype(np.float64) * 32767.0).astype(np.int16))  # round(x·32767)
    assert (tmp_path / "run.wav").stat().st_size == 44 + EXPECTED_FRAMES * channels * 2


@pytest.mark.parametrize("channels", [1, 2])
def test_float32_wav_reads_back_with_scipy(tmp_path: Path, channels: int) -> None:
    steps = make_steps(40)
    write(tmp_path / "run.wav", channels, "float32", steps)
    rate, data = wavfile.read(tmp_path / "run.wav")
    expected = render_events(make_arrangement(channels), steps)
    assert rate == SR and data.dtype == np.float32
    assert data.reshape(-1, channels).shape == (EXPECTED_FRAMES, channels)
    assert np.array_equal(data.reshape(-1, channels), expected)


def test_float32_header_has_format_3_and_a_fact_chunk(tmp_path: Path) -> None:
    write(tmp_path / "run.wav", 2, "float32", make_steps(4))
    raw = (tmp_path / "run.wav").read_bytes()
    frames = note_end(3 * 0.05 + 0.02, 0.045)
    assert raw[:4] == b"RIFF" and raw[8:16] == b"WAVEfmt "
    assert struct.unpack("<I", raw[4:8])[0] == len(raw) - 8
    assert struct.unpack("<IHHIIHHH", raw[16:38]) == (18, 3, 2, SR, SR * 8, 8, 32, 0)
    assert raw[38:42] == b"fact" and struct.unpack("<II", raw[42:50]) == (4, frames)
    assert raw[50:54] == b"data" and struct.unpack("<I", raw[54:58])[0] == frames * 8 == len(raw) - 58


def test_samples_are_streamed_while_the_run_goes(tmp_path: Path) -> None:
    path = tmp_path / "run.wav"
    sink = WavSink(path)
    sink.open(make_arrangement(1))
    header = path.read_bytes()
    assert len(header) == 44 and header[:4] == b"RIFF" and header[40:44] == bytes(4)  # sizes patched later
    steps = make_steps(10)
    for step in steps:
        sink.send(step)
    # every step start so far is final: 9 steps of 0.05 s
    assert sink.frames_written == round(9 * 0.05 * SR)
    sink.close()
    sink.close()  # idempotent
    assert sink.frames_written == note_end(9 * 0.05 + 0.02, 0.045)
    with wave.open(str(path), "rb") as reader:
        assert reader.getnframes() == sink.frames_written


def test_sizes_are_patched_after_every_batch_so_a_cut_run_still_plays(tmp_path: Path) -> None:
    path = tmp_path / "run.wav"
    sink = WavSink(path)
    sink.open(make_arrangement(1))
    steps = make_steps(110)  # 5.5 s of steps
    for step in steps:
        sink.send(step)
    patched = round(109 * 0.05 * SR)  # sending step 109 made every sample before its start final: all written
    with wave.open(str(path), "rb") as reader:  # read while the sink is still open
        assert reader.getnframes() == patched == sink.frames_written
        assert len(reader.readframes(patched)) == 2 * patched
    sink.close()
    with wave.open(str(path), "rb") as reader:
        assert reader.getnframes() == note_end(109 * 0.05 + 0.02, 0.045)


def write_in_chunks(path: Path, channels: int, sample_format: str, steps: list[StepEvents], size: int) -> WavSink:
    sink = WavSink(path, sample_format=sample_format)
    sink.open(make_arrangement(channels))
    for first in range(0, len(steps), size):
        sink.send_many(steps[first:first + size])
    sink.close()
    return sink


@pytest.mark.parametrize("sample_format", ["int16", "float32"])
@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("size", [1, 3, 64])
def test_send_many_writes_the_bytes_send_writes(tmp_path: Path, sample_format: str, channels: int, size: int) -> None:
    steps = make_steps(110)  # 5.5 s: the sizes are patched once on the way
    one_by_one = write(tmp_path / "send.wav", channels, sample_format, steps)
    many = write_in_chunks(tmp_path / "many.wav", channels, sample_format, steps, size)
    assert many.frames_written == one_by_one.frames_written == note_end(109 * 0.05 + 0.02, 0.045)
    assert (tmp_path / "many.wav").read_bytes() == (tmp_path / "send.wav").read_bytes()


def test_send_many_with_steps_out_of_order_writes_the_bytes_send_writes(tmp_path: Path) -> None:
    # steps 0..9 then 3..6 again (a run resumed from a checkpoint): send has written up to step 9's start
    # when the repeats come, so their notes are late; send_many must drop the same samples
    steps = make_steps(10)
    steps = steps + steps[3:7]
    write(tmp_path / "send.wav", 2, "float32", steps)
    write_in_chunks(tmp_path / "many.wav", 2, "float32", steps, 64)
    assert (tmp_path / "many.wav").read_bytes() == (tmp_path / "send.wav").read_bytes()
    _, data = wavfile.read(tmp_path / "many.wav")
    assert np.array_equal(data, render_events(make_arrangement(2), steps[:10]))  # the repeats added nothing


def test_send_many_writes_the_steps_before_a_refused_one(tmp_path: Path) -> None:
    steps = make_steps(6)
    sink = WavSink(tmp_path / "run.wav", sample_format="float32")
    with pytest.raises(SinkError, match="not open"):
        sink.send_many(steps)
    sink.open(make_arrangement(1))
    with pytest.raises(TypeError, match="item 3"):
        sink.send_many(steps[:3] + ["not a step"] + steps[3:])  # type: ignore[operator]
    sink.close()
    _, data = wavfile.read(tmp_path / "run.wav")
    assert np.array_equal(data.reshape(-1, 1), render_events(make_arrangement(1), steps[:3]))


def test_wav_sink_is_a_sink() -> None:
    assert isinstance(WavSink("x.wav"), Sink) and WavSink("x.wav").name == "wav"


def test_unwritable_path_raises_sink_error(tmp_path: Path) -> None:
    sink = WavSink(tmp_path / "no such folder" / "run.wav")
    with pytest.raises(SinkError, match="no such folder"):
        sink.open(make_arrangement(1))
    sink.close()  # nothing was opened: nothing to do
    with pytest.raises(SinkError, match="not open"):
        sink.send(make_steps(1)[0])


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="sample_format"):
        WavSink("run.wav", sample_format="int24")
    with pytest.raises(TypeError, match="path"):
        WavSink(42)  # type: ignore[arg-type]
