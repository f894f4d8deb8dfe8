"""Graph-aware quantization: BN folding, conv+BN+ReLU fusion, whole-graph tensors, per-call ranges,
profile rules, mixed precision, float islands, PTQ -> QAT, unwrap."""

import copy

import pytest
import torch
from torch import nn

from slimkit.algorithms.quantization import PostTrainingQuantizer, QATQuantizer
from slimkit.compression.quantizer import GRAPH_KEY
from slimkit.frameworks.torch.graph import capture_graph
from slimkit.frameworks.torch.quant_backend import fold_bn
from slimkit.frameworks.torch.quant_graph import tensor_keys

WO = ["weight", "output"]


class ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.head(self.relu(self.bn(self.conv(x))))


def _trained_bn(model):
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2.0)
        model.bn.weight.uniform_(0.5, 1.5)
        model.bn.bias.uniform_(-0.5, 0.5)
    return model.eval()


def test_fold_bn_equals_conv_then_bn_in_eval():
    torch.manual_seed(0)
    model = _trained_bn(ConvBN())
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(fold_bn(model.conv, model.bn)(x), model.bn(model.conv(x)), atol=1e-5, rtol=1e-5)


def test_qat_folds_bn_and_quantizes_fused_output_after_relu():
    torch.manual_seed(0)
    model = _trained_bn(ConvBN())
    x = torch.randn(2, 3, 6, 6)
    quantizer = QATQuantizer(model, [{"quant_types": WO, "op_types": ["Conv2d"]}], dummy_input=x)
    model = quantizer.compress()
    model.train()
    for _ in range(3):
        model(torch.randn(8, 3, 6, 6))
    model.eval()
    calibration = quantizer.calibration()
    entry = calibration["conv"]
    assert entry["folded_bn"] == "bn" and entry["fused_activation"] == "relu"
    assert entry["tracked_min_output"] == 0.0  # quantized after the ReLU
    # weight scales are those of the folded weight, per output channel
    folded = fold_bn(quantizer.layer("conv").module, model.bn)
    expected = (folded.weight.detach().abs().amax(dim=(1, 2, 3)) / 127).tolist()
    assert entry["weight_scale"] == pytest.approx(expected, rel=1e-6)
    # eval forward == folded conv with fake-quantized weight, then the fused output quantization
    out = model.relu(model.bn(model.conv(x)))
    wq = model.conv.quantized_weight()
    folded_out = torch.relu(nn.functional.conv2d(x, wq, folded.bias, padding=1))
    params = quantizer.params["conv"]["output"]
    expected_out = torch.fake_quantize_per_tensor_affine(folded_out, float(params.scale[0]),
                                                         int(params.zero_point[0]), -128, 127)
    torch.testing.assert_close(out, expected_out, atol=float(params.scale[0]) * 1.01, rtol=0)


def test_ptq_per_channel_weight_scales_exported():
    torch.manual_seed(0)
    model = ConvBN().eval()
    x = torch.randn(2, 3, 6, 6)
    ptq = PostTrainingQuantizer(model, [{"quant_types": WO, "op_types": ["Conv2d"]}], dummy_input=x, progress=False)
    ptq.compress()
    ptq.calibrate([x])
    calibration = ptq.calibration()
    head_scales = (model.head.module.weight.detach().abs().amax(dim=(1, 2, 3)) / 127).tolist()
    assert calibration["head"]["weight_scale"] == pytest.approx(head_scales)
    assert calibration["head"]["weight_zero_point"] == [0, 0]
    assert (calibration["head"]["weight_qmin"], calibration["head"]["weight_qmax"]) == (-127, 127)
    assert calibration["head"]["weight_axis"] == 0
    assert len(calibration["conv"]["weight_scale"]) == 4


