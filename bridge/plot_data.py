"""A run read for drawing: its norms, loss and learning rate, and what a preset plays, as arrays.

``read_plot_data`` reads a run log or a CSV of norms through ``bridge.runlog.open_run`` and maps every
frame with ``bridge.mapping.Mapping.map_frames``, in blocks, as the MIDI file output does, so the notes
and alarms here are the ones the MIDI file of the same run and preset holds. No torch, no matplotlib.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bridge.errors import GradbridgeError
from bridge.events import StepEvents
from bridge.frames import Frame, RunInfo
from bridge.mapping import Mapping

__all__ = ["ALARM_CODES", "DEFAULT_MAPPING", "NO_NOTE", "PlotData", "collect_plot_data", "first_alarm_step",
           "read_plot_data"]

#: Alarm kinds as stored in ``PlotData.alarm_kind`` (0 means no alarm).
ALARM_CODES: dict[str, int] = {"nan": 1, "+inf": 2, "-inf": 3}
#: The preset drawn when none is asked for and the run names none (as ``gradbridge render`` does).
DEFAULT_MAPPING = "pentatonic"
#: Frames mapped at once (the mapping is vectorised over a block).
BLOCK_FRAMES = 4096
#: ``PlotData.note_pitch`` where a layer plays no note at a step (it sounds an alarm instead).
NO_NOTE = -1


@dataclass(frozen=True)
class PlotData:
    """One run and the notes a preset plays for it, as arrays over frames (rows) and layers (columns).

    Attributes:
        run_name: the run's file name, for the title.
        mapping_name: the preset's name.
        layer_names: one per layer, in layer order.
        steps: each frame's optimizer step, int64, shape ``(frames,)``, non-decreasing.
        norms: each layer's gradient norm, float64, shape ``(frames, layers)``; NaN/±Inf kept as measured.
        loss: each frame's loss, float64, NaN when unknown.
        lr: each frame's learning rate, float64, NaN when unknown.
        note_pitch: the MIDI note (0–127) each layer plays at each frame, int8, ``NO_NOTE`` (-1) for none.
        note_offset_steps: where in its step each layer's note starts, in steps (0 for chords; layer
            ``i`` × note length / step length for the sequential layout), shape ``(layers,)``.
        note_length_steps: how long each layer's note lasts, in steps, shape ``(layers,)``.
        alarm_kind: ``ALARM_CODES`` of each layer's alarm at each frame, int8, 0 for none.
        seconds_per_step: the preset's musical length of one step, in seconds.
    """

    run_name: str
    mapping_name: str
    layer_names: tuple[str, ...]
    steps: np.ndarray
    norms: np.ndarray
    loss: np.ndarray
    lr: np.ndarray
    note_pitch: np.ndarray
    note_offset_steps: np.ndarray
    note_length_steps: np.ndarray
    alarm_kind: np.ndarray
    seconds_per_step: float

    @property
    def frame_count(self) -> int:
        """How many frames (steps) the run holds."""
        return int(self.steps.shape[0])

    @property
    def layer_count(self) -> int:
        """How many layers the run measured."""
        return len(self.layer_names)

    @property
    def alarm_count(self) -> int:
        """How many NaN/Inf alarms sound in the whole run (one per layer and step)."""
        return int(np.count_nonzero(self.alarm_kind))

    def note_starts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every note as ``(layer, start in steps, pitch)`` arrays, ordered by frame then layer.

        The start is the frame's step number plus the layer's offset within its step (the axis shows the
        real step numbers; in the sound each logged step is one musical step, ``bridge.steps``).
        """
        frame, layer = np.nonzero(self.note_pitch != NO_NOTE)
        start = self.steps[frame] + self.note_offset_steps[layer]
        return layer.astype(np.int64), start, self.note_pitch[frame, layer].astype(np.int64)


