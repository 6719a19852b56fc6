"""Tests of ``Synth.render_many``: many steps per call sound exactly as one step per call, and as worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bridge.events import Alarm, StepEvents
from bridge.sinks.synth import Synth
from bridge.sinks.voices import Workspace, chord_sums, one_blas_thread
from tests.test_synth import SR, make_arrangement, make_step, reference_wave

WAVES = ["sine", "triangle", "square", "saw"]


def per_step(arrangement, steps: list[StepEvents]) -> tuple[np.ndarray, Synth]:
    synth = Synth(arrangement)
    chunks = []
    for step in steps:
        synth.render(step)
        chunks.append(synth.pop_ready())
    chunks.append(synth.finish())
    return np.concatenate(chunks), synth


def chunked(arrangement, steps: list[StepEvents], size: int) -> tuple[np.ndarray, Synth]:
    synth = Synth(arrangement)
    chunks = []
    for first in range(0, len(steps), size):
        synth.render_many(steps[first:first + size])
        chunks.append(synth.pop_ready())
    chunks.append(synth.finish())
    return np.concatenate(chunks), synth


def run_of_steps(count: int, layers: int, layout: str, step_s: float, note_s: float, seed: int = 11,
                 nan_every: int = 0) -> list[StepEvents]:
    """Steps of ``layers`` notes each: one after another ("melody") or all at the step's start ("chord");
    every ``nan_every``-th step has a NaN note and an alarm as long as the step."""
    rng = np.random.default_rng(seed)
    steps = []
    for s in range(count):
        start = s * step_s
        offsets = np.arange(layers) * note_s if layout == "melody" else np.zeros(layers)
        freqs = rng.uniform(80.0, 3000.0, layers)
        alarms: tuple[Alarm, ...] = ()
        if nan_every and s % nan_every == 1:
            freqs[0] = math.nan
            alarms = (Alarm(layer=0, kind="nan", start_s=start, duration_s=step_s, midi_note=39, velocity=100),)
        steps.append(make_step(s, start, step_s, layer=range(layers), note_start_s=start + offsets,
                               note_duration_s=note_s, frequency_hz=freqs, amplitude=rng.uniform(0.05, 0.2, layers),
                               alarms=alarms))
    return steps


@pytest.mark.parametrize("size", [1, 3, 64])
@pytest.mark.parametrize("layout", ["melody", "chord"])
@pytest.mark.parametrize("phase", ["reset", "continuous"])
@pytest.mark.parametrize("channels", [1, 2])
def test_render_many_equals_render_step_by_step_bit_for_bit(size: int, layout: str, phase: str, channels: int) -> None:
    arrangement = make_arrangement(4, channels=channels, waveform=WAVES, phase=phase, attack_s=0.001, release_s=0.004,
                                   pans=[-1.0, -0.3, 0.4, 1.0])
    # notes of 0.05 s in steps of 0.04 s (chord) or 4 x 0.012 s in 0.04 s (melody: the last note's tail
    # reaches 0.008 s into the next step): tails cross step and chunk boundaries; every 5th step a NaN
    # layer and an alarm
    note_s = 0.05 if layout == "chord" else 0.012
    steps = run_of_steps(70, 4, layout, 0.04, note_s, nan_every=5)
    expected, one_by_one = per_step(arrangement, steps)
    got, many = chunked(arrangement, steps, size)
    # the last note starts at 69 x 0.04 s (chord) or 0.036 s later (melody), rounded to a sample, and
    # lasts rint(0.05 x SR) = 2205 or rint(0.012 x SR) = 529 samples
    last_start = 69 * 0.04 + (0.0 if layout == "chord" else 3 * 0.012)
    assert got.shape == expected.shape == (round(last_start * SR) + (2205 if layout == "chord" else 529), channels)
    assert np.array_equal(got, expected)
    assert many.late_samples == one_by_one.late_samples == 0
    assert np.all(np.isfinite(got)) and np.max(np.abs(got)) <= 1.0


@pytest.mark.parametrize("phase", ["reset", "continuous"])
def test_a_sine_melody_in_chunks_matches_the_formula(phase: str) -> None:
    """One sine layer, a note per step, back to back: continuous phase is one unbroken sine; reset phase
    restarts every note at 0."""
    f, amplitude, note_n = 437.77, 0.5, 441
    steps = [make_step(s, s * 0.01, 0.01, layer=[0], note_start_s=s * 0.01, note_duration_s=0.01, frequency_hz=f,
                       amplitude=amplitude) for s in range(200)]
    got, _ = chunked(make_arrangement(phase=phase), steps, 64)
    k = np.arange(200 * note_n)
    phase_k = k if phase == "continuous" else k % note_n
    assert got.shape == (200 * note_n, 1)
    assert np.max(np.abs(got[:, 0] - amplitude * np.sin(2 * np.pi * f * phase_k / SR))) < 1e-6


def test_chords_in_chunks_match_the_formulas_and_waves_land_on_exact_values() -> None:
    """Two layers panned hard left and right play a chord each step: each channel is one wave alone. At a
    quarter of the sample rate every sample falls on a corner of the wave: triangle 0, 1, 0, -1; square
    1, 1, -1, -1; saw 0, 0.5, -1, -0.5."""
    quarter = SR / 4
    for left, right, left_expected, right_expected in (("triangle", "square", [0, 1, 0, -1], [1, 1, -1, -1]),
                                                       ("saw", "sine", [0, 0.5, -1, -0.5], [0, 1, 0, -1])):
        arrangement = make_arrangement(2, channels=2, waveform=[left, right], pans=[-1.0, 1.0])
        steps = [make_step(s, s * 0.01, 0.01, layer=[0, 1], note_start_s=s * 0.01, note_duration_s=0.01,
                           frequency_hz=quarter, amplitude=0.5) for s in range(5)]  # 0.5: below the limiter
        got, _ = chunked(arrangement, steps, 3)
        assert got.shape == (5 * 441, 2)
        note = np.arange(441) % 4  # reset phase: every step's note starts a cycle, 441 samples each
        assert np.max(np.abs(got[:, 0] - 0.5 * np.tile(np.array(left_expected, dtype=float)[note], 5))) < 1e-6
        assert np.max(np.abs(got[:, 1] - 0.5 * np.tile(np.array(right_expected, dtype=float)[note], 5))) < 1e-6


def test_continuous_phase_carries_exactly_over_many_chunks() -> None:
    """A triangle layer, 1000 notes of 10 ms: after 10 s the wave is still the formula's, sample for sample."""
    f, amplitude = 261.63, 0.3
    steps = [make_step(s, s * 0.01, 0.01, layer=[0], note_start_s=s * 0.01, note_duration_s=0.01, frequency_hz=f,
                       amplitude=amplitude) for s in range(1000)]
    got, _ = chunked(make_arrangement(waveform="triangle", phase="continuous"), steps, 64)
    cycles = np.arange(1000 * 441) * f / SR
    assert np.max(np.abs(got[:, 0] - amplitude * reference_wave("triangle", cycles))) < 1e-5


