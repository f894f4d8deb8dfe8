"""``nn.MultiheadAttention`` compressed through its in-projection: the entry ``'attn'`` is ``in_proj_weight`` (q, k, v
stacked, ``(3 * embed, embed)``), masked and fake-quantized in the wrapper, in training and in eval (the fast path)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from slimkit.algorithms.pruning import L1FilterPruner, LevelPruner
from slimkit.algorithms.quantization import NaiveQuantizer, QATQuantizer

EMBED, HEADS = 8, 2


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(EMBED, HEADS, batch_first=True)
        self.fc = nn.Linear(EMBED, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.attn(x, x, x, need_weights=False)[0])


def block() -> Block:
    torch.manual_seed(0)
    return Block()


INPUTS = [torch.randn(2, 5, EMBED, generator=torch.Generator().manual_seed(seed)) for seed in range(3)]


def with_in_proj(model: Block, weight: torch.Tensor) -> Block:
    """A plain copy of ``model`` computing with ``weight`` as its in-projection."""
    reference = block()
    reference.load_state_dict({key.replace("attn.module.", "attn."): value for key, value in model.state_dict().items()
                               if not key.endswith("_mask")})
    with torch.no_grad():
        reference.attn.in_proj_weight.copy_(weight)
    return reference


def assert_same_outputs(model: nn.Module, reference: nn.Module) -> None:
    for mode in ("train", "eval"):  # eval under no_grad takes MultiheadAttention's fused fast path
        model.train(mode == "train")
        reference.train(mode == "train")
        with torch.no_grad():
            for x in INPUTS:
                torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-6)


def test_selected_as_its_in_projection():
    model = block()
    pruner = LevelPruner(model, [{"sparsity": 0.5, "op_types": ["MultiheadAttention"]}])
    [layer] = pruner.layers
    assert (layer.name, layer.type, layer.kernel, layer.out_axis) == ("attn", "MultiheadAttention", "in_proj_weight",
                                                                       0)
    assert tuple(layer.weight.shape) == (3 * EMBED, EMBED) and layer.bias is None
    assert [layer.name for layer in LevelPruner(model, [{"sparsity": 0.5, "op_types": ["default"]}]).layers] == ["fc"]


def test_level_pruner_masks_in_proj_weight_in_the_forward_and_the_export(tmp_path):
    model = block()
    weight = model.attn.in_proj_weight.detach().clone()
    bias = model.attn.in_proj_bias.detach().clone()
    pruner = LevelPruner(model, [{"sparsity": 0.75, "op_types": ["MultiheadAttention"]}])
    pruner.compress()
    mask = pruner.get_masks()["attn"]["weight"]
    threshold = weight.abs().flatten().sort().values[round(0.75 * weight.numel()) - 1]
    assert torch.equal(mask, (weight.abs() > threshold).float())
    assert pruner.get_masks()["attn"]["bias"] is None
    assert_same_outputs(model, with_in_proj(model, weight * mask))
    assert torch.equal(model.attn.in_proj_weight, weight)  # masks apply in the forward; the parameter is untouched

    pruner.export_model(tmp_path / "pruned.pth")
    fresh = Block()
    fresh.load_state_dict(torch.load(tmp_path / "pruned.pth", weights_only=True))
    assert torch.equal(fresh.attn.in_proj_weight, weight * mask) and torch.equal(fresh.attn.in_proj_bias, bias)
    state = copy.deepcopy(model.state_dict())
    restored = block()
    LevelPruner(restored, [{"sparsity": 0.75, "op_types": ["MultiheadAttention"]}]).compress()
    restored.load_state_dict(state)
    assert torch.equal(restored.attn.weight_mask, mask)


def test_l1_filter_pruner_removes_in_projection_rows():
    model = block()
    weight = model.attn.in_proj_weight.detach().clone()
    pruner = L1FilterPruner(model, [{"sparsity": 0.5, "op_types": ["MultiheadAttention"]}])
    pruner.compress()
    kept = torch.zeros(3 * EMBED)
    kept[weight.abs().sum(1).argsort()[3 * EMBED // 2:]] = 1
    assert torch.equal(pruner.get_masks()["attn"]["weight"], kept[:, None].expand(-1, EMBED))
    assert_same_outputs(model, with_in_proj(model, weight * kept[:, None]))


def test_weight_quantization_puts_in_proj_weight_on_the_int8_grid():
    model = block()
    weight = model.attn.in_proj_weight.detach().clone()
    quantizer = NaiveQuantizer(model, [{"quant_types": ["weight"], "op_types": ["MultiheadAttention"]}])
    quantizer.compress()
    model(INPUTS[0])
    scale = weight.abs().amax(1) / 127
    torch.testing.assert_close(torch.as_tensor(quantizer.params["attn"]["weight"].scale, dtype=torch.float32), scale)
    quantized = model.attn.quantized_weight()
    assert torch.equal(quantized, torch.round(weight / scale[:, None]).clamp(-127, 127) * scale[:, None])
    assert_same_outputs(model, with_in_proj(model, quantized))


def test_kernel_entry_quantizes_only_its_weight():
    model = block()
    config = [{"quant_types": ["input", "weight", "output"], "op_types": ["MultiheadAttention"]}]
    quantizer = QATQuantizer(model, config)
    assert [t.value for t in quantizer.states["attn"].types] == ["weight"]
    quantizer.compress()
    assert isinstance(model(INPUTS[0]), torch.Tensor)  # the attention's (output, weights) tuple is left as it is


def test_pruner_then_qat_keeps_the_in_projection_zeros():
    model = block()
    pruner = LevelPruner(model, [{"sparsity": 0.5, "op_types": ["MultiheadAttention"]}])
    pruner.compress()
    mask = pruner.get_masks()["attn"]["weight"]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    quantizer = QATQuantizer(model, [{"quant_types": ["weight"], "op_types": ["MultiheadAttention"]}],
                             optimizer=optimizer)
    quantizer.compress()
    before = model.attn.in_proj_weight.detach().clone()
    for x in INPUTS:
        optimizer.zero_grad()
        model(x).square().mean().backward()
        optimizer.step()
        pruner.step()
    assert not torch.equal(model.attn.in_proj_weight, before)  # the straight-through gradient trains the weight
    quantized = model.attn.quantized_weight()
    assert bool((quantized[mask == 0] == 0).all()) and bool((quantized[mask == 1] != 0).any())
    assert_same_outputs(model, with_in_proj(model, quantized))
    quantizer.unwrap_model()
    pruner.unwrap_model()
    assert type(model.attn) is nn.MultiheadAttention


def test_tflite_file_computes_with_the_quantized_in_projection(tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    from slimkit.algorithms.quantization import PostTrainingQuantizer
    from slimkit.converter import TFLiteConverter

    model = block().eval()
    float_model = copy.deepcopy(model)
    quantizer = PostTrainingQuantizer(model, [{"quant_types": ["weight"], "op_types": ["MultiheadAttention"]}],
                                      dummy_input=INPUTS[0][:1])
    quantizer.compress()
    quantizer.calibrate(INPUTS)
    TFLiteConverter(model, INPUTS[0][:1], str(tmp_path / "attn.tflite")).convert()
    interpreter = Interpreter(str(tmp_path / "attn.tflite"))
    interpreter.allocate_tensors()
    [inp], [out] = interpreter.get_input_details(), interpreter.get_output_details()
    for x in INPUTS:
        interpreter.set_tensor(inp["index"], x[:1].numpy())
        interpreter.invoke()
        result = torch.from_numpy(interpreter.get_tensor(out["index"]))
        with torch.no_grad():
            torch.testing.assert_close(result, model(x[:1]), rtol=1e-5, atol=1e-6)
            assert (result - float_model(x[:1])).abs().max() > 1e-4  # the float weights would give another output


def test_two_of_four_pattern_on_the_in_projection():
    model = block()
    weight = model.attn.in_proj_weight.detach().clone()
    pruner = LevelPruner(model, [{"sparsity": 0.5, "sparsity_pattern": "2:4", "op_types": ["MultiheadAttention"]}])
    pruner.compress()
    mask = pruner.get_masks()["attn"]["weight"].reshape(3 * EMBED, EMBED // 4, 4)
    groups = weight.abs().reshape(3 * EMBED, EMBED // 4, 4)
    expected = torch.zeros_like(groups).scatter_(-1, groups.topk(2, dim=-1).indices, 1.0)
    assert torch.equal(mask, expected)
