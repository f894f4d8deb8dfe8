import pytest
import torch
from torch import nn

from slimkit import ConfigError
from slimkit.algorithms.pruning import SlimPruner
from tests.algorithms.pruning.pruning_helpers import set_weight


def _two_bn_model():
    model = nn.Sequential(nn.Conv2d(1, 4, 1), nn.BatchNorm2d(4), nn.Conv2d(4, 3, 1), nn.BatchNorm2d(3))
    set_weight(model[1], [0.9, -0.05, 0.7, 0.3], bias=[0.1, 0.2, 0.3, 0.4])
    set_weight(model[3], [0.2, -1.2, 0.01], bias=[1.0, 2.0, 3.0])
    return model


def test_one_global_threshold_across_bn_layers():
    model = _two_bn_model()
    pruner = SlimPruner(model, [{"sparsity": 0.43, "op_types": ["BatchNorm2d"]}])
    pruner.compress()
    masks = pruner.get_masks()
    # 7 channels, 3 removed globally: |gamma| 0.01, 0.05, 0.2 -> two from layer 3, one from layer 1
    assert masks["1"]["weight"].tolist() == [1.0, 0.0, 1.0, 1.0]
    assert masks["3"]["weight"].tolist() == [0.0, 1.0, 0.0]
    assert masks["1"]["bias"].tolist() == [1.0, 0.0, 1.0, 1.0]
    assert masks["3"]["bias"].tolist() == [0.0, 1.0, 0.0]
    out = model[3](model[2](model[1](model[0](torch.randn(2, 1, 3, 3)))))
    assert torch.all(out[:, 0] == 0) and torch.all(out[:, 2] == 0)


def test_default_op_types_are_batchnorm_and_first_config_sparsity_is_global():
    model = _two_bn_model()
    pruner = SlimPruner(model, [{"sparsity": 0.43, "op_types": ["default"]},
                                {"sparsity": 0.9, "op_names": ["3"]}])
    assert [layer.name for layer in pruner.layers] == ["1", "3"]
    pruner.compress()
    assert int(sum((m["weight"] == 0).sum() for m in pruner.get_masks().values())) == 3


def test_every_layer_keeps_a_channel():
    model = _two_bn_model()
    set_weight(model[3], [0.001, 0.002, 0.003])
    pruner = SlimPruner(model, [{"sparsity": 0.43, "op_types": ["BatchNorm2d"]}])
    pruner.compress()
    assert pruner.get_masks()["3"]["weight"].tolist() == [0.0, 0.0, 1.0]


def test_bn_l1_penalty_value_and_gradient():
    model = _two_bn_model()
    pruner = SlimPruner(model, [{"sparsity": 0.43, "op_types": ["BatchNorm2d"]}], scale=0.5)
    penalty = pruner.bn_l1_penalty()
    assert penalty.item() == pytest.approx(0.5 * (0.9 + 0.05 + 0.7 + 0.3 + 0.2 + 1.2 + 0.01))
    penalty.backward()
    assert model[1].weight.grad.tolist() == pytest.approx([0.5, -0.5, 0.5, 0.5])
    assert pruner.bn_l1_penalty(scale=1.0).item() == pytest.approx(2 * penalty.item())


def test_trainer_runs_sparsity_training_with_the_penalty():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 1), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    x, y = torch.randn(8, 1, 1, 1), torch.randint(0, 2, (8,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []

    def trainer(model, optimizer, criterion, epoch):
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        seen.append(loss.item() - nn.functional.cross_entropy(model(x), y).item())
        loss.backward()
        optimizer.step()

    pruner = SlimPruner(model, [{"sparsity": 0.5, "op_types": ["BatchNorm2d"]}], optimizer=optimizer,
                        trainer=trainer, criterion=nn.functional.cross_entropy, sparsifying_training_epochs=3,
                        scale=0.01)
    pruner.compress()
    assert len(seen) == 3 and seen[0] == pytest.approx(0.01 * 4.0, rel=1e-4)  # BN gammas start at 1
    assert int((pruner.get_masks()["1"]["weight"] == 0).sum()) == 2


def test_slim_rejects_layers_without_weight():
    model = nn.Sequential(nn.BatchNorm2d(2, affine=False))
    with pytest.raises(ConfigError, match="no weight"):
        SlimPruner(model, [{"sparsity": 0.5, "op_types": ["BatchNorm2d"]}])
