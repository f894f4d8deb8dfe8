"""Fake-quant outputs on known tensors for every algorithm, against the paper formulas."""

import numpy as np
import pytest
import torch

from slimkit.algorithms.quantization import (
    BNNQuantizer,
    DoReFaQuantizer,
    NaiveQuantizer,
    PostTrainingQuantizer,
    QAT_Quantizer,
    QATQuantizer,
)
from tests.algorithms.quantization import vectors

W = torch.from_numpy(vectors.W)
X = torch.from_numpy(vectors.X)


def _linear(bias=False):
    model = torch.nn.Sequential(torch.nn.Linear(3, 2, bias=bias))
    with torch.no_grad():
        model[0].weight.copy_(W)
        if bias:
            model[0].bias.copy_(torch.tensor([0.1, -0.2]))
    return model


def _per_channel_int8(w):
    scale = w.abs().amax(dim=1, keepdim=True) / 127
    return torch.clamp(torch.round(w / scale), -127, 127) * scale


def test_naive_quantizes_weights_per_channel_max_abs():
    model = NaiveQuantizer(_linear(), [{"quant_types": ["weight"], "op_types": ["Linear"]}]).compress()
    torch.testing.assert_close(model[0].quantized_weight(), _per_channel_int8(W))
    torch.testing.assert_close(model(X), X @ _per_channel_int8(W).T)


def test_naive_rejects_activation_quantization():
    with pytest.raises(ValueError, match="NaiveQuantizer quantizes weights only"):
        NaiveQuantizer(_linear(), [{"quant_types": ["weight", "output"], "op_types": ["Linear"]}])


def _affine(x, lo, hi, bits=8):
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    scale = (hi - lo) / (qmax - qmin)
    zero_point = np.clip(round(qmin - lo / scale), qmin, qmax)
    return (torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax) - zero_point) * scale


def test_qat_output_is_affine_fake_quant_of_ema_range():
    quantizer = QATQuantizer(_linear(bias=True), [{"quant_types": ["weight", "output"], "op_types": ["Linear"]}],
                             ema_decay=0.5)
    model = quantizer.compress()
    float_out = [X @ _per_channel_int8(W).T + torch.tensor([0.1, -0.2]), 2 * X @ _per_channel_int8(W).T
                 + torch.tensor([0.1, -0.2])]
    out1 = model(X)
    torch.testing.assert_close(out1, _affine(float_out[0], float_out[0].min().item(), float_out[0].max().item()))
    out2 = model(2 * X)
    lo = 0.5 * float_out[0].min().item() + 0.5 * float_out[1].min().item()
    hi = 0.5 * float_out[0].max().item() + 0.5 * float_out[1].max().item()
    params = quantizer.params["0"]["output"]
    assert (params.min[0], params.max[0]) == pytest.approx((lo, hi))
    torch.testing.assert_close(out2, _affine(float_out[1], lo, hi))
    # eval: ranges are frozen (no EMA update)
    model.eval()
    model(10 * X)
    assert (quantizer.params["0"]["output"].min[0], quantizer.params["0"]["output"].max[0]) == pytest.approx((lo, hi))
    assert QAT_Quantizer is QATQuantizer


def test_qat_quant_start_step_counts_optimizer_steps():
    model = _linear()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    quantizer = QATQuantizer(model, [{"quant_types": ["weight", "output"], "quant_start_step": 2,
                                      "op_types": ["Linear"]}], optimizer=optimizer)
    model = quantizer.compress()
    for step in range(3):
        out = model(X)
        expected_float = step < 2
        torch.testing.assert_close(out, X @ W.T) if expected_float else None
        if not expected_float:
            assert not torch.allclose(out, X @ W.T)
        out.sum().backward()
        optimizer.step()
    assert quantizer.steps == 3


