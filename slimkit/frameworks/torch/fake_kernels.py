"""Shape-only (fake) kernels for torch's fake-quantization ops, so that tracing a fake-quantized model stays cheap.

torch 2.13 has no meta kernel for ``aten.fake_quantize_per_tensor_affine_cachemask`` and its per-channel and
tensor-qparams siblings (the ops ``torch.fake_quantize_per_*_affine`` decompose into). A fake-tensor trace then runs
each of them as a *fallback*: it makes real tensors of the input's shape and runs the CPU kernel on them, once per
fake-quantized activation and weight; on a ResNet-50 at 224x224 that was most of the capture. Each op returns its
input's shape and strides twice (the values and the boolean mask), which is all a trace needs; registering that
(:func:`register`, once per process, and only where torch has no meta kernel of its own) makes those calls cost what
any other op costs.

Example:

>>> import torch
>>> from torch._subclasses.fake_tensor import FakeTensorMode
>>> from slimkit.frameworks.torch.fake_kernels import register
>>> register()
>>> with FakeTensorMode(allow_fallback_kernels=False):
...     y = torch.fake_quantize_per_tensor_affine(torch.empty(1, 8, 4, 4), 0.1, 0, -128, 127)
>>> tuple(y.shape), y.dtype
((1, 8, 4, 4), torch.float32)
"""

from __future__ import annotations

import functools

import torch

_OPS = ("aten::fake_quantize_per_tensor_affine_cachemask", "aten::fake_quantize_per_channel_affine_cachemask",
        "aten::_fake_quantize_per_tensor_affine_cachemask_tensor_qparams")


def _values_and_mask(x: torch.Tensor, *args) -> tuple[torch.Tensor, torch.Tensor]:
    # the CPU kernels allocate both outputs with empty_like(x) (memory format preserved)
    return torch.empty_like(x), torch.empty_like(x, dtype=torch.bool)


@functools.cache
def register() -> None:
    """Register the fake kernels (idempotent; an op torch already gives a meta kernel keeps torch's)."""
    for name in _OPS:
        if not torch._C._dispatch_has_kernel_for_dispatch_key(name, "Meta"):
            torch.library.register_fake(name, _values_and_mask)
