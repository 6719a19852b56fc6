"""Mapping presets: TOML files in ``mappings/``, loaded by name or path, validated, described in plain words.

A preset has four tables (every key optional; defaults below):

``[preset]``   name, description
``[timing]``   layout ("sequential": layers one after another within a step; "chord": all at once),
               note_s, gap_s (sequential), step_s or steps_per_beat (chord), tempo_bpm
``[pitch]``    mode ("linear_hz": base_hz + hz_per_unit × norm; "scale": the norm's place in its range,
               through a curve, quantised to a scale), curve, range ("reference": semitones from each
               layer's own reference, the median of its first reference_steps norms, semitones_per_decade
               per factor of ten, around centre_note; "auto": between the layer's lowest and highest norm
               so far; [low, high]: fixed), and the mode's own keys
``[sound]``    sample_rate, channels, waveforms, amplitude, attack_s, release_s, phase, pan, max_frequency_hz
``[midi]``     mode ("notes", or continuous control for DAW automation: "cc", "cc14", "pitchbend"), cc,
               velocity, programs, nan_note, inf_note, spike_note, alarm_velocity, channels ("auto":
               more than 15 layers share channels by module; "cycle": layer i on melodic channel i mod 15),
               clock (true: the live MIDI port also sends MIDI clock at tempo_bpm, with Start and Stop)
``[spike]``    detect, ratio, window, warmup: a spike alarm when a layer's norm exceeds ratio × the median
               of its norms over the window steps before (once it has warmup of them)
``[live]``     clock ("tempo": a tick per step length, the steps since the last folded into it; "free": each
               step as it arrives, thinned by every (every Nth step) and max_fps (at most this many a
               second); setting one of those picks "free"), aggregate ("max" or "mean"): live outputs only
``[osc]``      latency_s (0: bundles play on arrival; > 0: timetag = send time + latency_s)

Every mistake raises ``PresetError`` naming the file, the key, the bad value, what is allowed and the fix.
"""

from __future__ import annotations

import difflib
import math
import sys
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from bridge.channels import CHANNEL_MODES
from bridge.errors import PresetError
from bridge.events import MIDI_MODES, PHASES, WAVEFORMS
from bridge.preset_checks import Bad, boolean, choice, integer, list_of, number, text, type_name
from bridge.rate import AGGREGATES, CLOCKS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

#: Scales as semitone offsets from the root within one octave.
SCALES: dict[str, tuple[int, ...]] = {
    "chromatic": tuple(range(12)),
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),
    "dorian": (0, 2, 3, 5, 7, 9, 10),
    "major_pentatonic": (0, 2, 4, 7, 9),
    "minor_pentatonic": (0, 3, 5, 7, 10),
    "blues": (0, 3, 5, 6, 7, 10),
    "whole_tone": (0, 2, 4, 6, 8, 10),
}

#: Note names accepted as ``root``, to their pitch class (C = 0).
NOTE_NAMES: dict[str, int] = {
    "C": 0, "C#": 1, "Db": 1, "D": 2, "D#": 3, "Eb": 3, "E": 4, "F": 5, "F#": 6, "Gb": 6,
    "G": 7, "G#": 8, "Ab": 8, "A": 9, "A#": 10, "Bb": 10, "B": 11,
}

CURVES = ("linear", "log", "sqrt")
LAYOUTS = ("sequential", "chord")
PITCH_MODES = ("linear_hz", "scale")
PANS = ("center", "spread")


