"""Capture: find a model's layers, hook the optimizer, hand each step's norms on as a frame.

The norms themselves are read by ``bridge.norms.NormReader``: one fused pass, no ``.item()`` per layer.
On a CPU the frame is finished at once and handed to ``on_frame`` (a ``RunLogWriter.append``: one
``os.write``). On CUDA the norms, loss and learning rate travel to the host in one asynchronous copy into
pinned memory; the frame is handed on when that copy has completed, which the hook checks without
waiting at the next step (``remove()`` waits for the last ones): never a host sync per step.
"""

from __future__ import annotations

import collections
import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from bridge import distributed
from bridge.distributed import Participation
from bridge.frames import Frame
from bridge.norms import Layer, NormReader, combine

logger = logging.getLogger("bridge")

PARAM_MODES = ("all", "weights")
#: Frames whose device-to-host copy may be under way at once before the hook waits for the oldest.
MAX_IN_FLIGHT = 64


def _compile(pattern: str, what: str) -> re.Pattern[str]:
    if not isinstance(pattern, str):
        raise TypeError(f"{what} must be a regular expression string; got {type(pattern).__name__}")
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(
            f"{what} {pattern!r} is not a valid regular expression ({exc}); "
            "fix the pattern, e.g. escape dots as '\\.'"
        ) from exc


def _group_of(
    name: str, groups: list[tuple[str, re.Pattern[str]]] | None, depth: int | None
) -> str:
    if groups is not None:
        for group_name, pattern in groups:
            if pattern.search(name):
                return group_name
        return name
    if depth is not None:
        return ".".join(name.split(".")[:depth])
    return name


def find_layers(
    model: torch.nn.Module,
    *,
    include: str | None = None,
    params: str = "all",
    groups: Mapping[str, str] | None = None,
    depth: int | None = None,
) -> list[Layer]:
    """List the layers to measure, in module registration order.

    A layer is every module owning trainable parameters directly, named by its qualified name (the root
    module by its class name). ``include`` keeps only modules whose name matches (``re.search``, before
    grouping). ``params``: ``"all"`` measures every parameter of a module, ``"weights"`` only those named
    ``weight``. ``groups`` ({layer name: regex}) merges the modules whose name matches a regex into one
    layer (first matching group wins; a group sits where its first module sits); ``depth`` merges modules
    by the first ``depth`` dot-separated parts of their name. Raises ``ValueError`` when nothing matches.

    A parameter shared by several modules (tied, like a language model's output layer and its embedding)
    is measured once, in the layer of the first module (in registration order) that owns it; a module
    whose parameters are all measured elsewhere is no layer of its own. A warning on the ``"bridge"``
    logger names each such parameter and its layer.

    Wrapped models give the unwrapped model's names: a ``DistributedDataParallel`` wrapper is looked
    through, FSDP1's ``_fsdp_wrapped_module`` parts are dropped, and the original parameters inside
    FSDP1 flat parameters are measured in their own modules (FSDP2 keeps names as they are).
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    if params not in PARAM_MODES:
        raise ValueError(f"params must be one of {PARAM_MODES}; got {params!r}")
    if groups is not None and depth is not None:
        raise ValueError(
            f"give either groups or depth, not both (got groups={dict(groups)!r}, depth={depth!r}); "
            "use groups for names chosen by regex, depth for grouping by name prefix"
        )
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int)):
        raise TypeError(f"depth must be an int >= 1; got {type(depth).__name__}")
    if depth is not None and depth < 1:
        raise ValueError(f"depth must be >= 1 (1 groups 'encoder.0.fc' as 'encoder'); got {depth}")
    include_re = None if include is None else _compile(include, "include")
    group_res = None
    if groups is not None:
        if not isinstance(groups, Mapping):
            raise TypeError(f"groups must map layer names to regexes; got {type(groups).__name__}")
        group_res = [(str(k), _compile(v, f"groups[{k!r}]")) for k, v in groups.items()]

    model = distributed.unwrap(model)
    flat_members = distributed.fsdp1_layout(model).members
    candidates: list[str] = []
    merged: dict[str, tuple[list[str], list[Any]]] = {}
    first_owner: dict[int, tuple[str, str]] = {}  # id of a parameter measured -> (its name, its layer)
    ties: list[tuple[str, str, str]] = []  # (a later owner's name for it, the first owner's, the layer)
    for qualified, module in model.named_modules():
        qualified = distributed.clean_name(qualified)
        owned = [
            (pname, p)
            for pname, p in [*module.named_parameters(recurse=False), *flat_members.get(id(module), ())]
            if p.requires_grad and (params == "all" or pname == "weight") and not distributed.is_flat_param(p)
        ]
        if not owned:
            continue
        name = qualified or type(module).__name__
        candidates.append(name)
        if include_re is not None and not include_re.search(name):
            continue
        layer = _group_of(name, group_res, depth)
        fresh = []
        for pname, p in owned:
            full = f"{qualified}.{pname}" if qualified else pname
            if id(p) in first_owner:  # shared (tied) with a module before: measured once, there
                ties.append((full, *first_owner[id(p)]))
            else:
                first_owner[id(p)] = (full, layer)
                fresh.append((full, p))
        if not fresh:  # every parameter it owns is measured in an earlier module's layer
            continue
        names, tensors = merged.setdefault(layer, ([], []))
        for full, p in fresh:
            names.append(full)
            tensors.append(p)
    _say_ties(ties)

    if not merged:
        shown = candidates or [n or type(m).__name__ for n, m in model.named_modules()]
        listing = ", ".join(shown[:10]) + (f", ... ({len(shown)} in all)" if len(shown) > 10 else "")
        asked = f"include={include!r}, params={params!r}"
        what = "modules with trainable parameters" if candidates else "modules (none has trainable parameters)"
        raise ValueError(
            f"no layer found in {type(model).__name__} for {asked}; {what}: {listing}; "
            "loosen include, use params='all', or set requires_grad on the parameters to measure"
        )
    return [Layer(n, tuple(pn), tuple(ps)) for n, (pn, ps) in merged.items()]


def _say_ties(ties: list[tuple[str, str, str]]) -> None:
    """Say, once per call, which parameters are shared by several modules and where each is measured."""
    if not ties:
        return
    listed = "; ".join(f"{later} is {first} (layer {layer!r})" for later, first, layer in ties[:5])
    more = f"; and {len(ties) - 5} more" if len(ties) > 5 else ""
    logger.warning("%d parameter(s) shared by several modules (tied) are measured once, in the layer of the "
                   "first module that owns them: %s%s", len(ties), listed, more)


def _scalar_of(value: Any, what: str) -> float | torch.Tensor:
    """A loss or learning rate as a float, or as a detached one-element tensor."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{what} must be a single number; got a tensor of shape {tuple(value.shape)}")
        return value.detach().reshape(1)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise TypeError(f"{what} must be a float or a one-element tensor; got {type(value).__name__}")


