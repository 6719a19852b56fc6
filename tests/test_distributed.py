"""Tests for bridge.distributed: who sounds, and norms of sharded gradients summed across ranks.

The multi-process tests start two real ranks on the CPU with the gloo backend (``torch.multiprocessing``),
once for the whole file: each rank trains the same small network under DDP, FSDP2 (``fully_shard``) and
FSDP1 (``FullyShardedDataParallel``) and writes what it saw to a folder that the tests then read. The
expected norms come from a plain single-process run of the same training, computed here.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import logging
import math
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import bridge
from bridge.capture import Capture, Layer, find_layers
from bridge.distributed import Participation, ShardSlice, clean_name, participation, replicas_of, world
from bridge.norms import NormReader
from bridge.runlog import read_run

WORLD = 2
STEPS = 3
MICRO = 2  #: micro-batches per optimizer step in the gradient-accumulation run
BATCH = 3  #: samples per micro-batch per rank
LAYER_NAMES = ("embed", "block.0", "block.2", "head")
SCENARIOS = ("ddp", "ddp_all", "fsdp2", "fsdp1", "fsdp1_orig", "fsdp2_amp", "fsdp2_broken")
BAD_STEP = 1  #: rank 1's scaled gradients overflow (fsdp2_amp), or its norm pass fails (fsdp2_broken), here
JOIN_TIMEOUT_S = 120  #: the whole two-rank run
COLLECTIVE_TIMEOUT_S = 30  #: a collective that waits longer fails the rank instead of hanging


class Net(nn.Module):
    """Odd sizes, so that shards are uneven and the flat parameters need padding."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(5, 7)
        self.block = nn.Sequential(nn.Linear(7, 9), nn.Tanh(), nn.Linear(9, 3))
        self.head = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.block(torch.tanh(self.embed(x)))))


def data() -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets, shape (steps, ranks, micro-batches, batch, features)."""
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(STEPS, WORLD, MICRO, BATCH, 5, generator=generator)
    y = torch.randn(STEPS, WORLD, MICRO, BATCH, 2, generator=generator)
    return x, y


@functools.cache
def reference_norms(micro: int) -> list[list[float]]:
    """Per-layer norms of one process training on every rank's data: the gradient DDP and FSDP average."""
    model, (x, y) = Net(), data()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    layers = (model.embed, model.block[0], model.block[2], model.head)
    norms = []
    for step in range(STEPS):
        optimizer.zero_grad()
        loss = sum(nn.functional.mse_loss(model(x[step, r, m]), y[step, r, m])
                   for r in range(WORLD) for m in range(micro)) / WORLD
        loss.backward()
        norms.append([math.sqrt(sum(p.grad.double().square().sum().item() for p in layer.parameters()))
                      for layer in layers])
        optimizer.step()
    return norms


# --- what each rank runs --------------------------------------------------------------------------


def _wrap(kind: str, model: Net) -> nn.Module:
    cpu = torch.device("cpu")
    if kind.startswith("ddp"):
        return nn.parallel.DistributedDataParallel(model)
    if kind.startswith("fsdp2"):
        from torch.distributed.fsdp import fully_shard

        fully_shard(model.block)
        return fully_shard(model)
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    orig = kind == "fsdp1_orig"
    model.block = FSDP(model.block, device_id=cpu, use_orig_params=orig)  # nested: order must survive
    return FSDP(model, device_id=cpu, use_orig_params=orig)


_as_is = contextlib.nullcontext()


@contextlib.contextmanager
def _norm_pass_fails() -> Iterator[None]:
    def broken(self: NormReader) -> torch.Tensor:
        raise RuntimeError("norm pass broken on purpose")

    real = NormReader.read_squares
    NormReader.read_squares = broken  # type: ignore[method-assign]
    try:
        yield
    finally:
        NormReader.read_squares = real  # type: ignore[method-assign]


