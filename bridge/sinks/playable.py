"""The playable notes of a chunk of steps: ``StepEvents`` → flat arrays in samples, for ``bridge.sinks.synth``.

``Voicing.notes`` turns the notes of many steps into one ``NoteBatch`` (start and length in samples,
frequency in cycles per sample, starting phase in cycles, per-channel gains, and the step each note came
from), with a few NumPy calls for the whole chunk. Non-finite values are made harmless first: a note
that cannot be placed or heard is left out. ``Voicing.alarms`` does the same for the alarms.

With continuous phase each layer's oscillator carries on from the end of its previous note. Phases are
kept as 64-bit fixed-point fractions of a cycle, so carrying them is exact integer addition (modulo one
cycle): a chunk's phases, summed per layer at once, are bit for bit those of its steps one at a time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bridge.events import MIN_FREQUENCY_HZ, PHASES, WAVEFORMS, Arrangement, StepEvents
from bridge.sinks.voices import WAVE_CODES, pan_gains

#: Longest note the synth renders, in seconds; longer notes are cut (keeps memory bounded).
MAX_NOTE_S = 60.0
#: The alarm: a square two-tone beep, first half ``ALARM_FREQUENCIES_HZ[0]``, second half ``[1]``.
ALARM_FREQUENCIES_HZ = (1760.0, 1320.0)
#: Alarm amplitude, 0–1, the same whatever the preset's amplitude.
ALARM_AMPLITUDE = 0.25
#: The spike alarm: a square two-tone beep rising (the NaN/Inf alarm falls), at ``SPIKE_AMPLITUDE``.
SPIKE_FREQUENCIES_HZ = (2217.46, 2959.96)  # C#7 then F#7: above every note of the musical presets
SPIKE_AMPLITUDE = 0.2
#: A note or step starting further than this from time zero, in seconds, cannot be placed.
MAX_TIME_S = 1e9

_CYCLE = 2.0 ** 64  # one cycle in fixed point: phases are uint64 counts of 2^-64 cycle, wrapping at 1
_GOLDEN = np.uint64(11400714819323198485)  # (sqrt(5) - 1) / 2 cycles in fixed point: evenly spread phases
_NOTE_FIELDS = ("start_s", "duration_s", "frequency_hz", "amplitude")
#: Sample indices that stand for "no note" in ``NoteBatch.step_spans``: beyond any note's start or end.
NOTHING_BEFORE, NOTHING_AFTER = -(1 << 62), 1 << 62


@dataclass(frozen=True)
class NoteBatch:
    """Notes ready to mix, as parallel arrays (one entry per note, in the order of their steps).

    Attributes:
        codes: waveform code (``bridge.sinks.voices.WAVE_CODES``), int64.
        starts: first sample, from the start of the run, int64.
        lengths: samples, >= 1, int64.
        inc: frequency in cycles per sample, float64, in (0, 0.5].
        phase0: phase of the first sample in cycles, float64, in [0, 1].
        gains: float32 ``(audio_channels, notes)``, each in [0, 1].
        step: position of the note's step in the chunk, int64, non-decreasing.
    """

    codes: np.ndarray
    starts: np.ndarray
    lengths: np.ndarray
    inc: np.ndarray
    phase0: np.ndarray
    gains: np.ndarray
    step: np.ndarray

    def of_steps(self, low: int, high: int) -> NoteBatch | None:
        """The notes of steps ``low`` to ``high - 1`` of the chunk; None when they have none."""
        if low == 0 and self.step[-1] < high:  # all of them (the usual case)
            return self
        first, stop = np.searchsorted(self.step, (low, high)).tolist()
        if first == stop:
            return None
        if first == 0 and stop == self.step.shape[0]:
            return self
        part = slice(first, stop)
        return NoteBatch(self.codes[part], self.starts[part], self.lengths[part], self.inc[part],
                         self.phase0[part], self.gains[:, part], self.step[part])

    def step_spans(self, steps: int) -> tuple[np.ndarray, np.ndarray]:
        """Per step of the chunk, int64: the first sample any of its notes sounds (``NOTHING_AFTER`` for
        a step without notes) and the sample after the last one (``NOTHING_BEFORE``)."""
        ends = self.starts + self.lengths
        if steps == 1:
            return self.starts.min(keepdims=True), ends.max(keepdims=True)
        low = np.full(steps, NOTHING_AFTER)
        high = np.full(steps, NOTHING_BEFORE)
        np.minimum.at(low, self.step, self.starts)
        np.maximum.at(high, self.step, ends)
        return low, high


class BadStep(Exception):
    """A step of a chunk that cannot be rendered: ``index`` in the chunk, and the ``error`` for the caller."""

    def __init__(self, index: int, error: Exception) -> None:
        super().__init__(str(error))
        self.index, self.error = index, error


class Voicing:
    """The arrangement's voices (waveform, pan) and each layer's oscillator phase; not thread-safe.

    Args:
        arrangement: a validated arrangement (see ``bridge.sinks.synth.Synth``).
    """

    def __init__(self, arrangement: Arrangement) -> None:
        self.arrangement = a = arrangement
        self.sample_rate = int(a.sample_rate)
        self.audio_channels = int(a.audio_channels)
        self.continuous = a.phase == "continuous"
        self.max_frequency_hz = min(float(a.max_frequency_hz), self.sample_rate / 2.0)
        self._slot_of_layer = np.full(max(v.index for v in a.voices) + 1, -1, dtype=np.int64)
        self._slot_of_layer[[v.index for v in a.voices]] = np.arange(len(a.voices))
        self._wave_of_slot = np.array([WAVE_CODES[v.waveform] for v in a.voices], dtype=np.int64)
        self._gain_of_slot = np.stack([pan_gains(v.pan, self.audio_channels) for v in a.voices], axis=1)
        # each layer's phase, 2^-64 cycles; with continuous phase the layers start spread over the cycle
        # (voice i at i × 0.618… cycles), so layers on one note do not add up in phase into one loud voice
        self._phase = (np.arange(len(a.voices), dtype=np.uint64) * _GOLDEN if self.continuous
                       else np.zeros(len(a.voices), dtype=np.uint64))
        self._layers_key: tuple[str, bytes] | None = None  # the last chunk's Notes.layer, and its slots
        self._layers_slot = np.zeros(0, dtype=np.int64)
        self._layers_single = True  # no slot twice in the last chunk's layers

    def notes(self, steps: Sequence[StepEvents]) -> NoteBatch | None:
        """The steps' playable notes, phases advanced; None when none sounds.

        Raises ``BadStep`` (nothing changed) when a step's note arrays differ in length or name a layer
        the arrangement has no voice for.
        """
        layer, start_s, duration_s, freq, amp, step = _gather(steps)
        if layer.shape[0] == 0:
            return None
        slot, single = self._slots(layer, step, steps)
        sr = self.sample_rate
        ok = (np.abs(start_s) < MAX_TIME_S) & (duration_s > 0) & (freq == freq)  # NaN compares unequal
        if not ok.all():  # placeholders for what will not sound, so that no arithmetic meets NaN or Inf
            start_s, duration_s = np.where(ok, start_s, 0.0), np.where(ok, duration_s, 0.0)
        starts = np.rint(start_s * sr).astype(np.int64)
        lengths = np.rint(np.minimum(duration_s, MAX_NOTE_S) * sr).astype(np.int64)
        ok &= lengths > 0
        inc = np.minimum(np.maximum(freq, MIN_FREQUENCY_HZ), self.max_frequency_hz) / sr  # cycles per sample
        phase0 = self._start_phases(slot, step, starts, lengths, inc, ok, single and len(steps) == 1)
        ok &= amp > 0  # NaN amplitude is silence
        if not ok.all():
            if not ok.any():
                return None
            keep = np.flatnonzero(ok)
            slot, starts, lengths, inc, phase0, amp, step = (
                a[keep] for a in (slot, starts, lengths, inc, phase0, amp, step))
        gains = (self._gain_of_slot[:, slot] * np.minimum(amp, 1.0)).astype(np.float32)
        return NoteBatch(self._wave_of_slot[slot], starts, lengths, inc, phase0, gains, step)

    def alarms(self, steps: Sequence[StepEvents], spikes: bool = False) -> NoteBatch | None:
        """Each step's alarms as two square notes (high, then low); alarms of a step at the same moment
        sound once. None when no step has an alarm. ``spikes``: the spike alarms instead (low, then high)."""
        sr, parts = self.sample_rate, []
        tones, loudness = (SPIKE_FREQUENCIES_HZ, SPIKE_AMPLITUDE) if spikes else (ALARM_FREQUENCIES_HZ, ALARM_AMPLITUDE)
        for index, events in enumerate(steps):
            sounded = events.spikes if spikes else events.alarms
            if not sounded:
                continue
            spans = set()
            for alarm in sounded:
                start, duration = _finite(alarm.start_s, math.nan), _finite(alarm.duration_s, math.nan)
                if abs(start) < MAX_TIME_S and duration > 0:  # NaN fails both tests
                    spans.add((int(round(start * sr)), int(round(min(duration, MAX_NOTE_S) * sr))))
            span = np.array(sorted(s for s in spans if s[1] >= 2), dtype=np.int64).reshape(-1, 2)
            if span.shape[0]:
                half = span[:, 1] // 2
                parts.append((np.concatenate([span[:, 0], span[:, 0] + half]),
                              np.concatenate([half, span[:, 1] - half]),
                              np.repeat(np.minimum(tones, self.max_frequency_hz) / sr, span.shape[0]),
                              np.full(2 * span.shape[0], index, dtype=np.int64)))
        if not parts:
            return None
        starts, lengths, inc, step = (np.concatenate(column) for column in zip(*parts))
        centre = pan_gains(0.0, self.audio_channels) * loudness
        gains = np.repeat(centre[:, None], starts.shape[0], axis=1).astype(np.float32)
        codes = np.full(starts.shape[0], WAVE_CODES["square"], dtype=np.int64)
        return NoteBatch(codes, starts, lengths, inc, np.zeros_like(inc), gains, step)

    # -- internals ----------------------------------------------------------------------------------------

    def _slots(self, layer: np.ndarray, step: np.ndarray,
               steps: Sequence[StepEvents]) -> tuple[np.ndarray, bool]:
        """Each note's voice slot, and whether no slot comes twice; checked once per distinct layer array."""
        key = (layer.dtype.str, layer.tobytes())
        if key == self._layers_key:
            return self._layers_slot, self._layers_single
        table = self._slot_of_layer
        layer = layer.astype(np.int64, copy=False)
        slot = table[np.minimum(np.maximum(layer, 0), table.shape[0] - 1)]
        wrong = (slot < 0) | (layer < 0) | (layer >= table.shape[0])
        if wrong.any():
            index = int(step[np.argmax(wrong)])
            named = np.asarray(steps[index].notes.layer).reshape(-1)
            raise BadStep(index, ValueError(
                f"Notes.layer at step {steps[index].step} names layers {sorted(set(named.tolist()))} but the "
                f"arrangement has voices for {sorted(v.index for v in self.arrangement.voices)}; render events "
                "made with the same arrangement"))
        slot.setflags(write=False)
        single = bool(np.bincount(slot).max() == 1)
        self._layers_key, self._layers_slot, self._layers_single = key, slot, single
        return slot, single

    def _start_phases(self, slot: np.ndarray, step: np.ndarray, starts: np.ndarray, lengths: np.ndarray,
                      inc: np.ndarray, ok: np.ndarray, one_per_layer: bool) -> np.ndarray:
        """Each note's starting phase in cycles; with continuous phase, also advance each layer's phase.

        A layer's notes follow one another by step, then by start; each advances its layer's phase by
        its length in cycles (notes that cannot sound by nothing).
        """
        if not self.continuous:
            return np.zeros(slot.shape[0], dtype=np.float64)
        cycles = np.where(ok, inc * lengths, 0.0)  # notes that cannot sound advance nothing
        advance = ((cycles - np.floor(cycles)) * _CYCLE).astype(np.uint64)
        if one_per_layer:  # the usual live case: one step, one note per layer
            fixed = self._phase[slot]
            self._phase[slot] = fixed + advance  # uint64 wraps: modulo one cycle
        else:
            order = np.lexsort((starts, step, slot))  # by layer, then step, then time
            s_slot, s_advance = slot[order], advance[order]
            before = np.cumsum(s_advance) - s_advance  # exact modulo 2^64, in any grouping
            first = np.ones(order.shape[0], dtype=bool)
            first[1:] = s_slot[1:] != s_slot[:-1]
            sorted_phase = self._phase[s_slot] + (before - before[first][np.cumsum(first) - 1])
            fixed = np.empty_like(sorted_phase)
            fixed[order] = sorted_phase
            last = np.append(first[1:], True)
            self._phase[s_slot[last]] = sorted_phase[last] + s_advance[last]
        return fixed.astype(np.float64) * (1.0 / _CYCLE)


