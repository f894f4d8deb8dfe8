"""WeightOnlyQuantizer: RTN is the formula, GPTQ is RTN under an identity Hessian and beats it otherwise,
AWQ keeps the float layer and never loses to RTN on its data; bad input leaves the model as it was."""

import numpy as np
import pytest
import torch
from torch import nn

from slimkit.algorithms.quantization import WeightOnlyQuantizer
from slimkit.algorithms.quantization.gptq import output_error
from slimkit.errors import ConfigError
from slimkit.frameworks.torch.layer_inputs import layer_statistics


def _model(seed=0, features=16):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(features, 8), nn.ReLU(), nn.Linear(8, 4))


def _correlated_batches(seed=1, features=16, count=4):
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(features, features, generator=g)
    return [torch.randn(64, features, generator=g) @ mixing for _ in range(count)]


def _rtn_by_hand(weight, bits, group_size, symmetric):
    w = weight.detach().numpy().astype(np.float32)
    out, features = w.shape
    size = features if group_size == -1 else group_size
    expected = np.empty_like(w)
    for row in range(out):
        for start in range(0, features, size):
            g = w[row, start:start + size]
            if symmetric:
                qmax = np.float32(2 ** (bits - 1) - 1)
                scale = np.float32(np.abs(g).max()) / qmax
                zero, low, high = np.float32(0), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
            else:
                lo, hi = np.float32(min(g.min(), 0)), np.float32(max(g.max(), 0))
                scale = (hi - lo) / np.float32(2 ** bits - 1)
                zero, low, high = np.round(-lo / scale), 0, 2 ** bits - 1
            q = np.clip(np.round(g / scale) + zero, low, high)
            expected[row, start:start + size] = (q - zero) * scale
    return expected


@pytest.mark.parametrize("bits,group_size,symmetric", [(4, 4, True), (4, -1, True), (3, 8, False), (8, 2, False),
                                                       (2, 16, True)])
def test_rtn_equals_the_formula(bits, group_size, symmetric):
    model = _model()
    weight = model[0].weight.detach().clone()
    q = WeightOnlyQuantizer(model, [{"op_names": ["0"], "quant_bits": bits, "group_size": group_size,
                                     "symmetric": symmetric}])
    model = q.compress()
    np.testing.assert_array_equal(model[0].quantized_weight().numpy(), _rtn_by_hand(weight, bits, group_size,
                                                                                   symmetric))
    codes = q.quantized_weights()["0"]["codes"]
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if symmetric else (0, 2 ** bits - 1)
    assert codes.dtype == (torch.int8 if symmetric else torch.uint8)
    assert int(codes.min()) >= low and int(codes.max()) <= high
    x = torch.randn(5, 16)
    expected = model[2](torch.relu(x @ model[0].quantized_weight().T + model[0].module.bias))
    torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("act_order", [True, False])
def test_gptq_with_an_identity_hessian_is_rtn(act_order):
    reference = WeightOnlyQuantizer(_model(), [{"op_types": ["Linear"], "group_size": 4}]).compress()
    gptq = WeightOnlyQuantizer(_model(), [{"op_names": ["0"], "group_size": 4}], algorithm="gptq",
                               act_order=act_order)
    model = gptq.calibrate([torch.eye(16), 3 * torch.eye(16)]).compress()   # X^T X is a multiple of I
    assert torch.equal(model[0].weight_codes, reference[0].weight_codes)
    assert torch.equal(model[0].quantized_weight(), reference[0].quantized_weight())


@pytest.mark.parametrize("act_order", [True, False])
@pytest.mark.parametrize("group_size", [4, -1])
def test_gptq_lowers_the_output_error_below_rtn(group_size, act_order):
    batches = _correlated_batches()
    errors = {}
    for algorithm in ("rtn", "gptq"):
        model = _model()
        float_weight = model[0].weight.detach().clone()
        hessian = layer_statistics(model, model[0], batches, 16).hessian()
        q = WeightOnlyQuantizer(model, [{"op_names": ["0"], "quant_bits": 3, "group_size": group_size}],
                                algorithm=algorithm, act_order=act_order)
        model = q.calibrate(batches).compress()
        errors[algorithm] = output_error(float_weight, model[0].quantized_weight(), hessian)
    assert errors["gptq"] < 0.8 * errors["rtn"], errors