def read_plot_data(path: str | os.PathLike[str], mapping: str | Path | None = None, *,
                   strict: bool = False) -> PlotData:
    """Read a run log or CSV of norms and map it with ``mapping`` (a preset name or ``.toml`` path).

    Without ``mapping``, the preset the run was recorded with, else ``DEFAULT_MAPPING``, as
    ``gradbridge render`` and ``midi`` choose. Errors of the run file raise ``RunLogError``; of the
    preset ``PresetError``. ``strict``: a damaged run log record raises instead of being skipped.
    """
    from bridge.runlog import open_run

    info, frames = open_run(path, strict=strict)
    chosen = mapping if mapping is not None else (info.metadata.get("mapping") or DEFAULT_MAPPING)
    return collect_plot_data(Path(os.fspath(path)).name, info, frames, Mapping.load(chosen))


def collect_plot_data(run_name: str, info: RunInfo, frames: Iterable[Frame], mapping: Mapping) -> PlotData:
    """Map ``frames`` (of a run described by ``info``) with ``mapping`` and keep what a plot draws.

    ``mapping`` is arranged anew for the run's layers, so its running state starts from scratch.
    """
    if not isinstance(mapping, Mapping):
        raise TypeError(f"mapping must be a bridge.mapping.Mapping; got {type(mapping).__name__}")
    arrangement = mapping.arrange(info.layer_names)
    layers = len(info.layer_names)
    step_s = arrangement.seconds_per_step
    blocks: list[_Block] = []
    shape = _NoteShape(layers, step_s)
    for chunk in _chunks(frames, BLOCK_FRAMES):
        blocks.append(_Block.of(mapping.map_frames(chunk), layers, shape))
    if not blocks:
        empty = np.zeros((0, layers))
        return PlotData(run_name, arrangement.mapping_name, info.layer_names, np.zeros(0, dtype=np.int64), empty,
                        np.zeros(0), np.zeros(0), empty.astype(np.int8), np.zeros(layers), np.zeros(layers),
                        empty.astype(np.int8), step_s)
    return PlotData(
        run_name=run_name, mapping_name=arrangement.mapping_name, layer_names=info.layer_names,
        steps=np.concatenate([b.steps for b in blocks]), norms=np.concatenate([b.norms for b in blocks]),
        loss=np.concatenate([b.loss for b in blocks]), lr=np.concatenate([b.lr for b in blocks]),
        note_pitch=np.concatenate([b.pitch for b in blocks]), note_offset_steps=shape.offset_steps(),
        note_length_steps=shape.length_steps(), alarm_kind=np.concatenate([b.alarms for b in blocks]),
        seconds_per_step=step_s)


def _chunks(frames: Iterable[Frame], size: int) -> Iterator[list[Frame]]:
    iterator = iter(frames)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


class _NoteShape:
    """Each layer's note offset within its step and its length, in seconds, checked to hold for every note.

    The plot stores one pitch per layer and frame; the offset and length come from here. A mapping
    whose notes moved within their step, or changed length, could not be drawn that way: it raises.
    """

    def __init__(self, layers: int, seconds_per_step: float) -> None:
        self._offset_s = np.full(layers, np.nan)
        self._length_s = np.full(layers, np.nan)
        self._step_s = seconds_per_step

    def check(self, layer: np.ndarray, offset_s: np.ndarray, length_s: np.ndarray, latest_s: float) -> None:
        """Learn the offset and length of layers not seen yet; raise if a note differs from its layer's.

        ``latest_s`` is the latest step start among the notes, for the rounding of start times."""
        unseen = np.isnan(self._offset_s[layer])
        self._offset_s[layer[unseen]] = offset_s[unseen]
        self._length_s[layer[unseen]] = length_s[unseen]
        self._compare(offset_s, self._offset_s[layer], length_s, self._length_s[layer], latest_s)

    def check_all(self, offset_s: np.ndarray, length_s: np.ndarray, latest_s: float) -> None:
        """``check`` for (frames, layers) arrays in which every layer plays a note at every frame."""
        self.check(np.arange(offset_s.shape[1]), offset_s[0], length_s[0], latest_s)
        self._compare(offset_s, self._offset_s, length_s, self._length_s, latest_s)

    def _compare(self, offset_s: np.ndarray, expected_offset_s: np.ndarray, length_s: np.ndarray,
                 expected_length_s: np.ndarray, latest_s: float) -> None:
        # a note starts at (step - first) × seconds_per_step + offset: allow the rounding of that sum
        tolerance = 1e-9 * max(self._step_s, 1.0) + 8 * np.finfo(np.float64).eps * abs(latest_s)
        moved = np.abs(offset_s - expected_offset_s) > tolerance
        if moved.any() or (np.abs(length_s - expected_length_s) > tolerance).any():
            raise GradbridgeError("the mapping played notes at different places within their steps, or of "
                               "different lengths, for one layer; the plot draws one note per layer and step "
                               "at a fixed place and cannot show this mapping")

    def offset_steps(self) -> np.ndarray:
        return np.nan_to_num(self._offset_s / self._step_s) if self._step_s > 0 else np.zeros_like(self._offset_s)

    def length_steps(self) -> np.ndarray:
        return np.nan_to_num(self._length_s / self._step_s) if self._step_s > 0 else np.zeros_like(self._length_s)


