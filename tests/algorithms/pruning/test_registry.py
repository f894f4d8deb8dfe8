"""Every registered pruner compresses a small model and reaches its sparsity; custom pruners."""

import numpy as np
import pytest
import torch
from torch import nn

from slimkit.algorithms.pruning import PRUNERS, FilterPruner, get_pruner
from slimkit.compression import Pruner
from slimkit.compression.sparsity import prune_count
from tests.algorithms.pruning.pruning_helpers import drive_to_sparsity, zero_fraction

SPARSITY = 0.5


def _passes(model, pruner, n=2):
    for _ in range(n):
        model(torch.randn(4, 3, 6, 6))
        pruner.step()


def _run(name, model):
    """Compress ``model`` with the pruner registered as ``name`` and drive it to SPARSITY."""
    cls = get_pruner(name)
    op_types = ["BatchNorm2d"] if cls.default_op_role == "batchnorm" else ["Conv2d", "Linear"]
    return drive_to_sparsity(cls, model, op_types, SPARSITY, lambda pruner: _passes(model, pruner))


@pytest.mark.parametrize("name", list(PRUNERS))
def test_every_registered_pruner_reaches_its_sparsity(name, small_net):
    pruner = _run(name, small_net)
    filter_like = issubclass(get_pruner(name), FilterPruner)
    masks = pruner.get_masks()
    assert set(masks) == {layer.name for layer in pruner.layers}
    for layer in pruner.layers:
        weight_mask = masks[layer.name]["weight"]
        assert weight_mask.shape == layer.module.weight.shape
        assert set(torch.unique(weight_mask).tolist()) <= {0.0, 1.0}
        if filter_like and name != "slim":
            channels = weight_mask.shape[layer.out_axis]
            kept = weight_mask.movedim(layer.out_axis, 0).reshape(channels, -1).amax(dim=1)
            assert int((kept == 0).sum()) == prune_count(SPARSITY, channels)
        elif name != "slim":
            assert int((weight_mask == 0).sum()) == prune_count(SPARSITY, weight_mask.numel())
    if name == "slim":
        total = sum(m["weight"].numel() for m in masks.values())
        assert sum(int((m["weight"] == 0).sum()) for m in masks.values()) == prune_count(SPARSITY, total)
    out = small_net(torch.randn(2, 3, 6, 6))
    assert out.shape == (2, 4) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", list(PRUNERS))
def test_every_pruner_unwraps_exactly(name, small_net):
    originals = dict(small_net.named_modules())
    shapes = {k: v.shape for k, v in small_net.state_dict().items()}
    pruner = _run(name, small_net)
    restored = pruner.unwrap_model()
    assert restored is small_net
    assert dict(small_net.named_modules()).keys() == originals.keys()
    assert all(originals[k] is m for k, m in small_net.named_modules())
    assert {k: v.shape for k, v in small_net.state_dict().items()} == shapes


class EveryOtherPruner(Pruner):
    """A user's pruner: overrides only calc_mask."""

    def calc_mask(self, layer, config, **kwargs):
        mask = np.ones(tuple(layer.weight.shape), dtype=np.float32)
        mask.reshape(-1)[::2] = 0
        return mask


def test_custom_pruner_overriding_only_calc_mask(small_net):
    pruner = EveryOtherPruner(small_net, [{"sparsity": 0.5, "op_types": ["Conv2d"]}])
    model = pruner.compress()
    assert model is small_net
    for name in ("conv1", "conv2"):
        mask = pruner.get_masks()[name]["weight"]
        assert mask.reshape(-1)[::2].sum() == 0 and mask.reshape(-1)[1::2].min() == 1
        assert zero_fraction(mask) == 0.5
    pruner.update_epoch(3)
    pruner.step()
    x = torch.randn(1, 3, 6, 6)
    conv = small_net.conv1.module
    expected = nn.functional.conv2d(x, conv.weight * pruner.get_masks()["conv1"]["weight"], conv.bias, padding=1)
    assert torch.allclose(small_net.conv1(x), expected, atol=1e-6)