def test_awq_keeps_the_float_layer_and_never_loses_to_rtn():
    batches = [b * torch.linspace(0.05, 20, 16) for b in _correlated_batches()]  # outlier input features
    model = _model()
    float_weight = model[0].weight.detach().clone()
    hessian = layer_statistics(model, model[0], batches, 16).hessian()
    q = WeightOnlyQuantizer(model, [{"op_names": ["0"], "quant_bits": 3, "group_size": 8}], algorithm="awq")
    model = q.calibrate(batches).compress()
    factors = model[0].input_scale
    assert factors.shape == (16,) and bool((factors > 0).all())
    # in float the scaling is the identity: (x / s) @ (W s)^T == x @ W^T
    x = batches[0]
    torch.testing.assert_close((x / factors) @ (float_weight * factors).T, x @ float_weight.T, rtol=1e-5, atol=1e-4)
    rtn = WeightOnlyQuantizer(_model(), [{"op_names": ["0"], "quant_bits": 3, "group_size": 8}]).compress()
    awq_error = output_error(float_weight, model[0].quantized_weight(), hessian)
    assert awq_error <= output_error(float_weight, rtn[0].quantized_weight(), hessian)
    codes = model[0].weight_codes
    grid = model[0].grid
    assert torch.equal(codes, grid.codes(float_weight * factors, model[0].weight_scale, model[0].weight_zero_point))


@pytest.mark.parametrize("bits,group_size,symmetric", [(4, 16, True), (3, -1, False), (4, 8, False), (2, 16, True)])
def test_clipping_never_increases_the_output_error_of_any_row(bits, group_size, symmetric):
    from slimkit.algorithms.quantization.awq import CLIP_RATIOS, clip_search
    from slimkit.frameworks.torch.weight_grid import GroupGrid

    g = torch.Generator().manual_seed(bits)
    weight = torch.randn(24, 32, generator=g) ** 3  # heavy tails: a few large weights per group
    features = torch.randn(256, 32, generator=g) @ torch.randn(32, 32, generator=g)
    hessian = (features.T @ features).double() / 256
    grid = GroupGrid(bits=bits, group_size=group_size, symmetric=symmetric)
    scale, zero = grid.params(weight)
    clipped, clipped_zero = clip_search(weight, hessian, grid)
    assert torch.equal(clipped_zero, zero)
    ratios = clipped / scale
    assert all(any(abs(r - c) < 1e-6 for c in (1.0, *CLIP_RATIOS)) for r in ratios.flatten().tolist())

    def row_errors(s):
        delta = (weight - grid.dequantize(grid.codes(weight, s, zero), s, zero)).double()
        return ((delta @ hessian) * delta).sum(-1)

    assert bool((row_errors(clipped) <= row_errors(scale)).all())
    assert float(row_errors(clipped).sum()) < 0.97 * float(row_errors(scale).sum())


def test_layers_are_quantized_in_order_on_the_already_quantized_model():
    batches = _correlated_batches()
    model = _model()
    q = WeightOnlyQuantizer(model, [{"op_types": ["Linear"], "group_size": -1, "quant_bits": 2}], algorithm="gptq")
    model = q.calibrate(batches).compress()
    # the second layer's Hessian is of the inputs the quantized first layer produces
    x = torch.cat(batches)
    seen = torch.relu(x @ model[0].quantized_weight().T + model[0].module.bias).double()
    expected = WeightOnlyQuantizer(_model(), [{"op_names": ["2"], "group_size": -1, "quant_bits": 2}],
                                   algorithm="gptq")
    from slimkit.algorithms.quantization.gptq import gptq

    codes, _, _ = gptq(expected.model[2].weight.detach(), seen.T @ seen / len(seen), expected.grid(
        expected.layers[0]), act_order=True)
    assert torch.equal(model[2].weight_codes, codes)


