"""Torture: random valid presets and hostile norms through every file output, and every kind of preset mistake.

The property tests build presets from random valid TOML tables (``bridge.presets.parse_preset``) and feed
norms that include NaN, ±Inf, zero, negatives, 1e-30, 1e30 and 3e38. What comes out is read back by
parsers we did not write (mido, python-osc, scipy, FluidSynth) and checked against values worked out from
the preset and the norms alone.
"""

from __future__ import annotations

import math
import shutil
import socket
import subprocess
import warnings
from pathlib import Path
from typing import Any

import mido
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pythonosc.osc_bundle import OscBundle
from pythonosc.osc_message import OscMessage
from scipy.io import wavfile

from bridge.channels import plan_channels
from bridge.describe import voice_amplitude
from bridge.errors import PresetError
from bridge.events import PERCUSSION_CHANNEL, WAVEFORMS, StepEvents
from bridge.frames import Frame, RunInfo
from bridge.mapping import Mapping
from bridge.pipeline import build_outputs, render_frames
from bridge.presets import NOTE_NAMES, SCALES, Preset, load_preset, parse_preset
from bridge.sinks.midi_file import MidiFileSink
from bridge.sinks.midi_tracks import text_to_ascii
from bridge.sinks.osc import OscSink
from bridge.sinks.synth import PEAK, render_events
from bridge.sinks.wav import WavSink

SOUNDFONT = Path("/usr/share/sounds/sf2/TimGM6mb.sf2")

#: Norms a run can hand over: NaN, ±Inf, zero (both signs), negatives (a bad CSV), tiny, huge, near float32's max.
HOSTILE_NORMS = [math.nan, math.inf, -math.inf, 0.0, -0.0, -1.0, -1e30, 1e-30, 1e30, 3e38, 1e300]

#: The layer channels in order: 1–9 and 11–16 (0-based 0–8, 10–15), channel 10 (index 9) kept for alarms.
MELODIC = [c for c in range(16) if c != 9]

