"""Stand-ins for a fast training run, shared by ``soak.py`` and ``throughput.py``.

A cheap preset (2 ms chords at 8 kHz) so that a WAV of a long, fast run stays small; the norms of a
stand-in run (a random walk per layer, with a NaN and an Inf now and then); a stand-in training loop that
writes those norms as gradients and steps a real optimizer, paced on a deadline schedule; a live MIDI
output on JACK (its server: `jackserver.py`).
"""

from __future__ import annotations

import math
import os
import time

import numpy as np
import torch
from torch import nn

import bridge
from bridge.errors import SinkError
from bridge.sinks.base import Sink
from bridge.watching import Watch

#: Chord steps of 2 ms at 8 kHz mono: 16 samples a step keeps a long run's WAV small (10 min at 2000
#: steps a second is 1.2 M steps, 2400 s of audio, 38 MB).
PRESET = """
[preset]
name = "soak"
description = "2 ms chords at 8 kHz for soak tests"
[timing]
layout = "chord"
step_s = 0.002
note_s = 0.002
[pitch]
mode = "scale"
curve = "log"
range = "auto"
[sound]
sample_rate = 8000
channels = 1
waveforms = ["sine", "saw"]
attack_s = 0.0
release_s = 0.0
max_frequency_hz = 3900.0
[live]
clock = "free"  # every step to every live output as it arrives: the heaviest load, which this measures
"""
STEP_SAMPLES = 16  # 0.002 s at 8000 Hz
#: A NaN in layer 0 at every step ``NAN_EVERY - 1`` (mod ``NAN_EVERY``), an Inf in layer 1 likewise.
NAN_EVERY, INF_EVERY = 5000, 7000
LAYER_SIZE = 16  #: floats in each stand-in layer's one parameter


class Norms:
    """Norms of a stand-in run: per layer a random walk in log space, made 4096 steps at a time; every
    5000th step layer 0 is NaN and every 7000th layer 1 (if any) is +Inf, so alarms sound too.

    ``at(step)`` must be asked for steps in increasing order (it walks forward a block at a time); the
    same ``seed`` gives the same norms, so a second ``Norms`` can check what a run recorded.
    """

    def __init__(self, layers: int, seed: int = 0) -> None:
        self.layers = layers
        self._rng = np.random.default_rng(seed)
        # made into the same three buffers every time: no allocation that would move resident memory
        self._noise, self._walk, self._block = (np.empty((4096, layers)) for _ in range(3))
        self._walk[-1] = 0.0
        self._start = -4096

    def at(self, step: int) -> np.ndarray:
        """The norms of ``step`` (float64, one per layer; positive, or NaN/Inf at the alarm steps)."""
        while step - self._start >= self._block.shape[0]:
            self._rng.standard_normal(out=self._noise)
            self._noise *= 0.02
            self._noise[0] += self._walk[-1]  # the walk goes on from where the last block ended
            np.cumsum(self._noise, axis=0, out=self._walk)
            np.exp(self._walk, out=self._block)
            self._start += self._block.shape[0]
        row = self._block[step - self._start].copy()
        if step % NAN_EVERY == NAN_EVERY - 1:
            row[0] = math.nan
        if step % INF_EVERY == INF_EVERY - 1 and self.layers > 1:
            row[1] = math.inf
        return row


