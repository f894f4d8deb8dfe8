"""Model code slimkit's authors did not write: transparent wrappers, op_types by base class, Hugging Face's
``Conv1D`` as a Linear with its own weight layout, tied weights, and whole-graph quantization of models that
compute positions and masks in float."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from slimkit import ConfigError, UnsupportedOpError
from slimkit.algorithms.pruning import L1FilterPruner, LevelPruner
from slimkit.algorithms.quantization import PostTrainingQuantizer
from slimkit.compression.quantizer import GRAPH_KEY

WO = ["weight", "output"]


class Depthwise(nn.Conv2d):
    """A library's own conv class (EfficientNet's depthwise conv is one)."""

    def __init__(self, channels: int):
        super().__init__(channels, channels, 3, padding=1, groups=channels)


class ReadsThrough(nn.Module):
    """Reads attributes of its children the way Hugging Face code does (T5, ViT, MobileNetV2)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, stride=2)
        self.dw = Depthwise(4)
        self.wo = nn.Linear(4, 3)

    def forward(self, x):
        x = x.to(self.conv.weight.dtype)
        if self.conv.stride != (2, 2) or self.wo.in_features != 4:
            raise AssertionError("wrapped attributes must read through")
        x = self.dw(self.conv(x)).mean((2, 3))
        return self.wo(x.to(self.wo.weight.dtype))


def test_wrappers_read_public_attributes_through_and_keep_state_dict_keys():
    torch.manual_seed(0)
    model = ReadsThrough()
    x = torch.randn(2, 2, 9, 9)
    expected = model(x)
    pruner = LevelPruner(model, [{"sparsity": 0.0, "op_types": ["default"]}])
    pruner.compress()
    assert isinstance(model.conv, nn.Module) and model.conv.weight is model.conv.module.weight
    assert (model.conv.stride, model.wo.in_features, model.wo.bias is model.wo.module.bias) == ((2, 2), 4, True)
    with pytest.raises(AttributeError):
        model.conv._conv_forward  # private names stay the wrapper's own  # noqa: B018
    assert sorted(model.state_dict()) == sorted(
        f"{name}.{key}" for name in ("conv", "dw", "wo") for key in ("module.weight", "module.bias", "weight_mask"))
    torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
    clone = copy.deepcopy(model)
    assert clone.conv.weight is clone.conv.module.weight and clone.conv.weight is not model.conv.weight
    pruner.unwrap_model()
    assert type(model.conv) is nn.Conv2d and type(model.dw) is Depthwise

    quantized = ReadsThrough()
    ptq = PostTrainingQuantizer(quantized, [{"quant_types": WO, "op_types": ["default"]}], dummy_input=x,
                                progress=False)
    ptq.compress()
    ptq.calibrate([x])
    assert torch.isfinite(quantized(x)).all() and quantized.wo.out_features == 3


def test_op_types_match_base_classes_by_short_name():
    model = ReadsThrough()
    by_base = LevelPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}])
    assert [(layer.name, layer.type) for layer in by_base.layers] == [("conv", "Conv2d"), ("dw", "Depthwise")]
    own = LevelPruner(model, [{"sparsity": 0.5, "op_types": ["Depthwise"]}])
    assert [layer.name for layer in own.layers] == ["dw"]
    default = LevelPruner(model, [{"sparsity": 0.5, "op_types": ["default"]}, {"exclude": True, "op_names": ["wo"]}])
    assert [layer.name for layer in default.layers] == ["conv", "dw"]
    with pytest.raises(ConfigError, match="unknown layer type 'Conv2D'"):
        LevelPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2D"]}])


class GPTBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.c_fc = Conv1D(6, 4)     # in 4 -> out 6, weight (4, 6)
        self.c_proj = Conv1D(4, 6)

    def forward(self, x):
        return self.c_proj(torch.relu(self.c_fc(x)))


def test_hf_conv1d_counts_as_linear_with_its_transposed_layout():
    torch.manual_seed(0)
    model = GPTBlock()
    with torch.no_grad():  # column c (output channel c) has L1 norm 4 * scale[c]
        model.c_fc.weight.copy_(torch.tensor([3.0, -1.0, 4.0, 1.5, -5.0, 9.0]).expand(4, 6))
    pruner = L1FilterPruner(model, [{"sparsity": 0.5, "op_types": ["Linear"]}])
    assert [(layer.name, layer.type, layer.out_axis) for layer in pruner.layers] == [
        ("c_fc", "Conv1D", 1), ("c_proj", "Conv1D", 1)]
    pruner.compress()
    mask = pruner.get_masks()["c_fc"]["weight"]
    np.testing.assert_array_equal(mask[0].numpy(), [0, 0, 1, 0, 1, 1])
    assert (mask == mask[0]).all()

    model = GPTBlock()
    x = torch.randn(3, 5, 4)
    ptq = PostTrainingQuantizer(model, [{"quant_types": WO, "op_types": ["default"]}], dummy_input=x,
                                progress=False)
    ptq.compress()
    ptq.calibrate([x, torch.randn(3, 5, 4)])
    calibration = ptq.calibration()
    assert [key for key in calibration if key != GRAPH_KEY] == ["c_fc", "c_proj"]
    for name in ("c_fc", "c_proj"):
        weight = getattr(model, name).module.weight.detach()
        assert calibration[name]["weight_scale"] == pytest.approx((weight.abs().amax(0) / 127).tolist(), rel=1e-6)
    quantized = model.c_fc.quantized_weight()
    scale = torch.tensor(calibration["c_fc"]["weight_scale"])
    assert torch.equal(torch.round(quantized / scale), torch.round(model.c_fc.module.weight.detach() / scale))


