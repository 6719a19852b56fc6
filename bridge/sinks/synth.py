"""The built-in NumPy synth: ``StepEvents`` → audio samples, streaming, shared by the live and WAV sinks.

``Synth.render`` mixes one step's notes and alarms into an accumulation buffer at their musical times
(sample index ``round(start_s × sample_rate)``, length ``round(duration_s × sample_rate)`` samples);
``Synth.render_many`` does the same for many steps at once, with the same samples, in a few NumPy calls
per chunk instead of per step (the offline path); ``Synth.pop_ready`` hands out the samples no later
step can change; ``Synth.finish`` hands out the rest. Samples are float32, shape
``(frames, audio_channels)``, always finite, and never above ``PEAK`` (-1 dBFS) in magnitude: the final
mix goes through a gentle limiter, the identity up to ``LIMIT_KNEE`` and a smooth bend toward ``PEAK``
above it (``soft_limit``), so a chord of many loud layers never clips.

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

from bridge.events import Arrangement, StepEvents
from bridge.sinks.mixing import add_notes
from bridge.sinks.playable import (ALARM_AMPLITUDE, ALARM_FREQUENCIES_HZ, MAX_NOTE_S, MAX_TIME_S, MIN_FREQUENCY_HZ,
                                   NOTHING_BEFORE, PHASES, BadStep, NoteBatch, Voicing, check_arrangement)
from bridge.sinks.voices import Workspace, one_blas_thread

__all__ = ["ALARM_AMPLITUDE", "ALARM_EDGE_S", "ALARM_FREQUENCIES_HZ", "CHUNK_STEPS", "LIMIT_KNEE", "MAX_NOTE_S",
           "MIN_FREQUENCY_HZ", "PEAK", "PHASES", "Synth", "render_events", "soft_limit"]

#: The loudest sample the synth gives out, in magnitude: -1 dBFS.
PEAK = 10.0 ** (-1.0 / 20.0)
#: Samples up to this magnitude pass the limiter unchanged (every sample of ``perone2019``, whose tones are 0.1).
LIMIT_KNEE = 0.5


def soft_limit(samples: np.ndarray) -> np.ndarray:
    """The limiter, in place on float32 ``samples``: the identity up to ``LIMIT_KNEE`` in magnitude; above it
    ``knee + (PEAK - knee) × tanh((|x| - knee) / (PEAK - knee))``, sign kept: slope 1 at the knee, and never
    above ``PEAK``. It looks at each sample alone, so where a run is cut into chunks does not matter."""
    magnitude = np.abs(samples)
    if magnitude.max(initial=0.0) <= LIMIT_KNEE:  # the usual case (with a NaN it is False: the bend goes on)
        return samples
    over = magnitude > LIMIT_KNEE
    head = np.float32(PEAK - LIMIT_KNEE)
    bent = np.float32(LIMIT_KNEE) + head * np.tanh((magnitude[over] - np.float32(LIMIT_KNEE)) / head)
    samples[over] = np.copysign(np.minimum(bent, np.float32(PEAK)), samples[over])
    return samples

#: Attack and release of each half of the alarm, in seconds.
ALARM_EDGE_S = 0.002
#: Steps per ``render_many`` call in ``render_events``: enough to spread the per-call cost thin.
CHUNK_STEPS = 64


class Synth:
    """A streaming renderer of step events; not thread-safe (one thread renders and pops).

    Args:
        arrangement: the run's layout: sample rate, channels, envelope, phase mode, voices (waveform, pan).
    """

    def __init__(self, arrangement: Arrangement) -> None:
        a = self.arrangement = check_arrangement(arrangement)
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
        here, after the steps before it were rendered. (Nothing is popped in between: where a caller
        pops after every step, a step starting before an earlier one finds part of its time final
        already; ``WavSink.send_many`` renders such a step apart.)
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
        """Place the steps' notes against the buffer's base, as ``render`` of each step in turn would."""
        notes = self._voicing.notes(steps)  # raises BadStep before anything changes
        batches = (notes, self._voicing.alarms(steps), self._voicing.alarms(steps, spikes=True))
        if len(steps) == 1:  # one step (live): plain numbers cost less than arrays
            firsts, highs = [self._step_start(steps[0])], []
            for batch in batches:
                if batch is not None:
                    firsts.append(int(batch.starts.min()))
                    highs.append([int((batch.starts + batch.lengths).max())])
            pending = self._grow_step_by_step(batches, [min(firsts)], highs)
        else:
            starts = self._step_starts(steps)
            spans = [batch.step_spans(len(steps)) for batch in batches if batch is not None]
            for low, _ in spans:
                np.minimum(starts, low, out=starts)
            pending = 0 if self._grow_for_chunk(starts, [high for _, high in spans]) else \
                self._grow_step_by_step(batches, starts.tolist(), [high.tolist() for _, high in spans])
        self._mix_steps(batches, pending, len(steps))

    def _step_start(self, step: StepEvents) -> int:
        """``_step_starts`` of one step, in plain numbers."""
        sr = self.sample_rate
        start, duration = _finite(step.start_s, 0.0), max(_finite(step.duration_s, 0.0), 0.0)
        first = int(round(start * sr)) if abs(start) < MAX_TIME_S else self._last_start
        self._last_start = max(self._last_start, first)
        self._end = max(self._end, first + int(round(min(duration, MAX_NOTE_S) * sr)))
        return first

    def _step_starts(self, steps: list[StepEvents]) -> np.ndarray:
        """Each step's first sample, int64; also moves on ``ready_s`` and the end of the run.

        A non-finite start or duration counts as 0; a step too far from time zero to place starts where
        the last step before it started.
        """
        sr = self.sample_rate
        starts = np.array([step.start_s for step in steps], dtype=np.float64)
        durations = np.array([step.duration_s for step in steps], dtype=np.float64)
        starts[~np.isfinite(starts)] = 0.0
        durations[~np.isfinite(durations) | (durations < 0.0)] = 0.0
        placed = np.where(np.abs(starts) < MAX_TIME_S, np.rint(starts * sr), -np.inf)
        running = np.maximum.accumulate(np.append(float(self._last_start), placed))
        firsts = np.where(placed > -np.inf, placed, running[:-1]).astype(np.int64)
        ends = firsts + np.rint(np.minimum(durations, MAX_NOTE_S) * sr).astype(np.int64)
        self._last_start = int(running[-1])
        self._end = max(self._end, int(ends.max()))
        return firsts

    def _grow_for_chunk(self, firsts: np.ndarray, highs: list[np.ndarray]) -> bool:
        """Grow the buffer for the whole chunk at once, as step by step would, if no step of it leaves
        a silence out of the buffer (the usual case); False, changing nothing, otherwise.

        ``firsts`` is each step's first sample; ``highs`` per step the sample after its last note, then
        after its last alarm, then after its last spike alarm (a large negative number where it has none).
        """
        base, capacity = self._base, self._buf.shape[1]
        top = highs[0] if len(highs) == 1 else np.maximum.reduce(highs) if highs else \
            np.full(firsts.shape[0], NOTHING_BEFORE)
        held = np.maximum.accumulate(np.append(base + self._filled, top))[:-1]  # end of what each step finds held
        if not bool(((firsts <= held) | ((held > base) & (firsts - held <= capacity))).all()):
            return False
        if highs:
            needs = (np.stack(highs, axis=1).reshape(-1) - base).tolist()  # in the order render() reserves
            record = capacity
            for need in needs:
                if need > record:  # room for a need is made when it first exceeds the buffer
                    record = need
                    if need > capacity:
                        capacity = max(need, 2 * capacity)
            self._grow_to(capacity)
        return True

    def _grow_step_by_step(self, batches: tuple[NoteBatch | None, ...], firsts: list[int],
                           highs: list[list[int]]) -> int:
        """Follow the chunk step by step: before a step that leaves a long silence out of the buffer
        (``_skip_silence``, which moves the buffer's base), mix the steps before it; grow the buffer as
        each step would. Returns the first step not mixed yet."""
        base, filled, pending = self._base, self._filled, 0
        for index, first in enumerate(firsts):
            held_end = base + filled
            if first > held_end and (not filled or first - held_end > self._buf.shape[1]):
                self._mix_steps(batches, pending, index)
                self._skip_silence(first)
                base, filled, pending = self._base, self._filled, index
            for high in highs:  # notes, then alarms, then spikes, as one step's render reserves room
                if high[index] > NOTHING_BEFORE:
                    self._reserve(high[index] - base)
                    filled = max(filled, high[index] - base)
        return pending

    def _mix_steps(self, batches: tuple[NoteBatch | None, ...], low: int, high: int) -> None:
        """Mix the notes, then the alarms and the spike alarms (``batches``), of steps ``low`` to ``high - 1``
        of the chunk."""
        if low == high:
            return
        for index, batch in enumerate(batches):
            part = batch.of_steps(low, high) if batch is not None else None
            if part is not None:
                edges = (self.attack_n, self.release_n) if index == 0 else (self.alarm_edge_n, self.alarm_edge_n)
                self._mix(part, *edges)

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
            out = soft_limit(self._buf[:, :stop - origin].copy())
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
            soft_limit(out)
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
        """Add notes into the buffer (``bridge.sinks.mixing``), counting the samples that come too late."""
        rel = batch.starts - self._base
        lengths = batch.lengths
        top = int((rel + lengths).max())
        self._end = max(self._end, top + self._base)
        self._reserve(top)
        if rel.min() < 0:  # samples before the buffer were popped already: too late to change
            late = rel < 0
            self.late_samples += int(np.minimum(-rel[late], lengths[late]).sum())
        add_notes(self._buf, batch, rel, attack_n, release_n, self._work, self._hold_blas)
        self._filled = max(self._filled, top)

    def _hold_blas(self) -> None:
        """Hold BLAS to one thread until the chunk is rendered (once per chunk, and only if it has chords)."""
        if self._blas is not None:
            self._blas.enter_context(one_blas_thread())
            self._blas = None

    def _reserve(self, needed: int) -> None:
        if needed > self._buf.shape[1]:
            self._grow_to(max(needed, 2 * self._buf.shape[1]))

    def _grow_to(self, capacity: int) -> None:
        if capacity > self._buf.shape[1]:
            grown = np.zeros((self.audio_channels, capacity), dtype=np.float32)
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


def _finite(value: float, default: float) -> float:
    number = float(value)
    return number if math.isfinite(number) else default
