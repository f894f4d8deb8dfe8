"""Helpers for converter tests: convert, run in LiteRT, compare with PyTorch."""

from __future__ import annotations

import pytest
import tflite

from slimkit.converter import TFLiteConverter, verify


def convert_and_verify(model, inputs, tmp_path, rtol=1e-5, name="m.tflite", **options):
    model.eval()
    path = tmp_path / name
    conv = TFLiteConverter(model, inputs, path, **options)
    conv.convert()
    result = verify(model, inputs, path, **options)
    assert result.max_rel_error <= rtol, (result, [op.code for op in conv.graph.ops])
    assert repeated_names(path) == [], path
    return path, conv


def repeated_names(path) -> list[str]:
    """The tensor names a written file holds more than once (ai-edge-quantizer refuses such a file)."""
    _, sg = read_model(path)
    names = [sg.Tensors(i).Name().decode() for i in range(sg.TensorsLength())]
    return sorted({name for name in names if names.count(name) > 1})


def op_codes(path) -> list[str]:
    """The builtin operator names of the ops in a written file, in order."""
    with open(path, "rb") as f:
        buf = f.read()
    model = tflite.Model.GetRootAs(buf, 0)
    names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
    sg = model.Subgraphs(0)
    codes = [model.OperatorCodes(i).BuiltinCode() for i in range(model.OperatorCodesLength())]
    return [names[codes[sg.Operators(i).OpcodeIndex()]] for i in range(sg.OperatorsLength())]


@pytest.fixture
def check(tmp_path):
    def run(model, *inputs, rtol=1e-5, **options):
        return convert_and_verify(model, inputs if len(inputs) > 1 else inputs[0], tmp_path, rtol=rtol, **options)
    return run


def read_model(path):
    """``(model, subgraph)`` of a written file, parsed with the ``tflite`` package."""
    with open(path, "rb") as f:
        buf = f.read()
    model = tflite.Model.GetRootAs(buf, 0)
    return model, model.Subgraphs(0)


def conv_options(path) -> list[tuple[str, int, int]]:
    """``(op, padding, fused_activation)`` of each CONV_2D / DEPTHWISE_CONV_2D in the file."""
    model, sg = read_model(path)
    out = []
    for i, code in enumerate(op_codes(path)):
        if code not in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            continue
        table = sg.Operators(i).BuiltinOptions()
        opts = tflite.Conv2DOptions() if code == "CONV_2D" else tflite.DepthwiseConv2DOptions()
        opts.Init(table.Bytes, table.Pos)
        out.append((code, opts.Padding(), opts.FusedActivationFunction()))
    return out