class AddCat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(2, 3, 1)
        self.b = nn.Conv2d(2, 3, 1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        a, b = self.a(x), self.b(x)
        s = a + b
        c = torch.cat([a * 2, s], 1)
        return torch.softmax(self.pool(c).flatten(1), 1)


def test_whole_graph_ranges_on_functional_add_and_cat():
    torch.manual_seed(0)
    model = AddCat().eval()
    x = torch.randn(2, 2, 4, 4)
    keys = set(tensor_keys(capture_graph(model, (x,))).values())
    ptq = PostTrainingQuantizer(model, [{"quant_types": WO, "op_types": ["default"]}], dummy_input=x, progress=False)
    ptq.compress()
    with torch.no_grad():
        a, b = model.a.module(x), model.b.module(x)
    ptq.calibrate([x])
    graph = ptq.calibration()[GRAPH_KEY]
    assert {"/0/add/0", "/0/mul/0", "/0/cat/0", "pool/0/max_pool2d/0", "/0/softmax/0", "input/0"} <= set(graph)
    assert set(graph) - {"input/0"} <= keys  # named like the captured graph's nodes
    add = graph["/0/add/0"]
    assert add["kind"] == "add"
    # the add sees the quantized conv outputs; its observed range is that of their sum (within a step or two)
    step = add["output_scale"]
    assert add["tracked_min_output"] == pytest.approx(min((a + b).min().item(), 0), abs=3 * step)
    assert add["tracked_max_output"] == pytest.approx((a + b).max().item(), abs=3 * step)
    # concatenation: parameters are shared, covering the union of its inputs' ranges
    cat, mul = graph["/0/cat/0"], graph["/0/mul/0"]
    assert cat["shared_from"] == "inputs"
    assert cat["tracked_min_output"] == pytest.approx(min(mul["tracked_min_output"], add["tracked_min_output"]))
    assert cat["tracked_max_output"] == pytest.approx(max(mul["tracked_max_output"], add["tracked_max_output"]))
    # max-pool and flatten reuse their input's parameters; softmax has TFLite's fixed (1/256, -128)
    pool = graph["pool/0/max_pool2d/0"]
    assert (pool["output_scale"], pool["output_zero_point"]) == (cat["output_scale"], cat["output_zero_point"])
    assert pool["shared_from"] == "graph:/0/cat/0"
    softmax = graph["/0/softmax/0"]
    assert (softmax["output_scale"], softmax["output_zero_point"], softmax["fixed"]) == (1 / 256, -128, True)
    # the whole model runs on quantized tensors: outputs are multiples of 1/256
    out = model(x)
    torch.testing.assert_close(out * 256, torch.round(out * 256), atol=1e-4, rtol=0)
    # wrapped layers know their input parameters (for the int32 bias scale)
    assert ptq.calibration()["a"]["input_scale"] == graph["input/0"]["output_scale"]
    assert ptq.calibration()["a"]["bias_scale"] == pytest.approx(
        [graph["input/0"]["output_scale"] * s for s in ptq.calibration()["a"]["weight_scale"]])


class SharedHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 2, 1)
        self.head = nn.Conv2d(2, 2, 1)

    def forward(self, x):
        y = self.stem(x)
        return self.head(y) + self.head(10 * y)


def test_shared_head_gets_one_range_set_per_call():
    torch.manual_seed(0)
    model = SharedHead().eval()
    x = torch.randn(2, 1, 4, 4)
    ptq = PostTrainingQuantizer(model, [{"quant_types": WO, "op_types": ["default"]}], dummy_input=x, progress=False)
    ptq.compress()
    ptq.calibrate([x, x])
    entry = ptq.calibration()["head"]
    assert len(entry["calls"]) == 2
    first, second = entry["calls"]
    assert second["tracked_max_output"] - second["tracked_min_output"] > 5 * (
        first["tracked_max_output"] - first["tracked_min_output"])
    assert entry["output_scale"] == first["output_scale"]
    assert "head/1/mul/0" not in ptq.calibration()[GRAPH_KEY]  # 10 * y is at the root
    assert "/0/mul/0" in ptq.calibration()[GRAPH_KEY]


def test_mixed_precision_float_islands_and_rewrite():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.Linear(4, 2), nn.Linear(2, 2))
    config_list = [{"quant_types": ["weight", "input", "output"], "op_types": ["Linear"]},
                   {"quant_types": ["weight", "output"], "quant_bits": {"weight": 4, "output": 6}, "op_names": ["2"]},
                   {"exclude": True, "op_names": ["3"]},
                   {"quant_types": ["weight", "input", "output"], "quantize_op_action": "rewrite", "op_names": ["4"]}]
    ptq = PostTrainingQuantizer(model, config_list, progress=False)
    model = ptq.compress()
    ptq.calibrate([torch.randn(16, 4)])
    calibration = ptq.calibration()
    assert calibration["0"]["weight_bits"] == 8
    assert (calibration["2"]["weight_bits"], calibration["2"]["output_bits"]) == (4, 6)
    assert calibration["2"]["weight_qmax"] == 7
    assert "3" not in calibration and isinstance(model[3], nn.Linear)
    assert "weight_scale" not in calibration["4"] and "output_scale" in calibration["4"]
    assert calibration["4"]["quantize_op_action"] == "rewrite"
    torch.testing.assert_close(model[4].quantized_weight(), model[4].module.weight.detach())
    disabled = PostTrainingQuantizer(nn.Sequential(nn.Linear(2, 2)), [{"quant_types": WO, "op_types": ["Linear"],
                                                                       "quantize_op_action": "disable"}],
                                     progress=False)
    layer = disabled.compress()
    disabled.calibrate([torch.randn(3, 2)])
    x = torch.randn(3, 2)
    torch.testing.assert_close(layer(x), layer[0].module(x))