class TiedLM(nn.Module):
    """An output head sharing the token embedding (GPT-2's ``lm_head``)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.mix = nn.Linear(4, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids):
        return self.head(torch.tanh(self.mix(self.embed(ids))))


def test_tied_weight_masked_where_used_and_export_refuses_to_change_the_other_user(tmp_path):
    torch.manual_seed(0)
    model = TiedLM()
    ids = torch.tensor([[1, 2, 3, 9]])
    embedding_before = model.embed(ids).detach()
    pruner = LevelPruner(model, [{"sparsity": 0.5, "op_types": ["Linear"]}])
    pruner.compress()
    mask = pruner.get_masks()["head"]["weight"]
    # the mask applies where the head uses the tensor; the embedding still reads the whole tensor
    assert torch.equal(model.embed(ids), embedding_before)
    hidden = torch.tanh(model.mix(model.embed(ids)))
    torch.testing.assert_close(model(ids), hidden @ (model.embed.weight * mask).T, rtol=0, atol=0)
    with pytest.raises(ConfigError) as error:
        pruner.export_model(model_path=tmp_path / "model.pth")
    assert str(error.value).startswith("Layer 'head' shares its weight tensor with 'embed' (Embedding.weight; tied ")
    assert "{'exclude': True, 'op_names': ['head']}" in str(error.value)
    assert not (tmp_path / "model.pth").exists()
    assert torch.equal(model.embed(ids), embedding_before)  # nothing was written into the shared tensor

    # every user with the same (magnitude) mask: baking is exact and the file loads into a tied model
    tied = TiedLM()
    both = LevelPruner(tied, [{"sparsity": 0.5, "op_types": ["Linear", "Embedding"]}])
    both.compress()
    assert torch.equal(both.get_masks()["embed"]["weight"], both.get_masks()["head"]["weight"])
    masked = tied(ids)
    both.export_model(model_path=tmp_path / "both.pth")
    fresh = TiedLM()
    fresh.load_state_dict(torch.load(tmp_path / "both.pth", weights_only=True))
    assert fresh.head.weight is fresh.embed.weight and torch.equal(fresh(ids), masked)


class Positions(nn.Module):
    """Float arithmetic on positions only (T5's relative-position buckets take log(0) = -inf, then clamp)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.bias = nn.Embedding(4, 1)

    def forward(self, x):
        position = torch.arange(x.shape[1], dtype=torch.float32)
        bucket = torch.log(position / 2).clamp(min=0).to(torch.long)
        return self.fc(x) + self.bias(bucket)


def test_whole_graph_leaves_input_independent_arithmetic_float():
    torch.manual_seed(0)
    model = Positions().eval()
    x = torch.randn(1, 4, 4)
    ptq = PostTrainingQuantizer(model, [{"quant_types": WO, "op_types": ["default"]}], dummy_input=x,
                                progress=False)
    ptq.compress()
    ptq.calibrate([x, torch.randn(1, 4, 4)])
    graph = ptq.calibration()[GRAPH_KEY]
    assert sorted(graph) == ["/0/add/0", "input/0"]  # not the log / div of positions, nor the embedding lookup
    assert all(np.isfinite(entry["output_scale"]) for entry in graph.values())
    assert torch.isfinite(model(x)).all()


class Explodes(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2)
        self.fail = False

    def forward(self, x):
        y = self.fc(x)
        if self.fail:
            raise RuntimeError("bad batch")
        return torch.log(y - y)  # -inf


def test_whole_graph_errors_name_the_tensor_and_leave_no_function_mode_behind():
    model = Explodes()
    x = torch.randn(1, 2)
    ptq = PostTrainingQuantizer(model, [{"quant_types": WO, "op_types": ["default"]}], dummy_input=x,
                                progress=False)
    ptq.compress()
    model.fail = True
    with pytest.raises(RuntimeError, match="bad batch"):
        model(x)
    assert torch._C._len_torch_function_stack() == 0
    model.fail = False
    with pytest.raises(UnsupportedOpError, match=r"whole-graph tensor '/0/log/0' \(op 'log' in module ''\) took "
                                                 r"values in \[-inf, -inf\] during calibration: an int8 grid "
                                                 r"cannot hold inf or NaN"):
        ptq.calibrate([x])


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(4, 2, batch_first=True)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.attn(x, x, x, need_weights=False)[0])


def test_layers_their_parent_reads_directly_are_not_matched_by_base_class_and_refuse_wrapping():
    model = Attention()
    # nn.MultiheadAttention computes with out_proj.weight and never calls out_proj: a mask there would not apply
    assert [layer.name for layer in LevelPruner(model, [{"sparsity": 0.5, "op_types": ["Linear"]}]).layers] == ["fc"]
    for compressor in (LevelPruner(model, [{"sparsity": 0.5, "op_names": ["attn.out_proj"]}]),
                       PostTrainingQuantizer(model, [{"quant_types": WO, "op_names": ["attn.out_proj"]}],
                                             progress=False)):
        with pytest.raises(ConfigError, match=r"Layer 'attn.out_proj' \(NonDynamicallyQuantizableLinear\) is never "
                                              r"called: its parent 'attn' computes with its weight directly"):
            compressor.compress()
        assert type(model.attn.out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear
