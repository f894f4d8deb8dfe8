import pytest
import torch
from torch import nn

from slimkit import ConfigError
from slimkit.algorithms.pruning import AGPPruner
from slimkit.algorithms.pruning.registry import schedulable_names
from slimkit.compression.schedule import agp_sparsity
from slimkit.compression.sparsity import prune_count
from tests.algorithms.pruning.pruning_helpers import SmallNet


def cubic(t, s_i, s_f, t0, n_dt):
    """The paper's formula, written out independently."""
    return s_f + (s_i - s_f) * (1 - (t - t0) / n_dt) ** 3


@pytest.mark.parametrize("s_i, s_f, t0, t_end, dt", [(0.0, 0.8, 0, 4, 1), (0.1, 0.9, 2, 8, 2), (0.0, 0.5, 1, 10, 3)])
def test_schedule_follows_the_cubic_formula(s_i, s_f, t0, t_end, dt):
    for t in range(t_end + 3):
        if t <= t0:
            expected = s_i
        elif t >= t_end:
            expected = s_f
        else:
            expected = cubic(t0 + (t - t0) // dt * dt, s_i, s_f, t0, t_end - t0)
        assert agp_sparsity(t, s_i, s_f, t0, t_end, dt) == pytest.approx(expected)


def test_masks_reach_the_scheduled_sparsity_every_epoch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 10), nn.ReLU(), nn.Linear(10, 5))
    config = {"initial_sparsity": 0.1, "final_sparsity": 0.9, "start_epoch": 1, "end_epoch": 7, "frequency": 2,
              "op_types": ["Linear"]}
    pruner = AGPPruner(model, [config], pruning_algorithm="level", optimizer=torch.optim.SGD(model.parameters(), 0.1))
    pruner.compress()
    previous = {name: torch.ones_like(m["weight"]) for name, m in pruner.get_masks().items()}
    for epoch in range(10):
        pruner.update_epoch(epoch)
        target = cubic(1 + (epoch - 1) // 2 * 2, 0.1, 0.9, 1, 6) if 1 < epoch < 7 else (0.1 if epoch <= 1 else 0.9)
        for layer in pruner.layers:
            assert pruner.target_sparsity(layer) == pytest.approx(target)
            mask = pruner.get_masks()[layer.name]["weight"]
            assert int((mask == 0).sum()) == prune_count(target, mask.numel())
            assert torch.all(mask <= previous[layer.name])  # monotone
            previous[layer.name] = mask


def _forward(model):
    model(torch.randn(4, 3, 6, 6))


@pytest.mark.parametrize("algorithm", schedulable_names())
def test_every_rule_is_driven_monotonically_to_the_final_sparsity(algorithm, small_net):
    model = small_net
    op_types = ["BatchNorm2d"] if algorithm == "slim" else ["Conv2d"]
    pruner = AGPPruner(model, [{"final_sparsity": 0.5, "end_epoch": 3, "op_types": op_types}],
                       pruning_algorithm=algorithm)
    pruner.compress()
    previous = None
    for epoch in range(4):
        for _ in range(2):  # a tiny "epoch" of training passes (statistics for the activation rules)
            _forward(model)
            pruner.step()
        pruner.update_epoch(epoch + 1)
        masks = {name: m["weight"].clone() for name, m in pruner.get_masks().items()}
        if previous is not None:
            assert all(torch.all(masks[name] <= previous[name]) for name in masks)
        previous = masks
    zeros = sum(int((m == 0).sum()) for m in previous.values())
    total = sum(m.numel() for m in previous.values())
    assert zeros / total == pytest.approx(0.5, abs=0.02)


def test_activation_rule_without_passes_and_trainer_calls_the_trainer():
    calls = []
    model = SmallNet()

    def trainer(model, optimizer, criterion, epoch):
        calls.append(epoch)
        _forward(model)

    pruner = AGPPruner(model, [{"final_sparsity": 0.5, "end_epoch": 2, "op_types": ["Conv2d"]}],
                       pruning_algorithm="apoz", trainer=trainer, algo_kwargs={"activation": "relu6"})
    pruner.compress()
    pruner.update_epoch(1)
    pruner.update_epoch(2)
    assert calls == [1, 2]
    assert pruner.rule.activation == "relu6"


def test_activation_rule_defers_masks_until_a_forward_pass(small_net):
    pruner = AGPPruner(small_net, [{"initial_sparsity": 0.25, "final_sparsity": 0.5, "end_epoch": 2,
                                    "op_types": ["Conv2d"]}], pruning_algorithm="mean_activation")
    pruner.compress()  # no pass yet: nothing to rank channels by
    assert all(int((m["weight"] == 0).sum()) == 0 for m in pruner.get_masks().values())
    _forward(small_net)
    pruner.step()
    kept = pruner.get_masks()["conv2"]["weight"].amax(dim=(1, 2, 3))
    assert int((kept == 0).sum()) == prune_count(0.25, 16)


@pytest.mark.parametrize("config, message", [
    ({"sparsity": 0.5, "final_sparsity": 0.5, "end_epoch": 2}, "unknown key 'sparsity'"),
    ({"final_sparsity": 0.5}, "missing required key 'end_epoch'"),
    ({"final_sparsity": 0.5, "end_epoch": 2, "start_epoch": 2}, "end_epoch > start_epoch"),
    ({"final_sparsity": 0.5, "initial_sparsity": 0.6, "end_epoch": 2}, "initial_sparsity <= final_sparsity"),
    ({"final_sparsity": 1.0, "end_epoch": 2}, "final_sparsity"),
    ({"final_sparsity": 0.5, "end_epoch": 2, "frequency": 0}, "frequency"),
])
def test_config_errors(config, message):
    with pytest.raises(ConfigError, match=message):
        AGPPruner(nn.Sequential(nn.Linear(2, 2)), [{**config, "op_types": ["Linear"]}])


def test_unknown_algorithm_lists_the_registry():
    with pytest.raises(ConfigError, match=r"one of \['apoz', 'fpgm', 'l1', 'l2', 'level', 'mean_activation', 'slim'\]"):
        AGPPruner(nn.Sequential(nn.Linear(2, 2)), [{"final_sparsity": 0.5, "end_epoch": 2, "op_types": ["Linear"]}],
                  pruning_algorithm="agp")


def test_arguments_the_rule_does_not_take_are_config_errors():
    with pytest.raises(ConfigError, match="does not take"):
        AGPPruner(nn.Sequential(nn.Linear(2, 2)), [{"final_sparsity": 0.5, "end_epoch": 2, "op_types": ["Linear"]}],
                  pruning_algorithm="level", trainer=print)


def test_unwrap_and_compress_again_reinstalls_the_masks():
    model = nn.Sequential(nn.Linear(10, 10))
    pruner = AGPPruner(model, [{"final_sparsity": 0.5, "end_epoch": 1, "op_types": ["Linear"]}])
    pruner.compress()
    pruner.update_epoch(1)
    pruner.unwrap_model()
    pruner.compress()
    assert int((pruner.get_masks()["0"]["weight"] == 0).sum()) == 50
