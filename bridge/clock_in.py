"""Follow a DAW: the live clock's steps on an incoming MIDI clock (``--clock-in PORT``, ``watch(clock_in=...)``).

The DAW sends 24 pulses a quarter note, Start (song position 0), Continue, Stop and Song Position; its
pulses are the grid. A step of ``beats_per_step`` beats falls on pulse ``step × 24 × beats_per_step`` of
the song (every sixth pulse for sixteenth notes). When the pulse before a step arrives, the step's moment
is known to within the clock's jitter: that pulse's time plus the pulses left times the mean interval of
the last 24. The tempo clock then prepares the tick and the MIDI port writes it at that moment, beside the
DAW's own pulse.

When the DAW stops (Stop, or its pulses simply cease), no step comes: gradbridge goes quiet and keeps
gathering the steps training makes; the first tick after Start or Continue sounds them all (their alarms
and spikes included), as does the end of the run. Pulses that arrive while stopped only update the tempo.
Start begins again at step 0; Song Position moves the next step to that place of the song. Joining a clock
already going (pulses before any Start, Continue or Stop), gradbridge counts the song from the first pulse
it hears.

Arrival times come from the MIDI API's own timestamps (their sum anchored to ``time.monotonic()`` by the
earliest arrival seen), so a message that waited for Python's interpreter lock does not shift the grid.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time

import rtmidi

from bridge.beatgrid import PULSES_PER_BEAT, Plan, check_tempo
from bridge.sinks.midi_clock import CLOCK, CONTINUE, SONG_POSITION, START, STOP
from bridge.sinks.midi_system import API_LABELS, check_api, match_port, open_rtmidi, resolve_api

log = logging.getLogger("bridge")

#: Pulse intervals the tempo is the mean of.
TEMPO_WINDOW = PULSES_PER_BEAT


class ClockInSteps:
    """The live clock's steps on the MIDI clock arriving at an input (``bridge.beatgrid.StepSource``).

    Args:
        port: the sending program's MIDI output (as this machine's MIDI inputs list it), exactly or a unique
            case-insensitive part of its name.
        beats_per_step: the preset's step length in beats (a sixteenth note: 0.25).
        tempo_bpm: the tempo a step lasts until the incoming one is known (two pulses), beats per minute.
        api: ``"alsa"``, ``"jack"``, ``"coremidi"``, ``"winmm"`` or ``None`` (the platform's own).
        client_name: the MIDI client's name as other programs see it.
    """

    def __init__(self, port: str, beats_per_step: float, *, tempo_bpm: float = 120.0, api: str | None = None,
                 client_name: str = "gradbridge-clock-in") -> None:
        if not isinstance(port, str) or not port.strip():
            raise TypeError(f"clock_in must name a MIDI port (a non-empty str), got {port!r}")
        if not (isinstance(beats_per_step, (int, float)) and 0.0 < beats_per_step <= 64.0):
            raise ValueError(f"beats_per_step must be a number of beats above 0 and at most 64, got {beats_per_step!r}")
        self.pulses_per_step = PULSES_PER_BEAT * float(beats_per_step)
        self._default_pulse_s = 60.0 / check_tempo(tempo_bpm) / PULSES_PER_BEAT
        self._lock = threading.Lock()
        self._wake: threading.Event | None = None
        self.running = False
        self._told = False  # whether Start, Continue or Stop came yet: before, pulses mean a clock already going
        self._position = -1  # song position of the last pulse, in pulses (-1: the next pulse is the song's start)
        self._last_pulse_s: float | None = None
        self._intervals: collections.deque[float] = collections.deque(maxlen=TEMPO_WINDOW)
        self._next_step = 0
        self._line_s: float | None = None  # the MIDI API's timeline: the sum of its deltas
        self._offset_s = math.inf  # time.monotonic() minus the timeline, the least seen
        self.pulses = self.starts = self.stops = 0
        self.skipped = 0
        self.api = resolve_api(check_api(api))

        def connect(midi_in: rtmidi.MidiIn) -> None:
            ports = midi_in.get_ports()
            self.port_name = match_port(port, ports, self.api)
            midi_in.ignore_types(sysex=True, timing=False, active_sense=True)
            midi_in.set_callback(self._on_message)
            midi_in.open_port(ports.index(self.port_name), "clock-in")

        self._in = open_rtmidi(rtmidi.MidiIn, self.api, client_name, connect, lambda: f"MIDI input {port!r}")
        log.info("following the MIDI clock of %r on %s", self.port_name, API_LABELS[self.api])

    @property
    def tempo_bpm(self) -> float | None:
        """The incoming tempo (the mean of the last pulse intervals), or ``None`` before two pulses."""
        with self._lock:
            if not self._intervals:
                return None
            return 60.0 / (PULSES_PER_BEAT * sum(self._intervals) / len(self._intervals))

    def upcoming(self, now_s: float) -> Plan | None:
        with self._lock:
            if not self.running or self._last_pulse_s is None:
                return None
            interval = sum(self._intervals) / len(self._intervals) if self._intervals else None
            position, pps = self._position, self.pulses_per_step
            if (self._next_step + 1) * pps <= position:  # fell behind by a whole step: go on from the next
                ahead = math.ceil(position / pps - 1e-9)
                self.skipped += ahead - self._next_step
                self._next_step = ahead
            boundary = self._next_step * pps
            if position < boundary and (interval is None or math.ceil(boundary - 1e-9) - 1 > position):
                return None  # the pulse before the step has not come yet (or no tempo is known to place it)
            pulse_s = interval if interval is not None else self._default_pulse_s  # known once 2 pulses came
            due = self._last_pulse_s + (boundary - position) * pulse_s
            return Plan(self._next_step, due, pps * pulse_s)

    def done(self, step: int) -> None:
        with self._lock:
            self._next_step = max(self._next_step, step + 1)

    def set_waker(self, wake: threading.Event | None) -> None:
        self._wake = wake

    def describe(self) -> str:
        tempo = self.tempo_bpm
        heard = f"{tempo:.1f} BPM when last heard" if tempo is not None else "no tempo heard"
        per_beat = PULSES_PER_BEAT / self.pulses_per_step
        return f"{per_beat:g} a beat on the MIDI clock of {self.port_name!r} ({heard})"

    def close(self) -> None:
        """Stop listening and release the input."""
        midi_in, self._in = getattr(self, "_in", None), None
        if midi_in is not None:
            midi_in.cancel_callback()
            midi_in.close_port()
            midi_in.delete()

    def _on_message(self, event: tuple[list[int], float], data: object = None) -> None:
        """rtmidi's callback (its own thread): a message and the seconds since the one before."""
        arrived = time.monotonic()
        message, delta_s = event
        if not message:
            return
        with self._lock:
            self._line_s = 0.0 if self._line_s is None else self._line_s + max(float(delta_s), 0.0)
            self._offset_s = min(self._offset_s, arrived - self._line_s)
            at = self._line_s + self._offset_s
            self._take(message, at)
        if self._wake is not None:
            self._wake.set()

    def _take(self, message: list[int], at_s: float) -> None:
        status = message[0]
        if status == CLOCK:
            if self._last_pulse_s is not None and at_s > self._last_pulse_s:
                self._intervals.append(at_s - self._last_pulse_s)
            self._last_pulse_s = at_s
            self.pulses += 1
            if not self._told and not self.running:  # joined a clock already going: sixteenths from here
                self.running = True
            if self.running:
                self._position += 1
        elif status == START:
            self.running, self._position, self._next_step, self._told = True, -1, 0, True
            self.starts += 1
            if self._last_pulse_s is not None and self._intervals and \
                    at_s - self._last_pulse_s > 4 * max(self._intervals):  # no pulse lately: wait for fresh ones
                self._last_pulse_s = None
                self._intervals.clear()
        elif status == CONTINUE:
            self.running = self._told = True
            self._next_step = math.ceil((self._position + 1) / self.pulses_per_step - 1e-9)
        elif status == STOP:
            self.running, self._told = False, True
            self.stops += 1
        elif status == SONG_POSITION and len(message) >= 3:  # in sixteenth notes (six pulses each)
            self._position = (message[1] | message[2] << 7) * 6 - 1
            self._next_step = math.ceil((self._position + 1) / self.pulses_per_step - 1e-9)
