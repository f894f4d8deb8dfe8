"""Quantization core: affine arithmetic, profiles, custom quantizers and gradients, calibration files."""

import numpy as np
import pytest
import torch

from slimkit.compression import QuantGrad, Quantizer, QuantType
from slimkit.compression.profiles import get_profile
from slimkit.compression.quant import Scheme, affine_params, fake_quant_numpy, fixed_params, qrange
from slimkit.compression.quantizer import load_calibration
from slimkit.frameworks.torch.quant_ops import OPS


def test_qrange_and_asymmetric_params_follow_tflite():
    assert qrange(8, True, False) == (-128, 127)
    assert qrange(8, True, True) == (-127, 127)
    assert qrange(8, False) == (0, 255)
    params = affine_params(np.array([-0.5]), np.array([2.0]), 8, Scheme(symmetric=False, signed=True))
    assert params.scale[0] == pytest.approx(2.5 / 255)
    assert params.zero_point[0] == round(-128 + 0.5 / (2.5 / 255))
    # ranges not containing 0 are widened to include it
    params = affine_params(np.array([1.0]), np.array([3.0]), 8, Scheme())
    assert params.min[0] == 0.0 and params.zero_point[0] == -128


def test_symmetric_per_channel_scale_is_max_abs_over_127():
    weight = torch.tensor([[0.5, -1.27], [0.01, 0.02]])
    lo, hi = OPS.min_max(weight, 0)
    params = affine_params(lo, hi, 8, get_profile("tflite").weight, axis=0)
    np.testing.assert_allclose(params.scale, [1.27 / 127, 0.02 / 127])
    assert params.zero_point.tolist() == [0, 0]
    expected = fake_quant_numpy(weight.numpy(), params)
    np.testing.assert_allclose(OPS.fake_quant(weight, params).numpy(), expected, rtol=1e-6)
    assert np.abs(np.round(weight.numpy() / params.scale[:, None])).max() <= 127


def test_torch_fake_quant_matches_numpy_reference_including_wide_bits():
    x = torch.from_numpy(np.random.default_rng(0).uniform(-3, 5, 1000).astype(np.float32))
    for bits in (2, 4, 8, 16, 24):
        params = affine_params(np.array([-2.0]), np.array([4.0]), bits, Scheme())
        diff = np.abs(OPS.fake_quant(x, params).numpy() - fake_quant_numpy(x.numpy(), params))
        # float32 kernels may round a value lying within float error of a tie the other way: one step
        assert diff.max() <= params.scale[0] * 1.001 + 1e-6
        assert (diff > 1e-5).mean() <= 0.002


def test_profiles_state_fixed_and_shared_params():
    tflite = get_profile("tflite")
    softmax = tflite.fixed_output("softmax", 8)
    assert (softmax.scale[0], softmax.zero_point[0]) == (1 / 256, -128)
    sigmoid = tflite.fixed_output("sigmoid", 8)
    assert (sigmoid.scale[0], sigmoid.zero_point[0]) == (1 / 256, -128)
    tanh = tflite.fixed_output("tanh", 8)
    assert (tanh.scale[0], tanh.zero_point[0]) == (1 / 128, 0)
    assert tflite.shares_input_params("cat") and tflite.shares_input_params("max_pool")
    assert tflite.shares_input_params("reshape") and not tflite.shares_input_params("add")
    assert get_profile("onnx").activation.signed is False
    sym = affine_params(np.array([-1.0]), np.array([3.0]), 8, get_profile("symmetric").activation)
    assert sym.zero_point[0] == 0 and sym.scale[0] == pytest.approx(3 / 127)
    pow2 = affine_params(np.array([-1.0]), np.array([3.0]), 8, get_profile("pow2").activation)
    assert np.log2(pow2.scale[0]) == np.round(np.log2(pow2.scale[0])) and pow2.scale[0] >= 3 / 127


def test_fixed_params_cover_the_fixed_range():
    params = fixed_params(1 / 256, -128, 8)
    assert params.min[0] == 0.0 and params.max[0] == pytest.approx(255 / 256)


def test_default_quant_grad_is_clipped_straight_through():
    params = affine_params(np.array([-1.0]), np.array([1.0]), 8, Scheme(symmetric=True, narrow=True))
    x = torch.tensor([-2.0, -0.5, 0.3, 1.5], requires_grad=True)
    OPS.fake_quant(x, params).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0]
    grad = QuantGrad.quant_backward(x.detach(), torch.ones(4), QuantType.QUANT_OUTPUT, ops=OPS, params=params)
    assert grad.tolist() == [0.0, 1.0, 1.0, 0.0]
    assert QuantGrad.quant_backward(x.detach(), torch.ones(4), QuantType.QUANT_OUTPUT).tolist() == [1.0] * 4


class ClipGrad(QuantGrad):
    @staticmethod
    def quant_backward(tensor, grad_output, quant_type, **kwargs):
        if quant_type == QuantType.QUANT_OUTPUT:
            grad_output[abs(tensor) > 1] = 0
        return grad_output


