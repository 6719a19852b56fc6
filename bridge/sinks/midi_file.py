"""``MidiFileSink``: the whole run as a Standard MIDI File, type 1.

Track 0 holds the tempo, a 4/4 time signature and the preset's name; then one named track per layer on that
layer's channel; then, if any alarm sounded, a track named ``"alarms"`` on the percussion channel.

Events are encoded straight to bytes as they arrive. Each track keeps a small in-memory buffer that spills
into one shared temporary file, plus a heap of pending note-offs, so a run of a million steps × 64 layers
never holds message objects in memory. The file itself is assembled at ``close``.
"""

from __future__ import annotations

import heapq
import os
import tempfile
import warnings
from collections import Counter
from collections.abc import Sequence
from typing import IO, Union

import numpy as np

from bridge.errors import SinkError
from bridge.events import PERCUSSION_CHANNEL, Alarm, Arrangement, StepEvents

#: Velocity written in every note-off (0x80) message: the "no particular release" value.
NOTE_OFF_VELOCITY = 64

_END_OF_TRACK = b"\x00\xff\x2f\x00"
_MAX_TEMPO_US = 0xFFFFFF
_MAX_DELTA = 0x0FFFFFFF  # the largest delta time 4 bytes of variable-length quantity hold
_MAX_SECONDS = 1e9  # later times are written at this time (31 years), so ticks always fit in int64
_MEMORY_BUDGET_BYTES = 32 * 1024 * 1024
_COPY_CHUNK_BYTES = 1024 * 1024


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


def _vlq(value: int) -> bytes:
    """A non-negative integer as a MIDI variable-length quantity (7 bits per byte, high bit = more)."""
    if value < 0x80:
        return bytes((value,))
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    return bytes(reversed(out))


def _delta(ticks: int) -> bytes:
    """A delta time; one longer than a variable-length quantity holds (2**28 - 1) is split by empty text events."""
    filler = b""
    while ticks > _MAX_DELTA:
        filler += _vlq(_MAX_DELTA) + b"\xff\x01\x00"
        ticks -= _MAX_DELTA
    return filler + _vlq(ticks)


def _meta(kind: int, data: bytes) -> bytes:
    """A meta event at delta 0: ``00 FF kind length data``."""
    return b"\x00\xff" + bytes((kind,)) + _vlq(len(data)) + data


def _encode_events(deltas: np.ndarray, status: np.ndarray, data1: np.ndarray,
                   data2: np.ndarray) -> tuple[bytes, np.ndarray]:
    """Channel messages with their delta times (each ``0 <= delta <= 2**28 - 1``), encoded at once; also
    the byte offset where each message ends."""
    sizes = 1 + (deltas >= 1 << 7).astype(np.int64) + (deltas >= 1 << 14) + (deltas >= 1 << 21)
    ends = np.cumsum(sizes + 3)
    starts = ends - (sizes + 3)
    out = np.empty(int(ends[-1]), dtype=np.uint8)
    for j in range(4):  # byte j of each delta's variable-length quantity, most significant first
        has = sizes > j
        size = sizes[has]
        value = (deltas[has] >> (7 * (size - 1 - j))) & 0x7F
        out[starts[has] + j] = value | np.where(j < size - 1, 0x80, 0)
    out[starts + sizes] = status
    out[starts + sizes + 1] = data1
    out[starts + sizes + 2] = data2
    return out.tobytes(), ends


