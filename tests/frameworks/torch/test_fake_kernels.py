"""fake_kernels: torch's fake-quant ops trace by shape (no fallback run on real tensors), with the real kernels'
shapes, strides and dtypes, and a capture of a fake-quantized model falls back on none of them."""

from __future__ import annotations

import pytest
import torch
from torch._subclasses import fake_tensor
from torch._subclasses.fake_tensor import FakeTensorMode

from slimkit.algorithms.quantization import PostTrainingQuantizer
from slimkit.frameworks.torch import fake_kernels
from slimkit.frameworks.torch.graph import capture_graph
from slimkit.frameworks.torch.quant_backend import BACKEND

_CALLS = {
    "per_tensor": lambda t: torch.fake_quantize_per_tensor_affine(t, 0.1, 3, -128, 127),
    "per_tensor_tensor_qparams": lambda t: torch.fake_quantize_per_tensor_affine(
        t, torch.tensor(0.1), torch.tensor(3, dtype=torch.int32), -128, 127),
    "per_channel": lambda t: torch.fake_quantize_per_channel_affine(
        t, torch.full((4,), 0.1), torch.zeros(4, dtype=torch.int32), 1, -128, 127),
}


@pytest.mark.parametrize("name", sorted(_CALLS))
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_fake_outputs_describe_the_real_ones(name, memory_format):
    fake_kernels.register()
    x = torch.randn(2, 4, 5, 3).contiguous(memory_format=memory_format).requires_grad_()
    real = _CALLS[name](x)
    with FakeTensorMode(allow_fallback_kernels=False) as mode:  # raises on an op without a fake kernel
        fake = _CALLS[name](mode.from_tensor(x))
    assert (tuple(fake.shape), fake.stride(), fake.dtype) == (tuple(real.shape), real.stride(), real.dtype)


def test_capture_of_a_quantized_model_runs_no_fallback_kernel(monkeypatch):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 4)).eval()
    x = torch.randn(1, 3, 8, 8)
    quantizer = PostTrainingQuantizer(model, [{"quant_types": ["input", "weight", "output"],
                                               "op_types": ["default"]}], algorithm="minmax", dummy_input=x)
    quantizer.compress()
    quantizer.calibrate([torch.randn(4, 3, 8, 8)])
    fallbacks = []
    run_fallback = fake_tensor.run_fallback_kernel
    monkeypatch.setattr(fake_tensor, "run_fallback_kernel",
                        lambda mode, func, *args: fallbacks.append(str(func)) or run_fallback(mode, func, *args))
    with quantizer.fixed_parameters(), BACKEND.fixed_for_capture(model, quantizer), torch.no_grad():
        captured = capture_graph(model, (x,))
    targets = [str(node.target) for node in captured.call_nodes()]
    assert targets.count("aten.fake_quantize_per_tensor_affine.default") >= 3
    assert targets.count("aten.fake_quantize_per_channel_affine.default") == 2
    assert fallbacks == []
