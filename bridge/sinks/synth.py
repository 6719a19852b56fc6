"""The built-in NumPy synth: ``StepEvents`` → audio samples, streaming, shared by the live and WAV sinks.

``Synth.render`` mixes one step's notes and alarms into an accumulation buffer at their musical times
(sample index ``round(start_s × sample_rate)``, length ``round(duration_s × sample_rate)`` samples);
``Synth.render_many`` does the same for many steps at once, with the same samples, in a few NumPy calls
per chunk instead of per step (the offline path); ``Synth.pop_ready`` hands out the samples no later
step can change; ``Synth.finish`` hands out the rest. Samples are float32, shape
``(frames, audio_channels)``, always finite and within [-1, 1].

Each layer has one oscillator (sine, triangle, square or saw) whose phase either restarts at 0 on every
note (``phase = "reset"``) or carries on from the end of the layer's previous note (``"continuous"``).
Notes of one length are computed at once (``bridge.sinks.voices``): as a (notes, samples) array when
they follow one another, and summed straight into (channels, samples) when a step's notes start
together (a chord).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Sequence

import numpy as np

from bridge.events import WAVEFORMS, Arrangement, StepEvents
from bridge.sinks.playable import (ALARM_AMPLITUDE, ALARM_FREQUENCIES_HZ, MAX_NOTE_S, MAX_TIME_S,
                                   MIN_FREQUENCY_HZ, BadStep, NoteBatch, Voicing)
from bridge.sinks.voices import BLOCK, Workspace, apply_envelope, chord_sums, one_blas_thread, oscillator_rows

__all__ = ["ALARM_AMPLITUDE", "ALARM_EDGE_S", "ALARM_FREQUENCIES_HZ", "CHUNK_STEPS", "MAX_NOTE_S",
           "MIN_FREQUENCY_HZ", "PHASES", "Synth", "render_events"]

#: Phase handling of the oscillators.
PHASES = ("reset", "continuous")
#: Attack and release of each half of the alarm, in seconds.
ALARM_EDGE_S = 0.002
#: Steps per ``render_many`` call in ``render_events``: enough to spread the per-call cost thin.
CHUNK_STEPS = 64

_TILE_ELEMENTS = 1 << 19  # notes × samples computed at once (keeps scratch arrays in cache, memory bounded)
_CHORD_ELEMENTS = 1 << 19  # chords × notes × samples computed in one call (several chords share its fixed cost)
_ROW_TILE = 1 << 14  # samples of a note computed at once when notes follow one another (a multiple of BLOCK)


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
        self.alarm_edge_n = int(round(ALARM_EDGE_S * sr))
        self._voicing = Voicing(a)
        self._buf = np.zeros((self.audio_channels, 4096), dtype=np.float32)
        self._origin = 0  # absolute sample index up to which samples were popped
        self._base = 0  # absolute sample index of self._buf[:, 0], >= self._origin; zeros in between
        self._filled = 0  # samples of self._buf that may be non-zero
        self._finished: list[tuple[int, np.ndarray]] = []  # (start, samples) left before a long silence
        self._end = 0  # absolute sample index where everything rendered so far ends
        self._last_start = 0  # absolute sample index of the last rendered step's start
        self._work = Workspace()
        self._blas: contextlib.ExitStack | None = None  # holds BLAS to one thread while a chunk renders
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
        self._render_steps([events])

    def render_many(self, events: Sequence[StepEvents]) -> None:
        """Mix many steps into the buffer: the same samples as ``render`` of each in turn, faster.

        Steps come in order of start time. A step that ``render`` would refuse raises the same error
        here, after the steps before it were rendered.
        """
        steps = list(events)
        for index, step in enumerate(steps):
            if not isinstance(step, StepEvents):
                self._render_steps(steps[:index])
                raise TypeError(f"Synth.render_many needs a sequence of StepEvents; item {index} is a "
                                f"{type(step).__name__}")
        self._render_steps(steps)

    # -- rendering ----------------------------------------------------------------------------------------

    def _render_steps(self, steps: list[StepEvents]) -> None:
        """Render checked steps; on a step with bad notes, render the ones before it and raise its error."""
        if not steps:
            return
        try:
            with contextlib.ExitStack() as blas:
                self._blas = blas
                self._render_chunk(steps)
        except BadStep as bad:
            if bad.index:
                self._render_steps(steps[:bad.index])
            raise bad.error from None
        finally:
            self._blas = None

    def _render_chunk(self, steps: list[StepEvents]) -> None:
        """Place the steps' notes against the buffer's base, as ``render`` of each step in turn would.

        Rendering one step may first leave a long silence out of the buffer (``_skip_silence``), which
        moves the buffer's base; the chunk is mixed in runs of steps between such moves, the buffer grown
        step by step as one step at a time would grow it.
        """
        notes = self._voicing.notes(steps)  # raises BadStep before anything changes
        alarms = self._voicing.alarms(steps)
        sr, count = self.sample_rate, len(steps)
        firsts = []
        for step in steps:
            start, duration = _finite(step.start_s, 0.0), max(_finite(step.duration_s, 0.0), 0.0)
            step_start = int(round(start * sr)) if abs(start) < MAX_TIME_S else self._last_start
            self._last_start = max(self._last_start, step_start)
            self._end = max(self._end, step_start + int(round(min(duration, MAX_NOTE_S) * sr)))
            firsts.append(step_start)
        spans = [batch.step_spans(count) if batch is not None else ([None] * count, [None] * count)
                 for batch in (notes, alarms)]
        base, filled, pending = self._base, self._filled, 0
        for index in range(count):
            first = min([firsts[index]] + [low[index] for low, _ in spans if low[index] is not None])
            held_end = base + filled
            if first > held_end and (not filled or first - held_end > self._buf.shape[1]):
                self._mix_steps(notes, alarms, pending, index)
                self._skip_silence(first)
                base, filled, pending = self._base, self._filled, index
            for _, high in spans:  # notes, then alarms, as one step's render reserves room
                if high[index] is not None:
                    self._reserve(high[index] - base)
                    filled = max(filled, high[index] - base)
        self._mix_steps(notes, alarms, pending, count)

    def _mix_steps(self, notes: NoteBatch | None, alarms: NoteBatch | None, low: int, high: int) -> None:
        """Mix the notes, then the alarms, of steps ``low`` to ``high - 1`` of the chunk."""
        if low == high:
            return
        for batch, attack_n, release_n in ((notes, self.attack_n, self.release_n),
                                           (alarms, self.alarm_edge_n, self.alarm_edge_n)):
            part = batch.of_steps(low, high) if batch is not None else None
            if part is not None:
                self._mix(part, attack_n, release_n)

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

    def _mix(self, batch: NoteBatch, attack_n: int, release_n: int) -> None:
        """Add notes into the buffer, in the order one step at a time would add them.

        A step's notes are taken by length, then waveform, then time. Notes of one step and one length
        that start together (a chord) are summed by matrix products, chord by chord; all other notes of
        one length, whatever their step, are computed as rows of one array and added where they belong.
        """
        codes, lengths, inc, phase0, gains, step = (batch.codes, batch.lengths, batch.inc, batch.phase0,
                                                    batch.gains, batch.step)
        rel = batch.starts - self._base
        ends = rel + lengths
        self._end = max(self._end, int(ends.max()) + self._base)
        self._reserve(int(ends.max()))
        if rel.min() < 0:  # samples before the buffer were popped already: too late to change
            late = rel < 0
            self.late_samples += int(np.minimum(-rel[late], lengths[late]).sum())
        if codes.shape[0] > 1 and not _in_order(step, lengths, codes, rel):
            order = np.lexsort((rel, codes, lengths, step))
            codes, rel, lengths, inc, phase0, step = (a[order] for a in (codes, rel, lengths, inc, phase0, step))
            gains = gains[:, order]
        chords, rows = _chords(step, lengths, rel)
        if chords:
            self._mix_chords(chords, codes, rel, lengths, inc, phase0, gains, attack_n, release_n)
        if rows is not None:
            if rows.shape[0] != codes.shape[0]:
                codes, rel, lengths, inc, phase0 = (a[rows] for a in (codes, rel, lengths, inc, phase0))
                gains = gains[:, rows]
            distinct = np.unique(lengths).tolist()
            for length in distinct:
                pick = slice(None) if len(distinct) == 1 else np.flatnonzero(lengths == length)
                self._mix_rows(codes[pick], rel[pick], inc[pick], phase0[pick], gains[:, pick], length,
                               attack_n, release_n)
        self._filled = max(self._filled, int(ends.max()))

    def _mix_chords(self, chords: list[tuple[int, int]], codes: np.ndarray, rel: np.ndarray, lengths: np.ndarray,
                    inc: np.ndarray, phase0: np.ndarray, gains: np.ndarray, attack_n: int, release_n: int) -> None:
        """Add chords (index ranges of notes starting together, ``codes`` sorted in each), each summed.

        Chords of one length and the same waveforms are computed together, in tiles of samples that
        depend only on the chord's size, so a chord sounds the same whichever chords come with it.
        """
        if self._blas is not None:  # the products run on one BLAS thread, set once per chunk
            self._blas.enter_context(one_blas_thread())
            self._blas = None
        alike: dict[tuple[int, int, bytes], list[int]] = {}
        for low, high in chords:
            alike.setdefault((int(lengths[low]), high - low, codes[low:high].tobytes()), []).append(low)
        for (length, notes, _), lows in alike.items():
            pick = np.array(lows)[:, None] + np.arange(notes)
            chord_codes, chord_inc, chord_phase0 = codes[lows[0]:lows[0] + notes], inc[pick], phase0[pick]
            chord_gains = gains[:, pick].transpose(1, 0, 2)
            at = rel[lows].tolist()
            tile = max(BLOCK, _TILE_ELEMENTS // notes)
            per_call = max(1, _CHORD_ELEMENTS // (notes * min(tile, length)))
            for begin in range(0, length, tile):
                count = min(tile, length - begin)
                if begin + count + max(at) <= 0:  # every chord's tile was popped already
                    continue
                phase = chord_phase0 if begin == 0 else (chord_phase0 + chord_inc * begin) % 1.0
                for first in range(0, len(at), per_call):
                    part = slice(first, first + per_call)
                    block = chord_sums(chord_codes, chord_inc[part], phase[part], chord_gains[part], count, self._work)
                    apply_envelope(block, begin, length, attack_n, release_n)
                    for sums, offset in zip(block, at[part]):
                        skip = max(0, -(offset + begin))
                        if skip < count:
                            self._buf[:, offset + begin + skip:offset + begin + count] += sums[:, skip:]

    def _mix_rows(self, codes: np.ndarray, rel: np.ndarray, inc: np.ndarray, phase0: np.ndarray,
                  gains: np.ndarray, length: int, attack_n: int, release_n: int) -> None:
        """Add notes of one ``length`` at buffer offsets ``rel``, each on its own, in the order given.

        A note's samples are computed in tiles of ``_ROW_TILE`` from its start, so they do not depend on
        which other notes are computed with it.
        """
        per_call = max(1, _TILE_ELEMENTS // min(length, _ROW_TILE))
        for low in range(0, codes.shape[0], per_call):
            part = slice(low, low + per_call)
            c, r, i, p, g = codes[part], rel[part], inc[part], phase0[part], gains[:, part]
            by_wave = back = None
            if c.shape[0] > 1 and (c[1:] < c[:-1]).any():  # the oscillators want one run per waveform
                by_wave = np.argsort(c, kind="stable")
                back = np.empty_like(by_wave)
                back[by_wave] = np.arange(by_wave.shape[0])
                c, i, p = c[by_wave], i[by_wave], p[by_wave]
            for begin in range(max(0, -int(r.max())) // _ROW_TILE * _ROW_TILE, length, _ROW_TILE):
                count = min(_ROW_TILE, length - begin)
                phase = p if begin == 0 else (p + i * begin) % 1.0
                rows = oscillator_rows(c, i, phase, count, self._work)
                apply_envelope(rows, begin, length, attack_n, release_n)
                self._add_rows(rows if back is None else rows[back], g, r + begin)

    def _add_rows(self, rows: np.ndarray, gains: np.ndarray, offsets: np.ndarray) -> None:
        """Add each row (notes, count), times its gains (channels, notes), into the buffer at its offset.

        Rows go in the order given; a run of notes one after another with no gap is one slice. Samples
        before the buffer (already popped) are left out.
        """
        notes, count = rows.shape
        product = (gains[:, :, None] * rows).reshape(gains.shape[0], notes * count)
        at = offsets.tolist()
        if at[0] >= 0 and min(at) >= 0:
            breaks = (np.flatnonzero(np.diff(offsets) != count) + 1).tolist() if notes > 1 else []
            for low, high in zip([0] + breaks, breaks + [notes]):
                self._buf[:, at[low]:at[low] + (high - low) * count] += product[:, low * count:high * count]
            return
        for row, offset in enumerate(at):
            skip = max(0, -offset)
            if skip < count:
                self._buf[:, offset + skip:offset + count] += product[:, row * count + skip:(row + 1) * count]

    def _reserve(self, needed: int) -> None:
        if needed > self._buf.shape[1]:
            grown = np.zeros((self.audio_channels, max(needed, 2 * self._buf.shape[1])), dtype=np.float32)
            grown[:, :self._filled] = self._buf[:, :self._filled]
            self._buf = grown


def render_events(arrangement: Arrangement, events: Iterable[StepEvents]) -> np.ndarray:
    """Render a whole run: float32 ``(frames, audio_channels)`` in [-1, 1], to the end of the last step."""
    synth = Synth(arrangement)
    chunks, pending = [], []
    for step_events in events:
        pending.append(step_events)
        if len(pending) == CHUNK_STEPS:
            synth.render_many(pending)
            chunks.append(synth.pop_ready())
            pending = []
    synth.render_many(pending)
    chunks.append(synth.finish())
    return np.concatenate(chunks, axis=0)


def _in_order(step: np.ndarray, lengths: np.ndarray, codes: np.ndarray, rel: np.ndarray) -> bool:
    """Whether the notes already come by step, then length, then waveform, then time."""
    same_step = step[1:] == step[:-1]
    d_length, d_code = lengths[1:] - lengths[:-1], codes[1:] - codes[:-1]
    backwards = (d_length < 0) | (d_length == 0) & ((d_code < 0) | (d_code == 0) & (rel[1:] < rel[:-1]))
    return not bool((same_step & backwards).any())


def _chords(step: np.ndarray, lengths: np.ndarray, rel: np.ndarray) -> tuple[list[tuple[int, int]],
                                                                             np.ndarray | None]:
    """Split notes sorted by step and length into chords and the rest.

    Returns the (low, high) index ranges of the chords (two or more notes of one step and one length,
    all at one start), and the indices of the other notes (None when there are none).
    """
    notes = step.shape[0]
    if notes == 1:
        return [], np.zeros(1, dtype=np.int64)
    new_group = np.empty(notes, dtype=bool)
    new_group[0] = True
    np.not_equal(step[1:], step[:-1], out=new_group[1:])
    new_group[1:] |= lengths[1:] != lengths[:-1]
    apart = ~new_group[1:] & (rel[1:] != rel[:-1])
    if not new_group[1:].any():  # one group: a chord, or no chord at all
        return ([(0, notes)], None) if not apart.any() else ([], np.arange(notes))
    group = np.cumsum(new_group) - 1
    starts = np.flatnonzero(new_group)
    size = np.diff(np.append(starts, notes))
    chord = size >= 2
    chord[group[1:][apart]] = False
    if not chord.any():
        return [], np.arange(notes)
    ranges = [(low, low + n) for low, n in zip(starts[chord].tolist(), size[chord].tolist())]
    rest = np.flatnonzero(~chord[group])
    return ranges, (rest if rest.shape[0] else None)


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
