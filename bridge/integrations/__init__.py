"""Framework adapters: callbacks that hear a Lightning or Hugging Face ``Trainer`` run.

    from bridge.integrations.lightning import GradbridgeCallback            # pip install "gradbridge[lightning]"
    from bridge.integrations.huggingface import GradbridgeTrainerCallback   # pip install "gradbridge[huggingface]"

Each callback is a thin shell over ``bridge.watch(model, optimizer, auto=False, ...)`` (no optimizer hook:
the optimizer only lends its learning rate): it opens the watch when training starts, calls ``step()`` at
the framework's own "gradients are ready" event and closes the watch when training ends. Importing this package imports neither framework (nor torch); each adapter imports
its framework when it is itself imported, and says which extra to install when the framework is missing.
``WatchedRun`` is the lifecycle both share.
"""

from __future__ import annotations

import importlib
import inspect
import math
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from bridge.dispatch import DispatchStats
    from bridge.integrations.huggingface import GradbridgeTrainerCallback
    from bridge.integrations.lightning import GradbridgeCallback
    from bridge.watching import Watch

__all__ = ["GradbridgeCallback", "GradbridgeTrainerCallback", "WatchedRun", "WatchedRunAccess", "import_framework"]

_ADAPTERS = {
    "GradbridgeCallback": "bridge.integrations.lightning",
    "GradbridgeTrainerCallback": "bridge.integrations.huggingface",
}
#: ``bridge.watch`` parameters a callback sets itself: the model and optimizer come from the framework.
_SET_BY_CALLBACK = ("model", "optimizer", "auto")


def __getattr__(name: str) -> Any:
    if name in _ADAPTERS:
        return getattr(importlib.import_module(_ADAPTERS[name]), name)
    raise AttributeError(f"module 'bridge.integrations' has no attribute {name!r}")


def import_framework(module: str, extra: str, framework: str, packages: str) -> ModuleType:
    """Import ``module`` of a training framework, or raise ``ImportError`` naming the extra to install.

    ``packages`` is the plain pip requirement of the framework, e.g. ``"lightning"``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{framework} is not installed (importing {module!r} failed: {exc}); install gradbridge's "
            f'{extra} extra: pip install "gradbridge[{extra}]" (from a clone: pip install -e ".[{extra}]"), '
            f"or the framework itself: pip install {packages}"
        ) from exc


def watch_option_names() -> tuple[str, ...]:
    """The keyword options a callback accepts: every ``bridge.watch`` option but model, optimizer and auto."""
    from bridge.watching import watch

    return tuple(n for n in inspect.signature(watch).parameters if n not in _SET_BY_CALLBACK)


class WatchedRun:
    """One callback's watch: options checked when the callback is made, opened per run, closed once.

    ``add_loss`` sums loss contributions (detached, never synchronised) until ``step`` captures a frame
    with them; ``step`` without any contribution records NaN as the loss.
    """

    def __init__(self, owner: str, options: dict[str, Any]) -> None:
        allowed = watch_option_names()
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            fixed = [n for n in unknown if n in _SET_BY_CALLBACK]
            why = (f"{', '.join(fixed)} {'is' if len(fixed) == 1 else 'are'} set by the callback itself; "
                   if fixed else "")
            raise TypeError(
                f"{owner} got unknown option(s) {', '.join(unknown)}; {why}"
                f"allowed are the options of bridge.watch: {', '.join(allowed)}"
            )
        options = dict(options)
        mapping = options.get("mapping")
        if mapping is not None:
            from bridge.mapping import Mapping

            if not isinstance(mapping, Mapping):  # load now: a bad preset fails before training starts
                options["mapping"] = Mapping.load(mapping)
        self._owner = owner
        self._options = options
        self._watch: Watch | None = None
        self._stats: DispatchStats | None = None
        self._loss: torch.Tensor | float | None = None

    @property
    def watch(self) -> Watch | None:
        """The open watch, or ``None`` before training starts, after it ends and on ranks other than 0."""
        return self._watch

    @property
    def stats(self) -> DispatchStats | None:
        """Frames in, dropped and done of the open watch, or of the last one closed; ``None`` if none ran."""
        return self._watch.stats if self._watch is not None else self._stats

    def open(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, *, process_zero: bool) -> None:
        """Start a watch on ``model`` (closing one still open); ``optimizer`` only lends its learning rate.

        In a ``torch.distributed`` run every rank opens the watch and ``bridge.watch`` decides who sounds:
        the silent ranks must still join the norm reduction when FSDP shards the gradients. Otherwise only
        the framework's process zero (``process_zero``) opens one.
        """
        from bridge.distributed import is_distributed
        from bridge.watching import watch

        if not process_zero and not is_distributed():
            return
        self.close()
        self._loss = None
        self._stats = None
        self._watch = watch(model, optimizer, auto=False, **self._options)

    def add_loss(self, loss: torch.Tensor | float) -> None:
        """Add ``loss`` (a one-element tensor or a float) to the loss of the next frame."""
        if self._watch is None:
            return
        part: Any = loss.detach().reshape(()) if hasattr(loss, "detach") else float(loss)
        self._loss = part if self._loss is None else self._loss + part

    def step(self, loss_divisor: torch.Tensor | float | None = None) -> None:
        """Capture a frame now, with the summed loss divided by ``loss_divisor`` (e.g. an AMP loss scale)."""
        if self._watch is None:
            return
        loss, self._loss = self._loss, None
        if loss is not None and loss_divisor is not None:
            loss = loss / loss_divisor
        self._watch.step(math.nan if loss is None else loss)

    def close(self) -> DispatchStats | None:
        """Finish the watch's outputs (files written, live notes off); idempotent."""
        if self._watch is not None:
            watch, self._watch = self._watch, None
            self._stats = watch.remove()
        return self._stats


class WatchedRunAccess:
    """What every framework callback offers about its ``WatchedRun`` (kept in ``self._run``)."""

    _run: WatchedRun

    @property
    def watch(self) -> Watch | None:
        """The open watch (layer names, live stats), or ``None`` outside training and off the sounding rank."""
        return self._run.watch

    @property
    def stats(self) -> DispatchStats | None:
        """Frames in, dropped and done, and output errors, of the current or last run; ``None`` if none."""
        return self._run.stats

    def close(self) -> DispatchStats | None:
        """Finish the outputs now (the callback does it itself when training ends); idempotent."""
        return self._run.close()
