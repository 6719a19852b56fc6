"""Tests of the NumPy synth: exactness against the 2019 post, pitch, phase, envelope, pan, robustness, streaming."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bridge.events import Alarm, Arrangement, LayerVoice, Notes, StepEvents
from bridge.sinks.synth import ALARM_AMPLITUDE, ALARM_FREQUENCIES_HZ, Synth, render_events

SR = 44100


def make_arrangement(layers: int = 1, *, channels: int = 1, waveform: str | list[str] = "sine",
                     phase: str = "reset", attack_s: float = 0.0, release_s: float = 0.0,
                     pans: list[float] | None = None, sample_rate: int = SR,
                     max_frequency_hz: float = 20000.0) -> Arrangement:
    waveforms = [waveform] * layers if isinstance(waveform, str) else waveform
    voices = tuple(LayerVoice(index=i, name=f"layer{i}", channel=i, program=0, waveform=waveforms[i],
                              pan=0.0 if pans is None else pans[i]) for i in range(layers))
    return Arrangement(voices=voices, mapping_name="test", description="", sample_rate=sample_rate,
                       audio_channels=channels, seconds_per_step=0.06, tempo_bpm=120.0, attack_s=attack_s,
                       release_s=release_s, phase=phase, max_frequency_hz=max_frequency_hz)


def make_step(step: int, start_s: float, duration_s: float, *, layer, note_start_s, note_duration_s,
              frequency_hz, amplitude, alarms: tuple[Alarm, ...] = ()) -> StepEvents:
    layer = np.asarray(layer, dtype=np.int64)
    n = layer.shape[0]

    def column(value) -> np.ndarray:
        return np.broadcast_to(np.asarray(value, dtype=np.float64), (n,)).copy()

    notes = Notes(layer=layer, start_s=column(note_start_s), duration_s=column(note_duration_s),
                  frequency_hz=column(frequency_hz), midi_note=np.full(n, 60, dtype=np.int64),
                  velocity=np.full(n, 100, dtype=np.int64), amplitude=column(amplitude), value=column(0.5))
    return StepEvents(step=step, start_s=start_s, duration_s=duration_s, wall_time_s=0.0, loss=math.nan,
                      lr=math.nan, norms=np.ones(n), notes=notes, alarms=alarms)


def one_note(arrangement: Arrangement, frequency_hz: float, duration_s: float, amplitude: float = 0.5,
             start_s: float = 0.0) -> np.ndarray:
    step = make_step(0, 0.0, start_s + duration_s, layer=[0], note_start_s=start_s, note_duration_s=duration_s,
                     frequency_hz=frequency_hz, amplitude=amplitude)
    return render_events(arrangement, [step])


def peak_frequency(x: np.ndarray, sample_rate: int = SR) -> float:
    """Frequency of the strongest spectral peak: Hann window, zero padding, parabolic interpolation."""
    size = 1 << 20
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.shape[0]), n=size))
    k = int(np.argmax(spectrum[1:-1])) + 1
    a, b, c = np.log(spectrum[k - 1:k + 2] + 1e-300)
    offset = 0.5 * (a - c) / (a - 2 * b + c)
    return (k + offset) * sample_rate / size


def cents(measured: float, expected: float) -> float:
    return 1200.0 * math.log2(measured / expected)


# -- the 2019 post, sample for sample ---------------------------------------------------------------------

NORMS = np.array([[0.013, 0.41, 1.7, 4.93],
                  [0.022, 0.87, 2.31, 0.05],
                  [3.3, 0.6, 0.011, 5.0]])


def perone_reference(norms: np.ndarray) -> np.ndarray:
    """The post's loop: per step, each layer a 10 ms tone (frequency in float32), then 20 ms of silence."""
    fs, duration, f = 44100, 0.01, 200.0
    frames = []
    for step_norms in norms:
        for norm in step_norms:
            tone = np.asarray(f + np.asarray(norm, dtype=np.float32) * 100.0).astype(np.float32)
            npsin = np.sin(2 * np.pi * np.arange(fs * duration) * tone / fs)
            samples = 0.1 * npsin.astype(np.float32)
            frames.append(samples)
        frames.append(np.zeros(samples.shape[0] * 2, dtype=np.float32))
    return np.concatenate(frames)


