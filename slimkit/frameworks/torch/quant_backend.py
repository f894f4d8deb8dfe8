"""PyTorch side of quantization: the fake-quant wrapper, fused-output hooks, BN folding, files.

:class:`QuantWrapper` extends the pruning :class:`~slimkit.frameworks.torch.wrapper.CompressionWrapper`
(masks still apply, the wrapped module's parameters are never written). On every forward it
asks the quantizer for the quantized input(s), weight and output. With BatchNorm folding the
wrapper multiplies the weight by ``gamma / sqrt(running_var + eps)`` before quantizing it and
divides the quantized weight by the same factor (per output channel: the same as dividing the conv
output, torch.ao's QAT ConvBn scheme, but on the weight), so the following BatchNorm (left in the
model, on batch statistics in training) sees the conv's scale; in eval the result is the folded conv.
The output of a fused conv+BN+ReLU is quantized once, after the ReLU, by a forward hook on the tail
module's right call.

Example:

>>> import torch
>>> from slimkit.frameworks.torch.quant_backend import fold_bn
>>> conv, bn = torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3).eval()
>>> bn.running_mean.uniform_(); bn.running_var.uniform_(0.5, 2)
tensor(...)
>>> x = torch.randn(1, 2, 5, 5)
>>> torch.allclose(fold_bn(conv, bn)(x), bn(conv(x)), atol=1e-5)
True
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
from torch import nn

from slimkit.compression import bn_fold
from slimkit.compression.channels import channel_view
from slimkit.compression.composition import stacking_targets
from slimkit.compression.quant import QuantType
from slimkit.errors import SlimkitError
from slimkit.frameworks.torch import int8_emulation, quant_graph
from slimkit.frameworks.torch.adapter import ADAPTER, refuse_read_by_parent, set_submodule, wrapper_at
from slimkit.frameworks.torch.quant_ops import OPS
from slimkit.frameworks.torch.wrapper import CompressionWrapper, Ref
from slimkit.utils.files import atomic_path

_no_function_mode = torch._C.DisableTorchFunction
"""Context in which ``__torch_function__`` handlers and modes are skipped (the whole-graph runtime's mode
does nothing inside wrapped layers and the quantizer's own calls)."""


def bn_factor(bn: nn.Module) -> torch.Tensor:
    """``gamma / sqrt(running_var + eps)`` of a BatchNorm in eval (:func:`slimkit.compression.bn_fold.bn_factor`)."""
    return bn_fold.bn_factor(bn.weight, bn.running_var, bn.eps, torch.sqrt)


def folded_parameters(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.Module) -> tuple[torch.Tensor,
                                                                                               torch.Tensor]:
    """Weight and bias of a conv with ``bn`` (eval statistics) folded in (:mod:`slimkit.compression.bn_fold`)."""
    factor = bn_factor(bn)
    return (bn_fold.fold_weight(weight, factor, lambda values: channel_view(values, weight.dim(), 0)),
            bn_fold.folded_bias(bias, bn.running_mean, bn.bias, factor))


def input_params(quantizer: Any, layer: Any, call: int = 0) -> Any:
    """The parameters of the grid ``layer``'s input lies on: its own input quantization's, else (whole-graph mode) those
    of the tensor that feeds it; None when neither is known."""
    key = "input" if quantizer.quantizes(layer, QuantType.QUANT_INPUT) else "input_from_graph"
    return quantizer.params[layer.name].get(quantizer._key(key, call))


def quantized_bias(quantizer: Any, layer: Any, bias: torch.Tensor | None, call: int = 0) -> torch.Tensor | None:
    """``bias`` on the integer kernel's grid (scale ``input_scale * weight_scale``, ``profile.bias_bits``),
    straight-through; unchanged where the input or weight parameters are not known yet."""
    bits = getattr(quantizer.profile, "bias_bits", None)
    if bias is None or not bits or not quantizer.quantizes(layer, QuantType.QUANT_WEIGHT):
        return bias
    inp, weight = input_params(quantizer, layer, call), quantizer.params[layer.name].get("weight")
    if inp is None or weight is None or inp.scale.size != 1 or weight.bits <= 1:
        return bias
    values = (inp.scale[0] * weight.scale).astype("float32")  # numpy: no data-dependent checks under export
    if values.size not in (1, bias.numel()) or not (values > 0).all():
        return bias
    scale = torch.as_tensor(values, device=bias.device)
    qmax = 2 ** (bits - 1) - 1
    q = torch.clamp(torch.round(bias.detach() / scale), -qmax - 1, qmax) * scale
    return bias + (q - bias.detach())


def fold_bn(conv: nn.Module, bn: nn.Module) -> nn.Module:
    """A new conv computing ``bn(conv(x))`` with ``bn``'s running statistics (inference)."""
    folded = copy.deepcopy(conv)
    with torch.no_grad():
        weight, bias = folded_parameters(conv.weight, conv.bias, bn)
        folded.weight.copy_(weight)
        folded.bias = nn.Parameter(bias.detach().clone())
    return folded


class _FoldedWeight(torch.autograd.Function):
    """``q(W f) / f`` for a BatchNorm factor ``f`` per output channel, where ``q`` (``quantize``) has the identity
    (straight-through) gradient: the gradients are then ``dW = grad`` and ``df = sum(grad * (W - q(W f) / f)) / f``
    per channel, computed directly instead of through two broadcast multiplications' autograd nodes."""

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, factor: torch.Tensor, quantize: Any) -> torch.Tensor:
        # the quantized folded weight is a fresh tensor (or the folded weight itself): divided in place
        out = quantize(weight * channel_view(factor, weight.dim(), 0)).mul_(
            channel_view(factor.reciprocal(), weight.dim(), 0))
        ctx.save_for_backward(weight, out, factor)
        return out

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple:
        weight, out, factor = ctx.saved_tensors
        grad_factor = None
        if ctx.needs_input_grad[1]:
            dims = tuple(range(1, weight.dim()))
            # sum(grad * (W - out)) / f as two sums: what the autograd path computes, and faster on CPU
            grad_factor = ((grad_output * weight).sum(dims) - (grad_output * out).sum(dims)) / factor
        return grad_output, grad_factor, None


class _Kernel(NamedTuple):
    """A quantized layer's computation (:meth:`QuantWrapper.kernel`): ``weight`` and the deployed ``bias``; with
    ``scale`` / ``shift`` the layer runs without bias and returns ``out * scale + shift``, the pre-BN values of a
    BatchNorm that still follows in the model."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    scale: torch.Tensor | None = None
    shift: torch.Tensor | None = None

    def overrides(self) -> dict[str, torch.Tensor | None]:
        """Parameters for :meth:`QuantWrapper.call_module` (no bias before ``scale`` / ``shift``)."""
        if self.scale is not None:
            return {"weight": self.weight, "bias": None}
        return {"weight": self.weight} if self.bias is None else {"weight": self.weight, "bias": self.bias}


def _on_channels(values: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Per-channel ``values`` shaped to broadcast along axis 1 of ``out`` (as they are when a capture holds them viewed
    so already)."""
    return values if values.dim() == out.dim() else channel_view(values, out.dim(), 1)


def capture_value(module: nn.Module, field: str, value: torch.Tensor) -> torch.Tensor:
    """A :class:`_Kernel` field of ``module``'s as a graph capture holds it: ``scale`` and ``shift`` viewed along the
    output's channels already (no reshape nodes in the graph), the others as they are."""
    return channel_view(value, module.weight.dim(), 1) if field in ("scale", "shift") else value


def _capture_name(field: str, call: int) -> str:
    """The buffer holding ``field`` of a layer's fixed kernel for ``call`` during a graph capture."""
    return f"_capture_{field}" if call == 0 else f"_capture_{field}_{call}"


