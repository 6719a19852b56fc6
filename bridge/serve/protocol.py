"""What the server sends a page over its WebSocket (docs/serve.md has the same tables, for other clients).

Text messages are JSON objects with a ``type``: ``hello`` (once, first: the run, the arrangement, the synth's
constants and the MIDI program changes), ``status`` (about twice a second), ``end`` (the run ended).

Binary messages start with one byte, their kind:

- ``FRAMES`` (1), then 3 spare bytes (so that records start 4-byte aligned), then whole run log records (``bridge.recordformat``: 40 + 4 × layers bytes each, the format
  the run log itself has on disk), one per frame, in step order;
- ``SOUND`` (2): one step to play now, laid out as ``SOUND_HEAD`` then its notes, NaN/Inf alarms, spike alarms
  and MIDI messages;
- ``SOUND_PAST`` (3): the same layout, for a step that sounded before the page connected: drawn in the
  piano roll, never played;
- ``SPIKES`` (4): the spike alarms sounded before the page connected (``SPIKES_HEAD``, then one ``SPIKE_MARK``
  each), for its plots: sent once, after the frames of the history.

All numbers are little-endian. The page never maps norms itself: it plays and sends the events and MIDI
messages computed here by the same mapping and the same message builder as every other live output.
"""

from __future__ import annotations

import math
import struct
import time
from typing import Any

import numpy as np

from bridge.events import Arrangement, StepEvents
from bridge.frames import RunInfo
from bridge.sinks.midi_messages import message_bytes, program_changes, step_messages, voice_channels
from bridge.sinks.playable import (ALARM_AMPLITUDE, ALARM_FREQUENCIES_HZ, MAX_NOTE_S, MIN_FREQUENCY_HZ,
                                   SPIKE_AMPLITUDE, SPIKE_FREQUENCIES_HZ)
from bridge.sinks.synth import ALARM_EDGE_S, LIMIT_KNEE, PEAK

#: The version of these messages, in ``hello``: 2 added the spike alarms and made the frequency a float64.
PROTOCOL_VERSION = 2
FRAMES, SOUND, SOUND_PAST, SPIKES = 1, 2, 3, 4
#: The first 4 bytes of a ``FRAMES`` message.
FRAMES_HEAD = bytes((FRAMES, 0, 0, 0))

#: Header of a sound message: kind, version, 2 spare bytes, counts of notes, alarms and MIDI messages, the
#: step, its capture time (s since the epoch), when the server sent it (s since the epoch), its musical
#: duration (s), how many steps this server had sounded before it, the count of spike alarms, 4 spare bytes
#: (so that the notes, and their float64 frequency, start 8-byte aligned).
SOUND_HEAD = struct.Struct("<BBHIIIqddfIII")
#: One note: layer, offset from the step's start (s), duration (s), amplitude (0-1), value (the norm's place in
#: its range, 0-1), MIDI note, velocity, 2 spare bytes, frequency (Hz, float64: a layer's phase carries on from
#: note to note, so the page's oscillator must turn at the very frequency the built-in synth's does).
NOTE = np.dtype([("layer", "<u4"), ("offset_s", "<f4"), ("duration_s", "<f4"), ("amplitude", "<f4"),
                 ("value", "<f4"), ("midi_note", "u1"), ("velocity", "u1"), ("spare", "<u2"),
                 ("frequency_hz", "<f8")])
#: One alarm: layer, offset (s), duration (s), kind (``ALARM_KINDS`` index, 255 another), MIDI note, velocity.
ALARM = np.dtype([("layer", "<u4"), ("offset_s", "<f4"), ("duration_s", "<f4"), ("kind", "u1"),
                  ("midi_note", "u1"), ("velocity", "u1"), ("spare", "u1")])
#: One spike alarm: layer, offset (s), duration (s), ratio (the norm over its recent median), MIDI note,
#: velocity, 2 spare bytes.
SPIKE = np.dtype([("layer", "<u4"), ("offset_s", "<f4"), ("duration_s", "<f4"), ("ratio", "<f4"),
                  ("midi_note", "u1"), ("velocity", "u1"), ("spare", "<u2")])
#: Header of a ``SPIKES`` message: kind, 3 spare bytes, the count of marks.
SPIKES_HEAD = struct.Struct("<B3xI")
#: One spike alarm in a ``SPIKES`` message: step, layer, ratio.
SPIKE_MARK = np.dtype([("step", "<i8"), ("layer", "<u4"), ("ratio", "<f4")])
#: One MIDI message: offset from the step's arrival (s), note id pairing a note off with its note on (0 for
#: other messages), order (0: note offs go first at one instant), then the message's bytes (3; a 2-byte
#: message has a 0 third byte).
MIDI = np.dtype([("offset_s", "<f4"), ("note", "<u4"), ("order", "u1"), ("status", "u1"), ("data1", "u1"),
                 ("data2", "u1")])
ALARM_KINDS = ("nan", "+inf", "-inf")


def frames_message(records: list[bytes]) -> bytes:
    """A ``FRAMES`` message holding ``records`` (run log records, in step order)."""
    return FRAMES_HEAD + b"".join(records)


