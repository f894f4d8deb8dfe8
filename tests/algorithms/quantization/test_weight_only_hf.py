"""Weight-only int4 (GPTQ, AWQ) and SparseGPT / Wanda 2:4 through Hugging Face transformers models (grouped-query
attention and rotary embeddings included): every Linear compressed, calibrated on the model's own inputs."""

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from slimkit.algorithms.pruning import SparseGPTPruner, WandaPruner
from slimkit.algorithms.quantization import WeightOnlyQuantizer
from tests.hf_zoo import HF_ARCHS, hf_inputs

ARCHS = ["bert", "gpt2", "llama", "qwen2", "t5_encoder", "vit", "whisper_encoder"]


def _linear_names(model):
    """Linear layers, GPT-2's Conv1D (a Linear with an (in, out) weight) included."""
    return sorted(name for name, module in model.named_modules() if isinstance(module, (nn.Linear, Conv1D)))


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["gptq", "awq"])
@pytest.mark.parametrize("arch", ARCHS)
def test_weight_only_int4_on_hf_models(arch, algorithm):
    model, x = HF_ARCHS[arch]()
    names = _linear_names(model)
    with torch.no_grad():
        reference = model(x)
    q = WeightOnlyQuantizer(model, [{"op_types": ["Linear"], "quant_bits": 4, "group_size": 16}],
                            algorithm=algorithm)
    model = q.calibrate(hf_inputs(arch, 4)).compress()
    assert sorted(q.quantized_weights()) == names
    for name in names:
        wrapper = model.get_submodule(name)
        assert int(wrapper.weight_codes.min()) >= -8 and int(wrapper.weight_codes.max()) <= 7
    with torch.no_grad():
        out = model(x)
    cosine = torch.nn.functional.cosine_similarity(out.flatten(), reference.flatten(), dim=0)
    assert out.shape == reference.shape and bool(torch.isfinite(out).all()) and float(cosine) > 0.9


@pytest.mark.slow
@pytest.mark.parametrize("cls", [SparseGPTPruner, WandaPruner])
@pytest.mark.parametrize("arch", ["llama", "bert", "gpt2"])
def test_two_four_sparsity_on_hf_models(arch, cls):
    model, x = HF_ARCHS[arch]()
    names = _linear_names(model)
    pruner = cls(model, [{"sparsity": 0.5, "sparsity_pattern": "2:4", "op_types": ["Linear"]}])
    model = pruner.calibrate(hf_inputs(arch, 4)).compress()
    masks = pruner.get_masks()
    assert sorted(masks) == names
    for name, entry in masks.items():
        mask = entry["weight"] if not isinstance(model.get_submodule(name).module, Conv1D) else entry["weight"].T
        groups = mask.reshape(mask.shape[0], -1, 4)  # (out, in): groups of 4 inputs
        assert bool(((groups == 0).sum(-1) == 2).all()), name
        layer = model.get_submodule(name)
        assert bool((layer.module.weight[entry["weight"] == 0] == 0).all()) or cls is WandaPruner
    with torch.no_grad():
        assert bool(torch.isfinite(model(x)).all())
