"""Every zoo structure, whole-graph quantized (post-training minmax on random init, and a few QAT steps on the digits),
converted to int8 and run in LiteRT (XNNPACK): the file's outputs equal ``emulate_integer()``'s element for element."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from slimkit.algorithms.quantization import PostTrainingQuantizer
from slimkit.converter import TFLiteConverter
from slimkit.converter.verify import run_tflite
from slimkit.utils.litert import delegate_partitions
from tests.converter.conftest import op_codes
from tests.int8zoo.harness import WHOLE_GRAPH, float_boundaries, measure
from tests.int8zoo.structures import STRUCTURES

#: int8 ops that must be in a structure's file (each was a float island before: the file then left the structure's
#: point untested)
INT8_OPS = {
    "inplace_methods": {"ADD", "MUL", "SUB"},  # x.add_(y) with its result dropped
    "concat_split": {"SPLIT", "STRIDED_SLICE", "CONCATENATION"},  # torch.chunk (even), torch.split (uneven)
    "sigmoid_gate": {"SPLIT", "LOGISTIC", "MUL"},
    "upsample_nearest": {"RESIZE_NEAREST_NEIGHBOR", "CONCATENATION"},  # F.interpolate and nn.Upsample
    "shared_module": {"CONV_2D"},
    "transformer": {"SPLIT", "SOFTMAX", "GELU", "BATCH_MATMUL"},  # q, k, v = qkv.unbind(0): a SPLIT
    "gqa_attention": {"CONCATENATION", "TRANSPOSE"},  # the GQA repeat of keys and values, on their grid
    "padding_modes": {"MIRROR_PAD", "GATHER"},  # reflect, replicate and circular padding
    "pool_variants": {"AVERAGE_POOL_2D", "MAX_POOL_2D"},
    "upsample_bilinear": {"RESIZE_BILINEAR", "ADD"},
}

#: ops that must not be in a structure's file: fused into the op before them on every call (XNNPACK-friendly)
FUSED_OPS = {"shared_module": {"RELU"}, "functional_layers": {"RELU"}, "mlp_forms": {"RELU"}}

#: structures whose file keeps float ops between int8 ones, and the most it may keep: the recurrent cells (LiteRT has no
#: int8 LSTM / GRU kernel), LayerNorm's statistics (no int8 RSQRT), attention through ``F.scaled_dot_product_attention``
#: (float SOFTMAX / BATCH_MATMUL on its masked scores, the causal mask an ADD), ``F.hardsigmoid`` (no int8 kernel:
#: ADD 3, RELU6, MUL 1/6 in float) and hard-swish (float HARD_SWISH, as XNNPACK takes it). Every other structure's
#: file quantizes only its inputs and dequantizes only its outputs.
FLOAT_ISLANDS = {
    "hardswish_mobile": {"ADD", "HARD_SWISH", "MUL"},
    "lstm": {"BROADCAST_TO", "STRIDED_SLICE", "UNIDIRECTIONAL_SEQUENCE_LSTM"},
    "gru": {"ADD", "CONCATENATION", "FULLY_CONNECTED", "LOGISTIC", "MEAN", "MUL", "RESHAPE", "SPLIT", "STRIDED_SLICE",
            "SUB", "TANH"},
    "transformer": {"ADD", "MEAN", "MUL", "RSQRT", "SUB"},
    "gqa_attention": {"ADD", "BATCH_MATMUL", "MUL", "SOFTMAX"},
}

#: int8 ops XNNPACK leaves to LiteRT's own kernels in a structure's file (each splits its partitions); every other
#: structure runs as one XNNPACK partition
UNDELEGATED = {
    "upsample_nearest": {"RESIZE_NEAREST_NEIGHBOR"}, "pool_variants": {"AVERAGE_POOL_2D"},
    "padding_modes": {"MIRROR_PAD", "GATHER"}, "transformer": {"BATCH_MATMUL", "SOFTMAX", "GELU"},
    "lstm": {"BROADCAST_TO", "UNIDIRECTIONAL_SEQUENCE_LSTM"},
}

#: ops that must run in float between int8 tensors (XNNPACK takes them in float only), emulated exactly all the same
FLOAT_OPS = {"hardswish_mobile": {"HARD_SWISH"}}


def _check(name: str, mode: str, tmp_path) -> None:
    result = measure(name, mode, tmp_path)
    assert INT8_OPS.get(name, set()) <= set(result.ops), result.ops
    assert not FUSED_OPS.get(name, set()) & set(result.ops), result.ops
    assert FLOAT_OPS.get(name, set()) <= set(result.float_ops), result.float_ops
    assert (result.exact, result.max_steps) == (result.outputs, 0), result
    path = tmp_path / f"{name}_{mode}.tflite"
    assert set(result.float_ops) <= FLOAT_ISLANDS.get(name, set()), result.float_ops
    if name not in FLOAT_ISLANDS:
        assert float_boundaries(path) == [], op_codes(path)
    partitions, undelegated = delegate_partitions(model_path=str(path))
    assert set(undelegated) <= UNDELEGATED.get(name, set()), undelegated
    assert partitions == 1 or name in UNDELEGATED, partitions


def test_the_zoo_is_broad():
    assert len(STRUCTURES) >= 20


@pytest.mark.parametrize("name", list(STRUCTURES))
def test_post_training_int8_file_equals_the_emulation(name, tmp_path):
    _check(name, "ptq", tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(STRUCTURES))
def test_qat_int8_file_equals_the_emulation(name, tmp_path):
    _check(name, "qat", tmp_path)


class _Relu(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return F.relu(x), self.head(x[..., :4])


@pytest.mark.parametrize("low, high", [(-1.3, 2.0), (-0.2, 3.1), (-3.0, 0.5)])
def test_standalone_relu_requantizes_as_litert_on_every_int8_input(tmp_path, low, high):
    """A RELU op with its own output grid (not fused into the op before it): all 256 int8 inputs."""
    x = torch.linspace(low, high, 256).reshape(1, 256)
    model = _Relu().eval()
    quantizer = PostTrainingQuantizer(model, WHOLE_GRAPH, algorithm="minmax", dummy_input=x)
    quantizer.compress()
    quantizer.calibrate([x])
    path = tmp_path / "relu.tflite"
    TFLiteConverter(model, x, path).convert()
    assert op_codes(path)[:2] == ["QUANTIZE", "RELU"]
    grid = quantizer.graph_params["input/0"]
    feed = ((np.arange(-128, 128) - grid.zero_point[0]) * grid.scale[0]).astype(np.float32).reshape(1, 256)
    got = next(out for out in run_tflite(path, [feed]) if out.shape == (1, 256))
    with torch.no_grad(), quantizer.emulate_integer():
        expected = model(torch.from_numpy(feed))[0].numpy()
    assert quantizer.graph_params["/0/relu/0"].scale[0] != grid.scale[0]
    np.testing.assert_array_equal(got, expected)


def test_a_concatenation_spanned_by_one_input_takes_that_input_s_grid():
    """The union of the inputs' ranges is the first input's: the concatenation reuses its parameters (recomputed from
    the range, the scale could differ in the last bits, and XNNPACK refuses a CONCATENATION whose input and output
    scales differ at all)."""

    class Cat(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            return self.head(torch.cat([x, torch.relu(x) * 0.5], 1))

    x = torch.randn(16, 4)
    model = Cat().eval()
    quantizer = PostTrainingQuantizer(model, WHOLE_GRAPH, algorithm="minmax", dummy_input=x[:1])
    quantizer.compress()
    quantizer.calibrate([x])
    assert quantizer.graph_params["/0/cat/0"] is quantizer.graph_params["input/0"]


def test_grids_are_the_same_only_to_the_last_bit():
    from slimkit.converter.int8_ops import same_params
    from slimkit.converter.ir import QuantParams

    scale = np.float32(0.009301547892391682)
    grid = QuantParams(np.array([scale]), np.array([-128]))
    assert same_params(grid, QuantParams(np.array([scale]), np.array([-128])))
    assert not same_params(grid, QuantParams(np.array([np.nextafter(scale, np.float32(1))]), np.array([-128])))
    assert not same_params(grid, QuantParams(np.array([scale]), np.array([-127])))