def test_perone2019_settings_reproduce_the_post_sample_for_sample() -> None:
    arrangement = make_arrangement(4)
    steps = [make_step(s, s * 0.06, 0.06, layer=range(4), note_start_s=s * 0.06 + np.arange(4) * 0.01,
                       note_duration_s=0.01, frequency_hz=200.0 + 100.0 * NORMS[s], amplitude=0.1)
             for s in range(3)]
    out = render_events(arrangement, steps)
    reference = perone_reference(NORMS)
    assert reference.shape == (3 * 2646,)
    assert out.shape == (3 * 2646, 1) and out.dtype == np.float32
    assert np.max(np.abs(out[:, 0] - reference)) <= 1e-6
    assert out[0, 0] == 0.0 and out[441, 0] == 0.0  # each tone starts from phase 0 exactly


# -- pitch and waveforms ----------------------------------------------------------------------------------

@pytest.mark.parametrize("waveform", ["sine", "triangle", "square", "saw"])
@pytest.mark.parametrize("frequency_hz", [110.0, 440.0, 1234.5])
def test_pitch_of_each_waveform_is_within_5_cents(waveform: str, frequency_hz: float) -> None:
    out = one_note(make_arrangement(waveform=waveform), frequency_hz, 0.5)
    assert out.shape == (22050, 1)
    assert abs(cents(peak_frequency(out[:, 0]), frequency_hz)) < 5.0


def reference_wave(waveform: str, cycles: np.ndarray) -> np.ndarray:
    """Each waveform starts at 0 (square at +1) and rises; period 1 cycle, amplitude 1."""
    if waveform == "sine":
        return np.sin(2 * np.pi * cycles)
    if waveform == "saw":
        return 2.0 * ((cycles + 0.5) % 1.0) - 1.0
    if waveform == "triangle":
        return 1.0 - 4.0 * np.abs((cycles + 0.25) % 1.0 - 0.5)
    return np.where(cycles % 1.0 < 0.5, 1.0, -1.0)


@pytest.mark.parametrize("waveform", ["sine", "triangle", "square", "saw"])
@pytest.mark.parametrize("phase", ["reset", "continuous"])
def test_waveform_shapes_follow_their_formulas(waveform: str, phase: str) -> None:
    """One note alone (summed as a chord), then two notes of two layers one after another (rows)."""
    f, amplitude = 437.77, 0.4
    arrangement = make_arrangement(2, waveform=waveform, phase=phase)
    alone = one_note(arrangement, f, 0.05, amplitude)[:, 0]
    step = make_step(0, 0.0, 0.1, layer=[0, 1], note_start_s=[0.0, 0.05], note_duration_s=0.05,
                     frequency_hz=[f, 2 * f], amplitude=amplitude)
    in_turn = render_events(arrangement, [step])[:, 0]
    k = np.arange(2205)
    # with continuous phase, layer i starts at i × (√5 − 1) / 2 cycles: layer 1's first note starts there
    start = (math.sqrt(5) - 1) / 2 if phase == "continuous" else 0.0
    for out, frequency, phase0 in ((alone, f, 0.0), (in_turn[:2205], f, 0.0), (in_turn[2205:], 2 * f, start)):
        cycles = phase0 + k * frequency / SR
        expected = amplitude * reference_wave(waveform, cycles)
        away_from_jumps = np.abs((cycles % 0.5) - 0.25) < 0.2499  # saw and square jump at 0.5 cycles
        assert np.max(np.abs(out - expected)[away_from_jumps]) < 1e-5