def test_qat_starts_from_ptq_ranges_and_unwrap_restores_float_modules():
    torch.manual_seed(0)
    model = ConvBN().eval()
    x = torch.randn(4, 3, 6, 6)
    config_list = [{"quant_types": WO, "op_types": ["Conv2d"]}]
    ptq = PostTrainingQuantizer(model, config_list, dummy_input=x, progress=False)
    ptq.compress()
    ptq.calibrate([x])
    calibration = ptq.calibration()
    ptq.unwrap_model()
    qat = QATQuantizer(model, config_list, dummy_input=x, optimizer=None)
    qat.load_calibration(calibration)
    assert qat.params["conv"]["output"].scale[0] == pytest.approx(calibration["conv"]["output_scale"])
    model = qat.compress()
    model.eval()
    out_qat = model(x)
    ptq2 = PostTrainingQuantizer(ConvBN(), config_list, progress=False)
    assert ptq2 is not None
    assert qat.calibration()["conv"]["output_scale"] == pytest.approx(calibration["conv"]["output_scale"])
    # training moves the weights; unwrap gives back plain modules holding the trained weights
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(x).sum().backward()
    optimizer.step()
    trained = model.conv.module.weight.detach().clone()
    model = qat.unwrap_model()
    assert type(model.conv) is nn.Conv2d and type(model.head) is nn.Conv2d
    torch.testing.assert_close(model.conv.weight, trained)
    assert out_qat.shape == (4, 2, 6, 6)


def test_qat_whole_graph_trains_and_tracks_graph_ranges():
    torch.manual_seed(0)
    model = AddCat()
    x = torch.randn(4, 2, 4, 4)
    qat = QATQuantizer(model, [{"quant_types": WO, "op_types": ["default"]}], dummy_input=x)
    model = qat.compress()
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(8, 2, 4, 4)).pow(2).sum().backward()
        optimizer.step()
    assert model.a.module.weight.grad is not None
    graph = qat.calibration()[GRAPH_KEY]
    assert graph["/0/add/0"]["tracked_max_output"] > 0
    assert graph["/0/cat/0"]["shared_from"] == "inputs"
    model = qat.unwrap_model()
    model(x)  # plain float model again, no graph hooks left
    assert not model._forward_pre_hooks and type(model.a) is nn.Conv2d


