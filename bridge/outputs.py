"""Build the sinks a user asked for by name (files, MIDI port, OSC, speakers).

Each sink module is imported only when asked for, so a missing optional dependency (PyAudio) only
matters to whoever wants that output.
"""

from __future__ import annotations

import os

from bridge.sinks.base import Sink

PathLike = str | os.PathLike[str]


def file_sinks(*, wav: PathLike | None = None, midi_file: PathLike | None = None,
               wav_format: str = "int16") -> list[Sink]:
    """The offline outputs: a WAV file (built-in synth) and a Standard MIDI File, each when a path is given."""
    sinks: list[Sink] = []
    if wav is not None:
        from bridge.sinks.wav import WavSink

        sinks.append(WavSink(wav, sample_format=wav_format))
    if midi_file is not None:
        from bridge.sinks.midi_file import MidiFileSink

        sinks.append(MidiFileSink(midi_file))
    return sinks


def live_sinks(*, midi: str | None = None, midi_api: str | None = None, midi_virtual: bool = False,
               osc: str | None = None, play: bool = False) -> list[Sink]:
    """The live outputs.

    Args:
        midi: a MIDI output port's name (exact or a unique part of it; ``gradbridge ports`` lists them), or
            the name of the virtual port to create with ``midi_virtual``.
        midi_api: ``"alsa"``, ``"jack"``, ``"coremidi"`` or ``"winmm"`` (``None``: the platform's own).
        midi_virtual: create a virtual output port named ``midi`` instead of opening an existing one.
        osc: ``"host:port"`` of an OSC receiver, e.g. ``"127.0.0.1:57120"`` (SuperCollider's sclang).
        play: play through the built-in synth on the default audio output (needs PyAudio).
    """
    sinks: list[Sink] = []
    if midi is not None or midi_virtual:
        from bridge.sinks.midi_port import MidiPortSink

        sinks.append(MidiPortSink(midi, api=midi_api, virtual=midi_virtual))
    if osc is not None:
        from bridge.sinks.osc import OscSink, parse_osc_target

        host, port = parse_osc_target(osc)
        sinks.append(OscSink(host, port))
    if play:
        from bridge.sinks.audio import AudioSink

        sinks.append(AudioSink())
    return sinks
