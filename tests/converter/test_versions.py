"""Operator versions against TensorFlow Lite's rules (``tensorflow/lite/tools/versioning/op_version.cc``,
``GetBuiltinOperatorVersion``, over the signature ``op_signature.cc`` reads): each row is an op as a file holds it
and the version that file's rules give it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slimkit import models
from slimkit.converter import TFLiteConverter
from slimkit.converter.ir import Op, QuantParams, Tensor
from slimkit.converter.versions import BY_INPUT_TYPE, RULES, op_version
from tests.converter.conftest import read_model
from tests.converter.test_int8 import quantize_with


def t(dtype="float32", shape=(1, 4), scales=0, axis=0):
    """A tensor of ``dtype`` and physical ``shape``; ``scales`` > 0 gives it that many scales on ``axis``."""
    quant = QuantParams(np.full(scales, 0.5, np.float32), np.zeros(scales, np.int64), axis) if scales else None
    return Tensor("t", shape, dtype, quant=quant)


def scaled(dtype, scale, shape=(1, 4)):
    return Tensor("t", shape, dtype, quant=QuantParams(np.array([scale], np.float32), np.zeros(1, np.int64)))


X4, W4 = (1, 8, 8, 4), (6, 3, 3, 4)
ROWS = [
    # (op, inputs, output, options, version)
    ("DEQUANTIZE", [t("int8", scales=1)], t(), {}, 2),
    ("DEQUANTIZE", [t("int8", (6, 4), scales=6)], t(shape=(6, 4)), {}, 5),
    ("DEQUANTIZE", [t("int4", (6, 4), scales=6)], t(shape=(6, 4)), {}, 6),
    ("DEQUANTIZE", [t("int16", scales=1)], t(), {}, 3),
    ("DEQUANTIZE", [t("float16")], t(), {}, 3),
    ("QUANTIZE", [t()], t("int8", scales=1), {}, 1),
    ("QUANTIZE", [t()], t("int16", scales=1), {}, 2),
    ("QUANTIZE", [t("int8", scales=1)], t("int8", scales=1), {}, 1),
    ("CONV_2D", [t(shape=X4), t(shape=W4), t(shape=(6,))], t(shape=(1, 6, 6, 6)), {}, 1),
    ("CONV_2D", [t(shape=X4), t(shape=(6, 3, 3, 2)), t(shape=(6,))], t(shape=(1, 6, 6, 6)), {}, 6),
    ("CONV_2D", [t("int8", X4, 1), t("int8", W4, 6), t("int32", (6,), 6)], t("int8", (1, 6, 6, 6), 1), {}, 3),
    ("CONV_2D", [t(shape=X4), t("int8", W4, 1), t(shape=(6,))], t(shape=(1, 6, 6, 6)), {}, 2),
    ("CONV_2D", [t(shape=X4), t("int8", W4, 6), t(shape=(6,))], t(shape=(1, 6, 6, 6)), {}, 5),
    ("CONV_2D", [t("int16", X4, 1), t("int8", W4, 6), t("int64", (6,), 6)], t("int16", (1, 6, 6, 6), 1), {}, 1),
    ("CONV_2D", [t("int16", X4, 1), t("int8", W4, 6), t("int32", (6,), 6)], t("int16", (1, 6, 6, 6), 1),
     {"QuantizedBiasType": 2}, 8),
    ("DEPTHWISE_CONV_2D", [t(shape=X4), t(shape=(1, 3, 3, 4)), t(shape=(4,))], t(shape=X4), {}, 1),
    ("DEPTHWISE_CONV_2D", [t(shape=X4), t(shape=(1, 3, 3, 4)), t(shape=(4,))], t(shape=X4),
     {"DilationHFactor": 2, "DilationWFactor": 2}, 2),
    ("DEPTHWISE_CONV_2D", [t("int8", X4, 1), t("int8", (1, 3, 3, 4), 4, 3), t("int32", (4,), 4)],
     t("int8", X4, 1), {}, 3),
    ("DEPTHWISE_CONV_2D", [t(shape=X4), t("int8", (1, 3, 3, 4), 4, 3), t(shape=(4,))], t(shape=X4), {}, 6),
    ("DEPTHWISE_CONV_2D", [t(shape=X4), t("int8", (1, 3, 3, 4), 1), t(shape=(4,))], t(shape=X4), {}, 4),
    ("FULLY_CONNECTED", [t(), t(shape=(3, 4)), t(shape=(3,))], t(shape=(1, 3)), {}, 1),
    ("FULLY_CONNECTED", [t(), t(shape=(3, 4)), None], t(shape=(1, 3)), {}, 1),
    ("FULLY_CONNECTED", [t(), t(shape=(3, 4))], t(shape=(1, 3)), {}, 6),
    ("FULLY_CONNECTED", [t(), t(shape=(3, 4)), t(shape=(3,))], t(shape=(1, 3)), {"KeepNumDims": True}, 5),
    ("FULLY_CONNECTED", [t("int8", scales=1), t("int8", (3, 4), 3), t("int32", (3,), 3)], t("int8", (1, 3), 1),
     {}, 4),
    ("FULLY_CONNECTED", [t("int8", scales=1), t("int8", (3, 4), 3), t("int32", (3,), 3)], t("int8", (1, 3), 1),
     {"KeepNumDims": True}, 5),
    ("FULLY_CONNECTED", [t("int16", scales=1), t("int8", (3, 4), 3), t("int64", (3,), 3)], t("int16", (1, 3), 1),
     {}, 1),
    ("FULLY_CONNECTED", [t(), t("int8", (3, 4), 1), t(shape=(3,))], t(shape=(1, 3)), {}, 3),
    ("FULLY_CONNECTED", [t(), t("int8", (3, 4), 1), t(shape=(3,))], t(shape=(1, 3)),
     {"AsymmetricQuantizeInputs": True}, 9),
    ("FULLY_CONNECTED", [t(), t("int8", (3, 4), 3), t(shape=(3,))], t(shape=(1, 3)),
     {"AsymmetricQuantizeInputs": True}, 12),
    ("TRANSPOSE_CONV", [t("int32", (4,)), t(shape=(6, 3, 3, 4)), t(shape=X4), t(shape=(6,))], t(shape=X4), {}, 3),
    ("TRANSPOSE_CONV", [t("int32", (4,)), t("int8", (6, 3, 3, 4), 6), t("int8", X4, 1)], t("int8", X4, 1), {}, 2),
    ("TRANSPOSE_CONV", [t("int32", (4,)), t(shape=(6, 3, 3, 4)), t(shape=X4), t(shape=(6,))], t(shape=X4),
     {"FusedActivationFunction": 1}, 4),
    ("ADD", [t(), t()], t(), {}, 1),
    ("ADD", [t("int8", scales=1), t("int8", scales=1)], t("int8", scales=1), {}, 2),
    ("ADD", [t("int16", scales=1), t("int16", scales=1)], t("int16", scales=1), {"PotScaleInt16": False}, 3),
    ("ADD", [t("int16", scales=1), t("int16", scales=1)], t("int16", scales=1), {}, 1),
    ("ADD", [t("int16"), t("int16")], t("int16"), {}, 5),
    ("ADD", [t("int64"), t("int64")], t("int64"), {}, 4),
    ("SUB", [t("int8", scales=1), t("int8", scales=1)], t("int8", scales=1), {}, 2),
    ("SUB", [t("int16", scales=1), t("int16", scales=1)], t("int16", scales=1), {"PotScaleInt16": False}, 5),
    ("SUB", [t(shape=(1, 2, 3, 4, 5)), t(shape=(5,))], t(shape=(1, 2, 3, 4, 5)), {}, 3),
    ("SUB", [t(shape=(1, 2, 3, 4, 5)), t(shape=(1, 2, 3, 4, 5))], t(shape=(1, 2, 3, 4, 5)), {}, 1),
    ("MUL", [scaled("int8", 0.1), scaled("int8", 0.1)], scaled("int8", 0.05), {}, 2),
    ("MUL", [scaled("int8", 1.0), scaled("int8", 1.0)], scaled("int8", 0.5), {}, 3),
    ("MUL", [t("int16", scales=1), t("int16", scales=1)], t("int16", scales=1), {}, 4),
    ("MUL", [t("int16"), t("int16")], t("int16"), {}, 7),
    ("MUL", [t("int64"), t("int64")], t("int64"), {}, 5),
    ("MUL", [t(), t()], t(), {}, 1),
    ("DIV", [t(shape=(1, 2, 3, 4, 5)), t(shape=(5,))], t(shape=(1, 2, 3, 4, 5)), {}, 2),
    ("MAXIMUM", [t("int8", scales=1), t("int8", scales=1)], t("int8", scales=1), {}, 2),
    ("MINIMUM", [t("int16", scales=1), t("int16", scales=1)], t("int16", scales=1), {}, 4),
    ("AVERAGE_POOL_2D", [t("int8", X4, 1)], t("int8", X4, 1), {}, 2),
    ("MAX_POOL_2D", [t("int16", X4, 1)], t("int16", X4, 1), {}, 3),
    ("LOGISTIC", [t("int8", scales=1)], t("int8", scales=1), {}, 2),
    ("TANH", [t("int16", scales=1)], t("int16", scales=1), {}, 3),
    ("SOFTMAX", [t("int8", scales=1)], t("int8", scales=1), {}, 2),
    ("SOFTMAX", [t("int16", scales=1)], t("int16", scales=1), {}, 3),
    ("MEAN", [t("int8", X4, 1), t("int32", (2,))], t("int8", (1, 4), 1), {}, 2),
    ("SUM", [t("int8", X4, 1), t("int32", (2,))], t("int8", (1, 4), 1), {}, 2),
    ("REDUCE_MAX", [t("int8", X4, 1), t("int32", (2,))], t("int8", (1, 4), 1), {}, 2),
    ("CONCATENATION", [t("int8", scales=1), t("int8", scales=1)], t("int8", (1, 8), 1), {}, 2),
    ("RELU", [t("int8", scales=1)], t("int8", scales=1), {}, 2),
    ("RELU6", [t("int8", scales=1)], t("int8", scales=1), {}, 2),
    ("LEAKY_RELU", [t("int8", scales=1)], t("int8", scales=1), {}, 1),
    ("LEAKY_RELU", [t("int16", scales=1)], t("int16", scales=1), {}, 2),
    ("GELU", [t("int8", scales=1)], t("int8", scales=1), {}, 2),
    ("HARD_SWISH", [t("int8", scales=1)], t("int8", scales=1), {}, 1),
    ("EXP", [t("int8", scales=1)], t("int8", scales=1), {}, 2),
    ("PAD", [t("int8", X4, 1), t("int32", (4, 2))], t("int8", X4, 1), {}, 2),
    ("PAD", [t(shape=(1, 2, 3, 4, 5)), t("int32", (5, 2))], t(shape=(1, 2, 3, 4, 5)), {}, 4),
    ("TRANSPOSE", [t("int8", X4, 1), t("int32", (4,))], t("int8", X4, 1), {}, 2),
    ("TRANSPOSE", [t(shape=(1, 2, 3, 4, 5)), t("int32", (5,))], t(shape=(1, 2, 3, 4, 5)), {}, 4),
    ("TRANSPOSE", [t(shape=(1, 2, 3, 4, 5, 6)), t("int32", (6,))], t(shape=(1, 2, 3, 4, 5, 6)), {}, 6),
    ("RESHAPE", [t("int8", scales=1), t("int32", (1,))], t("int8", (4,), 1), {}, 1),
    ("STRIDED_SLICE", [t("int8", X4, 1)] + [t("int32", (4,))] * 3, t("int8", X4, 1), {}, 2),
    ("STRIDED_SLICE", [t(shape=(1, 2, 3, 4, 5))] + [t("int32", (5,))] * 3, t(shape=(1, 2, 3, 4, 5)), {}, 4),
    ("SLICE", [t("int8", X4, 1), t("int32", (4,)), t("int32", (4,))], t("int8", X4, 1), {}, 2),
    ("SPLIT", [t("int32", ()), t("int8", X4, 1)], t("int8", X4, 1), {}, 2),
    ("SPLIT_V", [t("int8", X4, 1), t("int32", (2,)), t("int32", ())], t("int8", X4, 1), {}, 2),
    ("GATHER", [t("int8", scales=1), t("int32", (2,))], t("int8", scales=1), {}, 2),
    ("GATHER", [t(), t("int32", (2,))], t(), {"BatchDims": 1}, 5),
    ("BATCH_MATMUL", [t("int8", scales=1), t("int8", scales=1)], t("int8", scales=1), {}, 2),
    ("BATCH_MATMUL", [t(), t()], t(), {}, 1),
    ("BATCH_MATMUL", [t(), t("int8", scales=1)], t(), {"AsymmetricQuantizeInputs": True}, 4),
    ("BATCH_MATMUL", [t(), t("int8", scales=1)], t(), {"AsymmetricQuantizeInputs": False}, 1),
    ("BROADCAST_TO", [t(), t("int32", (2,))], t(), {}, 2),
    ("BROADCAST_TO", [t("int8", scales=1), t("int32", (2,))], t("int8", scales=1), {}, 3),
    ("RESIZE_BILINEAR", [t(shape=X4), t("int32", (2,))], t(shape=X4), {"HalfPixelCenters": True}, 3),
    ("RESIZE_BILINEAR", [t("int8", X4, 1), t("int32", (2,))], t("int8", X4, 1), {}, 2),
    ("RESIZE_NEAREST_NEIGHBOR", [t(shape=X4), t("int32", (2,))], t(shape=X4), {"AlignCorners": True}, 3),
    ("CAST", [t("int8")], t(), {}, 3),
    ("CAST", [t("int32")], t(), {}, 1),
    ("ARG_MAX", [t("int8", scales=1), t("int32", ())], t("int32"), {}, 2),
    ("LESS", [t("int8", scales=1), t("int8", scales=1)], t("bool"), {}, 2),
    ("UNIDIRECTIONAL_SEQUENCE_LSTM", [t(shape=(1, 5, 4)), None, t("int8", (3, 4), 1)], t(shape=(1, 5, 3)),
     {"AsymmetricQuantizeInputs": True}, 3),
    ("UNIDIRECTIONAL_SEQUENCE_LSTM", [t(shape=(1, 5, 4)), t(shape=(3, 4)), t(shape=(3, 4))], t(shape=(1, 5, 3)),
     {}, 1),
    ("BIDIRECTIONAL_SEQUENCE_LSTM", [t(shape=(1, 5, 4)), t("int8", (3, 4), 1)], t(shape=(1, 5, 3)), {}, 2),
    ("UNPACK", [t("int8", scales=1)], t("int8", (4,), 1), {}, 2),
    ("UNPACK", [t("int16", scales=1)], t("int16", (4,), 1), {}, 4),
    ("PACK", [t("int8", scales=1), t("int8", scales=1)], t("int8", (2, 1, 4), 1), {}, 2),
    ("PACK", [t(), t()], t(shape=(2, 1, 4)), {}, 1),
    ("PADV2", [t("int8", X4, 1), t("int32", (4, 2)), t("int8", (), 1)], t("int8", X4, 1), {}, 2),
    ("ABS", [t("int8", scales=1)], t("int8", scales=1), {}, 2),
    ("ABS", [t("int16", scales=1)], t("int16", scales=1), {}, 3),
    ("ABS", [t("int16")], t("int16"), {}, 4),
    ("ABS", [t("int32")], t("int32"), {}, 5),
    ("TOPK_V2", [t("int8", scales=1), t("int32", ())], t("int8", scales=1), {}, 2),
    ("TOPK_V2", [t(), t("int32", ())], t(), {}, 1),
    ("GATHER_ND", [t("bool"), t("int32", (2, 1))], t("bool"), {}, 5),
    ("GATHER_ND", [t("int8", scales=1), t("int32", (2, 1))], t("int8", scales=1), {}, 1),
    ("EQUAL", [t("int8", scales=1), t("int8", scales=1)], t("bool"), {}, 2),
    ("FLOOR_DIV", [t(), t()], t(), {}, 2),
    ("REVERSE_V2", [t("int8", scales=1), t("int32", (1,))], t("int8", scales=1), {}, 3),
    ("SIGN", [t("int32")], t("int32"), {}, 2),
]


@pytest.mark.parametrize("code,inputs,output,options,version", ROWS,
                         ids=[f"{r[0]}-{i}" for i, r in enumerate(ROWS)])
def test_version_follows_tflite_op_version_rules(code, inputs, output, options, version):
    assert op_version(Op(code, inputs, [output], dict(options))) == version


def test_every_rule_is_exercised_by_a_row():
    assert set(RULES) - {row[0] for row in ROWS} == set()
    assert not set(RULES) & set(BY_INPUT_TYPE)


def test_int8_file_writes_tflite_versions(tmp_path):
    """The int8 digits file: per-tensor DEQUANTIZE at version 2 (was 1), int8 CONV_2D 3, FULLY_CONNECTED 4 ...,
    and LiteRT runs it (the converter's validation loads it)."""
    torch.manual_seed(0)
    model, x, _ = quantize_with(models.DigitsCNN(), (1, 8, 8))
    path = tmp_path / "digits.tflite"
    TFLiteConverter(model, x, path).convert()
    file, _ = read_model(path)
    names = {v: k for k, v in vars(__import__("tflite").BuiltinOperator).items() if not k.startswith("_")}
    versions = {names[file.OperatorCodes(i).BuiltinCode()]: file.OperatorCodes(i).Version()
                for i in range(file.OperatorCodesLength())}
    expected = {"QUANTIZE": 1, "DEQUANTIZE": 2, "CONV_2D": 3, "DEPTHWISE_CONV_2D": 3, "FULLY_CONNECTED": 4,
                "MAX_POOL_2D": 2, "AVERAGE_POOL_2D": 2, "MEAN": 2, "RESHAPE": 1, "ADD": 2}
    assert versions == {code: expected[code] for code in versions}, versions
    assert {"QUANTIZE", "DEQUANTIZE", "CONV_2D", "FULLY_CONNECTED"} <= set(versions)
