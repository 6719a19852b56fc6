"""The outputs a user asked for, described once (``OutputSpec``), and the one function that opens them.

``watch``, the follower, ``follow``, ``replay``, ``render``/``midi`` and the benchmarks all describe their
outputs as an ``OutputSpec`` and open them with ``open_outputs``. Each sink module is imported only when
asked for, so a missing optional dependency (PyAudio) only matters to whoever wants that output.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bridge.errors import OutputPathError
from bridge.frames import RunInfo
from bridge.mapping import Mapping
from bridge.pipeline import Outputs, build_outputs
from bridge.live import LiveSettings
from bridge.presets import Preset
from bridge.rate import CLOCKS, RateControl
from bridge.serve import DEFAULT_HOST, check_token
from bridge.sinks.base import Sink

if TYPE_CHECKING:
    from bridge.serve.output import PageOutput

PathLike = str | os.PathLike[str]


def _path_or_none(value: object, field_name: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{field_name} must be a path (str or os.PathLike) or None, got {type(value).__name__}")


def _same_file(a: str, b: str) -> bool:
    """Whether two paths name one file (existing or not: links and ``..`` resolved)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def refuse_same_files(named: Sequence[tuple[str, str]]) -> None:
    """``OutputPathError`` naming both when two of the ``(what, path)`` pairs name one file (the first an
    input or an output, the second an output that would destroy it)."""
    for index, (name, path) in enumerate(named):
        for what, other in named[:index]:
            if _same_file(path, other):
                raise OutputPathError(f"{name}={path!r} is the same file as {what}={other!r}: one would destroy "
                                      f"the other. Fix: give each its own path")


