"""The mapping: ``Frame`` → ``StepEvents``, vectorised over layers, driven by a preset.

The mapping is a pure function of the frames it has seen. Its state: each layer's reference level
(``range = "reference"``, ``bridge.reference``) or running range (``range = "auto"``), the recent norms
the spike detector compares with (``bridge.spikes``), and where the next step sounds (``bridge.steps``: by
default each logged step is one musical step; ``keep_gaps`` sounds missing steps as silence). Replaying the same
frames gives the same events, whether they come one at a time (``map_frame``) or in blocks (``map_frames``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bridge.channels import MELODIC_CHANNELS, plan_channels
from bridge.describe import describe, voice_amplitude
from bridge.errors import UsageError
from bridge.events import MIN_FREQUENCY_HZ, Alarm, Arrangement, LayerVoice, Notes, Spike, StepEvents
from bridge.frames import Frame
from bridge.presets import NOTE_NAMES, SCALES, Preset, load_preset
from bridge.reference import ReferenceLevels, reference_value
from bridge.spikes import LOG_FLOOR, SpikeDetector, log_norms
from bridge.steps import MAX_GAP_STEPS, StepClock

log = logging.getLogger("bridge")

__all__ = ["LOG_FLOOR", "MELODIC_CHANNELS", "MIN_FREQUENCY_HZ", "Mapping", "apply_curve", "describe",
           "frequency_to_note", "note_to_frequency", "scale_notes"]


def note_to_frequency(note: np.ndarray | float) -> np.ndarray:
    """MIDI note number(s) → frequency in Hz (A4 = note 69 = 440 Hz, equal temperament)."""
    return 440.0 * np.power(2.0, (np.asarray(note, dtype=np.float64) - 69.0) / 12.0)


def frequency_to_note(frequency_hz: np.ndarray | float) -> np.ndarray:
    """Frequency in Hz → nearest MIDI note number, int64, clipped to 0–127."""
    return _nearest_note(np.maximum(np.asarray(frequency_hz, dtype=np.float64), 1e-3))


def _nearest_note(frequency_hz: np.ndarray) -> np.ndarray:
    """``frequency_to_note`` of a float64 array already at or above 1 mHz."""
    return np.minimum(np.maximum(np.rint(69.0 + 12.0 * np.log2(frequency_hz / 440.0)), 0), 127).astype(np.int64)


def scale_notes(scale: str, root: str, low_note: int, high_note: int) -> np.ndarray:
    """The MIDI notes of ``scale`` on ``root`` from ``low_note`` to ``high_note`` inclusive, ascending."""
    pitch_classes = {(NOTE_NAMES[root] + step) % 12 for step in SCALES[scale]}
    notes = [n for n in range(low_note, high_note + 1) if n % 12 in pitch_classes]
    if not notes:  # a range narrower than the scale's gaps: fall back to its lowest note
        notes = [low_note]
    return np.asarray(notes, dtype=np.int64)


def apply_curve(curve: str, norms: np.ndarray) -> np.ndarray:
    """Norms (finite, >= 0) → the curve's axis: ``linear`` as is, ``log`` base 10, ``sqrt``."""
    if curve == "log":
        return np.log10(np.maximum(norms, LOG_FLOOR))
    if curve == "sqrt":
        return np.sqrt(norms)
    return norms


