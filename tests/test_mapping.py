"""The mapping: Frame -> StepEvents, checked against values worked out by hand; map_frames against map_frame."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.errors import PresetError
from bridge.events import PERCUSSION_CHANNEL, StepEvents
from bridge.frames import Frame
from bridge.mapping import Mapping, frequency_to_note, note_to_frequency, scale_notes
from bridge.presets import Preset, load_preset, parse_preset

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
    # the second step logged is one musical step after the first (60 ms), whatever its number
    assert (events.step, events.start_s) == (12, pytest.approx(0.06))
    assert list(events.notes.start_s) == pytest.approx([0.06, 0.07, 0.08, 0.09])
    kept = Mapping.load("perone2019", keep_gaps=True)
    kept.arrange(NAMES)
    kept.map_frame(Frame(step=10, time_s=0.0, norms=[0.5, 0.5, 0.5, 0.5]))
    events = kept.map_frame(Frame(step=12, time_s=1.0, norms=[0.1, 1.0, 2.5, 0.0], loss=2.3, lr=0.01))
    # with kept gaps: two steps after the first one, 2 x 60 ms
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


def chromatic_one_layer(keep_gaps: bool = False) -> Mapping:
    """One layer "a", log curve, auto range, chromatic notes 60..72 (13 of them), chord steps of 0.5 s."""
    preset = parse_preset({
        "timing": {"layout": "chord", "step_s": 0.5, "note_s": 0.5},
        "pitch": {"mode": "scale", "curve": "log", "range": "auto", "scale": "chromatic", "root": "C",
                  "low_note": 60, "high_note": 72},
        "midi": {"velocity": "value"},
        "sound": {"attack_s": 0.0, "release_s": 0.0},
    }, "test")
    mapping = Mapping(preset, keep_gaps=keep_gaps)
    mapping.arrange(["a"])
    return mapping


def test_scale_mode_auto_range_per_layer() -> None:
    mapping = chromatic_one_layer()
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


def test_more_than_fifteen_layers_cycle_over_the_channels_when_asked(caplog: pytest.LogCaptureFixture) -> None:
    preset = parse_preset({"midi": {"channels": "cycle", "programs": [0, 11, 48]}}, "test")
    arrangement = Mapping(preset).arrange([f"layer{i}" for i in range(17)])
    channels = [v.channel for v in arrangement.voices]
    assert PERCUSSION_CHANNEL not in channels
    assert channels[:10] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 10]
    assert channels[15:] == [0, 1]
    # one program per channel: layers 16 and 17 take the programs of layers 1 and 2, whose channels they share
    assert [v.program for v in arrangement.voices][15:] == [0, 11]
    assert "17 layers share the 15 melodic MIDI channels" in caplog.text


def test_more_than_fifteen_layers_are_grouped_by_module_one_program_per_channel() -> None:
    # a 4-block transformer: 2 + 4 × 6 + 1 = 27 layers; cut to 3 name parts: wte, wpe, h.0 … h.3, ln_f
    blocks = [f"transformer.h.{b}.{part}" for b in range(4)
              for part in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj")]
    names = ["transformer.wte", "transformer.wpe", *blocks, "transformer.ln_f"]
    arrangement = Mapping.load("daw").arrange(names)
    channels = [v.channel for v in arrangement.voices]
    assert channels == [0, 1] + [2] * 6 + [3] * 6 + [4] * 6 + [5] * 6 + [6]
    programs = {}
    for voice in arrangement.voices:
        assert programs.setdefault(voice.channel, voice.program) == voice.program
    assert ("27 layers share 7 MIDI channels, grouped by module (the first 3 parts of each layer's name): "
            "1 transformer.wte, 2 transformer.wpe, 3 transformer.h.0 (6 layers), 4 transformer.h.1 (6 layers), "
            "5 transformer.h.2 (6 layers), 6 transformer.h.3 (6 layers), 7 transformer.ln_f") in arrangement.description
    # flat names that no cut groups below 16: 15 runs of consecutive layers (i × 15 // 17)
    flat = Mapping.load("daw").arrange([f"layer{i}" for i in range(17)])
    assert [v.channel for v in flat.voices] == [0, 0, 1, 2, 3, 4, 5, 6, 7, 7, 8, 10, 11, 12, 13, 14, 15]
    assert "in 15 runs of consecutive layers: 1 layer0 … layer1 (2 layers), 2 layer2," in flat.description


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


# --- map_frames: a block of frames at once, the same as map_frame one by one -------------------------------------

#: Norms a run can hand over: NaN, ±Inf, zero of both signs, negatives (a bad CSV), below the log floor, huge.
HOSTILE = [math.nan, math.inf, -math.inf, 0.0, -0.0, -1.0, 1e-13, 1e-12, 1e-300, 1e30, 3.4e38, 1e308]


def chord_preset(curve: str, pitch_range: object, velocity: object = "value") -> Preset:
    return parse_preset({
        "timing": {"layout": "chord", "step_s": 0.25, "note_s": 0.2},
        "pitch": {"mode": "scale", "curve": curve, "range": pitch_range, "scale": "dorian", "root": "D",
                  "low_note": 30, "high_note": 90},
        "midi": {"velocity": velocity},
    }, "test")


def linear_hz_preset(curve: str) -> Preset:
    return parse_preset({
        "timing": {"layout": "sequential", "note_s": 0.02, "gap_s": 0.01},
        "pitch": {"mode": "linear_hz", "curve": curve, "range": "auto", "base_hz": 50.0, "hz_per_unit": 300.0},
        "sound": {"attack_s": 0.0, "release_s": 0.0},
    }, "test")


#: The bundled presets, then every curve under an automatic, a fixed and a vanishingly narrow fixed range (whose
#: division overflows), both velocity kinds, and the linear pitch mode under each curve.
PRESETS = {name: load_preset(name) for name in ("perone2019", "pentatonic", "daw")}
PRESETS.update({f"{curve}-{kind}": chord_preset(curve, pitch_range, velocity)
                for curve in ("linear", "log", "sqrt")
                for kind, pitch_range, velocity in (("auto", "auto", "value"), ("fixed", [0.01, 10.0], 64),
                                                    ("narrow", [1e-300, 2e-300], "value"))})
PRESETS.update({f"hz-{curve}": linear_hz_preset(curve) for curve in ("linear", "log", "sqrt")})
PRESETS["log-reference"] = parse_preset({
    "timing": {"layout": "chord", "step_s": 0.25, "note_s": 0.2},
    "pitch": {"mode": "scale", "curve": "log", "range": "reference", "reference_steps": 5, "scale": "dorian",
              "root": "D", "low_note": 30, "high_note": 90, "semitones_per_decade": 7.5},
    "midi": {"velocity": "value"}, "spike": {"ratio": 2.0, "window": 4, "warmup": 2},
}, "test")


def assert_same_events(actual: list[StepEvents], expected: list[StepEvents]) -> None:
    """Field by field: equal steps and times, arrays of the same dtype and bytes (NaN and the sign of zero too)."""
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected):
        assert (got.step, got.start_s, got.duration_s, got.alarms) == (want.step, want.start_s, want.duration_s,
                                                                       want.alarms)
        assert got.spikes == want.spikes
        for name in ("wall_time_s", "loss", "lr"):
            assert np.float64(getattr(got, name)).tobytes() == np.float64(getattr(want, name)).tobytes()
        assert got.norms.tobytes() == want.norms.tobytes()
        for name in ("layer", "start_s", "duration_s", "frequency_hz", "midi_note", "velocity", "amplitude", "value"):
            got_array, want_array = getattr(got.notes, name), getattr(want.notes, name)
            assert (got_array.dtype, got_array.shape) == (want_array.dtype, want_array.shape), name
            assert got_array.tobytes() == want_array.tobytes(), name


def hostile_frames(steps: int, layers: int, bad_share: float, seed: int) -> list[Frame]:
    """Log-normal norms with a share of hostile ones; steps that skip and repeat, a loss and time per step."""
    rng = np.random.default_rng(seed)
    norms = np.exp(rng.normal(0.0, 3.0, (steps, layers)))
    bad = rng.random((steps, layers)) < bad_share
    norms[bad] = rng.choice(HOSTILE, int(bad.sum()))
    return [Frame(7 + s + s // 3 - (s % 5 == 0), 1000.0 + s, norms[s], loss=0.5 * s, lr=1e-3) for s in range(steps)]


def arranged(preset: Preset, layers: int) -> Mapping:
    mapping = Mapping(preset)
    mapping.arrange([f"layer{i}" for i in range(layers)])
    return mapping


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("layers", [1, 4, 17])
def test_map_frames_in_chunks_equals_map_frame_one_by_one(name: str, layers: int) -> None:
    preset = PRESETS[name]
    for seed, bad_share in enumerate([0.0, 0.05, 0.5]):
        frames = hostile_frames(60, layers, bad_share, seed)
        one_by_one = arranged(preset, layers)
        expected = [one_by_one.map_frame(frame) for frame in frames]
        mixed = arranged(preset, layers)
        got = [mixed.map_frame(frames[0])]
        for start, stop in [(1, 1), (1, 17), (17, 18), (18, 50)]:
            got += mixed.map_frames(frames[start:stop])
        got += [mixed.map_frame(frames[50])] + mixed.map_frames(frames[51:])
        assert_same_events(got, expected)
        # the state afterwards is the same: the next frames map alike
        after = hostile_frames(5, layers, bad_share, seed + 10)
        assert_same_events(mixed.map_frames(after), [one_by_one.map_frame(frame) for frame in after])


@settings(max_examples=60, deadline=None, database=None, derandomize=True)
@given(rows=st.lists(st.lists(st.sampled_from(HOSTILE) | st.floats(1e-6, 1e6), min_size=3, max_size=3),
                     min_size=1, max_size=30),
       cuts=st.lists(st.integers(0, 30), max_size=4),
       name=st.sampled_from(["perone2019", "pentatonic", "log-fixed", "log-reference"]))
def test_map_frames_split_anywhere_equals_map_frame(rows: list[list[float]], cuts: list[int], name: str) -> None:
    frames = [Frame(step, 0.0, norms) for step, norms in enumerate(rows)]
    one_by_one = arranged(PRESETS[name], 3)
    blocks = arranged(PRESETS[name], 3)
    bounds = [0, *sorted(min(cut, len(frames)) for cut in cuts), len(frames)]
    got = [events for start, stop in itertools.pairwise(bounds) for events in blocks.map_frames(frames[start:stop])]
    assert_same_events(got, [one_by_one.map_frame(frame) for frame in frames])


def test_map_frames_worked_example_running_range_and_times() -> None:
    # one layer, log curve, chromatic 60..72 (13 notes), chord steps of 0.5 s; the steps skip 12 -> 15
    mapping = chromatic_one_layer()
    norms = [1.0, 100.0, 10.0, 0.0, math.nan, 1000.0]
    frames = [Frame(10 + s + 2 * (s > 2), 0.0, [n]) for s, n in enumerate(norms)]
    events = mapping.map_frames(frames)
    # log10: 0 (range 0..0: middle, note 66), 2 (new top: 72), 1 (halfway: 66), zero (lowest, range kept: 60),
    # NaN (an alarm, no note), 3 (new top: 72)
    assert [list(e.notes.midi_note) for e in events] == [[66], [72], [66], [60], [], [72]]
    assert [e.step for e in events] == [10, 11, 12, 15, 16, 17]
    assert [e.start_s for e in events] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]  # one logged step after another
    assert [list(e.notes.value) for e in events] == [[0.5], [1.0], [0.5], [0.0], [], [1.0]]
    assert [list(e.notes.velocity) for e in events] == [[84], [127], [84], [40], [], [127]]  # rint(40 + 87 v)
    assert [(a.layer, a.kind, a.midi_note, a.start_s) for a in events[4].alarms] == [(0, "nan", 49, 2.0)]
    kept = chromatic_one_layer(keep_gaps=True).map_frames(frames)  # steps 13 and 14 sound as silence
    assert [e.start_s for e in kept] == [0.0, 0.5, 1.0, 2.5, 3.0, 3.5]
    assert [(a.kind, a.start_s) for a in kept[4].alarms] == [("nan", 3.0)]
    # the range is now log10 1..1000 = 0..3: 10 is a third of the way, index round(12 / 3) = 4, note 64
    assert list(mapping.map_frame(Frame(16, 0.0, [10.0])).notes.midi_note) == [64]


def test_map_frames_wrong_layer_count_maps_the_frames_before_then_fails() -> None:
    preset = parse_preset({
        "timing": {"layout": "chord", "step_s": 0.5, "note_s": 0.5},
        "pitch": {"mode": "scale", "curve": "log", "range": "auto", "scale": "chromatic", "root": "C",
                  "low_note": 60, "high_note": 72},
        "sound": {"attack_s": 0.0, "release_s": 0.0},
    }, "test")
    mapping = Mapping(preset)
    mapping.arrange(["a"])
    with pytest.raises(ValueError, match="frame at step 7 has 2 norms but the mapping was arranged for 1 layers"):
        mapping.map_frames([Frame(5, 0.0, [1.0]), Frame(6, 0.0, [100.0]), Frame(7, 0.0, [1.0, 2.0])])
    # steps 5 and 6 were mapped: step 8 is the third step sounded, and 100 is the top of the range (a first
    # frame sounds 66)
    after = mapping.map_frame(Frame(8, 0.0, [100.0]))
    assert (after.start_s, list(after.notes.midi_note)) == (1.0, [72])


def test_map_frames_of_nothing_and_before_arrange() -> None:
    mapping = Mapping.load("perone2019")
    assert mapping.map_frames([]) == []
    with pytest.raises(RuntimeError, match=r"call Mapping.arrange\(layer_names\)"):
        mapping.map_frames([Frame(0, 0.0, [1.0])])
    mapping.arrange(NAMES)
    assert mapping.map_frames(()) == []
    # an empty block does not set time zero: the first real frame starts at 0 s
    assert mapping.map_frames([Frame(40, 0.0, [1.0] * 4)])[0].start_s == 0.0


def test_huge_linear_norms_reach_the_top_frequency_without_warnings() -> None:
    mapping = Mapping.load("perone2019")
    mapping.arrange(NAMES)
    frame = Frame(0, 0.0, [1e308, 1.0, 3e303, 0.5])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        single = mapping.map_frame(frame)
        block = mapping.map_frames([Frame(1, 0.0, frame.norms)])[0]
    # 200 + 100 x norm, capped at 20 kHz; 20 kHz is 69 + 12 log2(20000 / 440) = 135.1, above MIDI's 127
    for events in (single, block):
        assert list(events.notes.frequency_hz) == [20000.0, 300.0, 20000.0, 250.0]
        assert list(events.notes.midi_note) == [127, 62, 127, 59]


# --- the reference rule, spikes and loudness ------------------------------------------------------------------


def reference_one_layer(**pitch: object) -> Mapping:
    """One layer, chromatic 60..72 (13 notes, centre 66), range = "reference" over its first 3 norms, 6 semitones
    per decade, no spike detection."""
    preset = parse_preset({
        "timing": {"layout": "chord", "step_s": 0.5, "note_s": 0.5},
        "pitch": {"mode": "scale", "curve": "log", "range": "reference", "reference_steps": 3,
                  "semitones_per_decade": 6.0, "scale": "chromatic", "root": "C", "low_note": 60, "high_note": 72,
                  **pitch},
        "midi": {"velocity": "value"}, "spike": {"detect": False},
        "sound": {"attack_s": 0.0, "release_s": 0.0},
    }, "test")
    mapping = Mapping(preset)
    mapping.arrange(["a"])
    return mapping


def test_reference_rule_worked_example() -> None:
    mapping = reference_one_layer()
    norms = [10.0, 1.0, 1.0, 100.0, 1.0, 0.1, 0.0, math.nan]
    events = mapping.map_frames([Frame(s, 0.0, [n]) for s, n in enumerate(norms)])
    # reference (log10): the first norm, 1 (the centre); then median(1, 0) = 0.5; then median(1, 0, 0) = 0, held:
    # the high first step does not capture it. Semitones 66 + 6 (log - reference): 66, 63, 66, 78 -> 72 (the top),
    # 66, 60; zero sounds lowest; NaN is an alarm
    assert [list(e.notes.midi_note) for e in events] == [[66], [63], [66], [72], [66], [60], [60], []]
    assert [list(e.notes.value) for e in events] == [[0.5], [0.25], [0.5], [1.0], [0.5], [0.0], [0.0], []]
    assert [list(e.notes.velocity) for e in events] == [[84], [62], [84], [127], [84], [40], [40], []]  # 40 + 87 v


def test_a_run_exploding_from_its_second_step_is_heard_climbing() -> None:
    # the median of the first three norms would be 10 (log 1), the exploded level; the first norm is lower
    events = reference_one_layer().map_frames([Frame(s, 0.0, [n]) for s, n in enumerate([1.0, 10.0, 10.0, 10.0])])
    assert [int(e.notes.midi_note[0]) for e in events] == [66, 72, 72, 72]  # 66 + 6 × log10(10 / 1)


def test_one_early_spike_does_not_capture_the_range() -> None:
    # after a jump to 1e6 at step 1, the layer steadies at 1, then explodes to 10 and 100 and stays there
    norms = [1.0, 1e6, 1.0, 1.0, 1.0, 10.0, 100.0, 100.0, 100.0]
    frames = [Frame(s, 0.0, [n]) for s, n in enumerate(norms)]
    reference = reference_one_layer().map_frames(frames)
    auto = chromatic_one_layer().map_frames(frames)
    # reference: median(0, 6, 0) = 0, so 10 and 100 sound 6 and 12 semitones above the centre (72: the top)
    assert [int(e.notes.midi_note[0]) for e in reference] == [66, 72, 66, 66, 66, 72, 72, 72, 72]
    # the running range keeps 1e6 as its top: 10 and 100 sound a sixth and a third of the way up
    assert [int(e.notes.midi_note[0]) for e in auto] == [66, 72, 60, 60, 60, 62, 64, 64, 64]


def test_centre_note_and_the_preset_errors_of_the_reference_rule() -> None:
    mapping = reference_one_layer(centre_note=62)
    assert [list(e.notes.midi_note) for e in mapping.map_frames([Frame(0, 0.0, [5.0]), Frame(1, 0.0, [50.0])])] == [
        [62], [68]]  # the first norm, 5, is below median(5, 50): 50 sounds 62 + 6 × log10(50 / 5) = 68
    for pitch, match in [
        ({"range": "reference", "curve": "sqrt"}, r'range = "reference" .* needs curve = "log", got "sqrt"'),
        ({"range": "auto", "reference_steps": 4}, r'\[pitch\] reference_steps: applies only when range = "reference"'),
        ({"range": "reference", "centre_note": 90}, r"centre_note: 90 is outside low_note–high_note \(48–84\)"),
        ({"range": "top"}, r'expected "reference", "auto" or \[low, high\]'),
    ]:
        with pytest.raises(PresetError, match=match):
            parse_preset({"pitch": pitch}, "bad.toml")
    with pytest.raises(PresetError, match=r"\[spike\] warmup: 5 norms can never be in a window of 4 steps"):
        parse_preset({"spike": {"window": 4, "warmup": 5}}, "bad.toml")
    with pytest.raises(PresetError, match=r"\[spike\] detect = 'yes': expected true or false"):
        parse_preset({"spike": {"detect": "yes"}}, "bad.toml")


def test_spikes_worked_example() -> None:
    preset = parse_preset({
        "timing": {"layout": "chord", "step_s": 0.5, "note_s": 0.25},
        "pitch": {"mode": "scale", "range": "auto", "scale": "chromatic", "low_note": 60, "high_note": 72},
        "spike": {"ratio": 3.0, "window": 4, "warmup": 2}, "midi": {"spike_note": 39, "alarm_velocity": 110},
    }, "test")
    norms = [1.0, 1.0, 1.0, 5.0, 1.0, 2.9, 100.0, 0.0, math.nan, 1.0]
    frames = [Frame(s, 0.0, [n, 1.0]) for s, n in enumerate(norms)]  # a second, steady layer never spikes
    one_by_one = Mapping(preset)
    one_by_one.arrange(["a", "b"])
    events = [one_by_one.map_frame(frame) for frame in frames]
    # step 3: 5 > 3 × median(1, 1, 1); step 5: 2.9 is not above 3 × 1; step 6: 100 against the window 1, 5, 1, 2.9,
    # whose median (of logs) is sqrt(1 × 2.9); step 9: its window holds 2.9 and 100 (0 and NaN do not count)
    assert [[(s.layer, s.start_s, s.duration_s, s.midi_note, s.velocity) for s in e.spikes] for e in events] == [
        [], [], [], [(0, 1.5, 0.25, 39, 110)], [], [], [(0, 3.0, 0.25, 39, 110)], [], [], []]
    assert events[3].spikes[0].ratio == pytest.approx(5.0, rel=1e-12)
    assert events[6].spikes[0].ratio == pytest.approx(100.0 / math.sqrt(2.9), rel=1e-12)
    assert [a.kind for a in events[8].alarms] == ["nan"]
    blocks = Mapping(preset)
    blocks.arrange(["a", "b"])
    assert_same_events(blocks.map_frames(frames[:5]) + blocks.map_frames(frames[5:]), events)
    off = Mapping(load_preset("perone2019"))
    off.arrange(["a", "b"])
    assert all(e.spikes == () for e in off.map_frames(frames))  # perone2019 detects none: the post had none


def test_loudness_follows_the_value_and_many_voices_are_scaled_down() -> None:
    mapping = Mapping.load("pentatonic")
    mapping.arrange(NAMES)
    notes = mapping.map_frames([Frame(0, 0.0, [1.0] * 4), Frame(1, 0.0, [1.0, 10.0, 0.1, 1.0])])[1].notes
    # reference median(1, 1 or 10 or 0.1): the layers at 10 and 0.1 sit 6 semitones above and below the centre
    assert list(notes.amplitude) == pytest.approx(list(0.12 * notes.velocity / 127))
    assert notes.velocity[1] > notes.velocity[0] > notes.velocity[2]
    wide = Mapping.load("pentatonic")
    arrangement = wide.arrange([f"layer{i}" for i in range(64)])
    full = wide.map_frame(Frame(0, 0.0, [1.0] * 64)).notes
    # sqrt(8 / 64) of 0.12 per voice, times velocity / 127 (every layer at its reference: value 0.5, velocity 84)
    assert list(full.amplitude) == pytest.approx([0.12 * math.sqrt(8 / 64) * 84 / 127] * 64)
    assert "Amplitude 0.0424 per voice (the preset's 0.12 scaled by √(8/64) for 64 voices)" in arrangement.description
    perone = Mapping.load("perone2019")
    perone.arrange(NAMES)
    assert list(perone.map_frame(Frame(0, 0.0, [1.0, 2.0, 3.0, 4.0])).notes.amplitude) == [0.1] * 4
