"""The training loops the overhead benchmark compares, one class per variant, and its two models.

Each variant owns a copy of the case's model and an SGD optimizer (lr 0.01, momentum 0.5, as in the
2019 post); ``block(n)`` runs and times ``n`` steps (zero_grad, forward, backward, what the variant adds,
optimizer.step()). ``inner`` collects, where a variant has one, the in-step time of its norm read.
"""

from __future__ import annotations

import collections
import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from harness import timed
from probes import drain

import bridge
from bridge.capture import Capture, find_layers
from bridge.demo import PostNet


@dataclass
class Case:
    """A model, a fixed batch and a loss; ``goal_pct`` is the overhead the watch may add."""

    name: str
    description: str
    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    goal_pct: float


def make_cases() -> list[Case]:
    torch.manual_seed(0)
    post = Case("a: PostNet", "the post's CNN, batch 64, random 28x28", PostNet(), torch.randn(64, 1, 28, 28),
                torch.randint(0, 10, (64,)), F.nll_loss, 1.0)
    deep = nn.Sequential(*[m for _ in range(128) for m in (nn.Linear(32, 32), nn.ReLU())])
    narrow = Case("b: deep narrow", "128 x (Linear(32, 32) + ReLU), batch 8", deep, torch.randn(8, 32),
                  torch.randn(8, 32), F.mse_loss, 2.0)
    return [post, narrow]


class Trainer:
    """One variant's own copy of the case's model and optimizer; ``block(n)`` times ``n`` steps."""

    def __init__(self, case: Case) -> None:
        self.case = case
        self.model = copy.deepcopy(case.model)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.5)
        self.params = list(self.model.parameters())
        self.layers = find_layers(self.model)
        self.inner: list[float] = []  # in-situ seconds of the norm read, where a variant has one
        self.last_norms: list[float] = []

    def step(self) -> None:
        self.optimizer.zero_grad()
        loss = self.case.loss_fn(self.model(self.case.x), self.case.y)
        loss.backward()
        self.after_backward(loss)
        self.optimizer.step()

    def after_backward(self, loss: torch.Tensor) -> None:
        """What the variant adds between backward and the optimizer step."""

    def block(self, steps: int) -> list[float]:
        return timed(self.step, steps)

    def close(self) -> None:
        """Release what the variant holds."""


class PostMethod(Trainer):
    def after_backward(self, loss: torch.Tensor) -> None:
        self.last_norms = [math.sqrt(sum(float(p.grad.norm().numpy()) ** 2 for p in layer.parameters))
                           for layer in self.layers]


class TensorHooks(Trainer):
    def __init__(self, case: Case) -> None:
        super().__init__(case)
        self.produced: list[torch.Tensor] = []
        self.handles = [p.register_hook(self._on_grad) for p in self.params]
        self.order: dict[int, int] = {}

    def _on_grad(self, grad: torch.Tensor) -> None:
        self.produced.append(grad.norm())

    def after_backward(self, loss: torch.Tensor) -> None:
        self.last_values = torch.stack(self.produced).numpy()  # one copy out per step (backward order)
        self.produced = []

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


class CaptureOnly(Trainer):
    """The hook alone: a ``Capture`` on the optimizer handing frames to a no-op: no run log, no follower."""

    def __init__(self, case: Case) -> None:
        super().__init__(case)
        self._started = 0.0
        self.handles = [self.optimizer.register_step_pre_hook(self._start)]
        self.capture = Capture(self.model, self.optimizer, self.layers, collections.deque(maxlen=1).append)
        self.handles.append(self.optimizer.register_step_pre_hook(self._stop))

    def _start(self, *args: object) -> None:
        self._started = time.perf_counter()

    def _stop(self, *args: object) -> None:
        self.inner.append(time.perf_counter() - self._started)

    def close(self) -> None:
        self.capture.remove()
        for handle in self.handles:
            handle.remove()


class Floor(Trainer):
    def after_backward(self, loss: torch.Tensor) -> None:
        start = time.perf_counter()
        torch.stack(torch._foreach_norm([p.grad for p in self.params]))
        self.inner.append(time.perf_counter() - start)


class Watched(Trainer):
    """The loop with ``bridge.watch`` attached; the hook is timed between two pre-hooks around it.

    ``outputs``: ``"all"`` (run log, WAV, MIDI file, and OSC when ``osc_target`` is given) or ``"log"``
    (the run log alone). ``process``: the outputs run in the follower process (``watch``'s default), else
    on a follower thread of this process (``watch(process=False)``).
    """

    def __init__(self, case: Case, folder: Path, osc_target: str | None, outputs: str = "all",
                 process: bool = True) -> None:
        super().__init__(case)
        stem = folder / f"{case.name.split(':')[0]}-{outputs}{'' if process else '-thread'}"
        self.paths = {"record": stem.with_suffix(".gbrun")}
        if outputs == "all":
            self.paths.update(wav=stem.with_suffix(".wav"), midi_file=stem.with_suffix(".mid"))
        else:
            osc_target = None
        self._started = 0.0
        before = self.optimizer.register_step_pre_hook(self._start)
        self.watch = bridge.watch(self.model, self.optimizer, mapping="pentatonic", osc=osc_target, announce=None,
                                  process=process, **{k: str(v) for k, v in self.paths.items()})
        after = self.optimizer.register_step_pre_hook(self._stop)
        self.timing_handles = [before, after]
        self.stats = None

    def _start(self, *args: object) -> None:
        self._started = time.perf_counter()

    def _stop(self, *args: object) -> None:
        self.inner.append(time.perf_counter() - self._started)

    def after_backward(self, loss: torch.Tensor) -> None:
        self.watch.record_loss(loss)

    def block(self, steps: int) -> list[float]:
        times = timed(self.step, steps)
        drain(self.watch)  # untimed: the followers' work on this block stays in this variant's blocks
        return times

    def close(self) -> None:
        for handle in self.timing_handles:
            handle.remove()
        self.stats = self.watch.remove()
