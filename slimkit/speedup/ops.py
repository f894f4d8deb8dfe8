"""Analysis rules for parameter-free ATen operators: element-wise, movement, reduction, mixing.

Element-wise ops (with broadcasting) couple the channels of their inputs; movement ops (view,
permute, cat, split, ...) are run on the channel-variable arrays themselves, so index remapping
(concat offsets, channel shuffle, flatten into Linear features) comes out exactly; reductions
over a channel axis and ops that mix channels (matmul, softmax over channels) keep them.
"""

from __future__ import annotations

import operator
from typing import Any

import torch

from slimkit.speedup.registry import register_op
from slimkit.speedup.state import FREE, KEEP, TensorState, channel_vector, compact, keep_state

NAN = float("nan")

UNARY = [
    "relu", "relu6", "hardtanh", "sigmoid", "tanh", "gelu", "silu", "hardswish", "hardsigmoid", "leaky_relu",
    "elu", "selu", "celu", "mish", "softplus", "abs", "neg", "exp", "log", "sqrt", "rsqrt", "square", "clamp",
    "clamp_min", "clamp_max", "dropout", "feature_dropout", "alpha_dropout", "contiguous", "clone", "detach",
    "alias", "pow", "reciprocal", "sin", "cos", "erf", "log_sigmoid", "_to_copy", "to", "type_as", "relu_",
    "hardtanh_", "sigmoid_", "hardswish_", "silu_", "lift_fresh_copy", "dropout_", "feature_dropout_",
    "alpha_dropout_", "detach_", "gelu_", "tanh_", "clamp_", "erf_", "exp_", "neg_",
]
BINARY = ["add", "sub", "div", "maximum", "minimum", "rsub", "true_divide", "add_", "sub_", "floor_divide", "where",
          "lerp", "addcmul", "div_", "max.other", "min.other", "fmax", "fmin"]


def _tensor_args(node: torch.fx.Node) -> list[torch.fx.Node]:
    return [a for a in node.args if isinstance(a, torch.fx.Node)]


def _swap(value: Any, table: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.fx.Node):
        return table[value.name]
    if isinstance(value, (list, tuple)):
        return type(value)(_swap(v, table) for v in value)
    return value


def run_on(node: torch.fx.Node, table: dict[str, torch.Tensor]) -> Any:
    """Call ``node``'s operator with its tensor arguments replaced from ``table`` (by node name)."""
    return node.target(*_swap(node.args, table), **_swap(dict(node.kwargs), table))


def merge_ids(ctx: Any, states: list[TensorState]) -> torch.Tensor:
    """Broadcast the inputs' variables together, union the coupled ones, return the merged ids.

    An input that is one variable and really broadcast along an axis where another input's channels vary
    (a rotary table, an attention scale, a gate shared by all channels) is used whole by every channel:
    it is kept and couples nothing, so removing a channel of the others stays possible."""
    states = [_spread(ctx, state, states) for state in states]
    result = states[0].ids
    for state in states[1:]:
        a, b = torch.broadcast_tensors(result, state.ids)
        ctx.uf.union_arrays(a, b)
        result = torch.where(a == FREE, b, a)
    if len(states) > 1:  # one variable per set: a class token's row and the patches' rows, once added, are one row
        result = torch.from_numpy(ctx.uf.roots(result.contiguous()))
    return compact(result)


def _spread(ctx: Any, state: TensorState, states: list[TensorState]) -> TensorState:
    if state.ids.numel() != 1:
        return state
    rank = max(len(s.shape) for s in states)
    shape = (1,) * (rank - len(state.shape)) + tuple(state.shape)
    varying = {rank - s.ids.dim() + d for s in states for d in range(s.ids.dim()) if s.ids.shape[d] > 1}
    if not varying or any(shape[d] != 1 for d in varying):
        return state
    ctx.uf.keep(state.ids)
    return TensorState(torch.full_like(state.ids, FREE), state.const, state.shape)