def _run(kind: str, out: Path) -> dict[str, object]:
    rank = dist.get_rank()
    model = _wrap(kind, Net())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    hooks_before = len(optimizer._optimizer_step_pre_hooks)
    ranks = {"ddp_all": "all", "fsdp1_orig": 1}.get(kind, 0)
    micro = MICRO if kind == "ddp" else 1
    x, y = data()
    part = participation(ranks, model, find_layers(model))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, enabled=kind == "fsdp2_amp")
    precision = torch.float16 if kind == "fsdp2_amp" else torch.float32
    logged: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: logged.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("bridge").addHandler(handler)
    w = bridge.watch(model, optimizer, mapping="pentatonic", ranks=ranks, record=out / "run.gbrun",
                     wav=out / "run.wav" if kind == "ddp" else None,
                     midi_file=out / "run.mid" if kind == "ddp" else None, announce=None)
    hooks = len(optimizer._optimizer_step_pre_hooks) - hooks_before
    with w:
        for step in range(STEPS):
            optimizer.zero_grad()
            for m in range(micro):  # accumulate: only the last backward all-reduces
                last = m == micro - 1
                with contextlib.nullcontext() if last else model.no_sync():
                    with torch.autocast("cpu", dtype=precision, enabled=scaler.is_enabled()):
                        out = model(x[step, rank, m])
                    loss = nn.functional.mse_loss(out.float(), y[step, rank, m])
                    scaler.scale(loss).backward()
            if scaler.is_enabled() and step == BAD_STEP and rank == 1:
                model.head.weight.grad.to_local()[0, 0] = math.inf  # only this rank's shard overflows
            w.record_loss(loss)
            with _norm_pass_fails() if kind == "fsdp2_broken" and step == BAD_STEP and rank == 1 else _as_is:
                scaler.step(optimizer)  # without a scaler: optimizer.step()
            scaler.update()
    logging.getLogger("bridge").removeHandler(handler)
    return {"names": list(w.layer_names), "frames_in": w.stats.frames_in, "hooks": hooks,
            "sharded": part.sharded, "sounds": part.sounds, "logged": logged}


