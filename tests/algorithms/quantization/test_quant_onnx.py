"""ONNX export with QuantizeLinear / DequantizeLinear, run by onnxruntime, matches the fake-quant model."""

import numpy as np
import pytest
import torch

from slimkit.algorithms.quantization import PostTrainingQuantizer, QATQuantizer
from slimkit.errors import UnsupportedOpError
from slimkit.models import DigitsCNN

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _run(path, x, optimize):
    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


@pytest.mark.parametrize("op_types", [["Conv2d", "Linear"], ["default"]])
def test_onnx_qdq_model_matches_fake_quant_model(tmp_path, op_types):
    torch.manual_seed(0)
    model = DigitsCNN(width=8).eval()
    x = torch.rand(4, 1, 8, 8)
    ptq = PostTrainingQuantizer(model, [{"quant_types": ["weight", "output"], "op_types": op_types}],
                                algorithm="minmax", dummy_input=x, progress=False)
    model = ptq.compress()
    ptq.calibrate([torch.rand(8, 1, 8, 8) for _ in range(2)] + [x])
    expected = model(x).detach().numpy()
    path = tmp_path / "q.onnx"
    ptq.export_model(tmp_path / "q.pth", onnx_path=path, input_shape=[4, 1, 8, 8])
    graph = onnx.load(str(path)).graph
    kinds = [node.op_type for node in graph.node]
    assert kinds.count("QuantizeLinear") >= 5 and kinds.count("DequantizeLinear") >= 5
    # exactly the fake-quant arithmetic when onnxruntime runs the QDQ graph as written
    np.testing.assert_allclose(_run(path, x, optimize=False), expected, atol=1e-6, rtol=0)
    # with graph optimisations onnxruntime fuses QDQ into integer kernels: within one output step (measured)
    step = ptq.params["fc"]["output"].scale[0]
    assert np.abs(_run(path, x, optimize=True) - expected).max() <= 2 * step


def _calibrated(config_list, x):
    torch.manual_seed(0)
    model = DigitsCNN(width=8).eval()
    ptq = PostTrainingQuantizer(model, config_list, algorithm="minmax", dummy_input=x, progress=False)
    model = ptq.compress()
    ptq.calibrate([torch.rand(8, 1, 8, 8) for _ in range(2)] + [x])
    return ptq, model


def _quant_dtypes(path):
    graph = onnx.load(str(path)).graph
    initializers = {t.name: t.data_type for t in graph.initializer}
    constants = {out: node.attribute[0].t.data_type for node in graph.node if node.op_type == "Constant"
                 for out in node.output}
    return {initializers.get(node.input[2], constants.get(node.input[2])) for node in graph.node
            if node.op_type == "QuantizeLinear" and len(node.input) > 2}


@pytest.mark.parametrize("base", [["Conv2d", "Linear"], ["default"]])
def test_onnx_mixed_4_and_8_bit_model_matches_fake_quant_model(tmp_path, base):
    """4-bit layers export as a Clip to their grid followed by int8 QuantizeLinear / DequantizeLinear."""
    x = torch.rand(4, 1, 8, 8)
    ptq, model = _calibrated([{"quant_types": ["weight", "output"], "op_types": base},
                              {"quant_types": ["weight", "output"], "quant_bits": 4, "op_names": ["conv2", "conv3"]}],
                             x)
    assert ptq.params["conv2"]["weight"].bits == 4 and ptq.params["conv1"]["weight"].bits == 8
    assert ptq.params["conv3"]["output"].qmax - ptq.params["conv3"]["output"].qmin == 15
    expected = model(x).detach().numpy()
    path = tmp_path / "mixed.onnx"
    ptq.export_model(tmp_path / "m.pth", onnx_path=path, input_shape=[4, 1, 8, 8])
    assert _quant_dtypes(path) <= {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
    np.testing.assert_allclose(_run(path, x, optimize=False), expected, atol=1e-6, rtol=0)
    step = ptq.params["fc"]["output"].scale[0]
    assert np.abs(_run(path, x, optimize=True) - expected).max() <= 2 * step


def test_onnx_12_and_16_bit_layers_export_as_int16_qdq_at_opset_21(tmp_path):
    x = torch.rand(4, 1, 8, 8)
    ptq, model = _calibrated([{"quant_types": ["weight", "output"], "op_types": ["Conv2d", "Linear"]},
                              {"quant_types": ["weight", "output"], "quant_bits": 16, "op_names": ["conv2"]},
                              {"quant_types": ["weight", "output"], "quant_bits": 12, "op_names": ["fc"]}], x)
    expected = model(x).detach().numpy()
    path = tmp_path / "wide.onnx"
    ptq.export_model(tmp_path / "m.pth", onnx_path=path, input_shape=[4, 1, 8, 8])
    assert max(o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx")) >= 21
    assert onnx.TensorProto.INT16 in _quant_dtypes(path) and onnx.TensorProto.INT8 in _quant_dtypes(path)
    np.testing.assert_allclose(_run(path, x, optimize=False), expected, atol=1e-6, rtol=0)


def test_onnx_export_refuses_more_than_16_bits_naming_the_layer(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    qat = QATQuantizer(model, [{"quant_types": ["weight"], "quant_bits": 24, "op_types": ["Linear"]}])
    qat.compress()
    with pytest.raises(UnsupportedOpError, match=r"'0' quantizes its weight with 24 bits"):
        qat.export_model(tmp_path / "m.pth", onnx_path=tmp_path / "m.onnx", input_shape=[1, 3])
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 9, 12, 15])
def test_clip_to_grid_then_container_fake_quant_equals_the_narrow_fake_quant(bits):
    """Clip(x, (qmin - zp) s, (qmax - zp) s) then the int8 / int16 fake quant equals the bits-wide fake quant."""
    from slimkit.compression.quant import Scheme, affine_params
    from slimkit.frameworks.torch.quant_onnx import onnx_fake_quant
    from slimkit.frameworks.torch.quant_ops import OPS

    rng = np.random.default_rng(bits)
    for scheme in (Scheme(), Scheme(signed=False), Scheme(symmetric=True, narrow=True),
                   Scheme(symmetric=True, per_channel=True, narrow=True), Scheme(per_channel=True)):
        lo, hi = -rng.uniform(0.01, 9, 6), rng.uniform(0.01, 9, 6)
        if scheme.per_channel:
            params = affine_params(lo, hi, bits, scheme, axis=1)
            x = torch.tensor(rng.uniform(-15, 15, (3, 6, 50)), dtype=torch.float32)
        else:
            params = affine_params(lo[:1], hi[:1], bits, scheme)
            x = torch.tensor(rng.uniform(-15, 15, 5000), dtype=torch.float32)
        torch.testing.assert_close(onnx_fake_quant(x, params), OPS.fake_quant(x, params), atol=0, rtol=0)