def test_frequencies_are_clipped_to_max_frequency_and_nyquist() -> None:
    out = one_note(make_arrangement(max_frequency_hz=3000.0), 9000.0, 0.5)
    assert abs(cents(peak_frequency(out[:, 0]), 3000.0)) < 5.0
    out = one_note(make_arrangement(sample_rate=8000), 5000.0, 0.5)  # Nyquist 4000 Hz
    assert np.max(np.abs(out)) < 1e-3  # a sine at exactly Nyquist, from phase 0, is silent


# -- phase ------------------------------------------------------------------------------------------------

def two_notes(phase: str, second_start_s: float, frequency_hz: float = 437.3) -> np.ndarray:
    step = make_step(0, 0.0, 0.2, layer=[0, 0], note_start_s=[0.0, second_start_s], note_duration_s=0.05,
                     frequency_hz=frequency_hz, amplitude=0.5)
    return render_events(make_arrangement(phase=phase), [step])[:, 0]


def test_continuous_phase_has_no_jump_between_back_to_back_notes() -> None:
    f, amplitude = 437.3, 0.5
    out = two_notes("continuous", 0.05)
    max_slope = 2 * np.pi * f * amplitude / SR
    assert abs(out[2205] - out[2204]) <= max_slope
    k = np.arange(4410)
    assert np.max(np.abs(out[:4410] - amplitude * np.sin(2 * np.pi * f * k / SR))) < 1e-6


def test_reset_phase_restarts_each_note_at_zero() -> None:
    f, amplitude = 437.3, 0.5
    out = two_notes("reset", 0.05)
    assert out[2205] == 0.0
    assert abs(out[2205] - out[2204]) > 2 * np.pi * f * amplitude / SR  # the restart is a jump here
    k = np.arange(2205)
    assert np.max(np.abs(out[2205:4410] - amplitude * np.sin(2 * np.pi * f * k / SR))) < 1e-6


def test_continuous_phase_carries_over_a_gap_from_the_end_of_the_previous_note() -> None:
    f, amplitude = 437.3, 0.5
    out = two_notes("continuous", 0.1)
    k = np.arange(2205)
    expected = amplitude * np.sin(2 * np.pi * f * (2205 + k) / SR)  # not free-running through the gap
    assert np.all(out[2205:4410] == 0.0)
    assert np.max(np.abs(out[4410:6615] - expected)) < 1e-6


def test_continuous_phase_carries_over_across_steps() -> None:
    f, amplitude = 300.0, 0.5
    arrangement = make_arrangement(phase="continuous")
    steps = [make_step(s, s * 0.05, 0.05, layer=[0], note_start_s=s * 0.05, note_duration_s=0.05,
                       frequency_hz=f, amplitude=amplitude) for s in range(3)]
    out = render_events(arrangement, steps)[:, 0]
    k = np.arange(3 * 2205)
    assert np.max(np.abs(out - amplitude * np.sin(2 * np.pi * f * k / SR))) < 1e-6


# -- envelope ---------------------------------------------------------------------------------------------

def test_linear_attack_and_release() -> None:
    amplitude, attack_n, release_n, length = 0.5, 441, 882, 4410
    arrangement = make_arrangement(waveform="square", attack_s=0.01, release_s=0.02)
    magnitude = np.abs(one_note(arrangement, 50.0, 0.1, amplitude)[:, 0])  # a square is ±1: |x| is the envelope
    k = np.arange(length)
    envelope = np.minimum(1.0, np.minimum(k / attack_n, (length - 1 - k) / release_n))
    assert magnitude[0] == 0.0 and magnitude[-1] == 0.0
    assert np.allclose(np.diff(magnitude[:attack_n]), amplitude / attack_n, atol=1e-6)
    assert np.allclose(np.diff(magnitude[length - release_n:]), -amplitude / release_n, atol=1e-6)
    assert np.max(np.abs(magnitude - amplitude * envelope)) < 1e-6


