"""The per-rank program of the distributed test (imported by spawned processes by module name)."""

from __future__ import annotations

import os

import numpy as np
import torch

from slimkit.algorithms.pruning import L1FilterPruner
from slimkit.frameworks.torch import distributed
from slimkit.models import DigitsCNN

CONFIG = [{"sparsity": 0.5, "op_types": ["Conv2d"]}, {"exclude": True, "op_names": ["conv1"]}]
STEPS = 3


def build():
    """The same initial weights on every process; L1-pruned (compressed before any DDP wrapping)."""
    torch.manual_seed(0)
    model = DigitsCNN(width=8)
    pruner = L1FilterPruner(model, CONFIG)
    return pruner.compress(), pruner


def train(model, pruner, batches):
    """SGD over ``batches``; BatchNorm in eval mode so a shard's gradient is exactly its share of the batch's."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model.eval()
    for x, y in batches:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        pruner.step()
    pruner.update_masks()  # recompute from the trained weights (as iterative pruners do)


def single_process(x, y):
    model, pruner = build()
    train(model, pruner, [(x, y)] * STEPS)
    return pruner.get_masks(), {k: v.clone() for k, v in model.state_dict().items()}


def worker(rank, world_size, port, x, y, out_dir):
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                         world_size=world_size)
    try:
        model, pruner = build()
        distributed.sync_masks(pruner)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        shard = slice(rank * len(x) // world_size, (rank + 1) * len(x) // world_size)
        train(ddp, pruner, [(x[shard], y[shard])] * STEPS)
        distributed.sync_masks(pruner)
        summed = distributed.all_reduce_sum(torch.tensor([rank + 1.0]))
        summed_np = distributed.all_reduce_sum(np.array([rank + 1], dtype=np.int64))
        wrote = distributed.export_model(pruner, model_path=os.path.join(out_dir, "model.pth"),
                                         mask_path=os.path.join(out_dir, "mask.pth"))
        from slimkit.utils import distributed as neutral  # what the core (compressor.py) would call

        shim = (neutral.is_main_process(), neutral.all_reduce_sum(np.array([2.0]) * (rank + 1)).tolist())
        torch.save({"masks": pruner.get_masks(), "state": model.state_dict(), "main": distributed.is_main_process(),
                    "shim": shim,
                    "wrote": wrote, "sum": summed.item(), "sum_np": summed_np.tolist()},
                   os.path.join(out_dir, f"rank{rank}.pth"))
        torch.distributed.barrier()  # no rank tears gloo down while its peer still uses it
    finally:
        torch.distributed.destroy_process_group()


def apoz_masks(x, statistics_batch_num=2):
    """An APoZ-pruned model recording ``statistics_batch_num`` passes; with ``x``, those passes are run."""
    from slimkit.algorithms.pruning import ActivationAPoZRankFilterPruner

    torch.manual_seed(0)
    model = DigitsCNN(width=8).eval()
    pruner = ActivationAPoZRankFilterPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}],
                                            statistics_batch_num=statistics_batch_num)
    model = pruner.compress()
    if x is not None:
        with torch.no_grad():
            for _ in range(statistics_batch_num):
                model(x)
        pruner.step()
    return model, pruner


def apoz_worker(rank, world_size, port, x, out_dir):
    """Each rank records activations on its shard through DDP; masks must come from all shards."""
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                         world_size=world_size)
    try:
        model, pruner = apoz_masks(None)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        shard = slice(rank * len(x) // world_size, (rank + 1) * len(x) // world_size)
        with torch.no_grad():
            for _ in range(pruner.statistics_batch_num):
                ddp(x[shard])
        pruner.step()
        torch.save(pruner.get_masks(), os.path.join(out_dir, f"apoz{rank}.pth"))
        torch.distributed.barrier()  # no rank tears gloo down while its peer still uses it
    finally:
        torch.distributed.destroy_process_group()
