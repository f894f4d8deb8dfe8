import dataclasses
import time

import numpy as np
import pytest
import torch
from torch import nn

from slimkit.algorithms.pruning import FPGMPruner, L1FilterPruner
from slimkit.algorithms.pruning.fpgm import distance_sums
from tests.algorithms.pruning.pruning_helpers import conv_with_filters


def test_distance_sums_match_brute_force():
    rng = np.random.default_rng(1)
    filters = rng.normal(size=(7, 12))
    brute = [sum(np.linalg.norm(a - b) for b in filters) for a in filters]
    np.testing.assert_allclose(distance_sums(filters), brute, rtol=1e-9)
    np.testing.assert_allclose(distance_sums(filters.astype(np.float32)), brute, rtol=1e-4)


def test_fpgm_prunes_the_filters_nearest_the_geometric_median():
    # scalar filters 0, 1, 2, 4, 10: distance sums 17, 14, 13, 15, 33 -> 2 then 1 are most replaceable,
    # while L1 would drop 0 and 1.
    conv = conv_with_filters([0.0, 1.0, 2.0, 4.0, 10.0])
    pruner = FPGMPruner(nn.Sequential(conv), [{"sparsity": 0.4, "op_types": ["Conv2d"]}])
    pruner.compress()
    assert pruner.get_masks()["0"]["weight"].flatten().tolist() == [1.0, 0.0, 0.0, 1.0, 1.0]
    l1 = L1FilterPruner(nn.Sequential(conv_with_filters([0.0, 1.0, 2.0, 4.0, 10.0])),
                        [{"sparsity": 0.4, "op_types": ["Conv2d"]}])
    l1.compress()
    assert l1.get_masks()["0"]["weight"].flatten().tolist() == [0.0, 0.0, 1.0, 1.0, 1.0]


def test_fpgm_recomputes_among_surviving_filters_only():
    conv = conv_with_filters([0.0, 1.0, 2.0, 4.0, 10.0])
    pruner = FPGMPruner(nn.Sequential(conv), [{"sparsity": 0.2, "op_types": ["Conv2d"]}])
    pruner.compress()
    assert pruner.get_masks()["0"]["weight"].flatten().tolist() == [1.0, 1.0, 0.0, 1.0, 1.0]
    # among 0, 1, 4, 10 the sums are 15, 13, 15, 33: the second round removes 1 as well
    layer = pruner.layers[0]
    pruner.set_mask(layer, pruner.calc_mask(layer, dataclasses.replace(layer.config, sparsity=0.4)))
    assert pruner.get_masks()["0"]["weight"].flatten().tolist() == [1.0, 0.0, 0.0, 1.0, 1.0]


@pytest.mark.slow
def test_fpgm_and_l1_on_all_resnet50_convs():
    """Scale check. The 0.2 s target is measured by benchmarks/pruning_mask_time.py; here only a loose
    bound that catches a per-filter Python loop (seconds per layer), since the CI machine is shared."""
    from slimkit.models import resnet50

    torch.manual_seed(0)
    model = resnet50()
    for pruner_class in (FPGMPruner, L1FilterPruner):
        pruner = pruner_class(model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}])
        start = time.perf_counter()
        pruner.compress()
        elapsed = time.perf_counter() - start
        masks = pruner.get_masks()
        for layer in pruner.layers:
            kept = masks[layer.name]["weight"].amax(dim=(1, 2, 3))
            assert int((kept == 0).sum()) == len(kept) // 2
        pruner.unwrap_model()
        assert elapsed < 20, f"{pruner_class.__name__}: {elapsed:.1f} s"
