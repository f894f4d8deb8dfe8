"""How each Keras layer moves channels and constants, for :mod:`~slimkit.frameworks.tensorflow.speedup_analysis`.

One registered function per layer family: it couples the layer's channels with its input's, says which
constant input channels the layer absorbs into its bias, and returns the state of its output. Adding a
layer type is one decorated function here and its rebuild in :mod:`~slimkit.frameworks.tensorflow.speedup_layers`.

Example:

>>> import keras
>>> from slimkit.frameworks.tensorflow.speedup_analysis import rule_for
>>> rule_for(keras.layers.Conv2D(2, 3)).__name__, rule_for(keras.layers.Add()).__name__
('conv', 'elementwise')
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from slimkit.frameworks.tensorflow import layout
from slimkit.frameworks.tensorflow.dependency import _static_shape
from slimkit.frameworks.tensorflow.speedup_analysis import State, _Walk, channel_axis, rule

L = keras.layers
_MIXING_ACTIVATIONS = {"softmax", "log_softmax"}


def value(layer: Any, attr: str) -> np.ndarray | None:
    """``layer.<attr>`` as a float64 array (None when the layer has no such variable)."""
    var = layout.variable(layer, attr)
    return None if var is None else np.asarray(var.numpy(), dtype=np.float64)


def pads(layer: Any) -> bool:
    """Whether the layer's borders see padding (a nonzero constant input is then not constant in its output)."""
    return getattr(layer, "padding", "valid") in ("same", "causal") and any(
        k > 1 for k in getattr(layer, "kernel_size", (1,)))


def activate(layer: Any, const: np.ndarray) -> np.ndarray:
    """``layer.activation`` applied to the constants (NaN stays NaN); all NaN after softmax (it mixes channels)."""
    activation = getattr(layer, "activation", None)
    if activation is None or getattr(activation, "__name__", "") == "linear":
        return const
    if getattr(activation, "__name__", "") in _MIXING_ACTIVATIONS:
        return np.full(const.shape, np.nan)
    out = keras.ops.convert_to_numpy(activation(keras.ops.convert_to_tensor(np.nan_to_num(const).astype("float32"))))
    return np.where(np.isnan(const), np.nan, np.asarray(out, dtype=np.float64))


def _output(own: np.ndarray, const: np.ndarray, axis: int, rank: int) -> State:
    shape = [1] * rank
    shape[axis] = own.size
    return State.of(own.reshape(shape), const.reshape(shape))


def _single(walk: _Walk, node: Any) -> tuple[Any, str, State, Any, Any]:
    layer = node.operation
    return layer, walk.name(layer), walk.inputs(node)[0], node.input_tensors[0], node.outputs[0]