class HalfStepQuantizer(Quantizer):
    """Rounds to multiples of 0.5, records which keyword arguments it was given."""

    def __init__(self, model, config_list):
        super().__init__(model, config_list)
        self.quant_grad = ClipGrad
        self.seen = set()

    def quantize_weight(self, weight, config, **kwargs):
        self.seen.add(("weight", config.index))
        return torch.round(weight * 2) / 2

    def quantize_input(self, *inputs, config, **kwargs):
        self.seen.add(("input", kwargs["layer"].name))
        return torch.round(inputs[0] * 2) / 2

    def quantize_output(self, output, config, **kwargs):
        self.seen.add(("output", kwargs["layer"].name))
        return torch.round(output * 2) / 2


def test_custom_quantizer_with_custom_quant_grad():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    quantizer = HalfStepQuantizer(model, [{"quant_types": ["weight", "input", "output"], "op_types": ["Linear"]}])
    model = quantizer.compress()
    x = torch.tensor([[0.3, 1.4]], requires_grad=True)
    out = model(x)
    assert out.tolist() == [[0.5, 1.5]]  # round(0.3*2)/2=0.5, round(1.4*2)/2=1.5
    out.sum().backward()
    # output grad clipped where |pre-quant output| > 1 (second unit); input grad straight through
    assert x.grad.tolist() == [[1.0, 0.0]]
    assert model[0].module.weight.grad.tolist() == [[0.5, 1.5], [0.0, 0.0]]
    assert quantizer.seen == {("weight", 0), ("input", "0"), ("output", "0")}
    assert isinstance(quantizer.unwrap_model()[0], torch.nn.Linear)


def test_calibration_files_round_trip(tmp_path):
    from slimkit.algorithms.quantization import PostTrainingQuantizer

    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    ptq = PostTrainingQuantizer(model, [{"quant_types": ["weight", "input", "output"], "op_types": ["Linear"]}],
                                progress=False)
    ptq.compress()
    ptq.calibrate([torch.randn(5, 3) for _ in range(2)])
    for name in ("calib.json", "calib.pth"):
        calibration = ptq.export_model(tmp_path / "m.pth", calibration_path=tmp_path / name)
        loaded = load_calibration(tmp_path / name)
        assert loaded == calibration
        assert isinstance(loaded["0"]["weight_scale"], list) and len(loaded["0"]["weight_scale"]) == 2
    assert calibration["0"]["bias_scale"] == pytest.approx(
        [calibration["0"]["input_scale"] * s for s in calibration["0"]["weight_scale"]])
    assert calibration["0"]["bias_bits"] == 32
    state = torch.load(tmp_path / "m.pth", weights_only=True)
    torch.nn.Sequential(torch.nn.Linear(3, 2)).load_state_dict(state)


def test_fast_per_channel_path_equals_torch_kernel():
    torch.manual_seed(0)
    weight = torch.randn(8, 4, 3, 3, requires_grad=True)
    for scheme in (get_profile("tflite").weight, Scheme(symmetric=False, per_channel=True)):
        lo, hi = OPS.min_max(weight, 0)
        params = affine_params(lo, hi, 8, scheme, axis=0)
        reference = torch.fake_quantize_per_channel_affine(
            weight, torch.tensor(params.scale, dtype=torch.float32), torch.tensor(params.zero_point, dtype=torch.int32),
            0, params.qmin, params.qmax)
        fast = OPS.fake_quant(weight, params)
        torch.testing.assert_close(fast, reference, atol=0, rtol=0)
        grad, = torch.autograd.grad(fast.sum(), weight)
        torch.testing.assert_close(grad, torch.ones_like(weight))


def assert_same_as_torch_kernel(x: torch.Tensor, params) -> None:
    """``OPS.fake_quant`` equals ``torch.fake_quantize_per_tensor_affine`` bit for bit, values and gradients."""
    reference = torch.fake_quantize_per_tensor_affine(x, float(params.scale[0]), int(params.zero_point[0]),
                                                      params.qmin, params.qmax)
    fast = OPS.fake_quant(x, params)
    torch.testing.assert_close(fast, reference, atol=0, rtol=0)
    grad_fast, = torch.autograd.grad(fast.sum(), x)
    grad_reference, = torch.autograd.grad(reference.sum(), x)
    torch.testing.assert_close(grad_fast, grad_reference, atol=0, rtol=0)


def test_fast_per_tensor_path_equals_torch_kernel_values_and_gradient():
    torch.manual_seed(0)
    x = (torch.randn(4, 8, 5, 5) * 3).requires_grad_(True)
    for scheme in (Scheme(), Scheme(symmetric=True, narrow=True), Scheme(signed=False)):
        params = affine_params(np.array([-2.0]), np.array([2.5]), 8, scheme)
        assert_same_as_torch_kernel(x, params)


