"""Converters added for TinyNeuralNetwork's op suite: each op alone, converted once, run in LiteRT on three inputs
and compared with PyTorch (exact for integer / bool results and data movement, float tolerance for arithmetic)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slimkit.converter import TFLiteConverter, verify
from slimkit.errors import UnsupportedModelError, UnsupportedOpError
from tests.converter.conftest import op_codes


def randn(*shape):
    return lambda g: torch.randn(*shape, generator=g)


def randint(low, high, *shape, dtype=torch.int64):
    return lambda g: torch.randint(low, high, shape, generator=g, dtype=dtype)


def mask(*shape):
    return lambda g: torch.randn(*shape, generator=g) > 0


def fn(f, *modules):
    class Fn(nn.Module):
        def __init__(self):
            super().__init__()
            self.mods = nn.ModuleList(modules)

        def forward(self, *x):
            return f(self, *x)

    return Fn()


B1, B2 = torch.randn(4, 3, 4), torch.randn(4, 4, 5)

# name: (model, input makers, TFLite ops the file must hold)
CASES = {
    "sign": (fn(lambda s, x, i: (torch.sign(x), torch.sign(i))), [randn(2, 3, 5), lambda g: torch.randint(
        -2 ** 40, 2 ** 40, (7,), generator=g) * torch.tensor([1, 0, 1, 1, 1, 1, 1])], {"SIGN", "LESS"}),
    "round": (fn(lambda s, x: torch.round(x * 4)), [randn(2, 3, 5)], {"ROUND"}),
    "floor_divide": (fn(lambda s, x, y: (torch.floor_divide(x, 4), torch.floor_divide(x, y))),
                     [randint(-50, 50, 3, 4), randint(1, 7, 4)], {"FLOOR_DIV"}),
    "remainder": (fn(lambda s, x, i: (torch.remainder(x, 1.5), torch.remainder(i, 2 ** 33 + 1))),
                  [randn(3, 4), randint(-2 ** 40, 2 ** 40, 5)], {"FLOOR_MOD"}),
    "pow_tensor": (fn(lambda s, x, e: torch.pow(x.abs() + 0.5, e)), [randn(3, 4), randint(0, 4, 4)], {"POW"}),
    "greater_aliases": (fn(lambda s, x, y: (torch.greater(x, y), torch.less_equal(x, 0.3), torch.not_equal(x, y))),
                        [randn(3, 4), randint(-1, 2, 3, 4)], {"GREATER", "LESS_EQUAL", "NOT_EQUAL"}),
    "add_float_int64": (fn(lambda s, x, y: (x + y, x * y, y - x)), [randn(3, 4), randint(-5, 5, 3, 4)], {"CAST"}),
    "glu": (fn(lambda s, x: F.glu(x, 1)), [randn(2, 6, 3)], {"LOGISTIC"}),
    "std_var": (fn(lambda s, x: (torch.std(x), torch.var(x, dim=[1, 2], keepdim=True), torch.std(x, 1, False))),
                [randn(2, 3, 5)], {"SQRT", "SUM"}),
    "prod_min_max": (fn(lambda s, x: (torch.prod(x), torch.min(x), torch.max(x), torch.min(x, 1)[0],
                                      torch.prod(x, 2))), [randn(2, 3, 5)], {"REDUCE_PROD", "REDUCE_MIN"}),
    "logical": (fn(lambda s, x, y: (torch.bitwise_and(x, y), x | y, x ^ y, ~x, torch.logical_not(y))),
                [mask(2, 3), mask(2, 3)], {"LOGICAL_AND", "LOGICAL_OR", "LOGICAL_NOT"}),
    "int_bitwise": (fn(lambda s, x, y: (~x, x ^ y)), [randint(-9, 9, 5, dtype=torch.int32),
                                                       randint(-9, 9, 5, dtype=torch.int32)], {"BITWISE_XOR"}),
    "cumsum": (fn(lambda s, x: (torch.cumsum(x, 1), torch.cumsum(x, -1))), [randn(2, 4, 3)], {"CUMSUM"}),
    "flip": (fn(lambda s, x: torch.flip(x, [0, 2])), [randn(2, 3, 4)], {"REVERSE_V2"}),
    "flip_nhwc": (fn(lambda s, x: torch.flip(s.mods[0](x), [1, 3]), nn.Conv2d(3, 4, 1)), [randn(1, 3, 4, 5)],
                  {"REVERSE_V2"}),
    "roll": (fn(lambda s, x: (torch.roll(x, 2), torch.roll(x, [-1, 1], [0, 2]), torch.roll(x, 3, 1))),
             [randn(2, 3, 5)], {"CONCATENATION"}),
    "topk": (fn(lambda s, x: (*x.topk(2), *x.topk(3, dim=1, largest=False))), [randn(2, 4, 5)], {"TOPK_V2"}),
    "gather": (fn(lambda s, x, i: (torch.gather(x, 0, i), torch.gather(x, -1, i), torch.gather(x, 1, i[:2]))),
               [randn(6, 5), randint(0, 5, 3, 2)], {"GATHER_ND"}),
    "scatter": (fn(lambda s, x, i: (torch.zeros(4, 8).scatter(1, i, x[:, :2]), torch.zeros(4, 8).scatter_(1, i, 2.5),
                                    torch.ones(4, 8).scatter_add(1, i, x))), [randn(4, 3), randint(0, 8, 4, 1)],
                {"SCATTER_ND", "SELECT_V2"}),
    "index_put": (fn(lambda s, v, i: (torch.ones(6, 5).index_put((i,), v[:1]),
                                      torch.ones(6, 6).index_put((i, i), v[:, 0]),
                                      torch.zeros(6).index_put((torch.tensor([4, 1, -1]),), v[:, 0]))),
                  [randn(3, 5), lambda g: torch.randperm(6, generator=g)[:3]], {"SCATTER_ND"}),
    "index_tensors": (fn(lambda s, x: (x[[3, 4], [2, 3]], x[[-1, -2]], x[:, [1, 2], [0, -1]], x[[1], [2], [0, 3]])),
                      [randn(5, 4, 6)], {"GATHER_ND"}),
    "index_dynamic": (fn(lambda s, x, i, j: (x[i, i], x[i], x[:, j], torch.index_select(x, 1, i % 6))),
                      [randn(6, 6), randint(-6, 6, 4), randint(-6, 6, 2, 3)], {"GATHER_ND", "GATHER", "FLOOR_MOD"}),
    "copy": (fn(lambda s, x: torch.empty(2, 3, 4).copy_(x)), [randint(0, 9, 4, dtype=torch.int32)],
             {"BROADCAST_TO", "CAST"}),
    "pixel_shuffle": (fn(lambda s, x: (F.pixel_shuffle(x, 2), F.pixel_unshuffle(F.pixel_shuffle(x, 2), 2))),
                      [randn(1, 8, 3, 5)], {"TRANSPOSE"}),
    "repeat_interleave": (fn(lambda s, x: (torch.repeat_interleave(x, 2), torch.repeat_interleave(x, 3, -1))),
                          [randn(3, 2)], {"BROADCAST_TO"}),
    "repeat_interleave_tensor": (fn(lambda s, x: (torch.repeat_interleave(x, torch.tensor([3, 1, 2]), 0) * 2,
                                                  torch.repeat_interleave(x, torch.tensor([2, 1, 0, 1]), -1))),
                                 [randn(3, 4)], {"GATHER"}),
    "mish": (fn(lambda s, x: F.mish(x * 10)), [randn(2, 30)], {"TANH"}),
    "broadcast_tensors": (fn(lambda s, x, y: torch.broadcast_tensors(x, y)), [randn(1, 1, 4), randn(3, 4)],
                          {"BROADCAST_TO"}),
    "unfold": (nn.Unfold(3, 2, 1, 2), [randn(1, 2, 9, 8)], {"GATHER_ND"}),
    "fold": (nn.Fold((7, 6), (3, 2), 1, 1, 2), [randn(2, 12, 16)], {"SCATTER_ND"}),
    "instance_norm": (nn.InstanceNorm2d(3, affine=True), [randn(2, 3, 5, 4)], {"RSQRT"}),
    "group_norm": (nn.GroupNorm(2, 6), [randn(2, 6, 4, 3)], {"RSQRT"}),
    "conv3d": (nn.Conv3d(3, 4, 3, stride=2, padding=1), [randn(1, 3, 5, 6, 7)], {"CONV_3D"}),
    "conv3d_same": (nn.Conv3d(3, 4, (3, 2, 3), padding="same", bias=False), [randn(1, 3, 4, 5, 6)], {"CONV_3D"}),
    "conv_transpose3d": (nn.ConvTranspose3d(3, 2, 3, 2, 1, output_padding=1), [randn(1, 3, 3, 4, 5)],
                         {"CONV_3D_TRANSPOSE"}),
    "group_conv_transpose": (nn.ConvTranspose2d(4, 6, 3, 2, 1, output_padding=1, groups=2), [randn(1, 4, 5, 6)],
                             {"TRANSPOSE_CONV", "SPLIT"}),
    "addbmm": (fn(lambda s, x: torch.addbmm(x, B1, B2, beta=0.5, alpha=2.0)), [randn(3, 5)], {"BATCH_MATMUL"}),
    "unbind_int64": (fn(lambda s, x: x.unbind(0)), [randint(0, 1000, 2, 3)], {"STRIDED_SLICE"}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_op_matches_pytorch_on_several_inputs(name, tmp_path):
    model, makers, codes = CASES[name]
    model.eval()
    g = torch.Generator().manual_seed(0)
    draws = [tuple(make(g) for make in makers) for _ in range(3)]
    path = tmp_path / "m.tflite"
    TFLiteConverter(model, draws[0], path).convert()
    assert codes <= set(op_codes(path))
    for inputs in draws:  # the cases' own draws (verify's random ones would repeat index_put's indices)
        result = verify(model, inputs, path, draws=0)
        assert result.max_rel_error <= 1e-5, (name, result)


class Outputs(nn.Module):
    """The sequence output and ``h_n`` of a recurrent layer (an unused ``c_n`` keeps the LSTM a sequence op)."""

    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x):
        out, state = self.rnn(x)
        return out, state[0] if isinstance(state, tuple) else state


@pytest.mark.parametrize("rnn, fcs", [(nn.GRU(4, 5, num_layers=2), 2 * (3 + 3 * 2)),
                                      (nn.LSTM(4, 5, bidirectional=True, batch_first=True), 2 * (4 + 4 * 2))])
def test_separated_rnn_gate_calc(rnn, fcs, tmp_path):
    # one FULLY_CONNECTED per gate for the input projection and for each step after the first (3 steps)
    model, path = Outputs(rnn).eval(), tmp_path / "m.tflite"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, 4, generator=g)
    TFLiteConverter(model, x, path, unroll_rnn=True, separated_rnn_gate_calc=True).convert()
    codes = op_codes(path)
    assert codes.count("FULLY_CONNECTED") == fcs and "SPLIT" not in codes
    for inputs in (x, torch.randn(3, 3, 4, generator=g)):
        assert verify(model, inputs, path, unroll_rnn=True).max_rel_error <= 1e-5


@pytest.mark.parametrize("batch_first", [False, True])
def test_map_bilstm_to_lstm(batch_first, tmp_path):
    model = Outputs(nn.LSTM(4, 5, num_layers=2, bidirectional=True, batch_first=batch_first)).eval()
    path = tmp_path / "m.tflite"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, generator=g)
    TFLiteConverter(model, x, path, map_bilstm_to_lstm=True).convert()
    codes = op_codes(path)
    assert codes.count("UNIDIRECTIONAL_SEQUENCE_LSTM") == 4 and "BIDIRECTIONAL_SEQUENCE_LSTM" not in codes
    assert codes.count("REVERSE_V2") == 4
    for inputs in (x, torch.randn(2, 3, 4, generator=g)):
        assert verify(model, inputs, path).max_rel_error <= 1e-5


def test_missing_outputs_as_constants(tmp_path):
    model, x = fn(lambda s, t: (t.relu(), torch.zeros(2, 3))), torch.randn(2, 3)
    kept, dropped = tmp_path / "kept.tflite", tmp_path / "dropped.tflite"
    TFLiteConverter(model, x, kept).convert()
    TFLiteConverter(model, x, dropped, missing_outputs_as_constants=False).convert()
    from slimkit.converter.verify import run_tflite

    outputs = run_tflite(kept, [x.numpy()])
    assert len(outputs) == 2 and (outputs[1] == 0).all() and outputs[1].shape == (2, 3)
    assert [o.shape for o in run_tflite(dropped, [x.numpy()])] == [(2, 3)]


def test_plain_function_is_converted(tmp_path):
    path = tmp_path / "f.tflite"
    x = torch.randn(3, 4)
    TFLiteConverter(lambda t: torch.sign(t) * 2, x, path).convert()
    assert verify(lambda t: torch.sign(t) * 2, x, path).max_abs_error == 0.0


def test_not_a_model_is_refused(tmp_path):
    with pytest.raises(UnsupportedModelError, match="Received: model of type int"):
        TFLiteConverter(3, torch.randn(3), tmp_path / "x.tflite")


@pytest.mark.parametrize("model, x, why", [
    (fn(lambda s, v: torch.zeros(5).index_put((torch.tensor([1, 1]),), v)), torch.randn(2), "more than once"),
    (fn(lambda s, x: x[[0, 1], :, [1, 2]]), torch.randn(3, 4, 5), "separated by a full slice"),
    (fn(lambda s, x, y: torch.bitwise_and(x, y)), (torch.tensor([1, 2]), torch.tensor([3, 3])),
     "bitwise and of int64 tensors has no TFLite kernel"),
    (nn.Conv3d(4, 4, 3, groups=2), torch.randn(1, 4, 4, 4, 4), "grouped 3-D convolution"),
])
def test_unsupported_case_is_named_before_writing(model, x, why, tmp_path):
    path = tmp_path / "x.tflite"
    with pytest.raises(UnsupportedOpError) as error:
        TFLiteConverter(model.eval(), x, path).convert()
    assert why in str(error.value)
    assert not path.exists()



