"""Hugging Face adapter: ``GradbridgeTrainerCallback`` hears a ``transformers.Trainer`` run.

    from transformers import Trainer
    from bridge.integrations.huggingface import GradbridgeTrainerCallback

    trainer = Trainer(model=model, args=args, train_dataset=data,
                      callbacks=[GradbridgeTrainerCallback(mapping="pentatonic", record="run.gbrun",
                                                           wav="run.wav", midi_file="run.mid")])
    trainer.train()

Needs transformers 4.45 or later, which has the ``on_pre_optimizer_step`` event, and accelerate
(``pip install "gradbridge[huggingface]"``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from collections.abc import Mapping as MappingType
from typing import TYPE_CHECKING, Any

from bridge.integrations import WatchedRun, WatchedRunAccess, import_framework

# The framework first: a missing one fails at once, before torch is loaded.
_transformers = import_framework("transformers", "huggingface", "Hugging Face transformers",
                                 "transformers accelerate")
if not hasattr(_transformers.TrainerCallback, "on_pre_optimizer_step"):
    raise ImportError(
        f"transformers {_transformers.__version__} has no TrainerCallback.on_pre_optimizer_step event, which "
        'GradbridgeTrainerCallback needs (transformers 4.45 or later); upgrade it: pip install --upgrade '
        '"transformers>=4.45"'
    )

import torch

if TYPE_CHECKING:
    from bridge.dispatch import DispatchStats

__all__ = ["GradbridgeTrainerCallback"]

logger = logging.getLogger("bridge")


def _output_loss(output: Any) -> torch.Tensor | None:
    """The ``loss`` a model returned (a ``ModelOutput`` or dict entry), if it is a one-element tensor."""
    loss = output.get("loss") if isinstance(output, MappingType) else getattr(output, "loss", None)
    return loss if isinstance(loss, torch.Tensor) and loss.numel() == 1 else None


class _StepLoss:
    """Collects the training loss of one optimizer step from the model's own outputs (a forward hook).

    Each training forward pass (module in training mode, grad enabled: evaluation is left out) adds its
    ``loss``. The step's loss is their mean, or their sum when the Trainer passed ``num_items_in_batch``
    (then each micro-batch loss is already divided by the item count of the whole step).
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self._total: torch.Tensor | None = None
        self._count = 0
        self._summed = False
        self._handle = model.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module: torch.nn.Module, args: Any, kwargs: dict[str, Any], output: Any) -> None:
        if not (module.training and torch.is_grad_enabled()):
            return
        loss = _output_loss(output)
        if loss is None:
            return
        part = loss.detach().reshape(())
        self._total = part if self._total is None else self._total + part
        self._count += 1
        self._summed = kwargs.get("num_items_in_batch") is not None

    def take(self) -> torch.Tensor | None:
        """The loss of the step now ending (``None`` if the model returned none), and start the next."""
        total, count, summed = self._total, self._count, self._summed
        self._total, self._count = None, 0
        if total is None:
            return None
        return total if summed else total / count

    def remove(self) -> None:
        """Unregister the forward hook; safe to call twice."""
        self._handle.remove()


def _first_grad_tensor(output: Any) -> torch.Tensor | None:
    """The model output's ``loss`` if backward will flow through it, else the first such tensor in it."""
    loss = _output_loss(output)
    if loss is not None and loss.requires_grad:
        return loss
    values = output.values() if isinstance(output, MappingType) else (output if isinstance(output, tuple) else [output])
    return next((v for v in values if isinstance(v, torch.Tensor) and v.requires_grad), None)


def _sync_state(optimizer: Any) -> Any:
    """What tells whether this micro-batch ends an optimizer step: accelerate's gradient state, shared by the
    Trainer (its optimizer's, or the process-wide one)."""
    state = getattr(optimizer, "gradient_state", None)
    if state is None:
        from accelerate.state import GradientState

        state = GradientState()
    return state


