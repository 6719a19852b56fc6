"""What a run's alarms said, for the closing summary: NaN/Inf alarms and spikes per layer, from which step.

``RunHealth`` is fed each step, either as the ``StepEvents`` a mapping made (``add_events``) or as the
``Frame`` itself (``handle``: it is a follower consumer, finding spikes with the preset's own detector,
so it counts every step even when live outputs sound fewer). ``summary()`` says it in one line; a run
whose norms turned NaN never closes with the words of a healthy one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from bridge.events import StepEvents
from bridge.frames import Frame
from bridge.presets import Preset
from bridge.spikes import SpikeDetector, log_norms

__all__ = ["LayerHealth", "RunHealth"]

#: Layers named in the summary for each kind; the rest are counted.
SHOWN_LAYERS = 4


@dataclass
class LayerHealth:
    """One layer's alarms: how many of each kind, and the step of the first."""

    alarms: int = 0
    first_alarm: int | None = None
    alarm_kinds: list[str] = field(default_factory=list)  # "nan", "+inf", "-inf", in the order first seen
    spikes: int = 0
    first_spike: int | None = None


class RunHealth:
    """Counts a run's NaN/Inf alarms and spike alarms, per layer, with the step each began.

    Args:
        layer_names: the run's layers, in frame order.
        preset: the preset whose spike detector ``handle`` uses (``None``, or one that detects no spikes:
            frames count NaN/Inf alarms only).
    """

    name = "health"

    def __init__(self, layer_names: Sequence[str], preset: Preset | None = None) -> None:
        self.layer_names = tuple(str(n) for n in layer_names)
        if not self.layer_names:
            raise ValueError("RunHealth needs at least one layer name")
        self.layers = [LayerHealth() for _ in self.layer_names]
        self.steps = 0
        self._detector = None
        if preset is not None and preset.spike_detect:
            self._detector = SpikeDetector(len(self.layer_names), ratio=preset.spike_ratio,
                                           window=preset.spike_window, warmup=preset.spike_warmup)

    def add(self, step: int, alarms: Iterable[tuple[int, str]] = (), spikes: Iterable[int] = ()) -> None:
        """Count one step: its ``(layer, kind)`` NaN/Inf alarms and the layers that spiked."""
        self.steps += 1
        for layer, kind in alarms:
            health = self.layers[layer]
            health.alarms += 1
            if health.first_alarm is None:
                health.first_alarm = step
            if kind not in health.alarm_kinds:
                health.alarm_kinds.append(kind)
        for layer in spikes:
            health = self.layers[layer]
            health.spikes += 1
            if health.first_spike is None:
                health.first_spike = step

    def add_events(self, events: StepEvents) -> None:
        """Count one step from the events a mapping made of it."""
        self.add(events.step, ((a.layer, a.kind) for a in events.alarms), (s.layer for s in events.spikes))

    def handle(self, frame: Frame) -> None:
        """Count one step from its frame (a follower consumer's ``handle``)."""
        norms = np.asarray(frame.norms, dtype=np.float64)
        if norms.shape != (len(self.layers),):
            raise ValueError(f"frame at step {frame.step} has {norms.size} norms for {len(self.layers)} layers")
        bad = np.flatnonzero(~np.isfinite(norms)).tolist()
        alarms = [(i, "nan" if math.isnan(norms[i]) else ("+inf" if norms[i] > 0 else "-inf")) for i in bad]
        spikes: list[int] = []
        if self._detector is not None:
            spiking, _ = self._detector.detect(log_norms(norms[np.newaxis]))
            spikes = np.flatnonzero(spiking[0]).tolist()
        self.add(frame.step, alarms, spikes)

    def close(self) -> None:
        """Nothing to finish (a follower consumer's ``close``)."""

    @property
    def alarm_count(self) -> int:
        """NaN/Inf alarms counted, all layers together."""
        return sum(h.alarms for h in self.layers)

    @property
    def spike_count(self) -> int:
        """Spike alarms counted, all layers together."""
        return sum(h.spikes for h in self.layers)

    def summary(self) -> str:
        """The run's alarms in one line, e.g. ``"382 NaN/Inf alarms in 2 of 4 layers (conv1: 191 from step 9,
        nan; ...); 5 spikes in 3 layers (fc1: 3 from step 5; ...)"``, or ``"no NaN/Inf alarm and no spike
        in 200 steps"``."""
        if not self.alarm_count and not self.spike_count:
            return f"no NaN/Inf alarm and no spike in {self.steps} steps"
        parts = []
        if self.alarm_count:
            listed = [(h.first_alarm, i, f"{self.layer_names[i]}: {self._counted(h.alarms, h.first_alarm)}, "
                                         f"{', '.join(h.alarm_kinds)}")
                      for i, h in enumerate(self.layers) if h.alarms]
            parts.append(f"{self.alarm_count} NaN/Inf alarm{'s' if self.alarm_count > 1 else ''} in "
                         f"{len(listed)} of {len(self.layers)} layers ({self._shown(listed)})")
        else:
            parts.append("no NaN/Inf alarm")
        if self.spike_count:
            listed = [(h.first_spike, i, f"{self.layer_names[i]}: {self._counted(h.spikes, h.first_spike)}")
                      for i, h in enumerate(self.layers) if h.spikes]
            parts.append(f"{self.spike_count} spike{'s' if self.spike_count > 1 else ''} in {len(listed)} "
                         f"layer{'s' if len(listed) > 1 else ''} ({self._shown(listed)})")
        else:
            parts.append("no spike")
        return f"{'; '.join(parts)}, in {self.steps} steps"

    @staticmethod
    def _counted(count: int, first: int | None) -> str:
        return f"1 at step {first}" if count == 1 else f"{count} from step {first}"

    @staticmethod
    def _shown(listed: list[tuple[int | None, int, str]]) -> str:
        """The layers' texts, earliest first (then in layer order), at most ``SHOWN_LAYERS`` of them."""
        ordered = [text for _, _, text in sorted(listed, key=lambda item: (item[0] or 0, item[1]))]
        more = len(ordered) - SHOWN_LAYERS
        return "; ".join(ordered[:SHOWN_LAYERS]) + (f"; and {more} more layer{'s' if more > 1 else ''}"
                                                    if more > 0 else "")
