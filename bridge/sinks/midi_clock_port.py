"""``MidiClockPort``: MIDI clock on a MIDI output of its own (``--midi-clock PORT``, ``watch(midi_clock=PORT)``).

The live MIDI port's own scheduler thread writes the clock (``bridge.sinks.midi_clock``): a clock port is a
``MidiPortSink`` that carries no notes, only Song Position, Start, the pulses and Stop.
"""

from __future__ import annotations

from bridge.events import Arrangement, StepEvents
from bridge.sinks.midi_port import MidiPortSink


class MidiClockPort(MidiPortSink):
    """MIDI clock on a MIDI output of its own.

    Args:
        port: an existing output, by exact name or a unique part of it (``gradbridge ports`` lists them).
        api: ``"alsa"``, ``"jack"``, ``"coremidi"``, ``"winmm"`` or ``None`` (the platform's own).
        client_name: the MIDI client's name as other programs see it.
    """

    def __init__(self, port: str, *, api: str | None = None, client_name: str = "gradbridge-clock") -> None:
        if not isinstance(port, str) or not port.strip():
            raise TypeError(f"a MIDI clock port must be named (a non-empty str), got {port!r}")
        super().__init__(port, api=api, client_name=client_name, clock=True)
        self.name = f"MIDI clock {port}"

    def open(self, arrangement: Arrangement) -> None:
        """Open the port and start its writer thread: no program change, no channel (it carries no notes)."""
        if not isinstance(arrangement, Arrangement):
            raise TypeError(f"arrangement must be an Arrangement, got {type(arrangement).__name__}")
        self._mode, self._cc, self._channels = "notes", 0, []
        self._start([])

    def send(self, events: StepEvents) -> None:
        """Notes do not go to a clock port."""

    def send_tick(self, tick: object) -> None:
        """Ticks do not go to a clock port."""
