"""A pruner and then a quantizer on the same PyTorch layers (shared/API.md section 7), and the orders that cannot work.

The digits CNN pruned by AGP (80 % of every conv / linear weight, level rule) keeps its zeros through QAT with SGD
momentum and weight decay while the schedule goes on pruning; the int8 TFLite file holds a zero at every masked
position, and LiteRT computes exactly what ``emulate_integer()`` computes on the composed model.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import tflite
import torch
from torch import nn

from slimkit import CompositionError
from slimkit.algorithms.pruning import AGPPruner, L1FilterPruner, LevelPruner
from slimkit.algorithms.quantization import NaiveQuantizer, PostTrainingQuantizer, QATQuantizer
from slimkit.converter import TFLiteConverter
from slimkit.frameworks.torch.adapter import ADAPTER
from slimkit.frameworks.torch.quant_backend import QuantWrapper
from slimkit.frameworks.torch.wrapper import CompressionWrapper
from slimkit.models.digits import DigitsCNN, load_digits_tensors
from tests.converter.test_int8 import assert_bit_exact

LAYERS = ["conv1", "conv2", "conv3", "fc"]
WHOLE_GRAPH = [{"quant_types": ["input", "weight", "output"], "op_types": ["default"]}]


def train(model, optimizer, steps, *compressors, start=0):
    """``steps`` SGD steps on digits batches of 32; every third step begins an epoch of the compressors' schedule."""
    x, y, _, _ = load_digits_tensors()
    model.train()
    for step in range(start, start + steps):
        if step % 3 == 0:
            for compressor in compressors:
                compressor.update_epoch(step // 3)
        index = slice((step * 32) % 1024, (step * 32) % 1024 + 32)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x[index]), y[index]).backward()
        optimizer.step()
        for compressor in compressors:
            compressor.step()


def int8_weights(path) -> list[np.ndarray]:
    """The int8 weight tensors of the file's CONV_2D / FULLY_CONNECTED ops, in op order, read with ``tflite``."""
    with open(path, "rb") as handle:
        data = handle.read()
    model = tflite.Model.GetRootAs(data, 0)
    graph = model.Subgraphs(0)
    weighted = {tflite.BuiltinOperator.CONV_2D, tflite.BuiltinOperator.FULLY_CONNECTED}
    out = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        if model.OperatorCodes(op.OpcodeIndex()).BuiltinCode() in weighted:
            tensor = graph.Tensors(op.Inputs(1))
            assert tensor.Type() == tflite.TensorType.INT8
            buffer = model.Buffers(tensor.Buffer()).DataAsNumpy().view(np.int8)
            out.append(buffer.reshape(tensor.ShapeAsNumpy()))
    return out


def tflite_layout(mask: torch.Tensor) -> np.ndarray:
    """A PyTorch weight mask in TFLite's weight layout (conv OIHW -> OHWI; linear unchanged)."""
    return (mask.permute(0, 2, 3, 1) if mask.dim() == 4 else mask).numpy()


def zeros_by_layer(masks) -> dict[str, int]:
    return {name: int((entry["weight"] == 0).sum()) for name, entry in masks.items()}


@pytest.fixture(scope="module")
def composed():
    """AGP (80 %, epochs 0..4, 3 steps an epoch) trained through epoch 1, then QAT stacked on it and 9 more steps in
    which the schedule reaches its end: returns (model, pruner, quantizer, masks when QAT began)."""
    torch.manual_seed(0)
    model = DigitsCNN(width=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-3)
    pruner = AGPPruner(model, [{"final_sparsity": 0.8, "end_epoch": 4, "op_types": ["Conv2d", "Linear"]}],
                       optimizer=optimizer, pruning_algorithm="level")
    model = pruner.compress()
    train(model, optimizer, 6, pruner)
    x = load_digits_tensors()[0][:1]
    quantizer = QATQuantizer(model, WHOLE_GRAPH, optimizer=optimizer, dummy_input=x)
    model = quantizer.compress()
    at_qat = pruner.get_masks()
    train(model, optimizer, 9, pruner, quantizer, start=6)
    return model.eval(), pruner, quantizer, at_qat


