"""Sound that tells the truth, measured from rendered files only (the WAV by FFT, the MIDI file with mido):
healthy, exploding and vanishing runs order by pitch in every musical preset; the exploding one sounds
spike alarms and the healthy one none; a small transformer with tied embeddings trained healthy and with a
learning rate that explodes orders the same way; 64 layers never clip; more than 15 layers share channels
with one program each and no doubled note; and the comparison script runs."""

from __future__ import annotations

import subprocess
import sys
import wave
from collections import defaultdict
from pathlib import Path

import mido
import numpy as np
import pytest

from bridge.frames import Frame, RunInfo
from bridge.mapping import Mapping
from bridge.pipeline import build_outputs, render_frames
from bridge.presets import load_preset
from bridge.sinks.midi_file import MidiFileSink
from bridge.sinks.wav import WavSink

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
sys.path.insert(0, str(EXAMPLES))
from measure import midi_notes, peak, read_wav, wav_pitch  # noqa: E402

MUSICAL = ("pentatonic", "daw")
NAMES = ("conv1", "conv2", "fc1", "fc2")
STEPS = 64
PEAK = 10 ** (-1 / 20)  #: -1 dBFS


def synthetic(kind: str, layers: int = 4, steps: int = STEPS, seed: int = 0) -> list[Frame]:
    """Norms of a run: each layer at its own level with 15 % noise; from step 20 on, "exploding" grows 1.5x a
    step (past 5x the median of the last 10 steps: spikes) and "vanishing" shrinks 0.8x a step."""
    rng = np.random.default_rng(seed)
    base = np.geomspace(0.05, 3.0, layers)
    growth = {"healthy": 1.0, "exploding": 1.5, "vanishing": 0.8}[kind]
    trend = growth ** np.maximum(np.arange(steps) - 20, 0)
    norms = base * trend[:, None] * np.exp(rng.normal(0.0, 0.15, (steps, layers)))
    return [Frame(s, 1.7e9 + s, norms[s], loss=1.0, lr=0.1) for s in range(steps)]


def render(tmp_path: Path, name: str, preset: str, frames: list[Frame],
           names: tuple[str, ...] = NAMES) -> tuple[Path, Path]:
    wav, mid = tmp_path / f"{name}.{preset}.wav", tmp_path / f"{name}.{preset}.mid"
    render_frames(frames, build_outputs(Mapping.load(preset), RunInfo(names), [WavSink(wav), MidiFileSink(mid)]))
    return wav, mid


def spike_energy(wav: Path) -> float:
    """Share of the WAV's spectral energy within 2 % of the spike beep's tones (2217 and 2960 Hz)."""
    samples, rate = read_wav(wav)
    spectrum = np.abs(np.fft.rfft(samples)) ** 2
    frequency = np.fft.rfftfreq(samples.shape[0], 1.0 / rate)
    near = np.zeros(frequency.shape, dtype=bool)
    for tone in (2217.46, 2959.96):
        near |= np.abs(frequency - tone) < 0.02 * tone
    return float(spectrum[near].sum() / spectrum.sum())


@pytest.mark.parametrize("preset", MUSICAL)
def test_exploding_sounds_highest_vanishing_lowest_and_only_the_exploding_run_spikes(tmp_path: Path,
                                                                                   preset: str) -> None:
    heard = {}
    for kind in ("healthy", "exploding", "vanishing"):
        wav, mid = render(tmp_path, kind, preset, synthetic(kind))
        heard[kind] = (wav_pitch(wav), midi_notes(mid), spike_energy(wav))
    pitch = {kind: wav for kind, (wav, _, _) in heard.items()}
    note = {kind: notes.median_pitch() for kind, (_, notes, _) in heard.items()}
    assert pitch["exploding"] > pitch["healthy"] + 6 > pitch["vanishing"] + 12  # semitones, by FFT
    assert note["exploding"] > note["healthy"] > note["vanishing"]
    spike_note = load_preset(preset).spike_note
    healthy_notes, exploding_notes = heard["healthy"][1], heard["exploding"][1]
    assert healthy_notes.percussion == {} and healthy_notes.markers == []
    assert exploding_notes.percussion.get(spike_note, 0) >= 4  # percussion notes on channel 10
    assert all(text.startswith("spike: ") for text in exploding_notes.markers) and exploding_notes.markers
    assert heard["vanishing"][1].percussion == {}
    # the rising beep is there to hear: near its two tones the exploding run holds many times the energy share
    # of the healthy run, whose only energy there is its voices' overtones
    assert heard["exploding"][2] > 10 * heard["healthy"][2]