class _Spill:
    """One temporary file shared by every track for the bytes that do not fit in memory."""

    def __init__(self) -> None:
        self._file: IO[bytes] | None = None
        self._size = 0

    def append(self, data: bytes | bytearray) -> tuple[int, int]:
        """Store ``data``; return its (offset, length) in the spill file."""
        if self._file is None:
            self._file = tempfile.TemporaryFile(prefix="gradbridge-midi-")
        offset = self._size
        self._file.write(data)
        self._size += len(data)
        return offset, len(data)

    def copy_to(self, out: IO[bytes], offset: int, length: int) -> None:
        """Copy ``length`` bytes from ``offset`` of the spill file into ``out``."""
        if self._file is None:
            raise SinkError("the temporary MIDI spill file is gone; a track was written after close()")
        self._file.flush()
        self._file.seek(offset)
        while length > 0:
            chunk = self._file.read(min(length, _COPY_CHUNK_BYTES))
            if not chunk:
                raise SinkError(f"the temporary MIDI spill file ended early ({length} bytes missing)")
            out.write(chunk)
            length -= len(chunk)
        self._file.seek(0, os.SEEK_END)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class _TrackWriter:
    """One MTrk chunk being written: note events in time order, each note-on paired with one note-off."""

    def __init__(self, channel: int, header: bytes, spill: _Spill, cap_bytes: int) -> None:
        self.channel = channel
        self.buf = bytearray(header)
        self.last_tick = 0
        self.late_notes = 0
        self._on_status = 0x90 | channel
        self._off_status = 0x80 | channel
        self._pending: list[tuple[int, int, int]] = []  # (off tick, serial, note): a heap
        self._sounding: dict[int, tuple[int, int, int]] = {}  # note -> (serial of its live off, on, off tick)
        self._serial = 0
        self._spill = spill
        self._cap = cap_bytes
        self._segments: list[tuple[int, int]] = []

    def _emit(self, tick: int, status: int, note: int, velocity: int) -> None:
        delta = tick - self.last_tick
        buf = self.buf
        if delta < 0x80:
            buf.append(delta)
        else:
            buf += _delta(delta)
        buf.append(status)
        buf.append(note)
        buf.append(velocity)
        self.last_tick = tick

    def advance_to(self, tick: int) -> None:
        """Write every pending note-off due at or before ``tick`` (so offs come before ons at equal ticks)."""
        pending, sounding, buf = self._pending, self._sounding, self.buf
        status, last = self._off_status, self.last_tick
        while pending and pending[0][0] <= tick:
            off_tick, serial, note = heapq.heappop(pending)
            live = sounding.get(note)
            if live is not None and live[0] == serial:
                del sounding[note]
                delta = off_tick - last
                if delta < 0x80:
                    buf += bytes((delta, status, note, NOTE_OFF_VELOCITY))
                else:
                    buf += _delta(delta) + bytes((status, note, NOTE_OFF_VELOCITY))
                last = off_tick
        self.last_tick = last

    def note(self, on_tick: int, off_tick: int, note: int, velocity: int) -> None:
        """Add a note; ``on_tick`` must not precede notes already added (earlier ones are moved later).

        The same pitch still sounding is ended at ``on_tick`` (retriggered); the same pitch already struck at
        ``on_tick`` is merged into one note that lasts the longer of the two.
        """
        if on_tick < self.last_tick:
            self.late_notes += 1
            on_tick = self.last_tick
        if off_tick <= on_tick:
            off_tick = on_tick + 1
        pending = self._pending
        if pending and pending[0][0] <= on_tick:
            self.advance_to(on_tick)
        live = self._sounding.get(note)
        self._serial += 1
        if live is None:
            delta = on_tick - self.last_tick
            if delta < 0x80:
                self.buf += bytes((delta, self._on_status, note, velocity))
            else:
                self.buf += _delta(delta) + bytes((self._on_status, note, velocity))
            self.last_tick = on_tick
        elif live[1] == on_tick:
            off_tick = max(off_tick, live[2])
        else:
            self._emit(on_tick, self._off_status, note, NOTE_OFF_VELOCITY)
            self._emit(on_tick, self._on_status, note, velocity)
        self._sounding[note] = (self._serial, on_tick, off_tick)
        heapq.heappush(pending, (off_tick, self._serial, note))
        if len(self.buf) > self._cap:
            self._segments.append(self._spill.append(self.buf))
            self.buf = bytearray()

    def ready_for_melody(self, first_on_tick: int) -> bool:
        """Whether notes from ``first_on_tick`` on may be appended as encoded bytes: nothing sounds then
        (pending offs up to that tick are written first) and nothing later was written already."""
        if self._pending and self._pending[0][0] <= first_on_tick:
            self.advance_to(first_on_tick)
        return not self._pending and first_on_tick >= self.last_tick

    def append_encoded(self, data: bytes, last_tick: int) -> None:
        """Append complete events (from ``_encode_events``) that end at ``last_tick``."""
        self.buf += data
        self.last_tick = last_tick

    def finish(self, end_tick: int) -> None:
        """Write every pending note-off, then end-of-track at ``end_tick`` (or the last event, if later)."""
        self.advance_to(2**62)
        delta = max(end_tick - self.last_tick, 0)
        self.buf += _delta(delta) + _END_OF_TRACK[1:]
        self.last_tick += delta

    def write_chunk(self, out: IO[bytes]) -> None:
        """Write ``MTrk``, the length and the bytes of the finished track to ``out``."""
        length = sum(n for _, n in self._segments) + len(self.buf)
        out.write(b"MTrk" + length.to_bytes(4, "big"))
        for offset, n in self._segments:
            self._spill.copy_to(out, offset, n)
        out.write(self.buf)