def test_short_note_takes_the_lower_of_attack_and_release() -> None:
    arrangement = make_arrangement(waveform="square", attack_s=0.01, release_s=0.02)
    magnitude = np.abs(one_note(arrangement, 50.0, 600 / SR, 1.0)[:, 0])
    k = np.arange(600)
    envelope = np.minimum(k / 441, (599 - k) / 882)
    assert np.max(np.abs(magnitude - envelope)) < 1e-6
    assert magnitude.max() == pytest.approx(399 / 882, abs=1e-6)  # the ramps cross below full level


# -- stereo -----------------------------------------------------------------------------------------------

def test_constant_power_pan() -> None:
    f, amplitude = 440.0, 0.5
    arrangement = make_arrangement(3, channels=2, pans=[-1.0, 0.0, 1.0])
    expected = amplitude * np.sin(2 * np.pi * f * np.arange(2205) / SR)
    outs = []
    for layer in range(3):
        step = make_step(0, 0.0, 0.05, layer=[layer], note_start_s=0.0, note_duration_s=0.05,
                         frequency_hz=f, amplitude=amplitude)
        outs.append(render_events(arrangement, [step]))
    left_only, centre, right_only = outs
    assert np.all(left_only[:, 1] == 0.0) and np.max(np.abs(left_only[:, 0] - expected)) < 1e-6
    assert np.all(right_only[:, 0] == 0.0) and np.max(np.abs(right_only[:, 1] - expected)) < 1e-6
    assert np.array_equal(centre[:, 0], centre[:, 1])
    assert np.max(np.abs(centre[:, 0] - expected / math.sqrt(2))) < 1e-6


def test_mono_has_no_pan_gain() -> None:
    arrangement = make_arrangement(1, pans=[-0.7])
    out = one_note(arrangement, 440.0, 0.05, 0.5)[:, 0]
    assert np.max(np.abs(out - 0.5 * np.sin(2 * np.pi * 440.0 * np.arange(2205) / SR))) < 1e-6


def test_chord_mixes_notes_of_any_length_and_limits_the_sum() -> None:
    arrangement = make_arrangement(3, waveform=["sine", "triangle", "sine"])
    step = make_step(0, 0.0, 0.05, layer=[0, 1, 2], note_start_s=0.0, note_duration_s=[0.05, 0.05, 0.02],
                     frequency_hz=[220.0, 330.0, 550.0], amplitude=[0.5, 0.4, 0.6])
    out = render_events(arrangement, [step])[:, 0]
    k = np.arange(2205)
    expected = (0.5 * reference_wave("sine", 220.0 * k / SR) + 0.4 * reference_wave("triangle", 330.0 * k / SR)
                + np.where(k < 882, 0.6 * reference_wave("sine", 550.0 * k / SR), 0.0))
    peak = 10 ** (-1 / 20)
    assert np.max(np.abs(out - limited(expected))) < 1e-5
    assert expected.max() > 1.0 and 0.85 < out.max() <= peak  # never above -1 dBFS
    quiet = np.abs(expected) <= 0.5
    assert np.max(np.abs(out[quiet] - expected[quiet])) < 1e-5  # below the knee: untouched


# -- robustness -------------------------------------------------------------------------------------------

def test_non_finite_notes_never_make_non_finite_audio() -> None:
    arrangement = make_arrangement(6, channels=2, waveform=["sine", "saw", "square", "triangle", "sine", "saw"])
    step = make_step(0, 0.0, 0.1, layer=range(6),
                     note_start_s=[0.0, math.nan, 0.0, math.inf, 0.0, -math.inf],
                     note_duration_s=[math.inf, 0.05, -1.0, 0.05, math.nan, 0.05],
                     frequency_hz=[math.nan, math.inf, -math.inf, 440.0, 0.0, -5.0],
                     amplitude=[math.inf, math.nan, 0.5, -math.inf, math.inf, 1.0])
    out = render_events(arrangement, [step])
    assert out.dtype == np.float32 and out.ndim == 2 and out.shape[1] == 2
    assert np.all(np.isfinite(out)) and np.max(np.abs(out)) <= 1.0


