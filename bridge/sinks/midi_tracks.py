"""Standard MIDI File track encoding: delta times, meta events, and one track's note events as bytes.

``TrackWriter`` turns notes (on tick, off tick, pitch, velocity) into an ``MTrk`` chunk's bytes in time order,
pairing every note-on with one note-off; ``encode_events`` encodes many channel messages at once. Bytes
that do not fit in memory spill into one temporary file shared by every track (``Spill``).
"""

from __future__ import annotations

import heapq
import os
import tempfile
import unicodedata
from typing import IO

import numpy as np

from bridge.errors import SinkError

#: Velocity written in every note-off (0x80) message: the "no particular release" value.
NOTE_OFF_VELOCITY = 64
#: The end-of-track meta event at delta 0.
END_OF_TRACK = b"\x00\xff\x2f\x00"
#: The largest delta time 4 bytes of variable-length quantity hold.
MAX_DELTA = 0x0FFFFFFF
_COPY_CHUNK_BYTES = 1024 * 1024


def vlq(value: int) -> bytes:
    """A non-negative integer as a MIDI variable-length quantity (7 bits per byte, high bit = more)."""
    if value < 0x80:
        return bytes((value,))
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    return bytes(reversed(out))


def delta_time(ticks: int) -> bytes:
    """A delta time; one longer than a variable-length quantity holds (2**28 - 1) is split by empty text events."""
    filler = b""
    while ticks > MAX_DELTA:
        filler += vlq(MAX_DELTA) + b"\xff\x01\x00"
        ticks -= MAX_DELTA
    return filler + vlq(ticks)


def meta_event(kind: int, data: bytes) -> bytes:
    """A meta event at delta 0: ``00 FF kind length data``."""
    return b"\x00\xff" + bytes((kind,)) + vlq(len(data)) + data


# Characters common in layer names and preset descriptions, spelled in ASCII for MIDI text.
_ASCII_SPELLINGS = str.maketrans({"\u2013": "-", "\u2014": "--", "\u2212": "-", "\u2018": "'", "\u2019": "'",
                                  "\u201c": '"', "\u201d": '"', "\u00d7": "x", "\u2026": "...", "\u2192": "->",
                                  "\u2190": "<-", "\u2264": "<=", "\u2265": ">=", "\u00b1": "+/-", "\u00b7": ".",
                                  "\u221a": "sqrt", "\u00b5": "u", "\u03bc": "u", "\u00b0": " deg"})


def text_to_ascii(text: str) -> bytes:
    """``text`` for a MIDI text or name event, in ASCII, which every reader shows as written (MIDI text has
    no declared encoding; mido and midicsv read its bytes as Latin-1). ASCII characters stay as they are;
    dashes, quotes, ×, → and the like get their ASCII spellings, accents are dropped (é → e), and any
    other character becomes ``?``."""
    if text.isascii():
        return text.encode("ascii")
    spelled = unicodedata.normalize("NFKD", text.translate(_ASCII_SPELLINGS))
    return "".join("" if unicodedata.combining(char) else char if char.isascii() else "?"
                   for char in spelled).encode("ascii")


def encode_events(deltas: np.ndarray, status: np.ndarray, data1: np.ndarray,
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


class Spill:
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


class TrackWriter:
    """One MTrk chunk being written: note events in time order, each note-on paired with one note-off."""

    def __init__(self, channel: int, header: bytes, spill: Spill, cap_bytes: int) -> None:
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
            buf += delta_time(delta)
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
                    buf += delta_time(delta) + bytes((status, note, NOTE_OFF_VELOCITY))
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
                self.buf += delta_time(delta) + bytes((self._on_status, note, velocity))
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
        """Append complete events (from ``encode_events``) that end at ``last_tick``."""
        self.buf += data
        self.last_tick = last_tick

    def finish(self, end_tick: int) -> None:
        """Write every pending note-off, then end-of-track at ``end_tick`` (or the last event, if later)."""
        self.advance_to(2**62)
        delta = max(end_tick - self.last_tick, 0)
        self.buf += delta_time(delta) + END_OF_TRACK[1:]
        self.last_tick += delta

    def write_chunk(self, out: IO[bytes]) -> None:
        """Write ``MTrk``, the length and the bytes of the finished track to ``out``."""
        length = sum(n for _, n in self._segments) + len(self.buf)
        out.write(b"MTrk" + length.to_bytes(4, "big"))
        for offset, n in self._segments:
            self._spill.copy_to(out, offset, n)
        out.write(self.buf)


def encode_melodies(writers: list[TrackWriter | None], on: np.ndarray, off: np.ndarray, pitch: np.ndarray,
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
    if deltas.max() > MAX_DELTA:  # a gap too long for one delta time: leave it to the note-by-note path
        encoded[chosen] = False
        return encoded
    channels = np.repeat([w.channel for w in chosen_writers], 2 * counts)  # type: ignore[union-attr]
    status = channels | np.tile(np.array([0x90, 0x80]), notes.size)  # note-on, then its note-off
    data2 = np.empty_like(times)
    data2[0::2], data2[1::2] = vel[notes], NOTE_OFF_VELOCITY
    data, ends = encode_events(deltas, status, np.repeat(pitch[notes], 2), data2)
    byte_ends = ends[event_firsts + 2 * counts - 1].tolist()
    byte_starts = [0, *byte_ends[:-1]]
    last_offs = off[lasts[chosen] - 1].tolist()
    for writer, begin, end, last_off in zip(chosen_writers, byte_starts, byte_ends, last_offs):
        writer.append_encoded(data[begin:end], last_off)  # type: ignore[union-attr]
    return encoded