class MidiFileSink:
    """Writes the run to ``path`` as a type 1 Standard MIDI File, at ``ticks_per_beat`` (1–32767) ticks per beat.

    The path is created at ``open`` (so a bad path fails before training starts) and filled at ``close``.
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
        try:
            self._out = open(self.path, "wb")
        except OSError as exc:
            raise SinkError(self._write_error(exc)) from exc
        self._arrangement = arrangement
        self._tempo_us = tempo_to_microseconds(bpm)
        # Convert with the tempo as the file stores it, so readers get back exactly the seconds we meant.
        self._file_bpm = 60_000_000 / self._tempo_us
        self._spill = _Spill()
        self._cap = min(max(_MEMORY_BUDGET_BYTES // (len(arrangement.voices) + 1), 4096), 1024 * 1024)
        self._tracks: list[_TrackWriter] = []
        self._writer_of_layer: dict[int, _TrackWriter] = {}
        for voice in arrangement.voices:
            channel = int(np.clip(voice.channel, 0, 15))
            program = int(np.clip(voice.program, 0, 127))
            header = _meta(0x03, str(voice.name).encode("utf-8")) + bytes((0x00, 0xC0 | channel, program))
            writer = _TrackWriter(channel, header, self._spill, self._cap)
            self._tracks.append(writer)
            self._writer_of_layer.setdefault(int(voice.index), writer)
        self._alarms: _TrackWriter | None = None
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
            for alarm in step.alarms:
                self._send_alarm(alarm)

    def _send_alarm(self, alarm: Alarm) -> None:
        tpb, bpm = self.ticks_per_beat, self._file_bpm
        start, duration = float(alarm.start_s), float(alarm.duration_s)
        if not (np.isfinite(start) and np.isfinite(duration)):
            self._skipped["alarms with a non-finite time"] += 1
            return
        if self._alarms is None:
            header = _meta(0x03, b"alarms")
            self._alarms = _TrackWriter(PERCUSSION_CHANNEL, header, self._spill, self._cap)
        on = int(seconds_to_ticks(min(max(start, 0.0), _MAX_SECONDS), tpb, bpm))
        off = int(seconds_to_ticks(min(max(start + duration, 0.0), _MAX_SECONDS), tpb, bpm))
        note = int(np.clip(alarm.midi_note, 0, 127))
        self._alarms.note(on, off, note, int(np.clip(alarm.velocity, 1, 127)))

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
        order = np.lexsort((vel, pitch, off, on, step, layer))
        layer, on, off, pitch, vel = layer[order], on[order], off[order], pitch[order], vel[order]
        firsts = np.flatnonzero(np.diff(layer, prepend=-1))
        lasts = np.append(firsts[1:], count) - 1
        writers = [self._writer_of_layer.get(index) for index in layer[firsts].tolist()]
        encoded = self._encode_melodies(writers, on, off, pitch, vel, firsts, lasts)
        for writer, first, last, done in zip(writers, firsts.tolist(), lasts.tolist(), encoded.tolist()):
            if writer is None:
                self._skipped["notes of a layer not in the arrangement"] += last + 1 - first
                continue
            start = last if done else first
            for on_tick, off_tick, note, velo in zip(on[start:last + 1].tolist(), off[start:last + 1].tolist(),
                                                     pitch[start:last + 1].tolist(), vel[start:last + 1].tolist()):
                writer.note(on_tick, off_tick, note, velo)

    @staticmethod
    def _encode_melodies(writers: list[_TrackWriter | None], on: np.ndarray, off: np.ndarray, pitch: np.ndarray,
                         vel: np.ndarray, firsts: np.ndarray, lasts: np.ndarray) -> np.ndarray:
        """Encode at once, for every track whose notes follow one another without overlapping, all its notes
        but the last (which stays pending: a later note may start before it ends). Returns, per track, whether
        that was done; the others get their notes one by one, as do the last notes.

        ``on``/``off``/``pitch``/``vel`` hold the notes grouped by track (``firsts[i]..lasts[i]``), in order.
        """
        encoded = np.zeros(len(writers), dtype=bool)
        candidates = np.flatnonzero(lasts - firsts >= 2)  # three notes or more: worth encoding at once
        if candidates.size == 0:
            return encoded
        overlap = np.append(off[:-1] > on[1:], False)  # a note ending after the next one starts
        overlap[lasts] = False  # the next note there belongs to the next track
        bad = np.cumsum(overlap | (off <= on))
        clean = bad[lasts] - np.append(0, bad)[firsts] == 0
        for i in candidates.tolist():
            writer = writers[i]
            encoded[i] = bool(clean[i]) and writer is not None and writer.ready_for_melody(int(on[firsts[i]]))
        chosen = np.flatnonzero(encoded)
        if chosen.size == 0:
            return encoded
        chosen_writers = [writers[i] for i in chosen.tolist()]
        start_ticks = np.array([w.last_tick for w in chosen_writers], dtype=np.int64)  # type: ignore[union-attr]
        counts = lasts[chosen] - firsts[chosen]  # notes encoded per track (all but the last)
        # indices of those notes: firsts[i] .. lasts[i] - 1 for each chosen track i, one after another
        notes = np.repeat(firsts[chosen] - np.append(0, np.cumsum(counts)[:-1]), counts) + np.arange(counts.sum())
        times = np.empty(2 * notes.size, dtype=np.int64)
        times[0::2], times[1::2] = on[notes], off[notes]
        previous = np.empty_like(times)
        previous[1:] = times[:-1]
        event_firsts = 2 * np.append(0, np.cumsum(counts)[:-1])
        previous[event_firsts] = start_ticks  # a track's first event follows what the track holds already
        deltas = times - previous
        if deltas.max() > _MAX_DELTA:  # a gap too long for one delta time: leave it to the note-by-note path
            encoded[chosen] = False
            return encoded
        channels = np.repeat([w.channel for w in chosen_writers], 2 * counts)  # type: ignore[union-attr]
        status = channels | np.tile(np.array([0x90, 0x80]), notes.size)  # note-on, then its note-off
        data2 = np.empty_like(times)
        data2[0::2], data2[1::2] = vel[notes], NOTE_OFF_VELOCITY
        data, ends = _encode_events(deltas, status, np.repeat(pitch[notes], 2), data2)
        byte_ends = ends[event_firsts + 2 * counts - 1].tolist()
        byte_starts = [0, *byte_ends[:-1]]
        last_offs = off[lasts[chosen] - 1].tolist()
        for writer, begin, end, last_off in zip(chosen_writers, byte_starts, byte_ends, last_offs):
            writer.append_encoded(data[begin:end], last_off)  # type: ignore[union-attr]
        return encoded

    def close(self) -> None:
        """Write the file: every pending note-off, end of track on every track. Idempotent."""
        if self._closed or self._arrangement is None:
            self._closed = True
            return
        self._closed = True
        out, self._out = self._out, None
        try:
            if out is not None:
                self._write(out, self._arrangement)
                out.close()
        except OSError as exc:
            raise SinkError(self._write_error(exc)) from exc
        finally:
            if out is not None:
                out.close()
            self._spill.close()
        self._report()

    def _write(self, out: IO[bytes], arrangement: Arrangement) -> None:
        tracks = list(self._tracks) + ([self._alarms] if self._alarms is not None else [])
        for track in tracks:
            track.advance_to(2**62)
        end_tick = max([self._end_tick] + [t.last_tick for t in tracks])
        for track in tracks:
            track.finish(end_tick)
        tempo = (
            _meta(0x03, f"gradbridge: {arrangement.mapping_name}".encode("utf-8"))
            + (_meta(0x01, arrangement.description.encode("utf-8")) if arrangement.description else b"")
            + _meta(0x51, self._tempo_us.to_bytes(3, "big"))
            + _meta(0x58, bytes((4, 2, 24, 8)))
            + _delta(end_tick) + _END_OF_TRACK[1:]
        )
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