@pytest.mark.parametrize("bits", [2, 4, 8, 12, 16])
def test_per_tensor_clamp_first_path_is_exact_at_the_grid_bounds(bits):
    """The fast per-tensor path clamps x to float32 bounds before rounding: values and gradients equal torch's
    kernel on every float32 within 50 steps of each bound, at rounding ties, and at +-inf."""
    from slimkit.compression.quant import grid_bounds

    rng = np.random.default_rng(bits)
    for scheme in (Scheme(), Scheme(symmetric=True, narrow=True), Scheme(signed=False)):
        params = affine_params(np.array([-float(rng.uniform(0.01, 50))]), np.array([float(rng.uniform(0.01, 50))]),
                               bits, scheme)
        bounds = grid_bounds(params)
        points = []
        for bound in (np.float32(bounds.lo), np.float32(bounds.hi)):
            below = above = bound
            for _ in range(50):
                below, above = np.nextafter(below, np.float32(-np.inf)), np.nextafter(above, np.float32(np.inf))
                points += [below, above]
            points.append(bound)
        ties = (np.arange(params.qmin, params.qmax + 1, max(1, (params.qmax - params.qmin) // 64)) + 0.5
                - params.zero_point[0]) / np.float32(bounds.inverse)
        points += list(ties.astype(np.float32)) + [np.float32(np.inf), np.float32(-np.inf)]
        x = torch.tensor(np.array(points, dtype=np.float32), requires_grad=True)
        assert_same_as_torch_kernel(x, params)


def test_per_tensor_scale_whose_inverse_overflows_float32_uses_torch_kernel():
    from slimkit.compression.quant import grid_bounds

    params = affine_params(np.array([0.0]), np.array([1e-43]), 8, Scheme())
    assert grid_bounds(params) is None
    x = torch.tensor([1e-43, 5e-44, 0.0, -1.0])
    reference = torch.fake_quantize_per_tensor_affine(x, float(params.scale[0]), int(params.zero_point[0]),
                                                      params.qmin, params.qmax)
    torch.testing.assert_close(OPS.fake_quant(x, params), reference, atol=0, rtol=0, equal_nan=True)


def test_set_fixed_params_pins_a_layer_output():
    from slimkit.algorithms.quantization import QATQuantizer

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Sigmoid())
    quantizer = QATQuantizer(model, [{"quant_types": ["output"], "op_types": ["Linear"]}])
    quantizer.set_fixed_params("0", "output", fixed_params(1 / 256, -128, 8))
    model = quantizer.compress()
    out = model[0](torch.randn(5, 3))
    torch.testing.assert_close(out * 256, torch.round(out * 256), atol=1e-4, rtol=0)
    assert out.min() >= 0 and out.max() <= 255 / 256
    assert quantizer.calibration()["0"]["output_scale"] == 1 / 256


class ScaleSeeingGrad(QuantGrad):
    seen = {}

    @staticmethod
    def quant_backward(tensor, grad_output, quant_type, **kwargs):
        ScaleSeeingGrad.seen[quant_type] = kwargs
        q = torch.round(tensor / kwargs["scale"]) + kwargs["zero_point"]
        return grad_output * ((q >= kwargs["qmin"]) & (q <= kwargs["qmax"]))


def test_quant_backward_receives_native_parameters():
    from slimkit.algorithms.quantization import QATQuantizer

    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    quantizer = QATQuantizer(model, [{"quant_types": ["weight", "output"], "op_types": ["Linear"]}])
    quantizer.quant_grad = ScaleSeeingGrad
    model = quantizer.compress()
    model(torch.randn(4, 3)).sum().backward()
    weight_kwargs = ScaleSeeingGrad.seen[QuantType.QUANT_WEIGHT]
    assert isinstance(weight_kwargs["scale"], torch.Tensor) and weight_kwargs["scale"].shape == (2, 1)
    assert (weight_kwargs["qmin"], weight_kwargs["qmax"]) == (-127, 127)
    assert ScaleSeeingGrad.seen[QuantType.QUANT_OUTPUT]["scale"].dim() == 0
    assert model[0].module.weight.grad is not None


def test_min_max_per_channel_and_per_tensor_equal_numpy():
    torch.manual_seed(0)
    weight = torch.randn(6, 3, 2, 2)
    weight[2] = 0.0                      # an all-zero channel
    weight[4] = weight[4].abs()          # a channel with no negative value
    for axis in (0, 1, None):
        lo, hi = OPS.min_max(weight, axis)
        dims = None if axis is None else tuple(d for d in range(4) if d != axis)
        np.testing.assert_array_equal(lo, np.atleast_1d(weight.numpy().min(axis=dims)).astype(np.float64))
        np.testing.assert_array_equal(hi, np.atleast_1d(weight.numpy().max(axis=dims)).astype(np.float64))
        assert lo.dtype == hi.dtype == np.float64