class QuantWrapper(CompressionWrapper):
    """Fake quantization (and masks) around one layer. ``bn``: a BatchNorm folded into it."""

    def __init__(self, module: nn.Module, layer_name: str, quantizer: Any, layer: Any, calls: int = 1):
        super().__init__(module, layer_name, layer.kernel)
        self._ref = Ref(quantizer=quantizer, layer=layer, bn=None)
        self.calls = calls
        self.quantize_output_here = True
        self.deploy = False  # BN replaced by Identity in an export copy: add the folded bias here
        self._count = 0
        self._kept: dict[int, _Kernel] | None = None  # call -> kernel, while TorchQuantBackend.kept_kernels runs

    def _call_index(self) -> int:
        if self.calls <= 1:
            return 0
        index = self._count % self.calls
        self._count += 1
        return index

    def channel_scales(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The explicit per-channel multipliers around this Linear (``quantizer.channel_scales``, set by the 'smooth'
        technique): ``input`` multiplies the input before it is quantized, ``output`` the output after; the weight
        is divided to match, so the float layer computes what it did. None where there is none."""
        scales = getattr(self._ref.quantizer, "channel_scales", {}).get(self._ref.layer.name, {})
        return scales.get("input"), scales.get("output")

    def effective_parameters(self) -> dict[str, torch.Tensor]:
        """The masked parameters, divided by the explicit channel multipliers (:meth:`channel_scales`)."""
        overrides = super().effective_parameters()
        into, out = self.channel_scales()
        if into is None and out is None:
            return overrides
        weight, bias = overrides.get("weight", self.param("weight")), overrides.get("bias", self.param("bias"))
        if into is not None:
            weight = weight / into
        if out is not None:
            weight = weight / out[:, None]
            bias = None if bias is None else bias / out
        return {**overrides, "weight": weight, **({} if bias is None else {"bias": bias})}

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        into, out = self.channel_scales()
        if into is not None and args:
            args = (args[0] * into, *args[1:])
        result = self._forward_call(*args, **kwargs)
        return result if out is None else result * out

    def _forward_call(self, *args: Any, **kwargs: Any) -> Any:
        quantizer, layer = self._ref.quantizer, self._ref.layer
        call = self._call_index()
        runtime = getattr(quantizer, "_graph_runtime", None)
        if runtime is not None and args:
            params = runtime.params_of(args[0])
            if params is not None:
                quantizer.params[layer.name][quantizer._key("input_from_graph", call)] = params
            if runtime.mode is not None and not torch.compiler.is_exporting():
                # the whole-graph function mode ignores every call made inside a wrapped layer: switching it
                # off here saves its Python round trip on the ~80 tensor calls of each quantized layer
                with _no_function_mode():
                    return self._forward(quantizer, layer, call, args, kwargs, params)
            return self._forward(quantizer, layer, call, args, kwargs, params)
        return self._forward(quantizer, layer, call, args, kwargs)

    def _forward(self, quantizer: Any, layer: Any, call: int, args: tuple, kwargs: dict, source: Any = None) -> Any:
        """``source``: the grid ``args[0]`` lies on (whole-graph mode), None if not known."""
        bn = self._ref.bn
        incoming = args[0] if args else None
        args = quantizer.forward_input(layer, args, call)
        if source is not None and quantizer.integer_arithmetic is not None and \
                quantizer.quantizes(layer, QuantType.QUANT_INPUT):
            # the file requantizes the incoming int8 tensor (QUANTIZE int8 -> int8): the kernel's own rounding
            converted = int8_emulation.convert(incoming, source, quantizer.params[layer.name].get(
                quantizer._key("input", call)))
            if converted is not None:
                args = (converted, *args[1:])
        if quantizer.integer_arithmetic is not None and quantizer.quantizes(layer, QuantType.QUANT_WEIGHT) and \
                int8_emulation.integer_layer(self.module):
            return self._forward_integer(quantizer, layer, args, call)
        if not quantizer.quantizes(layer, QuantType.QUANT_WEIGHT) and bn is None:
            out = self.call_module(self.effective_parameters(), args, kwargs)
        elif bn is not None and self.training and not self.deploy:
            out = self._forward_folded_training(quantizer, layer, bn, args)
        else:
            if torch.compiler.is_exporting() and "_capture_weight" in self._buffers:
                # fixed for the capture: one weight fake-quant node instead of the whole folding arithmetic
                weight = self._capture_weight
                if quantizer.quantizes(layer, QuantType.QUANT_WEIGHT):
                    # per-channel scale and zero point from buffers: no constant (and its copy nodes) made per trace
                    with quantizer.ops.natives_given(quantizer.params[layer.name]["weight"],
                                                     self._buffers.get("_capture_weight_scale"),
                                                     self._buffers.get("_capture_weight_zero_point")):
                        weight = quantizer.ops.fake_quant(weight, quantizer.params[layer.name]["weight"])
                kernel = _Kernel(weight, *(self._buffers.get(_capture_name(name, call))
                                           for name in _Kernel._fields[1:]))
            else:
                kernel = self.kernel(quantizer, layer, call)
                if self._kept is not None:
                    self._kept[call] = kernel
            out = self.call_module(kernel.overrides(), args, kwargs)
            if kernel.scale is not None:
                out = out * _on_channels(kernel.scale, out) + _on_channels(kernel.shift, out)
        return quantizer.forward_output(layer, out, call) if self.quantize_output_here else out

    def kernel(self, quantizer: Any, layer: Any, call: int = 0) -> _Kernel:
        """What the layer computes with outside BN-folded training: the (masked, BN-folded) fake-quantized weight, the
        bias on the int32 grid (in eval) and, when the folded BatchNorm still follows in the model (eval, not a
        deploy copy), the per-channel ``scale`` / ``shift`` that hand it the pre-BN values."""
        overrides = self.effective_parameters()
        weight = overrides.get("weight", self.param("weight"))
        bias = overrides.get("bias", self.param("bias"))
        bn = self._ref.bn
        if bn is None:
            weight = quantizer.forward_weight(layer, weight)
            return _Kernel(weight, bias if self.training else quantized_bias(quantizer, layer, bias, call))
        factor = bn_factor(bn)
        weight = quantizer.forward_weight(layer, weight * channel_view(factor, weight.dim(), 0))
        folded = quantized_bias(quantizer, layer, folded_parameters(weight, bias, bn)[1], call)
        if self.deploy:
            return _Kernel(weight, folded)
        # BN (eval statistics) follows: pre-BN values such that BN's output bias is on the grid
        beta = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_mean)
        return _Kernel(weight, folded, factor.reciprocal(), (folded - beta) / factor + bn.running_mean)

    @contextlib.contextmanager
    def fixed_for_capture(self) -> Iterator[None]:
        """:meth:`kernel` computed eagerly (in eval, no autograd), once per call of the layer (each call's int32 bias
        lies on its own input's grid; the weight is the same), and used while a graph capture traces it. A kernel the
        layer kept from an eager forward (:meth:`TorchQuantBackend.kept_kernels`) is taken as it is."""
        names = []
        for call in range(max(self.calls, 1)):
            kernel = self._kept.get(call) if self._kept is not None else None
            if kernel is None:
                kernel = self.kernel(self._ref.quantizer, self._ref.layer, call)
            for name, value in zip(_Kernel._fields, kernel):
                if value is not None and (call == 0 or name != "weight"):
                    # buffers: the capture records them as state, as it does the parameters
                    names.append(_capture_name(name, call))
                    self.register_buffer(names[-1], capture_value(self.module, name, value).detach(), persistent=False)
        weight_params = self._ref.quantizer.params[self._ref.layer.name].get("weight")
        if weight_params is not None and weight_params.per_channel and \
                self._ref.quantizer.quantizes(self._ref.layer, QuantType.QUANT_WEIGHT):
            for name, value in zip(("scale", "zero_point"), OPS.native(weight_params, self._capture_weight)):
                names.append(f"_capture_weight_{name}")
                self.register_buffer(names[-1], value, persistent=False)
        try:
            yield
        finally:
            for name in names:
                del self._buffers[name]

    def _forward_integer(self, quantizer: Any, layer: Any, args: tuple, call: int) -> Any:
        """Eval under :meth:`Quantizer.emulate_integer`: the int8 kernel's own arithmetic
        (:mod:`slimkit.frameworks.torch.int8_emulation`) on the quantized input, weight and int32 bias."""
        if self.training:
            raise SlimkitError(f"emulate_integer: layer {layer.name!r} runs in training mode. Integer emulation "
                               "evaluates the deployed kernels; call model.eval() before the block.")
        params = self.integer_params(call)
        missing = [name for name, value in params.items() if value is None]
        if missing or len(args) != 1:
            raise SlimkitError(f"emulate_integer: layer {layer.name!r} has no {' / '.join(missing)} quantization "
                               "parameters (or more than one input). The int8 kernel needs its input, weight and "
                               "output grids: quantize 'input' (or use op_types ['default']) and 'output', and "
                               "calibrate before emulating.")
        kernel = self.kernel(quantizer, layer, call)
        module = self.module

        def run(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:  # the layer's own op on float64 integers
            overrides = {"weight": w}
            if module.bias is not None:  # the int32 bias is added by the kernel, after the sum
                overrides["bias"] = torch.zeros_like(module.bias, dtype=torch.float64)
            return self.call_module(overrides, (x,), {})

        channel_dim = -1 if isinstance(module, nn.Linear) else 1
        out = int8_emulation.kernel(run, args[0], kernel.weight, kernel.bias, params, channel_dim,
                                    isinstance(module, nn.Linear)).to(args[0].dtype)  # linear: FULLY_CONNECTED
        if kernel.scale is not None:  # pre-BN values: the BatchNorm that follows maps them back onto the grid
            out = (out - channel_view(kernel.bias, out.dim(), 1)) * channel_view(kernel.scale, out.dim(), 1) + \
                channel_view(kernel.shift, out.dim(), 1)
        return quantizer.forward_output(layer, out, call) if self.quantize_output_here else out

    def integer_params(self, call: int = 0) -> dict[str, Any]:
        """The grids of the layer's int8 kernel: its input, weight and output parameters (None where not known)."""
        quantizer, layer = self._ref.quantizer, self._ref.layer
        table = quantizer.params[layer.name]
        return {"input": input_params(quantizer, layer, call), "weight": table.get("weight"),
                "output": table.get(quantizer._key("output", call))}

    def quantized_weight(self) -> torch.Tensor:
        """The weight this layer computes with (masked, BN-folded, fake-quantized), detached."""
        quantizer, layer = self._ref.quantizer, self._ref.layer
        with torch.no_grad():
            return quantizer.forward_weight(layer, BACKEND.effective_weight(layer)).detach()

    def _forward_folded_training(self, quantizer: Any, layer: Any, bn: nn.Module, args: tuple) -> torch.Tensor:
        """Training with a folded BatchNorm (on batch statistics, after this layer): ``conv(x, q(W f) / f)``."""
        overrides = self.effective_parameters()
        weight, bias = overrides.get("weight", self.module.weight), overrides.get("bias", self.module.bias)
        factor = bn_factor(bn)
        if quantizer.weight_grad_is_identity(layer):
            # the same values as the general path below, with a closed-form gradient
            weight = _FoldedWeight.apply(weight, factor, lambda folded: quantizer.forward_weight(layer, folded))
            return self.module._conv_forward(args[0], weight, bias)
        # conv(x, q(W f)) / f computed as conv(x, q(W f) / f): the convolution is linear in each output
        # channel's weights, so this is the same function and gradient (up to float rounding) with the
        # division done on the weight instead of the (much larger) activation, forward and backward
        weight = quantizer.forward_weight(layer, weight * channel_view(factor, weight.dim(), 0))
        return self.module._conv_forward(args[0], weight * channel_view(factor.reciprocal(), weight.dim(), 0), bias)


def quantizer_of(model: nn.Module) -> Any:
    """The slimkit quantizer whose wrappers ``model`` holds, or None."""
    return next((m._ref.quantizer for m in model.modules() if isinstance(m, QuantWrapper)), None)


def emulable_quantizer(model: nn.Module) -> Any:
    """The slimkit quantizer wrapping ``model``'s layers when :meth:`Quantizer.emulate_integer` can evaluate it: every
    wrapped layer has input, weight (up to 8 bits) and output parameters. None for a float model or one quantized
    otherwise (weights only, wider than int8)."""
    quantizer = quantizer_of(model)
    if quantizer is None:
        return None
    for layer in quantizer.layers:
        params = layer.wrapper.integer_params()
        if any(value is None for value in params.values()) or params["weight"].bits > 8:
            return None
    return quantizer


class _TailHook:
    """Quantizes a fused kernel's output at the tail module (BN / ReLU) on the right calls."""

    def __init__(self, quantizer: Any, calls: int):
        self.quantizer, self.calls, self.count = quantizer, calls, 0
        self.layers: dict[int, tuple[Any, int]] = {}  # tail call index -> (head layer, the head's call)

    def __deepcopy__(self, memo: dict) -> _TailHook:
        return self

    def __call__(self, module: nn.Module, args: Any, output: Any) -> Any:
        index = self.count % self.calls if self.calls > 1 else 0
        self.count += 1
        layer, call = self.layers.get(index, (None, 0))
        if layer is None:
            return output
        if getattr(self.quantizer, "_graph_runtime", None) is not None and not torch.compiler.is_exporting():
            with _no_function_mode():
                return self.quantizer.forward_output(layer, output, call)
        return self.quantizer.forward_output(layer, output, call)


class TorchQuantBackend:
    """Everything the framework-neutral :class:`~slimkit.compression.quantizer.Quantizer` asks of PyTorch."""

    ops = OPS
    integer_arithmetics = int8_emulation.ARITHMETICS

    # ------------------------------------------------------------ planning and wrapping
    def plan(self, model: nn.Module, dummy_input: Any, quantizer: Any) -> quant_graph.GraphPlan:
        names = {layer.name for layer in quantizer.layers}
        result = quant_graph.plan(model, dummy_input, names, fold_bn=quantizer.fold_bn,
                                  whole_graph=quantizer.whole_graph)
        for layer in quantizer.layers:
            quantizer.states[layer.name].calls = result.calls.get(layer.name, 1)
        return result

    def wrap(self, model: nn.Module, layers: list[Any], quantizer: Any) -> None:
        plan = quantizer.graph_plan
        handles = []
        tails: dict[str, _TailHook] = {}
        below = stacking_targets(layers, lambda layer: wrapper_at(model, layer.name))
        refuse_read_by_parent(layers)
        for layer in layers:
            wrapper = QuantWrapper(layer.module, layer.name, quantizer, layer, quantizer.states[layer.name].calls)
            if layer.name in below:
                wrapper.stack_on(below[layer.name])
            wrapper.attached.append(layer)
            fusion = plan.fusions.get(layer.name) if plan is not None else None
            if fusion is not None:
                if fusion.bn is not None:
                    wrapper._ref.bn = model.get_submodule(fusion.bn)
                if fusion.ends and quantizer.quantizes(layer, QuantType.QUANT_OUTPUT):
                    wrapper.quantize_output_here = False  # a functional end is quantized by the graph runtime
                    for call, end in enumerate(fusion.ends):
                        if end.key is not None:
                            continue
                        hook = tails.get(end.module)
                        if hook is None:
                            hook = tails[end.module] = _TailHook(quantizer, plan.tail_calls.get(end.module, 1))
                            handles.append(model.get_submodule(end.module).register_forward_hook(hook))
                        hook.layers[end.call] = (layer, call)
            set_submodule(model, layer.name, wrapper)
            layer.wrapper = wrapper
        quantizer._torch_handles = handles
        if quantizer.whole_graph and plan is not None:
            from slimkit.frameworks.torch.quant_runtime import GraphRuntime

            runtime = GraphRuntime(model, quantizer, plan, {layer.name for layer in layers})
            runtime.install()
            quantizer._graph_runtime = runtime

    def unwrap(self, model: nn.Module, layers: list[Any], quantizer: Any) -> None:
        for handle in getattr(quantizer, "_torch_handles", []):
            handle.remove()
        quantizer._torch_handles = []
        runtime = getattr(quantizer, "_graph_runtime", None)
        if runtime is not None:
            runtime.remove()
            quantizer._graph_runtime = None
        for layer in layers:
            set_submodule(model, layer.name, layer.wrapper.unstack())
            layer.wrapper = None

    def effective_weight(self, layer: Any) -> torch.Tensor:
        """The weight the quantizer sees: masked, BN-folded when a BN is folded in."""
        wrapper = layer.wrapper
        weight = wrapper.effective_parameters().get("weight", wrapper.param("weight")).detach()
        bn = wrapper._ref.bn
        if bn is not None:
            weight = weight * channel_view(bn_factor(bn).detach(), weight.dim(), 0)
        return weight

    def effective_bias(self, layer: Any) -> Any:
        """The bias the int8 kernel adds (BN-folded when a BN is folded in), a float64 numpy array; None without one."""
        wrapper = layer.wrapper
        bias = wrapper.effective_parameters().get("bias", wrapper.param("bias"))
        bn = wrapper._ref.bn
        if bn is not None:
            bias = folded_parameters(layer.module.weight, bias, bn)[1]
        return None if bias is None else bias.detach().double().cpu().numpy()

    def layer_extras(self, layer: Any, quantizer: Any) -> dict[str, Any]:
        plan = quantizer.graph_plan
        fusion = plan.fusions.get(layer.name) if plan is not None else None
        end = fusion.ends[0] if fusion and fusion.ends else None
        return {"folded_bn": fusion.bn if fusion else None, "fused_activation": fusion.activation if fusion
                else None, "fused_output_module": (end.key or end.module) if end is not None else layer.name}

    @contextlib.contextmanager
    def inference(self, model: nn.Module) -> Iterator[None]:
        """Eval mode and no autograd for the block; the training mode is restored after."""
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            model.train(was_training)

    def run_batch(self, model: nn.Module, batch: Any) -> Any:
        """``model(batch)`` for a tensor; ``model(*inputs)`` for ``(inputs, targets)`` / dict batches."""
        device = next((p.device for p in model.parameters()), None)

        def move(x: Any) -> Any:
            return x.to(device) if isinstance(x, torch.Tensor) and device is not None else x

        if isinstance(batch, torch.Tensor):
            return model(move(batch))
        if isinstance(batch, dict):
            return model(**{k: move(v) for k, v in batch.items()})
        if isinstance(batch, (tuple, list)):
            first = batch[0]
            return model(*[move(x) for x in first]) if isinstance(first, (tuple, list)) else model(move(first))
        return model(batch)

    # ------------------------------------------------------------ rollback
    def snapshot(self, quantizer: Any) -> Any:
        """What post-training techniques may change, to put back if calibration fails: a copy of every parameter and
        buffer, every module's children (a replaced activation) and the plan's fused activations."""
        model = quantizer.model
        tensors = [(t, t.detach().clone()) for t in [*model.parameters(), *model.buffers()]]
        children = [(module, dict(module._modules)) for module in model.modules()]
        plan = quantizer.graph_plan
        fusions = [(fusion, fusion.activation) for fusion in (plan.fusions.values() if plan is not None else ())]
        return tensors, children, fusions

    def restore(self, snapshot: Any) -> None:
        """Undo every change since :meth:`snapshot`."""
        tensors, children, fusions = snapshot
        for module, saved in children:
            module._modules.clear()
            module._modules.update(saved)
        with torch.no_grad():
            for tensor, saved in tensors:
                tensor.copy_(saved)
        for fusion, activation in fusions:
            fusion.activation = activation

    # ------------------------------------------------------------ files
    def save_weights(self, model: nn.Module, layers: list[Any], path: str) -> None:
        """The float state dict of the original model class (masks multiplied in)."""
        state = ADAPTER.baked_copy(model, layers).state_dict()
        with atomic_path(path) as tmp:
            torch.save(state, tmp)

    def save_object(self, obj: Any, path: str) -> None:
        with atomic_path(path) as tmp:
            torch.save(obj, tmp)

    def load_object(self, path: str) -> Any:
        return torch.load(path, weights_only=True)

    def deploy_copy(self, quantizer: Any) -> nn.Module:
        """A copy of the quantized model as the target runs it: BN folded into the convs (BN modules
        replaced by Identity), parameters frozen. The quantizer is frozen while the copy is used."""
        model = quantizer.model
        clone = copy.deepcopy(model)
        plan = quantizer.graph_plan
        for layer in quantizer.layers:
            wrapper = clone.get_submodule(layer.name)
            fusion = plan.fusions.get(layer.name) if plan is not None else None
            if fusion is not None and fusion.bn is not None:
                bn = model.get_submodule(fusion.bn)
                wrapper._ref = Ref(quantizer=quantizer, layer=layer, bn=bn)
                wrapper.deploy = True
                if fusion.tail == fusion.bn:  # the output hook sat on the BN: keep it, as Identity
                    identity = nn.Identity()
                    # with the whole-graph runtime's path hooks, pre and post both: a post hook alone would pop the
                    # enclosing module's path, and the ops after it there (a residual add) would go unquantized
                    for hook in model.get_submodule(fusion.bn)._forward_pre_hooks.values():
                        identity.register_forward_pre_hook(hook)
                    for hook in model.get_submodule(fusion.bn)._forward_hooks.values():
                        identity.register_forward_hook(hook)
                    set_submodule(clone, fusion.bn, identity)
                else:
                    set_submodule(clone, fusion.bn, nn.Identity())
        return clone.eval()

    @contextlib.contextmanager
    def kept_kernels(self, model: nn.Module, quantizer: Any) -> Iterator[None]:
        """While the block runs: each of ``quantizer``'s layers in ``model`` keeps the kernel (folded, fake-quantized
        weight, int32 bias) its eager forwards compute, per call, and :meth:`fixed_for_capture` inside the block takes
        those instead of computing them again. Only for a block in which the quantizer's parameters stay fixed
        (:meth:`~slimkit.compression.Quantizer.fixed_parameters`) and the model stays in eval mode."""
        wrappers = [m for m in model.modules() if isinstance(m, QuantWrapper) and m._ref.quantizer is quantizer]
        for wrapper in wrappers:
            wrapper._kept = {}
        try:
            yield
        finally:
            for wrapper in wrappers:
                wrapper._kept = None

    @contextlib.contextmanager
    def fixed_for_capture(self, model: nn.Module, quantizer: Any) -> Iterator[None]:
        """While a graph capture (the TFLite converter's) traces ``model``: the quantizer's parameters frozen and each
        quantized layer's folded, fake-quantized weight and bias computed once, so the capture records one weight
        fake-quant node per layer instead of the folding arithmetic. Training mode and parameters are restored after."""
        with quantizer.fixed_parameters(), self.inference(model), contextlib.ExitStack() as stack:
            for wrapper in model.modules():
                if isinstance(wrapper, QuantWrapper) and wrapper._ref.quantizer is quantizer and (
                        wrapper._ref.bn is not None or quantizer.quantizes(wrapper._ref.layer, QuantType.QUANT_WEIGHT)):
                    stack.enter_context(wrapper.fixed_for_capture())
            yield

    def export_onnx(self, quantizer: Any, path: str, example: Any, device: Any) -> None:
        """Write the deployed model with QuantizeLinear / DequantizeLinear: int8 / uint8 up to 8 bits (narrower
        ranges clipped to their grid first), int16 / uint16 (opset 21) up to 16; wider widths raise."""
        from slimkit.frameworks.torch.onnx_export import export_onnx
        from slimkit.frameworks.torch.quant_onnx import QDQ16_OPSET, check_widths, translation_table

        named = [(layer.name, key, params) for layer in quantizer.layers
                 for key, params in quantizer.params[layer.name].items()]
        named += [(key, "output", params) for key, params in quantizer.graph_params.items()]
        needs16 = check_widths(named)
        with quantizer.fixed_parameters():
            clone = self.deploy_copy(quantizer)
            with OPS.exporting_onnx():
                export_onnx(clone, path, example, device, opset_version=QDQ16_OPSET if needs16 else None,
                            custom_translation_table=translation_table() if needs16 else None)


BACKEND = TorchQuantBackend()
