"""Masked layers in training: exact zero gradients, optimizers, state_dict, .to(), torch.compile, unwrap."""

import pytest
import torch
from torch import nn

from slimkit.algorithms.pruning import L1FilterPruner, LevelPruner
from tests.algorithms.pruning.pruning_helpers import SmallNet


def _loss(model, x=None):
    x = torch.randn(4, 3, 6, 6) if x is None else x
    return nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3]))


@pytest.mark.parametrize("pruner_class", [LevelPruner, L1FilterPruner])
def test_gradient_is_exactly_zero_at_masked_weights(small_net, pruner_class):
    pruner = pruner_class(small_net, [{"sparsity": 0.5, "op_types": ["Conv2d", "Linear"]}])
    pruner.compress()
    _loss(small_net).backward()
    for layer in pruner.layers:
        mask = pruner.get_masks()[layer.name]["weight"]
        grad = layer.module.weight.grad
        assert torch.all(grad[mask == 0] == 0)
        assert grad[mask == 1].abs().sum() > 0
        if pruner.get_masks()[layer.name]["bias"] is not None:
            assert torch.all(layer.module.bias.grad[pruner.get_masks()[layer.name]["bias"] == 0] == 0)


def test_training_with_an_optimizer_keeps_pruned_weights_dead(small_net):
    pruner = L1FilterPruner(small_net, [{"sparsity": 0.5, "op_types": ["Conv2d"]}])
    pruner.compress()
    before = {layer.name: layer.module.weight.detach().clone() for layer in pruner.layers}
    optimizer = torch.optim.SGD(small_net.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        optimizer.zero_grad()
        _loss(small_net).backward()
        optimizer.step()
        pruner.step()
    for layer in pruner.layers:
        mask = pruner.get_masks()[layer.name]["weight"]
        weight = layer.module.weight.detach()
        assert torch.equal(weight[mask == 0], before[layer.name][mask == 0])  # no update under the mask
        assert not torch.equal(weight[mask == 1], before[layer.name][mask == 1])
        assert torch.all(layer.weight[mask == 0] == 0)  # the effective weight is zero


def test_state_dict_holds_the_masks_and_loads_into_a_wrapped_model(small_net):
    pruner = L1FilterPruner(small_net, [{"sparsity": 0.5, "op_types": ["Conv2d"]}])
    pruner.compress()
    state = small_net.state_dict()
    assert {"conv1.weight_mask", "conv1.bias_mask", "conv1.module.weight"} <= set(state)
    other = SmallNet()
    other_pruner = L1FilterPruner(other, [{"sparsity": 0.5, "op_types": ["Conv2d"]}])
    other_pruner.compress()
    other.load_state_dict(state)
    for name, entry in pruner.get_masks().items():
        assert torch.equal(other_pruner.get_masks()[name]["weight"], entry["weight"])
    x = torch.randn(2, 3, 6, 6)
    small_net.eval(), other.eval()
    assert torch.equal(other(x), small_net(x))


def test_to_moves_masks_with_the_model(small_net):
    pruner = LevelPruner(small_net, [{"sparsity": 0.5, "op_types": ["Conv2d"]}])
    pruner.compress()
    small_net.eval()
    x = torch.randn(2, 3, 6, 6)
    expected = small_net(x)
    small_net.to(torch.float64)
    assert small_net.conv1.weight_mask.dtype == torch.float64
    torch.testing.assert_close(small_net(x.double()).float(), expected, rtol=1e-5, atol=1e-6)
    pruner.update_masks()  # recomputed masks follow the model's dtype
    assert pruner.get_masks()["conv1"]["weight"].dtype == torch.float64


def test_torch_compile(small_net):
    # backend='aot_eager' traces the wrappers with dynamo and AOTAutograd in ~2 s on CPU. The default
    # 'inductor' backend also gives the same outputs but compiles C++ for ~25 s here, too slow for the suite.
    pruner = L1FilterPruner(small_net, [{"sparsity": 0.5, "op_types": ["Conv2d"]}])
    pruner.compress()
    x = torch.randn(4, 3, 6, 6)
    expected = small_net(x)
    compiled = torch.compile(small_net, backend="aot_eager")
    torch.testing.assert_close(compiled(x), expected)
    _loss(compiled, x).backward()
    mask = pruner.get_masks()["conv2"]["weight"]
    assert torch.all(small_net.conv2.module.weight.grad[mask == 0] == 0)


def test_unwrap_restores_the_original_modules_untouched(small_net):
    originals = {name: module for name, module in small_net.named_children()}
    weights = {k: v.clone() for k, v in small_net.state_dict().items()}
    pruner = L1FilterPruner(small_net, [{"sparsity": 0.5, "op_types": ["Conv2d", "Linear"]}])
    pruner.compress()
    small_net(torch.randn(2, 3, 6, 6))
    model = pruner.unwrap_model()
    assert model is small_net
    assert dict(small_net.named_children()) == originals
    assert all(torch.equal(v, weights[k]) for k, v in small_net.state_dict().items() if "running" not in k
               and "num_batches" not in k)
    pruner.compress()  # and it can be wrapped again
    assert type(small_net.conv1).__name__ == "CompressionWrapper"


@pytest.mark.cuda
def test_masks_on_cuda(small_net):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    small_net.cuda()
    pruner = L1FilterPruner(small_net, [{"sparsity": 0.5, "op_types": ["Conv2d"]}])
    pruner.compress()
    assert pruner.get_masks()["conv1"]["weight"].is_cuda
    x = torch.randn(4, 3, 6, 6, device="cuda")
    out = small_net(x)
    nn.functional.cross_entropy(out, torch.tensor([0, 1, 2, 3], device="cuda")).backward()
    mask = pruner.get_masks()["conv2"]["weight"]
    assert torch.all(small_net.conv2.module.weight.grad[mask == 0] == 0)
    small_net.cpu()
    assert not small_net.conv2.weight_mask.is_cuda
    pruner.update_masks()
    assert torch.equal(pruner.get_masks()["conv2"]["weight"], mask.cpu())
