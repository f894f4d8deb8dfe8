"""N:M patterns (LevelPruner, WandaPruner, SparseGPTPruner), Wanda's score, SparseGPT's compensation."""

import numpy as np
import pytest
import torch
from torch import nn

from slimkit.algorithms.pruning import LevelPruner, SparseGPTPruner, WandaPruner
from slimkit.algorithms.quantization.gptq import output_error
from slimkit.errors import CompressionStateError, ConfigError
from slimkit.frameworks.torch.layer_inputs import layer_statistics


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))


def _batches(seed=1, count=4):
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(16, 16, generator=g)
    return [torch.randn(64, 16, generator=g) @ mixing * torch.linspace(0.1, 3, 16) for _ in range(count)]


def _groups(mask, m):
    return mask.reshape(mask.shape[0], -1, m)


def _assert_n_of_m(mask, weight, n, m):
    zeros = (_groups(mask, m) == 0).sum(-1)
    nonzero = (_groups(weight, m) != 0).sum(-1)
    assert bool((zeros >= n).all())
    assert bool((zeros[nonzero == m] == n).all())  # exactly N where every weight of the group is nonzero


@pytest.mark.parametrize("cls", [LevelPruner, WandaPruner, SparseGPTPruner])
@pytest.mark.parametrize("pattern", ["2:4", "1:4", "4:8"])
def test_every_group_has_n_zeros(cls, pattern):
    n, m = map(int, pattern.split(":"))
    model = _model()
    weights = {name: model.get_submodule(name).weight.detach().clone() for name in ("0", "2")}
    pruner = cls(model, [{"sparsity": n / m, "sparsity_pattern": pattern, "op_types": ["Linear"]}])
    if cls is not LevelPruner:
        pruner.calibrate(_batches())
    model = pruner.compress()
    for name, entry in pruner.get_masks().items():
        _assert_n_of_m(entry["weight"], weights[name], n, m)
        # the pruned weights read as zero in the model's forward
        layer = model.get_submodule(name)
        assert bool((layer.effective_parameters()["weight"][entry["weight"] == 0] == 0).all())


def test_level_pattern_is_the_magnitude_order_per_group():
    model = nn.Sequential(nn.Conv2d(4, 2, 1, bias=False))
    weight = torch.tensor([[5.0, -1.0, 2.0, -3.0], [0.5, 4.0, -0.25, 1.0]]).reshape(2, 4, 1, 1)
    with torch.no_grad():
        model[0].weight.copy_(weight)
    pruner = LevelPruner(model, [{"sparsity": 0.5, "sparsity_pattern": "2:4", "op_types": ["Conv2d"]}])
    pruner.compress()
    assert pruner.get_masks()["0"]["weight"].reshape(2, 4).tolist() == [[1, 0, 0, 1], [0, 1, 0, 1]]


def test_wanda_scores_are_weight_times_input_norm_per_row():
    model = _model()
    batches = _batches()
    weight = model[0].weight.detach().numpy().copy()
    norms = np.sqrt(sum((b.double() ** 2).sum(0) for b in batches).numpy())
    pruner = WandaPruner(model, [{"sparsity": 0.25, "op_names": ["0"]}]).calibrate(batches)
    pruner.compress()
    scores = np.abs(weight) * norms[None, :].astype(np.float32)
    expected = np.ones_like(weight)
    for row, order in enumerate(np.argsort(scores, axis=1, kind="stable")[:, :4]):
        expected[row, order] = 0
    np.testing.assert_array_equal(pruner.get_masks()["0"]["weight"].numpy(), expected)


def test_sparsegpt_with_an_identity_hessian_is_magnitude_pruning_per_row():
    model = _model()
    weight = model[0].weight.detach().clone()
    pruner = SparseGPTPruner(model, [{"sparsity": 0.5, "op_names": ["0"]}]).calibrate([torch.eye(16)])
    pruner.compress()
    mask = pruner.get_masks()["0"]["weight"]
    expected = torch.ones_like(weight)
    expected.scatter_(1, weight.abs().argsort(dim=1, stable=True)[:, :8], 0.0)
    assert torch.equal(mask, expected)
    assert torch.equal(model[0].module.weight, weight * mask)  # nothing to compensate: kept weights unchanged


@pytest.mark.parametrize("pattern", [None, "2:4"])
def test_sparsegpt_compensation_beats_wanda_on_the_calibration_data(pattern):
    batches = _batches()
    errors = {}
    for cls in (WandaPruner, SparseGPTPruner):
        model = _model()
        float_weight = model[0].weight.detach().clone()
        hessian = layer_statistics(model, model[0], batches, 16).hessian()
        entry = {"sparsity": 0.5, "op_names": ["0"], **({"sparsity_pattern": pattern} if pattern else {})}
        pruner = cls(model, [entry]).calibrate(batches)
        model = pruner.compress()
        errors[cls.__name__] = output_error(float_weight, model[0].effective_parameters()["weight"], hessian)
        assert int((pruner.get_masks()["0"]["weight"] == 0).sum()) == 64
    assert errors["SparseGPTPruner"] < errors["WandaPruner"], errors


@pytest.mark.parametrize("entry,match", [
    ({"sparsity": 0.5, "sparsity_pattern": "4:2"}, r"sparsity_pattern.*0 < N < M"),
    ({"sparsity": 0.5, "sparsity_pattern": "2-4"}, r"sparsity_pattern.*'N:M'"),
    ({"sparsity": 0.25, "sparsity_pattern": "2:4"}, r"sparsity 0.25 with sparsity_pattern '2:4'.*sparsity=0.5"),
    ({"sparsity": 0.6, "sparsity_pattern": "3:5"}, r"'0' has 16 weights per output channel, not a multiple of M=5"),
])
def test_bad_patterns_are_refused_before_the_model_is_touched(entry, match):
    model = _model()
    layers = list(model)
    with pytest.raises(ConfigError, match=match):
        LevelPruner(model, [{**entry, "op_types": ["Linear"]}])
    assert list(model) == layers


def test_calibrated_pruners_need_batches_and_linear_layers():
    model = _model()
    with pytest.raises(CompressionStateError, match=r"call calibrate\(batches\) before compress"):
        SparseGPTPruner(model, [{"sparsity": 0.5, "op_types": ["Linear"]}]).compress()
    assert isinstance(model[0], nn.Linear)
    with pytest.raises(ConfigError, match=r"Expected Linear layers"):
        WandaPruner(nn.Sequential(nn.Conv2d(1, 2, 3)), [{"sparsity": 0.5, "op_types": ["Conv2d"]}])


@pytest.mark.parametrize("cls", [WandaPruner, SparseGPTPruner])
def test_a_layer_storing_its_weight_as_in_out_is_pruned_along_its_inputs(cls):
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    model = nn.Sequential(Conv1D(8, 16))   # weight (in=16, out=8)
    pruner = cls(model, [{"sparsity": 0.5, "sparsity_pattern": "2:4", "op_types": ["Linear"]}])
    model = pruner.calibrate(_batches()).compress()
    mask = pruner.get_masks()["0"]["weight"]
    assert tuple(mask.shape) == (16, 8)
    assert bool(((mask.T.reshape(8, 4, 4) == 0).sum(-1) == 2).all())   # every output's inputs in groups of 4
    x = _batches()[0]
    with torch.no_grad():
        torch.testing.assert_close(model(x), x @ (model[0].module.weight * mask) + model[0].module.bias)