def test_steps_far_apart_out_of_order_and_unplaceable_behave_as_one_by_one() -> None:
    """A minute of silence (held outside the buffer), a step starting before samples already set aside
    (its notes are late), and a step with an infinite start (placed at the last start)."""
    arrangement = make_arrangement(2, channels=2, waveform=["saw", "sine"], phase="continuous")
    plan = [(0, 0.0), (1, 0.05), (2, 60.0), (3, 60.05), (4, 30.0), (5, math.inf), (6, 60.1)]
    steps = [make_step(s, start, 0.05, layer=[0, 1], note_start_s=[start, start + 0.01], note_duration_s=0.04,
                       frequency_hz=[220.0, 330.0], amplitude=0.3) for s, start in plan]
    expected, one_by_one = per_step(arrangement, steps)
    for size in (1, 3, 7):
        got, many = chunked(arrangement, steps, size)
        assert np.array_equal(got, expected)
        assert many.late_samples == one_by_one.late_samples
        assert many.buffer_capacity <= 8192 and one_by_one.buffer_capacity <= 8192
    # step 4 (at 30 s) lands before the samples set aside at 60 s: both its notes are late, in full
    assert one_by_one.late_samples == 2 * round(0.04 * SR)
    # 60.1 s + the second note's 0.01 s + 0.04 s
    assert expected.shape == (round(60.1 * SR) + round(0.01 * SR) + round(0.04 * SR), 2)