def sound_message(events: StepEvents, arrangement: Arrangement, index: int, *, past: bool = False,
                  sent_s: float | None = None) -> bytes:
    """The ``SOUND`` (or, with ``past``, ``SOUND_PAST``) message of one step's events.

    ``index`` counts the steps sounded before this one (the page tells from it how many it missed).
    """
    notes, alarms, spikes = events.notes, events.alarms, events.spikes
    count = len(notes)
    note_rows = np.zeros(count, dtype=NOTE)
    if count:
        note_rows["layer"] = notes.layer
        note_rows["offset_s"] = notes.start_s - events.start_s
        note_rows["duration_s"] = notes.duration_s
        note_rows["frequency_hz"] = notes.frequency_hz
        note_rows["amplitude"] = notes.amplitude
        note_rows["value"] = notes.value
        note_rows["midi_note"] = np.clip(notes.midi_note, 0, 127)
        note_rows["velocity"] = np.clip(notes.velocity, 0, 127)
    alarm_rows = np.zeros(len(alarms), dtype=ALARM)
    for row, alarm in zip(alarm_rows, alarms):
        row["layer"], row["offset_s"], row["duration_s"] = alarm.layer, alarm.start_s - events.start_s, alarm.duration_s
        row["kind"] = ALARM_KINDS.index(alarm.kind) if alarm.kind in ALARM_KINDS else 255
        row["midi_note"], row["velocity"] = min(max(alarm.midi_note, 0), 127), min(max(alarm.velocity, 0), 127)
    spike_rows = np.zeros(len(spikes), dtype=SPIKE)
    for row, spike in zip(spike_rows, spikes):
        row["layer"], row["offset_s"], row["duration_s"] = spike.layer, spike.start_s - events.start_s, spike.duration_s
        row["ratio"] = spike.ratio
        row["midi_note"], row["velocity"] = min(max(spike.midi_note, 0), 127), min(max(spike.velocity, 0), 127)
    midi = _midi_rows(events, arrangement)
    head = SOUND_HEAD.pack(SOUND_PAST if past else SOUND, PROTOCOL_VERSION, 0, count, len(alarms), len(midi),
                           events.step, _finite(events.wall_time_s), time.time() if sent_s is None else sent_s,
                           _finite(events.duration_s), index, len(spikes), 0)
    return head + note_rows.tobytes() + alarm_rows.tobytes() + spike_rows.tobytes() + midi.tobytes()


def spike_marks(events: StepEvents) -> np.ndarray:
    """The step's spike alarms as ``SPIKE_MARK`` rows (step, layer, ratio), for the history of the plots."""
    marks = np.zeros(len(events.spikes), dtype=SPIKE_MARK)
    for row, spike in zip(marks, events.spikes):
        row["step"], row["layer"], row["ratio"] = events.step, spike.layer, spike.ratio
    return marks


def spikes_message(marks: np.ndarray) -> bytes:
    """A ``SPIKES`` message holding ``marks`` (``SPIKE_MARK`` rows, in the order they sounded)."""
    return SPIKES_HEAD.pack(SPIKES, len(marks)) + np.ascontiguousarray(marks, dtype=SPIKE_MARK).tobytes()


def _midi_rows(events: StepEvents, arrangement: Arrangement) -> np.ndarray:
    """The step's MIDI messages as the MIDI port output makes them, in the order it plays them."""
    messages = step_messages(events, voice_channels(arrangement), arrangement.midi_mode, int(arrangement.midi_cc))
    messages.sort(key=lambda m: (m.offset_s, m.order))  # stable: as the port's heap (due, order, sequence)
    rows = np.zeros(len(messages), dtype=MIDI)
    for row, message in zip(rows, messages):
        data = message_bytes(message.kind, message.channel, message.a, message.b)
        row["offset_s"], row["note"], row["order"] = message.offset_s, message.note, message.order
        row["status"], row["data1"], row["data2"] = data
    return rows


def hello(run_info: RunInfo, arrangement: Arrangement, *, where: str, history_frames: int, stride: int,
          record_bytes: int) -> dict[str, Any]:
    """The ``hello`` message: what the page needs before the first frame."""
    return {
        "type": "hello", "version": PROTOCOL_VERSION, "where": where, "server_time_s": time.time(),
        "layer_names": list(run_info.layer_names), "metadata": run_info.metadata,
        "record_bytes": record_bytes, "history_frames": history_frames, "history_stride": stride,
        "arrangement": {
            "mapping_name": arrangement.mapping_name, "description": arrangement.description,
            "sample_rate": arrangement.sample_rate, "audio_channels": arrangement.audio_channels,
            "seconds_per_step": arrangement.seconds_per_step, "tempo_bpm": arrangement.tempo_bpm,
            "attack_s": arrangement.attack_s, "release_s": arrangement.release_s, "phase": arrangement.phase,
            "max_frequency_hz": arrangement.max_frequency_hz, "midi_mode": arrangement.midi_mode,
            "voices": [{"index": v.index, "name": v.name, "channel": v.channel, "program": v.program,
                        "waveform": v.waveform, "pan": v.pan} for v in arrangement.voices],
        },
        "synth": {"alarm_frequencies_hz": list(ALARM_FREQUENCIES_HZ), "alarm_amplitude": ALARM_AMPLITUDE,
                  "spike_frequencies_hz": list(SPIKE_FREQUENCIES_HZ), "spike_amplitude": SPIKE_AMPLITUDE,
                  "alarm_edge_s": ALARM_EDGE_S, "min_frequency_hz": MIN_FREQUENCY_HZ, "max_note_s": MAX_NOTE_S,
                  "limit_knee": LIMIT_KNEE, "peak": PEAK, "alarm_kinds": list(ALARM_KINDS)},
        "midi": {"programs": [list(message) for message in program_changes(arrangement)],
                 "channels": sorted(set(voice_channels(arrangement)))},
    }


def _finite(value: float) -> float:
    return float(value) if math.isfinite(value) else 0.0
