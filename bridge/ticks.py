"""Ticks: what every live output sounds, and the gathering of the steps that make one.

A ``Tick`` is the live clock's output, the one thing a live sink receives: the ``StepEvents`` to sound, the
steps they stand for (``first_step`` to ``last_step``), and when they sound (``due_s``). The MIDI port,
OSC, the speakers and any other live output get the same ticks, so what a DAW records is what you hear.

``TickGatherer`` collects the frames that arrive between two ticks and makes one tick of them. It maps
every frame with the live outputs' own ``Mapping``, so pitch, loudness, references and spike detection
follow every step exactly as the files do; then, per layer, one step's note stands for the lot:

- ``"max"``: the note of the step with the highest norm;
- ``"mean"``: the note of the step whose norm is nearest the mean of the gathered norms.

A layer with a NaN or infinite norm in any gathered step sounds that alarm (the first such norm's kind)
instead of a note, and a layer that spiked in any of them sounds its spike (the highest ratio): alarms and
spikes are never thinned away. Every live note is thus a note the MIDI file also holds, at another time.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from bridge.events import Alarm, Arrangement, Notes, Spike, StepEvents
from bridge.frames import Frame
from bridge.mapping import Mapping
from bridge.presets import Preset
from bridge.rate import AGGREGATES

#: Note attributes gathered per step and layer, in ``Notes`` order after ``layer`` and ``start_s``.
_NOTE_FIELDS = ("duration_s", "frequency_hz", "midi_note", "velocity", "amplitude", "value")


@dataclass(frozen=True)
class Tick:
    """One tick of the live clock: the events every live output sounds now.

    Attributes:
        events: what to sound; ``events.step`` is ``last_step``, ``events.start_s`` the tick's musical time
            and ``events.duration_s`` its length (both in seconds; the length follows the clock's tempo).
        first_step: the first optimizer step the tick stands for.
        last_step: the last one (equal to ``first_step`` when it stands for one step).
        frame_count: how many steps were gathered into it.
        index: the tick's number on its clock (grid steps on a tempo clock; it may skip).
        due_s: when the tick sounds, in ``time.monotonic()`` seconds. A sink that schedules ahead (the MIDI
            port) gets the tick a few milliseconds before; the others get it at that moment.
    """

    events: StepEvents
    first_step: int
    last_step: int
    frame_count: int
    index: int
    due_s: float


@runtime_checkable
class TickSink(Protocol):
    """A live output that takes ticks rather than bare steps (``OscSink``, ``MidiPortSink``; the browser page).

    Any ``bridge.sinks.base.Sink`` can be a live output; one that also has ``send_tick`` gets the whole
    tick, and one whose ``schedules_ahead`` is True gets it before ``due_s`` (it must sound it then).
    """

    name: str
    schedules_ahead: bool

    def send_tick(self, tick: Tick) -> None:
        """Sound ``tick`` (at ``tick.due_s``)."""


#: Gathered steps kept as rows before they are folded into one (a stopped clock gathers without bound).
FOLD_ROWS = 1024


class _Gathering:
    """The steps gathered since the last tick: their norms and notes as (rows, layers) arrays (folded into
    one row past ``FOLD_ROWS``), each layer's first alarm and highest spike, and the loss."""

    def __init__(self, layers: int) -> None:
        self.layers = layers
        self.norms: list[np.ndarray] = []
        self.attributes: dict[str, list[np.ndarray]] = {key: [] for key in (*_NOTE_FIELDS, "offset_s")}
        self.rows = 0
        self.sums = np.zeros(layers)  # of the finite norms, for the mean
        self.counts = np.zeros(layers)
        self.alarms: dict[int, tuple[Alarm, float, float]] = {}  # layer → first alarm, its offset, its norm
        self.spikes: dict[int, tuple[Spike, float]] = {}  # layer → highest spike, its offset
        self.loss_max = -math.inf
        self.loss_sum = 0.0
        self.first_step = 0
        self.last: StepEvents | None = None
        self.count = 0

    def add(self, events: list[StepEvents]) -> None:
        rows, layers = len(events), self.layers
        norms = np.stack([np.asarray(e.norms, dtype=np.float64) for e in events])
        if all(len(e.notes) == layers for e in events):  # every layer sounds in every step: the usual case
            attributes = {key: np.stack([getattr(e.notes, key) for e in events]).astype(np.float64)
                          for key in _NOTE_FIELDS}
            attributes["offset_s"] = np.stack([e.notes.start_s for e in events]) - \
                np.array([e.start_s for e in events])[:, np.newaxis]
        else:
            attributes = {key: np.full((rows, layers), np.nan) for key in self.attributes}
            for row, step in enumerate(events):
                notes, where = step.notes, step.notes.layer
                for key in _NOTE_FIELDS:
                    attributes[key][row, where] = getattr(notes, key)
                attributes["offset_s"][row, where] = notes.start_s - step.start_s
        for step in events:
            if not step.alarms and not step.spikes:
                continue
            for alarm in step.alarms:
                if alarm.layer not in self.alarms:
                    self.alarms[alarm.layer] = (alarm, alarm.start_s - step.start_s, float(step.norms[alarm.layer]))
            for spike in step.spikes:
                kept = self.spikes.get(spike.layer)
                if kept is None or not spike.ratio <= kept[0].ratio:
                    self.spikes[spike.layer] = (spike, spike.start_s - step.start_s)
        finite = np.isfinite(norms)
        self.sums += np.where(finite, norms, 0.0).sum(axis=0)
        self.counts += finite.sum(axis=0)
        self.norms.append(norms)
        for key, values in attributes.items():
            self.attributes[key].append(values)
        self.rows += rows
        losses = np.array([e.loss for e in events], dtype=np.float64)
        self.loss_max = float(np.maximum(self.loss_max, losses.max()))  # NaN propagates
        self.loss_sum += float(losses.sum())
        if self.last is None:
            self.first_step = events[0].step
        self.last = events[-1]
        self.count += rows

    def matrices(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The gathered norms and note attributes as (rows, layers) arrays."""
        return np.concatenate(self.norms), {key: np.concatenate(v) for key, v in self.attributes.items()}

    def fold(self, pick: np.ndarray) -> None:
        """Keep, per layer, only the row ``pick`` names, as one row (the mean goes on from the sums)."""
        norms, attributes = self.matrices()
        columns = np.arange(self.layers)
        self.norms = [norms[pick, columns][np.newaxis]]
        self.attributes = {key: [values[pick, columns][np.newaxis]] for key, values in attributes.items()}
        self.rows = 1


class TickGatherer:
    """Gathers the frames that arrive between ticks (``add``, any thread) and makes one tick of them
    (``take``, the clock's thread); ``absorb`` maps what has arrived so far, ahead of the tick.

    Args:
        preset: the live outputs' preset (mapped by a ``Mapping`` of this gatherer's own), or the files'
            ``Mapping``, whose preset and step rule (``keep_gaps``) the gatherer's own then takes.
        layer_names: the run's layers.
        aggregate: ``"max"`` or ``"mean"`` (see the module docstring).
    """

    def __init__(self, preset: Preset | Mapping, layer_names: Sequence[str], aggregate: str = "max") -> None:
        if aggregate not in AGGREGATES:
            raise ValueError(f"aggregate must be one of {', '.join(AGGREGATES)}, got {aggregate!r}")
        self.aggregate = aggregate
        self.mapping = preset.fresh() if isinstance(preset, Mapping) else Mapping(preset)
        preset = self.mapping.preset
        self.arrangement: Arrangement = self.mapping.arrange(tuple(layer_names))
        self._layers = len(self.arrangement.voices)
        warm = Mapping(preset)  # a throwaway first tick, so that the first real one is not slowed by first calls
        warm.arrange(tuple(layer_names))
        warming = _Gathering(self._layers)
        warming.add(warm.map_frames([Frame(0, 0.0, np.ones(self._layers)), Frame(1, 0.0, np.full(self._layers, 2.0))]))
        self._merge(warming, warming.last, 0.0, self.arrangement.seconds_per_step)  # type: ignore[arg-type]
        self._lock = threading.Lock()
        self._arrived: list[Frame] = []
        self._gathering = _Gathering(self._layers)
        self._single: StepEvents | None = None  # the one step gathered, while there is only one
        self.frames_in = 0  # frames added, in total

    @property
    def waiting(self) -> int:
        """Frames added and not yet mapped."""
        return len(self._arrived)

    @property
    def pending(self) -> bool:
        """Whether any frame waits for a tick."""
        return bool(self._arrived) or self._gathering.count > 0

    def add(self, frame: Frame) -> int:
        """Take one frame (from the follower's thread); returns how many wait to be mapped."""
        with self._lock:
            self._arrived.append(frame)
            self.frames_in += 1
            return len(self._arrived)

    def absorb(self) -> None:
        """Map the frames that have arrived (on the clock's thread, between ticks)."""
        with self._lock:
            frames, self._arrived = self._arrived, []
        if not frames:
            return
        events = self.mapping.map_frames(frames)
        gathering = self._gathering
        self._single = events[0] if gathering.count == 0 and len(events) == 1 else None
        gathering.add(events)
        if gathering.rows > FOLD_ROWS:
            norms, _ = gathering.matrices()
            gathering.fold(self._pick(norms, np.isfinite(norms), gathering))

    def take(self, start_s: float | None = None, duration_s: float | None = None
             ) -> tuple[StepEvents, int, int, int] | None:
        """The gathered steps as one step's events, with their first and last step and count; ``None`` when
        nothing arrived since the last ``take``.

        ``start_s``: the tick's musical time, seconds (``None``: the last step's own); ``duration_s``: its
        length (``None``: the preset's step length). Notes, alarms and spikes keep their place and length
        relative to the step, scaled by ``duration_s`` over the preset's step length.
        """
        self.absorb()
        gathering, single = self._gathering, self._single
        if gathering.count == 0 or gathering.last is None:
            return None
        self._gathering, self._single = _Gathering(self._layers), None
        if single is not None and start_s is None and duration_s is None:
            return single, single.step, single.step, 1  # one step as it is: the free clock's usual case
        last = gathering.last
        start = last.start_s if start_s is None else float(start_s)
        length = self.arrangement.seconds_per_step if duration_s is None else float(duration_s)
        return self._merge(gathering, last, start, length), gathering.first_step, last.step, gathering.count

    def _merge(self, gathering: _Gathering, last: StepEvents, start: float, length: float) -> StepEvents:
        """The gathered steps (``last`` the latest) as one step's events at musical time ``start``, ``length``
        seconds long."""
        step_s = self.arrangement.seconds_per_step
        scale = length / step_s if step_s > 0 else 1.0
        norms, attributes = gathering.matrices()
        pick = self._pick(norms, np.isfinite(norms), gathering)
        columns = np.arange(self._layers)
        chosen = {key: values[pick, columns] for key, values in attributes.items()}
        out_norms = norms[pick, columns]
        alarmed = np.zeros(self._layers, dtype=bool)
        alarms = []
        for layer in sorted(gathering.alarms):
            alarm, offset_s, norm = gathering.alarms[layer]
            out_norms[layer], alarmed[layer] = norm, True
            alarms.append(dataclasses.replace(alarm, start_s=start + offset_s * scale,
                                              duration_s=alarm.duration_s * scale))
        spikes = tuple(dataclasses.replace(spike, start_s=start + offset_s * scale,
                                           duration_s=spike.duration_s * scale)
                       for spike, offset_s in (gathering.spikes[layer] for layer in sorted(gathering.spikes)))
        sounding = np.flatnonzero(np.isfinite(chosen["frequency_hz"]) & ~alarmed)
        notes = Notes(layer=sounding, start_s=start + chosen["offset_s"][sounding] * scale,
                      duration_s=chosen["duration_s"][sounding] * scale,
                      frequency_hz=chosen["frequency_hz"][sounding],
                      midi_note=chosen["midi_note"][sounding].astype(np.int64),
                      velocity=chosen["velocity"][sounding].astype(np.int64),
                      amplitude=chosen["amplitude"][sounding], value=chosen["value"][sounding])
        loss = gathering.loss_max if self.aggregate == "max" else gathering.loss_sum / gathering.count
        return StepEvents(step=last.step, start_s=start, duration_s=length, wall_time_s=last.wall_time_s,
                          loss=loss, lr=last.lr, norms=out_norms, notes=notes, alarms=tuple(alarms), spikes=spikes)

    def _pick(self, norms: np.ndarray, finite: np.ndarray, gathering: _Gathering) -> np.ndarray:
        """Per layer, the row whose note stands for the gathered steps (0 where no norm is finite)."""
        if self.aggregate == "max":
            return np.argmax(np.where(finite, norms, -np.inf), axis=0)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            mean = gathering.sums / gathering.counts
            distance = np.where(finite, np.abs(norms - mean), np.inf)
        return np.argmin(distance, axis=0)