FAST = settings(max_examples=40, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- strategies ------------------------------------------------------------------------------------------------

@st.composite
def preset_tables(draw: st.DrawFn) -> dict[str, dict[str, Any]]:
    """Random valid preset tables. Notes last at least 10 ms and tempos are at least 20 BPM, so at 960 ticks per
    beat a note spans at least 3 ticks and two steps of a layer never share a tick; steps last at most 0.25 s
    so the audio stays short."""
    layout = draw(st.sampled_from(["sequential", "chord"]))
    tempo = draw(st.floats(20.0, 400.0))
    timing: dict[str, Any] = {"layout": layout, "tempo_bpm": tempo}
    if layout == "chord":
        if draw(st.booleans()):
            step_s = draw(st.floats(0.01, 0.25))
            timing["step_s"] = step_s
        else:
            low, high = max(1, math.ceil(60 / tempo / 0.25)), min(64, math.floor(60 / tempo / 0.01))
            per_beat = draw(st.integers(low, high))
            timing["steps_per_beat"] = per_beat
            step_s = 60 / tempo / per_beat
        note_s = max(0.01, step_s * draw(st.floats(0.05, 1.0)))
        note_s = min(note_s, step_s)
    else:
        note_s = draw(st.floats(0.01, 0.04))
        if draw(st.booleans()):
            timing["gap_s"] = draw(st.floats(0.0, 0.1))
    timing["note_s"] = note_s

    pitch: dict[str, Any] = {"mode": draw(st.sampled_from(["linear_hz", "scale"])),
                             "curve": draw(st.sampled_from(["linear", "log", "sqrt"]))}
    if pitch["curve"] == "log" and draw(st.booleans()):
        pitch["range"] = "reference"
        pitch["reference_steps"] = draw(st.integers(1, 4))
        pitch["semitones_per_decade"] = draw(st.floats(0.5, 48.0))
    elif draw(st.booleans()):
        pitch["range"] = "auto"
    elif draw(st.booleans()):
        pitch["range"] = draw(st.sampled_from([[1e-300, 1e300], [1e-30, 1e30], [1e-6, 3e38], [0.5, 0.5000001]]))
    else:
        low = draw(st.floats(1e-6, 10.0)) if pitch["curve"] == "log" else draw(st.floats(0.0, 10.0))
        pitch["range"] = [low, low + draw(st.floats(1e-3, 1000.0))]
    if pitch["mode"] == "linear_hz":
        pitch["base_hz"] = draw(st.floats(0.0, 20000.0))
        pitch["hz_per_unit"] = draw(st.floats(0.0, 100000.0))
    else:
        pitch["scale"] = draw(st.sampled_from(sorted(SCALES)))
        pitch["root"] = draw(st.sampled_from(sorted(NOTE_NAMES)))
        low_note = draw(st.integers(0, 126))
        pitch["low_note"], pitch["high_note"] = low_note, draw(st.integers(low_note + 1, 127))

    sample_rate = draw(st.integers(8000, 48000))
    attack = draw(st.floats(0.0, 1.0))
    sound = {
        "sample_rate": sample_rate, "channels": draw(st.sampled_from([1, 2])),
        "waveforms": draw(st.lists(st.sampled_from(list(WAVEFORMS)), min_size=1, max_size=5)),
        "amplitude": draw(st.floats(1e-3, 1.0)),
        "attack_s": note_s * attack, "release_s": note_s * draw(st.floats(0.0, 1.0 - attack)),
        "phase": draw(st.sampled_from(["reset", "continuous"])), "pan": draw(st.sampled_from(["center", "spread"])),
        "max_frequency_hz": draw(st.floats(20.0, sample_rate / 2 - 0.5)),
    }
    midi_mode = draw(st.sampled_from(["notes", "cc", "cc14", "pitchbend"]))
    midi = {
        "mode": midi_mode, "cc": draw(st.integers(0, 31 if midi_mode == "cc14" else 119)),
        "velocity": draw(st.one_of(st.just("value"), st.integers(1, 127))),
        "programs": draw(st.lists(st.integers(0, 127), min_size=1, max_size=8)),
        "nan_note": draw(st.integers(0, 127)), "inf_note": draw(st.integers(0, 127)),
        "spike_note": draw(st.integers(0, 127)), "alarm_velocity": draw(st.integers(1, 127)),
        "channels": draw(st.sampled_from(["auto", "cycle"])),
    }
    window = draw(st.integers(1, 6))
    spike = {"detect": draw(st.booleans()), "ratio": draw(st.sampled_from([1.01, 2.0, 5.0, 1e5])),
             "window": window, "warmup": draw(st.integers(1, window))}
    osc = {"latency_s": draw(st.sampled_from([0.0, 0.0, 0.25, 10.0]))}
    return {"preset": {"name": "torture"}, "timing": timing, "pitch": pitch, "sound": sound, "midi": midi,
            "spike": spike, "osc": osc}


@st.composite
def runs(draw: st.DrawFn, max_layers: int = 18, max_steps: int = 8) -> tuple[tuple[str, ...], list[Frame]]:
    """Layer names and frames: steps increasing with gaps (dropped frames), hostile norms, loss and lr."""
    layers = draw(st.one_of(st.integers(1, max_layers), st.integers(80, 120)))  # 80+: OSC bundles split
    names = tuple(draw(st.lists(st.text(max_size=10), min_size=layers, max_size=layers)))
    count = draw(st.integers(1, max_steps))
    first = draw(st.sampled_from([0, 7, 2**40]))
    gaps = draw(st.lists(st.integers(1, 3), min_size=count, max_size=count))
    value = st.one_of(st.sampled_from(HOSTILE_NORMS), st.floats(1e-6, 1e3))
    frames = []
    step = first
    for k in range(count):
        norms = draw(st.lists(value, min_size=layers, max_size=layers))
        loss, lr = draw(st.sampled_from([math.nan, math.inf, 0.5, 1e39])), draw(st.sampled_from([math.nan, 0.1]))
        frames.append(Frame(step, 1.7e9 + k, np.array(norms), loss, lr))
        step += gaps[k]
    return names, frames


# -- what the outputs must hold, worked out from the preset and the norms ------------------------------------

def mapped(preset: Preset, names: tuple[str, ...], frames: list[Frame]) -> list[StepEvents]:
    """The events the sinks were given: the spikes and pitches the file's notes must match."""
    mapping = Mapping(preset)
    mapping.arrange(names)
    return mapping.map_frames(frames)


def expected_alarm_notes(preset: Preset, frames: list[Frame], events: list[StepEvents]) -> int:
    """Alarm note-ons in the MIDI file: one per NaN/Inf layer and per spike; in a chord, layers of one step
    with the same alarm note strike together, which is one note."""
    struck = set()
    for frame, step in zip(frames, events):
        for layer, norm in enumerate(frame.norms):
            if not math.isfinite(norm):
                note = preset.nan_note if math.isnan(norm) else preset.inf_note
                struck.add((frame.step, layer if preset.layout == "sequential" else -1, note))
        for spike in step.spikes:
            struck.add((frame.step, spike.layer if preset.layout == "sequential" else -1, preset.spike_note))
    return len(struck)


def expected_note_ons(names: tuple[str, ...], channels: tuple[int, ...], events: list[StepEvents]) -> list[int]:
    """Note-ons of each layer's track: one per sounding note, except that a pitch struck at one moment by
    several layers of one channel is written once, in the first one's track."""
    ons = [0] * len(names)
    for step in events:
        struck = set()
        for layer, start, note in zip(step.notes.layer.tolist(), step.notes.start_s.tolist(),
                                      step.notes.midi_note.tolist()):
            key = (channels[layer], start, note)
            if key not in struck:
                struck.add(key)
                ons[layer] += 1
    return ons


def check_midi_file(path: Path, preset: Preset, names: tuple[str, ...], frames: list[Frame]) -> None:
    midi = mido.MidiFile(str(path))  # mido refuses data bytes > 127 and bad channels while parsing
    assert midi.type == 1 and midi.ticks_per_beat == 960
    events = mapped(preset, names, frames)
    alarms = expected_alarm_notes(preset, frames, events)
    assert len(midi.tracks) == 1 + len(names) + (1 if alarms else 0)
    channels = plan_channels(names, preset.midi_channels).channels
    if len(names) <= 15:
        assert list(channels) == MELODIC[:len(names)]
    ons_expected = expected_note_ons(names, channels, events)
    programmed: dict[int, int] = {}
    for index, track in enumerate(midi.tracks[1:]):
        is_alarm = index == len(names)
        channel = PERCUSSION_CHANNEL if is_alarm else channels[index]
        assert channel != PERCUSSION_CHANNEL or is_alarm
        sounding: set[int] = set()
        ons = 0
        for message in track:
            if message.is_meta:
                continue
            assert message.channel == channel
            if message.type == "program_change":
                assert not is_alarm and channel not in programmed  # one program per channel, sent once
                programmed[channel] = message.program
                assert message.program == preset.programs[MELODIC.index(channel) % len(preset.programs)]
            elif message.type == "note_on" and message.velocity > 0:
                assert message.note not in sounding  # struck again only after its note-off
                sounding.add(message.note)
                ons += 1
                if is_alarm:
                    assert message.note in (preset.nan_note, preset.inf_note, preset.spike_note)
                    assert message.velocity == preset.alarm_velocity
                else:
                    if preset.mode == "scale":
                        assert preset.low_note <= message.note <= preset.high_note
                    if preset.velocity == "value":
                        assert 40 <= message.velocity <= 127
                    else:
                        assert message.velocity == preset.velocity
            else:
                assert message.type in ("note_off", "note_on")
                assert message.note in sounding
                sounding.remove(message.note)
        assert not sounding  # every note_on paired
        if is_alarm:
            assert ons == alarms
        else:
            assert track.name == text_to_ascii(names[index]).decode("ascii")  # ASCII, whatever the name
            assert ons == ons_expected[index]
    assert set(programmed) == set(channels)
    markers = [m.text for m in midi.tracks[0] if m.type == "marker"]
    # a marker names each step number that does not follow on from the one before (from 0), then its spikes
    numbered = [f"step {frame.step}" for frame, before in zip(frames, [-1] + [f.step for f in frames])
                if frame.step != before + 1]
    assert [text for text in markers if text.startswith("step ")] == numbered
    assert len(markers) - len(numbered) == sum(1 for step in events if step.spikes)
    assert all(text.startswith(("spike: ", "step ")) for text in markers)


def expected_audio_frames(preset: Preset, layers: int, frames: list[Frame]) -> int:
    """Samples from the first step's start to the last step's end (notes end inside their step)."""
    step_s = preset.seconds_per_step(layers)
    last_start = (len(frames) - 1) * step_s  # each logged step is one musical step, whatever its number
    return round(last_start * preset.sample_rate) + round(step_s * preset.sample_rate)


def f32(value: float) -> float:
    with np.errstate(over="ignore"):
        return float(np.float32(value))


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def check_osc(datagrams: list[bytes], preset: Preset, names: tuple[str, ...], frames: list[Frame]) -> None:
    messages = []
    for datagram in datagrams:
        assert OscBundle.dgram_is_bundle(datagram)
        bundle = OscBundle(datagram)
        if preset.osc_latency_s == 0:
            assert bundle.timestamp == 0  # python-osc reads the "immediately" timetag (1) as 0
        else:
            assert bundle.timestamp > 3.9e9 - 2208988800  # NTP seconds: later than 2023
        for content in bundle:
            assert isinstance(content, OscMessage)
            messages.append(content)
    step_s = preset.seconds_per_step(len(names))
    position = 0
    for logged, (frame, step_events) in enumerate(zip(frames, mapped(preset, names, frames))):
        finite = [i for i, n in enumerate(frame.norms) if math.isfinite(n)]
        wrong = [i for i, n in enumerate(frame.norms) if not math.isfinite(n)]
        step_message = messages[position]
        assert step_message.address == "/gradbridge/step"
        step, loss, lr, start_s, layer_count, duration_s, first_step, last_step = step_message.params
        assert (step, layer_count) == (min(frame.step, 2**31 - 1), len(names))  # int32 on the wire, clamped
        assert first_step == last_step == step  # a step sent on its own stands for itself
        assert same(loss, f32(frame.loss)) and same(lr, f32(frame.lr))
        assert start_s == pytest.approx(logged * step_s, rel=1e-6)  # the n-th step logged sounds at n
        assert duration_s == pytest.approx(step_s, rel=1e-6)
        layer_messages = messages[position + 1:position + 1 + len(finite)]
        for index, message in zip(finite, layer_messages):
            assert message.address == "/gradbridge/layer"
            (i, name, norm, value, frequency, note, velocity, amplitude, pan, duration, offset) = message.params
            assert (i, name) == (index, names[index].replace("\x00", "?"))  # OSC strings end at NUL
            assert same(norm, f32(frame.norms[index]))
            assert 0.0 <= value <= 1.0 and 0 <= note <= 127 and 1 <= velocity <= 127
            assert 0.0 < frequency <= f32(preset.max_frequency_hz)
            loudness = velocity / 127 if preset.velocity == "value" else 1.0
            assert amplitude == pytest.approx(voice_amplitude(preset, len(names)) * loudness, rel=1e-6)
            assert -1.0 <= pan <= 1.0
            assert duration == f32(preset.note_s)
            expected_offset = index * preset.note_s if preset.layout == "sequential" else 0.0
            assert offset == pytest.approx(expected_offset, abs=1e-5)
        alarm_messages = messages[position + 1 + len(finite):position + 1 + len(finite) + len(wrong)]
        for index, message in zip(wrong, alarm_messages):
            assert message.address == "/gradbridge/alarm"
            i, name, kind, duration, offset = message.params
            norm = frame.norms[index]
            assert (i, name) == (index, names[index].replace("\x00", "?"))  # OSC strings end at NUL
            assert kind == ("nan" if math.isnan(norm) else "+inf" if norm > 0 else "-inf")
        spikes = step_events.spikes
        first_spike = position + 1 + len(finite) + len(wrong)
        for spike, message in zip(spikes, messages[first_spike:first_spike + len(spikes)]):
            assert message.address == "/gradbridge/spike"
            i, name, ratio, duration, offset = message.params
            assert (i, name) == (spike.layer, names[spike.layer].replace("\x00", "?"))
            assert math.isfinite(frame.norms[i]) and ratio > f32(preset.spike_ratio) * (1 - 1e-6)
            assert duration == f32(preset.note_s)
        norms_message = messages[first_spike + len(spikes)]
        assert norms_message.address == "/gradbridge/norms"
        assert len(norms_message.params) == len(names)
        assert all(same(got, f32(n)) for got, n in zip(norms_message.params, frame.norms))
        position += 2 + len(finite) + len(wrong) + len(spikes)
    assert position == len(messages)


class UdpReader:
    """A UDP socket bound on 127.0.0.1 that collects what arrives."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(2.0)
        self.port = self.sock.getsockname()[1]

    def read(self, count: int) -> list[bytes]:
        return [self.sock.recv(65536) for _ in range(count)]

    def pending(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.recv(65536)
        except BlockingIOError:
            return False
        finally:
            self.sock.settimeout(2.0)
        return True

    def close(self) -> None:
        self.sock.close()


def render_to_files(tmp_path: Path, preset: Preset, names: tuple[str, ...], frames: list[Frame],
                    osc_port: int | None = None) -> tuple[Path, Path, OscSink | None]:
    midi_path, wav_path = tmp_path / "run.mid", tmp_path / "run.wav"
    sinks: list[Any] = [MidiFileSink(midi_path), WavSink(wav_path, sample_format="float32")]
    osc = OscSink("127.0.0.1", osc_port) if osc_port is not None else None
    if osc is not None:
        sinks.append(osc)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the MIDI file sink warns when it had to skip or move a note
        stats = render_frames(frames, build_outputs(Mapping(preset), RunInfo(names), sinks))
    assert (stats.frames_done, stats.errors) == (len(frames), {})
    return midi_path, wav_path, osc


# -- properties -----------------------------------------------------------------------------------------------

@FAST
@given(tables=preset_tables(), run=runs())
def test_any_preset_and_any_norms_make_valid_midi_osc_and_audio(
        tables: dict[str, Any], run: tuple[tuple[str, ...], list[Frame]], tmp_path_factory: Any) -> None:
    names, frames = run
    preset = parse_preset(tables, "torture.toml")
    tmp_path = tmp_path_factory.mktemp("run")
    reader = UdpReader()
    try:
        midi_path, wav_path, osc = render_to_files(tmp_path, preset, names, frames, reader.port)
        assert osc is not None and osc.errors == 0
        datagrams = reader.read(osc.sent)
        assert not reader.pending()
    finally:
        reader.close()
    check_midi_file(midi_path, preset, names, frames)
    check_osc(datagrams, preset, names, frames)

    mapping = Mapping(preset)
    arrangement = mapping.arrange(names)
    audio = render_events(arrangement, [mapping.map_frame(f) for f in frames])
    expected = expected_audio_frames(preset, len(names), frames)
    assert audio.dtype == np.float32 and audio.shape[1] == preset.channels
    assert expected <= audio.shape[0] <= expected + 2  # a sequential step's last note may round one sample past
    assert np.isfinite(audio).all() and np.abs(audio).max(initial=0.0) <= PEAK  # -1 dBFS at most
    rate, written = wavfile.read(wav_path)
    assert rate == preset.sample_rate and written.dtype == np.float32
    written = written.reshape(-1, preset.channels)
    assert np.array_equal(written, audio)  # the file holds exactly what the synth rendered


@pytest.fixture
def fluidsynth() -> str:
    path = shutil.which("fluidsynth")
    if path is None or not SOUNDFONT.is_file():
        pytest.skip("fluidsynth or the TimGM6mb soundfont is not installed "
                    "(apt-get install fluidsynth timgm6mb-soundfont)")
    return path


@settings(max_examples=5, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(tables=preset_tables(), run=runs(max_steps=6))
def test_every_midi_file_plays_in_fluidsynth(tables: dict[str, Any], run: tuple[tuple[str, ...], list[Frame]],
                                             fluidsynth: str, tmp_path_factory: Any) -> None:
    names, frames = run
    preset = parse_preset(tables, "torture.toml")
    tmp_path = tmp_path_factory.mktemp("fluid")
    midi_path, _, _ = render_to_files(tmp_path, preset, names, frames)
    out = tmp_path / "fluid.wav"
    done = subprocess.run([fluidsynth, "-ni", "-q", "-F", str(out), "-r", "44100", str(SOUNDFONT), str(midi_path)],
                          check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "error" not in (done.stdout + done.stderr).lower()
    rate, rendered = wavfile.read(out)
    length_s = mido.MidiFile(str(midi_path)).length  # read by mido, not by us
    assert rate == 44100 and rendered.shape[0] >= length_s * 44100 - 1


# -- every kind of preset mistake: the file, the key and the fix --------------------------------------------

#: (TOML text, where the message points, the fix it gives). Mistakes tests/test_presets.py already covers are
#: left out.
PRESET_MISTAKES = {
    "table written as a value": ("timing = 3\n", "timing: must be a table", "write [timing] and put its keys below it"),
    "array of tables": ("[[sound]]\namplitude = 0.1\n", "sound: must be a table", "write [sound]"),
    "unknown table, nothing close": ("[zzz]\na = 1\n", "[zzz]: unknown table", "remove it or rename it"),
    "unknown key, nothing close": ("[midi]\nqqqq = 1\n", "[midi] qqqq: unknown key", "remove it"),
    "unknown key in timing": ("[timing]\nnote = 0.1\n", "[timing] note: unknown key", 'did you mean "note_s"?'),
    "sub-table": ("[sound.extra]\na = 1\n", "[sound] extra: unknown key", "remove it"),
    "number in quotes": ('[timing]\nnote_s = "0.1"\n', "[timing] note_s = '0.1'", "write a number without quotes"),
    "number as a boolean": ("[sound]\namplitude = true\n", "[sound] amplitude = True", "write a number without quotes"),
    "number is nan": ("[sound]\namplitude = nan\n", "[sound] amplitude = nan", "choose a value inside that range"),
    "number is inf": ("[timing]\ntempo_bpm = inf\n", "[timing] tempo_bpm = inf", "choose a value inside that range"),
    "number below its range": ("[timing]\ntempo_bpm = 10\n", "expected a number in [20, 400] beats per minute",
                               "choose a value inside that range"),
    "negative seconds": ("[osc]\nlatency_s = -1\n", "[osc] latency_s = -1", "choose a value inside that range"),
    "rate in quotes": ('[live]\nmax_fps = "30"\n', "[live] max_fps = '30'", "write a number without quotes"),
    "integer with decimals": ("[sound]\nchannels = 1.0\n", "[sound] channels = 1.0",
                              "write a whole number without quotes or decimals"),
    "integer as a boolean": ("[midi]\nnan_note = false\n", "[midi] nan_note = False", "write a whole number"),
    "integer out of range": ("[sound]\nsample_rate = 4000\n", "expected an integer in [8000, 192000] Hz",
                             "choose a value inside that range"),
    "channels out of range": ("[sound]\nchannels = 3\n", "[sound] channels = 3", "choose a value inside that range"),
    "choice as a number": ("[timing]\nlayout = 1\n", "[timing] layout = 1", 'write it as a quoted string, e.g. "sequential"'),
    "choice misspelt": ('[timing]\nlayout = "chords"\n', "[timing] layout = 'chords'", 'did you mean "chord"?'),
    "choice far off": ('[pitch]\ncurve = "zzz"\n', '[pitch] curve = \'zzz\': expected one of "linear", "log", "sqrt"',
                       "pick one of those"),
    "unknown pitch mode": ('[pitch]\nmode = "midi"\n', "[pitch] mode = 'midi'", "pick one of those"),
    "unknown midi mode": ('[midi]\nmode = "nrpn"\n', "[midi] mode = 'nrpn'", "pick one of those"),
    "unknown aggregate": ('[live]\naggregate = "median"\n', "[live] aggregate = 'median'", 'did you mean "mean"?'),
    "unknown pan": ('[sound]\npan = "left"\n', '[sound] pan = \'left\': expected one of "center", "spread"',
                    "pick one of those"),
    "unknown root": ('[pitch]\nroot = "H"\n', '[pitch] root = \'H\': expected one of "C", "C#"', "pick one of those"),
    "unknown scale, nothing close": ('[pitch]\nscale = "zz"\n', "[pitch] scale = 'zz'", "pick one of those"),
    "unknown waveform": ('[sound]\nwaveforms = ["sin"]\n', "item 0 is not one of", 'did you mean "sine"?'),
    "text as a number": ("[preset]\nname = 5\n", "[preset] name = 5: expected a string", "write it in quotes"),
    "text as a date": ("[preset]\nname = 1979-05-27\n", "[preset] name = datetime.date(1979, 5, 27)",
                       "write it in quotes"),
    "list as a string": ('[sound]\nwaveforms = "sine"\n', "[sound] waveforms = 'sine'",
                         'write it as a list in brackets, e.g. ["sine", "triangle"]'),
    "empty list": ("[midi]\nprograms = []\n", "[midi] programs = []: expected a non-empty list",
                   "write it as a list in brackets, e.g. [0, 48]"),
    "list item of the wrong type": ('[midi]\nprograms = [0, "piano"]\n', "item 1 is not an integer in [0, 127]",
                                    "write a whole number"),
    "list item out of range": ("[midi]\nprograms = [0, 128]\n", "item 1 is not an integer in [0, 127]",
                               "choose a value inside that range"),
    "range of one number": ("[pitch]\nrange = [1]\n", "[pitch] range = [1]",
                            'write range = "reference", range = "auto" or range = [0.001, 10.0]'),
    "range misspelt": ('[pitch]\nrange = "automatic"\n', "[pitch] range = 'automatic'", 'write range = "reference"'),
    "range reversed": ('[pitch]\ncurve = "linear"\nrange = [10, 1]\n', "[pitch] range = [10, 1]",
                       "make low smaller than high"),
    "range below zero": ('[pitch]\ncurve = "linear"\nrange = [-1, 1]\n', "[pitch] range = [-1, 1]", "not negative"),
    "range to infinity": ("[pitch]\nrange = [0.1, inf]\n", "[pitch] range = [0.1, inf]", "both finite"),
    "velocity zero": ("[midi]\nvelocity = 0\n", '[midi] velocity = 0: expected an integer in [1, 127], or "value"',
                      "write e.g. velocity = 100"),
    "velocity as a word": ('[midi]\nvelocity = "loud"\n', "[midi] velocity = 'loud'", "write e.g. velocity = 100"),
    "linear_hz key in scale mode": ('[pitch]\nmode = "scale"\nbase_hz = 100.0\n',
                                    '[pitch] base_hz: applies only when mode = "linear_hz"',
                                    'remove base_hz, or set mode = "linear_hz"'),
    "linear_hz key under the default mode": ("[pitch]\nhz_per_unit = 50.0\n", "[pitch] hz_per_unit: applies only",
                                             'remove hz_per_unit, or set mode = "linear_hz"'),
    "scale key in linear_hz mode": ('[pitch]\nmode = "linear_hz"\nlow_note = 40\n',
                                    '[pitch] low_note: applies only when mode = "scale"',
                                    'remove low_note, or set mode = "scale"'),
    "empty note range": ("[pitch]\nlow_note = 60\nhigh_note = 60\n", "[pitch] low_note/high_note: low_note (60)",
                         "swap them or widen the range"),
    "low note above the default high note": ("[pitch]\nlow_note = 90\n", "must be below high_note (84)",
                                             "swap them or widen the range"),
    "gap in a chord": ('[timing]\nlayout = "chord"\ngap_s = 0.1\n', "[timing] gap_s: applies only when layout",
                       "remove gap_s"),
    "step_s in a sequence": ('[timing]\nlayout = "sequential"\nstep_s = 0.1\n',
                             '[timing] step_s/steps_per_beat: applies only when layout = "chord"', "remove it"),
    "steps_per_beat in a sequence": ('[timing]\nlayout = "sequential"\nsteps_per_beat = 2\n',
                                     "[timing] step_s/steps_per_beat: applies only", "remove it"),
    "step said twice": ("[timing]\nstep_s = 0.2\nsteps_per_beat = 2\n", "[timing] step_s/steps_per_beat: both set",
                        "keep one"),
    "tempo too fast for the note": ("[timing]\ntempo_bpm = 400\n", "[timing] note_s: a note (0.1 s) is longer",
                                    "make note_s <= 0.0375"),  # 60 / 400 / 4 = 0.0375 s a step
    "key given twice": ("[sound]\nchannels = 1\nchannels = 2\n", "not valid TOML", "correct the syntax at that line"),
    "not UTF-8": (b'[preset]\nname = "\xff\xfe"\n', "cannot be read", "that it is UTF-8 text"),
}


@pytest.mark.parametrize("text, where, fix", PRESET_MISTAKES.values(), ids=PRESET_MISTAKES.keys())
def test_every_preset_mistake_names_the_file_the_key_and_the_fix(tmp_path: Path, text: str | bytes, where: str,
                                                                  fix: str) -> None:
    path = tmp_path / "mine.toml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    with pytest.raises(PresetError) as info:
        load_preset(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert where in message
    assert "Fix: " in message and fix in message.split("Fix: ", 1)[1]


def test_a_folder_named_like_a_preset_is_refused_as_no_preset_file(tmp_path: Path) -> None:
    folder = tmp_path / "mine.toml"
    folder.mkdir()
    with pytest.raises(PresetError, match=r"mine\.toml: no such preset file\. Fix: check the path"):
        load_preset(folder)
