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


def test_onnx_export_refuses_non_8_bit(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    qat = QATQuantizer(model, [{"quant_types": ["weight"], "quant_bits": 4, "op_types": ["Linear"]}])
    qat.compress()
    with pytest.raises(UnsupportedOpError, match="8-bit"):
        qat.export_model(tmp_path / "m.pth", onnx_path=tmp_path / "m.onnx", input_shape=[1, 3])
    assert not (tmp_path / "m.onnx").exists()