def elementwise(ctx: Any, node: torch.fx.Node, const_fn: Any = None) -> TensorState:
    inputs = _tensor_args(node)
    states = [ctx.state(a) for a in inputs]
    shape = ctx.shape(node)
    ids = merge_ids(ctx, states)
    if not all(_is_float(a) for a in inputs) or not _is_float(node):
        return TensorState(ids, torch.full((1,) * len(shape), NAN, dtype=torch.float64), shape)
    table = {a.name: s.const for a, s in zip(inputs, states)}
    try:
        const = (const_fn or run_on)(node, table)
    except (RuntimeError, TypeError, ValueError):
        const = torch.full((1,) * len(shape), NAN, dtype=torch.float64)
    const = compact(torch.as_tensor(const, dtype=torch.float64))
    while const.dim() < len(shape):
        const = const.unsqueeze(0)
    while ids.dim() < len(shape):
        ids = ids.unsqueeze(0)
    return TensorState(ids, const, shape)


def _is_float(node: Any) -> bool:
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return isinstance(val, torch.Tensor) and val.is_floating_point()


@register_op(*[f"aten::{name}" for name in UNARY + BINARY])
def elementwise_rule(ctx: Any, node: torch.fx.Node) -> TensorState:
    return elementwise(ctx, node)


def _mul_const(node: torch.fx.Node, table: dict[str, torch.Tensor]) -> torch.Tensor:
    # 0 * anything is 0: a pruned channel gated by a live one (squeeze-excite) stays a zero channel.
    product = run_on(node, table)
    zero = torch.zeros((), dtype=torch.float64)
    for arg in node.args:
        if isinstance(arg, torch.fx.Node):
            product = torch.where(table[arg.name] == 0, zero, product)
        elif isinstance(arg, (int, float)) and arg == 0:
            product = torch.zeros_like(product)
    return product


@register_op("aten::mul", "aten::mul_")
def mul_rule(ctx: Any, node: torch.fx.Node) -> TensorState:
    return elementwise(ctx, node, _mul_const)


def movement(ctx: Any, node: torch.fx.Node) -> TensorState | list[TensorState]:
    """Run a movement op on the full id and constant arrays, then compact the results."""
    inputs = _tensor_args(node) + [a for a in _list_args(node)]
    states = {a.name: ctx.state(a) for a in inputs}
    ids = run_on(node, {name: s.full_ids() for name, s in states.items()})
    consts = run_on(node, {name: s.full_const() for name, s in states.items()})
    if isinstance(ids, (list, tuple)):
        return [TensorState(compact(i), compact(c), tuple(i.shape)) for i, c in zip(ids, consts)]
    return TensorState(compact(ids), compact(consts), tuple(ids.shape))


def _list_args(node: torch.fx.Node) -> list[torch.fx.Node]:
    out = []
    for arg in node.args:
        if isinstance(arg, (list, tuple)):
            out += [a for a in arg if isinstance(a, torch.fx.Node)]
    return out


@register_op("aten::cat", "aten::concat", "aten::stack", "aten::unbind", "aten::permute", "aten::transpose",
             "aten::t", "aten::unsqueeze", "aten::squeeze", "aten::expand", "aten::movedim", "aten::pixel_shuffle",
             "aten::pixel_unshuffle", "aten::repeat", "aten::flip", "aten::roll", "aten::repeat_interleave",
             "aten::tile")
def movement_rule(ctx: Any, node: torch.fx.Node) -> TensorState | list[TensorState]:
    return movement(ctx, node)


@register_op("aten::chunk")
def chunk_rule(ctx: Any, node: torch.fx.Node) -> list[TensorState]:
    """``chunk(n)`` splits evenly: every chunk must keep as many channels as the others."""
    source = ctx.state(node.args[0])
    dim = (node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)) % len(source.shape)
    size = source.shape[dim]
    chunks = node.args[1]
    vector = channel_vector(source.ids, dim, size)
    if size % chunks or vector is None:
        ctx.uf.keep(source.ids)
    elif source.ids.shape[dim] > 1:
        ctx.balance(vector.reshape(chunks, -1))
    return movement(ctx, node)


