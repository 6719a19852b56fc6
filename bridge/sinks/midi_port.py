"""``MidiPortSink``: live MIDI to a DAW or synth through python-rtmidi (ALSA, JACK, CoreMIDI, Windows MM).

``send`` only turns a step into timed messages on a heap; one scheduler thread writes each when it is due.
A live clock's ticks (``send_tick``) come a few milliseconds early and are written at their moment; with
``clock=True`` the same thread writes MIDI clock (``bridge.sinks.midi_clock``) on the same grid, so a
sixteenth note's note-ons go out right after its pulse.
Ports are found through ``bridge.sinks.midi_system`` and opened with python-rtmidi itself, since mido's
backend turns any client name into a virtual port. On JACK a ``JackWatch`` notices the server stopping,
and the sink stops writing first (python-rtmidi would block the interpreter once its buffer fills).
"""

from __future__ import annotations

import atexit
import heapq
import itertools
import math
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import rtmidi

from bridge.errors import SinkError
from bridge.events import Arrangement, StepEvents
from bridge.sinks.midi_clock import CLOCK_PULSE, RAW, STOP, MidiClockWriter, PulseTrain, writer_to_realtime
from bridge.sinks.midi_messages import (BEND, CC, OFF, ON, check_midi_mode, program_changes, step_messages,
                                        voice_channels)
from bridge.sinks.midi_system import (API_LABELS, NO_OUTPUTS_FIX, JackWatch, check_api, match_port, open_rtmidi,
                                      resolve_api)

if TYPE_CHECKING:
    from bridge.ticks import Tick

log = logging.getLogger("bridge")

#: Controller 123, All Notes Off, sent with value 0 on every used channel at close.
ALL_NOTES_OFF = 123
#: A message written more than this many seconds after it was due counts as late.
LATE_AFTER_S = 0.010

_CHECK_S = 0.25  # how often the scheduler makes sure the port (and the JACK server) still exist
_SETTLE_PERIODS, _SETTLE_MIN_S, _SETTLE_MAX_S = 4, 0.05, 0.25  # JACK: let a new or closing connection settle
_JOIN_S = 5.0
_OFF, _ON, _CC, _BEND, _RAW = OFF, ON, CC, BEND, RAW  # _RAW: a system message (status a, data bytes packed in b)
_Item = tuple[float, int, int, int, int, int, int, int]  # due (monotonic s), order, seq, kind, channel, a, b, note id


@dataclass(frozen=True)
class MidiPortCounters:
    """What a MIDI port sink wrote: messages, notes on and off, and messages later than ``LATE_AFTER_S``."""

    messages_sent: int = 0
    notes_on: int = 0
    notes_off: int = 0
    late_messages: int = 0
    max_late_s: float = 0.0


