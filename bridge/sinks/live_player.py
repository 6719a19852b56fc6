"""The device-free half of the live synth: ``LivePlayer`` turns steps into frames of a ``LiveBuffer`` that an
audio callback reads. ``bridge.sinks.audio.AudioSink`` puts a PyAudio stream on it.

Timing. The output stream keeps its own clock: the frames its callback has handed to the device so far
(``frames_played``). A step that arrives is scheduled to start ``latency_s`` after that play position, or,
when the previous step is still queued (it ends at least ``latency_s / 2`` ahead of the play position), right
where the previous step ends: steps that arrive faster than their musical length, or paced at it (replay),
are queued back to back at musical spacing, so they sound like the rendered WAV file (gaps in ``start_s``,
left by steps that rate control folded away, are closed up). A step
that would start more than ``max_backlog_s`` after "now + latency" is dropped and counted
(``steps_dropped``), so a run that trains faster than it sounds keeps the listener at most that far behind.

The synth (``bridge.sinks.synth.Synth``, the same voices as the WAV sink) renders the events unmodified, in
musical time; each step's samples are copied into a ring buffer at an integer frame shift (the step's stream
start minus its first musical frame), so a queued run is sample for sample the offline rendering.

Underruns. Before a step is rendered, the span of stream frames where its notes (and alarms) sound is
reserved. An audio callback that must hand out reserved frames not written yet plays silence there and
counts one underrun (``underruns``; the frames in ``underrun_frames``); sound that arrives afterwards for
frames already played is dropped (``late_frames``: frames that were not silent). Silence between steps,
while no step is due, is not an underrun. With ``latency_s`` longer than a step takes to render there are
none. The callback never waits on the renderer: it holds one lock only while it copies one buffer.
"""
from __future__ import annotations

import logging
import math
import threading
from typing import Any

import numpy as np

from bridge.events import Arrangement, StepEvents
from bridge.sinks.synth import Synth

log = logging.getLogger("bridge")

_WRITE_BLOCK = 4096  # frames added to the ring buffer per lock hold
_POP_FRAMES = 1 << 16  # frames taken from the synth at once (bounds memory across long musical gaps)
_SPARE_S = 1.0  # ring buffer room beyond latency + backlog + two steps, seconds (it grows if ever needed)
_PA_CONTINUE = 0  # PortAudio's paContinue, what the callback returns