@dataclass(frozen=True)
class _Block:
    steps: np.ndarray
    norms: np.ndarray
    loss: np.ndarray
    lr: np.ndarray
    pitch: np.ndarray
    alarms: np.ndarray

    @classmethod
    def of(cls, events: list[StepEvents], layers: int, shape: _NoteShape) -> _Block:
        count = len(events)
        steps = np.fromiter((e.step for e in events), dtype=np.int64, count=count)
        loss = np.fromiter((e.loss for e in events), dtype=np.float64, count=count)
        lr = np.fromiter((e.lr for e in events), dtype=np.float64, count=count)
        norms = np.stack([e.norms for e in events])
        pitch = np.full((count, layers), NO_NOTE, dtype=np.int8)
        alarms = np.zeros((count, layers), dtype=np.int8)
        sizes = np.fromiter((len(e.notes) for e in events), dtype=np.int64, count=count)
        full = sizes == layers
        if full.all():  # every layer sounds a note at every step: the usual case
            pitch[:] = np.stack([e.notes.midi_note for e in events])
            step_starts = np.array([e.start_s for e in events])
            starts = np.stack([e.notes.start_s for e in events]) - step_starts[:, None]
            shape.check_all(starts, _rows(events, "duration_s"), float(np.abs(step_starts).max()))
            if not (_rows(events, "layer") == np.arange(layers)).all():
                raise GradbridgeError("the mapping's notes are not in layer order; the plot cannot place them")
        elif sizes.any():
            frame = np.repeat(np.arange(count), sizes)
            layer = np.concatenate([e.notes.layer for e in events]).astype(np.int64)
            # within a step, layers strictly increase: no layer plays twice, each note has its own cell
            if not ((np.diff(layer) > 0) | (np.diff(frame) > 0)).all():
                raise GradbridgeError("the mapping played two notes for one layer at one step, or out of layer "
                                   "order; the plot draws one note per layer and step")
            pitch[frame, layer] = np.concatenate([e.notes.midi_note for e in events])
            step_starts = np.array([e.start_s for e in events])
            starts = np.concatenate([e.notes.start_s for e in events]) - np.repeat(step_starts, sizes)
            shape.check(layer, starts, np.concatenate([e.notes.duration_s for e in events]),
                        float(np.abs(step_starts).max()))
        for row, event in enumerate(events):
            for alarm in event.alarms:
                alarms[row, alarm.layer] = ALARM_CODES[alarm.kind]
        return cls(steps, norms, loss, lr, pitch, alarms)


def _rows(events: list[StepEvents], field: str) -> np.ndarray:
    """One ``Notes`` field of every step, stacked, or the first step's alone when every step shares that
    very array (the mapping shares its read-only per-layer constants between steps): the same values."""
    first = getattr(events[0].notes, field)
    if all(getattr(e.notes, field) is first for e in events) and not first.flags.writeable:
        return first[np.newaxis, :]
    return np.stack([getattr(e.notes, field) for e in events])


def first_alarm_step(data: PlotData) -> int | None:
    """The step of the run's first NaN/Inf alarm, or None when none sounds."""
    rows = np.flatnonzero(data.alarm_kind.any(axis=1))
    return int(data.steps[rows[0]]) if rows.size else None