def test_qat_training_forward_and_gradients_match_torch_ao_conv_bn_scheme():
    """Training-mode folding: conv(x, q(W f) / f) then the BatchNorm on batch statistics equals torch.ao's
    conv(x, q(W f)) / f (same function, same straight-through gradients, up to float rounding)."""
    from slimkit.frameworks.torch.quant_backend import bn_factor

    torch.manual_seed(0)
    model = _trained_bn(ConvBN())
    x = torch.randn(4, 3, 6, 6)
    quantizer = QATQuantizer(model, [{"quant_types": ["weight"], "op_types": ["Conv2d"]}], dummy_input=x)
    model = quantizer.compress().train()
    conv, bn = quantizer.layer("conv").module, model.bn
    reference_bn = nn.BatchNorm2d(bn.num_features)
    reference_bn.load_state_dict(bn.state_dict())  # statistics before the training forward updates them
    factor = bn_factor(reference_bn).detach().reshape(-1, 1, 1, 1) * bn.weight.reshape(-1, 1, 1, 1) / \
        reference_bn.weight.detach().reshape(-1, 1, 1, 1)  # depends on bn.weight (gamma) for the gradient
    out = model.bn(model.conv(x))
    out.square().sum().backward()
    grads = conv.weight.grad.clone(), bn.weight.grad.clone()
    conv.weight.grad, bn.weight.grad = None, None
    # reference: torch.ao's _forward_approximate, with the same per-channel parameters
    scaled = conv.weight * factor
    params = quantizer.params["conv"]["weight"]
    wq = scaled + (torch.fake_quantize_per_channel_affine(
        scaled.detach(), torch.tensor(params.scale, dtype=torch.float32), torch.zeros(len(params.scale),
                                                                                      dtype=torch.int32),
        0, params.qmin, params.qmax) - scaled.detach())
    expected = nn.functional.conv2d(x, wq, None, padding=1) / factor.reshape(1, -1, 1, 1)
    if conv.bias is not None:
        expected = expected + conv.bias.reshape(1, -1, 1, 1)
    expected = nn.functional.batch_norm(expected, reference_bn.running_mean, reference_bn.running_var, bn.weight,
                                        bn.bias, training=True, eps=bn.eps)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    expected.square().sum().backward()
    torch.testing.assert_close(grads[0], conv.weight.grad, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(grads[1], bn.weight.grad, atol=1e-3, rtol=1e-3)


def test_qat_training_fold_closed_form_gradient_equals_autograd_path(monkeypatch):
    """The BN-folded training weight with the closed-form gradient (built-in per-channel weights) computes the same
    forward values as the general autograd path, and the same gradients up to float rounding; a custom gradient or
    weight formula keeps the general path."""
    torch.manual_seed(0)
    x = torch.randn(4, 3, 6, 6)
    float_model = _trained_bn(ConvBN())
    float_model.bn.weight.data[1] = -0.7  # a negative gamma: the folded weight's channel changes sign

    def run(identity):
        model = copy.deepcopy(float_model)
        quantizer = QATQuantizer(model, [{"quant_types": ["weight", "output"], "op_types": ["Conv2d"]}],
                                 dummy_input=x)
        model = quantizer.compress().train()
        monkeypatch.setattr(QATQuantizer, "weight_grad_is_identity", lambda self, layer: identity)
        out = model(x)
        out.square().sum().backward()
        conv = quantizer.layer("conv").module
        return out.detach(), conv.weight.grad, model.bn.weight.grad, conv.bias.grad

    fused, general = run(True), run(False)
    torch.testing.assert_close(fused[0], general[0], atol=0, rtol=0)
    for a, b in zip(fused[1:], general[1:]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    monkeypatch.undo()
    model = ConvBN()
    qat = QATQuantizer(model, [{"quant_types": ["weight"], "op_types": ["Conv2d"]}], dummy_input=x)
    assert qat.weight_grad_is_identity(qat.layer("conv"))
    qat.quant_grad = type("Clipped", (qat.quant_grad,), {})
    assert not qat.weight_grad_is_identity(qat.layer("conv"))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.branch = nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.ReLU6(inplace=True))

    def forward(self, x):
        return x + self.branch(x)


class ResidualNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU6(inplace=True))
        self.block = Residual()

    def forward(self, x):
        return torch.flatten(self.block(self.stem(x)), 1).mean(1)


def _qat_run(monkeypatch, keep_mode_on):
    from slimkit.frameworks.torch.quant_runtime import GraphRuntime

    if keep_mode_on:
        pre = GraphRuntime._pre
        monkeypatch.setattr(GraphRuntime, "_pre", lambda self, path, counts, silent: pre(self, path, counts, False))
    torch.manual_seed(0)
    model = ResidualNet()
    qat = QATQuantizer(model, [{"quant_types": WO, "op_types": ["default"]}], dummy_input=torch.randn(1, 2, 4, 4))
    model = qat.compress()
    mode_on = {}
    for name in ("stem", "block", "block.branch", "block.branch.1"):
        model.get_submodule(name).register_forward_pre_hook(
            lambda module, args, name=name: mode_on.__setitem__(name, torch._C._len_torch_function_stack() > 0))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    outputs = []
    for step in range(3):
        optimizer.zero_grad()
        out = model(torch.randn(4, 2, 4, 4) * (step + 1))
        out.sum().backward()
        optimizer.step()
        outputs.append(out.detach())
    monkeypatch.undo()
    return outputs, qat.calibration(), mode_on, qat._graph_runtime


def test_whole_graph_mode_is_off_in_blocks_without_graph_tensors_and_results_are_unchanged(monkeypatch):
    outputs, calibration, mode_on, runtime = _qat_run(monkeypatch, keep_mode_on=False)
    # the fused conv/BN/ReLU6 blocks hold no graph tensor: the function mode is off inside them; the residual
    # block's add is a graph tensor: on there
    assert mode_on == {"stem": False, "block": True, "block.branch": False, "block.branch.1": False}
    assert {"block/0/add/0", "/0/flatten/0", "/0/mean/0"} <= set(calibration[GRAPH_KEY])
    assert set(runtime.plan.graph) == runtime.seen
    reference_outputs, reference, reference_mode_on, _ = _qat_run(monkeypatch, keep_mode_on=True)
    assert reference_mode_on == dict.fromkeys(mode_on, True)
    for out, expected in zip(outputs, reference_outputs):
        assert torch.equal(out, expected)
    assert calibration == reference
