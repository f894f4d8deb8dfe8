"""ONNX MatMulNBits export of weight-only layers: onnxruntime dequantizes exactly the grid values and runs the
model as PyTorch does; what MatMulNBits cannot hold is refused before any file is written."""

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from torch import nn

from slimkit.algorithms.quantization import WeightOnlyQuantizer
from slimkit.errors import ConfigError, UnsupportedOpError
from slimkit.frameworks.torch.weight_only_nbits import pack


def _session(path):
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run(session, x):
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    return got


def test_pack_puts_the_first_code_in_the_lowest_bits():
    values = np.array([[3, 0, 1, 2, 1]])
    assert pack(values, 2).tolist() == [[3 | 0 << 2 | 1 << 4 | 2 << 6, 1]]
    assert pack(values, 4).tolist() == [[3 | 0 << 4, 1 | 2 << 4, 1]]
    assert pack(values, 8).tolist() == [[3, 0, 1, 2, 1]]


@pytest.mark.parametrize("bits,group_size,symmetric", [(4, 16, True), (4, -1, False), (2, 64, True), (8, 32, False),
                                                       (4, 48, True)])
def test_the_dequantized_weight_is_exactly_the_grid(tmp_path, bits, group_size, symmetric):
    torch.manual_seed(bits)
    model = nn.Sequential(nn.Linear(384, 24, bias=False))
    q = WeightOnlyQuantizer(model, [{"op_types": ["Linear"], "quant_bits": bits, "group_size": group_size,
                                     "symmetric": symmetric}])
    model = q.compress()
    eye = torch.eye(384)
    q.export_model(tmp_path / "m.pth", onnx_path=tmp_path / "m.onnx", dummy_input=eye, onnx_format="MatMulNBits")
    proto = onnx.load(tmp_path / "m.onnx")
    (node,) = proto.graph.node
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    expected_block = {16: 16, 32: 32, -1: 128, 64: 64, 48: 16}[group_size]
    assert (node.op_type, node.domain, attributes["bits"], attributes["block_size"]) == (
        "MatMulNBits", "com.microsoft", bits, expected_block)
    assert "0.weight" not in {init.name for init in proto.graph.initializer}
    # identity input: the product is the dequantized weight itself, transposed
    np.testing.assert_array_equal(_run(_session(tmp_path / "m.onnx"), eye), model[0].quantized_weight().numpy().T)


@pytest.mark.parametrize("algorithm,shape", [("rtn", (3, 64)), ("awq", (2, 5, 64)), ("gptq", (4, 64))])
def test_onnxruntime_matches_pytorch_on_several_inputs(tmp_path, algorithm, shape):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.GELU(), nn.Linear(32, 16, bias=False))
    g = torch.Generator().manual_seed(1)
    mixing = torch.randn(64, 64, generator=g)
    q = WeightOnlyQuantizer(model, [{"op_types": ["Linear"], "quant_bits": 4, "group_size": 16,
                                     "symmetric": algorithm != "awq"}], algorithm=algorithm)
    if algorithm != "rtn":
        q.calibrate([torch.randn(*shape, generator=g) @ mixing for _ in range(4)])
    model = q.compress()
    q.export_model(tmp_path / "m.pth", onnx_path=tmp_path / "m.onnx", dummy_input=torch.randn(*shape),
                   onnx_format="MatMulNBits")
    ops = [node.op_type for node in onnx.load(tmp_path / "m.onnx").graph.node]
    assert ops.count("MatMulNBits") == 2 and "MatMul" not in ops and "Gemm" not in ops
    assert ops.count("Div") == (2 if algorithm == "awq" else 0)
    session = _session(tmp_path / "m.onnx")
    for seed in range(3):
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            np.testing.assert_allclose(_run(session, x), model(x).numpy(), rtol=1e-5, atol=1e-6)


def test_dequantize_linear_export_of_token_inputs_keeps_the_weight_names(tmp_path):
    """3-D inputs make the exporter transpose each weight; the graph optimizer would fold that into a new,
    unnamed initializer, so the export runs without it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 8))
    q = WeightOnlyQuantizer(model, [{"op_types": ["Linear"], "group_size": 16}])
    model = q.compress()
    x = torch.randn(2, 5, 32)
    q.export_model(tmp_path / "m.pth", onnx_path=tmp_path / "m.onnx", dummy_input=x)
    ops = [n.op_type for n in onnx.load(tmp_path / "m.onnx").graph.node]
    assert ops.count("DequantizeLinear") == 2
    session = _session(tmp_path / "m.onnx")
    for seed in range(3):
        x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            np.testing.assert_allclose(_run(session, x), model(x).numpy(), rtol=1e-5, atol=1e-6)


def test_a_layer_storing_its_weight_as_in_out(tmp_path):
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    model = nn.Sequential(Conv1D(16, 32), nn.ReLU(), nn.Linear(16, 4))   # Conv1D(out=16, in=32): weight (32, 16)
    q = WeightOnlyQuantizer(model, [{"op_types": ["Linear"], "group_size": 16}])
    model = q.compress()
    x = torch.randn(2, 3, 32)
    q.export_model(tmp_path / "m.pth", onnx_path=tmp_path / "m.onnx", dummy_input=x, onnx_format="MatMulNBits")
    assert [n.op_type for n in onnx.load(tmp_path / "m.onnx").graph.node].count("MatMulNBits") == 2
    with torch.no_grad():
        np.testing.assert_allclose(_run(_session(tmp_path / "m.onnx"), x), model(x).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bits,group_size,error,match", [
    (3, 16, UnsupportedOpError, r"layer '0' is quantized to 3 bits. Expected one of \[2, 4, 8\]"),
    (4, 8, UnsupportedOpError, r"layer '0' has groups of 8 input features.*Received: group_size=8"),
])
def test_what_matmul_nbits_cannot_hold_is_refused_before_any_file(tmp_path, bits, group_size, error, match):
    model = nn.Sequential(nn.Linear(32, 8))
    q = WeightOnlyQuantizer(model, [{"op_types": ["Linear"], "quant_bits": bits, "group_size": group_size}])
    q.compress()
    with pytest.raises(error, match=match):
        q.export_model(tmp_path / "m.pth", onnx_path=tmp_path / "m.onnx", dummy_input=torch.randn(1, 32),
                       onnx_format="MatMulNBits")
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_format_is_a_config_error(tmp_path):
    q = WeightOnlyQuantizer(nn.Sequential(nn.Linear(32, 8)), [{"op_types": ["Linear"], "group_size": 16}])
    q.compress()
    with pytest.raises(ConfigError, match=r"Expected onnx_format to be one of \['DequantizeLinear', 'MatMulNBits'\]"):
        q.export_model(tmp_path / "m.pth", onnx_path=tmp_path / "m.onnx", dummy_input=torch.randn(1, 32),
                       onnx_format="nbits")
    assert list(tmp_path.iterdir()) == []
