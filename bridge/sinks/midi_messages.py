"""The MIDI messages of a step, as a live MIDI output sends them: one definition for the MIDI port sink and
the page ``gradbridge serve`` serves (which sends them through Web MIDI).

Pure functions, no I/O. ``step_messages`` turns one step's events into timed messages relative to the step's
arrival; ``message_bytes`` gives a message's bytes; ``voice_channels`` and ``program_changes`` give the
channels and the program changes sent when an output opens.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from bridge.events import MIDI_MODES, PERCUSSION_CHANNEL, Arrangement, StepEvents

#: Kinds of message: note off, note on, control change, pitch bend.
OFF, ON, CC, BEND = 0, 1, 2, 3
#: Note lengths are clipped to this, seconds; > 0, so a note-off always follows its note-on.
NOTE_S = (0.001, 3600.0)


class TimedMessage(NamedTuple):
    """One message of a step.

    Attributes:
        offset_s: seconds after the step's arrival at which it is due (>= 0).
        order: 0 for a note off, 1 otherwise: at one instant, note offs go first.
        kind: ``OFF``, ``ON``, ``CC`` or ``BEND``.
        channel: MIDI channel, 0-based.
        a: note, controller, or (pitch bend) the unsigned 14-bit value.
        b: velocity or controller value (0 for note off and pitch bend).
        note: for ``ON`` and ``OFF``, the step's note number (from 1) pairing an off with its on; else 0.
    """

    offset_s: float
    order: int
    kind: int
    channel: int
    a: int
    b: int
    note: int


def check_midi_mode(arrangement: Arrangement) -> tuple[str, int]:
    """The arrangement's MIDI mode and controller, checked: ``ValueError`` naming the field otherwise."""
    mode, cc = arrangement.midi_mode, int(arrangement.midi_cc)
    if mode not in MIDI_MODES:
        raise ValueError(f"arrangement.midi_mode must be one of {MIDI_MODES}, got {mode!r}")
    if not 0 <= cc <= (31 if mode == "cc14" else 119):
        raise ValueError(f"arrangement.midi_cc must be 0-119 (0-31 for \"cc14\"), got {cc}; fix the preset")
    return mode, cc


def voice_channels(arrangement: Arrangement) -> list[int]:
    """Each layer's MIDI channel, 0-based, clipped to 0–15."""
    return [min(max(int(v.channel), 0), 15) for v in arrangement.voices]


def program_changes(arrangement: Arrangement) -> list[tuple[int, int]]:
    """The program change messages an output sends when it opens: in notes mode, each used channel the
    program of its first layer, as ``(0xC0 | channel, program)``; none in the continuous modes."""
    if arrangement.midi_mode != "notes":
        return []
    programs: dict[int, int] = {}
    for voice, channel in zip(arrangement.voices, voice_channels(arrangement)):
        programs.setdefault(channel, min(max(int(voice.program), 0), 127))
    return [(0xC0 | channel, program) for channel, program in programs.items()]


def step_messages(events: StepEvents, channels: list[int], mode: str, cc: int) -> list[TimedMessage]:
    """One step's messages, each due ``offset_s`` after the step arrives (a step plays relative to its
    arrival): notes (or, in a continuous mode, controller values or pitch bend) per layer, then the NaN/Inf
    and spike alarms' percussion notes on channel 10. Layers sharing a channel strike a pitch once at one
    instant. In the order they were made; sort by ``(offset_s, order)`` to play."""
    notes, out = events.notes, []
    note_ids = iter(range(1, 1 << 62))

    def due(start_s: float) -> float:
        offset = start_s - events.start_s
        return offset if math.isfinite(offset) and offset > 0 else 0.0

    struck: set[tuple[float, int, int]] = set()  # layers sharing a channel strike a pitch once

    def note(at: float, length_s: float, channel: int, pitch: int, velocity: int) -> None:
        pitch, velocity = min(max(int(pitch), 0), 127), min(max(int(velocity), 1), 127)
        if (at, channel, pitch) in struck:
            return
        struck.add((at, channel, pitch))
        nid = next(note_ids)
        length_s = min(max(length_s, NOTE_S[0]), NOTE_S[1]) if math.isfinite(length_s) else NOTE_S[0]
        out.append(TimedMessage(at, 1, ON, channel, pitch, velocity, nid))
        out.append(TimedMessage(at + length_s, 0, OFF, channel, pitch, 0, nid))

    for layer, start, length, pitch, velocity, value in zip(
            notes.layer.tolist(), notes.start_s.tolist(), notes.duration_s.tolist(), notes.midi_note.tolist(),
            notes.velocity.tolist(), notes.value.tolist()):
        if not 0 <= layer < len(channels):
            raise ValueError(f"note for layer {layer}, but the arrangement has {len(channels)} layers")
        at, channel = due(start), channels[layer]
        if mode == "notes":
            note(at, length, channel, pitch, velocity)
        elif math.isfinite(value):
            value = min(max(value, 0.0), 1.0)
            if mode == "cc":
                out.append(TimedMessage(at, 1, CC, channel, cc, round(value * 127), 0))
            elif mode == "cc14":
                v14 = round(value * 16383)
                out.append(TimedMessage(at, 1, CC, channel, cc, v14 >> 7, 0))
                out.append(TimedMessage(at, 1, CC, channel, cc + 32, v14 & 127, 0))
            else:  # pitchbend round(value × 16383) − 8192, kept in its unsigned 14-bit form
                out.append(TimedMessage(at, 1, BEND, channel, round(value * 16383), 0, 0))
    for alarm in (*events.alarms, *events.spikes):
        note(due(alarm.start_s), alarm.duration_s, PERCUSSION_CHANNEL, alarm.midi_note, alarm.velocity)
    return out


def message_bytes(kind: int, channel: int, a: int, b: int) -> tuple[int, ...]:
    """The bytes of one message (note off with velocity 0)."""
    if kind == ON:
        return (0x90 | channel, a, b)
    if kind == OFF:
        return (0x80 | channel, a, 0)
    if kind == CC:
        return (0xB0 | channel, a, b)
    return (0xE0 | channel, a & 0x7F, a >> 7)
