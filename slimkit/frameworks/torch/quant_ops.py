"""PyTorch implementation of the quantization ops seam (:class:`slimkit.compression.quant.QuantOps`).

Fake quantization uses ``torch.fake_quantize_per_tensor_affine`` / ``_per_channel_affine``
(fused kernels with the clipped straight-through gradient, exported by ``torch.onnx`` as
QuantizeLinear / DequantizeLinear); widths above 16 bits use the same formula in plain ops.

Example:

>>> import numpy as np, torch
>>> from slimkit.compression.quant import affine_params, Scheme
>>> from slimkit.frameworks.torch.quant_ops import OPS
>>> p = affine_params(np.array([-1.0]), np.array([1.0]), 8, Scheme(symmetric=True, narrow=True))
>>> torch.allclose(OPS.fake_quant(torch.tensor([0.5, 2.0]), p), torch.tensor([64 / 127, 1.0]))
True
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from slimkit.compression.channels import channel_view
from slimkit.compression.quant import GridBounds, QParams, grid_bounds
from slimkit.frameworks.torch.quant_onnx import MAX_BITS, onnx_fake_quant


class _FakeQuantPerTensor(torch.autograd.Function):
    """torch.fake_quantize_per_tensor_affine's values and gradient (zero where clamped), ~2.5x faster on CPU
    (forward and backward): ``out = (clamp(round(x * (1 / scale)) + zp, qmin, qmax) - zp) * scale`` is computed as
    ``round(clamp(x, lo, hi) * (1 / scale)) * scale``, where ``[lo, hi]`` (:func:`grid_bounds`) holds exactly the
    float32 values whose rounded ``x * (1 / scale)`` lies in ``[qmin - zp, qmax - zp]``: four passes over ``x``.
    The gradient passes where ``lo <= x <= hi``, one fused ``hardtanh_backward`` pass over the saved ``x``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, bounds: GridBounds) -> torch.Tensor:
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(x)
            ctx.bounds = bounds
        return x.clamp(bounds.lo, bounds.hi).mul_(bounds.inverse).round_().mul_(bounds.scale)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple:
        (x,) = ctx.saved_tensors
        bounds = ctx.bounds
        # hardtanh_backward keeps the gradient where below < x < above, i.e. lo <= x <= hi
        return torch.ops.aten.hardtanh_backward(grad_output, x, bounds.below, bounds.above), None


def _fake_quant_per_channel(x: torch.Tensor, inverse: torch.Tensor, scale: torch.Tensor,
                            zero_point: torch.Tensor | None, qmin: int, qmax: int) -> torch.Tensor:
    """``torch.fake_quantize_per_channel_affine``'s values in four passes over ``x`` (no autograd)."""
    q = torch.mul(x, inverse).round_()
    if zero_point is not None:
        return q.add_(zero_point).clamp_(qmin, qmax).sub_(zero_point).mul_(scale)
    return q.clamp_(qmin, qmax).mul_(scale)