def test_a_tiny_transformer_with_tied_embeddings_exploding_sounds_higher_and_alarms(tmp_path: Path) -> None:
    from tiny_gpt import RUNS, STEPS as GPT_STEPS, train_tiny_gpt

    heard = {}
    for name, optimizer, lr in RUNS:  # healthy (SGD lr 0.1), then a learning rate that explodes (0.7)
        wav, mid = tmp_path / f"{name}.wav", tmp_path / f"{name}.mid"
        run = train_tiny_gpt(optimizer, lr, GPT_STEPS, wav=wav, midi_file=mid, announce=None)  # the default preset
        heard[name] = (wav_pitch(wav), midi_notes(mid), run)
    (healthy_pitch, healthy, healthy_run), (sick_pitch, sick, sick_run) = heard.values()
    assert sick_pitch > healthy_pitch + 2 and sick.median_pitch() > healthy.median_pitch()
    preset = load_preset("pentatonic")
    assert healthy.percussion == {}
    assert sick.percussion.get(preset.spike_note, 0) > 0 and sick.percussion.get(preset.nan_note, 0) > 0
    assert "no NaN/Inf alarm and no spike" in healthy_run.summary
    assert "NaN/Inf alarms in 27 of 27 layers" in sick_run.summary
    # the output layer's weight is the embedding's: one channel, named after its first owner
    layers = healthy.tracks[1:]
    assert len(healthy.tracks) == 1 + 27 and "lm_head" not in healthy.tracks
    assert healthy.tracks.count("transformer.wte") == 1 and layers[0] == "transformer.wte"
    # 27 layers on 7 channels, one per block and one each for wte, wpe and ln_f
    midi = mido.MidiFile(str(tmp_path / f"{RUNS[0][0]}.mid"))
    channels = [next(m.channel for m in track if not m.is_meta) for track in midi.tracks[1:]]
    assert channels == [0, 1] + [2] * 6 + [3] * 6 + [4] * 6 + [5] * 6 + [6]


def int16_peak(path: Path) -> int:
    with wave.open(str(path)) as f:
        return int(np.abs(np.frombuffer(f.readframes(f.getnframes()), dtype="<i2").astype(np.int64)).max())


@pytest.mark.parametrize("preset", MUSICAL)
def test_64_layers_render_with_no_clipped_sample(tmp_path: Path, preset: str) -> None:
    rng = np.random.default_rng(7)
    names = tuple(f"layer{i}" for i in range(64))
    # random levels, and half the layers climbing a thousandfold: every voice ends loud, at the top
    norms = np.exp(rng.normal(0.0, 1.0, (48, 64))) * np.where(np.arange(64) % 2, np.geomspace(1, 1e3, 48)[:, None], 1)
    wav, _ = render(tmp_path, "wide", preset, [Frame(s, 0.0, norms[s]) for s in range(48)], names)
    loudest = int16_peak(wav)
    assert loudest <= round(PEAK * 32767)  # -1 dBFS at most: nothing near full scale (32767)
    assert loudest > 0.3 * 32767  # and still a sound, not a whisper
    assert peak(wav) == pytest.approx(loudest / 32767)


def test_more_than_15_layers_one_program_per_channel_and_no_doubled_note(tmp_path: Path) -> None:
    # 20 layers of two modules with one norm each step: the layers of a module share a channel and a pitch
    names = tuple(f"{module}.{i}" for module in ("encoder", "decoder") for i in range(10))
    frames = [Frame(s, 0.0, np.full(20, 1.0 + (s % 3))) for s in range(12)]
    _, mid = render(tmp_path, "wide", "daw", frames, names)
    midi = mido.MidiFile(str(mid))
    programs: dict[int, list[int]] = defaultdict(list)
    strikes: dict[tuple[int, int, int], int] = defaultdict(int)
    for track in midi.tracks[1:]:
        tick = 0
        for message in track:
            tick += message.time
            if message.type == "program_change":
                programs[message.channel].append(message.program)
            elif message.type == "note_on" and message.velocity > 0:
                strikes[(tick, message.channel, message.note)] += 1
    assert sorted(programs) == [0, 1] and all(len(p) == 1 for p in programs.values())  # one program per channel
    assert set(strikes.values()) == {1}  # no note-on doubles another on its channel, tick and pitch
    assert len(strikes) == 2 * 12  # each step: one note per channel
    # every layer keeps its track, named after it; the first of each channel holds the notes
    assert [t.name for t in midi.tracks[1:]] == list(names)


def test_the_comparison_script_runs_and_the_orders_hold(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(EXAMPLES / "post_runs.py"), "--quick", "--out-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    table = [line.split() for line in lines if line.startswith(("sgd-", "gpt-"))]
    assert len(table) == 4 * 3  # two post runs and two GPT runs, in three presets
    assert sum(line.startswith("ok: ") for line in lines) == 3 * 2 * 2  # per preset: 2 exploding runs, 2 orders
    assert not any(line.startswith("FAILED") for line in lines)
