"""Gradient norms of fixed layers: per-parameter norms read on the device in one fused pass, and their
combination into one norm per layer (sqrt of the sum of squares over the layer's parameters).

``NormReader`` does the device side without synchronising with it; ``combine`` finishes
``NormReader.read_parameters()`` on the host.
"""

from __future__ import annotations

import collections
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

logger = logging.getLogger("bridge")

_LOW_PRECISION = (torch.float16, torch.bfloat16)

#: Norms a float32 sum of squares gives right: below, squares of elements under 3.7e-23 underflow to 0
#: (a vanishing layer would read 0); above, the sum overflows (sqrt(3.4e38) = 1.8e19). Outside it, a CPU
#: read sums again in float64.
FLOAT32_TRUSTED = (1e-15, 1.8e19)
# A group whose float32 read has more than 1 norm in REPAIR_SHARE_TO_SWITCH outside FLOAT32_TRUSTED on
# REPAIRS_TO_SWITCH reads in a row (a network whose gradients vanish) is summed in float64 from then on:
# one float64 pass costs less than a float32 pass and a second one over most of the parameters.
REPAIR_SHARE_TO_SWITCH = 8
REPAIRS_TO_SWITCH = 3


@dataclass(frozen=True)
class Layer:
    """One measured channel: a module's own parameters, or a group of modules' parameters.

    Attributes:
        name: the module's qualified name (the root module: its class name), or the group's name.
        parameter_names: qualified names of the parameters measured, e.g. ``("fc1.weight", "fc1.bias")``.
        parameters: the parameters themselves, in the same order (not compared, not printed); under
            FSDP1 without ``use_orig_params`` a ``ShardSlice`` stands in for each (it has ``grad``).
    """

    name: str
    parameter_names: tuple[str, ...]
    parameters: tuple[Any, ...] = field(compare=False, repr=False)


#: Largest gradient (in elements) read by stacking with others of its shape on a CPU. Below it one fused
#: norm per tensor costs more (2-5 µs of set-up each) than copying into a stack and reducing it at once;
#: above it the copy costs more (measured crossover on a 2-core CPU: 4 096-8 192 elements).
STACK_MAX_NUMEL = 4096


def _sparse_norm(grad: torch.Tensor) -> torch.Tensor:
    """L2 norm of one gradient of any layout (sparse COO gradients are coalesced first)."""
    if grad.layout == torch.sparse_coo:
        grad = grad.coalesce().values()
    elif grad.layout != torch.strided:
        grad = grad.values()
    return torch.linalg.vector_norm(grad)


@dataclass
class _Group:
    """Parameters of one device and dtype, read together.

    ``params`` are in read order: first the ``singles``, read by one fused ``_foreach_norm``, then each
    of the ``stacks`` (same-shape parameters of at most ``STACK_MAX_NUMEL`` elements on a CPU), read by
    one ``torch.stack`` and one ``vector_norm`` over its rows. ``index`` holds each parameter's layer (a
    tensor on ``device``), ``weight`` the ``share`` factors or None when all are 1, both in read order;
    ``local``: some are DTensors, measured by their local shard. ``fused``: the fused pass works here.
    ``irregular`` is True while gradients are seen missing or not strided: then every read checks both.
    ``float32_sums``: the fast read sums float32 on a CPU (see ``fast_dtype``); ``wide_repairs`` counts
    the reads in a row that found many norms to repair (see ``REPAIRS_TO_SWITCH``).
    """

    device: torch.device
    dtype: torch.dtype
    singles: list[Any]
    stacks: list[list[Any]]
    index: torch.Tensor
    weight: torch.Tensor | None
    local: bool
    fused: bool = True
    irregular: bool = False
    fast: Callable[[], torch.Tensor] = field(init=False, repr=False)
    repairable: bool = field(init=False)
    float32_sums: bool = field(init=False, default=True)
    wide_repairs: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.repairable = self.fast_dtype != self.norm_dtype
        self.fast = _fast_reader(self)

    def sum_in_norm_dtype(self) -> None:
        """Read in ``norm_dtype`` from now on: no float32 sums, nothing left to repair."""
        self.float32_sums = self.repairable = False
        self.fast = _fast_reader(self)

    @property
    def params(self) -> list[Any]:
        return self.singles + [p for stack in self.stacks for p in stack]

    @property
    def norm_dtype(self) -> torch.dtype | None:
        """Accumulation dtype of the norms (see ``norm_dtype_for``)."""
        return norm_dtype_for(self.device, self.dtype)

    @property
    def fast_dtype(self) -> torch.dtype | None:
        """Accumulation dtype of the fast read: on a CPU, float32 gradients are summed in float32 (float64
        costs about four times as much there), and the rare norm outside ``FLOAT32_TRUSTED`` (overflowed
        to +Inf, or so small that its squares may have underflowed) is read again in float64
        (``NormReader.repair``); elsewhere, and once ``sum_in_norm_dtype`` was called, ``norm_dtype``."""
        if self.float32_sums and self.device.type == "cpu" and self.dtype == torch.float32 and not self.local:
            return None
        return self.norm_dtype