@dataclass(frozen=True)
class Preset:
    """A validated preset. Units are in the names; see the module docstring for the meaning of each key."""

    source: str
    name: str
    description: str
    # [timing]
    layout: str = "chord"
    note_s: float = 0.1
    gap_s: float = 0.0
    step_s: float | None = None
    steps_per_beat: int = 4
    tempo_bpm: float = 120.0
    # [pitch]
    mode: str = "scale"
    curve: str = "log"
    range: tuple[float, float] | None = None  # None: automatic (see reference), else fixed [low, high]
    reference: bool = False  # range = "reference": place each norm against its layer's own reference level
    reference_steps: int = 16  # the reference is the median of a layer's first this many (finite, > 0) norms
    semitones_per_decade: float = 12.0  # semitones a norm ten times its reference sounds above the centre
    centre_note: int | None = None  # where a norm equal to its reference sounds; None: midway low–high
    base_hz: float = 200.0
    hz_per_unit: float = 100.0
    scale: str = "major_pentatonic"
    root: str = "C"
    low_note: int = 48
    high_note: int = 84
    # [sound]
    sample_rate: int = 44100
    channels: int = 2
    waveforms: tuple[str, ...] = ("sine",)
    amplitude: float = 0.1
    attack_s: float = 0.005
    release_s: float = 0.01
    phase: str = "continuous"
    pan: str = "spread"
    max_frequency_hz: float = 16000.0
    # [midi]
    midi_mode: str = "notes"
    cc: int = 20  # first controller number; cc14 also uses cc + 32 for the fine byte
    velocity: int | str = 100  # an int 1–127, or "value": louder as the norm rises in its range
    programs: tuple[int, ...] = (0,)
    nan_note: int = 49  # GM percussion: Crash Cymbal 1
    inf_note: int = 52  # GM percussion: Chinese Cymbal
    spike_note: int = 56  # GM percussion: Cowbell
    alarm_velocity: int = 120
    midi_channels: str = "auto"  # "auto": group layers by module to fit 15 channels; "cycle": i mod 15
    midi_clock: bool = False  # the live MIDI port also sends MIDI clock (24 a quarter note, Start, Stop)
    # [spike]
    spike_detect: bool = True
    spike_ratio: float = 5.0  # a spike: norm > ratio × median of the layer's norms over the window before
    spike_window: int = 10  # steps
    spike_warmup: int = 3  # finite, positive norms in the window before a spike can sound
    # [live]
    live_clock: str = "tempo"  # "tempo": one tick per step length; "free": each step as it arrives
    every: int = 1
    max_fps: float = 0.0  # 0: no limit
    aggregate: str = "max"
    # [osc]
    osc_latency_s: float = 0.0

    @property
    def placement(self) -> str:
        """How a norm is placed in its range: ``"reference"``, ``"auto"`` or ``"fixed"``."""
        return "reference" if self.reference else ("auto" if self.range is None else "fixed")

    @property
    def centre(self) -> float:
        """The MIDI note a norm equal to its reference sounds at (``range = "reference"``)."""
        return (self.low_note + self.high_note) / 2.0 if self.centre_note is None else float(self.centre_note)

    def seconds_per_step(self, layer_count: int) -> float:
        """Musical length of one optimizer step in seconds, for ``layer_count`` layers."""
        if self.layout == "sequential":
            return layer_count * self.note_s + self.gap_s
        if self.step_s is not None:
            return self.step_s
        return 60.0 / self.tempo_bpm / self.steps_per_beat


# ---------------------------------------------------------------------------------------------------------
# Schema: (table, key) -> checker. A checker turns the TOML value into the Preset's value or raises Bad.


_REFERENCE = "reference"  # what _range returns for range = "reference" (parse_preset sets the fields)


