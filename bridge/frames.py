"""``Frame``: one optimizer step's measurements, the only thing capture hands on."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Frame:
    """One optimizer step, as measured.

    Attributes:
        step: optimizer step index (0-based, increasing).
        time_s: wall-clock time of the capture, seconds since the epoch (``time.time()``).
        norms: L2 norm of each layer's gradient, float64, shape ``(layers,)``; may hold NaN or Inf.
        loss: the training loss at this step, NaN when unknown.
        lr: the learning rate of the optimizer's first parameter group, NaN when unknown.
    """

    step: int
    time_s: float
    norms: np.ndarray
    loss: float = math.nan
    lr: float = math.nan

    def __post_init__(self) -> None:
        norms = np.asarray(self.norms, dtype=np.float64).reshape(-1)
        object.__setattr__(self, "norms", norms)
        object.__setattr__(self, "step", int(self.step))
        object.__setattr__(self, "time_s", float(self.time_s))
        object.__setattr__(self, "loss", float(self.loss))
        object.__setattr__(self, "lr", float(self.lr))

    @property
    def layer_count(self) -> int:
        """Number of layers measured."""
        return int(self.norms.shape[0])

    def resolve(self) -> "Frame":
        """Return the finished frame (a frame is already finished; pending captures override this)."""
        return self


@dataclass(frozen=True)
class RunInfo:
    """What a run measured: the layer names, in channel order, and free-form metadata."""

    layer_names: tuple[str, ...]
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = tuple(str(n) for n in self.layer_names)
        if not names:
            raise ValueError("a run needs at least one layer; got an empty list of layer names")
        object.__setattr__(self, "layer_names", names)
