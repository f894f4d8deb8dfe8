"""Weight-only int4 / int8 Linear layers in TFLite files: the file's dequantized weights are the PyTorch model's grid
values exactly, the codes are stored as INT4 (packed) / INT8, and LiteRT's output equals the model's."""

import numpy as np
import pytest
import tflite
import torch
from torch import nn

from slimkit.algorithms.quantization import WeightOnlyQuantizer
from slimkit.converter import TFLiteConverter
from slimkit.converter.ir import Graph, Op, Tensor
from slimkit.converter.verify import run_tflite
from slimkit.converter.weight_only import WeightCodes, encode_weight_only, file_weights, pack_int4, unpack_int4
from slimkit.errors import UnsupportedOpError
from tests.converter.conftest import convert_and_verify, op_codes, read_model


def _quantized(model, bits, group_size, symmetric=True, algorithm="rtn", batches=None):
    q = WeightOnlyQuantizer(model, [{"op_types": ["Linear"], "quant_bits": bits, "group_size": group_size,
                                     "symmetric": symmetric}], algorithm=algorithm)
    if batches is not None:
        q.calibrate(batches)
    return q.compress().eval(), q


def _grid(wrapper) -> np.ndarray:
    """The wrapper's grid values ``(codes - zero) * scale`` as PyTorch computes them, (out, in)."""
    return wrapper.grid.dequantize(wrapper.weight_codes, wrapper.weight_scale, wrapper.weight_zero_point).numpy()


def _code_tensors(path) -> dict[str, tuple[int, tuple, int, int]]:
    """``{name: (type, shape, payload bytes, DEQUANTIZE version)}`` of each constant a DEQUANTIZE reads."""
    model, graph = read_model(path)
    out = {}
    for i, code in enumerate(op_codes(path)):
        if code != "DEQUANTIZE":
            continue
        op = graph.Operators(i)
        t = graph.Tensors(int(op.InputsAsNumpy()[0]))
        out[t.Name().decode()] = (t.Type(), tuple(t.ShapeAsNumpy()), model.Buffers(t.Buffer()).DataLength(),
                                  model.OperatorCodes(op.OpcodeIndex()).Version())
    return out


@pytest.mark.parametrize("bits, group_size, symmetric", [(4, -1, True), (4, 8, True), (4, 8, False), (3, 8, False),
                                                         (8, -1, True), (8, 8, False)])