# Attributes of a module whose value is the size its forward splits a tensor by (Hugging Face's GPT-2 splits its
# fused query / key / value projection by ``self.split_size``). Register more with ``SPLIT_ATTRIBUTES.append``.
SPLIT_ATTRIBUTES = ["split_size"]


@register_op("aten::split", "aten::split_with_sizes", "aten::tensor_split", "aten::slice", "aten::select",
             "aten::narrow")
def split_rule(ctx: Any, node: torch.fx.Node) -> Any:
    """Split sizes and slice bounds are fixed numbers in the model's code: that axis keeps all its channels. Except
    an even split by a size the module holds in a :data:`SPLIT_ATTRIBUTES` attribute (a fused query / key / value
    projection): the parts keep equally many channels, and the attribute is updated."""
    source = ctx.state(node.args[0])
    position = 2 if op_short(node) in ("split", "split_with_sizes", "tensor_split") else 1
    dim = node.args[position] if len(node.args) > position else node.kwargs.get("dim", 0)
    dim = dim % len(source.shape)
    if source.ids.shape[dim] > 1 and not _split_by_attribute(ctx, node, source, dim):
        ctx.uf.keep(source.ids)
    return movement(ctx, node)


def _split_by_attribute(ctx: Any, node: torch.fx.Node, source: TensorState, dim: int) -> bool:
    size, total = node.args[1], source.shape[dim]
    if op_short(node) != "split" or not isinstance(size, int) or total % size or total == size:
        return False
    path = ctx.captured.module_path(node)
    module = ctx.captured.model.get_submodule(path)
    names = [name for name in SPLIT_ATTRIBUTES if getattr(module, name, None) == size]
    vector = channel_vector(source.ids, dim, total)
    if not names or vector is None:
        return False
    parts = vector.reshape(total // size, size)
    ctx.balance(parts)
    ctx.splits.append((path, names[0], parts))
    return True


@register_op("aten::view", "aten::reshape", "aten::flatten", "aten::unflatten", "aten::_unsafe_view")
def reshape_rule(ctx: Any, node: torch.fx.Node) -> TensorState:
    """Reshape. When it splits the channel axis, the kept set must stay a product of the factors, as the
    model's code fixes all but one of them: the factor written ``-1`` (heads in ``view(b, n, -1, head_dim)``),
    or one equal to a head count its module holds and speedup updates (``view(b, -1, self.num_heads, d)``), may
    shrink and the others are tied whole; otherwise (channel shuffle's ``view(b, g, c // g, ...)``) the last
    factor shrinks and the outer ones are tied, so the model's ``c // groups`` still holds."""
    source = ctx.state(node.args[0])
    out = movement(ctx, node)
    varying_in = sum(1 for s in source.ids.shape if s > 1)
    ids = out.ids
    varying = [d for d in range(ids.dim()) if ids.shape[d] > 1]
    if len(varying) > max(varying_in, 1):
        sizes = node.args[1] if len(node.args) > 1 and isinstance(node.args[1], (list, tuple)) else ()
        heads = _head_counts(ctx, node)
        free = [d for d in varying if len(sizes) == ids.dim() and (sizes[d] == -1 or sizes[d] in heads)]
        for dim in [d for d in varying if d not in free[:1]] if free else varying[:-1]:
            first = ids.narrow(dim, 0, 1)
            ctx.uf.union_arrays(ids, first)
            ids = first.expand_as(ids).contiguous()
        out.ids = compact(ids)
    return out


def _head_counts(ctx: Any, node: torch.fx.Node) -> set[int]:
    """Head counts the node's module holds in attributes speedup updates (``self.num_heads`` in a view)."""
    from slimkit.speedup.attention import HEAD_ATTRIBUTES

    module = ctx.captured.model.get_submodule(ctx.captured.module_path(node))
    counts = {getattr(module, name, None) for name, kind in HEAD_ATTRIBUTES.items() if kind != "width"}
    return {count for count in counts if isinstance(count, int) and count > 1}


@register_op("operator::getitem", "getitem")
def getitem_rule(ctx: Any, node: torch.fx.Node) -> TensorState:
    return ctx.state(node.args[0])[node.args[1]]


def _reduced_dims(node: torch.fx.Node, rank: int) -> list[int]:
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if dims is None:
        return list(range(rank))
    dims = [dims] if isinstance(dims, int) else list(dims)
    return [d % rank for d in dims] if dims else list(range(rank))


@register_op("aten::mean", "aten::sum", "aten::amax", "aten::amin", "aten::max", "aten::min", "aten::std",
             "aten::var", "aten::norm", "aten::linalg_vector_norm", "aten::logsumexp", "aten::prod")
def reduction_rule(ctx: Any, node: torch.fx.Node) -> TensorState:
    """A reduction over dimensions the channels do not vary along is exact; over a channel axis it keeps them."""
    source = ctx.state(node.args[0])
    rank = len(source.shape)
    dims = _reduced_dims(node, rank)
    keepdim = bool(node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False))
    ids, const = source.ids, source.const
    for dim in dims:
        if ids.shape[dim] > 1:
            ctx.uf.keep(ids)
        ids = ids.narrow(dim, 0, 1)
        first = const.narrow(dim, 0, 1)
        if const.shape[dim] > 1:
            const = torch.full_like(first, NAN)
        elif op_short(node) in ("mean", "amax", "amin", "max", "min"):
            const = first
        else:  # sum, norm, ...: a zero channel stays zero, other constants scale with the size
            const = torch.where(first == 0, first, torch.full_like(first, NAN))
    shape = ctx.shape(node)
    if not keepdim:
        keep = [d for d in range(rank) if d not in dims]
        ids = ids.reshape([ids.shape[d] for d in keep]) if keep else ids.reshape(())
        const = const.reshape([const.shape[d] for d in keep]) if keep else const.reshape(())
    if isinstance(shape, list):  # max.dim / min.dim return (values, indices)
        return [TensorState(ids, const, tuple(shape[0])), keep_state(tuple(shape[1]))]
    return TensorState(ids, const, shape)


