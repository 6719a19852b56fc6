"""Hear an FSDP run on the CPU: the 2019 post's CNN on scikit-learn's digits, two ranks, gloo.

    torchrun --nproc_per_node 2 examples/distributed/fsdp.py --steps 100 --out-dir fsdp_run
    torchrun --nproc_per_node 2 examples/distributed/fsdp.py --fsdp1    # the FullyShardedDataParallel wrapper

Each rank holds a shard of every parameter and of its gradient (FSDP2 ``fully_shard``: DTensors with
``Shard(0)``; ``--fsdp1``: flat parameters). At every ``optimizer.step()`` every rank measures its
shards and joins one ``all_reduce`` of the per-layer squared norms, so the norms are those of the whole
gradient; rank 0 alone writes ``fsdp.gbrun``, ``fsdp.wav`` and ``fsdp.mid``, with the same layer names
as an unsharded run (conv1, conv2, fc1, fc2).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

import bridge
from bridge.demo import PostNet, load_digits_28


def shard(model: PostNet, fsdp1: bool) -> torch.nn.Module:
    """Shard each layer, then the whole model (on the CPU: FSDP1 needs ``device_id`` set to it)."""
    if fsdp1:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        for name in ("conv1", "conv2", "fc1", "fc2"):
            setattr(model, name, FSDP(getattr(model, name), device_id=torch.device("cpu")))
        return FSDP(model, device_id=torch.device("cpu"))
    from torch.distributed.fsdp import fully_shard

    for layer in (model.conv1, model.conv2, model.fc1, model.fc2):
        fully_shard(layer)
    return fully_shard(model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps (default 100)")
    parser.add_argument("--batch-size", type=int, default=64, help="samples per step over all ranks")
    parser.add_argument("--lr", type=float, default=0.01, help="SGD learning rate (default 0.01)")
    parser.add_argument("--fsdp1", action="store_true", help="the FullyShardedDataParallel wrapper, not FSDP2")
    parser.add_argument("--out-dir", type=Path, default=Path("."), help="where rank 0 writes its files")
    args = parser.parse_args()

    dist.init_process_group("gloo")  # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT
    rank, world_size = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # the same initial weights and data order on every rank
    model = shard(PostNet(), args.fsdp1)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.5)  # after sharding
    images, labels = load_digits_28()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / "fsdp"
    # watch after sharding: FSDP replaces the parameters, and the hook must see the new ones
    with bridge.watch(model, optimizer, mapping="pentatonic", record=out.with_suffix(".gbrun"),
                      wav=out.with_suffix(".wav"), midi_file=out.with_suffix(".mid")) as w:
        for _ in range(args.steps):
            batch = torch.randint(0, len(labels), (args.batch_size,))
            mine = batch.chunk(world_size)[rank]
            optimizer.zero_grad()
            loss = F.nll_loss(model(images[mine]), labels[mine])
            loss.backward()  # FSDP reduce-scatters (averages) the gradients: each rank keeps its shard
            w.record_loss(loss)
            optimizer.step()  # every rank's hook: local norms, one all_reduce; rank 0 sounds
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