def test_qat_gradient_is_straight_through():
    quantizer = QATQuantizer(_linear(), [{"quant_types": ["weight"], "op_types": ["Linear"]}])
    model = quantizer.compress()
    model(X).sum().backward()
    torch.testing.assert_close(model[0].module.weight.grad, X.sum(0).expand(2, 3))


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_dorefa_weight_formula(bits):
    quantizer = DoReFaQuantizer(_linear(), [{"quant_types": ["weight"], "quant_bits": bits, "op_types": ["Linear"]}])
    model = quantizer.compress()
    n = 2 ** bits - 1
    t = torch.tanh(W)
    expected = 2 * (torch.round((t / (2 * t.abs().max()) + 0.5) * n) / n) - 1
    torch.testing.assert_close(model[0].quantized_weight(), expected)
    # gradient: d/dw of the formula with round replaced by the identity
    w = W.clone().requires_grad_(True)
    t = torch.tanh(w)
    (2 * (t / (2 * t.abs().max().detach()) + 0.5) - 1).sum().backward()
    model(torch.ones(1, 3)).sum().backward()
    torch.testing.assert_close(model[0].module.weight.grad, w.grad)


def test_dorefa_activation_formula():
    model = torch.nn.Sequential(torch.nn.Identity(), torch.nn.Linear(3, 3, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.eye(3))
    model = DoReFaQuantizer(model, [{"quant_types": ["output"], "quant_bits": 2, "op_types": ["Linear"]}]).compress()
    x = torch.tensor([[-0.5, 0.2, 0.9], [0.5, 1.7, 0.49]])
    torch.testing.assert_close(model(x), torch.round(torch.clamp(x, 0, 1) * 3) / 3)


def test_bnn_sign_and_clipped_gradient():
    quantizer = BNNQuantizer(_linear(), [{"quant_types": ["weight", "output"], "op_types": ["Linear"]}])
    model = quantizer.compress()
    sign_w = torch.where(W >= 0, 1.0, -1.0)
    x = torch.tensor([[0.2, 0.1, 0.3]], requires_grad=True)
    pre = x @ sign_w.T
    out = model(x)
    torch.testing.assert_close(out, torch.where(pre >= 0, 1.0, -1.0))
    out.sum().backward()
    # output grad passes where |pre| <= 1; weight grad passes where |w| <= 1
    passes = (pre.abs() <= 1).float()
    torch.testing.assert_close(x.grad, passes @ sign_w)
    expected_w = (passes.T @ x.detach()) * (W.abs() <= 1).float()
    torch.testing.assert_close(model[0].module.weight.grad, expected_w)
    assert quantizer.calibration()["0"]["weight_bits"] == 1


def test_ptq_minmax_known_ranges():
    ptq = PostTrainingQuantizer(_linear(), [{"quant_types": ["weight", "input", "output"], "op_types": ["Linear"]}],
                                algorithm="minmax", progress=False)
    model = ptq.compress()
    ptq.calibrate([X, 2 * X])
    calibration = ptq.calibration()["0"]
    assert calibration["tracked_min_input"] == pytest.approx(-4.0)
    assert calibration["tracked_max_input"] == pytest.approx(6.0)
    assert calibration["input_scale"] == pytest.approx(10 / 255)
    assert calibration["weight_scale"] == pytest.approx([0.9 / 127, 2.0 / 127])
    xq = _affine(X, -4.0, 6.0)
    pre_q = xq @ _per_channel_int8(W).T
    outs = [X @ _per_channel_int8(W).T, 2 * X @ _per_channel_int8(W).T]
    # output range observed on the float model during calibration
    lo = min(o.min().item() for o in [X @ W.T, 2 * X @ W.T])
    hi = max(o.max().item() for o in [X @ W.T, 2 * X @ W.T])
    assert (calibration["tracked_min_output"], calibration["tracked_max_output"]) == pytest.approx((lo, hi))
    torch.testing.assert_close(model(X), _affine(pre_q, lo, hi))
    assert outs  # float outputs differ from the quantized ones only by quantization


def test_ptq_calibrate_reads_at_most_num_batches_lazily():
    ptq = PostTrainingQuantizer(_linear(), [{"quant_types": ["output"], "op_types": ["Linear"]}], progress=False)
    ptq.compress()
    consumed = []

    def stream():
        for scale in (1.0, 2.0, 100.0):
            consumed.append(scale)
            yield (scale * X, None)

    ptq.calibrate(stream(), num_batches=2)
    assert consumed == [1.0, 2.0]
    assert ptq.calibration()["0"]["tracked_max_output"] == pytest.approx((2 * X @ W.T).max().item())