def _worker(rank: int, root: str) -> None:
    warnings.filterwarnings("ignore")  # FSDP1's deprecation notice, once per rank
    torch.set_num_threads(1)  # two ranks share the machine's cores, as torchrun arranges it
    dist.init_process_group("gloo", init_method=f"file://{root}/store", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    try:
        for kind in SCENARIOS:
            out = Path(root, kind)
            out.mkdir(exist_ok=True)
            result = _run(kind, out)
            Path(root, f"{kind}.rank{rank}.json").write_text(json.dumps(result))
            dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks_ran(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("this torch build has no torch.distributed with the gloo backend")
    root = tmp_path_factory.mktemp("ranks")
    context = mp.start_processes(_worker, args=(str(root),), nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    try:
        while not context.join(timeout=1.0):  # raises if a rank failed, with its traceback
            if time.monotonic() > deadline:
                pytest.fail(f"the {WORLD} ranks did not finish within {JOIN_TIMEOUT_S} s: a collective hangs")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    yield root


def result(root: Path, kind: str, rank: int) -> dict[str, object]:
    return json.loads(Path(root, f"{kind}.rank{rank}.json").read_text())


# --- two ranks ----------------------------------------------------------------------------------------


def test_ddp_rank_zero_sounds_and_the_other_does_nothing(ranks_ran: Path) -> None:
    out = ranks_ran / "ddp"
    assert sorted(p.name for p in out.iterdir()) == ["run.gbrun", "run.mid", "run.wav"]  # rank 0's only
    zero, one = result(ranks_ran, "ddp", 0), result(ranks_ran, "ddp", 1)
    assert (zero["sounds"], zero["sharded"], zero["hooks"], zero["frames_in"]) == (True, False, 1, STEPS)
    assert (one["sounds"], one["sharded"], one["hooks"], one["frames_in"]) == (False, False, 0, 0)
    assert zero["names"] == one["names"] == list(LAYER_NAMES)  # the DDP wrapper's "module." is looked through


def test_ddp_norms_are_the_single_process_norms_one_frame_per_accumulated_step(ranks_ran: Path) -> None:
    info, frames = read_run(ranks_ran / "ddp" / "run.gbrun")
    assert info.layer_names == LAYER_NAMES
    assert [f.step for f in frames] == list(range(STEPS))  # MICRO backwards per step, one frame per step
    np.testing.assert_allclose([f.norms for f in frames], reference_norms(MICRO), rtol=1e-5)


def test_ddp_all_ranks_write_their_own_files(ranks_ran: Path) -> None:
    out = ranks_ran / "ddp_all"
    assert sorted(p.name for p in out.iterdir()) == ["run.rank0.gbrun", "run.rank1.gbrun"]
    expected = reference_norms(1)
    for rank in range(WORLD):
        assert result(ranks_ran, "ddp_all", rank)["frames_in"] == STEPS
        _, frames = read_run(out / f"run.rank{rank}.gbrun")
        np.testing.assert_allclose([f.norms for f in frames], expected, rtol=1e-5)


def test_a_step_the_scaler_skips_on_every_rank_makes_no_frame_and_no_hang(ranks_ran: Path) -> None:
    _, frames = read_run(ranks_ran / "fsdp2_amp" / "run.gbrun")
    assert [f.step for f in frames] == [0, 1]  # STEPS - 1 steps taken; the overflowed one was skipped by both
    assert np.isfinite([f.norms for f in frames]).all()
    assert [result(ranks_ran, "fsdp2_amp", rank)["frames_in"] for rank in range(WORLD)] == [STEPS - 1, 0]


def test_a_rank_whose_norm_pass_fails_still_joins_so_nobody_hangs(ranks_ran: Path) -> None:
    _, frames = read_run(ranks_ran / "fsdp2_broken" / "run.gbrun")
    assert [f.step for f in frames] == list(range(STEPS))
    norms = np.array([f.norms for f in frames])
    assert np.isnan(norms[BAD_STEP]).all()  # rank 1 sent NaN for that step: rank 0 sounds the alarm
    assert np.isfinite(np.delete(norms, BAD_STEP, axis=0)).all()  # and the run goes on
    assert result(ranks_ran, "fsdp2_broken", 0)["logged"] == []
    (message,) = result(ranks_ran, "fsdp2_broken", 1)["logged"]
    assert message.startswith(f"gradient capture failed at step {BAD_STEP} (")


@pytest.mark.parametrize("kind, sounding", [("fsdp2", 0), ("fsdp1", 0), ("fsdp1_orig", 1)])
def test_sharded_norms_are_the_unsharded_norms(ranks_ran: Path, kind: str, sounding: int) -> None:
    out = ranks_ran / kind
    assert [p.name for p in out.iterdir()] == ["run.gbrun"]
    info, frames = read_run(out / "run.gbrun")
    assert info.layer_names == LAYER_NAMES  # FSDP1's _fsdp_wrapped_module parts are dropped
    np.testing.assert_allclose([f.norms for f in frames], reference_norms(1), rtol=1e-5)
    for rank in range(WORLD):
        seen = result(ranks_ran, kind, rank)
        assert seen["sharded"] is True and seen["hooks"] == 1  # every rank joins the reduction
        assert seen["frames_in"] == (STEPS if rank == sounding else 0)
        assert seen["names"] == list(LAYER_NAMES)


# --- one process ----------------------------------------------------------------------------------------


def test_outside_a_distributed_run_this_process_sounds_alone() -> None:
    model = Net()
    assert world() == (0, 1)
    assert participation(0, model, find_layers(model)) == Participation(0, 1, True, False, False)
    assert participation("all", model, find_layers(model)) == Participation(0, 1, True, False, False)
    assert Participation().path_for("run.wav") == "run.wav"
    assert Participation(rank=3, world_size=4, per_rank_files=True).path_for("out/run.wav") == Path(
        "out/run.rank3.wav")


def test_ranks_must_name_a_rank_of_the_run() -> None:
    model = Net()
    layers = find_layers(model)
    with pytest.raises(ValueError, match=r"ranks=1 is not a rank of this run \(0 to 0, world size 1\)"):
        participation(1, model, layers)
    with pytest.raises(ValueError, match=r"ranks must be a rank number or 'all'; got 'every'"):
        participation("every", model, layers)
    with pytest.raises(TypeError, match="ranks must be an int or 'all'; got bool"):
        participation(True, model, layers)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ranks=-1"):
        bridge.watch(model, torch.optim.SGD(model.parameters(), lr=0.1), ranks=-1, announce=None)


def test_wrapper_parts_are_dropped_from_names() -> None:
    assert clean_name("_fsdp_wrapped_module.block._fsdp_wrapped_module.0") == "block.0"
    assert clean_name("_fsdp_wrapped_module") == ""
    assert clean_name("layers.0._checkpoint_wrapped_module.attn") == "layers.0.attn"
    assert clean_name("my_wrapped_module.fc") == "my_wrapped_module.fc"  # only the wrappers' own names


def test_shard_slice_reads_its_part_of_the_flat_gradient() -> None:
    flat = nn.Parameter(torch.zeros(6))
    piece, absent = ShardSlice(flat, 2, 3, replicas=1), ShardSlice(flat, 0, 0, replicas=1)
    assert piece.grad is None  # no gradient yet
    flat.grad = torch.tensor([9.0, 9.0, 2.0, 3.0, 6.0, 9.0])
    assert piece.grad.tolist() == [2.0, 3.0, 6.0] and absent.grad is None
    assert replicas_of(piece) == 1 and replicas_of(flat) == 1  # a plain parameter: on every rank (1 here)
    layer = Layer("fc", ("fc.weight",), (piece,))
    assert NormReader([layer]).read().tolist() == [7.0]  # sqrt(4 + 9 + 36)


def test_shares_scale_each_parameters_square_before_the_sum() -> None:
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(1))
    a.grad, b.grad = torch.tensor([3.0, 4.0]), torch.tensor([2.0])
    reader = NormReader([Layer("ab", ("a", "b"), (a, b))], share=lambda p: 0.5 if p is b else 1.0)
    assert reader.read_squares().tolist() == [25.0 + 0.5 * 4.0]
    assert reader.read().tolist() == [math.sqrt(27.0)]


def test_a_silent_replicated_rank_adds_no_hook_and_ignores_steps() -> None:
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    capture = Capture(model, optimizer, None, lambda frame: None,
                      participation=Participation(rank=1, world_size=2, sounds=False))
    assert optimizer._optimizer_step_pre_hooks == {}  # a silent rank of a replicated run adds no hook
    capture.step(loss=1.0)  # explicit steps are ignored too
    assert capture.steps_captured == 0


def test_names_and_norms_of_a_plain_model_are_unchanged_by_the_distributed_paths() -> None:
    model = Net()
    nn.functional.mse_loss(model(torch.ones(1, 5)), torch.zeros(1, 2)).backward()
    assert [layer.name for layer in find_layers(model)] == list(LAYER_NAMES)
    expected = [math.sqrt(sum(p.grad.double().square().sum().item() for p in m.parameters()))
                for m in (model.embed, model.block[0], model.block[2], model.head)]
    np.testing.assert_allclose(NormReader(find_layers(model)).read().numpy(), expected, rtol=1e-6)


class FakeMesh:
    def __init__(self, *sizes: int) -> None:
        self.sizes = sizes

    def size(self, dim: int | None = None) -> int:
        return math.prod(self.sizes) if dim is None else self.sizes[dim]


class FakeDTensor:
    """What replicas_of reads from a DTensor parameter: its mesh and placements."""

    def __init__(self, mesh: FakeMesh, *placements: object) -> None:
        self.device_mesh, self.placements, self._local_tensor = mesh, placements, torch.zeros(1)


def test_replicas_count_the_mesh_dimensions_that_replicate(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch.distributed.tensor.placement_types import Partial, Replicate, Shard

    monkeypatch.setattr("bridge.distributed.world", lambda: (0, 12))
    assert replicas_of(FakeDTensor(FakeMesh(12), Shard(0))) == 1  # FSDP2: every rank its own shard
    assert replicas_of(FakeDTensor(FakeMesh(3, 4), Replicate(), Shard(0))) == 3  # HSDP: 3 replica groups
    assert replicas_of(FakeDTensor(FakeMesh(3, 4), Replicate(), Replicate())) == 12
    assert replicas_of(nn.Parameter(torch.zeros(1))) == 12  # plain: the same gradient on every rank
    with pytest.raises(ValueError, match="mesh of 4 ranks, but the run has 12"):
        replicas_of(FakeDTensor(FakeMesh(4), Shard(0)))
    with pytest.raises(ValueError, match=r"Partial placement .*redistribute"):
        replicas_of(FakeDTensor(FakeMesh(12), Partial()))