def test_the_file_holds_the_codes_and_runs_like_pytorch(tmp_path, bits, group_size, symmetric):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 24), nn.GELU(), nn.Linear(24, 5))
    model, _ = _quantized(model, bits, group_size, symmetric)
    path, _ = convert_and_verify(model, torch.randn(3, 32), tmp_path)   # LiteRT vs PyTorch on several inputs

    weights = file_weights(path)
    assert sorted(weights) == ["0.weight_codes", "2.weight_codes"]
    tensors = _code_tensors(path)
    for name, (in_features, out_features) in {"0": (32, 24), "2": (24, 5)}.items():
        blocks = out_features * (1 if group_size == -1 else in_features // group_size)
        np.testing.assert_array_equal(weights[f"{name}.weight_codes"].reshape(out_features, in_features),
                                      _grid(model[int(name)]))
        kind, shape, payload, version = tensors[f"{name}.weight_codes"]
        assert shape == (blocks, in_features * out_features // blocks)
        if bits <= 4:
            assert (kind, payload, version) == (tflite.TensorType.INT4, (in_features * out_features + 1) // 2, 6)
        else:
            assert (kind, payload, version) == (tflite.TensorType.INT8, in_features * out_features, 5)
    reshapes = ["RESHAPE"] if group_size != -1 else []
    assert op_codes(path) == (["DEQUANTIZE", *reshapes, "FULLY_CONNECTED", "GELU"]
                              + ["DEQUANTIZE", *reshapes, "FULLY_CONNECTED"])


def test_int4_packing_is_two_per_byte_low_nibble_first():
    values = np.array([-8, 7, -1, 0, 3], np.int8)
    packed = pack_int4(values)
    assert packed.tolist() == [0x78, 0x0F, 0x03]
    np.testing.assert_array_equal(unpack_int4(packed, 5), values)


def test_an_awq_layer_divides_the_dequantized_weight_by_its_input_factors(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    batches = [torch.randn(16, 16) * torch.linspace(0.1, 4, 16) for _ in range(2)]
    model, _ = _quantized(model, 4, 4, algorithm="awq", batches=batches)
    assert model[0].input_scale is not None
    path, _ = convert_and_verify(model, torch.randn(2, 16), tmp_path)
    assert op_codes(path)[:4] == ["DEQUANTIZE", "RESHAPE", "DIV", "FULLY_CONNECTED"]
    np.testing.assert_array_equal(file_weights(path)["0.weight_codes"].reshape(8, 16), _grid(model[0]))


def test_a_layer_storing_its_weight_as_in_out_is_written_from_its_codes(tmp_path):
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    model = nn.Sequential(Conv1D(8, 16), nn.ReLU(), nn.Linear(8, 4))   # GPT-2's Conv1D: weight (in, out), addmm
    model, _ = _quantized(model, 4, 4)
    path, _ = convert_and_verify(model, torch.randn(2, 16), tmp_path)
    np.testing.assert_array_equal(file_weights(path)["0.weight_codes"].reshape(8, 16), _grid(model[0]))


def test_per_channel_int4_file_is_about_an_eighth_of_float():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 512, bias=False))
    size = len(TFLiteConverter(model, torch.randn(1, 512), "unused.tflite").to_bytes())
    model, _ = _quantized(model, 4, -1)
    quantized = len(TFLiteConverter(model, torch.randn(1, 512), "unused.tflite").to_bytes())
    # 512 * 512 / 2 bytes of codes and 512 float32 scales + int64 zero points, next to 512 * 512 * 4 bytes
    assert size / 8 < quantized < size / 7.5


def test_a_batchnorm_after_a_weight_only_layer_is_not_folded_into_its_codes(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4), nn.BatchNorm1d(4)).eval()
    with torch.no_grad():
        model[1].running_var.uniform_(0.5, 4.0)
        model[1].running_mean.uniform_(-1, 1)
    model, _ = _quantized(model, 4, -1)
    path, _ = convert_and_verify(model, torch.randn(2, 8), tmp_path)
    assert op_codes(path) == ["DEQUANTIZE", "FULLY_CONNECTED", "MUL", "ADD"]
    np.testing.assert_array_equal(file_weights(path)["0.weight_codes"], _grid(model[0]))


def test_a_weight_changed_after_lowering_is_refused_naming_the_layer():
    codes = WeightCodes("encoder.fc", np.array([[1, -2]], np.int8), np.array([[0.5]], np.float32),
                        np.zeros((1, 1), np.int64), 4, True, np.array([[0.5, -1.0]], np.float32))
    x, y = Tensor("x", (1, 2)), Tensor("y", (1, 1))
    weight = Tensor("w", (1, 2), data=np.array([[0.5, -1.0]], np.float32), weight_codes=codes)
    bias = Tensor("b", (1,), data=np.zeros(1, np.float32))
    graph = Graph([Op("FULLY_CONNECTED", [x, weight, bias], [y])], [x], [y])
    weight.scaled(np.array([2.0], np.float32), 0)   # as a fold into the weight would
    with pytest.raises(UnsupportedOpError, match=r"Weight-only layers \['encoder.fc'\].*exclude these layers"):
        encode_weight_only(graph)
    assert [op.code for op in graph.ops] == ["FULLY_CONNECTED"] and graph.ops[0].inputs[1] is weight
    weight.data_scale = None
    assert encode_weight_only(graph) == 1
    assert [op.code for op in graph.ops] == ["DEQUANTIZE", "FULLY_CONNECTED"]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_hugging_face_models_are_written_from_their_codes(tmp_path, arch):
    from tests.hf_zoo import HF_ARCHS, hf_inputs

    model, x = HF_ARCHS[arch]()
    model, q = _quantized(model, 4, 16)
    path = tmp_path / "m.tflite"
    TFLiteConverter(model, x, path).convert()
    weights = file_weights(path)
    layers = q.quantized_weights()
    assert sorted(weights) == sorted(f"{name}.weight_codes" for name in layers)
    for name in layers:
        wrapper = model.get_submodule(name)
        np.testing.assert_array_equal(weights[f"{name}.weight_codes"].reshape(tuple(wrapper.weight_codes.shape)),
                                      _grid(wrapper))
    for ids in [x, *hf_inputs(arch, 2, seed=1)]:
        with torch.no_grad():
            np.testing.assert_allclose(run_tflite(path, [ids.numpy()])[0], model(ids).numpy(), rtol=1e-4, atol=1e-5)


def test_hybrid_quantizes_only_the_other_layers(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    q = WeightOnlyQuantizer(model, [{"op_names": ["0"], "quant_bits": 4, "group_size": 8}])
    model = q.compress().eval()
    path = tmp_path / "m.tflite"
    TFLiteConverter(model, torch.randn(2, 16), path, hybrid=True).convert()
    assert op_codes(path) == ["DEQUANTIZE", "RESHAPE", "FULLY_CONNECTED", "FULLY_CONNECTED"]
    _, graph = read_model(path)
    weight_types = [graph.Tensors(int(graph.Operators(i).InputsAsNumpy()[1])).Type() for i in (2, 3)]
    assert weight_types == [tflite.TensorType.FLOAT32, tflite.TensorType.INT8]   # codes, then hybrid int8
    np.testing.assert_array_equal(file_weights(path)["0.weight_codes"].reshape(8, 16), _grid(model[0]))