class OneParameter(nn.Module):
    """A layer that owns one parameter of ``size`` floats."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(size))


class Steps:
    """What the loop measured: nanoseconds per step (whole body, and the hook's part), late steps, wall time.

    The arrays are made once, for ``capacity`` steps, before anything is measured: the measuring itself must
    not move the resident memory it reports. ``blocks`` are the ends of each ``run`` in them.
    """

    def __init__(self, capacity: int = 0) -> None:
        self.step_ns = np.full(capacity, 0, np.int64)  # written now (np.zeros would take its pages lazily)
        self.hook_ns = np.full(capacity, 0, np.int64)
        self.count = 0
        self.blocks: list[int] = []
        self.late = 0
        self.seconds = 0.0

    def all(self) -> tuple[np.ndarray, np.ndarray]:
        return self.step_ns[: self.count], self.hook_ns[: self.count]

    def block(self, index: int) -> np.ndarray:
        """The step times of the ``index``-th run."""
        start = self.blocks[index - 1] if index else 0
        return self.step_ns[start: self.blocks[index]]


class StandInLoop:
    """The stand-in training loop: ``layers`` one-parameter layers and SGD; a watch opened by ``attach``
    sits between two timing pre-hooks, so ``run`` also times the hook's part of each step."""

    def __init__(self, layers: int, seed: int = 0) -> None:
        self.model = nn.ModuleList(OneParameter(LAYER_SIZE) for _ in range(layers))
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1e-4, foreach=True)
        self.grads = torch.zeros(layers, LAYER_SIZE)
        for row, parameter in zip(self.grads, self.model.parameters()):
            parameter.grad = row  # a view: one write per step fills every layer's gradient
        units = np.random.default_rng(seed).standard_normal((layers, LAYER_SIZE))
        self.units = torch.from_numpy(units / np.linalg.norm(units, axis=1, keepdims=True)).float()
        self.norms = Norms(layers, seed)
        self.step = 0
        self._entered = 0
        self.hook_ns = 0
        self._handles = [self.optimizer.register_step_pre_hook(self._enter)]
        self.watch: Watch | None = None

    def attach(self, **watch_args: object) -> Watch:
        """Open ``bridge.watch`` on this loop (between the timing pre-hooks) and return it."""
        self.watch = bridge.watch(self.model, self.optimizer, announce=None, **watch_args)  # type: ignore[arg-type]
        return self.watch

    def _enter(self, *args: object) -> None:
        self._entered = time.perf_counter_ns()

    def _leave(self, *args: object) -> None:
        self.hook_ns = time.perf_counter_ns() - self._entered

    def ready(self) -> None:
        """Register the closing timing pre-hook (after ``attach``, if any)."""
        self._handles.append(self.optimizer.register_step_pre_hook(self._leave))

    def one_step(self) -> None:
        """One unpaced, untimed step."""
        scale = torch.from_numpy(self.norms.at(self.step).astype(np.float32))
        torch.mul(self.units, scale.unsqueeze(1), out=self.grads)
        self.optimizer.step()
        self.step += 1

    def run(self, seconds: float, rate: float, into: Steps) -> None:
        """Run steps on the deadline schedule for ``seconds``; add their timings to ``into``."""
        period_ns, clock = 1e9 / rate, time.perf_counter_ns
        first = into.count
        capacity = min(int(seconds * rate) + 2, into.step_ns.shape[0] - first)
        step_ns, hook_ns = into.step_ns[first:], into.hook_ns[first:]
        start = clock()
        end, index, late = start + int(seconds * 1e9), 0, 0
        while index < capacity:
            due, now = start + int(index * period_ns), clock()
            if now >= end:
                break
            if now < due:
                time.sleep((due - now) / 1e9)
            elif now - due > period_ns:
                late += 1
            scale = torch.from_numpy(self.norms.at(self.step).astype(np.float32))
            began = clock()
            torch.mul(self.units, scale.unsqueeze(1), out=self.grads)
            self.optimizer.step()
            step_ns[index] = clock() - began
            hook_ns[index] = self.hook_ns
            index += 1
            self.step += 1
        into.seconds += (clock() - start) / 1e9
        into.count += index
        into.blocks.append(into.count)
        into.late += late

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def jack_midi_sink(name: str = "gradbridge-soak") -> tuple[Sink | None, str]:
    """A virtual MIDI output on JACK, or ``None`` and why not."""
    os.environ.setdefault("JACK_NO_START_SERVER", "1")  # asking must not start a server
    try:
        from bridge.sinks.midi_port import MidiPortSink
        from bridge.sinks.midi_system import list_output_ports
    except ImportError as exc:
        return None, f"live MIDI skipped: bridge.sinks.midi_port cannot be imported ({exc})"
    try:
        list_output_ports("jack")
    except SinkError as exc:
        return None, f"live MIDI skipped: no JACK server answers ({str(exc).split(' Fix:')[0]})"
    return MidiPortSink(name, api="jack", virtual=True), "live MIDI: a virtual JACK output"
