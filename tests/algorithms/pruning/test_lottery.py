import pytest
import torch
from torch import nn

from slimkit import CompressionStateError, ConfigError
from slimkit.algorithms.pruning import LotteryTicketPruner
from slimkit.compression.sparsity import prune_count
from tests.algorithms.pruning.pruning_helpers import set_weight


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))


def _train(model, optimizer, steps=3):
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(torch.randn(8, 8)), torch.randint(0, 4, (8,))).backward()
        optimizer.step()


def test_rounds_reach_the_geometric_sparsities_and_rewind_the_weights():
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    pruner = LotteryTicketPruner(model, [{"sparsity": 0.8, "prune_iterations": 3, "op_types": ["Linear"]}],
                                 optimizer=optimizer)
    pruner.compress()
    assert list(pruner.get_prune_iterations()) == [0, 1, 2, 3]
    previous = None
    for round_index in pruner.get_prune_iterations():
        pruner.prune_iteration_start()
        assert pruner.current_iteration == round_index
        # the weights (parameters and BN buffers) are back at their values at construction
        unwrapped = {k.replace(".module.", "."): v for k, v in model.state_dict().items() if "_mask" not in k}
        assert all(torch.equal(unwrapped[k], initial[k]) for k in initial)
        assert optimizer.state_dict()["state"] == {}  # momentum rewound too
        masks = pruner.get_masks()
        for name, entry in masks.items():
            n = entry["weight"].numel()
            expected = prune_count(1 - (1 - 0.8) ** (round_index / 3), n)
            assert int((entry["weight"] == 0).sum()) == expected
            if previous is not None:
                assert torch.all(entry["weight"] <= previous[name])
        previous = {name: entry["weight"] for name, entry in masks.items()}
        _train(model, optimizer)
    with pytest.raises(CompressionStateError, match="rounds have run"):
        pruner.prune_iteration_start()


def test_masks_come_from_the_trained_surviving_weights():
    fc = nn.Linear(4, 1, bias=False)
    set_weight(fc, [[4.0, 3.0, 2.0, 1.0]])
    model = nn.Sequential(fc)
    pruner = LotteryTicketPruner(model, [{"sparsity": 0.75, "prune_iterations": 2, "op_types": ["Linear"]}])
    pruner.compress()
    pruner.prune_iteration_start()  # round 0: dense
    set_weight(fc, [[0.1, 3.0, 2.0, 5.0]])  # "training" moved the weights
    pruner.prune_iteration_start()  # round 1: 50% of 4 -> the two smallest trained weights
    assert pruner.get_masks()["0"]["weight"].tolist() == [[0.0, 1.0, 0.0, 1.0]]
    assert fc.weight.tolist() == [[4.0, 3.0, 2.0, 1.0]]  # rewound
    set_weight(fc, [[9.0, 0.5, 9.0, 2.0]])
    pruner.prune_iteration_start()  # round 2: 75%; pruned weights stay pruned although large underneath
    assert pruner.get_masks()["0"]["weight"].tolist() == [[0.0, 0.0, 0.0, 1.0]]


def test_without_reset_the_weights_stay():
    fc = nn.Linear(4, 1, bias=False)
    pruner = LotteryTicketPruner(nn.Sequential(fc), [{"sparsity": 0.5, "prune_iterations": 1, "op_types": ["Linear"]}],
                                 reset_weights=False)
    pruner.compress()
    set_weight(fc, [[1.0, 2.0, 3.0, 4.0]])
    pruner.prune_iteration_start()
    pruner.prune_iteration_start()
    assert fc.weight.tolist() == [[1.0, 2.0, 3.0, 4.0]]


def test_prune_iterations_must_agree():
    with pytest.raises(ConfigError, match="same 'prune_iterations'"):
        LotteryTicketPruner(_model(), [{"sparsity": 0.5, "prune_iterations": 2, "op_names": ["0"]},
                                       {"sparsity": 0.5, "prune_iterations": 3, "op_names": ["3"]}])
    with pytest.raises(ConfigError, match="prune_iterations"):
        LotteryTicketPruner(_model(), [{"sparsity": 0.5, "op_types": ["Linear"]}])
