"""``MidiFileSink``: the whole run as a Standard MIDI File, type 1.

Track 0 holds the tempo, a 4/4 time signature, the preset's name and a marker at each step where a layer
spiked ("spike: fc1 x7.3"); then one named track per layer on that layer's channel; then, if any alarm
sounded, a track named ``"alarms"`` on the percussion channel with the NaN/Inf alarms and the spike alarms.
Layers that share a channel (more than 15 layers) share its program, sent once, by the first of their
tracks, and a pitch struck by several of them at one tick is written once, in the first one's track.

Track 0 also holds a marker "step N" wherever the step numbers do not simply count up from 0 (the first
step when it is not 0, and each step that is not the one before plus 1), so the real step numbers of a run
logged every 10 steps, or followed from its middle, can be read off the file (``bridge.steps``: each logged
step sounds as one musical step). Every text in the file is ASCII (``text_to_ascii``).

Events are encoded straight to bytes as they arrive (``bridge.sinks.midi_tracks``). Each track keeps a small
in-memory buffer that spills into one shared temporary file, plus a heap of pending note-offs, so a run of a
million steps × 64 layers never holds message objects in memory. The file itself is assembled at ``close``,
into a temporary file beside ``path`` that is renamed over it once complete (``bridge.atomic``): a failure
(a full disk) leaves no half-written file, and an older file of that name as it was.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import Counter
from collections.abc import Sequence
from typing import IO, Union

import numpy as np

from bridge.atomic import discard, put_in_place, temporary_beside
from bridge.errors import SinkError
from bridge.events import PERCUSSION_CHANNEL, Arrangement, StepEvents
from bridge.sinks.midi_tracks import (
    END_OF_TRACK,
    Spill,
    TrackWriter,
    delta_time,
    encode_melodies,
    meta_event,
    text_to_ascii,
    vlq,
)

log = logging.getLogger("bridge")

_MAX_TEMPO_US = 0xFFFFFF
_MAX_SECONDS = 1e9  # later times are written at this time (31 years), so ticks always fit in int64
_MEMORY_BUDGET_BYTES = 32 * 1024 * 1024


def seconds_to_ticks(
    seconds: Union[float, np.ndarray], ticks_per_beat: int, tempo_bpm: float
) -> Union[int, np.ndarray]:
    """Absolute MIDI ticks of absolute times in seconds: ``round(seconds × ticks_per_beat × tempo_bpm / 60)``.

    Rounds half to even (as ``round`` and ``numpy.rint`` do). A scalar gives an ``int``, an array an int64 array.
    Times are converted from absolute seconds, never accumulated, so rounding errors do not drift.
    """
    ticks_per_second = ticks_per_beat * tempo_bpm / 60.0
    if isinstance(seconds, np.ndarray):
        return np.rint(seconds * ticks_per_second).astype(np.int64)
    return int(round(float(seconds) * ticks_per_second))


def tempo_to_microseconds(tempo_bpm: float) -> int:
    """Microseconds per quarter note as a MIDI set_tempo event stores it (an integer, 1 to 16 777 215)."""
    return int(min(max(round(60_000_000 / tempo_bpm), 1), _MAX_TEMPO_US))


def _time_key(seconds: float) -> float:
    """A start time to sort by: non-finite ones (skipped when sent) first."""
    value = float(seconds)
    return value if np.isfinite(value) else -np.inf


class MidiFileSink:
    """Writes the run to ``path`` as a type 1 Standard MIDI File, at ``ticks_per_beat`` (1–32767) ticks per beat.

    A temporary file beside the path is created at ``open`` (so a bad path fails before training starts),
    filled at ``close`` and renamed over the path then.
    Times are converted from absolute seconds with the tempo as the file stores it (whole microseconds per
    beat), so a reader gets back the seconds of the run without drift. Within a track, note-offs come before
    note-ons at the same tick; a pitch struck again while it still sounds is ended there and struck anew
    (retriggered), and one struck twice at the same tick sounds once, for the longer duration, so every
    note-on has exactly one note-off. Out-of-range channels, programs, notes and velocities are clipped;
    notes with a non-finite time or an unknown layer are skipped, and counted in a warning at ``close``.
    """

    def __init__(self, path: Union[str, os.PathLike[str]], *, ticks_per_beat: int = 960) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}: {path!r}")
        if isinstance(ticks_per_beat, bool) or not isinstance(ticks_per_beat, (int, np.integer)):
            raise TypeError(f"ticks_per_beat must be an int, got {type(ticks_per_beat).__name__}")
        if not 1 <= int(ticks_per_beat) <= 0x7FFF:
            raise ValueError(
                f"ticks_per_beat must be in 1..32767 (a MIDI file stores it in 15 bits), got {ticks_per_beat}; "
                "960 or 480 are usual"
            )
        self.path = os.fspath(path)
        self.ticks_per_beat = int(ticks_per_beat)
        self.name = f"MIDI file {self.path}"
        self._out: IO[bytes] | None = None
        self._arrangement: Arrangement | None = None
        self._closed = False

    def open(self, arrangement: Arrangement) -> None:
        """Create the file and prepare one track per layer of ``arrangement``."""
        if not isinstance(arrangement, Arrangement):
            raise TypeError(f"arrangement must be an Arrangement, got {type(arrangement).__name__}")
        if self._arrangement is not None:
            raise SinkError(f"{self.name} is already open; make a new MidiFileSink for another run")
        bpm = float(arrangement.tempo_bpm)
        if not (np.isfinite(bpm) and bpm > 0):
            raise ValueError(f"arrangement.tempo_bpm must be a finite number > 0, got {arrangement.tempo_bpm!r}")
        if not arrangement.voices:
            raise ValueError("arrangement.voices is empty; a MIDI file needs at least one layer")
        self._temporary = temporary_beside(self.path, "MIDI file")
        try:
            self._out = open(self._temporary, "wb")  # noqa: SIM115 - written and closed in close()
        except OSError as exc:
            discard(self._temporary, self.path)
            raise SinkError(self._write_error(exc)) from exc
        self._arrangement = arrangement
        self._tempo_us = tempo_to_microseconds(bpm)
        # Convert with the tempo as the file stores it, so readers get back exactly the seconds we meant.
        self._file_bpm = 60_000_000 / self._tempo_us
        self._spill = Spill()
        self._cap = min(max(_MEMORY_BUDGET_BYTES // (len(arrangement.voices) + 1), 4096), 1024 * 1024)
        self._tracks: list[TrackWriter] = []
        self._writer_of_layer: dict[int, TrackWriter] = {}
        programmed: set[int] = set()  # channels whose program a track sends already: one program per channel
        for voice in arrangement.voices:
            channel = int(np.clip(voice.channel, 0, 15))
            program = int(np.clip(voice.program, 0, 127))
            header = meta_event(0x03, text_to_ascii(voice.name))
            if channel not in programmed:
                header += bytes((0x00, 0xC0 | channel, program))
                programmed.add(channel)
            writer = TrackWriter(channel, header, self._spill, self._cap)
            self._tracks.append(writer)
            self._writer_of_layer.setdefault(int(voice.index), writer)
        top = max(int(v.index) for v in arrangement.voices) + 1
        self._channel_of_layer = np.full(top + 1, -1, dtype=np.int64)  # the last entry: unknown layers
        for voice in arrangement.voices:
            if 0 <= int(voice.index):
                self._channel_of_layer[int(voice.index)] = int(np.clip(voice.channel, 0, 15))
        self._shared_channels = len(programmed) < len(arrangement.voices)
        self._name_of_layer = {int(v.index): str(v.name) for v in arrangement.voices}
        self._markers: list[tuple[int, bytes]] = []  # (tick, text) of the step and spike markers, in time order
        self._next_step = 0  # the step number that follows on without a marker
        self._alarms: TrackWriter | None = None
        self._end_tick = 0
        self._skipped: Counter[str] = Counter()

    def send(self, events: StepEvents) -> None:
        """Add one step's notes (and alarms) to the tracks."""
        self.send_many((events,))

    def send_many(self, events: Sequence[StepEvents]) -> None:
        """Add the notes (and alarms) of several steps, in step order: the same file as ``send`` for each."""
        steps = list(events)
        for step in steps:
            if not isinstance(step, StepEvents):
                raise TypeError(f"events must be StepEvents, got {type(step).__name__}")
        if self._arrangement is None or self._closed:
            raise SinkError(f"{self.name}: send() needs open() first and no close() before it")
        if not steps:
            return
        ends = np.array([float(step.end_s) for step in steps])
        ends = ends[np.isfinite(ends)]
        if ends.size:
            end_tick = int(seconds_to_ticks(min(max(float(ends.max()), 0.0), _MAX_SECONDS),
                                            self.ticks_per_beat, self._file_bpm))
            self._end_tick = max(self._end_tick, end_tick)
        blocks = [step.notes for step in steps]
        if any(len(notes) for notes in blocks):
            self._send_notes(
                np.concatenate([np.asarray(n.layer, dtype=np.int64) for n in blocks]),
                np.concatenate([np.asarray(n.start_s, dtype=np.float64) for n in blocks]),
                np.concatenate([np.asarray(n.duration_s, dtype=np.float64) for n in blocks]),
                np.concatenate([np.asarray(n.midi_note, dtype=np.int64) for n in blocks]),
                np.concatenate([np.asarray(n.velocity, dtype=np.int64) for n in blocks]),
                np.repeat(np.arange(len(blocks)), [len(n) for n in blocks]),
            )
        for step in steps:
            if step.step != self._next_step:
                self._mark(step.start_s, f"step {step.step}")
            self._next_step = step.step + 1
            if step.spikes:
                beeps = sorted([(a, "alarms") for a in step.alarms] + [(a, "spike alarms") for a in step.spikes],
                               key=lambda beep: _time_key(beep[0].start_s))  # the track takes them in time order
                self._mark_spikes(step)
            else:
                beeps = [(a, "alarms") for a in step.alarms]
            for beep, what in beeps:
                self._send_alarm(beep.start_s, beep.duration_s, beep.midi_note, beep.velocity, what)

    def _send_alarm(self, start_s: float, duration_s: float, midi_note: int, velocity: int, what: str) -> None:
        """A percussion note on the alarms track (NaN/Inf alarms and spike alarms)."""
        tpb, bpm = self.ticks_per_beat, self._file_bpm
        start, duration = float(start_s), float(duration_s)
        if not (np.isfinite(start) and np.isfinite(duration)):
            self._skipped[f"{what} with a non-finite time"] += 1
            return
        if self._alarms is None:
            header = meta_event(0x03, b"alarms")
            self._alarms = TrackWriter(PERCUSSION_CHANNEL, header, self._spill, self._cap)
        on = int(seconds_to_ticks(min(max(start, 0.0), _MAX_SECONDS), tpb, bpm))
        off = int(seconds_to_ticks(min(max(start + duration, 0.0), _MAX_SECONDS), tpb, bpm))
        note = int(np.clip(midi_note, 0, 127))
        self._alarms.note(on, off, note, int(np.clip(velocity, 1, 127)))

    def _mark_spikes(self, step: StepEvents) -> None:
        """A marker in track 0 at the step's start naming the layers that spiked, e.g. "spike: fc1 x7.3"."""
        named = [f"{self._name_of_layer.get(s.layer, f'layer {s.layer}')} x{s.ratio:.3g}" for s in step.spikes[:3]]
        more = f" and {len(step.spikes) - 3} more" if len(step.spikes) > 3 else ""
        self._mark(step.start_s, f"spike: {', '.join(named)}{more}")

    def _mark(self, start_s: float, text: str) -> None:
        """A marker (FF 06) in track 0 at ``start_s`` seconds; one at a non-finite time is left out."""
        start = float(start_s)
        if not np.isfinite(start):
            return
        tick = int(seconds_to_ticks(min(max(start, 0.0), _MAX_SECONDS), self.ticks_per_beat, self._file_bpm))
        if self._markers and tick < self._markers[-1][0]:  # steps out of time order: kept in order
            tick = self._markers[-1][0]
        self._markers.append((tick, text_to_ascii(text)))

    def _send_notes(
        self, layer: np.ndarray, start_s: np.ndarray, duration_s: np.ndarray, midi_note: np.ndarray,
        velocity: np.ndarray, step: np.ndarray,
    ) -> None:
        """Hand each note to its layer's track: by layer, then step (position in the block), then start tick."""
        end_s = start_s + duration_s  # finite end implies finite start
        finite = np.isfinite(end_s)
        if not finite.all():
            self._skipped["notes with a non-finite time"] += int((~finite).sum())
            layer, start_s, end_s = layer[finite], start_s[finite], end_s[finite]
            midi_note, velocity, step = midi_note[finite], velocity[finite], step[finite]
        count = start_s.shape[0]
        if count == 0:
            return
        seconds = np.minimum(np.maximum(np.concatenate((start_s, end_s)), 0.0), _MAX_SECONDS)
        ticks = seconds_to_ticks(seconds, self.ticks_per_beat, self._file_bpm)
        on, off = ticks[:count], ticks[count:]
        pitch = np.minimum(np.maximum(midi_note, 0), 127)
        vel = np.minimum(np.maximum(velocity, 1), 127)
        if self._shared_channels:  # a pitch struck at one tick by layers of one channel sounds once
            keep = self._first_of_each_strike(layer, on, pitch)
            if keep is not None:
                layer, on, off, pitch, vel, step = (a[keep] for a in (layer, on, off, pitch, vel, step))
                count = layer.shape[0]
        order = np.lexsort((vel, pitch, off, on, step, layer))
        layer, on, off, pitch, vel = layer[order], on[order], off[order], pitch[order], vel[order]
        firsts = np.flatnonzero(np.diff(layer, prepend=-1))
        lasts = np.append(firsts[1:], count) - 1
        writers = [self._writer_of_layer.get(index) for index in layer[firsts].tolist()]
        encoded = encode_melodies(writers, on, off, pitch, vel, firsts, lasts)
        for writer, first, last, done in zip(writers, firsts.tolist(), lasts.tolist(), encoded.tolist()):
            if writer is None:
                self._skipped["notes of a layer not in the arrangement"] += last + 1 - first
                continue
            start = last if done else first
            for on_tick, off_tick, note, velo in zip(on[start:last + 1].tolist(), off[start:last + 1].tolist(),
                                                     pitch[start:last + 1].tolist(), vel[start:last + 1].tolist()):
                writer.note(on_tick, off_tick, note, velo)

    def _first_of_each_strike(self, layer: np.ndarray, on: np.ndarray, pitch: np.ndarray) -> np.ndarray | None:
        """Indices of the notes to keep when layers share channels: of the notes with one channel, pitch and
        on tick, the one of the lowest layer; None when no note doubles another."""
        table = self._channel_of_layer
        channel = table[np.where((layer >= 0) & (layer < table.shape[0] - 1), layer, table.shape[0] - 1)]
        order = np.lexsort((layer, pitch, channel, on))
        same = np.zeros(order.shape[0], dtype=bool)
        same[1:] = ((on[order][1:] == on[order][:-1]) & (channel[order][1:] == channel[order][:-1])
                    & (pitch[order][1:] == pitch[order][:-1]) & (channel[order][1:] >= 0))
        if not same.any():
            return None
        return np.sort(order[~same])

    def close(self) -> None:
        """Write the file: every pending note-off, end of track on every track; then rename it into place.
        Idempotent. On failure (a full disk) the path is left as it was and ``SinkError`` names it and the fix."""
        if self._closed or self._arrangement is None:
            self._closed = True
            return
        self._closed = True
        out, self._out = self._out, None
        try:
            if out is not None:
                self._write(out, self._arrangement)
                out.close()
        except (OSError, SinkError) as exc:
            self._abandon(out)
            if isinstance(exc, SinkError):
                raise
            raise SinkError(self._close_error(exc)) from exc
        finally:
            self._spill.close()
        put_in_place(self._temporary, self.path, "MIDI file")
        self._report()

    def _abandon(self, out: IO[bytes] | None) -> None:
        """After a failure at close: drop the unfinished temporary file (what is left unwritten is lost)."""
        if out is not None and not out.closed:
            try:
                out.close()
            except OSError as exc:  # the failure that got us here is the one to report
                log.debug("closing the unfinished MIDI file %s: %s", self._temporary, exc)
        discard(self._temporary, self.path)

    def _write(self, out: IO[bytes], arrangement: Arrangement) -> None:
        tracks = list(self._tracks) + ([self._alarms] if self._alarms is not None else [])
        for track in tracks:
            track.advance_to(2**62)
        end_tick = max([self._end_tick] + [t.last_tick for t in tracks])
        for track in tracks:
            track.finish(end_tick)
        tempo = (
            meta_event(0x03, text_to_ascii(f"gradbridge: {arrangement.mapping_name}"))
            + (meta_event(0x01, text_to_ascii(arrangement.description)) if arrangement.description else b"")
            + meta_event(0x51, self._tempo_us.to_bytes(3, "big"))
            + meta_event(0x58, bytes((4, 2, 24, 8)))
        )
        last = 0
        for tick, text in self._markers:  # marker meta events (FF 06), in time order
            tempo += delta_time(tick - last) + b"\xff\x06" + vlq(len(text)) + text
            last = tick
        end_tick = max(end_tick, last)
        tempo += delta_time(end_tick - last) + END_OF_TRACK[1:]
        count = len(tracks) + 1
        if count > 0xFFFF:
            raise SinkError(f"{self.name}: {count} tracks; a MIDI file holds at most 65535, group the layers")
        out.write(b"MThd" + (6).to_bytes(4, "big") + (1).to_bytes(2, "big") + count.to_bytes(2, "big")
                  + self.ticks_per_beat.to_bytes(2, "big"))
        out.write(b"MTrk" + len(tempo).to_bytes(4, "big") + tempo)
        for track in tracks:
            track.write_chunk(out)

    def _report(self) -> None:
        late = sum(t.late_notes for t in self._tracks) + (self._alarms.late_notes if self._alarms else 0)
        if late:
            self._skipped["notes that arrived earlier than notes already written (moved later)"] += late
        if self._skipped:
            details = "; ".join(f"{n} {what}" for what, n in self._skipped.items())
            warnings.warn(f"{self.name}: {details}", RuntimeWarning, stacklevel=3)

    def _write_error(self, exc: OSError) -> str:
        reason = exc.strerror or str(exc)
        return (
            f"cannot write the MIDI file {self.path!r}: {reason} (errno {exc.errno}); choose a path in an "
            "existing directory you can write to, and not the name of a directory"
        )

    def _close_error(self, exc: OSError) -> str:
        reason = exc.strerror or str(exc)
        return (f"could not finish the MIDI file {self.path!r} at close: {reason} (errno {exc.errno}); it was not "
                f"written (an older file of that name is left as it was). Fix: free disk space, then write it "
                f"from the run log: gradbridge midi RUN.gbrun -o {self.path}")
