"""Pruning a DDP-wrapped DigitsCNN on 2 CPU processes (gloo): identical masks, equal to one process."""

from __future__ import annotations

import torch
import torch.multiprocessing as mp

import slimkit
from slimkit.frameworks.torch import distributed
from tests.frameworks.torch import ddp_worker


def test_ddp_two_ranks_match_single_process(tmp_path, free_port):
    torch.manual_seed(1)
    x, y = torch.rand(32, 1, 8, 8), torch.randint(0, 10, (32,))
    mp.spawn(ddp_worker.worker, args=(2, free_port, x, y, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pth", weights_only=True) for r in range(2)]
    reference_masks, reference_state = ddp_worker.single_process(x, y)
    assert [r["main"] for r in ranks] == [True, False] and [r["wrote"] for r in ranks] == [True, False]
    assert [r["sum"] for r in ranks] == [3.0, 3.0] and [r["sum_np"] for r in ranks] == [[3], [3]]
    assert [r["shim"] for r in ranks] == [(True, [6.0]), (False, [6.0])]
    assert sorted(ranks[0]["masks"]) == ["conv2", "conv3"]
    for name in reference_masks:
        for kind in ("weight", "bias"):
            masks = [r["masks"][name][kind] for r in ranks] + [reference_masks[name][kind]]
            if masks[-1] is None:
                assert all(m is None for m in masks)
                continue
            assert torch.equal(masks[0], masks[1]) and torch.equal(masks[0], masks[2]), (name, kind)
    # DDP averaged the two half-batch gradients: the weights equal the one-process run on the whole batch
    for key, value in reference_state.items():
        if value.is_floating_point():
            torch.testing.assert_close(ranks[0]["state"][key], value, rtol=1e-4, atol=1e-5)
            assert torch.equal(ranks[0]["state"][key], ranks[1]["state"][key]), key
    exported = slimkit.load_masks(tmp_path / "mask.pth")
    assert torch.equal(exported["conv2"]["weight"], reference_masks["conv2"]["weight"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.pth", "model.pth", "rank0.pth", "rank1.pth"]



def test_ddp_activation_statistics_come_from_every_shard(tmp_path, free_port):
    """Activation statistics are all-reduced over the ranks before the masks are computed."""
    torch.manual_seed(2)
    x = torch.rand(16, 1, 8, 8)
    x[8:] *= torch.linspace(0, 1, 8).view(1, 1, 1, 8)  # the two halves give different statistics
    mp.spawn(ddp_worker.apoz_worker, args=(2, free_port, x, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"apoz{r}.pth", weights_only=True) for r in range(2)]
    _, reference = ddp_worker.apoz_masks(x)
    for name, entry in reference.get_masks().items():
        assert torch.equal(ranks[0][name]["weight"], ranks[1][name]["weight"]), name
        assert torch.equal(ranks[0][name]["weight"], entry["weight"]), name


def test_helpers_are_no_ops_without_a_process_group(tmp_path):
    model, pruner = ddp_worker.build()
    masks = pruner.get_masks()
    assert distributed.broadcast_masks(masks) is masks and distributed.rank() == 0
    distributed.sync_masks(pruner)
    assert distributed.export_model(pruner, model_path=tmp_path / "m.pth") is True
    assert (tmp_path / "m.pth").exists()
    assert distributed.all_reduce_sum(2.5) == 2.5
