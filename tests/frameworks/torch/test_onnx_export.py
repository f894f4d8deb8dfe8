"""ONNX export traces the model's own input (token ids, several inputs), input_shape only as a fallback;
onnxruntime reproduces PyTorch; failures name their cause and write nothing."""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from slimkit import ConfigError, UnsupportedOpError
from slimkit.algorithms.pruning import LevelPruner
from slimkit.algorithms.quantization import PostTrainingQuantizer
from slimkit.frameworks.torch.onnx_export import export_onnx


class TokenClassifier(nn.Module):
    """int64 token ids (and optionally a float mask) -> logits, through an embedding."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(50, 16, padding_idx=0)
        self.head = nn.Linear(16, 3)

    def forward(self, ids, mask=None):
        mask = (ids != 0).float() if mask is None else mask
        pooled = (self.embed(ids) * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return self.head(pooled)


def _ids(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 50, (2, 7), generator=g)


def _run(path, *inputs, optimize=True):
    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs)}
    assert len(feeds) == len(inputs)
    return session.run(None, feeds)[0]


def test_token_ids_export_and_match_pytorch(tmp_path):
    model = TokenClassifier().eval()
    path = tmp_path / "m.onnx"
    export_onnx(model, path, _ids(0))
    for seed in range(3):
        ids = _ids(seed)
        np.testing.assert_allclose(_run(path, ids), model(ids).detach().numpy(), atol=1e-6, rtol=0)


def test_several_inputs_as_a_tuple(tmp_path):
    model = TokenClassifier().eval()
    path = tmp_path / "m.onnx"
    export_onnx(model, path, (_ids(0), torch.ones(2, 7)))
    for seed in range(3):
        ids, mask = _ids(seed), (torch.rand(2, 7) > 0.3).float()
        np.testing.assert_allclose(_run(path, ids, mask), model(ids, mask).detach().numpy(), atol=1e-6, rtol=0)


def test_pruner_export_model_takes_dummy_input(tmp_path):
    model = TokenClassifier()
    pruner = LevelPruner(model, [{"sparsity": 0.5, "op_types": ["Linear"]}])
    pruner.compress()
    model.eval()
    path = tmp_path / "pruned.onnx"
    pruner.export_model(tmp_path / "m.pth", onnx_path=path, dummy_input=_ids(0))
    ids = _ids(1)
    np.testing.assert_allclose(_run(path, ids), model(ids).detach().numpy(), atol=1e-6, rtol=0)


def test_quantizer_exports_with_its_own_dummy_input(tmp_path):
    """No input_shape: the quantizer's dummy_input (int64 ids) is the example; the QDQ graph computes the
    fake-quant model exactly when onnxruntime runs it as written."""
    model = TokenClassifier()
    ptq = PostTrainingQuantizer(model, [{"quant_types": ["weight", "output"], "op_types": ["Linear"]}],
                                algorithm="minmax", dummy_input=_ids(0))
    ptq.compress()
    ptq.calibrate([_ids(s) for s in range(4)])
    model.eval()
    path = tmp_path / "q.onnx"
    ptq.export_model(tmp_path / "q.pth", onnx_path=path)
    for seed in (5, 6, 7):
        ids = _ids(seed)
        np.testing.assert_allclose(_run(path, ids, optimize=False), model(ids).detach().numpy(), atol=1e-6, rtol=0)


def test_input_shape_is_a_float_fallback(tmp_path):
    model = nn.Linear(4, 2).eval()
    path = tmp_path / "m.onnx"
    export_onnx(model, path, [3, 4])
    x = torch.randn(3, 4)
    np.testing.assert_allclose(_run(path, x), model(x).detach().numpy(), atol=1e-6, rtol=0)


def test_export_model_without_any_example_is_a_config_error(tmp_path):
    pruner = LevelPruner(TokenClassifier(), [{"sparsity": 0.5, "op_types": ["Linear"]}])
    pruner.compress()
    with pytest.raises(ConfigError, match=r"dummy_input=.*input_shape"):
        pruner.export_model(tmp_path / "m.pth", onnx_path=tmp_path / "m.onnx")
    assert os.listdir(tmp_path) == []


def test_untraceable_model_names_the_cause_and_writes_nothing(tmp_path):
    class Branchy(nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x - 1  # data-dependent control flow: no single graph

    path = tmp_path / "m.onnx"
    with pytest.raises(UnsupportedOpError, match=r"ONNX export of Branchy on inputs \[\(2, 3\) torch.float32\]"):
        export_onnx(Branchy(), path, torch.ones(2, 3))
    assert os.listdir(tmp_path) == []


def test_float_noise_for_token_ids_is_named(tmp_path):
    """input_shape gives a float input; an embedding cannot take it, and the message says what to pass."""
    with pytest.raises(UnsupportedOpError, match="pass the model's real input as dummy_input"):
        export_onnx(TokenClassifier(), tmp_path / "m.onnx", [2, 7])
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_view_of_a_transposed_tensor_exports(tmp_path):
    """Hugging Face's T5 / Swin attention pattern: the dynamo exporter's passes reject it after capture; the
    captured graph is exported by the TorchScript exporter instead."""
    from tests.hf_zoo import HF_ARCHS, hf_inputs

    model, x = HF_ARCHS["t5_encoder"]()
    path = tmp_path / "t5.onnx"
    export_onnx(model, path, x)
    for ids in hf_inputs("t5_encoder", 2):
        np.testing.assert_allclose(_run(path, ids), model(ids).detach().numpy(), atol=1e-5, rtol=0)