def test_the_pruner_keeps_scheduling_and_pruned_weights_stay_exactly_zero_through_qat(composed):
    model, pruner, quantizer, at_qat = composed
    masks = pruner.get_masks()
    # epoch 1 of AGP's cubic 0 -> 0.8 over 4 epochs is 0.4625 (of conv1's 72, conv2's 1152, conv3's 2304, fc's 160
    # weights); QAT began there and the schedule reached 0.8 under it
    assert zeros_by_layer(at_qat) == {"conv1": 33, "conv2": 533, "conv3": 1066, "fc": 74}
    assert zeros_by_layer(masks) == {"conv1": 58, "conv2": 922, "conv3": 1843, "fc": 128}
    for name in LAYERS:
        wrapper = model.get_submodule(name)
        assert type(wrapper) is QuantWrapper and wrapper is pruner.layer(name).wrapper is quantizer.layer(name).wrapper
        assert [type(layer.owner) for layer in wrapper.attached] == [AGPPruner, QATQuantizer]
        pruned = masks[name]["weight"] == 0
        assert bool((at_qat[name]["weight"][at_qat[name]["weight"] == 0] == 0).all())
        assert bool(pruned[at_qat[name]["weight"] == 0].all())  # once pruned, pruned under QAT too
        weight = wrapper.quantized_weight()   # masked, BN-folded, fake-quantized: what the int8 file holds
        assert int((weight[pruned] != 0).sum()) == 0, name
        assert int((weight[~pruned] != 0).sum()) > 0, name


def test_export_model_of_each_writes_the_zeros(composed, tmp_path):
    model, pruner, quantizer, _ = composed
    masks = pruner.get_masks()
    pruner.export_model(tmp_path / "pruned.pth", mask_path=tmp_path / "masks.pth")
    calibration = quantizer.export_model(tmp_path / "qat.pth", calibration_path=tmp_path / "calibration.pth")
    assert set(calibration) >= set(LAYERS)
    for path in ("pruned.pth", "qat.pth"):
        state = torch.load(tmp_path / path, weights_only=True)
        plain = DigitsCNN(width=8)
        plain.load_state_dict(state)   # the original class, no slimkit
        for name in LAYERS:
            pruned = masks[name]["weight"] == 0
            assert int((plain.get_submodule(name).weight[pruned] != 0).sum()) == 0, (path, name)
    assert all(torch.equal(masks[name]["weight"], saved["weight"])
               for name, saved in torch.load(tmp_path / "masks.pth", weights_only=True).items())


def test_int8_file_keeps_every_zero_and_litert_equals_integer_emulation(composed, tmp_path):
    model, pruner, quantizer, _ = composed
    x = load_digits_tensors()[2]
    path = tmp_path / "sparse_int8.tflite"
    TFLiteConverter(model, x[:1], path).convert()
    weights = int8_weights(path)
    assert len(weights) == len(LAYERS)
    for name, weight in zip(LAYERS, weights):
        pruned = tflite_layout(pruner.get_masks()[name]["weight"]) == 0
        assert weight.shape == pruned.shape
        assert int(np.count_nonzero(weight[pruned])) == 0, name
        assert int(np.count_nonzero(weight[~pruned])) > 0, name
    assert_bit_exact(model, quantizer, path, [x[:1], x[1:2], x[7:8], x[40:41]])


def test_ptq_after_filter_pruning_writes_the_zeros(tmp_path):
    torch.manual_seed(0)
    model = DigitsCNN(width=8).eval()
    pruner = L1FilterPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}])
    model = pruner.compress()
    x = load_digits_tensors()[0]
    ptq = PostTrainingQuantizer(model, WHOLE_GRAPH, dummy_input=x[:1], progress=False)
    model = ptq.compress()
    ptq.calibrate([x[:64], x[64:128]])
    path = tmp_path / "ptq.tflite"
    TFLiteConverter(model.eval(), x[:1], path).convert()
    for name, weight in zip(LAYERS[:3], int8_weights(path)):
        mask = tflite_layout(pruner.get_masks()[name]["weight"])
        filters = mask.reshape(mask.shape[0], -1).max(axis=1) == 0
        assert int(filters.sum()) == mask.shape[0] // 2  # half of the filters, every weight of each
        assert int(np.count_nonzero(weight[filters])) == 0, name
    assert_bit_exact(model, ptq, path, [x[:1], x[5:6]])


# ------------------------------------------------------------------------------------------------ orders that fail
def plain_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))


def snapshot(model: nn.Module) -> list[tuple[str, type, object]]:
    return [(name, type(module), module) for name, module in model.named_modules()]


