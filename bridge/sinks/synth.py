"""The built-in NumPy synth: ``StepEvents`` → audio samples, streaming, shared by the live and WAV sinks.

``Synth.render`` mixes one step's notes and alarms into an accumulation buffer at their musical times
(sample index ``round(start_s × sample_rate)``, length ``round(duration_s × sample_rate)`` samples);
``Synth.pop_ready`` hands out the samples no later step can change; ``Synth.finish`` hands out the rest.
Samples are float32, shape ``(frames, audio_channels)``, always finite and within [-1, 1].

Each layer has one oscillator (sine, triangle, square or saw) whose phase either restarts at 0 on every
note (``phase = "reset"``) or carries on from the end of the layer's previous note (``"continuous"``).
Sample ``k = q·_BLOCK + r`` of a note has phase ``coarse[q] + fine[r]`` cycles, so a step's notes of one
length are computed at once by matrix products, with no per-sample Python: as a (notes, samples) array
when they follow one another, and summed straight into (channels, samples) when they start together;
a chord of sines never even makes the per-note array (``Σ g·sin(a + b) = Σ g·sin a·cos b + g·cos a·sin b``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from bridge.events import WAVEFORMS, Alarm, Arrangement, StepEvents

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

_BLOCK = 128  # samples per coarse phase step
_TILE_ELEMENTS = 1 << 19  # notes × samples computed at once (keeps scratch arrays in cache, memory bounded)
_MAX_TIME_S = 1e9  # a note starting further than this from time zero is ignored (cannot be placed)
_WAVE_CODES = {name: code for code, name in enumerate(WAVEFORMS)}
_SINE, _TRIANGLE, _SQUARE = _WAVE_CODES["sine"], _WAVE_CODES["triangle"], _WAVE_CODES["square"]
# Per waveform code (see ``_waves``): phase offset in cycles, so that every waveform starts at 0 and rises
# (the square at +1), and the affine map from the computed row to the wave.
_OFFSETS = np.array([{"triangle": -0.25}.get(name, 0.0) for name in WAVEFORMS])
_SCALES = np.array([{"sine": 1.0, "triangle": -4.0, "square": 2.0, "saw": 2.0}[name] for name in WAVEFORMS])
_BIASES = np.array([{"triangle": 1.0, "square": -1.0}.get(name, 0.0) for name in WAVEFORMS])


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
        self._wave_of_slot = np.array([_WAVE_CODES[v.waveform] for v in a.voices], dtype=np.int64)
        self._gain_of_slot = np.stack([_pan_gains(v.pan, self.audio_channels) for v in a.voices], axis=1)
        self._phase = np.zeros(len(a.voices), dtype=np.float64)  # each layer's phase in cycles, [0, 1)
        self._buf = np.zeros((self.audio_channels, 4096), dtype=np.float32)
        self._origin = 0  # absolute sample index up to which samples were popped
        self._base = 0  # absolute sample index of self._buf[:, 0], >= self._origin; zeros in between
        self._filled = 0  # samples of self._buf that may be non-zero
        self._finished: list[tuple[int, np.ndarray]] = []  # (start, samples) left before a long silence
        self._end = 0  # absolute sample index where everything rendered so far ends
        self._last_start = 0  # absolute sample index of the last rendered step's start
        self._work = _Workspace()
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
            out = np.clip(self._buf[:, :stop - origin], -1.0, 1.0)
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
        table = self._slot_of_layer
        slot = table[np.minimum(np.maximum(layer.astype(np.int64, copy=False), 0), table.shape[0] - 1)]
        if slot.min() < 0 or layer.min() < 0 or layer.max() >= table.shape[0]:
            raise ValueError(f"Notes.layer at step {events.step} names layers {sorted(set(layer.tolist()))} but "
                             f"the arrangement has voices for {sorted(v.index for v in self.arrangement.voices)}; "
                             "render events made with the same arrangement")
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

    def _start_phases(self, slot: np.ndarray, starts: np.ndarray, lengths: np.ndarray, inc: np.ndarray,
                      ok: np.ndarray) -> np.ndarray:
        """Each note's starting phase in cycles; with continuous phase, also advance each layer's phase."""
        if not self.continuous:
            return np.zeros(slot.shape[0], dtype=np.float64)
        advance = np.where(ok, inc * lengths, 0.0)
        if np.bincount(slot).max() == 1:  # the usual case: one note per layer
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
        centre = _pan_gains(0.0, self.audio_channels) * ALARM_AMPLITUDE
        gains = np.repeat(centre[:, None], starts.shape[0], axis=1).astype(np.float32)
        codes = np.full(starts.shape[0], _WAVE_CODES["square"])
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
        order = np.lexsort((rel, codes, lengths))  # by length, then waveform: each waveform a run of rows
        by_length = lengths[order]
        for group in np.split(order, np.flatnonzero(by_length[1:] != by_length[:-1]) + 1):
            length, at, group_codes, group_inc = int(lengths[group[0]]), rel[group], codes[group], inc[group]
            if at.min() < 0:  # samples before the buffer were popped already: too late to change
                self.late_samples += int(np.minimum(-at[at < 0], length).sum())
            chord = bool((at == at[0]).all())
            tile = max(_BLOCK, _TILE_ELEMENTS // group.shape[0])
            for begin in range(max(0, -int(at.max())), length, tile):
                count = min(tile, length - begin)
                phase = phase0[group] if begin == 0 else (phase0[group] + group_inc * begin) % 1.0
                if chord:
                    block = _chord(group_codes, group_inc, phase, gains[:, group], count, self._work)
                    _apply_envelope(block, begin, length, attack_n, release_n)
                    self._buf[:, at[0] + begin:at[0] + begin + count] += block
                    continue
                rows = _voices(group_codes, group_inc, phase, count, self._work)
                _apply_envelope(rows, begin, length, attack_n, release_n)
                for row, (note, offset) in enumerate(zip(group.tolist(), (at + begin).tolist())):
                    skip = max(0, -offset)
                    if skip < count:
                        self._buf[:, offset + skip:offset + count] += gains[:, note, None] * rows[row, skip:]
            self._filled = max(self._filled, int(at.max()) + length)

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


def _block_phases(inc: np.ndarray, phase0: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Phase in cycles of sample ``k = q·_BLOCK + r`` as ``coarse[q, note] + fine[note, r]`` (mod 1).

    Both parts are wrapped to [0, 1): ``coarse`` (blocks, notes), ``fine`` (notes, ``_BLOCK``).
    """
    coarse = np.multiply.outer(np.arange(-(-count // _BLOCK), dtype=np.float64) * _BLOCK, inc)
    coarse += phase0
    fine = np.multiply.outer(inc, np.arange(_BLOCK, dtype=np.float64))
    return coarse - np.floor(coarse), fine - np.floor(fine)


def _waves(codes: np.ndarray, inc: np.ndarray, phase0: np.ndarray, count: int,
           work: _Workspace) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each note's oscillator up to an affine map: float32 rows ``(notes, count)`` and per-note ``scale``,
    ``bias`` such that ``wave = scale·row + bias``. ``codes`` must come sorted (one run per waveform).

    The phase ``x`` comes from a batched product (coarse + fine), then ``w = x - rint(x)`` in [-1/2, 1/2];
    sine ``sin 2πw``, saw ``2w``, square ``2·[w >= 0] - 1``, triangle ``1 - 4|w|`` (w a quarter cycle early).
    """
    coarse, fine = _block_phases(inc, phase0 + _OFFSETS[codes], count)
    (blocks, notes) = coarse.shape
    left = np.empty((notes, blocks, 2), dtype=np.float32)
    right = np.empty((notes, 2, _BLOCK), dtype=np.float32)
    left[:, :, 0], left[:, :, 1], right[:, 0, :], right[:, 1, :] = coarse.T, 1.0, 1.0, fine
    x = np.matmul(left, right, out=work.get("rows", (notes, blocks, _BLOCK))).reshape(notes, -1)[:, :count]
    np.subtract(x, np.rint(x, out=work.get("wrapped", x.shape)), out=x)
    edges = (np.flatnonzero(codes[1:] != codes[:-1]) + 1).tolist()
    for low, high in zip([0] + edges, edges + [notes]):  # one run of rows per waveform
        code, w = int(codes[low]), x[low:high]
        if code == _SINE:
            w *= np.float32(2.0 * np.pi)
            np.sin(w, out=w)
        elif code == _SQUARE:
            np.greater_equal(w, np.float32(0.0), out=w, casting="unsafe")
        elif code == _TRIANGLE:
            np.abs(w, out=w)
    return x, _SCALES[codes], _BIASES[codes]


def _voices(codes: np.ndarray, inc: np.ndarray, phase0: np.ndarray, count: int, work: _Workspace) -> np.ndarray:
    """Each note's oscillator, float32 ``(notes, count)``, amplitude 1, from phase ``phase0`` (cycles)."""
    rows, scale, bias = _waves(codes, inc, phase0, count, work)
    if (scale != 1.0).any() or bias.any():
        rows *= scale.astype(np.float32)[:, None]
        rows += bias.astype(np.float32)[:, None]
    return rows


def _chord(codes: np.ndarray, inc: np.ndarray, phase0: np.ndarray, gains: np.ndarray, count: int,
           work: _Workspace) -> np.ndarray:
    """Notes starting together, summed: float32 ``(channels, count)`` = ``Σ_i gains[:, i]·wave_i``.

    Sines need no per-note array: ``Σ g·sin 2π(a + b) = Σ (g·sin 2πa)·cos 2πb + (g·cos 2πa)·sin 2πb`` is
    one matrix product over (block, note) × (note, offset in block). The other waveforms are made as rows
    (see ``_waves``) and summed by a matrix product with the gains. ``codes`` must come sorted, sines first.
    """
    sines = int(np.searchsorted(codes, _SINE, side="right"))
    parts = []
    if sines < codes.shape[0]:
        rows, scale, bias = _waves(codes[sines:], inc[sines:], phase0[sines:], count, work)
        others = gains[:, sines:]
        parts.append((others * scale).astype(np.float32) @ rows + (others @ bias).astype(np.float32)[:, None])
    if sines:
        coarse, fine = _block_phases(inc[:sines], phase0[:sines], count)
        (blocks, notes), channels = coarse.shape, gains.shape[0]
        a = (coarse * (2.0 * np.pi)).astype(np.float32)
        b = (fine * (2.0 * np.pi)).astype(np.float32)
        left = np.empty((channels, blocks, 2, notes), dtype=np.float32)
        np.multiply(np.sin(a), gains[:, None, :sines], out=left[:, :, 0, :])
        np.multiply(np.cos(a), gains[:, None, :sines], out=left[:, :, 1, :])
        right = np.empty((2, notes, _BLOCK), dtype=np.float32)
        np.cos(b, out=right[0])
        np.sin(b, out=right[1])
        product = left.reshape(channels * blocks, 2 * notes) @ right.reshape(2 * notes, _BLOCK)
        parts.append(product.reshape(channels, blocks * _BLOCK)[:, :count])
    return parts[0] if len(parts) == 1 else parts[0] + parts[1]


def _apply_envelope(block: np.ndarray, begin: int, length: int, attack_n: int, release_n: int) -> None:
    """Multiply samples ``begin …`` of a note of ``length`` by its envelope, in place.

    Gain at sample ``k``: ``min(1, k / attack_n, (length - 1 - k) / release_n)``: from exactly 0 at the
    first sample up, and down to exactly 0 at the last.
    """
    end = begin + block.shape[1]
    if attack_n + release_n > length:  # a note too short for both ramps: the lower of the two
        k = np.arange(begin, end, dtype=np.float64)
        gain = np.ones(k.shape[0])
        if attack_n:
            np.minimum(gain, k / attack_n, out=gain)
        if release_n:
            np.minimum(gain, (length - 1 - k) / release_n, out=gain)
        block *= np.maximum(gain, 0.0).astype(np.float32)
        return
    if attack_n and begin < attack_n:
        stop = min(end, attack_n)
        block[:, :stop - begin] *= np.arange(begin, stop, dtype=np.float32) / np.float32(attack_n)
    if release_n and end > length - release_n:
        low = max(begin, length - release_n)
        block[:, low - begin:] *= (np.float32(length - 1) - np.arange(low, end, dtype=np.float32)) / \
            np.float32(release_n)


class _Workspace:
    """Scratch arrays reused from step to step: fresh large arrays cost more than the arithmetic on them."""

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """A float32 array of ``shape`` (contents undefined), backed by the named scratch array."""
        size = math.prod(shape)
        array = self._arrays.get(name)
        if array is None or array.shape[0] < size:
            array = self._arrays[name] = np.empty(max(size, 2 * (0 if array is None else array.shape[0])),
                                                  dtype=np.float32)
        return array[:size].reshape(shape)


def _pan_gains(pan: float, audio_channels: int) -> np.ndarray:
    """Per-channel gains: mono 1; stereo constant power, pan -1 (left) … 1 (right)."""
    if audio_channels == 1:
        return np.ones(1)
    return np.array([math.sin((1.0 - pan) * math.pi / 4.0), math.sin((1.0 + pan) * math.pi / 4.0)])


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