def _gather(steps: Sequence[StepEvents]) -> tuple[np.ndarray, ...]:
    """The steps' note arrays, each concatenated over the steps: layer, start_s, duration_s, frequency_hz,
    amplitude, and the position of each note's step in the chunk."""
    if len(steps) > 1:
        notes = [events.notes for events in steps]
        columns = [[getattr(n, name) for n in notes] for name in ("layer", *_NOTE_FIELDS)]
        try:
            counts = list(map(len, columns[0]))
            if all(list(map(len, column)) == counts for column in columns[1:]):
                merged = [np.concatenate(column) for column in columns]
                if all(array.ndim == 1 for array in merged):  # the usual case: 1-d arrays, one entry per note
                    return (merged[0], *(np.asarray(a, dtype=np.float64) for a in merged[1:]),
                            np.repeat(np.arange(len(counts), dtype=np.int64), counts))
        except (TypeError, ValueError):  # scalars or ragged shapes: the step-by-step path names the step at fault
            pass
    columns = [[], [], [], [], []]
    counts = []
    for index, events in enumerate(steps):
        notes = events.notes
        arrays = [_flat(notes.layer, None)] + [_flat(getattr(notes, name), np.float64) for name in _NOTE_FIELDS]
        sizes = [a.shape[0] for a in arrays]
        if sizes.count(sizes[0]) != len(sizes):
            raise BadStep(index, ValueError(
                f"Notes arrays must have one entry per note; at step {events.step} got layer {sizes[0]}, "
                f"start_s {sizes[1]}, duration_s {sizes[2]}, frequency_hz {sizes[3]}, amplitude {sizes[4]}"))
        for column, array in zip(columns, arrays):
            column.append(array)
        counts.append(sizes[0])
    if len(counts) == 1:
        return (*(column[0] for column in columns), np.zeros(counts[0], dtype=np.int64))
    return (*(np.concatenate(column) for column in columns),
            np.repeat(np.arange(len(counts), dtype=np.int64), counts))