@dataclass(frozen=True)
class OutputSpec:
    """Every output of a run, as the user asked for it (all optional).

    Attributes:
        record: the run log's path (written by the training hook; here so that no output may take its path).
        wav: path of a WAV file rendered by the built-in synth.
        wav_format: ``"int16"`` (16-bit PCM) or ``"float32"``.
        midi_file: path of a Standard MIDI File (type 1, one track per layer).
        midi: live MIDI output port, by name or a unique part of it (``gradbridge ports`` lists them).
        midi_api: ``"alsa"``, ``"jack"``, ``"coremidi"`` or ``"winmm"``; ``None``: the platform's own.
        midi_virtual: create a virtual MIDI output named ``midi`` (or "gradbridge") for a DAW to connect to.
        osc: live OSC receiver as ``"host:port"``, e.g. ``"127.0.0.1:57120"`` for SuperCollider.
        play: play live through the built-in synth on the default audio output (needs PyAudio).
        serve: serve a web page that plays, plots and routes the run to Web MIDI on this TCP port (0: any
            free one), e.g. 8765 (``bridge.serve``; needs the ``serve`` extra).
        serve_host: address the page is served on: ``"127.0.0.1"`` (default: this machine only; reach it
            through an SSH tunnel), or another (a warning says who can then listen).
        serve_token: the token every request needs (8-256 letters, digits, ``-``, ``_``); ``None``: random.
        every, max_fps, aggregate: live rate control, overriding the preset's ``[live]`` table: on the free
            clock, sound every Nth step, at most ``max_fps`` steps a second; on both clocks, fold the steps
            between two ticks by ``"max"`` or ``"mean"``. Giving ``every`` or ``max_fps`` picks the free clock.
        clock: ``"tempo"`` (live outputs tick at the preset's step length) or ``"free"`` (each step as it
            arrives); ``None``: the preset's ``[live] clock``.
        midi_clock: MIDI clock (24 a quarter note, Song Position and Start at open, Stop at close): ``True``
            on the live MIDI port ``midi``, or the name of a MIDI output of its own; ``False``: only if the
            preset's ``[midi] clock`` asks, on the live MIDI port.
        clock_in: follow the MIDI clock arriving at this MIDI input (tempo, Start, Stop), as a DAW's slave.
        link: follow an Ableton Link session (tempo and beat phase; ``pip install "gradbridge[link]"``).
    """

    record: str | None = None
    wav: str | None = None
    wav_format: str = "int16"
    midi_file: str | None = None
    midi: str | None = None
    midi_api: str | None = None
    midi_virtual: bool = False
    osc: str | None = None
    play: bool = False
    serve: int | None = None
    serve_host: str = DEFAULT_HOST
    serve_token: str | None = None
    every: int | None = None
    max_fps: float | None = None
    aggregate: str | None = None
    clock: str | None = None
    midi_clock: bool | str = False
    clock_in: str | None = None
    link: bool = False

    def __post_init__(self) -> None:
        for name in ("record", "wav", "midi_file"):
            object.__setattr__(self, name, _path_or_none(getattr(self, name), name))
        for name in ("midi", "midi_api", "osc", "clock_in"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name} must be a str or None, got {type(value).__name__}")
        for name in ("midi_virtual", "play", "link"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.serve is not None:
            if isinstance(self.serve, bool) or not isinstance(self.serve, int):
                raise TypeError(f"serve must be a TCP port (int) or None, got {type(self.serve).__name__}")
            if not 0 <= self.serve <= 65535:
                raise ValueError(f"serve must be a TCP port from 0 to 65535 (0: any free one), got {self.serve}; "
                                 "e.g. 8765")
        if not isinstance(self.serve_host, str) or not self.serve_host.strip():
            raise ValueError(f"serve_host must be an address to listen on, e.g. \"127.0.0.1\", got {self.serve_host!r}")
        if self.serve_token is not None:
            check_token(self.serve_token)
        self._check_values()
        self._check_clocks()

    def _check_values(self) -> None:
        """Refuse a WAV format or OSC target the outputs could not use, before anything starts."""
        from bridge.sinks.osc import parse_osc_target

        if self.wav_format not in ("int16", "float32"):
            raise ValueError(f"wav_format must be 'int16' (16-bit PCM) or 'float32'; got {self.wav_format!r}")
        if self.osc is not None:
            parse_osc_target(self.osc)

    def _check_clocks(self) -> None:
        """Refuse a clock, MIDI clock or incoming clock that cannot go together, before anything starts."""
        if self.clock is not None and self.clock not in CLOCKS:
            raise ValueError(f"clock must be one of {', '.join(map(repr, CLOCKS))} or None (the preset's), got "
                             f"{self.clock!r}")
        clock = self.midi_clock
        if not isinstance(clock, (bool, str)) or (isinstance(clock, str) and not clock.strip()):
            raise TypeError(f"midi_clock must be True (on the live MIDI port), False, or the name of a MIDI "
                            f"output of its own; got {clock!r}")
        if clock is True and self.midi is None and not self.midi_virtual:
            raise ValueError("midi_clock=True sends MIDI clock on the live MIDI port, but no port was asked for. "
                             "Fix: add midi=PORT (--midi PORT), or name a port for the clock alone: "
                             "midi_clock=PORT (--midi-clock PORT)")
        if clock is not False and self.clock_in is not None:
            raise ValueError("midi_clock and clock_in were both given: following an incoming MIDI clock, gradbridge "
                             "sends none of its own. Fix: drop one (--midi-clock or --clock-in)")

    @property
    def has_files(self) -> bool:
        """Whether a WAV or MIDI file is asked for."""
        return self.wav is not None or self.midi_file is not None

    @property
    def has_live(self) -> bool:
        """Whether a live output (MIDI port, OSC, speakers, the page, a MIDI clock port) is asked for."""
        return (self.midi is not None or self.midi_virtual or self.osc is not None or self.play
                or self.serve is not None or isinstance(self.midi_clock, str))

    def check_paths(self, inputs: Sequence[tuple[str, str]] = ()) -> None:
        """Refuse, before anything opens, two outputs on one path, or an output on one of ``inputs``
        (``(what, path)`` pairs, e.g. ``("run", "a.gbrun")``): ``OutputPathError`` (a ``ValueError``) naming
        both."""
        refuse_same_files([*inputs, *((name, getattr(self, name)) for name in ("record", "wav", "midi_file")
                                      if getattr(self, name) is not None)])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (for the follower process)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "OutputSpec":
        """The spec written by ``to_dict``."""
        return cls(**values)

    def rate_for(self, mapping: Mapping) -> RateControl:
        """The live rate control: the preset's ``[live]`` settings, each overridden when given here."""
        p = mapping.preset
        return RateControl(every=p.every if self.every is None else self.every,
                           max_fps=p.max_fps if self.max_fps is None else self.max_fps,
                           aggregate=p.aggregate if self.aggregate is None else self.aggregate)

    def live_for(self, mapping: Mapping) -> LiveSettings:
        """How the live outputs keep time: the preset's ``[live]`` settings, each overridden when given here.

        ``every`` or ``max_fps`` given here pick the free clock (they thin it), ``clock_in`` and ``link``
        the tempo clock (they drive it), unless ``clock`` says otherwise (an error for the tempo clock with
        ``every`` or ``max_fps``, and for the free clock with ``clock_in`` or ``link``).
        """
        thinning = self.every is not None or self.max_fps is not None
        following = self.clock_in is not None or self.link
        clock = self.clock or ("free" if thinning else "tempo" if following else mapping.preset.live_clock)
        if clock == "tempo" and thinning:
            given = "every" if self.every is not None else "max_fps"
            raise ValueError(f"{given} thins the free clock, but clock='tempo' was asked for (one tick per step "
                             f"length, the steps between folded into it). Fix: drop {given} (--{given.replace('_', '-')}),"
                             " or drop clock='tempo' (--clock tempo)")
        return LiveSettings(clock=clock, rate=self.rate_for(mapping), clock_in=self.clock_in,
                            midi_api=self.midi_api, link=self.link)


def file_sinks(spec: OutputSpec) -> list[Sink]:
    """The file outputs of ``spec``: a WAV file (built-in synth) and a Standard MIDI File, each when asked."""
    sinks: list[Sink] = []
    if spec.wav is not None:
        from bridge.sinks.wav import WavSink

        sinks.append(WavSink(spec.wav, sample_format=spec.wav_format))
    if spec.midi_file is not None:
        from bridge.sinks.midi_file import MidiFileSink

        sinks.append(MidiFileSink(spec.midi_file))
    return sinks


def live_sinks(spec: OutputSpec, preset: Preset | None = None) -> list[Sink]:
    """The live outputs of ``spec``: MIDI port (with MIDI clock when ``spec`` or ``preset`` asks), a MIDI
    clock port of its own, OSC, speakers, each when asked."""
    sinks: list[Sink] = []
    if spec.midi is not None or spec.midi_virtual:
        from bridge.sinks.midi_port import MidiPortSink

        clock = spec.midi_clock is True or (preset is not None and preset.midi_clock and spec.clock_in is None)
        sinks.append(MidiPortSink(spec.midi, api=spec.midi_api, virtual=spec.midi_virtual, clock=clock))
    if isinstance(spec.midi_clock, str):
        from bridge.sinks.midi_clock_port import MidiClockPort

        sinks.append(MidiClockPort(spec.midi_clock, api=spec.midi_api))
    if spec.osc is not None:
        from bridge.sinks.osc import OscSink, parse_osc_target

        host, port = parse_osc_target(spec.osc)
        sinks.append(OscSink(host, port))
    if spec.play:
        from bridge.sinks.audio import AudioSink

        sinks.append(AudioSink())
    return sinks


def open_outputs(spec: OutputSpec, mapping: Mapping, run_info: RunInfo, *,
                 extra_live_sinks: Sequence[Sink] = (), run_name: str = "",
                 clock_origin_s: float | None = None) -> Outputs:
    """Make and open every output ``spec`` asks for, plus ``extra_live_sinks`` (your own), for ``run_info``
    (``run_name``: what the page calls the run, e.g. its run log's file name).

    Files take every frame; live outputs sound the ticks of the live clock (``spec.live_for``). An output
    that cannot be made or opened is reported once and left out (``Outputs.failed_to_open``); the others go
    on. The page (``spec.serve``) is both: a live sink for what sounds, and, after every other consumer, a
    consumer of every frame for its plots (``page_of(outputs)`` finds it). An incoming clock or Link session
    that cannot be joined raises ``SinkError``. ``clock_origin_s``: where the tempo clock's beat 0 falls
    (``time.monotonic()`` seconds, one clock for every process of a machine), to tick with another
    follower's clock; default: just after the outputs open.
    """
    settings = dataclasses.replace(spec.live_for(mapping), origin_s=clock_origin_s)
    page = None
    if spec.serve is not None:
        from bridge.serve.output import PageOutput

        page = PageOutput(run_info, host=spec.serve_host, port=spec.serve, token=spec.serve_token,
                          where=run_name or os.path.basename(spec.record or ""))
    live = [*live_sinks(spec, mapping.preset), *([page.sink] if page is not None else []), *extra_live_sinks]
    outputs = build_outputs(mapping, run_info, file_sinks(spec), live_sinks=live, live=settings)
    if page is not None and page.sink.name not in outputs.failed_to_open:
        outputs.consumers.append(page.feed)
    return outputs


def page_of(outputs: Outputs) -> PageOutput | None:
    """The page output among ``outputs`` (``OutputSpec.serve``), or ``None`` when none is serving."""
    from bridge.serve.output import PageFeed

    for consumer in outputs.consumers:
        if isinstance(consumer, PageFeed):
            return consumer.page
    return None
