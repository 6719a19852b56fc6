"""MIDI channels for layers: one each while they fit in the 15 melodic channels, grouped by module past that.

Channel 10 (index 9) is General MIDI percussion, kept for alarms, so layers have 15 channels. With more
layers, ``"auto"`` puts the layers of one module on one channel: the layers' dotted names cut to their
first ``depth`` parts, the deepest cut that leaves at most 15 groups (``transformer.h.0.attn.c_attn`` →
``transformer.h.0`` at depth 3). When even the first part leaves more than 15 groups, consecutive layers
share channels in 15 runs of (nearly) equal length. ``"cycle"`` puts layer ``i`` on channel ``i mod 15``.
Either way every channel has one program: the program of its group.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bridge.events import PERCUSSION_CHANNEL

__all__ = ["CHANNEL_MODES", "MELODIC_CHANNELS", "ChannelPlan", "plan_channels"]

#: The 15 melodic MIDI channels (0-based), channel 10 (index 9) left to percussion.
MELODIC_CHANNELS: tuple[int, ...] = tuple(c for c in range(16) if c != PERCUSSION_CHANNEL)
#: How layers are given channels when there are more than 15.
CHANNEL_MODES = ("auto", "cycle")


@dataclass(frozen=True)
class ChannelPlan:
    """Which channel each layer plays on.

    Attributes:
        group_of_layer: each layer's group, 0-based, in layer order; group ``g`` plays on
            ``MELODIC_CHANNELS[g % 15]`` (a group is one channel unless ``"cycle"`` wraps).
        labels: each group's label (a module name, a run of layers, or a layer's own name).
        how: the grouping in plain words ("" when every layer has its own channel).
    """

    group_of_layer: tuple[int, ...]
    labels: tuple[str, ...]
    how: str

    @property
    def channels(self) -> tuple[int, ...]:
        """Each layer's MIDI channel, 0-based (never 9)."""
        return tuple(MELODIC_CHANNELS[g % len(MELODIC_CHANNELS)] for g in self.group_of_layer)

    def describe(self) -> str:
        """The plan in plain words, channels printed 1–16."""
        count, used = len(self.group_of_layer), sorted(set(self.channels))
        if not self.how:
            return f"{count} layer(s) on MIDI channels 1–{used[-1] + 1} (channel 10 kept for alarms)."
        sizes = [self.group_of_layer.count(g) for g in range(len(self.labels))]
        listed = ", ".join(f"{MELODIC_CHANNELS[g % len(MELODIC_CHANNELS)] + 1} {label}"
                           + (f" ({size} layers)" if size > 1 else "")
                           for g, (label, size) in enumerate(zip(self.labels, sizes)))
        return (f"{count} layers share {len(used)} MIDI channels, {self.how}: {listed} (channel 10 kept for "
                "alarms; one program per channel).")


def plan_channels(names: Sequence[str], mode: str = "auto") -> ChannelPlan:
    """The channel plan for layers called ``names`` (in layer order) under ``mode`` (``CHANNEL_MODES``)."""
    if mode not in CHANNEL_MODES:
        raise ValueError(f"MIDI channel mode must be one of {CHANNEL_MODES}; got {mode!r}")
    names = [str(n) for n in names]
    count, room = len(names), len(MELODIC_CHANNELS)
    if count <= room:
        return ChannelPlan(tuple(range(count)), tuple(names), "")
    if mode == "cycle":
        return ChannelPlan(tuple(range(count)), tuple(names),
                           f"layer by layer in turn (layer {room + 1} on the channel of layer 1, and so on)")
    parts = [name.split(".") for name in names]
    for depth in range(max(len(p) for p in parts) - 1, 0, -1):
        prefixes = [".".join(p[:depth]) for p in parts]
        labels = list(dict.fromkeys(prefixes))  # in order of first appearance
        if len(labels) <= room:
            index = {label: g for g, label in enumerate(labels)}
            what = "the first part" if depth == 1 else f"the first {depth} parts"
            return ChannelPlan(tuple(index[p] for p in prefixes), tuple(labels),
                               f"grouped by module ({what} of each layer's name)")
    groups = [i * room // count for i in range(count)]
    labels = []
    for g in range(room):
        members = [names[i] for i in range(count) if groups[i] == g]
        labels.append(members[0] if len(members) == 1 else f"{members[0]} … {members[-1]}")
    return ChannelPlan(tuple(groups), tuple(labels), f"in {room} runs of consecutive layers")