class _BeforeClipping:
    """Calls ``capture`` once per optimizer step, when the backward pass of the step's last micro-batch ends:
    the gradients are complete (DDP's reduction included) and not clipped yet.

    A forward hook on the model sees the last micro-batch (accelerate's ``sync_gradients``) and hooks its
    output's gradient; that hook, early in backward, queues a callback at the end of the backward pass,
    which queues ``capture`` behind the callbacks queued meanwhile (DDP finalises its reduction in one).
    A failure is reported once and training goes on.
    """

    def __init__(self, model: torch.nn.Module, optimizer: Any, capture: Callable[[], None]) -> None:
        self._sync = _sync_state(optimizer)
        self._capture = capture
        self._armed = False
        self.captured = False  #: whether the step now ending was captured (reset by ``take``)
        self._failed = False
        self._handle = model.register_forward_hook(self._hook)

    def _hook(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if not (module.training and torch.is_grad_enabled() and self._sync.sync_gradients):
            return
        tensor = _first_grad_tensor(output)
        if tensor is not None:
            self._armed = True
            tensor.register_hook(self._on_gradient)

    def _on_gradient(self, grad: torch.Tensor) -> None:
        if self._armed:
            self._armed = False
            torch.autograd.Variable._execution_engine.queue_callback(self._behind_others)

    def _behind_others(self) -> None:
        torch.autograd.Variable._execution_engine.queue_callback(self._fire)

    def _fire(self) -> None:
        try:
            with torch.no_grad():
                self._capture()
        except Exception as exc:  # inside backward: the step must go on; report the first failure once
            if not self._failed:
                self._failed = True
                logger.warning("capturing the gradient norms before clipping failed (%s: %s); training goes on "
                               "without this frame", type(exc).__name__, exc)
            return
        self.captured = True

    def take(self) -> bool:
        """Whether the step now ending was captured; start the next step."""
        captured, self.captured = self.captured, False
        return captured

    def remove(self) -> None:
        """Unregister the forward hook; safe to call twice."""
        self._handle.remove()


class GradbridgeTrainerCallback(WatchedRunAccess, _transformers.TrainerCallback):  # type: ignore[misc,name-defined]
    """Hear every optimizer step of ``Trainer.train``: the layers' gradient norms, the loss and the lr.

    Takes the keyword options of ``bridge.watch`` (``mapping``, ``record``, ``wav``, ``midi_file``,
    ``midi``, ``osc``, ``play``, ``sinks``, ``layers``, ``params``, ``groups``, ``depth``, ``every``,
    ``max_fps``, ``aggregate``, ``announce``, ...), checked when the callback is made; ``model`` (optional)
    measures that module instead of the Trainer's model, e.g. only the encoder.

    When: once per optimizer step (also with ``gradient_accumulation_steps``), with the norms *before*
    clipping. The Trainer clips (``max_grad_norm`` > 0, the default 1.0) before any callback event, which
    would flatten an explosion to a total norm of exactly ``max_grad_norm``; so with clipping on, the
    frame is taken when the backward pass of the step's last micro-batch ends, before the clipping, and its
    total norm is the ``grad_norm`` the Trainer logs. Without clipping it is taken at
    ``on_pre_optimizer_step``. Under fp16 mixed precision the norms are then still multiplied by the loss
    scale (the Trainer unscales them when it clips, after this point).

    Loss: taken from the model's own ``loss`` output in the step's training forward passes (their mean,
    or their sum when the model normalises by ``num_items_in_batch``); NaN when the model returns no loss,
    as with label smoothing or a ``compute_loss_func``, which take the labels away from the model.
    Learning rate: the first parameter group of the Trainer's optimizer.

    Lifecycle: the watch opens in ``on_train_begin`` and closes in ``on_train_end``. The Trainer has no
    exception event: on an exception or Ctrl-C the outputs are finished when the interpreter exits, or
    at once with ``close()`` (or ``with callback: trainer.train()``). Only the world process zero sounds.
    """

    def __init__(self, model: torch.nn.Module | None = None, **options: Any) -> None:
        super().__init__()
        if model is not None and not isinstance(model, torch.nn.Module):
            raise TypeError(
                f"model must be a torch.nn.Module (or None for the Trainer's model); got {type(model).__name__}"
            )
        self._model = model
        self._run = WatchedRun(type(self).__name__, options)
        self._loss: _StepLoss | None = None
        self._before_clipping: _BeforeClipping | None = None
        self._warned_clipped = False

    def close(self) -> DispatchStats | None:
        """Finish the outputs now (the callback does it itself when ``train`` ends); idempotent."""
        if self._loss is not None:
            self._loss.remove()
            self._loss = None
        if self._before_clipping is not None:
            self._before_clipping.remove()
            self._before_clipping = None
        return super().close()

    def __enter__(self) -> "GradbridgeTrainerCallback":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        trainer_model = kwargs.get("model")
        measured = self._model if self._model is not None else trainer_model
        if not isinstance(measured, torch.nn.Module):
            raise TypeError(
                f"{type(self).__name__} found no model to measure (got {type(measured).__name__}); "
                "pass model= when making the callback"
            )
        self.close()
        self._run.open(measured, kwargs.get("optimizer"), process_zero=state.is_world_process_zero)
        if self._run.watch is None:  # another process sounds
            return
        # the loss comes out of the Trainer's model, also when a part of it is measured
        source = trainer_model if isinstance(trainer_model, torch.nn.Module) else measured
        self._loss = _StepLoss(source)
        if getattr(args, "max_grad_norm", 0) and args.max_grad_norm > 0:  # the Trainer clips: hear the norms before
            self._before_clipping = _BeforeClipping(source, kwargs.get("optimizer"), self._capture)

    def _capture(self) -> None:
        """Take the step's frame now, with the loss of its forward passes."""
        if self._loss is None:
            return
        loss = self._loss.take()
        if loss is not None:
            self._run.add_loss(loss)
        self._run.step()

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._run.watch is None or self._loss is None:
            return
        if self._before_clipping is not None:
            if self._before_clipping.take():
                return
            if not self._warned_clipped:  # the model's output had no tensor to follow into backward
                self._warned_clipped = True
                logger.warning("%s could not see the end of this step's backward pass, so it hears this step's "
                               "norms after the Trainer clipped them (max_grad_norm=%s)", type(self).__name__,
                               args.max_grad_norm)
        self._capture()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.close()
