import numpy as np
import torch
from torch import nn

from slimkit.algorithms.pruning import LevelPruner
from tests.algorithms.pruning.pruning_helpers import set_weight, zero_fraction


def test_level_prunes_smallest_magnitudes_exactly():
    fc = nn.Linear(5, 2, bias=False)
    weights = np.array([[0.3, -5.0, 0.01, 2.0, -0.7], [1.5, -0.02, 4.0, 0.5, -3.0]])
    set_weight(fc, weights)
    pruner = LevelPruner(nn.Sequential(fc), [{"sparsity": 0.4, "op_types": ["Linear"]}])
    pruner.compress()
    # 4 of 10 removed: |w| = 0.01, 0.02, 0.3, 0.5
    expected = [[0, 1, 0, 1, 1], [1, 0, 1, 0, 1]]
    assert pruner.get_masks()["0"]["weight"].tolist() == expected
    assert pruner.get_masks()["0"]["bias"] is None


def test_level_uses_nearest_integer_and_per_layer_configs():
    model = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 10))
    pruner = LevelPruner(model, [{"sparsity": 0.29, "op_types": ["Linear"]}, {"sparsity": 0.5, "op_names": ["1"]}])
    pruner.compress()
    masks = pruner.get_masks()
    assert int((masks["0"]["weight"] == 0).sum()) == 29
    assert int((masks["1"]["weight"] == 0).sum()) == 50


def test_level_recomputed_masks_keep_pruned_weights_pruned():
    torch.manual_seed(0)
    fc = nn.Linear(8, 8)
    pruner = LevelPruner(nn.Sequential(fc), [{"sparsity": 0.5, "op_types": ["Linear"]}])
    pruner.compress()
    first = pruner.get_masks()["0"]["weight"]
    with torch.no_grad():  # the pruned weights grow large underneath the mask
        fc.weight.add_((1 - first) * 100)
    pruner.update_masks()
    assert torch.equal(pruner.get_masks()["0"]["weight"], first)
    assert zero_fraction(first) == 0.5
