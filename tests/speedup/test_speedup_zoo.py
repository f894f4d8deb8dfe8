"""Speedup over the model zoo: random and L1 masks, output equal to the masked model, fewer
parameters, and the result survives torch.export, torch.save / torch.load and a training step."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from slimkit.algorithms.pruning import L1FilterPruner
from slimkit.models.zoo import ZOO, build
from slimkit.speedup import ModelSpeedup
from tests.speedup.helpers_speedup import masked_copy, num_params, random_masks, relative_error

FAST = {"resnet_basic", "mobilenet_block", "concat_group_conv"}
# parameters after dependency-aware L1 at 50 % + speedup (the BatchNorms masked with their filters): exact, so a
# change in what speedup removes shows here
L1_PARAMS = {"plain_cnn": 2690, "resnet_basic": 2638, "resnet_bottleneck": 1262, "mobilenet_block": 1910,
             "densenet_concat": 901, "shufflenet_split": 848, "resnext_group": 1714, "squeeze_excite": 1590,
             "unet": 2166, "shared_head": 588, "transformer": 2074, "conv1d_audio": 638, "concat_group_conv": 352}
CASES = [pytest.param(name, marks=() if name in FAST else pytest.mark.slow) for name in ZOO]


def _check(model: nn.Module, x: torch.Tensor, masks: dict) -> nn.Module:
    reference = masked_copy(model, masks)
    with torch.no_grad():
        expected = reference(x)
    before = num_params(model)
    speedup = ModelSpeedup(model, x, masks)
    speedup.speedup_model()
    report = speedup.report
    with torch.no_grad():
        got = model(x)
    assert got.shape == expected.shape
    assert relative_error(got, expected) <= 1e-5
    assert num_params(model) < before
    assert report.params_after == num_params(model) and report.params_before == before
    assert report.flops_after < report.flops_before
    assert all(type(m).__module__.startswith("torch.") or not type(m).__module__.startswith("slimkit.speedup")
               for m in model.modules())
    return model


@pytest.mark.parametrize("name", CASES)
def test_random_masks_match_masked_model(name):
    model, x = build(name)
    _check(model, x, random_masks(model, seed=1))


@pytest.mark.parametrize("name", CASES)
def test_l1_masks_export_save_and_train(name):
    model, x = build(name)
    pruner = L1FilterPruner(model, [{"sparsity": 0.5, "op_types": ["Conv1d", "Conv2d", "Linear"]}],
                            dependency_aware=True, dummy_input=x)
    pruner.compress()
    masks = pruner.get_masks()
    pruner.unwrap_model()
    model = _check(model, x, masks)
    assert num_params(model) == L1_PARAMS[name]
    with torch.no_grad():
        expected = model(x)
    exported = torch.export.export(model, (x,))
    assert relative_error(exported.module()(x), expected) <= 1e-6
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    with torch.no_grad():
        assert relative_error(loaded(x), expected) <= 1e-6
    model.train()
    loss = model(x).float().pow(2).mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_jit_trace_of_sped_up_model():
    model, x = build("resnet_basic")
    _check(model, x, random_masks(model, seed=2))
    traced = torch.jit.trace(model, x)
    with torch.no_grad():
        assert relative_error(traced(x), model(x)) <= 1e-6


def test_mask_file_path(tmp_path):
    model, x = build("resnet_basic")
    masks = random_masks(model, seed=3)
    torch.save(masks, tmp_path / "mask.pth")
    reference = masked_copy(model, masks)
    ModelSpeedup(model, x, str(tmp_path / "mask.pth")).speedup_model()
    with torch.no_grad():
        assert relative_error(model(x), reference(x)) <= 1e-5