def test_unwrap_restores_the_float_layers():
    model = _model()
    originals = [model[0], model[2]]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    q = WeightOnlyQuantizer(model, [{"op_types": ["Linear"], "group_size": 4}])
    q.compress()
    assert set(model.state_dict()) >= {"0.weight_codes", "0.weight_scale", "0.weight_zero_point"}
    q.unwrap_model()
    assert model[0] is originals[0] and model[2] is originals[1]
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("entry,match", [
    ({"op_types": ["Linear"], "group_size": 5}, r"group_size.*16 input features of layer '0'.*Received: group_size=5"),
    ({"op_types": ["Linear"], "quant_bits": 1}, r"quant_bits.*from 2 to 8"),
    ({"op_types": ["Linear"], "quant_bits": 9}, r"quant_bits.*from 2 to 8"),
    ({"op_types": ["Linear"], "group_size": 0}, r"group_size"),
])
def test_bad_config_is_refused_before_the_model_is_touched(entry, match):
    model = _model()
    layers = list(model)
    with pytest.raises(ConfigError, match=match):
        WeightOnlyQuantizer(model, [entry])
    assert list(model) == layers


def test_calibration_batches_of_the_wrong_shape_name_the_layer_and_leave_the_model():
    model = _model()
    layers = list(model)
    q = WeightOnlyQuantizer(model, [{"op_types": ["Linear"], "group_size": 4}], algorithm="gptq")
    with pytest.raises(ConfigError, match=r"Layer '0' received inputs of 7 features. Expected 16"):
        q.calibrate([torch.randn(4, 7)]).compress()
    assert list(model) == layers and not q.wrapped
    with pytest.raises(ConfigError, match=r"batch 1 does not run through the model"):
        q.calibrate([torch.randn(4, 16), torch.randn(4, 16, dtype=torch.float64)]).compress()
    assert list(model) == layers and not q.wrapped
    q2 = WeightOnlyQuantizer(model, [{"op_types": ["Linear"], "group_size": 4}], algorithm="awq")
    with pytest.raises(Exception, match="calibrate"):
        q2.compress()
    assert list(model) == layers


def test_unknown_algorithm_and_non_linear_layers():
    with pytest.raises(ConfigError, match=r"one of \['awq', 'gptq', 'rtn'\]"):
        WeightOnlyQuantizer(_model(), [{"op_types": ["Linear"]}], algorithm="hqq")
    conv = nn.Sequential(nn.Conv2d(1, 2, 3))
    with pytest.raises(ConfigError, match=r"layer '0' of type Conv2d. Expected Linear"):
        WeightOnlyQuantizer(conv, [{"op_types": ["Conv2d"]}])


@pytest.mark.parametrize("algorithm,bits,group_size,symmetric", [("rtn", 4, 4, True), ("awq", 4, 8, False),
                                                                 ("gptq", 8, -1, True), ("rtn", 3, 8, False)])
