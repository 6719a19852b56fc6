"""Lightning adapter: ``GradbridgeCallback`` hears a ``Trainer.fit`` run, one frame per optimizer step.

    import lightning.pytorch as pl
    from bridge.integrations.lightning import GradbridgeCallback

    trainer = pl.Trainer(callbacks=[GradbridgeCallback(mapping="pentatonic", record="run.gbrun",
                                                       wav="run.wav", midi_file="run.mid")])
    trainer.fit(model, loader)

Needs Lightning (``pip install "gradbridge[lightning]"``). Works with the ``lightning`` package
(``lightning.pytorch``), or with the older ``pytorch_lightning`` when ``lightning`` is not installed: the
callback must come from the same package as the ``Trainer``.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

from bridge.integrations import WatchedRun, WatchedRunAccess, import_framework

if TYPE_CHECKING:
    import torch

#: The Lightning package this adapter binds to: ``lightning.pytorch`` where installed.
LIGHTNING_MODULE = (
    "pytorch_lightning"
    if importlib.util.find_spec("lightning") is None and importlib.util.find_spec("pytorch_lightning") is not None
    else "lightning.pytorch"
)
_pl = import_framework(LIGHTNING_MODULE, "lightning", "Lightning", "lightning")

__all__ = ["LIGHTNING_MODULE", "GradbridgeCallback"]


def _loss_scale(trainer: Any) -> torch.Tensor | float | None:
    """The AMP loss scale the losses seen in ``on_before_backward`` carry (``None`` without a scaler)."""
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    if scaler is None or not scaler.is_enabled():
        return None
    # GradScaler's scale as a device tensor avoids the host sync of the public get_scale().
    read_async = getattr(scaler, "_get_scale_async", None)
    scale = read_async() if read_async is not None else None
    return scale if scale is not None else scaler.get_scale()


class GradbridgeCallback(WatchedRunAccess, _pl.Callback):  # type: ignore[misc,name-defined]
    """Hear every optimizer step of ``Trainer.fit``: the layers' gradient norms, the loss and the lr.

    Takes the keyword options of ``bridge.watch`` (``mapping``, ``record``, ``wav``, ``midi_file``,
    ``midi``, ``osc``, ``play``, ``sinks``, ``layers``, ``params``, ``groups``, ``depth``, ``every``,
    ``max_fps``, ``aggregate``, ``announce``, ...), checked when the callback is made (a bad preset fails
    here, not mid-run). ``model``, ``optimizer`` and ``auto`` are set by the callback.

    When: ``on_before_optimizer_step``, after the whole step's backward passes (after gradient
    accumulation, so one frame per optimizer step), with AMP gradients already unscaled, and before
    Lightning clips gradients: you hear the raw norms. Layers are the ``LightningModule``'s own modules.

    Loss: the sum of the losses Lightning backpropagated since the previous step (``on_before_backward``),
    which is the mean training-step loss over the accumulated batches, AMP loss scale removed; NaN when
    nothing was backpropagated. Learning rate: the first parameter group of the first optimizer.

    Lifecycle: the watch opens in ``on_fit_start`` and closes in ``on_fit_end``, on an exception or
    Ctrl-C (``on_exception``) and at ``teardown``, so the files are complete either way. Only global rank 0
    sounds; other ranks do nothing. A second ``fit`` opens a new watch (and rewrites the same files).
    """

    def __init__(self, **options: Any) -> None:
        super().__init__()
        self._run = WatchedRun(type(self).__name__, options)

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        optimizers = list(trainer.optimizers)
        self._run.open(pl_module, optimizers[0] if optimizers else None, process_zero=trainer.is_global_zero)

    def on_before_backward(self, trainer: Any, pl_module: Any, loss: torch.Tensor) -> None:
        self._run.add_loss(loss)

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: torch.optim.Optimizer) -> None:
        if self._run.watch is not None:
            self._run.step(loss_divisor=_loss_scale(trainer))

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self._run.close()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._run.close()

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._run.close()
