"""Analysis rules for operators that belong to a module with per-channel parameters.

Each module gets its own channel variables (``in``/``out`` for conv and linear, ``ch`` for
BatchNorm / PReLU), created once and unioned with the variables of every call's input, so a
module called several times (a shared head) keeps one consistent set of channels.

Constants: an output channel whose weights are all masked is the constant ``bias`` (0 without a
bias). A constant input channel that a conv without zero padding or a linear consumes is folded
into that layer's bias when the channel is removed; a padded conv cannot absorb it exactly, so
there the channel is kept.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from slimkit.compression.channels import channel_view
from slimkit.speedup.ops import mixing_rule
from slimkit.speedup.registry import qualified_name, register_op
from slimkit.speedup.state import TensorState, channel_vector

NAN = float("nan")


def const_vector(state: TensorState, dim: int, size: int) -> torch.Tensor:
    """Per-channel constants along ``dim`` (NaN where the channel depends on the input, or takes different values at
    different positions: a class token's row beside the patches)."""
    const = state.const
    dim = dim % len(state.shape)
    if any(const.shape[d] > 1 for d in range(const.dim()) if d != dim):
        rows = const.movedim(dim, -1).reshape(-1, const.shape[dim])
        return torch.where((rows == rows[0]).all(0), rows[0], NAN).expand(size).clone()
    vector = const.reshape(-1)
    return vector.expand(size).clone() if vector.numel() == 1 else vector.clone()


def _couple_input(ctx: Any, state: TensorState, dim: int, module_vars: torch.Tensor) -> None:
    vector = channel_vector(state.ids, dim, len(module_vars))
    if vector is None:
        ctx.uf.keep(state.ids)
        ctx.uf.keep(module_vars)
    else:
        ctx.uf.union_arrays(vector, module_vars)


def _check_inputs(ctx: Any, path: str, in_vars: torch.Tensor, consts: torch.Tensor, used: torch.Tensor,
                  foldable: bool) -> None:
    """Keep input channels this layer needs; record constant ones to fold into its bias."""
    live = torch.isnan(consts) & used
    ctx.uf.keep(in_vars[live])
    constant = ~torch.isnan(consts) & (consts != 0) & used
    if not foldable:
        ctx.uf.keep(in_vars[constant])
        return
    for channel in torch.nonzero(constant).reshape(-1).tolist():
        ctx.fold(path, channel, float(consts[channel]), int(in_vars[channel]))


def _outputs(used: torch.Tensor, summary: Any, bias: torch.Tensor | None, in_consts: torch.Tensor,
             groups: int, exact_const_input: bool) -> torch.Tensor:
    """Constant value of each output channel (NaN where it depends on the input).

    ``used``: (out, in_per_group) whether a weight connects them; ``summary()`` gives the weights
    summed over the kernel (float64), computed only when some input channel is a constant. Written
    as (grouped) matrix-vector products: one pass over the (out, in) matrices.
    """
    cout, per_group = used.shape
    out = torch.zeros(cout, dtype=torch.float64) if bias is None else bias.to(torch.float64).clone()
    nan = torch.isnan(in_consts)
    if bool(nan.all()):  # the common case: every input channel is live
        out[used.any(1)] = NAN
        return out
    used_f = used.to(torch.float64).reshape(groups, cout // groups, per_group)

    def per_out(vector: torch.Tensor, matrix: torch.Tensor = used_f) -> torch.Tensor:
        return torch.bmm(matrix, vector.to(torch.float64).reshape(groups, per_group, 1)).reshape(cout)

    nan_used = per_out(nan) > 0
    values = torch.nan_to_num(in_consts)
    nonzero_used = per_out(values != 0) > 0
    if bool(nonzero_used.any()):
        total = per_out(values, summary().reshape(groups, cout // groups, per_group))
        out = out + torch.where(nonzero_used, total, torch.zeros_like(total))
    out[nan_used] = NAN
    if not exact_const_input:
        out[nonzero_used] = NAN
    return out


def _zero_padded(module: nn.Module) -> bool:
    if module.padding_mode != "zeros":
        return False
    if isinstance(module.padding, str):
        return module.padding == "same" and any(k > 1 for k in module.kernel_size)
    return any(p > 0 for p in module.padding)


@register_op("aten::conv1d", "aten::conv2d", "aten::conv3d", "aten::convolution", "aten::_convolution",
             "aten::conv_transpose1d", "aten::conv_transpose2d", "aten::conv_transpose3d")
def conv_rule(ctx: Any, node: torch.fx.Node) -> TensorState:
    path, module = ctx.module_of(node, node.args[1], nn.modules.conv._ConvNd)
    state = ctx.state(node.args[0])
    cin, cout, groups = module.in_channels, module.out_channels, module.groups
    in_vars, out_vars = ctx.vars(path, "in", cin), ctx.vars(path, "out", cout)
    transposed = isinstance(module, nn.modules.conv._ConvTransposeNd)
    _couple_input(ctx, state, 1, in_vars)
    depthwise = groups == cin == cout
    if depthwise:
        ctx.uf.union_arrays(in_vars, out_vars)
    ctx.group_constraint(path, groups, depthwise)
    used, _ = ctx.weight_summary(path, transposed, groups)  # (out, in/g): connected?

    def sums() -> torch.Tensor:
        return ctx.weight_summary(path, transposed, groups, sums=True)[1]

    consts = const_vector(state, 1, cin)
    if not depthwise:
        used_in = used.reshape(groups, cout // groups, cin // groups).any(1).reshape(-1)
        _check_inputs(ctx, path, in_vars, consts, used_in, foldable=not transposed and not _zero_padded(module))
    exact = not transposed and not _zero_padded(module)
    out_consts = _outputs(used, sums, ctx.weights(path)[1], consts, groups, exact)
    rank = len(ctx.shape(node))
    return TensorState(channel_view(out_vars, rank, 1), channel_view(out_consts, rank, 1), ctx.shape(node))


@register_op("aten::linear")
def linear_rule(ctx: Any, node: torch.fx.Node) -> TensorState:
    path, module = ctx.module_of(node, node.args[1], nn.Linear)
    return _linear_like(ctx, node, node.args[0], path, module.in_features, module.out_features, False)


# Linear layers of other libraries whose weight is stored transposed, (in, out): Hugging Face's GPT-2 Conv1D.
TRANSPOSED_LINEAR = ("transformers.pytorch_utils.Conv1D",)


def is_transposed_linear(module: nn.Module) -> bool:
    return any(qualified_name(cls) in TRANSPOSED_LINEAR for cls in type(module).__mro__)


@register_op("aten::addmm")
def addmm_rule(ctx: Any, node: torch.fx.Node) -> Any:
    """``addmm(bias, x, weight)``: a transposed-weight linear layer's forward; any other use mixes channels."""
    name = ctx.captured.state_names.get(getattr(node.args[2], "name", None), "")
    path = name.rpartition(".")[0]
    module = ctx.captured.model.get_submodule(path) if name else None
    if module is None or not is_transposed_linear(module) or module.weight.dim() != 2:
        return mixing_rule(ctx, node)
    ctx.modules[path] = module
    in_features, out_features = module.weight.shape
    return _linear_like(ctx, node, node.args[1], path, in_features, out_features, True)


def _linear_like(ctx: Any, node: torch.fx.Node, source: Any, path: str, in_features: int, out_features: int,
                 transposed: bool) -> TensorState:
    state = ctx.state(source)
    in_vars = ctx.vars(path, "in", in_features)
    out_vars = ctx.vars(path, "out", out_features)
    _couple_input(ctx, state, -1, in_vars)
    used, _ = ctx.weight_summary(path, transposed, 1)

    def sums() -> torch.Tensor:
        return ctx.weight_summary(path, transposed, 1, sums=True)[1]

    consts = const_vector(state, -1, in_features)
    _check_inputs(ctx, path, in_vars, consts, used.any(0), foldable=True)
    out_consts = _outputs(used, sums, ctx.weights(path)[1], consts, 1, True)
    rank = len(ctx.shape(node))
    return TensorState(channel_view(out_vars, rank, -1), channel_view(out_consts, rank, -1), ctx.shape(node))


@register_op("aten::batch_norm", "aten::_native_batch_norm_legit_no_training", "aten::instance_norm")
def batch_norm_rule(ctx: Any, node: torch.fx.Node) -> Any:
    anchor = next(a for a in node.args[1:5] if isinstance(a, torch.fx.Node))
    path, module = ctx.module_of(node, anchor, nn.modules.batchnorm._NormBase)
    state = ctx.state(node.args[0])
    channels = module.num_features
    ch_vars = ctx.vars(path, "ch", channels)
    _couple_input(ctx, state, 1, ch_vars)
    consts = const_vector(state, 1, channels)
    if isinstance(module, nn.modules.instancenorm._InstanceNorm):
        out = torch.where(consts == consts, torch.zeros_like(consts), consts)  # a constant channel normalises to 0
        scale = torch.zeros_like(consts)
        mean = torch.zeros_like(consts)
    else:
        mean = module.running_mean.detach().cpu().to(torch.float64)
        scale = 1.0 / torch.sqrt(module.running_var.detach().cpu().to(torch.float64) + module.eps)
        out = consts
    if module.affine:
        weight, bias = ctx.weights(path)
        out = (out - mean) * scale * weight.detach().cpu().to(torch.float64) + bias.detach().to(torch.float64)
    else:
        out = (out - mean) * scale
    rank = len(state.shape)
    result = TensorState(channel_view(ch_vars, rank, 1), channel_view(out, rank, 1), ctx.shape_first(node))
    shape = ctx.shape(node)
    if isinstance(shape, list):  # the no-training variant returns (out, mean, rstd)
        from slimkit.speedup.state import keep_state

        return [result] + [keep_state(tuple(s)) for s in shape[1:]]
    return result


@register_op("aten::prelu", "aten::_prelu_kernel")
def prelu_rule(ctx: Any, node: torch.fx.Node) -> TensorState:
    path, module = ctx.module_of(node, node.args[1], nn.PReLU)
    state = ctx.state(node.args[0])
    weight, _ = ctx.weights(path)
    w = weight.detach().cpu().to(torch.float64)
    rank = len(state.shape)
    if module.num_parameters == 1:
        const = torch.where(state.const >= 0, state.const, state.const * w.reshape(()))
        return TensorState(state.ids, const, state.shape)
    ch_vars = ctx.vars(path, "ch", module.num_parameters)
    _couple_input(ctx, state, 1, ch_vars)
    consts = const_vector(state, 1, module.num_parameters)
    out = torch.where(consts >= 0, consts, consts * w)
    out[torch.isnan(consts)] = NAN
    return TensorState(channel_view(ch_vars, rank, 1), channel_view(out, rank, 1), state.shape)


@register_op("aten::group_norm", "aten::rms_norm")
def norm_keep_rule(ctx: Any, node: torch.fx.Node) -> TensorState:
    """Layer / group normalisation mixes the channels it normalises over (mean and variance): keep them (a
    LayerNorm module over the last axis may lose zero channels: :mod:`slimkit.speedup.residual`)."""
    state = ctx.state(node.args[0])
    ctx.uf.keep(state.ids)
    return TensorState(state.ids, torch.full((1,) * len(state.shape), NAN, dtype=torch.float64), state.shape)