def test_infinite_frequency_plays_at_the_maximum_and_nan_amplitude_is_silent() -> None:
    arrangement = make_arrangement(max_frequency_hz=2000.0)
    out = one_note(arrangement, math.inf, 0.5, 0.3)[:, 0]
    assert abs(cents(peak_frequency(out), 2000.0)) < 5.0
    assert np.max(np.abs(out)) == pytest.approx(0.3, abs=1e-3)
    assert np.all(one_note(arrangement, 440.0, 0.1, math.nan) == 0.0)
    assert np.all(one_note(arrangement, math.nan, 0.1, 0.5) == 0.0)
    loud = one_note(arrangement, 440.0, 0.1, math.inf)[:, 0]  # amplitude clipped to 1, then the limiter
    assert np.max(np.abs(loud - limited(np.sin(2 * np.pi * 440.0 * np.arange(4410) / SR)))) < 1e-5


def limited(x: np.ndarray) -> np.ndarray:
    """The synth's limiter, worked out: the identity up to 0.5, then 0.5 + h·tanh((|x| - 0.5) / h) with
    h = 10^(-1/20) - 0.5, sign kept."""
    h = 10 ** (-1 / 20) - 0.5
    return np.where(np.abs(x) <= 0.5, x, np.sign(x) * (0.5 + h * np.tanh((np.abs(x) - 0.5) / h)))


def alarm_step(note_amplitude: float) -> StepEvents:
    alarm = Alarm(layer=1, kind="nan", start_s=0.0, duration_s=0.2, midi_note=39, velocity=100)
    return make_step(0, 0.0, 0.2, layer=[0], note_start_s=0.0, note_duration_s=0.2, frequency_hz=440.0,
                     amplitude=note_amplitude, alarms=(alarm,))


def test_alarm_is_a_distinct_finite_two_tone_beep() -> None:
    arrangement = make_arrangement(2, channels=2)
    out = render_events(arrangement, [alarm_step(0.0)])
    assert np.all(np.isfinite(out)) and out.shape == (8820, 2)
    assert np.array_equal(out[:, 0], out[:, 1])  # centred
    assert np.max(np.abs(out)) == pytest.approx(ALARM_AMPLITUDE / math.sqrt(2), rel=1e-4)
    first, second = out[:4410, 0], out[4410:, 0]
    assert abs(cents(peak_frequency(first), ALARM_FREQUENCIES_HZ[0])) < 5.0
    assert abs(cents(peak_frequency(second), ALARM_FREQUENCIES_HZ[1])) < 5.0
    with_note = render_events(arrangement, [alarm_step(0.1)])[:, 0]
    dominant = peak_frequency(with_note)
    assert min(abs(cents(dominant, f)) for f in ALARM_FREQUENCIES_HZ) < 5.0  # the alarm, not the 440 Hz note
    assert np.array_equal(with_note, render_events(arrangement, [alarm_step(0.1)])[:, 0])  # deterministic


def test_alarms_at_the_same_moment_sound_once() -> None:
    arrangement = make_arrangement(3)
    alarms = tuple(Alarm(layer=i, kind="+inf", start_s=0.0, duration_s=0.1, midi_note=49, velocity=100)
                   for i in range(3))
    empty = make_step(0, 0.0, 0.1, layer=[], note_start_s=0.0, note_duration_s=0.1, frequency_hz=1.0,
                      amplitude=0.0)
    single = render_events(arrangement, [StepEvents(**{**empty.__dict__, "alarms": alarms[:1]})])
    triple = render_events(arrangement, [StepEvents(**{**empty.__dict__, "alarms": alarms})])
    assert np.array_equal(single, triple) and np.max(np.abs(single)) == pytest.approx(ALARM_AMPLITUDE, rel=1e-4)


