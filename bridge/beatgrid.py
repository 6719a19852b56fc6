"""Where the beats fall: a tempo laid on ``time.monotonic()``, and the live clock's steps on it.

A ``BeatGrid`` says at which moment each beat falls: beat ``b`` at ``anchor_s + (b - anchor_beat) × 60 /
tempo_bpm``. Changing the tempo keeps the beat where it is at the moment of the change, so one run's
deadlines stay on one continuous grid: nothing is accumulated, and a thread that wakes late does not move
the beats after it. ``bridge.link.LinkGrid`` is the same interface over an Ableton Link session.

``GridSteps`` lays the live clock's steps on a grid (``beats_per_step``: a quarter of a beat for sixteenth
notes) and tells the clock which step comes next and when (``upcoming``). The MIDI clock out uses the same
grid at 24 pulses a beat, so a sixteenth-note step falls exactly on every sixth pulse.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

#: MIDI clock pulses per quarter note.
PULSES_PER_BEAT = 24


@runtime_checkable
class Grid(Protocol):
    """Beats on ``time.monotonic()``: the interface of ``BeatGrid`` and ``bridge.link.LinkGrid``."""

    @property
    def tempo_bpm(self) -> float:
        """The tempo now, beats per minute."""

    def time_of_beat(self, beat: float) -> float:
        """When ``beat`` falls, ``time.monotonic()`` seconds (at the tempo now)."""

    def beat_at(self, time_s: float) -> float:
        """The beat (fractional) at ``time_s``, ``time.monotonic()`` seconds."""

    def first_beat(self) -> float:
        """The beat the MIDI clock's first pulse marks (a whole beat; where a started clock begins)."""


def check_tempo(tempo_bpm: float, field: str = "tempo_bpm") -> float:
    """``tempo_bpm`` as a float when it is a number of beats per minute from 1 to 999; ``ValueError`` else."""
    if isinstance(tempo_bpm, bool) or not isinstance(tempo_bpm, (int, float)) or not 1.0 <= tempo_bpm <= 999.0:
        raise ValueError(f"{field} must be a number of beats per minute from 1 to 999, got {tempo_bpm!r}")
    return float(tempo_bpm)


class BeatGrid:
    """A tempo on ``time.monotonic()``; beat 0 falls at ``origin_s`` (default: now).

    Args:
        tempo_bpm: beats per minute, 1–999.
        origin_s: when beat 0 falls, ``time.monotonic()`` seconds.
    """

    def __init__(self, tempo_bpm: float, origin_s: float | None = None) -> None:
        bpm = check_tempo(tempo_bpm)
        origin = time.monotonic() if origin_s is None else float(origin_s)
        self._state = (origin, 0.0, 60.0 / bpm)  # anchor time, anchor beat, seconds per beat: swapped whole
        self.changes = 0  # tempo changes so far

    @property
    def origin_s(self) -> float:
        """When beat 0 falls (until the first tempo change), ``time.monotonic()`` seconds."""
        anchor_s, anchor_beat, beat_s = self._state
        return anchor_s - anchor_beat * beat_s

    @property
    def tempo_bpm(self) -> float:
        return 60.0 / self._state[2]

    def time_of_beat(self, beat: float) -> float:
        anchor_s, anchor_beat, beat_s = self._state
        return anchor_s + (beat - anchor_beat) * beat_s

    def beat_at(self, time_s: float) -> float:
        anchor_s, anchor_beat, beat_s = self._state
        return anchor_beat + (time_s - anchor_s) / beat_s

    def first_beat(self) -> float:
        return 0.0

    def set_tempo(self, tempo_bpm: float, at_s: float | None = None) -> None:
        """From ``at_s`` (default: now) on, beats follow ``tempo_bpm``; the beat at ``at_s`` stays put."""
        bpm = check_tempo(tempo_bpm)
        at = time.monotonic() if at_s is None else float(at_s)
        self._state = (at, self.beat_at(at), 60.0 / bpm)
        self.changes += 1


@dataclass(frozen=True)
class Plan:
    """The next step the live clock sounds: its number, when it falls (``time.monotonic()`` seconds) and how
    long it lasts at the tempo now (seconds)."""

    step: int
    due_s: float
    length_s: float


class StepSource(Protocol):
    """What drives a tempo clock's ticks: ``GridSteps`` (a grid: the preset's tempo, Ableton Link) or
    ``bridge.clock_in.ClockInSteps`` (an incoming MIDI clock)."""

    def upcoming(self, now_s: float) -> Plan | None:
        """The next step to sound, or ``None`` while there is none to come (a stopped incoming clock)."""

    def done(self, step: int) -> None:
        """Step ``step`` was sounded (or given up); the next ``upcoming`` is a later one."""

    def set_waker(self, wake: threading.Event | None) -> None:
        """An event to set whenever the plan may have changed (a tempo change, an incoming pulse)."""

    def describe(self) -> str:
        """Where the ticks come from, in words."""

    def close(self) -> None:
        """Stop listening (an incoming clock, a Link session)."""


class GridSteps:
    """Steps on a grid, ``beats_per_step`` beats apart from beat 0 (a sixteenth note: 0.25).

    A step whose moment has passed by more than a whole step is given up (``skipped``): a clock that woke
    late goes on from the next step to come, on the same grid.
    """

    def __init__(self, grid: Grid, beats_per_step: float, *, what: str = "") -> None:
        if not (isinstance(beats_per_step, (int, float)) and 0.0 < beats_per_step <= 64.0):
            raise ValueError(f"beats_per_step must be a number of beats above 0 and at most 64, "
                             f"got {beats_per_step!r}")
        self.grid = grid
        self.beats_per_step = float(beats_per_step)
        whole = round(1.0 / self.beats_per_step)  # steps a beat, when whole: exact beats (k / 4, not k × 0.25)
        self._per_beat = whole if whole >= 1 and abs(whole * self.beats_per_step - 1.0) < 1e-9 else None
        self._what = what
        self._next: int | None = None
        self.skipped = 0

    def beat_of_step(self, step: int) -> float:
        """The beat step ``step`` falls on."""
        return step / self._per_beat if self._per_beat is not None else step * self.beats_per_step

    def upcoming(self, now_s: float) -> Plan | None:
        grid = self.grid
        position = grid.beat_at(now_s) / self.beats_per_step  # in steps
        if self._next is None:
            self._next = max(math.ceil(grid.first_beat() / self.beats_per_step - 1e-9),
                             math.ceil(position - 1e-9))
        step = self._next
        if step + 1 <= position:  # the next one has passed too: go on from the first step to come
            ahead = math.ceil(position - 1e-9)
            self.skipped += ahead - step
            step = self._next = ahead
        elif step > position + 2:  # the grid moved back (a Link peer set the beat): join it where it is
            step = self._next = math.ceil(position - 1e-9)
        due = grid.time_of_beat(self.beat_of_step(step))
        return Plan(step, due, grid.time_of_beat(self.beat_of_step(step + 1)) - due)

    def done(self, step: int) -> None:
        self._next = step + 1

    def set_waker(self, wake: threading.Event | None) -> None:
        setter = getattr(self.grid, "set_waker", None)
        if setter is not None:
            setter(wake)

    def describe(self) -> str:
        per_beat = f"{self._per_beat} a beat" if self._per_beat is not None else \
            f"one every {self.beats_per_step:g} beats"
        return f"{per_beat} at {self.grid.tempo_bpm:g} BPM{(' ' + self._what) if self._what else ''}"

    def close(self) -> None:
        closer = getattr(self.grid, "close", None)
        if closer is not None:
            closer()
