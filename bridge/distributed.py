"""How a rank takes part in a watched run: who sounds, and the reduction of squared norms across ranks.

``torch.distributed`` does all the talking between processes; this module only decides what each rank
does with it. Outside a distributed run (``torch.distributed`` absent or not initialised) every answer is
the single-process one and nothing from ``torch.distributed`` is imported.

- **Replicated gradients** (DDP, or no wrapper at all): every rank holds the same averaged gradients,
  so one rank measures and sounds and the others do nothing.
- **Sharded gradients** (FSDP2 ``fully_shard``: DTensor parameters; FSDP1 ``FullyShardedDataParallel``:
  flat parameters, or original parameters with ``use_orig_params=True``): each rank measures its local
  shards, and one ``all_reduce`` (sum) of the per-layer squared norms per step gives every rank the
  unsharded norms. Every rank joins that collective, also those that do not sound.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

PathLike = str | os.PathLike[str]
RANKS_ALL = "all"
#: path parts that wrappers insert into module names; dropped so names match the unwrapped model's
WRAPPER_NAMES = frozenset({"_fsdp_wrapped_module", "_checkpoint_wrapped_module"})


def is_distributed() -> bool:
    """Whether this process is part of an initialised ``torch.distributed`` run."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process; ``(0, 1)`` when ``torch.distributed`` is not initialised."""
    if is_distributed():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module a ``DistributedDataParallel`` wrapper holds (nested wrappers too); others as given."""
    if not is_distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel

    while isinstance(model, DistributedDataParallel):
        model = model.module
    return model


def clean_name(qualified: str) -> str:
    """A module's qualified name without FSDP1 and checkpoint wrapper parts, e.g.
    ``"_fsdp_wrapped_module.0._fsdp_wrapped_module"`` → ``"0"``."""
    if "_wrapped_module" not in qualified:
        return qualified
    return ".".join(part for part in qualified.split(".") if part not in WRAPPER_NAMES)


def _is_dtensor(tensor: object) -> bool:
    return hasattr(tensor, "placements") and hasattr(tensor, "_local_tensor")


def is_flat_param(tensor: object) -> bool:
    """Whether ``tensor`` is an FSDP1 flat parameter (measured through its original parameters instead)."""
    return bool(getattr(tensor, "_is_flat_param", False))


class ShardSlice:
    """One original parameter's part of an FSDP1 flat parameter's local shard (``use_orig_params=False``).

    Stands in for the parameter when measuring: ``grad`` is the slice of the flat gradient holding this
    parameter's local elements (``None`` when this rank holds none or there is no gradient yet).

    Attributes:
        flat: the flat parameter.
        offset: index of the first local element in the flat parameter's shard.
        numel: number of this parameter's elements in the local shard (0: none here).
        replicas: ranks holding the same local shard (1 for a fully sharded parameter).
    """

    __slots__ = ("flat", "numel", "offset", "replicas")

    def __init__(self, flat: torch.Tensor, offset: int, numel: int, replicas: int) -> None:
        self.flat, self.offset, self.numel, self.replicas = flat, offset, numel, replicas

    @property
    def grad(self) -> torch.Tensor | None:
        """This parameter's local gradient elements, 1-D, or ``None``."""
        flat_grad = self.flat.grad
        if flat_grad is None or self.numel == 0:
            return None
        return flat_grad.narrow(0, self.offset, self.numel)

    @property
    def device(self) -> torch.device:
        return self.flat.device

    @property
    def dtype(self) -> torch.dtype:
        return self.flat.dtype

    @property
    def requires_grad(self) -> bool:
        return self.flat.requires_grad


@dataclass
class Fsdp1Layout:
    """What FSDP1 wrappers in a model hide: original parameters by owning module, and their replica counts.

    Attributes:
        members: ``{id(module): [(parameter name, ShardSlice)]}`` for flat parameters
            (``use_orig_params=False``), in the module's own parameter order.
        replicas: ``{id(original parameter): ranks holding the same local shard}`` (``use_orig_params=True``).
    """

    members: dict[int, list[tuple[str, ShardSlice]]]
    replicas: dict[int, int]