class PendingFrame:
    """A captured step whose numbers may still be in flight from the device; ``resolve()`` finishes it.

    ``packed`` holds the norms (per layer, or per parameter with ``layer_of`` giving each one's layer,
    combined here as in ``combine``), followed by the scalars whose ``slots`` are indices into it; ``repair``
    (``NormReader.repair``) reads again in float64 the norms a float32 sum may have got wrong.

    ``ready`` says, without waiting, whether the device copy (if any) has completed; ``resolve()`` waits
    for it and returns the ``Frame``. Resolving twice returns the same ``Frame``.
    """

    __slots__ = ("_event", "_frame", "_layer_count", "_layer_of", "_packed", "_repair", "_slots", "step", "time_s")

    def __init__(
        self,
        step: int,
        time_s: float,
        layer_count: int,
        packed: torch.Tensor,
        slots: Mapping[str, int | float | torch.Tensor],
        event: Any = None,
        layer_of: np.ndarray | None = None,
        repair: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        self.step = step
        self.time_s = time_s
        self._layer_count = layer_count
        self._packed = packed
        self._slots = dict(slots)
        self._event = event
        self._layer_of = layer_of
        self._repair = repair
        self._frame: Frame | None = None

    @property
    def ready(self) -> bool:
        """True when ``resolve()`` will not wait for the device."""
        return self._frame is not None or self._event is None or bool(self._event.query())

    def resolve(self) -> Frame:
        """Wait for the numbers to reach the host and return the finished ``Frame``."""
        if self._frame is None:
            if self._event is not None:
                self._event.synchronize()
            values = self._packed.numpy().astype(np.float64, copy=True)
            scalars = {}
            for key, slot in self._slots.items():
                if isinstance(slot, int):
                    scalars[key] = float(values[slot])
                elif isinstance(slot, torch.Tensor):
                    scalars[key] = float(slot.to(torch.float64).numpy()[0])
                else:
                    scalars[key] = float(slot)
            count = self._layer_count if self._layer_of is None else len(self._layer_of)
            read = values[:count] if self._repair is None else self._repair(values[:count])
            norms = combine(read, self._layer_of, self._layer_count)
            self._frame = Frame(self.step, self.time_s, norms, scalars["loss"], scalars["lr"])
            self._packed = torch.empty(0)
            self._slots = {}
            self._event = None
            self._layer_of = None
            self._repair = None
        return self._frame


class Capture:
    """Reads the layers' gradient norms at every optimizer step and hands a frame to ``on_frame``.

    With ``auto`` (the default) an optimizer step pre-hook captures one frame per ``optimizer.step()``,
    so gradient accumulation gives one frame per step. Without it, call ``step()`` after ``backward()``
    and before ``zero_grad()``. ``on_frame`` receives each finished ``Frame`` on the training thread and
    must be quick (``RunLogWriter.append`` is made for it: one ``os.write``). On CUDA a frame is handed on
    once its copy to the host has completed, checked without waiting at the next step; ``flush()`` (called
    by ``remove()``) waits for the last ones. Nothing is stored on the model or the optimizer; ``remove()``
    (or leaving a ``with`` block) unregisters the hook.

    In a ``torch.distributed`` run, ``participation`` (default: rank 0 sounds; see
    ``bridge.distributed.participation``) says what this rank does: a silent rank of a replicated run
    registers no hook at all; with sharded gradients every rank measures and joins one ``all_reduce`` of
    the per-layer squared norms per step, and only sounding ranks call ``on_frame``.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None,
        layers: Sequence[Layer] | None,
        on_frame: Callable[[Frame], None],
        *,
        auto: bool = True,
        participation: Participation | None = None,
    ) -> None:
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer or None; got {type(optimizer).__name__}")
        if not callable(on_frame):
            raise TypeError(f"on_frame must be callable (e.g. RunLogWriter.append); got {type(on_frame).__name__}")
        layers = find_layers(model) if layers is None else layers
        self._participation = participation or distributed.participation(0, model, layers)
        share = distributed.shares(model) if self._participation.sharded else None
        self._reader = NormReader(layers, share=share)
        # looked up once: the hook reads these every step (see _capture)
        self._read_parameters = self._reader.read_parameters
        self._repair = self._reader.repair if self._reader.needs_repair else None
        self._layer_count = self._reader.layer_count
        self._sharded = self._participation.sharded
        self._measures = self._participation.measures
        self._optimizer = optimizer
        self._on_frame = on_frame
        self._in_flight: collections.deque[PendingFrame] = collections.deque()  # CUDA copies under way
        self._next_step = 0
        self._loss: float | torch.Tensor | None = None
        self._handle: Any = None
        self.errors = 0
        self.first_error: str | None = None
        if auto:
            if optimizer is None:
                raise ValueError("auto=True hooks the optimizer, but optimizer is None; pass it or use auto=False")
            if self._measures:
                self._handle = optimizer.register_step_pre_hook(self._hook)

    @property
    def participation(self) -> Participation:
        """What this rank does in a distributed run (fixed at construction)."""
        return self._participation

    @property
    def layer_names(self) -> tuple[str, ...]:
        """The measured layers' names, in the order of each frame's norms."""
        return self._reader.layer_names

    @property
    def steps_captured(self) -> int:
        """How many frames were captured so far (the next frame's step index)."""
        return self._next_step

    def record_loss(self, loss: float | torch.Tensor) -> None:
        """Keep ``loss`` (a float or one-element tensor, detached, never read now) for the next frame."""
        self._loss = _scalar_of(loss, "loss")

    def step(self, loss: float | torch.Tensor | None = None) -> None:
        """Capture a frame now (after ``backward()``, before ``zero_grad()``); errors propagate.

        With sharded gradients every rank must call it at the same step (it joins a collective)."""
        if not self._measures:
            return
        if loss is not None:
            self.record_loss(loss)
        self._capture()

    def _hand_on_ready(self) -> None:
        """Hand on, in step order, the frames whose device copy has completed (never waits, unless more than
        ``MAX_IN_FLIGHT`` are under way: then the oldest is waited for, which bounds the pinned memory)."""
        while self._in_flight and (self._in_flight[0].ready or len(self._in_flight) > MAX_IN_FLIGHT):
            self._on_frame(self._in_flight.popleft().resolve())

    def flush(self) -> None:
        """Hand on every frame whose device copy is still under way, waiting for each (CUDA only)."""
        while self._in_flight:
            self._on_frame(self._in_flight.popleft().resolve())

    def _hook(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        try:
            self._capture()
        except Exception as exc:  # the training step must go on; report the first failure once
            self.errors += 1
            if self.first_error is None:
                self.first_error = f"{type(exc).__name__}: {exc}"
                logger.warning(
                    "gradient capture failed at step %d (%s); training goes on without this frame",
                    self._next_step - 1, self.first_error,
                )

    def _capture(self) -> None:
        # Runs right after backward, when every attribute, global and code path it touches is a cache
        # miss (1-5 µs each here): the usual case is kept to a few lines and the reader's bound method.
        if self._in_flight:
            self._hand_on_ready()
        step = self._next_step
        self._next_step = step + 1  # a failed capture still uses its step index: steps count optimizer steps
        time_s = time.time()
        if self._sharded:
            squares = self._read_reduced()
            if not self._participation.sounds:
                self._loss = None
                return
            norms, layer_of = squares.sqrt_(), None
        else:  # per-parameter norms when possible: combined per layer on the host (``combine``)
            norms, layer_of = self._read_parameters()
        loss, self._loss = self._loss, None
        groups = None if self._optimizer is None else self._optimizer.param_groups
        lr = groups[0].get("lr", math.nan) if groups else math.nan
        if loss is None:
            loss = math.nan
        elif type(loss) is torch.Tensor and loss.is_cpu and norms.is_cpu:
            loss = loss.item()  # on a CPU a read, not a sync: cheaper than packing it with the norms
        if type(lr) is float and type(loss) is float and norms.is_cpu:  # the usual case
            values = norms.numpy()
            if self._repair is not None:  # a float32 sum: a norm it may have got wrong is read again
                values = self._repair(values)
            self._on_frame(Frame(step, time_s, combine(values, layer_of, self._layer_count), loss, lr))
            return
        self._hand_off(step, time_s, norms, layer_of, loss, lr)

    def _hand_off(
        self, step: int, time_s: float, norms: torch.Tensor, layer_of: np.ndarray | None, loss: Any, lr: Any
    ) -> None:
        """Hand on a frame whose norms, loss or learning rate are tensors, on the host or not: the ones on
        the norms' device are packed with them, so that one copy (CUDA: asynchronous) or one read (CPU)
        brings them all to the host."""
        device = norms.device
        parts = [norms]
        slots: dict[str, int | float | torch.Tensor] = {}
        for key, value in (("loss", loss), ("lr", lr)):
            scalar = value if type(value) is float else _scalar_of(value, key)
            if not isinstance(scalar, torch.Tensor):
                slots[key] = scalar
            elif scalar.device.type == "cpu" and device.type != "cpu":
                # already on the host: kept aside (a copy, so that later in-place changes do not show)
                slots[key] = scalar.clone()
            else:
                slots[key] = sum(p.numel() for p in parts)
                parts.append(scalar.to(device=device, dtype=torch.float64, non_blocking=True))
        packed = torch.cat(parts) if len(parts) > 1 else norms
        event = None
        if device.type == "cuda":
            host = torch.empty(packed.shape, dtype=packed.dtype, pin_memory=True)
            host.copy_(packed, non_blocking=True)
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(device))
            packed = host
        elif device.type != "cpu":
            packed = packed.to("cpu")
        repair = self._repair if device.type == "cpu" and not self._sharded else None
        pending = PendingFrame(step, time_s, self._layer_count, packed, slots, event, layer_of, repair)
        if event is None:
            self._on_frame(pending.resolve())
            return
        self._in_flight.append(pending)

    def _read_reduced(self) -> torch.Tensor:
        """Squared norms summed over ranks; a rank that cannot read joins with NaN, so that none hangs."""
        try:
            squares = self._reader.read_squares()
        except Exception:
            count, device = self._reader.layer_count, self._reader.device
            distributed.reduce_squares(torch.full((count,), math.nan, dtype=torch.float64, device=device))
            raise
        return distributed.reduce_squares(squares)

    def remove(self) -> None:
        """Unregister the optimizer hook and hand on the frames still in flight; safe to call twice."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self.flush()

    def __enter__(self) -> "Capture":
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