@rule(L.Conv1D, L.Conv2D, L.Conv3D, L.Dense)
def conv(walk: _Walk, node: Any) -> list[State]:
    """Conv / dense: folds constant inputs into the bias (only zeros when padded); an all-zero filter outputs its
    bias. Grouped convs keep all their channels."""
    layer, name, state, tensor, output = _single(walk, node)
    in_axis, out_axis = channel_axis(layer, tensor), channel_axis(layer, output)
    cin, cout = int(tensor.shape[in_axis + 1]), int(output.shape[out_axis + 1])
    groups = getattr(layer, "groups", 1)
    own_in, const = walk.couple(name, "in", state, in_axis, cin)
    own_out = walk.vars(name, "out", cout)
    if groups > 1:
        walk.keep(own_in)
        walk.keep(own_out)
    else:
        walk.absorb(name, own_in, const, only_zero=pads(layer))
    kernel = value(layer, "kernel").reshape(-1, cin // groups, cout)
    bias = value(layer, "bias") if layer.use_bias else np.zeros(cout)
    out = activate(layer, np.where(~kernel.any((0, 1)), bias, np.nan))
    return [_output(own_out, out, out_axis, len(output.shape) - 1)]


@rule(L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)
def conv_transpose(walk: _Walk, node: Any) -> list[State]:
    """Transposed conv (kernel ``(..., out, in)``): only zero inputs are removed (a constant spreads unevenly)."""
    layer, name, state, tensor, output = _single(walk, node)
    in_axis, out_axis = channel_axis(layer, tensor), channel_axis(layer, output)
    cin, cout = int(tensor.shape[in_axis + 1]), int(output.shape[out_axis + 1])
    own_in, const = walk.couple(name, "in", state, in_axis, cin)
    walk.absorb(name, own_in, const, only_zero=True)
    kernel = value(layer, "kernel").reshape(-1, cout, cin)
    bias = value(layer, "bias") if layer.use_bias else np.zeros(cout)
    out = activate(layer, np.where(~kernel.any((0, 2)), bias, np.nan))
    return [_output(walk.vars(name, "out", cout), out, out_axis, len(output.shape) - 1)]


def _depthwise(layer: Any, kernel: np.ndarray, const: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Constants of a depthwise conv's ``(in, multiplier)`` outputs, from its inputs' constants."""
    cin, multiplier = kernel.shape[-2:]
    flat = kernel.reshape(-1, cin, multiplier)
    passes = ~np.isnan(const) & ((const == 0) | (not pads(layer)))
    out = np.where(passes[:, None], np.nan_to_num(const)[:, None] * flat.sum(0) + bias, np.nan)
    return np.where(~flat.any(0), bias, out).ravel()


@rule(L.DepthwiseConv1D, L.DepthwiseConv2D)
def depthwise(walk: _Walk, node: Any) -> list[State]:
    """Depthwise conv: input channel ``c`` and its ``depth_multiplier`` outputs are kept or removed together."""
    layer, name, state, tensor, output = _single(walk, node)
    axis, multiplier = channel_axis(layer, tensor), layer.depth_multiplier
    cin = int(tensor.shape[axis + 1])
    own_in, const = walk.couple(name, "in", state, axis, cin)
    own_out = own_in if multiplier == 1 else walk.vars(name, "out", cin * multiplier)
    walk.uf.union(np.repeat(own_in, multiplier), own_out)
    bias = (value(layer, "bias") if layer.use_bias else np.zeros(cin * multiplier)).reshape(cin, multiplier)
    out = activate(layer, _depthwise(layer, value(layer, "kernel"), const, bias))
    return [_output(own_out, out, channel_axis(layer, output), len(output.shape) - 1)]


@rule(L.SeparableConv1D, L.SeparableConv2D)
def separable(walk: _Walk, node: Any) -> list[State]:
    """Separable conv: a depthwise part (channels ``'in'`` -> ``'mid'``, coupled) and a 1x1 pointwise part that
    folds the depthwise output's constants into the bias."""
    layer, name, state, tensor, output = _single(walk, node)
    in_axis, out_axis, multiplier = channel_axis(layer, tensor), channel_axis(layer, output), layer.depth_multiplier
    cin, cout = int(tensor.shape[in_axis + 1]), int(output.shape[out_axis + 1])
    own_in, const = walk.couple(name, "in", state, in_axis, cin)
    own_mid = walk.vars(name, "mid", cin * multiplier)
    walk.uf.union(np.repeat(own_in, multiplier), own_mid)
    mid = _depthwise(layer, value(layer, "depthwise_kernel"), const, np.zeros((cin, multiplier)))
    walk.keep(own_mid[np.isnan(mid)])
    walk.absorb(name, own_mid, mid, only_zero=False)
    pointwise = value(layer, "pointwise_kernel").reshape(cin * multiplier, cout)
    bias = value(layer, "bias") if layer.use_bias else np.zeros(cout)
    out = activate(layer, np.where(~pointwise.any(0), bias, np.nan))
    return [_output(walk.vars(name, "out", cout), out, out_axis, len(output.shape) - 1)]


@rule(L.BatchNormalization)
def batch_norm(walk: _Walk, node: Any) -> list[State]:
    """BatchNormalization: one channel set in and out; constants go through the (masked) normalization."""
    layer, name, state, tensor, output = _single(walk, node)
    axis, rank = channel_axis(layer, tensor), len(tensor.shape) - 1
    n = int(tensor.shape[axis + 1])
    own, const = walk.couple(name, "ch", state, axis, n)
    shape = [1] * rank
    shape[axis] = n
    values = np.nan_to_num(const).reshape([1, *shape]).astype("float32")
    out = np.asarray(keras.ops.convert_to_numpy(layer(values, training=False)), dtype=np.float64).ravel()
    return [_output(own, np.where(np.isnan(const), np.nan, out), axis, rank)]


@rule(L.PReLU)
def prelu(walk: _Walk, node: Any) -> list[State]:
    """PReLU: one channel set in and out (its ``alpha`` is sliced along the last axis)."""
    layer, name, state, tensor, _ = _single(walk, node)
    n, rank = int(tensor.shape[-1]), len(tensor.shape) - 1
    own, _ = walk.couple(name, "ch", state, -1, n)
    return [State.of(own.reshape([1] * (rank - 1) + [n]), walk.evaluate(node))]


_ELEMENTWISE = (L.ReLU, L.LeakyReLU, L.ELU, L.Activation, L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D,
                L.SpatialDropout3D, L.GaussianNoise, L.GaussianDropout, L.AlphaDropout, L.Identity,
                L.ActivityRegularization, L.Add, L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum)
_ELEMENTWISE_OPS = ("Add", "Subtract", "Multiply", "Maximum", "Minimum", "Relu", "Relu6", "Sigmoid", "Tanh", "Gelu",
                    "Silu", "HardSigmoid", "HardSilu", "LeakyRelu", "Elu", "Selu", "Softplus", "Abs", "Negative",
                    "Square", "Clip", "Cast")


@rule(*_ELEMENTWISE, ops=_ELEMENTWISE_OPS)
def elementwise(walk: _Walk, node: Any) -> list[State]:
    """Activations, inference-time identities and merges: channels of the inputs united position by position;
    constants computed by the layer itself. An activation that mixes channels (softmax) has no rule."""
    if getattr(getattr(node.operation, "activation", None), "__name__", "") in _MIXING_ACTIVATIONS:
        return walk.unknown(node)
    rank = len(node.outputs[0].shape) - 1
    states = walk.inputs(node)
    ids = [s.ids.reshape((1,) * (rank - s.ids.ndim) + s.ids.shape) for s in states]
    merged = ids[0]
    for other in ids[1:]:
        a, b = np.broadcast_arrays(merged, other)
        walk.uf.union(a, b)
        merged = a
    return [State.of(merged, walk.evaluate(node))]


@rule(L.Concatenate, ops=("Concatenate",))
def concatenate(walk: _Walk, node: Any) -> list[State]:
    """Concatenate: channel states stacked along the axis."""
    operation, inputs = node.operation, list(node.input_tensors)
    rank = len(node.outputs[0].shape) - 1
    axis = operation.axis % (rank + 1) - 1
    if axis < 0:
        return walk.unknown(node)
    states = walk.inputs(node)
    target = [max(s.ids.shape[d] for s in states) for d in range(rank)]
    ids, consts = [], []
    for tensor, state in zip(inputs, states):
        shape = list(target)
        shape[axis] = _static_shape(tensor, repr(walk.name(operation)), [axis])[axis]
        ids.append(np.broadcast_to(state.ids, shape))
        consts.append(np.broadcast_to(state.const, shape))
    return [State.of(np.concatenate(ids, axis), np.concatenate(consts, axis))]


_SPATIAL = (L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D, L.AveragePooling1D, L.AveragePooling2D,
            L.AveragePooling3D, L.GlobalAveragePooling1D, L.GlobalAveragePooling2D, L.GlobalAveragePooling3D,
            L.GlobalMaxPooling1D, L.GlobalMaxPooling2D, L.GlobalMaxPooling3D, L.Cropping1D, L.Cropping2D,
            L.Cropping3D, L.UpSampling1D, L.UpSampling2D, L.UpSampling3D, L.Resizing)
_PADDING = (L.ZeroPadding1D, L.ZeroPadding2D, L.ZeroPadding3D)


@rule(*_SPATIAL, *_PADDING)
def spatial(walk: _Walk, node: Any) -> list[State]:
    """Pooling, cropping, upsampling, resizing, zero padding: channels pass; a constant stays constant (zero
    padding keeps only zeros constant, a Resizing that pads none)."""
    layer, _, state, tensor, output = _single(walk, node)
    in_axis, rank = channel_axis(layer, tensor), len(tensor.shape) - 1
    ids, const = state.full()
    if any(size > 1 for a, size in enumerate(ids.shape) if a != in_axis % rank):
        return walk.unknown(node)
    n = int(tensor.shape[in_axis + 1])
    ids, const = np.resize(np.ravel(ids), n), np.resize(np.ravel(const), n)
    if isinstance(layer, _PADDING):
        const = np.where(const == 0, const, np.nan)
    if getattr(layer, "pad_to_aspect_ratio", False):  # Resizing that pads
        const = np.full(n, np.nan)
    out_rank = len(output.shape) - 1
    return [_output(ids, const, in_axis % rank if out_rank == rank else out_rank - 1, out_rank)]


@rule(L.Flatten, L.Permute)
def move(walk: _Walk, node: Any) -> list[State]:
    """Flatten (channels-last order) and Permute move channels and constants with the values."""
    layer, name, state, tensor, output = _single(walk, node)
    ids, const = (np.broadcast_to(a, _static_shape(tensor, repr(name))) for a in state.full())
    if isinstance(layer, L.Permute):
        order = [d - 1 for d in layer.dims]
        return [State.of(np.transpose(ids, order), np.transpose(const, order))]
    if layout.activation_axis(layer) == 1 and ids.ndim > 1:  # Keras flattens channels_first in channels_last order
        ids, const = np.moveaxis(ids, 0, -1), np.moveaxis(const, 0, -1)
    shape = _static_shape(output, repr(name))
    return [State.of(ids.reshape(shape), const.reshape(shape))]


@rule(L.Reshape)
def reshape(walk: _Walk, node: Any) -> list[State]:
    """Reshape: along the last axis when it keeps the channels there (its ``'ch'`` set gives the new target
    shape), as Flatten when the target is one axis; any other reshape keeps its input's channels."""
    layer, name, state, tensor, output = _single(walk, node)
    out_rank = len(output.shape) - 1
    if out_rank == 1:
        return move(walk, node)
    ids, const = state.full()
    channels_only = all(size == 1 for size in ids.shape[:-1])
    if channels_only and tensor.shape[-1] == output.shape[-1] and tensor.shape[-1] is not None:
        own, const = walk.couple(name, "ch", state, -1, int(tensor.shape[-1]))
        return [_output(own, const, out_rank - 1, out_rank)]
    return walk.keep_all(node)
