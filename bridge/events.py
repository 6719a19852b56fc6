"""The events every sink consumes: an ``Arrangement`` once per run, then ``StepEvents`` per frame: notes,
NaN/Inf ``Alarm``s and ``Spike`` alarms.

Times are *musical*: seconds from the start of the run, ``step × seconds_per_step``, so a run sounds the
same however fast it trained. Live sinks may play events as they arrive instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: MIDI channel (0-based) reserved for alarms and markers: General MIDI percussion, printed "channel 10".
PERCUSSION_CHANNEL = 9

#: Waveforms the synth can play.
WAVEFORMS = ("sine", "triangle", "square", "saw")

#: How a layer's oscillator starts each note (``Arrangement.phase``): at phase 0, or where it left off.
PHASES = ("reset", "continuous")

#: What a MIDI port or file sends for a layer (``Arrangement.midi_mode``): notes, or continuous control.
MIDI_MODES = ("notes", "cc", "cc14", "pitchbend")

#: Lowest frequency a note is given, in Hz (a norm can never make a silent or negative pitch).
MIN_FREQUENCY_HZ = 1.0


@dataclass(frozen=True)
class LayerVoice:
    """How one layer sounds, fixed for the whole run.

    Attributes:
        index: position of the layer in the frame's norms.
        name: the layer's name (its module's qualified name, or its group's name).
        channel: MIDI channel, 0-based (0–15, never 9).
        program: General MIDI program, 0–127, for the MIDI file and ports.
        waveform: one of ``WAVEFORMS``.
        pan: stereo position, -1.0 (left) to 1.0 (right).
    """

    index: int
    name: str
    channel: int
    program: int
    waveform: str
    pan: float


@dataclass(frozen=True)
class Arrangement:
    """Who plays what, and the run-wide sound settings; sinks receive it once, at open.

    Attributes:
        voices: one ``LayerVoice`` per layer, in layer order.
        mapping_name: name of the preset that made it.
        description: the preset described in plain words.
        sample_rate: audio sample rate in Hz.
        audio_channels: 1 (mono) or 2 (stereo).
        seconds_per_step: musical length of one optimizer step, in seconds.
        tempo_bpm: tempo written to MIDI files, in beats per minute.
        attack_s: voice attack time in seconds (0 = none).
        release_s: voice release time in seconds (0 = none), inside the note's duration.
        phase: ``"reset"`` (each note starts at phase 0) or ``"continuous"`` (a layer's oscillator keeps
            its phase from note to note).
        max_frequency_hz: the synth never plays above this frequency.
        midi_mode: ``"notes"``, or continuous control of each layer's channel: ``"cc"`` (7-bit controller
            ``midi_cc``), ``"cc14"`` (14-bit: coarse ``midi_cc``, fine ``midi_cc + 32``), ``"pitchbend"``.
            Continuous values come from ``Notes.value`` (0–1).
        midi_cc: the controller number for the continuous modes (0–119; 0–31 for ``"cc14"``).
        osc_latency_s: 0 sends OSC bundles "immediately"; above 0, timetagged send time + this many seconds.
    """

    voices: tuple[LayerVoice, ...]
    mapping_name: str
    description: str
    sample_rate: int
    audio_channels: int
    seconds_per_step: float
    tempo_bpm: float
    attack_s: float
    release_s: float
    phase: str
    max_frequency_hz: float
    midi_mode: str = "notes"
    midi_cc: int = 20
    osc_latency_s: float = 0.0

    @property
    def layer_names(self) -> tuple[str, ...]:
        """The layer names, in layer order."""
        return tuple(v.name for v in self.voices)


@dataclass(frozen=True)
class Notes:
    """One frame's notes, as parallel arrays over the layers that sound (NaN/Inf layers do not).

    Attributes:
        layer: layer index of each note, int64.
        start_s: musical start time, seconds from the start of the run, float64.
        duration_s: how long each note sounds, seconds, float64.
        frequency_hz: pitch in Hz for the synth, float64, finite, 0 < f <= max_frequency_hz.
        midi_note: nearest MIDI note number, int64, 0–127.
        velocity: MIDI velocity, int64, 1–127.
        amplitude: synth amplitude, float64, 0–1.
        value: the layer's norm mapped to 0–1 (position in its range), float64, for CC and OSC.
    """

    layer: np.ndarray
    start_s: np.ndarray
    duration_s: np.ndarray
    frequency_hz: np.ndarray
    midi_note: np.ndarray
    velocity: np.ndarray
    amplitude: np.ndarray
    value: np.ndarray

    def __len__(self) -> int:
        return int(self.layer.shape[0])


@dataclass(frozen=True)
class Alarm:
    """A layer whose norm was NaN or ±Inf at this step: a distinct sound, a percussion note in MIDI.

    Attributes:
        layer: layer index.
        kind: ``"nan"``, ``"+inf"`` or ``"-inf"``.
        start_s: musical start time in seconds.
        duration_s: how long the alarm sounds, seconds.
        midi_note: General MIDI percussion note on ``PERCUSSION_CHANNEL``.
        velocity: MIDI velocity, 1–127.
    """

    layer: int
    kind: str
    start_s: float
    duration_s: float
    midi_note: int
    velocity: int


@dataclass(frozen=True)
class Spike:
    """A layer whose norm jumped far above its recent history at this step (its note sounds as well).

    Attributes:
        layer: layer index.
        ratio: the norm divided by the median of the layer's recent norms (above the preset's threshold).
        start_s: musical start time in seconds (the layer's note's start).
        duration_s: how long the spike alarm sounds, seconds.
        midi_note: General MIDI percussion note on ``PERCUSSION_CHANNEL``.
        velocity: MIDI velocity, 1–127.
    """

    layer: int
    ratio: float
    start_s: float
    duration_s: float
    midi_note: int
    velocity: int


@dataclass(frozen=True)
class StepEvents:
    """Everything one frame sounds like.

    Attributes:
        step: optimizer step index.
        start_s: musical time of the step's start, seconds from the start of the run.
        duration_s: musical length of the step, seconds.
        wall_time_s: when the step was captured, seconds since the epoch.
        loss: the step's loss, NaN when unknown.
        lr: the learning rate, NaN when unknown.
        norms: the raw norms, float64, one per layer (NaN/Inf kept as measured).
        notes: the notes this step plays.
        alarms: the NaN/Inf alarms this step sounds.
        spikes: the spike alarms this step sounds (layers whose norm jumped above their recent history).
    """

    step: int
    start_s: float
    duration_s: float
    wall_time_s: float
    loss: float
    lr: float
    norms: np.ndarray
    notes: Notes
    alarms: tuple[Alarm, ...]
    spikes: tuple[Spike, ...] = ()

    @property
    def end_s(self) -> float:
        """Musical time at which the step ends, seconds."""
        return self.start_s + self.duration_s
