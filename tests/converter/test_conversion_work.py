"""The converter does each piece of an int8 conversion's work once: every quantized layer's kernel (folded,
fake-quantized weight and int32 bias) is computed once per call of the layer, in the eager check, and the capture
takes it from there; the weight parameters are refreshed once; per-channel weight grids enter the capture as buffers,
not as constants made (and copied) in the trace. The file is the same as when the capture computes the kernels
again."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from slimkit.algorithms.quantization import PostTrainingQuantizer
from slimkit.converter import TFLiteConverter
from slimkit.frameworks.torch.quant_backend import BACKEND, QuantWrapper


class _SharedHead(nn.Module):
    """A conv + BatchNorm + ReLU stem, then one Linear head called on two halves of the features (two calls)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x):
        a, b = torch.flatten(self.stem(x), 1).chunk(2, 1)
        return self.head(a) + self.head(b)


def _quantized():
    torch.manual_seed(0)
    model = _SharedHead().eval()
    x = torch.randn(1, 3, 8, 8)
    quantizer = PostTrainingQuantizer(model, [{"quant_types": ["input", "weight", "output"],
                                               "op_types": ["default"]}], algorithm="minmax", dummy_input=x)
    quantizer.compress()
    quantizer.calibrate([torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)])
    return model.eval(), x, quantizer


def test_each_kernel_is_computed_once_per_call(tmp_path, monkeypatch):
    model, x, quantizer = _quantized()
    quantizer.unfreeze()  # as a QAT model fresh from training: the conversion freezes it for the capture
    computed, refreshed = [], []
    kernel, refresh = QuantWrapper.kernel, quantizer.refresh_weight_params
    monkeypatch.setattr(QuantWrapper, "kernel", lambda self, q, layer, call=0: computed.append(
        (layer.name, call)) or kernel(self, q, layer, call))
    monkeypatch.setattr(quantizer, "refresh_weight_params", lambda: refreshed.append(1) or refresh())
    TFLiteConverter(model, x, tmp_path / "m.tflite").convert()
    assert sorted(computed) == [("head", 0), ("head", 1), ("stem.0", 0)]
    assert refreshed == [1] and not quantizer.frozen
    assert all(w._kept is None for w in model.modules() if isinstance(w, QuantWrapper))  # nothing kept after


def test_kept_kernels_give_the_same_file(monkeypatch):
    model, x, _ = _quantized()
    kept = TFLiteConverter(model, x, "unused.tflite").to_bytes()
    monkeypatch.setattr(BACKEND, "kept_kernels", lambda model, quantizer: contextlib.nullcontext())
    assert TFLiteConverter(model, x, "unused.tflite").to_bytes() == kept


def test_per_channel_weight_grids_are_captured_as_buffers():
    model, x, _ = _quantized()
    converter = TFLiteConverter(model, x, "unused.tflite")
    captured = converter.capture()
    targets = [str(node.target) for node in captured.call_nodes()]
    assert targets.count("aten.fake_quantize_per_channel_affine.default") == 3  # stem, head on each of its calls
    assert "aten.lift_fresh_copy.default" not in targets and "aten.to.device" not in targets
    grids = sorted(name for name in captured.state_names.values() if "_capture_weight_" in name)
    assert grids == ["head._capture_weight_scale", "head._capture_weight_zero_point",
                     "stem.0._capture_weight_scale", "stem.0._capture_weight_zero_point"]
    assert all(not name.startswith("_capture") for w in model.modules() if isinstance(w, QuantWrapper)
               for name in w._buffers)  # removed after the capture