def _range(value: Any) -> tuple[float, float] | str | None:
    allowed = '"reference", "auto" or [low, high] in units of gradient norm, 0 <= low < high'
    if value == "auto":
        return None
    if value == "reference":
        return _REFERENCE
    if (not isinstance(value, list) or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise Bad(allowed, 'write range = "reference", range = "auto" or range = [0.001, 10.0]')
    low, high = float(value[0]), float(value[1])
    if not (math.isfinite(low) and math.isfinite(high) and 0 <= low < high):
        raise Bad(allowed, "make low smaller than high, both finite and not negative")
    return (low, high)


def _velocity(value: Any) -> int | str:
    if value == "value":
        return "value"
    try:
        return integer(1, 127)(value)
    except Bad:
        raise Bad('an integer in [1, 127], or "value" (louder as the norm rises)',
                   "write e.g. velocity = 100") from None


def _root(value: Any) -> str:
    return choice(tuple(NOTE_NAMES))(value)


_SCHEMA: dict[str, dict[str, tuple[str, Callable[[Any], Any]]]] = {
    # table -> key -> (Preset field, checker)
    "preset": {"name": ("name", text), "description": ("description", text)},
    "timing": {
        "layout": ("layout", choice(LAYOUTS)),
        "note_s": ("note_s", number(0.0, 60.0, low_open=True, unit="seconds")),
        "gap_s": ("gap_s", number(0.0, 60.0, unit="seconds")),
        "step_s": ("step_s", number(0.0, 60.0, low_open=True, unit="seconds")),
        "steps_per_beat": ("steps_per_beat", integer(1, 64)),
        "tempo_bpm": ("tempo_bpm", number(20.0, 400.0, unit="beats per minute")),
    },
    "pitch": {
        "mode": ("mode", choice(PITCH_MODES)),
        "curve": ("curve", choice(CURVES)),
        "range": ("range", _range),
        "base_hz": ("base_hz", number(0.0, 20000.0, unit="Hz")),
        "hz_per_unit": ("hz_per_unit", number(0.0, 100000.0, unit="Hz per unit of norm")),
        "scale": ("scale", choice(tuple(SCALES))),
        "root": ("root", _root),
        "low_note": ("low_note", integer(0, 127, "(MIDI note)")),
        "high_note": ("high_note", integer(0, 127, "(MIDI note)")),
        "reference_steps": ("reference_steps", integer(1, 10_000, "steps")),
        "semitones_per_decade": ("semitones_per_decade", number(0.0, 128.0, low_open=True,
                                                                unit="semitones per factor of ten in norm")),
        "centre_note": ("centre_note", integer(0, 127, "(MIDI note)")),
    },
    "sound": {
        "sample_rate": ("sample_rate", integer(8000, 192000, "Hz")),
        "channels": ("channels", integer(1, 2, "(1 mono, 2 stereo)")),
        "waveforms": ("waveforms", list_of(choice(WAVEFORMS), "waveform names " + "/".join(WAVEFORMS),
                                           '["sine", "triangle"]')),
        "amplitude": ("amplitude", number(0.0, 1.0, low_open=True)),
        "attack_s": ("attack_s", number(0.0, 10.0, unit="seconds")),
        "release_s": ("release_s", number(0.0, 10.0, unit="seconds")),
        "phase": ("phase", choice(PHASES)),
        "pan": ("pan", choice(PANS)),
        "max_frequency_hz": ("max_frequency_hz", number(20.0, 96000.0, unit="Hz")),
    },
    "midi": {
        "mode": ("midi_mode", choice(MIDI_MODES)),
        "cc": ("cc", integer(0, 119, "(MIDI controller number)")),
        "velocity": ("velocity", _velocity),
        "programs": ("programs", list_of(integer(0, 127), "General MIDI programs 0–127", "[0, 48]")),
        "nan_note": ("nan_note", integer(0, 127, "(GM percussion note)")),
        "inf_note": ("inf_note", integer(0, 127, "(GM percussion note)")),
        "spike_note": ("spike_note", integer(0, 127, "(GM percussion note)")),
        "alarm_velocity": ("alarm_velocity", integer(1, 127)),
        "channels": ("midi_channels", choice(CHANNEL_MODES)),
        "clock": ("midi_clock", boolean),
    },
    "spike": {
        "detect": ("spike_detect", boolean),
        "ratio": ("spike_ratio", number(1.0, 1e6, low_open=True, unit="times the running median")),
        "window": ("spike_window", integer(1, 10_000, "steps")),
        "warmup": ("spike_warmup", integer(1, 10_000, "norms")),
    },
    "live": {
        "clock": ("live_clock", choice(CLOCKS)),
        "every": ("every", integer(1, 1_000_000, "steps")),
        "max_fps": ("max_fps", number(0.0, 10000.0, unit="steps per second (0: no limit)")),
        "aggregate": ("aggregate", choice(AGGREGATES)),
    },
    "osc": {
        "latency_s": ("osc_latency_s", number(0.0, 10.0, unit="seconds")),
    },
}

#: Keys that belong to one pitch mode only.
_MODE_KEYS = {"linear_hz": {"base_hz", "hz_per_unit"},
              "scale": {"scale", "root", "low_note", "high_note", "centre_note"}}
#: Keys of the reference rule (range = "reference").
_REFERENCE_KEYS = {"reference_steps", "semitones_per_decade", "centre_note"}


def _fail(source: str, where: str, message: str, fix: str) -> PresetError:
    return PresetError(f"{source}: {where}: {message}. Fix: {fix}")


def parse_preset(data: dict[str, Any], source: str) -> Preset:
    """Validate a preset's TOML tables and build the ``Preset``; ``source`` names the file in errors."""
    values: dict[str, Any] = {}
    for table, content in data.items():
        if table not in _SCHEMA:
            close = difflib.get_close_matches(table, list(_SCHEMA), n=1)
            hint = f'did you mean [{close[0]}]?' if close else "remove it or rename it"
            raise _fail(source, f"[{table}]", "unknown table; known tables are "
                        + ", ".join(f"[{t}]" for t in _SCHEMA), hint)
        if not isinstance(content, dict):
            raise _fail(source, f"{table}", f"must be a table ([{table}] on its own line), "
                        f"got {type_name(content)}", f"write [{table}] and put its keys below it")
        for key, value in content.items():
            if key not in _SCHEMA[table]:
                close = difflib.get_close_matches(key, list(_SCHEMA[table]), n=1)
                hint = f'did you mean "{close[0]}"?' if close else "remove it"
                raise _fail(source, f"[{table}] {key}", "unknown key; known keys in "
                            f"[{table}] are " + ", ".join(_SCHEMA[table]), hint)
            field_name, check = _SCHEMA[table][key]
            try:
                values[field_name] = check(value)
            except Bad as bad:
                raise _fail(source, f"[{table}] {key} = {value!r}", f"expected {bad.allowed}, "
                            f"got {type_name(value)} {value!r}", bad.fix) from None
    if values.get("range") == _REFERENCE:
        values["range"], values["reference"] = None, True
    live = data.get("live", {})
    if "clock" not in live and ("every" in live or "max_fps" in live):
        values["live_clock"] = "free"  # every and max_fps thin the free clock: setting one picks it
    values.setdefault("name", Path(source).stem)
    values.setdefault("description", "")
    preset = Preset(source=source, **values)
    _check_together(preset, data.get("pitch", {}), data.get("timing", {}), source)
    _check_live(preset, data.get("live", {}), source)
    _check_reference_and_spikes(preset, data.get("pitch", {}), source)
    return preset


def _check_live(preset: Preset, live: dict[str, Any], source: str) -> None:
    """``every`` and ``max_fps`` thin the free clock; the tempo clock has one tick per step length already."""
    for key in ("every", "max_fps") if preset.live_clock == "tempo" else ():
        if key in live:
            raise _fail(source, f"[live] {key}", 'applies only when clock = "free" (the tempo clock sounds one tick '
                        "per step length, the steps between folded into it)", f'remove {key}, or set clock = "free"')


def _check_reference_and_spikes(preset: Preset, pitch: dict[str, Any], source: str) -> None:
    """The reference rule's and the spike detector's rules that involve more than one key."""
    if not preset.reference:
        for key in _REFERENCE_KEYS & set(pitch):
            raise _fail(source, f"[pitch] {key}", 'applies only when range = "reference"',
                        f'remove {key}, or set range = "reference"')
    elif preset.curve != "log":
        raise _fail(source, "[pitch] curve", f'range = "reference" places a norm by its ratio to the layer\'s '
                    f'reference on a log scale, so it needs curve = "log", got "{preset.curve}"',
                    'set curve = "log", or range = "auto" for another curve')
    if preset.centre_note is not None and not preset.low_note <= preset.centre_note <= preset.high_note:
        raise _fail(source, "[pitch] centre_note", f"{preset.centre_note} is outside low_note–high_note "
                    f"({preset.low_note}–{preset.high_note})", "choose a note inside that range")
    if preset.spike_warmup > preset.spike_window:
        raise _fail(source, "[spike] warmup", f"{preset.spike_warmup} norms can never be in a window of "
                    f"{preset.spike_window} steps", f"make warmup <= window ({preset.spike_window})")


def _check_together(preset: Preset, pitch: dict[str, Any], timing: dict[str, Any], source: str) -> None:
    """Rules that involve more than one key."""
    for mode, keys in _MODE_KEYS.items():
        for key in keys & set(pitch):
            if preset.mode != mode:
                raise _fail(source, f"[pitch] {key}", f'applies only when mode = "{mode}", '
                            f'but mode = "{preset.mode}"', f'remove {key}, or set mode = "{mode}"')
    if preset.low_note >= preset.high_note:
        raise _fail(source, "[pitch] low_note/high_note", f"low_note ({preset.low_note}) must be below "
                    f"high_note ({preset.high_note})", "swap them or widen the range")
    if preset.curve == "log" and preset.range is not None and preset.range[0] <= 0:
        raise _fail(source, "[pitch] range", f"a log curve needs low > 0, got {preset.range[0]:g}",
                    "set the low end to a small positive norm such as 1e-4")
    if preset.layout == "chord":
        if "gap_s" in timing:
            raise _fail(source, "[timing] gap_s", 'applies only when layout = "sequential"',
                        'remove gap_s; with layout = "chord" set step_s or steps_per_beat')
        if "step_s" in timing and "steps_per_beat" in timing:
            raise _fail(source, "[timing] step_s/steps_per_beat", "both set; they say the same thing twice",
                        "keep one: step_s in seconds, or steps_per_beat at tempo_bpm")
        step = preset.seconds_per_step(1)
        if preset.note_s > step + 1e-12:
            raise _fail(source, "[timing] note_s", f"a note ({preset.note_s:g} s) is longer than a step "
                        f"({step:g} s), so a layer's notes would overlap", f"make note_s <= {step:g}")
    elif "step_s" in timing or "steps_per_beat" in timing:
        raise _fail(source, "[timing] step_s/steps_per_beat", 'applies only when layout = "chord"',
                    "remove it; a sequential step lasts layers x note_s + gap_s")
    if preset.attack_s + preset.release_s > preset.note_s + 1e-12:
        raise _fail(source, "[sound] attack_s/release_s", f"attack ({preset.attack_s:g} s) plus release "
                    f"({preset.release_s:g} s) is longer than a note ({preset.note_s:g} s)",
                    "shorten them, or lengthen [timing] note_s")
    if preset.midi_mode == "cc14" and preset.cc > 31:
        raise _fail(source, "[midi] cc", f"14-bit control needs a coarse controller 0–31 (its fine byte is "
                    f"cc + 32), got {preset.cc}", "choose cc between 0 and 31, or mode = \"cc\"")
    if preset.max_frequency_hz >= preset.sample_rate / 2:
        raise _fail(source, "[sound] max_frequency_hz", f"{preset.max_frequency_hz:g} Hz is not below the "
                    f"Nyquist frequency ({preset.sample_rate / 2:g} Hz) of sample_rate {preset.sample_rate}",
                    f"set it below {preset.sample_rate / 2:g}")


# ---------------------------------------------------------------------------------------------------------
# Finding and loading


def _builtin_dir() -> Path:
    """The built-in presets: ``mappings/`` beside the package in a source checkout, else the installed copy.

    The checkout's own folder comes first, so a checkout on ``PYTHONPATH`` never reads the presets of
    another (editable) installation."""
    beside = Path(__file__).resolve().parent.parent / "mappings"
    if (beside / "perone2019.toml").is_file():
        return beside
    return Path(str(resources.files("bridge.mappings")))


def builtin_names() -> list[str]:
    """Names of the presets shipped with gradbridge, sorted."""
    return sorted(p.stem for p in _builtin_dir().glob("*.toml"))


def load_preset(name_or_path: str | Path) -> Preset:
    """Load a preset by built-in name (``"pentatonic"``) or by path to a ``.toml`` file."""
    if not isinstance(name_or_path, (str, Path)):
        raise TypeError(f"mapping must be a preset name or a path, got {type(name_or_path).__name__}")
    text = str(name_or_path)
    path = Path(text)
    looks_like_path = isinstance(name_or_path, Path) or text.endswith(".toml") or "/" in text or "\\" in text
    if not looks_like_path:
        builtin = _builtin_dir() / f"{text}.toml"
        if not builtin.is_file():
            names = builtin_names()
            close = difflib.get_close_matches(text, names, n=1)
            hint = f' (did you mean "{close[0]}"?)' if close else ""
            raise PresetError(f'unknown mapping preset "{text}"{hint}. Built-in presets: {", ".join(names)}. '
                              "Fix: pass one of those names, or the path to your own .toml file")
        path = builtin
    if not path.is_file():
        raise PresetError(f"{path}: no such preset file. Fix: check the path, or use a built-in preset: "
                          + ", ".join(builtin_names()))
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise PresetError(f"{path}: not valid TOML ({err}). Fix: correct the syntax at that line; "
                          "see mappings/perone2019.toml for a working example") from None
    except (OSError, UnicodeDecodeError) as err:
        raise PresetError(f"{path}: cannot be read ({err}). Fix: check the file's permissions and "
                          "that it is UTF-8 text") from None
    except RecursionError:
        raise PresetError(f"{path}: nested too deeply to read (arrays or tables within each other hundreds of "
                          "levels deep). Fix: a preset holds flat tables of numbers and words; see "
                          "mappings/perone2019.toml for a working example") from None
    return parse_preset(data, str(path))


def preset_fields() -> list[str]:
    """Names of every field a ``Preset`` has (for tools that print or compare presets)."""
    return [f.name for f in fields(Preset)]