class Mapping:
    """Turns frames into events following a preset.

    Build it with ``Mapping(preset)`` or ``Mapping.load("pentatonic")``; call ``arrange`` once with the
    layer names, then ``map_frame`` for each frame in step order (live outputs), or ``map_frames`` for a
    block of frames at once (offline outputs): both give the same events.

    A step starts at its musical position × the preset's seconds per step (``bridge.steps.StepClock``): by
    default the n-th frame mapped is at position n; with ``keep_gaps=True``, at its step number minus the
    first one, gaps of at most ``max_gap_steps`` steps sounding as silence.
    """

    def __init__(self, preset: Preset, *, keep_gaps: bool = False, max_gap_steps: int = MAX_GAP_STEPS) -> None:
        if not isinstance(preset, Preset):
            raise TypeError(f"Mapping needs a Preset (see bridge.presets.load_preset), got {type(preset).__name__}")
        self.preset = preset
        self._arrangement: Arrangement | None = None
        self._clock = StepClock(keep_gaps, max_gap_steps)
        self._set_layers(0)
        if preset.mode == "scale":
            self._notes = scale_notes(preset.scale, preset.root, preset.low_note, preset.high_note)
            self._note_frequencies = np.minimum(np.maximum(note_to_frequency(self._notes), MIN_FREQUENCY_HZ),
                                                preset.max_frequency_hz)
        if preset.range is not None:
            self._fixed = apply_curve(preset.curve, np.asarray(preset.range, dtype=np.float64))
        # norms whose sum times this is finite give a finite linear pitch (base_hz + hz_per_unit × norm)
        self._overflow_scale = max(preset.hz_per_unit, 1.0) if preset.mode == "linear_hz" else 1.0

    @classmethod
    def load(cls, name_or_path: str | Path, *, keep_gaps: bool = False) -> "Mapping":
        """A mapping from a built-in preset name or a ``.toml`` path."""
        return cls(load_preset(name_or_path), keep_gaps=keep_gaps)

    @property
    def keep_gaps(self) -> bool:
        """Whether missing steps sound as silence (``bridge.steps``)."""
        return self._clock.keep_gaps

    def fresh(self) -> "Mapping":
        """A new mapping with this one's preset and step rule and no running state."""
        return Mapping(self.preset, keep_gaps=self._clock.keep_gaps, max_gap_steps=self._clock.max_gap_steps)

    @property
    def arrangement(self) -> Arrangement:
        """The arrangement made by ``arrange`` (error if it was not called yet)."""
        if self._arrangement is None:
            raise UsageError("call Mapping.arrange(layer_names) before using the arrangement")
        return self._arrangement

    def arrange(self, layer_names: tuple[str, ...] | list[str]) -> Arrangement:
        """Assign each layer a MIDI channel, program, waveform and pan; reset the running state.

        Channels follow the preset's ``[midi] channels`` (``bridge.channels``): with more than 15 layers,
        layers of one module share a channel, and every channel has one program.
        """
        names = tuple(str(n) for n in layer_names)
        if not names:
            raise ValueError("a mapping needs at least one layer; got no layer names")
        p = self.preset
        count = len(names)
        plan = plan_channels(names, p.midi_channels)
        if plan.how and p.midi_channels == "cycle":
            log.warning("%d layers share the %d melodic MIDI channels (layer %d plays on the channel of layer 1, "
                        "and so on); every layer still has its own track in the MIDI file. To give each its own "
                        "channel, group layers (watch(..., groups=... or depth=...)).",
                        count, len(MELODIC_CHANNELS), len(MELODIC_CHANNELS) + 1)
        if p.pan == "spread" and count > 1:
            pans = np.linspace(-0.8, 0.8, count)
        else:
            pans = np.zeros(count)
        slots = [g % len(MELODIC_CHANNELS) for g in plan.group_of_layer]  # a channel's program: its slot's
        voices = tuple(
            LayerVoice(index=i, name=name, channel=channel, program=p.programs[slot % len(p.programs)],
                       waveform=p.waveforms[i % len(p.waveforms)], pan=float(pans[i]))
            for i, (name, channel, slot) in enumerate(zip(names, plan.channels, slots))
        )
        self._arrangement = Arrangement(
            voices=voices, mapping_name=p.name, description=describe(p, count, names),
            sample_rate=p.sample_rate, audio_channels=p.channels, seconds_per_step=p.seconds_per_step(count),
            tempo_bpm=p.tempo_bpm, attack_s=p.attack_s, release_s=p.release_s, phase=p.phase,
            max_frequency_hz=p.max_frequency_hz, midi_mode=p.midi_mode, midi_cc=p.cc,
            osc_latency_s=p.osc_latency_s,
        )
        self._clock.reset()
        self._set_layers(count)
        return self._arrangement

    def _set_layers(self, count: int) -> None:
        """Empty running state (ranges, references, spike history) and the per-layer constants for ``count``
        layers.

        The layer indices, durations and amplitudes are shared, read-only, by the notes of every step in
        which all layers sound (a sink that wrote into them would raise at once).
        """
        p = self.preset
        self._layers = np.arange(count)
        self._offsets = self._layers * p.note_s if p.layout == "sequential" else np.zeros(count)
        self._low = np.full(count, np.inf)
        self._high = np.full(count, -np.inf)
        self._durations = np.full(count, p.note_s)
        self._voice_amplitude = voice_amplitude(p, count)
        self._amplitudes = np.full(count, self._voice_amplitude)
        for shared in (self._layers, self._durations, self._amplitudes):
            shared.setflags(write=False)
        self._halves = np.full(count, 0.5)
        self._references = ReferenceLevels(count, p.reference_steps) if p.reference else None
        self._spikes = SpikeDetector(count, ratio=p.spike_ratio, window=p.spike_window,
                                     warmup=p.spike_warmup) if p.spike_detect else None

    def map_frame(self, frame: Frame) -> StepEvents:
        """One frame → its events. NaN, ±Inf, zero, negative and huge norms all give valid events."""
        arrangement = self.arrangement
        p = self.preset
        norms = np.asarray(frame.norms, dtype=np.float64)
        count = len(arrangement.voices)
        if norms.shape != (count,):
            raise ValueError(f"frame at step {frame.step} has {norms.size} norms but the mapping was arranged "
                             f"for {count} layers; give frames of the same run, or call arrange() again")
        start_s = self._clock.position(frame.step) * arrangement.seconds_per_step

        # Two Python reductions instead of NumPy ones (a few µs each on a small array). The scaled sum is NaN
        # or ±Inf when a norm is, or when a norm is so huge that the linear pitch would overflow; those
        # frames take the general path below, which gives the same values for finite norms.
        listed = norms.tolist()
        lowest = min(listed)  # meaningful only when the sum is finite (no NaN)
        if math.isfinite(sum(listed) * self._overflow_scale) and (p.curve != "log" or lowest > LOG_FLOOR):
            # the usual case: every norm finite (and, under a log curve, above the floor), so every layer
            # sounds a note and joins its running range
            clean = norms if lowest > 0.0 else np.maximum(norms, 0.0)  # a negative "norm" (bad CSV) sounds as zero
            curved = apply_curve(p.curve, clean)
            if self._references is not None:
                value = self._reference_positions(curved[np.newaxis], None)[0]
            else:
                value = self._position(curved, None)
            frequency, midi_note = self._pitch(clean, value)
            spiking = self._detect_spikes(clean[np.newaxis], None)
            return self._step_events(frame, norms, start_s, start_s + self._offsets, frequency, midi_note,
                                     self._velocity(value), value, None, *spiking)
        finite = np.isfinite(norms)
        clean = np.where(finite, np.maximum(norms, 0.0), 0.0)  # a negative "norm" (bad CSV) sounds as zero
        # a zero norm under a log curve sounds lowest but does not stretch the running range down to 1e-12
        informative = finite & (clean > LOG_FLOOR) if p.curve == "log" else finite
        if self._references is not None:
            placed = self._reference_positions(apply_curve(p.curve, clean)[np.newaxis], informative[np.newaxis])[0]
        else:
            placed = self._position(apply_curve(p.curve, clean), informative)
        value = np.where(finite & ~informative, 0.0, placed)
        with np.errstate(over="ignore"):  # a huge norm's linear pitch overflows to +Inf, then the top frequency
            frequency, midi_note = self._pitch(clean, value)
        spiking = self._detect_spikes(clean[np.newaxis], finite[np.newaxis])
        return self._step_events(frame, norms, start_s, start_s + self._offsets, frequency, midi_note,
                                 self._velocity(value), value, None if bool(finite.all()) else finite, *spiking)

    def map_frames(self, frames: Sequence[Frame]) -> list[StepEvents]:
        """Frames in step order → their events, at once: what ``[self.map_frame(f) for f in frames]`` gives.

        The same events value for value, and the same state afterwards (running ranges, references, spike
        history, step position), so blocks of any size may follow each other and single frames. Computed over
        a (steps, layers) array; for offline outputs, which take blocks of tens of frames. A frame with the
        wrong number of norms raises ``map_frame``'s error after the frames before it were mapped.
        """
        frames = list(frames)
        if not frames:
            return []
        count = len(self.arrangement.voices)
        rows = [np.asarray(frame.norms, dtype=np.float64) for frame in frames]
        bad = next((i for i, row in enumerate(rows) if row.shape != (count,)), None)
        if bad is not None:
            self.map_frames(frames[:bad])
            self.map_frame(frames[bad])  # raises its error for this frame
        p = self.preset
        step_s = self.arrangement.seconds_per_step
        start_list = [position * step_s for position in self._clock.positions([frame.step for frame in frames])]
        starts = np.array(start_list)[:, np.newaxis] + self._offsets

        norms = np.stack(rows)
        finite = np.isfinite(norms)
        clean = np.where(finite, np.maximum(norms, 0.0), 0.0)
        informative = finite & (clean > LOG_FLOOR) if p.curve == "log" else finite
        curved = apply_curve(p.curve, clean)
        if self._references is not None:
            placed = self._reference_positions(curved, informative)
        else:
            placed = self._positions(curved, informative)
        value = np.where(finite & ~informative, 0.0, placed)
        with np.errstate(over="ignore"):  # as in map_frame
            frequency, midi_note = self._pitch(clean, value)
        velocity = self._velocity(value)
        spike, excess = self._detect_spikes(clean, finite)
        all_finite = finite.all(axis=1).tolist()
        if spike is None:
            return [self._step_events(frame, row, start_s, *per_layer, None if every else finite_layers)
                    for frame, row, start_s, every, finite_layers, *per_layer
                    in zip(frames, rows, start_list, all_finite, finite, starts, frequency, midi_note, velocity,
                           value)]
        return [self._step_events(frame, row, start_s, *per_layer, None if every else finite_layers, spikes, ratios)
                for frame, row, start_s, every, finite_layers, spikes, ratios, *per_layer
                in zip(frames, rows, start_list, all_finite, finite, spike, excess, starts, frequency, midi_note,
                       velocity, value)]

    def _detect_spikes(self, clean: np.ndarray, finite: np.ndarray | None) -> tuple[np.ndarray | None,
                                                                                    np.ndarray | None]:
        """Spikes of (steps, layers) clean norms (``finite``: which were finite; None: all): whether each
        spikes and its log10 ratio to its recent median, or ``(None, None)`` when the preset detects none.

        On log10 norms whatever the preset's curve; zero, tiny and non-finite norms neither spike nor join
        the history."""
        if self._spikes is None:
            return None, None
        return self._spikes.detect(log_norms(clean if finite is None else np.where(finite, clean, np.nan)))

    def _step_events(self, frame: Frame, norms: np.ndarray, start_s: float, starts: np.ndarray,
                     frequency: np.ndarray, midi_note: np.ndarray, velocity: np.ndarray, value: np.ndarray,
                     finite: np.ndarray | None, spike: np.ndarray | None = None,
                     excess: np.ndarray | None = None) -> StepEvents:
        """One step's ``StepEvents`` from its per-layer arrays; ``finite`` marks the layers that sound as notes
        (``None``: all), the others sound alarms; ``spike`` (with each layer's log10 ratio ``excess``) marks
        the layers that sound a spike alarm besides their note."""
        p = self.preset
        step_s = self.arrangement.seconds_per_step
        if spike is not None and spike.ndim == 2:  # a single step's (1, layers) row
            spike, excess = spike[0], excess[0]  # type: ignore[index]
        spikes: tuple[Spike, ...] = ()
        if spike is not None and bool(spike.any()):
            ratios = [float(e) for e in excess[spike]]  # type: ignore[index]
            spikes = tuple(Spike(layer=int(i), ratio=10.0 ** e if e < 308.0 else math.inf, start_s=float(starts[i]),
                                 duration_s=p.note_s, midi_note=p.spike_note, velocity=p.alarm_velocity)
                           for i, e in zip(np.flatnonzero(spike), ratios))
        amplitude = self._amplitude(velocity)
        if finite is None:
            notes = Notes(layer=self._layers, start_s=starts, duration_s=self._durations,
                          frequency_hz=frequency, midi_note=midi_note, velocity=velocity,
                          amplitude=amplitude, value=value)
            return StepEvents(step=frame.step, start_s=start_s, duration_s=step_s, wall_time_s=frame.time_s,
                              loss=frame.loss, lr=frame.lr, norms=norms, notes=notes, alarms=(), spikes=spikes)
        notes = Notes(layer=self._layers[finite], start_s=starts[finite], duration_s=self._durations[finite],
                      frequency_hz=frequency[finite], midi_note=midi_note[finite], velocity=velocity[finite],
                      amplitude=amplitude[finite], value=value[finite])
        alarms = tuple(
            Alarm(layer=int(i), kind="nan" if math.isnan(norms[i]) else ("+inf" if norms[i] > 0 else "-inf"),
                  start_s=float(starts[i]), duration_s=p.note_s,
                  midi_note=p.nan_note if math.isnan(norms[i]) else p.inf_note, velocity=p.alarm_velocity)
            for i in np.flatnonzero(~finite)
        )
        return StepEvents(step=frame.step, start_s=start_s, duration_s=step_s, wall_time_s=frame.time_s,
                          loss=frame.loss, lr=frame.lr, norms=norms, notes=notes, alarms=alarms, spikes=spikes)

    def _amplitude(self, velocity: np.ndarray) -> np.ndarray:
        """Each layer's synth amplitude: the voice amplitude, times velocity / 127 when the velocity follows the
        norm (velocity 40 sounds 10 dB below 127), so loudness follows the same rule as the pitch."""
        if self.preset.velocity != "value":
            return self._amplitudes
        return velocity * (self._voice_amplitude / 127.0)

    def _reference_positions(self, curved: np.ndarray, informative: np.ndarray | None) -> np.ndarray:
        """Each (steps, layers) log10 norm's place 0–1 by its ratio to its layer's reference level
        (``range = "reference"``); ``informative`` (None: all) marks the norms that may join a reference."""
        p = self.preset
        usable = np.ones(curved.shape, dtype=bool) if informative is None else informative
        levels = self._references.update(curved, usable)  # type: ignore[union-attr]
        with np.errstate(invalid="ignore"):  # a layer with no usable norm yet has no level: placed at 0
            position = reference_value(curved, levels, p.centre, p.semitones_per_decade, p.low_note, p.high_note)
        return np.where(np.isnan(position), 0.0, position)

    def _pitch(self, clean: np.ndarray, value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Frequency in Hz (float64) and MIDI note (int64) of each clean norm (finite, >= 0) at ``value`` (0–1)."""
        p = self.preset
        if p.mode == "linear_hz":
            frequency = np.minimum(np.maximum(p.base_hz + p.hz_per_unit * clean, MIN_FREQUENCY_HZ),
                                   p.max_frequency_hz)
            return frequency, _nearest_note(frequency)  # at or above MIN_FREQUENCY_HZ
        index = np.rint(value * (len(self._notes) - 1)).astype(np.int64)
        return self._note_frequencies[index], self._notes[index]

    def _velocity(self, value: np.ndarray) -> np.ndarray:
        """MIDI velocity (int64, 1–127) of each value (0–1): fixed by the preset, or 40–127 rising with it."""
        if self.preset.velocity == "value":  # value in 0–1 keeps 40 + 87 × value inside 40–127
            return np.rint(40.0 + 87.0 * value).astype(np.int64)
        velocity = np.empty(value.shape, dtype=np.int64)
        velocity.fill(self.preset.velocity)
        return velocity

    def _position(self, curved: np.ndarray, update: np.ndarray | None) -> np.ndarray:
        """Each layer's place in its range, 0–1: the fixed range, or the running min/max of what it played.

        ``update`` marks the layers whose value joins the running range; ``None`` means all of them.
        """
        if self.preset.range is not None:
            return self._place_fixed(curved)
        if update is None:
            np.minimum(self._low, curved, out=self._low)
            np.maximum(self._high, curved, out=self._high)
            # every value now lies in its range, low <= curved <= high, so (rounding being monotonic) the
            # quotient lies in 0–1 and needs no clipping
            return self._quotient(curved, self._low, self._high, self._halves.copy())
        self._low = np.where(update, np.minimum(self._low, curved), self._low)
        self._high = np.where(update, np.maximum(self._high, curved), self._high)
        return self._place(curved, self._low, self._high, self._halves.copy())

    def _positions(self, curved: np.ndarray, update: np.ndarray) -> np.ndarray:
        """``_position`` over (steps, layers): each step placed in the running range up to and including it."""
        if self.preset.range is not None:
            return self._place_fixed(curved)
        # minimum.accumulate runs minimum(range so far, next value) down the steps, as map_frame does step by step
        low = np.minimum.accumulate(np.vstack((self._low, np.where(update, curved, np.inf))), axis=0)[1:]
        high = np.maximum.accumulate(np.vstack((self._high, np.where(update, curved, -np.inf))), axis=0)[1:]
        self._low, self._high = low[-1].copy(), high[-1].copy()
        return self._place(curved, low, high, np.full(curved.shape, 0.5))

    def _place_fixed(self, curved: np.ndarray) -> np.ndarray:
        """``_place`` in the preset's fixed range, where a tiny range can overflow the division to ±Inf (then
        clipped) and a hand-built preset's huge one can make NaN (then 0.5)."""
        low, high = self._fixed
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            position = self._place(curved, low, high, np.full(curved.shape, 0.5))
        if math.isnan(float(position.sum())):
            np.nan_to_num(position, copy=False, nan=0.5)
        return position

    @classmethod
    def _place(cls, curved: np.ndarray, low: np.ndarray | float, high: np.ndarray | float,
               position: np.ndarray) -> np.ndarray:
        """``_quotient`` clipped to 0–1."""
        cls._quotient(curved, low, high, position)
        return np.minimum(np.maximum(position, 0.0, out=position), 1.0, out=position)

    @staticmethod
    def _quotient(curved: np.ndarray, low: np.ndarray | float, high: np.ndarray | float,
                  position: np.ndarray) -> np.ndarray:
        """``(curved - low) / (high - low)`` written into ``position`` (filled with 0.5, which stays where the
        range is empty). Running ranges hold finite values (or the +Inf/-Inf of "nothing yet", whose span is
        -Inf), so for them nothing here can overflow or divide by zero."""
        span = high - low
        return np.divide(curved - low, span, out=position, where=span > 0)
