"""A preset in plain words, printed at start-up so a listener knows what they hear."""

from __future__ import annotations

import math
from collections.abc import Sequence

from bridge.channels import plan_channels
from bridge.presets import Preset

__all__ = ["FULL_VOICES", "describe", "voice_amplitude"]

#: Layers that sound at once at the preset's full amplitude; above that, each voice is scaled by
#: sqrt(FULL_VOICES / layers), so a chord of many layers keeps about the loudness of one of eight.
FULL_VOICES = 8


def voice_amplitude(preset: Preset, layer_count: int) -> float:
    """The synth amplitude of one voice (0–1) with ``layer_count`` layers: the preset's, scaled down by
    sqrt(FULL_VOICES / layers) when more than ``FULL_VOICES`` layers sound at once (``"chord"`` layout)."""
    if preset.layout != "chord" or layer_count <= FULL_VOICES:
        return preset.amplitude
    return preset.amplitude * math.sqrt(FULL_VOICES / layer_count)


def describe(preset: Preset, layer_count: int | None = None, layer_names: Sequence[str] | None = None) -> str:
    """The preset in plain words; with the layers' count (and names), also their voices and channels."""
    p = preset
    head = f"{p.name}: {p.description}" if p.description else p.name
    sentences = [head if head.endswith((".", "!", "?")) else head + "."]
    tone = f"{p.note_s * 1000:g} ms {'/'.join(sorted(set(p.waveforms), key=p.waveforms.index))} tone"
    if p.layout == "sequential":
        sentences.append(f"Each optimizer step plays every layer in turn, a {tone} per layer, then "
                         f"{p.gap_s * 1000:g} ms of silence.")
    else:
        sentences.append(f"Each optimizer step lasts {p.seconds_per_step(1) * 1000:g} ms "
                         f"({p.tempo_bpm:g} BPM); every layer plays a {tone} at once.")
    sentences.append(_pitch(p))
    sentences.append(_loudness(p, layer_count))
    if p.midi_mode == "cc":
        sentences.append(f"MIDI: each layer's channel sends controller {p.cc} (0–127) following the norm.")
    elif p.midi_mode == "cc14":
        sentences.append(f"MIDI: each layer's channel sends 14-bit controller {p.cc}/{p.cc + 32} following the norm.")
    elif p.midi_mode == "pitchbend":
        sentences.append("MIDI: each layer's channel sends pitch bend following the norm.")
    if p.live_clock == "tempo":
        sentences.append(f"Live outputs tick once a step ({p.seconds_per_step(layer_count or 1) * 1000:g} ms), each "
                         f"tick the {p.aggregate} of the steps since the last; alarms always sound.")
    elif p.every > 1 or p.max_fps > 0:
        limits = [f"every {p.every} steps"] if p.every > 1 else []
        limits += [f"at most {p.max_fps:g} steps a second"] if p.max_fps > 0 else []
        sentences.append(f"Live outputs sound {' and '.join(limits)}, the {p.aggregate} of the steps in between.")
    if p.osc_latency_s > 0:
        sentences.append(f"OSC bundles are timetagged {p.osc_latency_s * 1000:g} ms ahead.")
    if layer_count is not None:
        names = list(layer_names) if layer_names is not None else [f"layer{i}" for i in range(layer_count)]
        sentences.append(plan_channels(names, p.midi_channels).describe())
    sentences.append(f"A NaN norm sounds an alarm (MIDI percussion note {p.nan_note} on channel 10), an infinite "
                     f"one another (note {p.inf_note}).")
    if p.spike_detect:
        sentences.append(f"A spike alarm (a rising two-tone beep; MIDI percussion note {p.spike_note}) sounds when "
                         f"a layer's norm jumps above {p.spike_ratio:g} times the median of its last "
                         f"{p.spike_window} steps.")
    return " ".join(sentences)


def _pitch(p: Preset) -> str:
    if p.mode == "linear_hz":
        return (f"Pitch is {p.base_hz:g} Hz + {p.hz_per_unit:g} Hz per unit of gradient norm: higher norm, "
                "higher pitch.")
    notes = f"{p.root} {p.scale.replace('_', ' ')} between MIDI notes {p.low_note} and {p.high_note}"
    if p.reference:
        return (f"Pitch follows each layer's norm against where that layer started (the median of its first "
                f"{p.reference_steps} norms, or its first norm if lower, so no early spike can capture it): "
                f"{p.semitones_per_decade:g} semitones higher for each factor of ten above it, lower below it, "
                f"around MIDI note {p.centre:g}, snapped to {notes}; an exploding layer climbs and stays high, a "
                "vanishing one sinks, a steady one holds.")
    if p.range is None:
        where = "its place between the lowest and highest norm that layer has had so far"
    else:
        where = f"its place in the fixed range {p.range[0]:g}–{p.range[1]:g}"
    return f"Pitch follows the norm on a {p.curve} curve ({where}), snapped to {notes}."


def _loudness(p: Preset, layer_count: int | None) -> str:
    sound = "stereo, layers spread left to right" if p.channels == 2 and p.pan == "spread" else (
        "stereo, centred" if p.channels == 2 else "mono")
    amplitude = p.amplitude if layer_count is None else voice_amplitude(p, layer_count)
    text = f"Amplitude {amplitude:.3g} per voice"
    if layer_count is not None and amplitude != p.amplitude:
        text += f" (the preset's {p.amplitude:g} scaled by √({FULL_VOICES}/{layer_count}) for {layer_count} voices)"
    if p.velocity == "value":
        text += (", louder as the norm rises by the same rule as the pitch (MIDI velocity 40–127; in the synth "
                 "velocity/127 of it)")
    return f"{text}, {sound}, {p.sample_rate} Hz; the mix never exceeds -1 dBFS."
