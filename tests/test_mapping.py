"""The mapping: Frame -> StepEvents, checked against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bridge.events import PERCUSSION_CHANNEL
from bridge.frames import Frame
from bridge.mapping import Mapping, frequency_to_note, note_to_frequency, scale_notes
from bridge.presets import load_preset, parse_preset

NAMES = ["conv1", "conv2", "fc1", "fc2"]


def test_note_frequency_conversions() -> None:
    assert note_to_frequency(69) == pytest.approx(440.0)
    assert note_to_frequency(60) == pytest.approx(261.6255653)
    assert list(frequency_to_note([440.0, 261.63, 0.0, 1e9])) == [69, 60, 0, 127]


def test_scale_notes_c_major_pentatonic_one_octave() -> None:
    # C D E G A, then C again
    assert list(scale_notes("major_pentatonic", "C", 60, 72)) == [60, 62, 64, 67, 69, 72]
    assert list(scale_notes("minor", "A", 57, 69)) == [57, 59, 60, 62, 64, 65, 67, 69]


def test_perone2019_frequencies_and_times() -> None:
    mapping = Mapping.load("perone2019")
    arrangement = mapping.arrange(NAMES)
    assert arrangement.seconds_per_step == pytest.approx(0.06)
    assert [v.channel for v in arrangement.voices] == [0, 1, 2, 3]
    mapping.map_frame(Frame(step=10, time_s=0.0, norms=[0.5, 0.5, 0.5, 0.5]))
    events = mapping.map_frame(Frame(step=12, time_s=1.0, norms=[0.1, 1.0, 2.5, 0.0], loss=2.3, lr=0.01))
    # two steps after the first one: 2 x 60 ms
    assert events.start_s == pytest.approx(0.12)
    assert list(events.notes.start_s) == pytest.approx([0.12, 0.13, 0.14, 0.15])
    assert list(events.notes.duration_s) == pytest.approx([0.01] * 4)
    assert list(events.notes.frequency_hz) == pytest.approx([210.0, 300.0, 450.0, 200.0])
    # 12*log2(f/440) semitones from A4 (69): 210 Hz -12.8 -> 56, 300 Hz -6.6 -> 62, 450 Hz +0.4 -> 69
    assert list(events.notes.midi_note) == [56, 62, 69, 55]
    assert list(events.notes.amplitude) == pytest.approx([0.1] * 4)
    assert (events.loss, events.lr) == (2.3, 0.01)
    assert events.alarms == ()


def test_nan_and_inf_become_alarms_not_notes() -> None:
    mapping = Mapping.load("perone2019")
    mapping.arrange(NAMES)
    events = mapping.map_frame(Frame(step=0, time_s=0.0, norms=[math.nan, 1.0, math.inf, -math.inf]))
    assert list(events.notes.layer) == [1]
    assert [(a.layer, a.kind, a.midi_note) for a in events.alarms] == [
        (0, "nan", 49), (2, "+inf", 52), (3, "-inf", 52)]
    # each alarm sounds in its layer's slot
    assert [a.start_s for a in events.alarms] == pytest.approx([0.0, 0.02, 0.03])


def test_extreme_norms_give_valid_midi_and_finite_frequencies() -> None:
    for name in ("perone2019", "pentatonic", "daw"):
        mapping = Mapping.load(name)
        mapping.arrange(NAMES)
        for step, norms in enumerate([[0.0, -5.0, 1e30, 1e-30], [3.4e38, 0.0, 1.0, 2.0]]):
            notes = mapping.map_frame(Frame(step=step, time_s=0.0, norms=norms)).notes
            assert len(notes) == 4
            assert np.all((notes.midi_note >= 0) & (notes.midi_note <= 127))
            assert np.all((notes.velocity >= 1) & (notes.velocity <= 127))
            assert np.all(np.isfinite(notes.frequency_hz)) and np.all(notes.frequency_hz >= 1.0)
            assert np.all(notes.frequency_hz <= mapping.preset.max_frequency_hz)
            assert np.all((notes.value >= 0) & (notes.value <= 1))


def test_scale_mode_auto_range_per_layer() -> None:
    preset = parse_preset({
        "timing": {"layout": "chord", "step_s": 0.5, "note_s": 0.5},
        "pitch": {"mode": "scale", "curve": "log", "range": "auto", "scale": "chromatic", "root": "C",
                  "low_note": 60, "high_note": 72},
        "midi": {"velocity": "value"},
        "sound": {"attack_s": 0.0, "release_s": 0.0},
    }, "test")
    mapping = Mapping(preset)
    mapping.arrange(["a"])
    # first frame: no range yet, the middle of 13 chromatic notes: 66
    first = mapping.map_frame(Frame(0, 0.0, [1.0]))
    assert list(first.notes.midi_note) == [66]
    second = mapping.map_frame(Frame(1, 0.0, [100.0]))  # new maximum -> top note
    assert list(second.notes.midi_note) == [72]
    third = mapping.map_frame(Frame(2, 0.0, [10.0]))  # log10: halfway between 1 and 100 -> note 66
    assert list(third.notes.midi_note) == [66]
    assert list(third.notes.value) == pytest.approx([0.5])
    assert list(third.notes.velocity) == [int(round(40 + 87 * 0.5))]
    fourth = mapping.map_frame(Frame(3, 0.0, [0.0]))  # zero under a log curve: lowest, range kept
    assert list(fourth.notes.midi_note) == [60]
    fifth = mapping.map_frame(Frame(4, 0.0, [10.0]))
    assert list(fifth.notes.midi_note) == [66]


def test_scale_mode_fixed_range() -> None:
    preset = parse_preset({
        "timing": {"layout": "chord", "step_s": 0.5, "note_s": 0.5},
        "pitch": {"mode": "scale", "curve": "linear", "range": [0, 4], "scale": "major", "root": "C",
                  "low_note": 60, "high_note": 72},
        "sound": {"attack_s": 0.0, "release_s": 0.0},
    }, "test")
    mapping = Mapping(preset)
    mapping.arrange(["a", "b", "c"])
    # C major 60..72 has 8 notes: 60 62 64 65 67 69 71 72; norms 0, 2, 9 -> index 0, round(3.5)=4, 7
    notes = mapping.map_frame(Frame(0, 0.0, [0.0, 2.0, 9.0])).notes
    assert list(notes.midi_note) == [60, 67, 72]
    assert list(notes.frequency_hz) == pytest.approx(list(440 * 2 ** ((np.array([60, 67, 72]) - 69) / 12)))
    assert list(notes.start_s) == [0.0, 0.0, 0.0]


def test_more_than_fifteen_layers_share_channels_and_skip_percussion(caplog: pytest.LogCaptureFixture) -> None:
    mapping = Mapping.load("daw")
    arrangement = mapping.arrange([f"layer{i}" for i in range(17)])
    channels = [v.channel for v in arrangement.voices]
    assert PERCUSSION_CHANNEL not in channels
    assert channels[:10] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 10]
    assert channels[15:] == [0, 1]
    assert "17 layers share the 15 melodic MIDI channels" in caplog.text


def test_stereo_spread_and_timbres() -> None:
    arrangement = Mapping.load("pentatonic").arrange(["a", "b", "c"])
    assert [v.pan for v in arrangement.voices] == pytest.approx([-0.8, 0.0, 0.8])
    assert [v.waveform for v in arrangement.voices] == ["sine", "triangle", "saw"]
    assert arrangement.audio_channels == 2


def test_wrong_layer_count_is_a_clear_error() -> None:
    mapping = Mapping.load("perone2019")
    mapping.arrange(NAMES)
    with pytest.raises(ValueError, match="has 3 norms but the mapping was arranged for 4 layers"):
        mapping.map_frame(Frame(0, 0.0, [1.0, 2.0, 3.0]))


def test_description_in_plain_words() -> None:
    text = Mapping(load_preset("perone2019")).arrange(NAMES).description
    assert "every layer in turn, a 10 ms sine tone per layer, then 20 ms of silence" in text
    assert "200 Hz + 100 Hz per unit of gradient norm" in text
    assert "channel 10" in text