def fsdp1_layout(model: torch.nn.Module) -> Fsdp1Layout:
    """Read the FSDP1 handles in ``model`` (empty outside a distributed run or without FSDP1)."""
    layout = Fsdp1Layout({}, {})
    if not is_distributed():
        return layout
    world_size = world()[1]
    from torch.distributed.fsdp import FullyShardedDataParallel

    for module in model.modules():
        handle = getattr(module, "_handle", None) if isinstance(module, FullyShardedDataParallel) else None
        if handle is None:
            continue
        flat = handle.flat_param
        shards = handle.world_size if handle.uses_sharded_strategy else 1
        replicas = max(1, world_size // shards)
        if handle._use_orig_params:
            for p in list(flat._params or []) + list(flat._shared_params or []):
                layout.replicas[id(p)] = replicas
            continue
        by_owner: dict[tuple[int, str], ShardSlice] = {}
        for info, shard in zip(flat._param_infos, flat._shard_param_infos):
            numel = (shard.numel_in_shard or 0) if shard.in_shard else 0
            piece = ShardSlice(flat, shard.offset_in_shard or 0, numel, replicas)
            by_owner[(id(info.module), info.param_name)] = piece
            layout.members.setdefault(id(info.module), []).append((info.param_name, piece))
        for shared in flat._shared_param_infos:  # a tied parameter: the same slice, measured by each owner
            piece = by_owner[(id(shared.prim_module), shared.prim_param_name)]
            layout.members.setdefault(id(shared.module), []).append((shared.param_name, piece))
    return layout


def replicas_of(parameter: Any, layout: Fsdp1Layout | None = None) -> int:
    """How many ranks hold the same local gradient of ``parameter``; its local squared norm is divided by
    this before the sum over ranks. Below the world size means sharded.

    A DTensor counts the ranks along its mesh's ``Replicate`` dimensions (1 for FSDP2's ``Shard(0)``);
    a ``ShardSlice`` or an FSDP1 original parameter, the ranks outside its sharding group; any other
    parameter, every rank (its gradient is taken to be the same everywhere, as DDP makes it). Raises
    ``ValueError`` for a ``Partial`` placement or a mesh that does not span all ranks.
    """
    if isinstance(parameter, ShardSlice):
        return parameter.replicas
    if _is_dtensor(parameter):
        mesh, placements = parameter.device_mesh, parameter.placements
        world_size = world()[1]
        if mesh.size() != world_size:
            raise ValueError(
                f"a sharded parameter lives on a device mesh of {mesh.size()} ranks, but the run has "
                f"{world_size}; squared norms are summed over all ranks, so shard over a mesh of all ranks"
            )
        if any(p.is_partial() for p in placements):
            raise ValueError(
                f"a parameter has a Partial placement ({placements}); its norm cannot be read from the "
                "local shards: reduce it (redistribute to Shard or Replicate) before the optimizer step"
            )
        return math.prod(mesh.size(dim) for dim, p in enumerate(placements) if p.is_replicate())
    if layout is not None and id(parameter) in layout.replicas:
        return layout.replicas[id(parameter)]
    return world()[1]


@dataclass(frozen=True)
class Participation:
    """How this process takes part in a watched run.

    Attributes:
        rank: this process's rank (0 outside a distributed run).
        world_size: the number of ranks (1 outside a distributed run).
        sounds: this rank hands frames on (creates outputs, records, dispatches).
        sharded: gradients are sharded: this rank measures and joins the per-step ``all_reduce``
            whether it sounds or not.
        per_rank_files: every rank sounds (``ranks="all"`` with more than one rank): file names get a
            ``.rank<N>`` suffix before their extension.
    """

    rank: int = 0
    world_size: int = 1
    sounds: bool = True
    sharded: bool = False
    per_rank_files: bool = False

    @property
    def measures(self) -> bool:
        """Whether this rank reads gradient norms at all (a silent rank of a replicated run does not)."""
        return self.sounds or self.sharded

    def path_for(self, path: PathLike | None) -> PathLike | None:
        """The path this rank writes for ``path``: ``run.wav`` → ``run.rank1.wav`` with per-rank files,
        else ``path`` as given."""
        if path is None or not self.per_rank_files:
            return path
        path = Path(path)
        return path.with_name(f"{path.stem}.rank{self.rank}{path.suffix}")


def participation(ranks: int | str, model: torch.nn.Module, layers: Iterable[Any]) -> Participation:
    """Decide this rank's part from ``ranks`` (the rank that sounds, or ``"all"``) and how the gradients
    of ``layers`` (``Layer`` objects found in ``model``) are laid out over ranks.

    Raises ``TypeError`` / ``ValueError`` for a ``ranks`` that is neither ``"all"`` nor a rank number of
    this run (0 ≤ ranks < world size).
    """
    rank, world_size = world()
    if isinstance(ranks, str):
        if ranks != RANKS_ALL:
            raise ValueError(f"ranks must be a rank number or {RANKS_ALL!r}; got {ranks!r}")
        sounds, per_rank_files = True, world_size > 1
    elif isinstance(ranks, int) and not isinstance(ranks, bool):
        if not 0 <= ranks < world_size:
            raise ValueError(
                f"ranks={ranks} is not a rank of this run (0 to {world_size - 1}, world size {world_size}); "
                f"pick one of those, or {RANKS_ALL!r} to sound on every rank"
            )
        sounds, per_rank_files = rank == ranks, False
    else:
        raise TypeError(f"ranks must be an int or {RANKS_ALL!r}; got {type(ranks).__name__}")
    sharded = False
    if world_size > 1:
        layout = fsdp1_layout(unwrap(model))
        sharded = any(replicas_of(p, layout) < world_size for layer in layers for p in layer.parameters)
    return Participation(rank, world_size, sounds, sharded, per_rank_files)


def shares(model: torch.nn.Module) -> Callable[[Any], float]:
    """Parameter → the factor on its local squared norm (1 / replicas) so that a sum over ranks is exact."""
    layout = fsdp1_layout(unwrap(model))
    return lambda parameter: 1.0 / replicas_of(parameter, layout)


def reduce_squares(squares: torch.Tensor) -> torch.Tensor:
    """Sum ``squares`` (per-layer squared norms, already divided by replicas) over all ranks, in place.

    A collective: every rank must call it at the same step, with a tensor of the same length.
    """
    torch.distributed.all_reduce(squares, op=torch.distributed.ReduceOp.SUM)
    return squares
