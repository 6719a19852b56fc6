"""The run's health for the closing summary: NaN/Inf alarms and spikes per layer, from which step; and the
summary ``bridge.watch`` prints at the end of a healthy run and of one whose norms turn NaN."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from torch import nn

import bridge
from bridge.frames import Frame
from bridge.health import RunHealth
from bridge.mapping import Mapping
from bridge.presets import load_preset, parse_preset

NAMES = ("conv1", "conv2", "fc1", "fc2")


def test_counts_alarms_and_spikes_per_layer_from_their_first_step() -> None:
    health = RunHealth(NAMES)
    health.add(0)
    health.add(1, spikes=[2])
    health.add(2, alarms=[(0, "+inf"), (3, "nan")], spikes=[2, 1])
    health.add(3, alarms=[(0, "nan"), (3, "nan")])
    assert (health.steps, health.alarm_count, health.spike_count) == (4, 4, 3)
    first = health.layers[0]
    assert (first.alarms, first.first_alarm, first.alarm_kinds) == (2, 2, ["+inf", "nan"])
    assert (health.layers[2].spikes, health.layers[2].first_spike) == (2, 1)
    assert health.summary() == ("4 NaN/Inf alarms in 2 of 4 layers (conv1: 2 from step 2, +inf, nan; fc2: 2 from "
                                "step 2, nan); 3 spikes in 2 layers (fc1: 2 from step 1; conv2: 1 at step 2), "
                                "in 4 steps")
    quiet = RunHealth(NAMES)
    for step in range(200):
        quiet.add(step)
    assert quiet.summary() == "no NaN/Inf alarm and no spike in 200 steps"
    spiky = RunHealth(NAMES)
    spiky.add(7, spikes=[3])
    assert spiky.summary() == "no NaN/Inf alarm; 1 spike in 1 layer (fc2: 1 at step 7), in 1 steps"


def test_many_layers_are_counted_past_the_first_four() -> None:
    names = [f"layer{i}" for i in range(7)]
    health = RunHealth(names)
    health.add(3, alarms=[(i, "nan") for i in range(6, -1, -1)])
    assert health.summary().startswith("7 NaN/Inf alarms in 7 of 7 layers (layer0: 1 at step 3, nan; layer1: 1 at "
                                       "step 3, nan; layer2: 1 at step 3, nan; layer3: 1 at step 3, nan; and 3 more "
                                       "layers)")


def test_frames_and_the_mappings_events_count_the_same() -> None:
    preset = parse_preset({"spike": {"ratio": 30.0, "window": 4, "warmup": 2}}, "test")
    rng = np.random.default_rng(4)
    norms = np.exp(rng.normal(0.0, 0.5, (40, 4)))  # within a factor e^1.5 of 1, two sigmas each way
    norms[10, 1] = 500.0  # a spike
    norms[20:, 3] = math.nan  # NaN from step 20
    norms[30, 0] = math.inf
    frames = [Frame(s, 0.0, row) for s, row in enumerate(norms)]
    from_frames = RunHealth(NAMES, preset)
    for frame in frames:
        from_frames.handle(frame)
    mapping = Mapping(preset)
    mapping.arrange(NAMES)
    from_events = RunHealth(NAMES)
    for events in mapping.map_frames(frames):
        from_events.add_events(events)
    assert from_frames.summary() == from_events.summary()
    assert (from_frames.spike_count, from_frames.layers[1].first_spike) == (1, 10)
    assert (from_frames.layers[3].alarms, from_frames.layers[3].first_alarm) == (20, 20)
    assert (from_frames.layers[0].alarms, from_frames.layers[0].alarm_kinds) == (1, ["+inf"])
    # perone2019 detects no spike: frames count NaN/Inf alarms only
    post = RunHealth(NAMES, load_preset("perone2019"))
    for frame in frames:
        post.handle(frame)
    assert (post.alarm_count, post.spike_count) == (21, 0)
    with pytest.raises(ValueError, match="has 3 norms for 4 layers"):
        post.handle(Frame(41, 0.0, [1.0, 2.0, 3.0]))


def run_watched(nan_from: int | None, process: bool = False) -> str:
    """Eight steps of a two-layer model whose gradients are set by hand (NaN from ``nan_from`` on); the closing
    summary line ``bridge.watch`` prints."""
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    announce = io.StringIO()
    watch = bridge.watch(model, None, auto=False, mapping="pentatonic", announce=announce, process=process)
    for step in range(8):
        for p in model.parameters():
            p.grad = torch.full_like(p, math.nan if nan_from is not None and step >= nan_from else 0.5)
        watch.step(loss=1.0)
    watch.remove()
    return announce.getvalue().splitlines()[-1]


@pytest.mark.parametrize("process", [False, True])
def test_a_run_turned_nan_never_closes_like_a_healthy_one(process: bool) -> None:
    healthy, sick = run_watched(None, process), run_watched(4, process)
    head = "gradbridge: 8 frames in, 0 dropped; run log: ok; health: "
    assert healthy == head + "no NaN/Inf alarm and no spike in 8 steps"
    assert sick == head + ("8 NaN/Inf alarms in 2 of 2 layers (0: 4 from step 4, nan; 1: 4 from step 4, nan); no spike, "
                           "in 8 steps")
