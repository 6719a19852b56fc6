"""The steps gathered between two ticks of the live clock, and the one step's events they sound as."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bridge.frames import Frame
from bridge.mapping import Mapping
from bridge.presets import load_preset
from bridge.ticks import FOLD_ROWS, TickGatherer

# perone2019: a layer's pitch is 200 Hz + 100 Hz per unit of norm, so each note names its step's norm; two
# layers play one after the other, 10 ms each, and a step lasts 2 × 0.01 + 0.02 = 0.04 s
PERONE = load_preset("perone2019")


def gather(frames: list[Frame], aggregate: str = "max", preset_name: str = "perone2019") -> TickGatherer:
    gatherer = TickGatherer(load_preset(preset_name), ("a", "b"), aggregate)
    for frame in frames:
        gatherer.add(frame)
    return gatherer


FRAMES = [Frame(5, 0.0, [1.0, 0.5], loss=0.5), Frame(6, 0.0, [3.0, math.nan], loss=0.7),
          Frame(7, 0.0, [2.0, 0.25], loss=0.6)]


def test_max_sounds_each_layer_s_loudest_step_and_the_alarm_of_any_step() -> None:
    taken = gather(FRAMES).take(start_s=1.0, duration_s=0.08)
    assert taken is not None
    events, first, last, count = taken
    assert (first, last, count, events.step) == (5, 7, 3, 7)
    # layer a: the max norm 3.0 → 200 + 300 Hz; layer b had a NaN at step 6: its alarm, no note
    assert events.notes.layer.tolist() == [0]
    assert events.notes.frequency_hz.tolist() == [500.0]
    assert [(a.layer, a.kind, a.midi_note) for a in events.alarms] == [(1, "nan", PERONE.nan_note)]
    # a tick twice the preset's step: places and lengths within the step double (layer b starts 2 × 10 ms in)
    assert events.start_s == 1.0 and events.duration_s == 0.08
    assert events.notes.start_s.tolist() == [1.0] and events.notes.duration_s.tolist() == [0.02]
    assert (events.alarms[0].start_s, events.alarms[0].duration_s) == (pytest.approx(1.02), pytest.approx(0.02))
    assert events.norms[0] == 3.0 and math.isnan(events.norms[1])
    assert events.loss == 0.7


def test_mean_sounds_the_step_nearest_the_mean_norm() -> None:
    frames = [Frame(0, 0.0, [1.0, 0.5], loss=0.5), Frame(1, 0.0, [3.0, 0.1], loss=0.7),
              Frame(2, 0.0, [2.2, 0.25], loss=0.6)]
    events, *_ = gather(frames, "mean").take(start_s=0.0, duration_s=0.04)  # type: ignore[misc]
    # layer a: mean 2.0667, nearest 2.2 → 420 Hz; layer b: mean 0.2833, nearest 0.25 → 225 Hz
    assert events.notes.frequency_hz == pytest.approx([420.0, 225.0])
    assert events.norms.tolist() == [2.2, 0.25]
    assert events.loss == pytest.approx(0.6)


def test_every_live_note_is_the_note_the_files_give_that_step() -> None:
    rng = np.random.default_rng(3)
    frames = [Frame(s, 0.0, rng.lognormal(0.0, 1.0, 2).tolist()) for s in range(40)]
    gatherer = TickGatherer(load_preset("daw"), ("a", "b"))
    files = Mapping(load_preset("daw"))
    files.arrange(("a", "b"))
    expected = files.map_frames(frames)  # what the MIDI file holds
    for block in (frames[:7], frames[7:8], frames[8:40]):
        for frame in block:
            gatherer.add(frame)
        events, first, last, _ = gatherer.take(start_s=0.0, duration_s=0.125)  # type: ignore[misc]
        for layer in (0, 1):
            loudest = max(block, key=lambda f: f.norms[layer])
            held = expected[loudest.step].notes
            assert events.notes.midi_note[layer] == held.midi_note[layer]
            assert events.notes.velocity[layer] == held.velocity[layer]
        assert (first, last) == (block[0].step, block[-1].step)
    assert gatherer.take() is None  # nothing new: a silent tick


def test_a_spike_in_any_gathered_step_sounds_with_its_ratio() -> None:
    # pentatonic: a spike is a norm above 5 × the median of the layer's last 10 steps (after 3 of them)
    frames = [Frame(s, 0.0, [1.0, 1.0]) for s in range(5)] + [Frame(5, 0.0, [8.0, 1.0]), Frame(6, 0.0, [1.0, 1.0])]
    gatherer = TickGatherer(load_preset("pentatonic"), ("a", "b"))
    for frame in frames[:5]:
        gatherer.add(frame)
    assert gatherer.take(start_s=0.0, duration_s=0.125)[0].spikes == ()  # type: ignore[index]
    for frame in frames[5:]:
        gatherer.add(frame)
    events, *_ = gatherer.take(start_s=0.125, duration_s=0.125)  # type: ignore[misc]
    assert [(s.layer, s.ratio, s.start_s) for s in events.spikes] == [(0, pytest.approx(8.0), 0.125)]


def test_the_free_clock_sounds_a_single_step_exactly_as_mapped() -> None:
    gatherer = gather(FRAMES[:1])
    reference = Mapping(PERONE)
    reference.arrange(("a", "b"))
    expected = reference.map_frame(FRAMES[0])
    events, first, last, count = gatherer.take()  # type: ignore[misc]
    assert (first, last, count) == (5, 5, 1)
    assert events.start_s == expected.start_s == 0.0
    assert events.notes.frequency_hz.tolist() == expected.notes.frequency_hz.tolist() == [300.0, 250.0]


def test_a_long_wait_folds_the_gathered_steps_and_keeps_the_loudest_and_every_alarm() -> None:
    count = 3 * FOLD_ROWS + 10
    frames = [Frame(s, 0.0, [1.0 + (s % 97) / 100, math.inf if s == 50 else 0.5]) for s in range(count)]
    frames[2000] = Frame(2000, 0.0, [9.0, 0.5])
    gatherer = TickGatherer(PERONE, ("a", "b"))
    for start in range(0, count, 300):  # absorbed a block at a time, as the clock's thread does
        for frame in frames[start:start + 300]:
            gatherer.add(frame)
        gatherer.absorb()
    events, first, last, gathered = gatherer.take(start_s=0.0, duration_s=0.04)  # type: ignore[misc]
    assert (first, last, gathered) == (0, count - 1, count)
    assert events.notes.frequency_hz.tolist() == [200.0 + 900.0]  # step 2000's 9.0; layer b alarmed
    assert [(a.layer, a.kind) for a in events.alarms] == [(1, "+inf")]


def test_a_bad_aggregate_is_refused_naming_the_choices() -> None:
    with pytest.raises(ValueError, match="aggregate must be one of max, mean, got 'median'"):
        TickGatherer(PERONE, ("a",), "median")