class _FakeQuantPerChannelSTE(torch.autograd.Function):
    """Per-channel fake quantization with the plain straight-through gradient (no ``x + (q - x).detach()`` round
    trip, so the values are exactly ``torch.fake_quantize_per_channel_affine``'s)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, inverse: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None,
                qmin: int, qmax: int) -> torch.Tensor:
        return _fake_quant_per_channel(x, inverse, scale, zero_point, qmin, qmax)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple:
        return grad_output, None, None, None, None, None


class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, forward: Callable, backward: Callable) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.backward_fn = backward
        with torch.no_grad():
            out = forward(x.detach())
        return out.clone() if out is x else out

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple:
        (x,) = ctx.saved_tensors
        return ctx.backward_fn(x, grad_output.clone()), None, None


class TorchQuantOps:
    """The ops seam for PyTorch tensors."""

    def __init__(self) -> None:
        self.onnx_ranges = False  # while exporting ONNX: every width as a clamp + int8 / int16 fake quant

    @contextlib.contextmanager
    def exporting_onnx(self) -> Iterator[None]:
        self.onnx_ranges = True
        try:
            yield
        finally:
            self.onnx_ranges = False

    def native(self, params: QParams, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``params``' scale (float32) and zero point (int32) as tensors on ``like``'s device (cached)."""
        key = like.device
        cached = params._native.get(key)
        if cached is None:
            scale = torch.as_tensor(params.scale, dtype=torch.float32, device=like.device)
            zero_point = torch.as_tensor(params.zero_point, dtype=torch.int32, device=like.device)
            cached = (scale, zero_point)
            if not torch.compiler.is_exporting():  # tensors made while exporting are fake: never keep them
                params._native[key] = cached
        return cached

    @contextlib.contextmanager
    def natives_given(self, params: QParams, scale: torch.Tensor | None, zero_point: torch.Tensor | None
                      ) -> Iterator[None]:
        """:meth:`native` gives ``scale`` and ``zero_point`` (tensors a graph capture already holds, such as a module's
        buffers) for ``params`` during the block, instead of making constants of them; nothing changes when ``scale``
        is None."""
        if scale is None:
            yield
            return
        saved = params._native.get(scale.device)
        params._native[scale.device] = (scale, zero_point)
        try:
            yield
        finally:
            if saved is None:
                del params._native[scale.device]
            else:
                params._native[scale.device] = saved

    def broadcastable(self, params: QParams, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and zero point as tensors that broadcast against ``like`` (per-channel along ``axis``)."""
        scale, zero_point = self.native(params, like)
        if params.per_channel:
            return (channel_view(scale, like.dim(), params.axis % like.dim()),
                    channel_view(zero_point, like.dim(), params.axis % like.dim()))
        return scale[0], zero_point[0]

    def fake_quant(self, x: torch.Tensor, params: QParams) -> torch.Tensor:
        qmin, qmax = params.qmin, params.qmax
        if self.onnx_ranges and params.bits <= MAX_BITS:
            return onnx_fake_quant(x, params)  # widths ONNX holds: clamp to the grid, then its int8 / int16 range
        canonical = self.onnx_ranges or torch.compiler.is_exporting()
        if not params.per_channel and not canonical and params.bits <= 16 and x.dtype == torch.float32:
            if "bounds" not in params._native:  # Python numbers holding float32 values: no tensors made per step
                params._native["bounds"] = grid_bounds(params)
            bounds = params._native["bounds"]
            if bounds is not None:
                return _FakeQuantPerTensor.apply(x, bounds)
        if params.bits > 16 or x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            scale, zero_point = self.native(params, x)
            return self._fake_quant_generic(x, scale, zero_point, qmin, qmax, params.axis)
        if params.per_channel and not canonical:
            views = self._channel_views(params, x)
            if x.requires_grad and torch.is_grad_enabled():
                return _FakeQuantPerChannelSTE.apply(x, *views, params.qmin, params.qmax)
            return _fake_quant_per_channel(x, *views, params.qmin, params.qmax)  # no autograd Function to set up
        # While a graph is captured (torch.onnx, torch.export for the TFLite converter) emit torch's own
        # fake-quant ops: exporters turn them into QuantizeLinear/DequantizeLinear or int8 TFLite tensors.
        if not params.per_channel:  # as Python numbers (the float32 scale): no constant tensors to trace
            return torch.fake_quantize_per_tensor_affine(x, float(np.float32(params.scale[0])),
                                                         int(params.zero_point[0]), qmin, qmax)
        scale, zero_point = self.native(params, x)
        return torch.fake_quantize_per_channel_affine(x, scale, zero_point, params.axis % x.dim(), qmin, qmax)

    def _channel_views(self, params: QParams, x: torch.Tensor) -> tuple:
        """``1 / scale``, ``scale`` and the zero point (None when all zero) in ``x``'s dtype, shaped to broadcast
        along ``params.axis``, for :class:`_FakeQuantPerChannelSTE`: made from the float32 numpy values (the same
        numbers torch's kernel uses), with no tensor operation on the host; cached on ``params``."""
        axis = params.axis % x.dim()
        key = ("view", x.device, x.dtype, x.dim(), axis)
        views = params._native.get(key)
        if views is None:
            def view(values: np.ndarray) -> torch.Tensor:
                tensor = torch.from_numpy(channel_view(values, x.dim(), axis))
                return tensor if (x.device.type, x.dtype) == ("cpu", torch.float32) else tensor.to(x.device, x.dtype)

            scale = params.scale.astype(np.float32)
            zero_point = view(params.zero_point.astype(np.float32)) if params.zero_point.any() else None
            views = (view(np.float32(1.0) / scale), view(scale), zero_point)
            if not torch.compiler.is_exporting():
                params._native[key] = views
        return views

    def _fake_quant_generic(self, x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int,
                            qmax: int, axis: int | None) -> torch.Tensor:
        scale, zero_point = scale.double(), zero_point.double()
        if axis is not None:
            scale, zero_point = channel_view(scale, x.dim(), axis), channel_view(zero_point, x.dim(), axis)
        else:
            scale, zero_point = scale[0], zero_point[0]
        xd = x.double()
        q = torch.clamp(self.round_ste(xd / scale) + zero_point, qmin, qmax)
        return ((q - zero_point) * scale).to(x.dtype)

    def straight_through(self, x: torch.Tensor, forward: Callable, backward: Callable) -> torch.Tensor:
        return _StraightThrough.apply(x, forward, backward)

    def round_ste(self, x: torch.Tensor) -> torch.Tensor:
        return x + (torch.round(x) - x).detach()

    def sign_ste(self, x: torch.Tensor) -> torch.Tensor:
        sign = torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))
        return x + (sign - x).detach()

    def clamp(self, x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        return torch.clamp(x, lo, hi)

    def tanh(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x)

    def abs_max(self, x: torch.Tensor) -> torch.Tensor:
        return x.detach().abs().max()

    def min_max(self, x: torch.Tensor, axis: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        x = x.detach()
        if axis is None:
            lo, hi = torch.stack(torch.aminmax(x)).tolist()  # one device-to-host copy
            return np.array([lo]), np.array([hi])
        dims = tuple(d for d in range(x.dim()) if d != axis % x.dim())
        if not dims:
            return x.double().cpu().numpy(), x.double().cpu().numpy()
        # amin and amax: faster than aminmax(dim=) on CPU; one device-to-host copy for both
        host = torch.stack([torch.amin(x, dim=dims), torch.amax(x, dim=dims)]).cpu().numpy().astype(np.float64)
        return host[0], host[1]

    histogram_samples = 1 << 16  # larger tensors are histogrammed on an evenly strided sample

    def histogram(self, x: torch.Tensor, bins: int, hi: float, skip_zeros: bool = False) -> np.ndarray:
        flat = x.detach().reshape(-1)
        stride = -(-flat.numel() // self.histogram_samples)
        if stride > 1:
            flat = flat[::stride]
        magnitude = flat.abs().float()
        counts = torch.histc(magnitude, bins=bins, min=0.0, max=hi).double()
        if skip_zeros:
            counts[0] -= (magnitude == 0).sum()
        return counts.cpu().numpy() * stride

    def clip_grad(self, x: torch.Tensor, grad: torch.Tensor, params: QParams) -> torch.Tensor:
        scale, zero_point = self.native(params, x)
        if params.per_channel:
            scale = channel_view(scale, x.dim(), params.axis)
            zero_point = channel_view(zero_point, x.dim(), params.axis)
        else:
            scale, zero_point = scale[0], zero_point[0]
        q = torch.round(x / scale) + zero_point
        return grad.masked_fill((q < params.qmin) | (q > params.qmax), 0)

    def zero_grad_where_abs_above(self, x: torch.Tensor, grad: torch.Tensor, limit: float) -> torch.Tensor:
        return grad.masked_fill(x.abs() > limit, 0)


OPS = TorchQuantOps()
