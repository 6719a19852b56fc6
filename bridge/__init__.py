"""gradbridge: hear neural-network training.

``bridge.watch(model, optimizer, ...)`` reads every layer's gradient norm at each optimizer step and turns
the norms into sound: MIDI, OSC, the built-in synth, WAV and MIDI files, and a run log.
The torch-dependent parts are imported only when used, so rendering a run log never pays for torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bridge.errors import GradbridgeError, PresetError, RunLogError, SinkError
from bridge.frames import Frame, RunInfo

__version__ = "0.1.0"

__all__ = [
    "Frame",
    "GradbridgeError",
    "PresetError",
    "RunInfo",
    "RunLogError",
    "SinkError",
    "watch",
]

if TYPE_CHECKING:
    from bridge.watching import watch


def __getattr__(name: str) -> Any:
    if name == "watch":
        from bridge.watching import watch

        return watch
    raise AttributeError(f"module 'bridge' has no attribute {name!r}")