def test_onnx_file_holds_the_codes_as_blocked_dequantize_and_matches_pytorch(tmp_path, algorithm, bits, group_size,
                                                                             symmetric):
    import onnx
    import onnxruntime
    from onnx import numpy_helper

    model = _model()
    q = WeightOnlyQuantizer(model, [{"op_types": ["Linear"], "quant_bits": bits, "group_size": group_size,
                                     "symmetric": symmetric}], algorithm=algorithm)
    if algorithm != "rtn":
        q.calibrate(_correlated_batches())
    model = q.compress()
    x = torch.randn(3, 16)
    q.export_model(tmp_path / "model.pth", onnx_path=tmp_path / "model.onnx", dummy_input=x)
    proto = onnx.load(tmp_path / "model.onnx")
    initializers = {init.name: init for init in proto.graph.initializer}
    assert "0.weight" not in initializers and "2.weight" not in initializers
    dequantize = [n for n in proto.graph.node if n.op_type == "DequantizeLinear"]
    assert [n.output[0] for n in dequantize] == (["0.weight.dequantized", "2.weight.dequantized"]
                                                 if algorithm == "awq" else ["0.weight", "2.weight"])
    for name in ("0", "2"):
        codes = numpy_helper.to_array(initializers[f"{name}.weight_codes"]).astype(np.int16)
        np.testing.assert_array_equal(codes, model.get_submodule(name).weight_codes.numpy().astype(np.int16))
        expected_type = {(True, True): onnx.TensorProto.INT4, (True, False): onnx.TensorProto.UINT4,
                         (False, True): onnx.TensorProto.INT8, (False, False): onnx.TensorProto.UINT8}[
            (bits <= 4, symmetric)]
        assert initializers[f"{name}.weight_codes"].data_type == expected_type
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    for seed in range(3):
        sample = torch.randn(3, 16, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            expected = model(sample).numpy()
        (got,) = session.run(None, {session.get_inputs()[0].name: sample.numpy()})
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    plain = _model()
    plain.load_state_dict(torch.load(tmp_path / "model.pth", weights_only=True))
    with torch.no_grad():
        torch.testing.assert_close(plain(x), model(x), rtol=0, atol=0)


def test_the_dequantized_weight_follows_its_buffers():
    model = _model()
    q = WeightOnlyQuantizer(model, [{"op_names": ["0"], "group_size": 4}])
    model = q.compress()
    first = model[0].quantized_weight()
    assert model[0].quantized_weight() is first  # reused between forwards
    with torch.no_grad():
        model[0].weight_scale.mul_(2)  # written in place: recomputed
    torch.testing.assert_close(model[0].quantized_weight(), 2 * first, rtol=0, atol=0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["0.weight_scale"] /= 2
    model.load_state_dict(state)
    torch.testing.assert_close(model[0].quantized_weight(), first, rtol=0, atol=0)


def test_act_order_visits_the_high_energy_inputs_first_and_keeps_the_group_layout():
    from slimkit.algorithms.quantization.gptq import gptq
    from slimkit.frameworks.torch.weight_grid import GroupGrid

    grid = GroupGrid(bits=3, group_size=4)
    weight = torch.randn(6, 8, generator=torch.Generator().manual_seed(3))
    # a diagonal Hessian spreads no error: any visiting order gives round to nearest
    diagonal = torch.diag(torch.tensor([1.0, 9, 2, 8, 3, 7, 4, 6], dtype=torch.float64))
    codes, scale, zero = gptq(weight, diagonal, grid, act_order=True)
    assert torch.equal(grid.dequantize(codes, scale, zero), grid.rtn(weight))
    # static groups: the parameters are those of the weights before any update, group by group in input order
    batches = _correlated_batches(features=8)
    hessian = sum(b.double().T @ b.double() for b in batches) / 256
    codes, scale, zero = gptq(weight, hessian, grid, act_order=True)
    expected_scale, _ = grid.params(weight)
    assert torch.equal(scale, expected_scale)
    assert output_error(weight, grid.dequantize(codes, scale, zero), hessian) < output_error(
        weight, grid.rtn(weight), hessian)


@pytest.mark.parametrize("algorithm", ["rtn", "awq"])
def test_a_layer_storing_its_weight_as_in_out_is_quantized_along_its_inputs(tmp_path, algorithm):
    import onnxruntime
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    model = nn.Sequential(Conv1D(8, 16), nn.ReLU(), nn.Linear(8, 4))   # Conv1D(out=8, in=16): weight (16, 8)
    weight = model[0].weight.detach().clone()
    q = WeightOnlyQuantizer(model, [{"op_types": ["Linear"], "group_size": 4}], algorithm=algorithm)
    if algorithm == "awq":
        q.calibrate(_correlated_batches())
    model = q.compress()
    wrapper = model[0]
    assert tuple(wrapper.weight_codes.shape) == (8, 16) and tuple(wrapper.weight_scale.shape) == (8, 4)
    if algorithm == "rtn":
        np.testing.assert_array_equal(wrapper.quantized_weight().numpy(), _rtn_by_hand(weight.T, 4, 4, True))
    x = torch.randn(5, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model[2](torch.relu(x @ wrapper.native_weight() + wrapper.module.bias)),
                                   rtol=0, atol=0)
    q.export_model(tmp_path / "m.pth", onnx_path=tmp_path / "m.onnx", dummy_input=x)
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), rtol=1e-5, atol=1e-6)


def test_a_pruned_layer_is_refused_not_silently_unmasked():
    from slimkit.algorithms.pruning import LevelPruner
    from slimkit.errors import CompositionError

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    pruner = LevelPruner(model, [{"sparsity": 0.5, "op_types": ["Linear"], "op_names": ["0"]}])
    pruner.compress()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    wrapper = model[0]
    quantizer = WeightOnlyQuantizer(model, [{"op_types": ["Linear"], "quant_bits": 4, "group_size": -1}],
                                    algorithm="rtn")
    with pytest.raises(CompositionError, match="Layer '0' is already wrapped"):
        quantizer.compress()
    assert model[0] is wrapper and isinstance(model[2], nn.Linear)  # nothing wrapped, the pruner's wrapper kept
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
