"""MIDI clock out: 24 pulses a quarter note on the live clock's grid, Song Position and Start, then Stop.

The pulses are written by a MIDI port's scheduler thread (``bridge.sinks.midi_port``), which does nothing
but write timed messages: pulse ``n`` falls at beat ``first_beat + n / 24`` of the grid
(``bridge.beatgrid``), an absolute deadline recomputed from the grid at each pulse, so a late wake-up
delays one pulse and moves none after it, and a tempo change (Ableton Link) bends the pulses with it. A
sixteenth-note step of the live clock falls on every sixth pulse, and its note-ons are written right after
that pulse.

``MidiPortSink(clock=True)`` sends it on the live MIDI port beside the notes;
``bridge.sinks.midi_clock_port.MidiClockPort`` on a port of its own (``--midi-clock PORT``).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import os
import threading
import time

from bridge.beatgrid import PULSES_PER_BEAT, Grid

log = logging.getLogger("bridge")

#: MIDI real-time and system common messages.
CLOCK, START, CONTINUE, STOP, SONG_POSITION = 0xF8, 0xFA, 0xFB, 0xFC, 0xF2
CLOCK_PULSE = (CLOCK,)
#: Sent when the clock starts, a pulse before the first: Song Position Pointer 0 (the song's start), Start.
START_BYTES = ((SONG_POSITION, 0, 0), (START,))
#: The kind of a MIDI port's scheduled item that is a system message (its data bytes packed in one int).
RAW = 4
#: A pulse written later than this after its moment counts as late, seconds.
LATE_PULSE_S = 0.001
#: SCHED_FIFO priority of a MIDI port's writer thread while it sends MIDI clock, where the system allows it:
#: below JACK's own threads (10 and up), above every ordinary thread, training's included. The thread only
#: wakes to write a few bytes at each message's moment.
WRITER_PRIORITY = 5


def writer_to_realtime() -> bool:
    """Put the calling thread on SCHED_FIFO at ``WRITER_PRIORITY`` (Linux; where the system allows it, as it
    does for JACK's clients). Returns whether it did; else the thread stays as it was."""
    if not hasattr(os, "sched_setscheduler") or not hasattr(os, "SCHED_FIFO"):
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(WRITER_PRIORITY))  # 0: this thread, on Linux
    except OSError as exc:  # not allowed here (no CAP_SYS_NICE or rtprio limit): ordinary scheduling
        log.debug("the MIDI clock's writer keeps ordinary scheduling: %s", exc)
        return False
    return True


class PulseTrain:
    """When each MIDI clock pulse falls on ``grid``, from its first beat on; ``take_due`` counts them out."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self.first_beat = grid.first_beat()
        #: When Song Position and Start go out: a pulse's length before the first pulse, which marks beat 0.
        self.start_s = grid.time_of_beat(self.first_beat - 1 / PULSES_PER_BEAT)
        self.until_s = math.inf  # the last pulse goes out at or before this moment (``stop``)
        self.stopped = False
        self.sent = 0  # pulses taken so far
        self.late = 0  # of them, taken later than LATE_PULSE_S after their moment
        self.max_late_s = 0.0

    def stop(self, at_s: float) -> None:
        """No pulse after ``at_s`` (``time.monotonic()`` seconds); those due until then still go out."""
        self.until_s, self.stopped = at_s, True

    def next_due(self) -> float:
        """When the next pulse falls, ``time.monotonic()`` seconds (infinity once there is none to come)."""
        due = self.grid.time_of_beat(self.first_beat + self.sent / PULSES_PER_BEAT)
        return due if due <= self.until_s else math.inf

    def take_due(self, now_s: float) -> int:
        """How many pulses are due at ``now_s`` (normally 0 or 1), counted as sent."""
        count = 0
        while True:
            due = self.next_due()
            if due > now_s:
                break
            late = now_s - due
            if late > LATE_PULSE_S:
                self.late += 1
                self.max_late_s = max(self.max_late_s, late)
            self.sent += 1
            count += 1
        return count


class MidiClockWriter:
    """The MIDI clock half of ``bridge.sinks.midi_port.MidiPortSink``: its scheduler thread writes the pulses
    (``PulseTrain``) and the system messages queued here, each at its moment."""

    _cond: threading.Condition
    _heap: list[tuple[float, int, int, int, int, int, int, int]]
    _seq: itertools.count[int]
    _pulses: PulseTrain | None

    def _check_usable(self) -> None:
        raise NotImplementedError

    def start_clock(self, grid: Grid) -> None:
        """Send MIDI clock on ``grid``: Song Position 0 and Start a pulse before its first beat, then the pulses
        from that beat on (the first marks it)."""
        self._check_usable()
        pulses = PulseTrain(grid)
        with self._cond:
            for message in START_BYTES:
                data = message[1] | message[2] << 8 if len(message) == 3 else 0
                heapq.heappush(self._heap, (pulses.start_s, -1, next(self._seq), RAW, len(message) - 1, message[0],
                                            data, 0))
            self._pulses = pulses
            self._cond.notify()

    def stop_clock(self) -> None:
        """Stop the MIDI clock: the pulses due by now still go out, then Stop (never before Start)."""
        with self._cond:
            if self._pulses is not None and not self._pulses.stopped:
                now = time.monotonic()
                self._pulses.stop(now)
                heapq.heappush(self._heap, (max(now, self._pulses.start_s), -1, next(self._seq), RAW, 0, STOP, 0, 0))
                self._cond.notify()

    @property
    def pulse_train(self) -> PulseTrain | None:
        """The MIDI clock's pulses (how many were written, how many late), once ``start_clock`` was called."""
        return self._pulses