def _flat(value: object, dtype: type | None) -> np.ndarray:
    """``value`` as a 1-d array (of ``dtype`` if given); arrays that are already so pass unchanged."""
    if type(value) is np.ndarray and value.ndim == 1 and (dtype is None or value.dtype == dtype):
        return value
    return np.asarray(value, dtype=dtype).reshape(-1)


def _finite(value: float, default: float) -> float:
    number = float(value)
    return number if math.isfinite(number) else default


def check_arrangement(a: Arrangement) -> Arrangement:
    """``a``, checked: a TypeError or ValueError names the field, what is allowed and how to fix it."""
    if not isinstance(a, Arrangement):
        raise TypeError(f"Synth needs an Arrangement (see bridge.mapping.Mapping.arrange), got {type(a).__name__}")

    def bad(field: str, allowed: str, got: object, fix: str) -> ValueError:
        return ValueError(f"Arrangement.{field} must be {allowed}; got {got!r}. {fix}")

    if isinstance(a.sample_rate, bool) or not isinstance(a.sample_rate, (int, np.integer)) or a.sample_rate <= 0:
        raise bad("sample_rate", "a positive integer number of Hz", a.sample_rate, "Use e.g. 44100 or 48000.")
    if a.audio_channels not in (1, 2):
        raise bad("audio_channels", "1 (mono) or 2 (stereo)", a.audio_channels, "Set channels to 1 or 2.")
    for field in ("attack_s", "release_s"):
        value = getattr(a, field)
        if not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 <= value <= MAX_NOTE_S:
            raise bad(field, f"seconds from 0 to {MAX_NOTE_S:g}", value, "Use 0 for no envelope.")
    if a.phase not in PHASES:
        raise bad("phase", f"one of {PHASES}", a.phase, "Pick 'reset' or 'continuous'.")
    if not isinstance(a.max_frequency_hz, (int, float)) or not a.max_frequency_hz > 0 or \
            not math.isfinite(a.max_frequency_hz):
        raise bad("max_frequency_hz", "a finite number of Hz above 0", a.max_frequency_hz, "Use e.g. 16000.")
    if not a.voices:
        raise bad("voices", "at least one LayerVoice", a.voices, "Arrange at least one layer.")
    indices = [v.index for v in a.voices]
    if len(set(indices)) != len(indices) or min(indices) < 0:
        raise bad("voices", "voices with distinct layer indices >= 0", indices, "Give each layer its own index.")
    for v in a.voices:
        if v.waveform not in WAVEFORMS:
            raise bad(f"voices[{v.index}].waveform", f"one of {WAVEFORMS}", v.waveform, "Pick a known waveform.")
        if not isinstance(v.pan, (int, float)) or not -1.0 <= v.pan <= 1.0:
            raise bad(f"voices[{v.index}].pan", "a number from -1.0 (left) to 1.0 (right)", v.pan, "0 is centre.")
    return a
