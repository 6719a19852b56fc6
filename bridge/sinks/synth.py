"""The built-in NumPy synth: ``StepEvents`` → audio samples, streaming, shared by the live and WAV sinks.

``Synth.render`` mixes one step's notes and alarms into an accumulation buffer at their musical times
(sample index ``round(start_s × sample_rate)``, length ``round(duration_s × sample_rate)`` samples);
``Synth.pop_ready`` hands out the samples no later step can change; ``Synth.finish`` hands out the rest.
Samples are float32, shape ``(frames, audio_channels)``, always finite and within [-1, 1].

Each layer has one oscillator (sine, triangle, square or saw) whose phase either restarts at 0 on every
note (``phase = "reset"``) or carries on from the end of the layer's previous note (``"continuous"``).
A step's notes of one length are computed at once (``bridge.sinks.voices``): as a (notes, samples) array
when they follow one another, and summed straight into (channels, samples) when they start together.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from bridge.events import WAVEFORMS, Alarm, Arrangement, StepEvents
from bridge.sinks.voices import BLOCK, WAVE_CODES, Workspace, apply_envelope, chord_sum, oscillator_rows, pan_gains

#: Phase handling of the oscillators.
PHASES = ("reset", "continuous")

#: Lowest frequency the synth plays, in Hz; the highest is ``min(max_frequency_hz, sample_rate / 2)``.
MIN_FREQUENCY_HZ = 1.0

#: Longest note the synth renders, in seconds; longer notes are cut (keeps memory bounded).
MAX_NOTE_S = 60.0

#: The alarm: a square two-tone beep, first half ``ALARM_FREQUENCIES_HZ[0]``, second half ``[1]``.
ALARM_FREQUENCIES_HZ = (1760.0, 1320.0)
#: Alarm amplitude, 0–1, the same whatever the preset's amplitude.
ALARM_AMPLITUDE = 0.25
#: Attack and release of each half of the alarm, in seconds.
ALARM_EDGE_S = 0.002

_TILE_ELEMENTS = 1 << 19  # notes × samples computed at once (keeps scratch arrays in cache, memory bounded)
_MAX_TIME_S = 1e9  # a note starting further than this from time zero is ignored (cannot be placed)


class Synth:
    """A streaming renderer of step events; not thread-safe (one thread renders and pops).

    Args:
        arrangement: the run's layout: sample rate, channels, envelope, phase mode, voices (waveform, pan).
    """

    def __init__(self, arrangement: Arrangement) -> None:
        a = self.arrangement = _check_arrangement(arrangement)
        self.sample_rate = sr = int(a.sample_rate)
        self.audio_channels = int(a.audio_channels)
        self.continuous = a.phase == "continuous"
        self.attack_n, self.release_n = int(round(a.attack_s * sr)), int(round(a.release_s * sr))
        self.max_frequency_hz = min(float(a.max_frequency_hz), sr / 2.0)
        self._slot_of_layer = np.full(max(v.index for v in a.voices) + 1, -1, dtype=np.int64)
        self._slot_of_layer[[v.index for v in a.voices]] = np.arange(len(a.voices))
        self._wave_of_slot = np.array([WAVE_CODES[v.waveform] for v in a.voices], dtype=np.int64)
        self._gain_of_slot = np.stack([pan_gains(v.pan, self.audio_channels) for v in a.voices], axis=1)
        self._phase = np.zeros(len(a.voices), dtype=np.float64)  # each layer's phase in cycles, [0, 1)
        self._buf = np.zeros((self.audio_channels, 4096), dtype=np.float32)
        self._origin = 0  # absolute sample index up to which samples were popped
        self._base = 0  # absolute sample index of self._buf[:, 0], >= self._origin; zeros in between
        self._filled = 0  # samples of self._buf that may be non-zero
        self._finished: list[tuple[int, np.ndarray]] = []  # (start, samples) left before a long silence
        self._end = 0  # absolute sample index where everything rendered so far ends
        self._last_start = 0  # absolute sample index of the last rendered step's start
        self._work = Workspace()
        self._layers_key: tuple[str, bytes] | None = None  # the last step's Notes.layer, and its slots
        self._layers_slot = np.zeros(0, dtype=np.int64)
        self._layers_single = True
        #: Samples that arrived for a time already popped (or left behind), and were dropped.
        self.late_samples = 0

    @property
    def position_s(self) -> float:
        """Musical time up to which samples were popped, in seconds."""
        return self._origin / self.sample_rate

    @property
    def buffered_samples(self) -> int:
        """Samples held (rendered, not yet popped), per channel."""
        return self._filled + sum(chunk.shape[1] for _, chunk in self._finished)

    @property
    def buffer_capacity(self) -> int:
        """Size of the accumulation buffer in samples per channel; it grows only to the longest span held."""
        return int(self._buf.shape[1])

    def render(self, events: StepEvents) -> None:
        """Mix one step's notes and alarms into the buffer; steps come in order of start time."""
        if not isinstance(events, StepEvents):
            raise TypeError(f"Synth.render needs StepEvents, got {type(events).__name__}")
        sr = self.sample_rate
        start, duration = _finite(events.start_s, 0.0), max(_finite(events.duration_s, 0.0), 0.0)
        step_start = int(round(start * sr)) if abs(start) < _MAX_TIME_S else self._last_start
        self._last_start = max(self._last_start, step_start)
        self._end = max(self._end, step_start + int(round(min(duration, MAX_NOTE_S) * sr)))
        notes = self._note_batch(events)
        alarms = self._alarm_batch(events.alarms)
        firsts = [step_start] + [int(batch[1].min()) for batch in (notes, alarms) if batch is not None]
        self._skip_silence(min(firsts))
        if notes is not None:
            self._mix(*notes, self.attack_n, self.release_n)
        if alarms is not None:
            edge = int(round(ALARM_EDGE_S * sr))
            self._mix(*alarms, edge, edge)

    @property
    def ready_s(self) -> float:
        """Musical time before which samples are final (the start of the last rendered step), seconds."""
        return self._last_start / self.sample_rate

    def pop_ready(self, until_s: float | None = None, max_frames: int | None = None) -> np.ndarray:
        """The samples from ``position_s`` up to ``until_s`` (seconds; default ``ready_s``), at most
        ``max_frames`` of them (default: no limit; call again for the rest).

        Returns float32 ``(frames, audio_channels)`` in [-1, 1]; empty when nothing new is ready.
        """
        if until_s is None:
            until = self._last_start
        else:
            seconds = float(until_s)
            if not math.isfinite(seconds):
                raise ValueError(f"pop_ready(until_s) needs a finite time in seconds, got {until_s!r}")
            until = int(round(seconds * self.sample_rate))
        return self._pop(until, max_frames)

    def finish(self, max_frames: int | None = None) -> np.ndarray:
        """The remaining samples, to the end of the last step or of the last note's tail, at most
        ``max_frames`` of them (default: no limit; call until it returns no frames)."""
        self._last_start = max(self._last_start, self._end)
        return self._pop(max(self._end, self._base + self._filled), max_frames)

    # -- internals ----------------------------------------------------------------------------------------

    def _pop(self, until: int, max_frames: int | None) -> np.ndarray:
        origin, base = self._origin, self._base
        stop = max(until, origin)
        if max_frames is not None:
            if isinstance(max_frames, bool) or not isinstance(max_frames, (int, np.integer)) or max_frames < 1:
                raise ValueError(f"max_frames must be a whole number of frames >= 1 or None, got {max_frames!r}")
            stop = min(stop, origin + int(max_frames))
        if not self._finished and base == origin and stop <= base + self._filled:  # the usual case
            out = np.maximum(self._buf[:, :stop - origin], np.float32(-1.0))
            np.minimum(out, np.float32(1.0), out=out)
        else:
            out = np.zeros((self.audio_channels, stop - origin), dtype=np.float32)
            kept = []
            for start, chunk in self._finished + [(base, self._buf[:, :self._filled])]:
                low, high = max(start, origin), min(start + chunk.shape[1], stop)
                if high > low:
                    out[:, low - origin:high - origin] = chunk[:, low - start:high - start]
                if start + chunk.shape[1] > stop and start < base:  # a set-aside chunk not used up
                    kept.append((max(start, stop), chunk[:, max(0, stop - start):]))
            self._finished = kept
            np.clip(out, -1.0, 1.0, out=out)
        used = min(max(stop - base, 0), self._filled)
        keep = self._filled - used
        if used and keep:
            self._buf[:, :keep] = self._buf[:, used:self._filled]
        self._buf[:, keep:self._filled] = 0.0
        self._filled = keep
        self._origin = stop
        self._base = max(base + used, stop)
        if math.isnan(float(out.sum())):  # cannot happen with sanitised input; never let NaN out anyway
            np.nan_to_num(out, copy=False, nan=0.0)
        return out.T.copy()

    def _skip_silence(self, first: int) -> None:
        """Before writing from sample ``first`` on: leave a long silence out of the buffer (bounded memory)."""
        end = self._base + self._filled
        if first <= end:
            return
        if self._filled and first - end > self._buf.shape[1]:  # what is held is final: set it aside
            self._finished.append((self._base, self._buf[:, :self._filled].copy()))
            self._buf[:, :self._filled] = 0.0
            self._filled = 0
        if not self._filled:
            self._base = first

    def _note_batch(self, events: StepEvents) -> tuple[np.ndarray, ...] | None:
        """The step's playable notes as arrays for ``_mix``; non-finite values made harmless first."""
        notes, sr = events.notes, self.sample_rate
        layer = np.asarray(notes.layer).reshape(-1)
        start_s, duration_s, freq, amp = (np.asarray(getattr(notes, name), dtype=np.float64).reshape(-1)
                                          for name in ("start_s", "duration_s", "frequency_hz", "amplitude"))
        count = layer.shape[0]
        if not start_s.shape[0] == duration_s.shape[0] == freq.shape[0] == amp.shape[0] == count:
            raise ValueError(f"Notes arrays must have one entry per note; at step {events.step} got layer "
                             f"{count}, start_s {start_s.shape[0]}, duration_s {duration_s.shape[0]}, "
                             f"frequency_hz {freq.shape[0]}, amplitude {amp.shape[0]}")
        if count == 0:
            return None
        slot = self._slots(layer, events.step)
        ok = (np.abs(start_s) < _MAX_TIME_S) & (duration_s > 0) & (freq == freq)  # NaN compares unequal
        if not ok.all():  # placeholders for what will not sound, so that no arithmetic meets NaN or Inf
            start_s, duration_s = np.where(ok, start_s, 0.0), np.where(ok, duration_s, 0.0)
        starts = np.rint(start_s * sr).astype(np.int64)
        lengths = np.rint(np.minimum(duration_s, MAX_NOTE_S) * sr).astype(np.int64)
        ok &= lengths > 0
        inc = np.minimum(np.maximum(freq, MIN_FREQUENCY_HZ), self.max_frequency_hz) / sr  # cycles per sample
        phase0 = self._start_phases(slot, starts, lengths, inc, ok)
        ok &= amp > 0  # NaN amplitude is silence
        if not ok.all():
            if not ok.any():
                return None
            keep = np.flatnonzero(ok)
            slot, starts, lengths, inc, phase0, amp = (a[keep] for a in (slot, starts, lengths, inc, phase0, amp))
        gains = (self._gain_of_slot[:, slot] * np.minimum(amp, 1.0)).astype(np.float32)
        return self._wave_of_slot[slot], starts, lengths, inc, phase0, gains

    def _slots(self, layer: np.ndarray, step: int) -> np.ndarray:
        """Each note's voice slot, from its layer index; a step's layers are usually the last step's."""
        key = (layer.dtype.str, layer.tobytes())
        if key == self._layers_key:
            return self._layers_slot
        table = self._slot_of_layer
        slot = table[np.minimum(np.maximum(layer.astype(np.int64, copy=False), 0), table.shape[0] - 1)]
        if slot.min() < 0 or layer.min() < 0 or layer.max() >= table.shape[0]:
            raise ValueError(f"Notes.layer at step {step} names layers {sorted(set(layer.tolist()))} but "
                             f"the arrangement has voices for {sorted(v.index for v in self.arrangement.voices)}; "
                             "render events made with the same arrangement")
        slot.setflags(write=False)
        self._layers_key, self._layers_slot = key, slot
        self._layers_single = bool(np.bincount(slot).max() == 1)
        return slot

    def _start_phases(self, slot: np.ndarray, starts: np.ndarray, lengths: np.ndarray, inc: np.ndarray,
                      ok: np.ndarray) -> np.ndarray:
        """Each note's starting phase in cycles; with continuous phase, also advance each layer's phase."""
        if not self.continuous:
            return np.zeros(slot.shape[0], dtype=np.float64)
        advance = np.where(ok, inc * lengths, 0.0)
        single = self._layers_single if slot is self._layers_slot else bool(np.bincount(slot).max() == 1)
        if single:  # the usual case: one note per layer
            phase0 = self._phase[slot]
            self._phase[slot] = (phase0 + advance) % 1.0
            return phase0
        order = np.lexsort((starts, slot))  # by layer, then by time
        s_slot, s_adv = slot[order], advance[order]
        before = np.cumsum(s_adv) - s_adv
        first = np.ones(order.shape[0], dtype=bool)
        first[1:] = s_slot[1:] != s_slot[:-1]
        sorted_phase = self._phase[s_slot] + before - before[first][np.cumsum(first) - 1]
        phase0 = np.empty_like(sorted_phase)
        phase0[order] = sorted_phase % 1.0
        last = np.append(first[1:], True)
        self._phase[s_slot[last]] = (sorted_phase[last] + s_adv[last]) % 1.0
        return phase0

    def _alarm_batch(self, alarms: tuple[Alarm, ...]) -> tuple[np.ndarray, ...] | None:
        """Each alarm as two square notes (high, then low); alarms at the same moment sound once."""
        if not alarms:
            return None
        sr, spans = self.sample_rate, set()
        for alarm in alarms:
            start, duration = _finite(alarm.start_s, math.nan), _finite(alarm.duration_s, math.nan)
            if abs(start) < _MAX_TIME_S and duration > 0:  # NaN fails both tests
                spans.add((int(round(start * sr)), int(round(min(duration, MAX_NOTE_S) * sr))))
        span = np.array(sorted(s for s in spans if s[1] >= 2), dtype=np.int64).reshape(-1, 2)
        if span.shape[0] == 0:
            return None
        half = span[:, 1] // 2
        starts = np.concatenate([span[:, 0], span[:, 0] + half])
        lengths = np.concatenate([half, span[:, 1] - half])
        inc = np.repeat(np.minimum(ALARM_FREQUENCIES_HZ, self.max_frequency_hz) / sr, span.shape[0])
        centre = pan_gains(0.0, self.audio_channels) * ALARM_AMPLITUDE
        gains = np.repeat(centre[:, None], starts.shape[0], axis=1).astype(np.float32)
        codes = np.full(starts.shape[0], WAVE_CODES["square"])
        return codes, starts, lengths, inc, np.zeros_like(inc), gains

    def _mix(self, codes: np.ndarray, starts: np.ndarray, lengths: np.ndarray, inc: np.ndarray,
             phase0: np.ndarray, gains: np.ndarray, attack_n: int, release_n: int) -> None:
        """Add notes into the buffer; ``codes`` index ``WAVEFORMS``, ``gains`` is (channels, notes).

        Notes of one length are computed together and share one envelope. When they also start together
        (a chord) they are summed by matrix products; otherwise (notes one after another) each is a row of
        one array, added at its own place.
        """
        self._end = max(self._end, int((starts + lengths).max()))
        rel = starts - self._base
        self._reserve(int((rel + lengths).max()))
        if codes.shape[0] > 1 and (lengths[0] != lengths).any() or (codes[1:] < codes[:-1]).any() or \
                ((codes[1:] == codes[:-1]) & (rel[1:] < rel[:-1])).any():
            order = np.lexsort((rel, codes, lengths))  # by length, then waveform: each waveform a run of rows
            by_length = lengths[order]
            edges = (np.flatnonzero(by_length[1:] != by_length[:-1]) + 1).tolist()
            groups = [order[low:high] for low, high in zip([0] + edges, edges + [order.shape[0]])]
        else:  # one length, already by waveform and time (the usual case)
            groups = [np.arange(codes.shape[0])]
        for group in groups:
            length, at, group_codes, group_inc = int(lengths[group[0]]), rel[group], codes[group], inc[group]
            if at.min() < 0:  # samples before the buffer were popped already: too late to change
                self.late_samples += int(np.minimum(-at[at < 0], length).sum())
            chord = bool((at == at[0]).all())
            tile = max(BLOCK, _TILE_ELEMENTS // group.shape[0])
            for begin in range(max(0, -int(at.max())), length, tile):
                count = min(tile, length - begin)
                phase = phase0[group] if begin == 0 else (phase0[group] + group_inc * begin) % 1.0
                if chord:
                    block = chord_sum(group_codes, group_inc, phase, gains[:, group], count, self._work)
                    apply_envelope(block, begin, length, attack_n, release_n)
                    self._buf[:, at[0] + begin:at[0] + begin + count] += block
                    continue
                rows = oscillator_rows(group_codes, group_inc, phase, count, self._work)
                apply_envelope(rows, begin, length, attack_n, release_n)
                self._add_rows(rows, gains[:, group], at + begin)
            self._filled = max(self._filled, int(at.max()) + length)

    def _add_rows(self, rows: np.ndarray, gains: np.ndarray, offsets: np.ndarray) -> None:
        """Add each row (notes, count), times its gains (channels, notes), into the buffer at its offset.

        Notes one after another with no gap (the sequential layout) are one slice; notes that do not
        overlap, one scatter; only overlapping notes or notes partly before the buffer go one by one.
        """
        notes, count = rows.shape
        first = int(offsets[0])
        if notes == 1 or first >= 0 and bool((np.diff(offsets) == count).all()):  # back to back
            if first >= 0:
                self._buf[:, first:first + notes * count] += (gains[:, :, None] * rows).reshape(gains.shape[0], -1)
                return
        elif offsets.min() >= 0 and bool((np.diff(np.sort(offsets)) >= count).all()):  # apart: no sample twice
            where = (offsets[:, None] + np.arange(count)).reshape(-1)
            self._buf[:, where] += (gains[:, :, None] * rows).reshape(gains.shape[0], -1)
            return
        for row, offset in enumerate(offsets.tolist()):
            skip = max(0, -offset)
            if skip < count:
                self._buf[:, offset + skip:offset + count] += gains[:, row, None] * rows[row, skip:]

    def _reserve(self, needed: int) -> None:
        if needed > self._buf.shape[1]:
            grown = np.zeros((self.audio_channels, max(needed, 2 * self._buf.shape[1])), dtype=np.float32)
            grown[:, :self._filled] = self._buf[:, :self._filled]
            self._buf = grown


def render_events(arrangement: Arrangement, events: Iterable[StepEvents]) -> np.ndarray:
    """Render a whole run: float32 ``(frames, audio_channels)`` in [-1, 1], to the end of the last step."""
    synth = Synth(arrangement)
    chunks = []
    for step_events in events:
        synth.render(step_events)
        chunks.append(synth.pop_ready())
    chunks.append(synth.finish())
    return np.concatenate(chunks, axis=0)


def _finite(value: float, default: float) -> float:
    number = float(value)
    return number if math.isfinite(number) else default


def _check_arrangement(a: Arrangement) -> Arrangement:
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