def norm_dtype_for(device: torch.device, dtype: torch.dtype) -> torch.dtype | None:
    """The dtype a gradient's squares are summed in: float64 for every real floating dtype (float32 sums
    overflow once a norm passes about 1.8e19, float16 ones at 256), complex128 for complex gradients, and
    float32 on Apple's MPS, which has no float64. ``None``: the gradient's own dtype."""
    if device.type == "mps":
        return torch.float32 if dtype in _LOW_PRECISION else None
    if dtype.is_complex:
        return torch.complex128
    return torch.float64 if dtype.is_floating_point else None


def _fast_reader(group: _Group) -> Callable[[], torch.Tensor]:
    """A function giving ``group``'s per-parameter norms in read order when every gradient is present and
    strided (it raises otherwise: TypeError for a missing one, RuntimeError or NotImplementedError for a
    sparse one). The parameters and dtype are bound once here: the call runs on the training thread every
    step, right after backward, when each attribute it looks up is a cache miss (1-5 µs each)."""
    singles, norm_dtype = tuple(group.singles), group.fast_dtype
    stacks = tuple((tuple(stack), len(stack)) for stack in group.stacks)
    if group.local:
        def read_local_shards() -> torch.Tensor:
            grads = [p.grad for p in singles]
            grads = [g._local_tensor if hasattr(g, "_local_tensor") else g for g in grads]
            return torch.stack(torch._foreach_norm(grads, 2, dtype=norm_dtype))

        return read_local_shards
    if not stacks:
        def read_singles() -> torch.Tensor:
            return torch.stack(torch._foreach_norm([p.grad for p in singles], 2, dtype=norm_dtype))

        return read_singles

    def read_stacks() -> torch.Tensor:
        parts = [torch.linalg.vector_norm(torch.stack([p.grad for p in ps]).view(rows, -1), dim=1, dtype=norm_dtype)
                 for ps, rows in stacks]
        if singles:
            parts.insert(0, torch.stack(torch._foreach_norm([p.grad for p in singles], 2, dtype=norm_dtype)))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    return read_stacks


def _plan(
    entries: list[tuple[Any, int, float]], device: torch.device, stackable: bool
) -> tuple[list[Any], list[list[Any]], list[int], list[float]]:
    """Split one group's (parameter, layer, factor) entries into singles and same-shape stacks.

    Returns the singles (in their given order), the stacks, and the layer and factor of each parameter
    in read order (singles, then each stack).
    """

    def shape_of(p: Any) -> tuple[int, ...] | None:
        """The shape under which ``p`` may be stacked, or None."""
        small = isinstance(p, torch.Tensor) and 0 < p.numel() <= STACK_MAX_NUMEL
        return tuple(p.shape) if small and stackable and device.type == "cpu" else None

    shapes = [shape_of(p) for p, _, _ in entries]
    counts = collections.Counter(shapes)
    by_shape: dict[tuple[int, ...], list[tuple[Any, int, float]]] = {}
    singles: list[tuple[Any, int, float]] = []
    for entry, shape in zip(entries, shapes):
        if shape is not None and counts[shape] > 1:
            by_shape.setdefault(shape, []).append(entry)
        else:
            singles.append(entry)
    stacks = list(by_shape.values())
    ordered = singles + [entry for stack in stacks for entry in stack]
    return ([p for p, _, _ in singles], [[p for p, _, _ in stack] for stack in stacks],
            [layer for _, layer, _ in ordered], [factor for _, _, factor in ordered])


