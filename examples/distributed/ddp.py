"""Hear a DDP run on the CPU: the 2019 post's CNN on scikit-learn's digits, two ranks, gloo.

    torchrun --nproc_per_node 2 examples/distributed/ddp.py --steps 100 --out-dir ddp_run

Every rank trains on its own half of each batch; DDP averages the gradients in ``backward()``, so every
rank holds the same gradients at ``optimizer.step()``. Rank 0 alone measures them and writes
``ddp.gbrun``, ``ddp.wav`` and ``ddp.mid``; the other ranks register no hook and write nothing.
``--ranks all`` makes every rank write its own ``ddp.rank<N>.*`` files instead.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

import bridge
from bridge.demo import PostNet, load_digits_28


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps (default 100)")
    parser.add_argument("--batch-size", type=int, default=64, help="samples per step over all ranks")
    parser.add_argument("--lr", type=float, default=0.01, help="SGD learning rate (default 0.01)")
    parser.add_argument("--ranks", default="0", help="the rank that sounds, or 'all' (default 0)")
    parser.add_argument("--out-dir", type=Path, default=Path("."), help="where rank 0 writes its files")
    args = parser.parse_args()

    dist.init_process_group("gloo")  # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT
    rank, world_size = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # the same data order on every rank; DDP also broadcasts rank 0's weights
    model = torch.nn.parallel.DistributedDataParallel(PostNet())
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.5)
    images, labels = load_digits_28()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    ranks = "all" if args.ranks == "all" else int(args.ranks)
    out = args.out_dir / "ddp"
    with bridge.watch(model, optimizer, mapping="pentatonic", ranks=ranks, record=out.with_suffix(".gbrun"),
                      wav=out.with_suffix(".wav"), midi_file=out.with_suffix(".mid")) as w:
        for _ in range(args.steps):
            batch = torch.randint(0, len(labels), (args.batch_size,))
            mine = batch.chunk(world_size)[rank]  # this rank's share of the batch
            optimizer.zero_grad()
            loss = F.nll_loss(model(images[mine]), labels[mine])
            loss.backward()  # DDP all-reduces (averages) the gradients here
            w.record_loss(loss)  # this rank's loss: rank 0's is the one recorded
            optimizer.step()  # rank 0's hook reads the norms here
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