class MidiPortSink(MidiClockWriter):
    """Plays each step live on a MIDI output port, one channel per layer (alarms on channel 10, index 9).

    A ``bridge.ticks.Tick`` (``send_tick``) sounds at its ``due_s``; a bare ``send`` sounds at once.

    Args:
        port: an existing output, by exact name or a unique case-insensitive part of it; ``None`` opens the
            first output. With ``virtual=True``: the name of the port to create (default ``client_name``).
        api: ``"alsa"``, ``"jack"``, ``"coremidi"``, ``"winmm"`` or ``None`` (Linux: ALSA if
            ``/dev/snd/seq`` exists, else JACK if a server answers).
        virtual: create a virtual output for a DAW to connect to (not possible with Windows MM).
        client_name: the MIDI client's name as other programs see it.
        clock: also send MIDI clock once the live clock starts it (``start_clock``; Stop at ``stop_clock``
            or close).
    """

    #: Ticks come ``bridge.clock.LEAD_S`` before their moment; this sink writes them at it.
    schedules_ahead = True

    def __init__(self, port: str | None = None, *, api: str | None = None, virtual: bool = False,
                 client_name: str = "gradbridge", clock: bool = False) -> None:
        if port is not None and not isinstance(port, str):
            raise TypeError(f"port must be a str (a MIDI port name) or None, got {type(port).__name__}")
        if not isinstance(virtual, bool):
            raise TypeError(f"virtual must be a bool, got {type(virtual).__name__}")
        if not isinstance(client_name, str) or not client_name.strip():
            raise ValueError(f"client_name must be a non-empty str, got {client_name!r}")
        if not isinstance(clock, bool):
            raise TypeError(f"clock must be True or False, got {clock!r}")
        self.wants_clock = clock
        self._pulses: PulseTrain | None = None
        self.requested_api = check_api(api)
        self.port, self.virtual, self.client_name = port, virtual, client_name
        shown = port if port is not None else (client_name if virtual else "(the first output)")
        self.name = f"MIDI port {shown}" + (" (virtual)" if virtual else "")
        self.api: str | None = None
        self.port_name: str | None = None
        self._out: rtmidi.MidiOut | None = None
        self._watch: JackWatch | None = None
        self._thread: threading.Thread | None = None
        self._cond, self._close_lock = threading.Condition(), threading.Lock()
        self._heap: list[_Item] = []
        self._seq, self._note_ids = itertools.count(), itertools.count(1)
        self._sounding: dict[tuple[int, int], int] = {}  # (channel, pitch) → id of the note sounding there
        self._used_channels: set[int] = set()
        self._stopping = self._closed = self._error_raised = False
        self._error: Exception | None = None
        self._counts = [0, 0, 0, 0]  # messages, notes on, notes off, late
        self._max_late_s = 0.0

    @property
    def counters(self) -> MidiPortCounters:
        """A snapshot of what was written so far."""
        return MidiPortCounters(*self._counts, max_late_s=self._max_late_s)

    def open(self, arrangement: Arrangement) -> None:
        """Open the port, send each used channel its program (notes mode), start the scheduler thread."""
        if not isinstance(arrangement, Arrangement):
            raise TypeError(f"arrangement must be an Arrangement, got {type(arrangement).__name__}")
        if self._out is not None or self._closed:
            raise SinkError(f"{self.name} was opened before; make a new MidiPortSink for another run")
        if not arrangement.voices:
            raise ValueError("arrangement.voices is empty; a MIDI port needs at least one layer")
        self._mode, self._cc = check_midi_mode(arrangement)
        self._channels = voice_channels(arrangement)
        self._start(program_changes(arrangement))

    def _start(self, programs: list[tuple[int, int]]) -> None:
        """Open the port, send the program changes ``programs`` (messages), start the scheduler thread."""
        self.api = resolve_api(self.requested_api)
        if self.virtual and self.api == "winmm":
            raise SinkError("Windows MM cannot create virtual MIDI ports. Fix: install a loopback driver such as "
                            "loopMIDI, create a port there and pass its name (without virtual=True).")
        self._out = self._open_port(self.api)
        try:
            if self.api == "jack":
                self._watch = JackWatch(self.client_name)
                if not self.virtual:  # the connection starts with a later JACK cycle: programs sent now were lost
                    self._settle()
            self._used_channels.update(self._channels)
            for message in programs:
                self._write(message)
        except Exception:
            self._release_port()
            raise
        self._thread = threading.Thread(target=self._run, name=f"gradbridge-{self.name}", daemon=True)
        self._thread.start()
        atexit.register(self.close)
        log.info("%s: sending to %r on %s", self.name, self.port_name, API_LABELS[self.api])

    def _open_port(self, api: str) -> rtmidi.MidiOut:
        def connect(out: rtmidi.MidiOut) -> None:
            if self.virtual:
                self.port_name = self.port or self.client_name
                out.open_virtual_port(self.port_name)
                return
            ports = out.get_ports()
            if self.port is None and not ports:
                raise SinkError(f"there are no MIDI outputs on {API_LABELS[api]}. {NO_OUTPUTS_FIX}")
            self.port_name = ports[0] if self.port is None else match_port(self.port, ports, api)
            out.open_port(ports.index(self.port_name), "out")

        return open_rtmidi(rtmidi.MidiOut, api, self.client_name, connect, lambda: f"MIDI port {self.port_name!r}")

    def send(self, events: StepEvents) -> None:
        """Schedule one step's messages, relative to now; raises the scheduler's error if the port failed."""
        self._schedule(events, time.monotonic())

    def send_tick(self, tick: Tick) -> None:
        """Schedule a tick's messages at its moment (``tick.due_s``, ``time.monotonic()`` seconds)."""
        self._schedule(tick.events, tick.due_s)

    def _check_usable(self) -> None:
        if self._error is not None:
            self._error_raised = True
            raise self._error
        if self._out is None or self._closed:
            raise SinkError(f"{self.name} is not open; call open(arrangement) first (and not after close)")

    def _schedule(self, events: StepEvents, at_s: float) -> None:
        if not isinstance(events, StepEvents):
            raise TypeError(f"events must be StepEvents, got {type(events).__name__}")
        self._check_usable()
        items = self._messages_of(events, at_s)
        with self._cond:
            for item in items:
                heapq.heappush(self._heap, item)
            self._cond.notify()

    def _messages_of(self, events: StepEvents, now: float) -> list[_Item]:
        """The step's messages (``bridge.sinks.midi_messages.step_messages``) as heap items due from ``now``."""
        seq, first_id = self._seq, next(self._note_ids)
        items = [(now + m.offset_s, m.order, next(seq), m.kind, m.channel, m.a, m.b, m.note and first_id + m.note)
                 for m in step_messages(events, self._channels, self._mode, self._cc)]
        self._note_ids = itertools.count(first_id + len(items) + 1)
        return items

    def _run(self) -> None:
        """The scheduler thread: write each message (and MIDI clock pulse) when due; check the port every
        ``_CHECK_S``, between two messages more than ``_CHECK_S / 10`` apart."""
        try:
            if self.wants_clock:
                writer_to_realtime()
            next_check = time.monotonic() + _CHECK_S
            while True:
                with self._cond:
                    while not self._stopping:
                        now = time.monotonic()
                        due = min(self._heap[0][0] if self._heap else math.inf,
                                  self._pulses.next_due() if self._pulses is not None else math.inf)
                        if due <= now or (now >= next_check and due - now > _CHECK_S / 10):
                            break
                        self._cond.wait((due if now >= next_check else min(next_check, due)) - now)
                    if self._stopping:
                        return
                    now, batch = time.monotonic(), []
                    pulses = self._pulses.take_due(now) if self._pulses is not None else 0
                    while self._heap and self._heap[0][0] <= now:
                        batch.append(heapq.heappop(self._heap))
                if pulses:
                    for _ in range(pulses):
                        self._write(CLOCK_PULSE)
                elif not batch and now >= next_check:
                    self._check_port()
                    next_check = time.monotonic() + _CHECK_S
                for item in batch:
                    self._play(item)
        except Exception as exc:  # recorded; raised by the next send, or by close
            if not isinstance(exc, SinkError):
                wrapped = SinkError(f"{self.name} failed writing to {self.port_name!r}: {type(exc).__name__}: {exc}")
                wrapped.__cause__, exc = exc, wrapped
            self._error = exc
            log.debug("%s: scheduler stopped: %s", self.name, self._error)

    def _check_port(self) -> None:
        if self._watch is not None and self._watch.gone.is_set():
            raise SinkError(f"the JACK server stopped, so {self.name} stopped sending. Fix: restart JACK "
                            "(`jackd -d dummy &`), reconnect, and start the output again.")
        if not self.virtual and self._out is not None and self.port_name not in self._out.get_ports():
            raise SinkError(f"MIDI port {self.port_name!r} is gone (the program or device that owned it quit or was "
                            "unplugged). Fix: start it again and restart the output; `gradbridge ports` lists outputs.")

    def _play(self, item: _Item) -> None:
        due_s, _, _, kind, channel, a, b, nid = item
        late = time.monotonic() - due_s
        if late > LATE_AFTER_S:
            self._counts[3] += 1
            self._max_late_s = max(self._max_late_s, late)
        if kind == _ON:
            if (channel, a) in self._sounding:  # struck again while sounding: end it first
                self._note_off(channel, a)
            self._write((0x90 | channel, a, b))
            self._sounding[(channel, a)] = nid
            self._counts[1] += 1
            self._used_channels.add(channel)
        elif kind == _OFF:
            if self._sounding.get((channel, a)) == nid:  # else a newer note of that pitch ended it already
                self._note_off(channel, a)
        elif kind == _CC:
            self._write((0xB0 | channel, a, b))
        elif kind == _RAW:  # channel: how many data bytes, packed in b
            self._write((a,) if channel == 0 else (a, b & 0xFF, b >> 8))
        else:
            self._write((0xE0 | channel, a & 0x7F, a >> 7))

    def _note_off(self, channel: int, pitch: int) -> None:
        self._write((0x80 | channel, pitch, 0))
        del self._sounding[(channel, pitch)]
        self._counts[2] += 1

    def _write(self, message: tuple[int, ...]) -> None:
        if self._watch is not None and self._watch.gone.is_set():
            self._check_port()  # raises: writing to a stopped JACK server would block
        if self._out is None:
            raise SinkError(f"{self.name} is closed")
        try:
            self._out.send_message(message)
        except rtmidi.RtMidiError as exc:
            raise SinkError(f"could not write to MIDI port {self.port_name!r}: {exc}. Fix: check the device "
                            "or program is still there (`gradbridge ports`).") from exc
        self._counts[0] += 1

    def close(self) -> None:
        """Stop the scheduler, write what was already due, end every sounding note, send All Notes Off on each
        used channel, close the port.

        Idempotent; safe in an exception handler. Raises the port's error if no ``send`` has reported it yet.
        """
        with self._close_lock:
            if self._closed:
                return
            with self._cond:
                self._stopping = True
                self._cond.notify()
            if self._thread is not None:
                self._thread.join(_JOIN_S)
                if self._thread.is_alive():
                    self._closed = True  # the thread still owns the port: leave it, report
                    raise SinkError(f"{self.name}: the scheduler did not stop within {_JOIN_S:g} s")
            problem = self._silence_and_release()
            self._closed = True
            atexit.unregister(self.close)
        if self._error is not None and not self._error_raised:
            self._error_raised = True
            raise self._error
        if problem is not None:
            raise problem

    def _silence_and_release(self) -> Exception | None:
        if self._out is None:
            return None
        problem: Exception | None = None
        try:
            if self._watch is None or not self._watch.gone.is_set():
                now = time.monotonic()  # what was due already is written: the scheduler may not have woken yet
                for _ in range(self._pulses.take_due(now) if self._pulses is not None else 0):
                    self._write(CLOCK_PULSE)
                while self._heap and self._heap[0][0] <= now:
                    self._play(heapq.heappop(self._heap))
                if self._pulses is not None and not self._pulses.stopped:
                    self._pulses.stop(now)
                    self._write((STOP,))
                for channel, pitch in list(self._sounding):
                    self._note_off(channel, pitch)
                for channel in sorted(self._used_channels):
                    self._write((0xB0 | channel, ALL_NOTES_OFF, 0))
        except Exception as exc:  # reported by close; the port is released all the same
            problem = exc
        finally:
            self._release_port()
        return problem

    def _settle(self) -> None:
        """On JACK, wait a few periods: a connection made or about to be undone reaches receivers a cycle late."""
        period_s = self._watch.period_s if self._watch is not None else 0.0
        time.sleep(min(max(_SETTLE_PERIODS * period_s, _SETTLE_MIN_S), _SETTLE_MAX_S))

    def _release_port(self) -> None:
        out, self._out = self._out, None
        try:
            if out is not None:
                if self.api == "jack" and not (self._watch is not None and self._watch.gone.is_set()):
                    self._settle()  # else a receiver running late misses the last note-offs
                out.close_port()  # on JACK this waits (up to 1 s) for what was written to be taken
                out.delete()
        finally:
            if self._watch is not None:
                self._watch.close()

    def __enter__(self) -> "MidiPortSink":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
