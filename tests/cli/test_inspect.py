"""`slimkit inspect` prints exact summaries of known mask, ONNX and TFLite files."""

from __future__ import annotations

import flatbuffers
import numpy as np
import onnx
import pytest
import tflite
import torch
from onnx import TensorProto, helper, numpy_helper

from slimkit.cli import main


def inspect(path, capsys):
    assert main(["inspect", str(path)]) == 0
    return capsys.readouterr().out.splitlines()


def test_mask_file(tmp_path, capsys):
    path = tmp_path / "mask.pth"
    conv = torch.ones(4, 2, 3, 3)
    conv[:3] = 0
    torch.save({"conv": {"weight": conv, "bias": torch.tensor([0.0, 0.0, 0.0, 1.0])},
                "features.fc": {"weight": torch.eye(2), "bias": None}}, path)
    assert inspect(path, capsys) == [
        "mask file mask.pth: 2 layers",
        "layer        weight shape  sparsity  zero/total",
        "conv         (4, 2, 3, 3)  0.7500    54/72",
        "features.fc  (2, 2)        0.5000    2/4",
        "total                      0.7368    56/76",
    ]


def test_onnx_qdq_file(tmp_path, capsys):
    init = [numpy_helper.from_array(np.array(0.5, dtype=np.float32), "x_scale"),
            numpy_helper.from_array(np.array(3, dtype=np.int8), "x_zp"),
            numpy_helper.from_array(np.array([0.1, 0.2], dtype=np.float32), "w_scale"),
            numpy_helper.from_array(np.array([0, 0], dtype=np.int8), "w_zp"),
            numpy_helper.from_array(np.ones((2, 4), dtype=np.int8), "w_q")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["x_q"]),
             helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zp"], ["x_dq"]),
             helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], axis=0),
             helper.make_node("Gemm", ["x_dq", "w"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], init)
    model = helper.make_model(graph, producer_name="test", opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    assert inspect(path, capsys) == [
        "onnx model m.onnx: opset ai.onnx 17; producer test",
        "inputs (1):",
        "  x: float32 [N, 4]",
        "outputs (1):",
        "  y: float32 [N, 2]",
        "ops (4 nodes):",
        "  DequantizeLinear: 2",
        "  Gemm: 1",
        "  QuantizeLinear: 1",
        "initializers (5):",
        "  x_scale: float32 []",
        "  x_zp: int8 []",
        "  w_scale: float32 [2]",
        "  w_zp: int8 [2]",
        "  w_q: int8 [2, 4]",
        "quantization (3 QDQ nodes):",
        "  QuantizeLinear x -> x_q: scale 0.5, zero_point 3 (int8)",
        "  DequantizeLinear x_q -> x_dq: scale 0.5, zero_point 3 (int8)",
        "  DequantizeLinear w_q -> w: scale [0.1, 0.2], zero_point [0, 0] (int8), axis 0",
    ]


def _int_vector(builder, start, values):
    start(builder, len(values))
    for value in reversed(values):
        builder.PrependInt32(value)
    return builder.EndVector()


def _float_vector(builder, start, values):
    start(builder, len(values))
    for value in reversed(values):
        builder.PrependFloat32(value)
    return builder.EndVector()


def _long_vector(builder, start, values):
    start(builder, len(values))
    for value in reversed(values):
        builder.PrependInt64(value)
    return builder.EndVector()


def build_tflite() -> bytes:
    """A one-op model: float input -> QUANTIZE -> int8 output with scale 0.25, zero point -3."""
    b = flatbuffers.Builder(1024)
    names = [b.CreateString("input"), b.CreateString("input_int8")]
    tflite.QuantizationParametersStart(b)
    empty_quant = tflite.QuantizationParametersEnd(b)
    scale = _float_vector(b, tflite.QuantizationParametersStartScaleVector, [0.25])
    zero = _long_vector(b, tflite.QuantizationParametersStartZeroPointVector, [-3])
    tflite.QuantizationParametersStart(b)
    tflite.QuantizationParametersAddScale(b, scale)
    tflite.QuantizationParametersAddZeroPoint(b, zero)
    int8_quant = tflite.QuantizationParametersEnd(b)
    tensors = []
    for name, kind, quant in [(names[0], tflite.TensorType.FLOAT32, empty_quant),
                              (names[1], tflite.TensorType.INT8, int8_quant)]:
        shape = _int_vector(b, tflite.TensorStartShapeVector, [1, 4])
        tflite.TensorStart(b)
        tflite.TensorAddShape(b, shape)
        tflite.TensorAddType(b, kind)
        tflite.TensorAddBuffer(b, 0)
        tflite.TensorAddName(b, name)
        tflite.TensorAddQuantization(b, quant)
        tensors.append(tflite.TensorEnd(b))
    op_inputs = _int_vector(b, tflite.OperatorStartInputsVector, [0])
    op_outputs = _int_vector(b, tflite.OperatorStartOutputsVector, [1])
    tflite.OperatorStart(b)
    tflite.OperatorAddOpcodeIndex(b, 0)
    tflite.OperatorAddInputs(b, op_inputs)
    tflite.OperatorAddOutputs(b, op_outputs)
    operator = tflite.OperatorEnd(b)
    tflite.SubGraphStartTensorsVector(b, len(tensors))
    for tensor in reversed(tensors):
        b.PrependUOffsetTRelative(tensor)
    tensor_vector = b.EndVector()
    tflite.SubGraphStartOperatorsVector(b, 1)
    b.PrependUOffsetTRelative(operator)
    operator_vector = b.EndVector()
    inputs = _int_vector(b, tflite.SubGraphStartInputsVector, [0])
    outputs = _int_vector(b, tflite.SubGraphStartOutputsVector, [1])
    graph_name = b.CreateString("main")
    tflite.SubGraphStart(b)
    tflite.SubGraphAddTensors(b, tensor_vector)
    tflite.SubGraphAddOperators(b, operator_vector)
    tflite.SubGraphAddInputs(b, inputs)
    tflite.SubGraphAddOutputs(b, outputs)
    tflite.SubGraphAddName(b, graph_name)
    subgraph = tflite.SubGraphEnd(b)
    tflite.OperatorCodeStart(b)
    tflite.OperatorCodeAddDeprecatedBuiltinCode(b, tflite.BuiltinOperator.QUANTIZE)
    tflite.OperatorCodeAddBuiltinCode(b, tflite.BuiltinOperator.QUANTIZE)
    tflite.OperatorCodeAddVersion(b, 1)
    code = tflite.OperatorCodeEnd(b)
    tflite.BufferStart(b)
    buffer = tflite.BufferEnd(b)
    vectors = {}
    for key, start, item in [("codes", tflite.ModelStartOperatorCodesVector, code),
                             ("subgraphs", tflite.ModelStartSubgraphsVector, subgraph),
                             ("buffers", tflite.ModelStartBuffersVector, buffer)]:
        start(b, 1)
        b.PrependUOffsetTRelative(item)
        vectors[key] = b.EndVector()
    tflite.ModelStart(b)
    tflite.ModelAddVersion(b, 3)
    tflite.ModelAddOperatorCodes(b, vectors["codes"])
    tflite.ModelAddSubgraphs(b, vectors["subgraphs"])
    tflite.ModelAddBuffers(b, vectors["buffers"])
    b.Finish(tflite.ModelEnd(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def test_tflite_file(tmp_path, capsys):
    path = tmp_path / "m.tflite"
    path.write_bytes(build_tflite())
    assert inspect(path, capsys) == [
        "tflite model m.tflite: schema version 3, 1 subgraph",
        "subgraph 0 'main': inputs [0], outputs [1]",
        "operators (1):",
        "  0: QUANTIZE inputs [0] outputs [1]",
        "tensors (2):",
        "  0: input FLOAT32 [1, 4]",
        "  1: input_int8 INT8 [1, 4] scale 0.25 zero_point -3",
    ]


@pytest.mark.parametrize("name, expected", [
    ("missing.pth", "Expected an existing file."),
    ("notes.txt", "Expected a file ending in one of ['.npz', '.onnx', '.pt', '.pth', '.tflite']"),
])
def test_inspect_errors(tmp_path, capsys, name, expected):
    if name == "notes.txt":
        (tmp_path / name).write_text("x")
    assert main(["inspect", str(tmp_path / name)]) == 2
    assert expected in capsys.readouterr().err


PTQ_YAML = """\
algorithm: PostTrainingQuantizer
arguments: {algorithm: minmax}
input_shape: [1, 1, 8, 8]
calibration: {batches: 2}
config_list:
  - quant_types: [input, weight, output]
    op_types: [default]
"""


def test_compare_reads_the_int8_file_written_by_quantize(tmp_path, capsys):
    """`inspect --compare` recalibrates as `quantize` did (seeded), so the file agrees with the fake-quant model at
    every quantization point (> 60 dB: the same integers but for a few rounding ties of the float kernels) and both
    have the quantization's own SQNR."""
    config = tmp_path / "ptq.yaml"
    config.write_text(PTQ_YAML)
    model, data = "tests.cli.factories:digits_model", "tests.cli.factories:digits_data"
    assert main(["quantize", "--config", str(config), "--model", model, "--data", data, "--tflite", "--quiet",
                 "--out", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    path = tmp_path / "out" / "model.tflite"
    assert main(["inspect", str(path), "--compare", "--config", str(config), "--model", model, "--data", data,
                 "--quiet", "--plot", str(tmp_path / "sqnr.png")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{path}: SQNR per tensor against the float model, 64 samples"
    rows = [line.split("|")[1:-1] for line in lines[4:-1]]
    assert [(row[1].strip(), row[2].strip()) for row in rows] == [
        ("(input)", "input"), ("relu", "relu"), ("relu", "relu"), ("pool", "max_pool2d"), ("relu", "relu"),
        ("(graph)", "mean"), ("fc", "linear")]
    for row in rows:
        assert float(row[6]) > 60, row
        assert abs(float(row[5]) - float(row[4])) < 0.05, row
    assert lines[-1] == f"wrote {tmp_path / 'sqnr.png'}"
    assert (tmp_path / "sqnr.png").read_bytes()[:4] == b"\x89PNG"


def test_compare_needs_the_quantize_inputs(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "model.tflite"), "--compare", "--model", "m:f"]) == 2
    assert capsys.readouterr().err.strip() == (
        "slimkit inspect: error: inspect --compare needs --config, --data: the YAML file, model and data `slimkit "
        "quantize` was given. Received: no --config, --data")