class LiveBuffer:
    """Audio laid out on the stream's frame clock: written by one thread, read by the audio callback.

    Frame positions are absolute: frame 0 is the first frame the callback handed out. Writes add (steps may
    overlap); ``read`` hands out the next frames, silence where nothing was written, and clears them. See the
    module docstring for what counts as an underrun.

    Args:
        audio_channels: samples per frame (1 or 2).
        capacity_frames: frames held ahead of the play position (>= 1); grows when a write needs more.
    """

    def __init__(self, audio_channels: int, capacity_frames: int) -> None:
        for field, value in (("audio_channels", audio_channels), ("capacity_frames", capacity_frames)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"LiveBuffer {field} must be a whole number >= 1; got {value!r}")
        self.audio_channels = audio_channels
        self._data = np.zeros((capacity_frames, audio_channels), dtype=np.float32)
        self._lock = threading.Lock()
        self._read = 0  # next frame the callback hands out
        self._written_end = 0  # end of the furthest frame written
        self._due = (0, 0)  # reserved span [start, end) of stream frames where notes sound
        self._due_written = 0  # frames of the reserved span written so far reach up to here
        #: Callbacks that played silence in place of reserved frames not yet written.
        self.underruns = 0
        #: Frames played as silence in those callbacks.
        self.underrun_frames = 0
        #: Non-silent frames written after their place was played; dropped.
        self.late_frames = 0

    @property
    def read_position(self) -> int:
        """Frames handed to the device so far: the stream's clock, in frames."""
        return self._read

    @property
    def written_end(self) -> int:
        """Stream frame where the furthest written sound ends."""
        return self._written_end

    @property
    def capacity_frames(self) -> int:
        """Frames the buffer holds ahead of the play position now."""
        return int(self._data.shape[0])

    def reserve(self, start: int, end: int) -> None:
        """Mark stream frames ``[start, end)`` as due: a step's notes sound there once written."""
        with self._lock:
            self._due, self._due_written = (int(start), max(int(start), int(end))), int(start)

    def release(self) -> None:
        """The reserved span is written (or given up): reaching it is no underrun any more."""
        with self._lock:
            self._due = (0, 0)

    def write(self, start: int, samples: np.ndarray) -> None:
        """Add float32 ``samples`` ``(frames, audio_channels)`` at stream frame ``start``."""
        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim != 2 or samples.shape[1] != self.audio_channels:
            raise ValueError(f"LiveBuffer.write needs samples shaped (frames, {self.audio_channels}); "
                             f"got {samples.shape}")
        for begin in range(0, samples.shape[0], _WRITE_BLOCK):
            block, at = samples[begin:begin + _WRITE_BLOCK], int(start) + begin
            end = at + block.shape[0]
            with self._lock:
                skip = min(max(self._read - at, 0), block.shape[0])
                if skip:
                    self.late_frames += int(np.count_nonzero(block[:skip].any(axis=1)))
                if skip < block.shape[0]:
                    self._add(at + skip, block[skip:])
                if at <= self._due_written:
                    self._due_written = max(self._due_written, end)
                self._written_end = max(self._written_end, end)

    def read(self, frames: int) -> np.ndarray:
        """The next ``frames`` frames, float32 ``(frames, audio_channels)``; advances the play position."""
        out = np.empty((frames, self.audio_channels), dtype=np.float32)
        with self._lock:
            position = self._read
            if frames > self._data.shape[0]:
                self._grow(frames)
            index = position % self._data.shape[0]
            first = min(frames, self._data.shape[0] - index)
            out[:first] = self._data[index:index + first]
            self._data[index:index + first] = 0.0
            if first < frames:
                out[first:] = self._data[:frames - first]
                self._data[:frames - first] = 0.0
            missing = min(self._due[1], position + frames) - max(self._due[0], self._due_written, position)
            if missing > 0:
                self.underruns += 1
                self.underrun_frames += missing
            self._read = position + frames
        return out

    def callback(self, in_data: bytes | None, frame_count: int, time_info: Any,
                 status: int) -> tuple[bytes, int]:
        """PyAudio's stream callback: the next ``frame_count`` frames as interleaved float32 bytes."""
        return self.read(frame_count).tobytes(), _PA_CONTINUE

    def _add(self, at: int, block: np.ndarray) -> None:
        """Add ``block`` at frame ``at`` (>= the play position); the lock is held."""
        count = block.shape[0]
        if at + count - self._read > self._data.shape[0]:
            self._grow(at + count - self._read)
        capacity = self._data.shape[0]
        index = at % capacity
        first = min(count, capacity - index)
        self._data[index:index + first] += block[:first]
        if first < count:
            self._data[:count - first] += block[first:]

    def _grow(self, needed: int) -> None:
        """Make room for ``needed`` frames from the play position on, keeping what is held; the lock is held."""
        old = self._data
        capacity = max(int(needed), 2 * old.shape[0])
        frames = np.arange(self._read, self._read + old.shape[0])
        self._data = np.zeros((capacity, self.audio_channels), dtype=np.float32)
        self._data[frames % capacity] = old[frames % old.shape[0]]