# -- streaming --------------------------------------------------------------------------------------------

def streaming_steps(count: int) -> list[StepEvents]:
    rng = np.random.default_rng(7)
    return [make_step(s, s * 0.04, 0.04, layer=range(4), note_start_s=s * 0.04 + np.array([0, 0, 0.01, 0.02]),
                      note_duration_s=[0.05, 0.05, 0.03, 0.035], frequency_hz=rng.uniform(100, 2000, 4),
                      amplitude=0.2) for s in range(count)]


def test_popping_as_you_go_equals_rendering_everything_then_finishing() -> None:
    arrangement = make_arrangement(4, channels=2, waveform=["sine", "saw", "triangle", "square"],
                                   phase="continuous", attack_s=0.002, release_s=0.01, pans=[-1, -0.3, 0.4, 1])
    steps = streaming_steps(100)
    synth = Synth(arrangement)
    chunks = []
    for step in steps:
        synth.render(step)
        chunks.append(synth.pop_ready())
        # held: this step's notes, of which the last starts 882 samples in and lasts rint(1543.5) = 1544
        assert synth.buffered_samples <= 882 + 1544
        assert synth.buffer_capacity <= 8192
    chunks.append(synth.finish())
    streamed = np.concatenate(chunks)
    whole = Synth(arrangement)
    for step in steps:
        whole.render(step)
    at_once = whole.finish()
    # the last step starts at sample 99 × 1764, its last note ends 882 + 1544 samples later
    assert streamed.shape == at_once.shape == (99 * 1764 + 882 + 1544, 2)
    assert np.array_equal(streamed, at_once)
    assert np.all(np.isfinite(streamed)) and np.max(np.abs(streamed)) <= 1.0


def test_pop_ready_returns_only_samples_before_the_rendered_step() -> None:
    synth = Synth(make_arrangement())
    step = make_step(0, 0.5, 0.1, layer=[0], note_start_s=0.5, note_duration_s=0.1, frequency_hz=440.0,
                     amplitude=0.5)
    synth.render(step)
    assert synth.ready_s == 0.5
    before = synth.pop_ready()
    assert before.shape == (22050, 1) and np.all(before == 0.0)
    assert synth.pop_ready().shape == (0, 1)  # nothing new is final until the next step
    part = synth.pop_ready(0.55)
    assert part.shape == (2205, 1)
    assert np.max(np.abs(part[:, 0] - 0.5 * np.sin(2 * np.pi * 440.0 * np.arange(2205) / SR))) < 1e-6
    assert synth.finish().shape == (2205, 1)
    assert synth.finish().shape == (0, 1)


def test_a_long_silence_between_steps_is_not_held_in_memory() -> None:
    synth = Synth(make_arrangement())
    late_start = 60.0  # a minute of silence: far more than the buffer holds
    for step, start in ((0, 0.0), (1, late_start)):
        synth.render(make_step(step, start, 0.1, layer=[0], note_start_s=start, note_duration_s=0.1,
                               frequency_hz=440.0, amplitude=0.5))
    assert synth.buffer_capacity <= 8192
    tone = 0.5 * np.sin(2 * np.pi * 440.0 * np.arange(4410) / SR)
    first = synth.pop_ready(max_frames=4410)
    assert first.shape == (4410, 1) and np.max(np.abs(first[:, 0] - tone)) < 1e-6
    sizes = []
    while True:  # the silence comes out in chunks of at most one second
        chunk = synth.pop_ready(max_frames=SR)
        if chunk.shape[0] == 0:
            break
        assert np.all(chunk == 0.0)
        sizes.append(chunk.shape[0])
    assert sum(sizes) == 60 * SR - 4410 and max(sizes) == SR
    tail = synth.finish()
    assert tail.shape == (4410, 1) and np.max(np.abs(tail[:, 0] - tone)) < 1e-6