def test_a_pruner_after_a_quantizer_is_refused_with_the_model_untouched():
    model = plain_model()
    quantizer = NaiveQuantizer(model, [{"quant_types": ["weight"], "op_names": ["2"]}])
    quantizer.compress()
    before = snapshot(model)
    pruner = LevelPruner(model, [{"sparsity": 0.5, "op_types": ["Linear"]}])   # '0' is plain, '2' quantized
    with pytest.raises(CompositionError, match=r"Layer '2' is already quantized by NaiveQuantizer, so LevelPruner "
                                                r"would prune .*Expected the order pruner, then quantizer"):
        pruner.compress()
    assert snapshot(model) == before and not pruner.wrapped   # '0' was not wrapped either


def test_two_pruners_on_one_layer_are_refused_with_the_model_untouched():
    model = plain_model()
    agp = AGPPruner(model, [{"final_sparsity": 0.5, "end_epoch": 3, "op_names": ["2"]}])
    agp.compress()
    before, mask = snapshot(model), agp.get_masks()["2"]["weight"]
    level = LevelPruner(model, [{"sparsity": 0.8, "op_types": ["Linear"]}])
    with pytest.raises(CompositionError, match=r"Layer '2' is already wrapped by AGPPruner \(a pruner\).*Expected "
                                                r"one pruner per layer"):
        level.compress()
    assert snapshot(model) == before and torch.equal(agp.get_masks()["2"]["weight"], mask)


def test_a_second_quantizer_is_refused():
    model = plain_model()
    LevelPruner(model, [{"sparsity": 0.5, "op_names": ["0"]}]).compress()
    NaiveQuantizer(model, [{"quant_types": ["weight"], "op_names": ["0"]}]).compress()
    before = snapshot(model)
    with pytest.raises(CompositionError, match=r"Layer '0' is already wrapped by LevelPruner \+ NaiveQuantizer, "
                                                r"which quantizes it.*Expected one quantizer per layer"):
        NaiveQuantizer(model, [{"quant_types": ["weight"], "op_types": ["Linear"]}]).compress()
    assert snapshot(model) == before


def test_unwrapping_goes_in_reverse_order_and_is_exact():
    model = plain_model()
    layers = [model[0], model[2]]
    pruner = LevelPruner(model, [{"sparsity": 0.5, "op_types": ["Linear"]}])
    pruner.compress()
    pruner_wrapper = model[0]
    seen = []
    handle = ADAPTER.add_output_hook(pruner.layer("0"), lambda out: seen.append(out.shape))  # an APoZ-style hook
    quantizer = NaiveQuantizer(model, [{"quant_types": ["weight"], "op_names": ["0"]}])
    quantizer.compress()
    model(torch.ones(2, 4))
    handle.remove()   # the pruner's handle reaches its hook under the quantizer's wrapper
    model(torch.ones(2, 4))
    assert seen == [(2, 4)]
    with pytest.raises(CompositionError, match=r"NaiveQuantizer is stacked on layer '0'.*unwrap_model\(\) "
                                                r"NaiveQuantizer first"):
        pruner.unwrap_model()
    assert type(model[0]) is QuantWrapper and pruner.wrapped
    mask = torch.ones(4, 4)
    mask[:, :3] = 0
    pruner.set_mask(pruner.layer("0"), mask.numpy())   # installed under the quantizer: its wrapper applies it
    assert torch.equal(model[0].weight_mask, mask)
    quantizer.unwrap_model()
    assert model[0] is pruner_wrapper and type(model[0]) is CompressionWrapper
    assert pruner.layer("0").wrapper is pruner_wrapper and torch.equal(pruner_wrapper.weight_mask, mask)
    pruner.unwrap_model()
    assert [model[0], model[2]] == layers


def test_a_pruned_model_still_pickles_without_its_compressors():
    model = plain_model()
    pruner = AGPPruner(model, [{"final_sparsity": 0.5, "end_epoch": 2, "op_types": ["Linear"]}])
    pruner.compress()
    pruner.update_epoch(2)
    buffer = io.BytesIO()
    torch.save(model, buffer)   # the wrapper's attached pruner (its config dataclasses do not pickle) is left out
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert type(loaded[0]) is CompressionWrapper and loaded[0].attached == []
    assert torch.equal(loaded[0].weight_mask, pruner.get_masks()["0"]["weight"])
    assert torch.equal(loaded(torch.ones(1, 4)), model(torch.ones(1, 4)))
