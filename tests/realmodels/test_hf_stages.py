"""Stages 1 and 3 of issue 12 on every Hugging Face architecture of ``tests/hf_zoo.py``.

Stage 1: LevelPruner 50 % on the default layer set, ``export_model``, reload into a freshly built model of the
same class: its output equals the masked model's, bit for bit.
Stage 3: whole-graph PTQ (minmax, ``op_types: ['default']``), calibrated on several inputs: every Linear-like
and convolution layer of the model (``nn.Linear``, any ``nn.Conv*`` subclass, Hugging Face's ``Conv1D``) is
quantized, per output channel, and the quantized model runs.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from slimkit import ConfigError
from slimkit.algorithms.pruning import LevelPruner
from slimkit.algorithms.quantization import PostTrainingQuantizer
from slimkit.compression.quantizer import GRAPH_KEY
from tests.hf_zoo import HF_ARCHS, hf_inputs

pytestmark = pytest.mark.slow

ARCHS = sorted(HF_ARCHS)
WEIGHTED = (nn.Linear, nn.modules.conv._ConvNd, Conv1D)

# The only cell that needs a config change: GPT-2's lm_head shares its weight with the token embedding.
TIED = {"gpt2": ("model.lm_head", "model.transformer.wte")}


def weighted_layers(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, WEIGHTED)]


def folded_weight(model: nn.Module, module: nn.Module, bn_name: str | None) -> torch.Tensor:
    """The weight the quantizer sees: with a BatchNorm folded in, scaled by gamma / sqrt(var + eps) per channel."""
    weight = module.weight.detach()
    if bn_name is None:
        return weight
    bn = model.get_submodule(bn_name)
    factor = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    return weight * factor.reshape(-1, *[1] * (weight.dim() - 1))


def prune_export_reload(name: str, config_list: list[dict], tmp_path) -> None:
    model, x = HF_ARCHS[name]()
    pruner = LevelPruner(model, config_list)
    model = pruner.compress()
    for layer_name, masks in pruner.get_masks().items():
        weight = masks["weight"]
        assert int((weight == 0).sum()) == round(0.5 * weight.numel()), layer_name
    with torch.no_grad():
        masked = model(x)
    pruner.export_model(model_path=tmp_path / "model.pth", mask_path=tmp_path / "mask.pth")
    fresh, _ = HF_ARCHS[name]()
    fresh.load_state_dict(torch.load(tmp_path / "model.pth", weights_only=True), strict=True)
    with torch.no_grad():
        assert torch.equal(fresh(x), masked)
        for other in hf_inputs(name, 2, seed=1):
            assert torch.equal(fresh(other), model(other))


@pytest.mark.parametrize("name", ARCHS)
def test_stage1_level_prune_export_reload_equals_masked(name, tmp_path):
    config_list = [{"sparsity": 0.5, "op_types": ["default"]}]
    if name in TIED:
        head, embedding = TIED[name]
        model, _ = HF_ARCHS[name]()
        pruner = LevelPruner(model, config_list)
        pruner.compress()
        with pytest.raises(ConfigError, match=rf"Layer '{head}' shares its weight tensor with '{embedding}' "
                                              r"\(Embedding.weight; tied weights.*'exclude': True, 'op_names': "
                                              rf"\['{head}'\]"):
            pruner.export_model(model_path=tmp_path / "refused.pth")
        assert not (tmp_path / "refused.pth").exists()
        # the remedy the message names: give the embedding the same (magnitude) mask
        config_list = [{"sparsity": 0.5, "op_types": ["default", "Embedding"]}]
    prune_export_reload(name, config_list, tmp_path)


@pytest.mark.parametrize("name", ARCHS)
def test_stage3_whole_graph_ptq_quantizes_every_linear_and_conv(name):
    model, x = HF_ARCHS[name]()
    expected = weighted_layers(model)
    with torch.no_grad():
        reference = model(x)
    ptq = PostTrainingQuantizer(model, [{"quant_types": ["weight", "output"], "op_types": ["default"]}],
                                dummy_input=x, progress=False)
    ptq.compress()
    assert [layer.name for layer in ptq.layers] == expected
    ptq.calibrate(hf_inputs(name, 3))
    calibration = ptq.calibration()
    assert [key for key in calibration if key != GRAPH_KEY] == expected
    for layer in ptq.layers:
        weight = folded_weight(model, layer.module, calibration[layer.name]["folded_bn"])
        out_axis = 1 if isinstance(layer.module, Conv1D) else 0
        per_channel = weight.abs().amax(dim=[d for d in range(weight.dim()) if d != out_axis]) / 127
        assert calibration[layer.name]["weight_scale"] == pytest.approx(per_channel.tolist(), rel=1e-6)
        assert "output_scale" in calibration[layer.name]
    assert calibration[GRAPH_KEY]  # functional tensors (adds, matmuls, norms ...) got ranges too
    with torch.no_grad():
        out = model(x)
    assert out.shape == reference.shape and torch.isfinite(out).all()
    assert not torch.equal(out, reference)  # fake quantization is in effect