def test_notes_for_time_already_popped_are_dropped_and_counted() -> None:
    synth = Synth(make_arrangement())
    synth.pop_ready(0.01)  # 441 samples handed out already
    synth.render(make_step(0, 0.0, 0.02, layer=[0], note_start_s=0.0, note_duration_s=0.02, frequency_hz=440.0,
                           amplitude=0.5))
    rest = synth.finish()
    assert synth.late_samples == 441 and rest.shape == (441, 1)
    k = np.arange(441, 882)
    assert np.max(np.abs(rest[:, 0] - 0.5 * np.sin(2 * np.pi * 440.0 * k / SR))) < 1e-6


# -- validation -------------------------------------------------------------------------------------------

def test_bad_input_is_refused_with_a_clear_error() -> None:
    with pytest.raises(TypeError, match="Arrangement"):
        Synth("perone2019")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="phase"):
        Synth(make_arrangement(phase="sometimes"))
    with pytest.raises(ValueError, match="audio_channels"):
        Synth(make_arrangement(channels=6))
    with pytest.raises(ValueError, match="waveform"):
        Synth(make_arrangement(waveform="noise"))
    synth = Synth(make_arrangement(2))
    with pytest.raises(TypeError, match="StepEvents"):
        synth.render({"notes": []})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="layer"):
        synth.render(make_step(0, 0.0, 0.1, layer=[5], note_start_s=0.0, note_duration_s=0.1,
                               frequency_hz=440.0, amplitude=0.5))
    with pytest.raises(ValueError, match="until_s"):
        synth.pop_ready(math.nan)
    with pytest.raises(ValueError, match="max_frames"):
        synth.pop_ready(1.0, max_frames=0)


def test_notes_apart_back_to_back_and_overlapping_in_one_step_each_sound_at_their_own_place() -> None:
    # three sine layers, notes of one length: sample k of a note is a·sin(2π k f / SR) from its own start
    arrangement = make_arrangement(3)
    length = 441
    k = np.arange(length)
    freqs, amps = [437.0, 873.0, 219.0], [0.1, 0.2, 0.3]
    for starts in ([0.0, 0.02, 0.05], [0.0, 0.01, 0.02], [0.0, 0.005, 0.012], [0.05, 0.0, 0.02]):
        step = make_step(0, 0.0, 0.08, layer=[0, 1, 2], note_start_s=starts, note_duration_s=0.01,
                         frequency_hz=freqs, amplitude=amps)
        expected = np.zeros(round(0.08 * SR))
        for start_s, f, a in zip(starts, freqs, amps):
            at = round(start_s * SR)
            expected[at:at + length] += a * np.sin(2 * np.pi * k * f / SR)
        out = render_events(arrangement, [step])[:, 0]
        assert out.shape == expected.shape
        assert np.max(np.abs(out - expected)) < 1e-5, starts


def test_a_step_naming_other_layers_than_the_last_uses_their_own_voices() -> None:
    # layer 0 plays a sine, layer 1 a saw (2x - 1 ramps from 0 upwards): swapping layers swaps the shapes
    arrangement = make_arrangement(2, waveform=["sine", "saw"])
    steps = [make_step(i, 0.01 * i, 0.01, layer=[layer], note_start_s=0.01 * i, note_duration_s=0.01,
                       frequency_hz=100.0, amplitude=0.5) for i, layer in enumerate([0, 1, 0])]
    out = render_events(arrangement, steps)[:, 0]
    k = np.arange(441)
    sine = 0.5 * np.sin(2 * np.pi * k * 100.0 / SR)
    cycles = (k * 100.0 / SR) % 1.0
    saw = 0.5 * 2.0 * np.where(cycles < 0.5, cycles, cycles - 1.0)
    assert np.max(np.abs(out - np.concatenate([sine, saw, sine]))) < 1e-5
