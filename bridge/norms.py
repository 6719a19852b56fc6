"""Gradient norms of fixed layers: per-parameter norms read on the device in one fused pass, and their
combination into one norm per layer (sqrt of the sum of squares over the layer's parameters).

``NormReader`` does the device side without synchronising with it; ``combine`` finishes
``NormReader.read_parameters()`` on the host.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

logger = logging.getLogger("bridge")

_LOW_PRECISION = (torch.float16, torch.bfloat16)


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



def _sparse_norm(grad: torch.Tensor) -> torch.Tensor:
    """L2 norm of one gradient of any layout (sparse COO gradients are coalesced first)."""
    if grad.layout == torch.sparse_coo:
        grad = grad.coalesce().values()
    elif grad.layout != torch.strided:
        grad = grad.values()
    return torch.linalg.vector_norm(grad)


@dataclass
class _Group:
    """Parameters of one device and dtype, read by one fused pass.

    ``index`` holds each parameter's layer (a tensor on ``device``); ``weight`` the ``share`` factors or
    None when all are 1; ``local``: some are DTensors, measured by their local shard. ``irregular``
    is True while gradients are seen missing or not strided: then every read checks for both.
    """

    device: torch.device
    dtype: torch.dtype
    params: list[Any]
    index: torch.Tensor
    weight: torch.Tensor | None
    local: bool
    irregular: bool = False


class NormReader:
    """Per-layer L2 gradient norms of fixed layers, computed in one fused pass per device and dtype.

    ``read()`` returns a 1-D float64 tensor (one norm per layer, on the first parameter's device) without
    synchronising with the device. A layer of several parameters gets sqrt(sum of their squared norms),
    squared in float64; a parameter without gradient counts 0; NaN and Inf propagate. A DTensor gradient
    is measured by its local shard. ``share`` (parameter → factor, default 1) scales each parameter's
    squared norm in ``read_squares()``, so that summing those over ranks gives the unsharded squares.

    The usual case costs the fused pass and at most two small ops: gradients are not inspected one by one
    unless the fused pass fails on them (a missing or sparse gradient), and when every layer has the
    same number of parameters the per-layer sums are one ``vector_norm`` over a reshaped view.
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
        # (device, dtype) -> (parameters, layer index of each)
        owners: dict[tuple[torch.device, torch.dtype], tuple[list[Any], list[int]]] = {}
        for index, layer in enumerate(layers):
            for p in layer.parameters:
                ps, idx = owners.setdefault((p.device, p.dtype), ([], []))
                ps.append(p)
                idx.append(index)
        self._groups: list[_Group] = []
        for (device, dtype), (ps, idx) in owners.items():
            factors = [1.0 if share is None else float(share(p)) for p in ps]
            weight = None
            if any(f != 1.0 for f in factors):
                weight = torch.tensor(factors, dtype=torch.float64, device=device)
            local = any(hasattr(p, "_local_tensor") for p in ps)  # DTensor: measure the local shard
            index = torch.tensor(idx, dtype=torch.long, device=device)
            self._groups.append(_Group(device, dtype, ps, index, weight, local))
        # Every layer with the same number k of parameters, all in one group on the output device, no
        # share factors: the norms are one vector_norm over a (layers, k) view of the per-parameter norms.
        sizes = {len(layer.parameters) for layer in layers}
        only = self._groups[0]
        single = len(self._groups) == 1 and only.device == self._device and only.weight is None
        self._per_layer: int | None = sizes.pop() if single and len(sizes) == 1 else None
        # for read_parameters(): the layer of each value it returns, or None when they are the layers' norms
        self._layer_of: np.ndarray | None = None
        if single and self._per_layer != 1:
            self._layer_of = only.index.cpu().numpy()
        self._single = single
        self._zeros: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
        self._fused_failed: set[tuple[torch.device, torch.dtype]] = set()

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

    def _fused(self, dtype: torch.dtype, grads: list[torch.Tensor]) -> list[torch.Tensor]:
        if dtype in _LOW_PRECISION:  # a float16 norm overflows above 65504
            return list(torch._foreach_norm(grads, 2, dtype=torch.float32))
        return list(torch._foreach_norm(grads))

    def _fused_failure(self, key: tuple[torch.device, torch.dtype], exc: Exception) -> None:
        self._fused_failed.add(key)
        logger.warning(
            "fused norm pass failed on %s %s (%s: %s); measuring each gradient on its own from now on",
            key[0], key[1], type(exc).__name__, exc,
        )

    def _group_norms(
        self, device: torch.device, dtype: torch.dtype, grads: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        """Norms of present gradients of any layout: strided ones fused, the others one by one."""
        key = (device, dtype)
        fused = hasattr(torch, "_foreach_norm") and key not in self._fused_failed
        strided = [g for g in grads if g.layout == torch.strided] if fused else []
        norms: list[torch.Tensor] = []
        if strided:
            try:
                norms = self._fused(dtype, strided)
            except (RuntimeError, NotImplementedError, TypeError) as exc:
                self._fused_failure(key, exc)
                strided = []
        if len(strided) == len(grads):
            return norms
        fused_norms = iter(norms)
        return [next(fused_norms) if g.layout == torch.strided and strided else _sparse_norm(g) for g in grads]

    def _stacked(self, group: _Group) -> torch.Tensor | None:
        """The group's per-parameter norms stacked (0 for a missing gradient), or None if none has one."""
        grads = [p.grad for p in group.params]
        if group.local:
            grads = [g._local_tensor if hasattr(g, "_local_tensor") else g for g in grads]
        key = (group.device, group.dtype)
        if not group.irregular and key not in self._fused_failed and hasattr(torch, "_foreach_norm"):
            try:
                return torch.stack(self._fused(group.dtype, grads))
            except (RuntimeError, NotImplementedError, TypeError) as exc:
                if all(g is not None and g.layout == torch.strided for g in grads):
                    self._fused_failure(key, exc)
                group.irregular = True  # a missing or sparse gradient: check every read from now on
        present = [g for g in grads if g is not None]
        if not present:
            return None
        if len(present) == len(grads) and all(g.layout == torch.strided for g in present):
            group.irregular = False  # all back to normal: the next read tries the fused pass straight away
        norms = iter(self._group_norms(group.device, group.dtype, present))
        zero = self._zero(group.device, torch.float32 if group.dtype in _LOW_PRECISION else group.dtype.to_real())
        return torch.stack([zero if g is None else next(norms) for g in grads])

    def read_parameters(self) -> tuple[torch.Tensor, np.ndarray | None]:
        """Return the gradient norms before they are combined per layer, and the layer of each.

        The cheapest read: the fused pass alone, no further op, no host sync. Gives ``(norms, layer_of)``:
        with all parameters on one device and dtype, ``norms`` holds one norm per parameter (float32 or
        float64, 0 where the gradient is missing) and ``layer_of`` (int64 NumPy array, same length) each
        one's layer index, or None when every layer has one parameter; otherwise ``read()`` and None.
        The layer norms are sqrt(bincount(layer_of, norms**2)), squared in float64 (see ``combine``).
        """
        if not self._single:
            return self.read(), None
        stacked = self._stacked(self._groups[0])
        if stacked is None:
            return torch.zeros(self.layer_count, dtype=torch.float64, device=self._device), None
        return stacked, self._layer_of

    def read(self) -> torch.Tensor:
        """Return the layers' gradient norms now: float64, shape ``(layers,)``, no host sync."""
        if self._per_layer is not None:
            stacked = self._stacked(self._groups[0])
            if stacked is None:
                return torch.zeros(self.layer_count, dtype=torch.float64, device=self._device)
            if self._per_layer == 1:
                return stacked.to(torch.float64)
            # squared in float64: a float32 norm of 1e30 would overflow when squared in float32
            return torch.linalg.vector_norm(stacked.view(self.layer_count, self._per_layer), dim=1,
                                            dtype=torch.float64)
        return self.read_squares().sqrt_()

    def read_squares(self) -> torch.Tensor:
        """Return the layers' squared gradient norms (local shards, times ``share``): float64, no host sync."""
        squares = torch.zeros(self.layer_count, dtype=torch.float64, device=self._device)
        for group in self._groups:
            stacked = self._stacked(group)
            if stacked is None:
                continue
            sq = stacked.to(torch.float64).square()
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
    values = np.asarray(norms, dtype=np.float64)
    if layer_of is None:
        return values[:layer_count].copy()
    with np.errstate(over="ignore"):  # a norm above 1.3e154 squares to inf: the layer's norm is inf
        squares = np.square(values)
    return np.sqrt(np.bincount(layer_of, weights=squares, minlength=layer_count))