class LivePlayer:
    """Schedules steps on a ``LiveBuffer``'s clock and renders them with the synth: ``AudioSink`` without
    the device (the buffer's ``callback`` is what a stream calls; tests call it directly).

    Args:
        arrangement: the run's layout (sample rate, channels, voices).
        latency_s: seconds from a step's arrival to the stream frame where it starts, 0–10.
        max_backlog_s: seconds a step may wait behind earlier queued steps before it is dropped, 0–3600.
    """

    def __init__(self, arrangement: Arrangement, *, latency_s: float = 0.1, max_backlog_s: float = 1.0) -> None:
        self.synth = Synth(arrangement)
        sr = self.sample_rate = self.synth.sample_rate
        self.latency_frames = int(round(seconds_in_range("latency_s", latency_s, 10.0) * sr))
        self.backlog_frames = int(round(seconds_in_range("max_backlog_s", max_backlog_s, 3600.0) * sr))
        step_s = float(arrangement.seconds_per_step)
        step_frames = int(round(min(step_s, 60.0) * sr)) if step_s > 0 else 0  # NaN compares False
        capacity = self.latency_frames + self.backlog_frames + 2 * step_frames + int(_SPARE_S * sr)
        self.buffer = LiveBuffer(self.synth.audio_channels, capacity)
        self.steps_received = 0
        self.steps_dropped = 0
        self._musical = 0  # musical frame up to which samples were taken from the synth
        self._offset = 0  # stream frame minus musical frame, for the last scheduled step
        self._queue_end = 0  # stream frame where the last scheduled step ends
        self._warned_order = False

    def send(self, events: StepEvents) -> bool:
        """Schedule and render one step; False when it was dropped (backlog full, or out of order)."""
        if not isinstance(events, StepEvents):
            raise TypeError(f"send needs StepEvents, got {type(events).__name__}")
        self.steps_received += 1
        sr = self.sample_rate
        if not (math.isfinite(events.start_s) and math.isfinite(events.end_s) and abs(events.end_s) < 1e9):
            raise ValueError(f"StepEvents.start_s and duration_s must be finite seconds; step {events.step} has "
                             f"start_s={events.start_s!r}, duration_s={events.duration_s!r}")
        first, end = int(round(events.start_s * sr)), int(round(events.end_s * sr))
        if first < self._musical:
            self.steps_dropped += 1
            if not self._warned_order:
                self._warned_order = True
                log.warning("live audio: step %d starts at %.3f s, before the end of the steps already played "
                            "(%.3f s); steps must come in order of start time, so it is skipped",
                            events.step, events.start_s, self._musical / sr)
            return False
        now = self.buffer.read_position
        earliest = now + self.latency_frames
        # right after the queued step while that one ends at least latency / 2 ahead (absorbs arrival jitter)
        start = self._queue_end if 2 * (self._queue_end - now) >= self.latency_frames else earliest
        if start - earliest > self.backlog_frames:
            self.steps_dropped += 1
            return False
        self._take(first, self._offset)  # what is left before this step: normally silence, skipped
        self._offset = start - first
        span = _sounding_span(events, sr)
        if span is not None:  # where notes will sound: reaching it before it is written is an underrun
            self.buffer.reserve(span[0] + self._offset, span[1] + self._offset)
        try:
            self.synth.render(events)
            self._take(max(end, first), self._offset)
        finally:
            self.buffer.release()
        self._queue_end = start + max(end - first, 0)
        return True

    def finish(self) -> None:
        """Write the tails of the last notes that sound past the end of their step."""
        while True:
            samples = self.synth.finish(max_frames=_POP_FRAMES)
            if samples.shape[0] == 0:
                return
            self._put(samples, self._offset)

    def _take(self, until: int, offset: int) -> None:
        """Take the synth's samples up to musical frame ``until`` and write them ``offset`` frames later."""
        while self._musical < until:
            samples = self.synth.pop_ready(until_s=until / self.sample_rate, max_frames=_POP_FRAMES)
            if samples.shape[0] == 0:
                return
            self._put(samples, offset)

    def _put(self, samples: np.ndarray, offset: int) -> None:
        at = self._musical
        self._musical += samples.shape[0]
        if samples.any():  # silence needs no writing: the buffer plays zeros where nothing was written
            self.buffer.write(at + offset, samples)


def _sounding_span(events: StepEvents, sample_rate: int) -> tuple[int, int] | None:
    """Musical frames ``[first, end)`` from the earliest note or alarm start to the latest end (None: silent)."""
    starts = [np.asarray(events.notes.start_s, dtype=np.float64).reshape(-1)]
    ends = [starts[0] + np.asarray(events.notes.duration_s, dtype=np.float64).reshape(-1)]
    for beeps in (events.alarms, events.spikes):
        if beeps:
            starts.append(np.array([a.start_s for a in beeps], dtype=np.float64))
            ends.append(starts[-1] + np.array([a.duration_s for a in beeps], dtype=np.float64))
    start, end = np.concatenate(starts), np.concatenate(ends)
    ok = np.isfinite(start) & np.isfinite(end) & (end > start) & (np.abs(end) < 1e9)
    if not ok.any():
        return None
    return int(np.rint(start[ok].min() * sample_rate)), int(np.rint(end[ok].max() * sample_rate))


def seconds_in_range(field: str, value: float, highest: float) -> float:
    """``value`` as float seconds when it is a number from 0 to ``highest``; ``ValueError`` naming ``field`` else."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= highest:
        raise ValueError(f"AudioSink {field} must be a number of seconds from 0 to {highest:g}; got {value!r}")
    return float(value)