def _fold_of(index: list[int], layer_count: int) -> tuple[int, int, int] | None:
    """How per-parameter norms in read order fold into per-layer norms by one ``vector_norm``:
    ``(rows, columns, dim)`` of the view to reduce, or None when the order allows no such view."""
    k, rest = divmod(len(index), layer_count)
    if rest:
        return None
    if index == [layer for layer in range(layer_count) for _ in range(k)]:  # each layer's k in a row
        return layer_count, k, 1
    if index == list(range(layer_count)) * k:  # k stacks, each one parameter of every layer
        return k, layer_count, 0
    return None


class NormReader:
    """Per-layer L2 gradient norms of fixed layers, read in a few fused ops per device and dtype.

    ``read()`` returns a 1-D float64 tensor (one norm per layer, on the first parameter's device) without
    synchronising with the device. A layer of several parameters gets sqrt(sum of their squared norms),
    squared in float64; a parameter without gradient counts 0; NaN and Inf propagate. A DTensor gradient
    is measured by its local shard. ``share`` (parameter → factor, default 1) scales each parameter's
    squared norm in ``read_squares()``, so that summing those over ranks gives the unsharded squares.

    The usual case costs one ``_foreach_norm`` (on a CPU, small parameters of the same shape are stacked
    and reduced at once instead, which is cheaper than one norm per tensor) and a stack: gradients are
    not inspected one by one unless that fails on them (a missing or sparse gradient). Each parameter's
    norm is ``p.grad.norm()``'s to within float rounding, summed in float64 (see ``norm_dtype_for``).
    """

    def __init__(self, layers: Sequence[Layer], *, share: Callable[[Any], float] | None = None) -> None:
        layers = list(layers)
        if not layers:
            raise ValueError("NormReader needs at least one layer; got none (see find_layers)")
        for layer in layers:
            if not isinstance(layer, Layer):
                raise TypeError(f"layers must hold Layer objects; got {type(layer).__name__}")
            if not layer.parameters:
                raise ValueError(f"layer {layer.name!r} has no parameters to measure")
        self.layer_names: tuple[str, ...] = tuple(layer.name for layer in layers)
        self._device = layers[0].parameters[0].device
        owners: dict[tuple[torch.device, torch.dtype], list[tuple[Any, int, float]]] = {}
        for index, layer in enumerate(layers):
            for p in layer.parameters:
                factor = 1.0 if share is None else float(share(p))
                owners.setdefault((p.device, p.dtype), []).append((p, index, factor))
        fused = hasattr(torch, "_foreach_norm")
        self._groups: list[_Group] = []
        first_order: list[int] = []
        for (device, dtype), entries in owners.items():
            local = any(hasattr(p, "_local_tensor") for p, _, _ in entries)  # DTensor: measure the local shard
            # sharded gradients may not have their parameter's shape: no stacks there
            singles, stacks, order, factors = _plan(entries, device, stackable=share is None and not local)
            weight = None
            if any(f != 1.0 for f in factors):
                weight = torch.tensor(factors, dtype=torch.float64, device=device)
            index = torch.tensor(order, dtype=torch.long, device=device)
            self._groups.append(_Group(device, dtype, singles, stacks, index, weight, local, fused))
            first_order = first_order or order
        # One group on the output device without share factors: read_parameters() hands its per-parameter
        # norms on as they are, with the layer of each (None when they are already the layers' norms).
        first = self._groups[0]
        single = len(self._groups) == 1 and first.device == self._device and first.weight is None
        self._only: _Group | None = first if single else None
        self._layer_of: np.ndarray | None = None
        if single and first_order != list(range(self.layer_count)):
            self._layer_of = np.array(first_order, dtype=np.int64)
        self._fold = _fold_of(first_order, self.layer_count) if single else None
        self._zeros: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    @property
    def layer_count(self) -> int:
        """Number of layers read."""
        return len(self.layer_names)

    @property
    def device(self) -> torch.device:
        """Device of the tensor ``read()`` returns."""
        return self._device

    def _zero(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        zero = self._zeros.get((device, dtype))
        if zero is None:
            zero = self._zeros[(device, dtype)] = torch.zeros((), dtype=dtype, device=device)
        return zero

    def _fused_failure(self, group: _Group, exc: Exception) -> None:
        group.fused = False
        logger.warning(
            "fused norm pass failed on %s %s (%s: %s); measuring each gradient on its own from now on",
            group.device, group.dtype, type(exc).__name__, exc,
        )

    def _present_norms(self, group: _Group, grads: list[torch.Tensor]) -> list[torch.Tensor]:
        """Norms of present gradients of any layout: strided ones fused, the others one by one."""
        strided = [g for g in grads if g.layout == torch.strided] if group.fused else []
        norms: list[torch.Tensor] = []
        if strided:
            try:
                norms = list(torch._foreach_norm(strided, 2, dtype=group.norm_dtype))
            except (RuntimeError, NotImplementedError, TypeError) as exc:
                self._fused_failure(group, exc)
                strided = []
        if len(strided) == len(grads):
            return norms
        fused_norms = iter(norms)
        return [next(fused_norms) if g.layout == torch.strided and strided else _sparse_norm(g) for g in grads]

    def _per_parameter(self, group: _Group) -> torch.Tensor | None:
        """The group's per-parameter norms in read order (0 for a missing gradient), or None if none has one."""
        if group.fused and not group.irregular:
            try:
                norms = group.fast()
            except (RuntimeError, NotImplementedError, TypeError) as exc:
                return self._inspected(group, exc)
            if group.repairable:  # a CPU group: no device to wait for
                return torch.from_numpy(self._repaired(group, norms.numpy()))
            return norms
        return self._inspected(group, None)

    def _inspected(self, group: _Group, failure: Exception | None) -> torch.Tensor | None:
        """``_per_parameter`` looking at each gradient: after ``failure`` of the fast read, or while the
        group is irregular or its fused pass does not work."""
        grads = [p.grad for p in group.params]
        if group.local:
            grads = [g._local_tensor if hasattr(g, "_local_tensor") else g for g in grads]
        if failure is not None:
            if all(g is not None and g.layout == torch.strided for g in grads):
                self._fused_failure(group, failure)
            group.irregular = True  # a missing or sparse gradient: check every read from now on
        present = [g for g in grads if g is not None]
        if not present:
            return None
        if len(present) == len(grads) and all(g.layout == torch.strided for g in present):
            group.irregular = False  # all back to normal: the next read tries the fast path straight away
        norms = iter(self._present_norms(group, present))
        accumulated = group.norm_dtype or group.dtype
        zero = self._zero(group.device, accumulated.to_real())
        return torch.stack([zero if g is None else next(norms) for g in grads])

    def read_parameters(self) -> tuple[torch.Tensor, np.ndarray | None]:
        """Return the gradient norms before they are combined per layer, and the layer of each.

        The cheapest read: the fused ops alone, no host sync. Gives ``(norms, layer_of)``: with all
        parameters on one device and dtype, ``norms`` holds one norm per parameter (float64; float32 on MPS,
        and for float32 gradients on a CPU, where a norm above about 1.8e19 reads +Inf until ``repair``; 0
        where the gradient is missing), in read order (the parameters read one by one, then the stacks of
        same-shape ones), and ``layer_of`` (int64 NumPy array, same length) each one's layer index, or
        None when that order is one parameter per layer in layer order; otherwise ``read()`` and None.
        The layer norms are sqrt(bincount(layer_of, norms**2)), squared in float64 (see ``combine``).
        """
        group = self._only
        if group is None:
            return self.read(), None
        if group.fused and not group.irregular:  # _per_parameter's fast case, spelt out: one call less
            try:
                return group.fast(), self._layer_of
            except (RuntimeError, NotImplementedError, TypeError) as exc:
                norms = self._inspected(group, exc)
        else:
            norms = self._inspected(group, None)
        if norms is None:
            return torch.zeros(self.layer_count, dtype=torch.float64, device=self._device), None
        return norms, self._layer_of

    @property
    def needs_repair(self) -> bool:
        """Whether ``read_parameters()``'s norms, once on the host, go through ``repair`` (a CPU read summed
        in float32)."""
        return self._only is not None and self._only.repairable

    def repair(self, norms: np.ndarray) -> np.ndarray:
        """``read_parameters()``'s norms, read on the host, with each one outside ``FLOAT32_TRUSTED`` read
        again in float64: a float32 sum overflows above 1.8e19 while the gradient is finite, and the squares
        of a vanishing layer underflow (a gradient holding Inf stays Inf, an all-zero one stays 0, NaN is
        left as it is). Cheap when nothing is outside: one comparison per parameter."""
        group = self._only
        if group is None or not group.repairable:
            return norms
        return self._repaired(group, norms)

    @staticmethod
    def _repaired(group: _Group, norms: np.ndarray) -> np.ndarray:
        low, high = FLOAT32_TRUSTED
        values = norms.tolist()  # plain floats: three passes in C, where NumPy's would cost 70 µs cold
        total = sum(values)  # finite: no NaN or Inf, so that min and max below are exact
        if math.isfinite(total) and low <= min(values) and max(values) < high:
            group.wide_repairs = 0
            return norms
        doubtful = np.flatnonzero((norms < low) | (norms >= high))
        if doubtful.size * REPAIR_SHARE_TO_SWITCH <= norms.size:
            group.wide_repairs = 0
        else:
            group.wide_repairs += 1
            if group.wide_repairs >= REPAIRS_TO_SWITCH:
                group.sum_in_norm_dtype()
        if doubtful.size == 0:
            return norms
        params, out = group.params, np.asarray(norms, dtype=np.float64).copy()
        grads = [params[i].grad for i in doubtful]
        present = [i for i, g in zip(doubtful, grads) if g is not None]
        if present:
            again = torch._foreach_norm([params[i].grad for i in present], 2, dtype=torch.float64)
            out[present] = torch.stack(again).numpy()
        return out

    def read(self) -> torch.Tensor:
        """Return the layers' gradient norms now: float64, shape ``(layers,)``, no host sync."""
        if self._fold is None:
            return self.read_squares().sqrt_()
        norms = self._per_parameter(self._groups[0])
        if norms is None:
            return torch.zeros(self.layer_count, dtype=torch.float64, device=self._device)
        rows, columns, dim = self._fold
        if columns == 1 and rows == self.layer_count:
            return norms.to(torch.float64)
        # squared in float64: a float32 norm of 1e30 would overflow when squared in float32
        return torch.linalg.vector_norm(norms.view(rows, columns), dim=dim, dtype=torch.float64)

    def read_squares(self) -> torch.Tensor:
        """Return the layers' squared gradient norms (local shards, times ``share``): float64, no host sync."""
        squares = torch.zeros(self.layer_count, dtype=torch.float64, device=self._device)
        for group in self._groups:
            norms = self._per_parameter(group)
            if norms is None:
                continue
            sq = norms.to(torch.float64).square()
            if group.weight is not None:
                sq.mul_(group.weight)
            if group.device == self._device:
                squares.index_add_(0, group.index, sq)
            else:
                part = torch.zeros(self.layer_count, dtype=torch.float64, device=group.device)
                squares += part.index_add_(0, group.index, sq).to(self._device, non_blocking=True)
        return squares


def combine(norms: np.ndarray, layer_of: np.ndarray | None, layer_count: int) -> np.ndarray:
    """Layer norms from ``read_parameters()``'s values on the host: float64, NaN and Inf propagate.

    ``norms``: one norm per parameter (any float dtype); ``layer_of``: each one's layer index in
    ``[0, layer_count)``, or None when ``norms`` already holds one norm per layer.
    """
    if layer_of is None:
        return np.array(norms[:layer_count], dtype=np.float64)
    if norms.dtype == np.float32:  # squared in float64: no overflow, no errstate (20 µs right after backward)
        squares = np.square(norms, dtype=np.float64)
    else:
        with np.errstate(over="ignore"):  # a norm above 1.3e154 squares to inf: the layer's norm is inf
            squares = np.square(np.asarray(norms, dtype=np.float64))
    return np.sqrt(np.bincount(layer_of, weights=squares, minlength=layer_count))
