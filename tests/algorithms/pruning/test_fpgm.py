import dataclasses
import time

import numpy as np
import pytest
import torch
from pruning_helpers import conv_with_filters
from torch import nn

from slimkit.algorithms.pruning import FPGMPruner, L1FilterPruner
from slimkit.algorithms.pruning.fpgm import distance_sums


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
def test_fpgm_and_l1_on_all_resnet50_convs_are_fast():
    from slimkit.models import resnet50

    torch.manual_seed(0)
    model = resnet50()
    for pruner_class in (FPGMPruner, L1FilterPruner):
        pruner = pruner_class(model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}])
        pruner.compress()
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            pruner.update_masks()
            best = min(best, time.perf_counter() - start)
        pruner.unwrap_model()
        assert best < 1.0, f"{pruner_class.__name__}: {best:.3f} s (target 0.2 s on an idle machine)"