def test_a_step_earlier_than_the_last_is_mixed_in_as_render_would_without_pops() -> None:
    """render_many is render of each step in turn: with nothing popped in between, a step that starts
    before the last one still sounds in full."""
    arrangement = make_arrangement(1, waveform="saw")
    steps = [make_step(s, start, 0.02, layer=[0], note_start_s=start, note_duration_s=0.02, frequency_hz=300.0,
                       amplitude=0.4) for s, start in enumerate([0.0, 0.05, 0.02, 0.07])]
    one_by_one = Synth(arrangement)
    for step in steps:
        one_by_one.render(step)
    many = Synth(arrangement)
    many.render_many(steps)
    got = many.finish()
    assert np.array_equal(got, one_by_one.finish()) and many.late_samples == 0
    note = 0.4 * reference_wave("saw", np.arange(882) * 300.0 / SR)
    for start in (0, 882, 2205, 3087):  # rint(0.02 x SR) = 882 samples per note, steps at 0, 0.02, 0.05, 0.07 s
        assert np.max(np.abs(got[start:start + 882, 0] - note)[np.abs(note) < 0.39]) < 1e-5


def test_notes_longer_than_max_note_s_are_cut_the_same_way() -> None:
    arrangement = make_arrangement(phase="continuous", sample_rate=2000)
    steps = [make_step(s, s * 0.5, 0.5, layer=[0], note_start_s=s * 0.5, note_duration_s=61.0 if s == 1 else 0.5,
                       frequency_hz=110.0, amplitude=0.2) for s in range(4)]
    expected, _ = per_step(arrangement, steps)
    got, _ = chunked(arrangement, steps, 4)
    assert np.array_equal(got, expected)
    assert got.shape == (round(0.5 * 2000) + 60 * 2000, 1)  # step 1's note is cut to 60 s


def test_a_bad_step_is_refused_after_the_steps_before_it_are_rendered() -> None:
    arrangement = make_arrangement(2)
    good = [make_step(s, s * 0.01, 0.01, layer=[0, 1], note_start_s=s * 0.01, note_duration_s=0.01,
                      frequency_hz=440.0, amplitude=0.5) for s in range(3)]
    bad_layer = make_step(3, 0.03, 0.01, layer=[7], note_start_s=0.03, note_duration_s=0.01, frequency_hz=440.0,
                          amplitude=0.5)
    for bad, error, words in ((bad_layer, ValueError, "layers \\[7\\]"), ("step", TypeError, "item 3 is a str")):
        synth = Synth(arrangement)
        with pytest.raises(error, match=words):
            synth.render_many(good + [bad] + good)  # type: ignore[operator]
        expected, _ = per_step(arrangement, good)
        assert np.array_equal(synth.finish(), expected)
    short = make_step(0, 0.0, 0.01, layer=[0, 1], note_start_s=0.0, note_duration_s=0.01, frequency_hz=440.0,
                      amplitude=0.5)
    uneven = StepEvents(**{**short.__dict__, "notes": type(short.notes)(
        **{**short.notes.__dict__, "amplitude": np.ones(3)})})
    with pytest.raises(ValueError, match="amplitude 3"):
        Synth(arrangement).render_many([uneven])
    with pytest.raises(ValueError, match="amplitude 3"):
        Synth(arrangement).render(uneven)


def test_chord_sums_of_a_stack_equal_each_chord_alone() -> None:
    rng = np.random.default_rng(5)
    codes = np.array([0, 0, 1, 2, 3, 3])
    inc = rng.uniform(100.0, 4000.0, (5, 6)) / SR
    phase0 = rng.uniform(0.0, 1.0, (5, 6))
    gains = rng.uniform(0.0, 0.2, (5, 2, 6)).astype(np.float32)
    work = Workspace()
    with one_blas_thread():
        stacked = chord_sums(codes, inc, phase0, gains, 1000, work)
        alone = [chord_sums(codes, inc[c:c + 1], phase0[c:c + 1], gains[c:c + 1], 1000, work)[0] for c in range(5)]
    assert stacked.shape == (5, 2, 1000)
    assert all(np.array_equal(stacked[c], alone[c]) for c in range(5))
    k = np.arange(1000)
    waves = np.stack([reference_wave(["sine", "triangle", "square", "saw"][code], phase0[0, i] + k * inc[0, i])
                      for i, code in enumerate(codes)])
    away_from_jumps = np.all(np.abs(((phase0[0, :, None] + k * inc[0, :, None]) % 0.5) - 0.25) < 0.2499, axis=0)
    assert np.max(np.abs(stacked[0] - gains[0] @ waves)[:, away_from_jumps]) < 1e-5