def op_short(node: torch.fx.Node) -> str:
    return node.target._schema.name.split("::")[-1]


# Pooling and resampling act on spatial dims only: channels pass straight through. A constant
# channel stays constant unless zero padding is averaged in.
SPATIAL = ["max_pool1d", "max_pool2d", "max_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
           "adaptive_avg_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d", "upsample_nearest1d",
           "upsample_nearest2d", "upsample_bilinear2d", "upsample_bicubic2d", "upsample_linear1d",
           "upsample_nearest3d", "upsample_trilinear3d", "_adaptive_avg_pool2d", "max_pool2d_with_indices",
           "avg_pool1d", "avg_pool2d", "avg_pool3d", "pad", "constant_pad_nd", "reflection_pad2d",
           "replication_pad2d", "interpolate"]


@register_op(*[f"aten::{name}" for name in SPATIAL])
def spatial_rule(ctx: Any, node: torch.fx.Node) -> TensorState | list[TensorState]:
    source = ctx.state(node.args[0])
    shape = ctx.shape(node)
    out_shape = tuple(shape[0]) if isinstance(shape, list) else shape
    ids, const = source.ids, source.const
    if ids.dim() > 2 and any(s > 1 for s in ids.shape[2:]) or const.dim() > 2 and any(s > 1 for s in const.shape[2:]):
        # Channels vary along a spatial axis: run the op on the arrays themselves.
        return movement(ctx, node) if op_short(node).startswith(("upsample_nearest", "pad", "constant_pad")) \
            else _keep_spatial(ctx, node, source, out_shape, shape)
    name = op_short(node)
    padded = name.startswith("avg_pool") and _avg_pool_pads(node) or name in ("pad", "constant_pad_nd")
    if padded:
        const = torch.where(const == 0, const, torch.full_like(const, NAN))
    state = TensorState(ids, const, out_shape)
    return [state, keep_state(tuple(shape[1]))] if isinstance(shape, list) else state


def _keep_spatial(ctx: Any, node: Any, source: TensorState, out_shape: tuple, shape: Any) -> Any:
    ctx.uf.keep(source.ids)
    state = keep_state(out_shape)
    return [state, keep_state(tuple(shape[1]))] if isinstance(shape, list) else state


def _avg_pool_pads(node: torch.fx.Node) -> bool:
    padding = node.args[3] if len(node.args) > 3 else node.kwargs.get("padding", 0)
    padding = [padding] if isinstance(padding, int) else list(padding)
    return any(p for p in padding)


@register_op("aten::softmax", "aten::log_softmax", "aten::_softmax", "aten::_log_softmax", "aten::cumsum")
def softmax_rule(ctx: Any, node: torch.fx.Node) -> TensorState:
    """Normalising along an axis mixes it: channels along ``dim`` are kept."""
    source = ctx.state(node.args[0])
    dim = node.args[1] % len(source.shape)
    if source.ids.shape[dim] > 1:
        ctx.uf.keep(source.ids)
    return TensorState(source.ids, torch.full((1,) * len(source.shape), NAN, dtype=torch.float64), source.shape)


@register_op("aten::matmul", "aten::bmm", "aten::mm", "aten::einsum", "aten::scaled_dot_product_attention",
             "aten::baddbmm", "aten::sort",
             "aten::topk", "aten::argmax", "aten::argmin", "aten::eq", "aten::ne", "aten::gt", "aten::lt",
             "aten::ge", "aten::le", "aten::arange", "aten::masked_fill", "aten::gather")
def mixing_rule(ctx: Any, node: torch.fx.Node) -> Any:
    """Ops that mix positions in ways the analysis does not model: their inputs' channels are kept."""
    for arg in _tensor_args(node) + _list_args(node):
        state = ctx.state(arg)
        for s in state if isinstance(state, list) else [state]:
            if s is not None:
                ctx.uf.keep(s.ids)
    shape = ctx.shape(node)
    if shape is None:
        return None
    if isinstance(shape, list):
        return [keep_state(tuple(s)) for s in shape]
    return keep_state(shape)


FILLS = {"zeros": 0.0, "ones": 1.0, "zeros_like": 0.0, "ones_like": 1.0, "new_zeros": 0.0, "new_ones": 1.0}
FILL_ARG = {"scalar_tensor": 0, "full": 1, "full_like": 1, "new_full": 2}  # position of the fill value


@register_op("aten::zeros_like", "aten::ones_like", "aten::full_like", "aten::zeros", "aten::ones", "aten::full",
             "aten::new_zeros", "aten::new_ones", "aten::new_full", "aten::scalar_tensor", "aten::empty_like")
def fill_rule(ctx: Any, node: torch.fx.Node) -> TensorState:
    """A tensor filled with one number depends on no input: a constant without channel variables."""
    name = op_short(node)
    value = node.args[FILL_ARG[name]] if name in FILL_ARG else FILLS.get(name, NAN)  # empty_like: unknown
    shape = ctx.shape(node)
    constant = float(value) if isinstance(value, (int, float)) else NAN
    ones = (1,) * len(shape)
    return TensorState(torch.full(ones, FREE, dtype=torch.long), torch.full(ones, constant, dtype=torch.float64), shape)


@register_op("aten::sym_size", "aten::size", "aten::dim", "sym_size", "aten::_assert_async",
             "aten::_assert_tensor_metadata", "aten::sym_constrain_range_for_size", "aten::_assert_scalar")
def ignored_rule(ctx: Any, node: torch.fx.Node) -> None:
    return None


__all__ = ["KEEP", "elementwise", "movement", "operator", "run_on"]
