"""Channel groups of a Keras functional model, for ``dependency_aware=True`` filter pruning.

The functional graph (every layer call and ``keras.ops`` call, in order) is walked once. Each
tensor carries an array of channel variables, broadcastable to its shape without the batch axis;
a conv / dense layer gives its output fresh variables, element-wise merges (``Add``,
``Multiply``, ``x + y`` ...) unite the variables they combine, ``Concatenate``, ``Flatten``,
``Reshape`` and ``Permute`` move them, and per-channel layers (BatchNormalization, activations,
pooling, dropout, padding) pass them through. A ``DepthwiseConv2D`` with ``depth_multiplier=1``
keeps its input's channels; with a multiplier ``M`` (and a grouped ``Conv2D``) each group of its
channels must lose as many as the others (``partitions``). The result is what
:func:`slimkit.speedup.dependency.channel_groups` finds on the equivalent PyTorch model.

Example:

>>> import keras
>>> from slimkit.frameworks.tensorflow.dependency import channel_groups
>>> x = keras.Input((8, 8, 3))
>>> a = keras.layers.Conv2D(4, 3, padding='same', name='a')(x)
>>> b = keras.layers.Conv2D(4, 3, padding='same', name='b')(keras.layers.ReLU()(a))
>>> model = keras.Model(x, keras.layers.Add()([a, b]))
>>> channel_groups(model)
[ChannelGroup(members=['a', 'b'], partitions=1)]
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import keras
import numpy as np

from slimkit.algorithms.pruning.filter import ChannelGroup
from slimkit.compression.followers import ChannelFollowers
from slimkit.errors import UnsupportedModelError, UnsupportedOpError
from slimkit.frameworks.tensorflow import layout
from slimkit.frameworks.tensorflow.discovery import named_layers

FREE = -1  # no channel variable (model inputs)

L = keras.layers
_WEIGHTED = (L.Conv1D, L.Conv2D, L.Conv3D, L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose,
             L.DepthwiseConv1D, L.DepthwiseConv2D, L.SeparableConv1D, L.SeparableConv2D, L.Dense)
_MERGE = (L.Add, L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum)
_MERGE_OPS = {"Add", "Subtract", "Multiply", "Maximum", "Minimum", "Divide", "TrueDivide"}
_PER_CHANNEL = (L.BatchNormalization, L.PReLU)
_SAME_SHAPE = (L.Activation, L.ReLU, L.LeakyReLU, L.ELU, L.Softmax, L.Dropout, L.SpatialDropout1D,
               L.SpatialDropout2D, L.SpatialDropout3D, L.GaussianNoise, L.GaussianDropout, L.AlphaDropout,
               L.LayerNormalization, L.GroupNormalization, L.UnitNormalization, L.Identity,
               L.ActivityRegularization, L.Rescaling, L.Normalization)
_SPATIAL = (L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D, L.AveragePooling1D, L.AveragePooling2D,
            L.AveragePooling3D, L.GlobalAveragePooling1D, L.GlobalAveragePooling2D, L.GlobalAveragePooling3D,
            L.GlobalMaxPooling1D, L.GlobalMaxPooling2D, L.GlobalMaxPooling3D, L.ZeroPadding1D, L.ZeroPadding2D,
            L.ZeroPadding3D, L.Cropping1D, L.Cropping2D, L.Cropping3D, L.UpSampling1D, L.UpSampling2D,
            L.UpSampling3D, L.Resizing)
_UNARY_OPS = {"Relu", "Relu6", "Sigmoid", "Tanh", "Gelu", "Silu", "HardSigmoid", "HardSilu", "LeakyRelu", "Elu",
              "Selu", "Softplus", "Abs", "Negative", "Exp", "Log", "Sqrt", "Square", "Clip", "Cast", "Softmax"}


class _UnionFind:
    """Channel variables 0, 1, 2 ... and the sets they were united into."""

    def __init__(self) -> None:
        self.parent: list[int] = []

    def new(self, n: int) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return np.arange(start, start + n)

    def root(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(np.ravel(a).tolist(), np.ravel(b).tolist()):
            if x != FREE and y != FREE:
                self.parent[self.root(x)] = self.root(y)

    def roots(self, ids: np.ndarray) -> tuple[int, ...]:
        return tuple(self.root(int(i)) for i in np.ravel(ids))


def _compact(ids: np.ndarray) -> np.ndarray:
    """``ids`` with every axis it does not vary along reduced to size 1."""
    for axis in range(ids.ndim):
        first = np.take(ids, [0], axis=axis)
        if ids.shape[axis] > 1 and (ids == first).all():
            ids = first
    return ids


def _static_shape(tensor: Any, where: str, axes: list[int] | None = None) -> tuple[int, ...]:
    """``tensor``'s shape without the batch axis; the sizes along ``axes`` (default: all) must be known."""
    shape = tuple(tensor.shape)[1:]
    if any(shape[a] is None for a in (range(len(shape)) if axes is None else axes)):
        raise UnsupportedOpError(
            f"dependency_aware=True: {where} needs the static shape of its input to follow the channels. "
            f"Expected a keras.Input with every non-batch dimension known. Received: shape {tuple(tensor.shape)}")
    return shape


def _channel_axis(layer: Any, rank: int) -> int:
    """Channel axis of ``layer``'s tensors of full rank ``rank``, counted without the batch axis."""
    return layout.activation_axis(layer) % rank - 1


class _Walk:
    def __init__(self, model: Any):
        self.uf = _UnionFind()
        self.names = {id(layer): name for name, layer in named_layers(model)}
        self.ids: dict[int, np.ndarray] = {}       # id(KerasTensor) -> channel variables
        self.layer_vars: dict[tuple[int, str], np.ndarray] = {}
        self.outputs: dict[str, np.ndarray] = {}   # weighted layer name -> its output channel variables
        self.grouped: list[tuple[int, list[np.ndarray]]] = []  # (groups, [in vars, out vars]) of grouped convs

    def vars(self, layer: Any, role: str, n: int) -> np.ndarray:
        key = (id(layer), role)
        if key not in self.layer_vars:
            self.layer_vars[key] = self.uf.new(n)
        return self.layer_vars[key]

    def channel_vector(self, ids: np.ndarray, axis: int, n: int) -> np.ndarray | None:
        """``ids`` as one variable per channel along ``axis``; None where channels are not separate there."""
        if any(size > 1 for a, size in enumerate(ids.shape) if a != axis) or (ids == FREE).all():
            return None
        vector = np.ravel(ids)
        return np.full(n, vector[0]) if vector.size == 1 else vector

    def couple(self, layer: Any, tensor: Any, role: str) -> np.ndarray:
        """``layer``'s per-channel variables (made once), united with ``tensor``'s channels."""
        axis = _channel_axis(layer, len(tensor.shape))
        n = int(tensor.shape[axis + 1])
        own = self.vars(layer, role, n)
        vector = self.channel_vector(self.ids[id(tensor)], axis, n)
        if vector is not None:
            self.uf.union(vector, own)
        return own

    # ------------------------------------------------------------------ the walk
    def run(self, model: Any, input_ids: list[np.ndarray]) -> list[np.ndarray]:
        functional = _functional(model, self.names.get(id(model), model.name))
        for tensor, ids in zip(functional.inputs, input_ids):
            self.ids[id(tensor)] = ids
        for depth in sorted(functional._nodes_by_depth, reverse=True):
            for node in functional._nodes_by_depth[depth]:
                if not isinstance(node.operation, L.InputLayer):
                    self.apply(node)
        return [self.ids[id(t)] for t in functional.outputs]

    def apply(self, node: Any) -> None:
        op, inputs, outputs = node.operation, list(node.input_tensors), list(node.outputs)
        if isinstance(op, keras.Model):
            results = self.run(op, [self.ids[id(t)] for t in inputs])
        else:
            results = [_compact(self.rule(op, inputs, outputs[0]))]
        for tensor, ids in zip(outputs, results):
            self.ids[id(tensor)] = ids

    def rule(self, op: Any, inputs: list[Any], output: Any) -> np.ndarray:
        name = self.names.get(id(op), op.name)
        in_ids = [self.ids[id(t)] for t in inputs]
        rank = len(output.shape) - 1
        if isinstance(op, _WEIGHTED):
            return self.weighted(op, inputs[0], output)
        if isinstance(op, _PER_CHANNEL):
            self.couple(op, inputs[0], "ch")
            return in_ids[0]
        if isinstance(op, _SAME_SHAPE) or type(op).__name__ in _UNARY_OPS:
            return in_ids[0]
        if isinstance(op, _MERGE) or type(op).__name__ in _MERGE_OPS:
            return self.merge(in_ids, rank)
        if isinstance(op, L.Concatenate) or type(op).__name__ == "Concatenate":
            return self.concatenate(op, inputs, rank, name)
        if isinstance(op, _SPATIAL):
            return self.spatial(op, inputs[0], output, name)
        if isinstance(op, (L.Flatten, L.Reshape, L.Permute)):
            return self.move(op, inputs[0], output, name)
        raise UnsupportedOpError(
            f"dependency_aware=True does not know how layer {name!r} of type {type(op).__name__} moves channels. "
            f"Expected conv / dense, BatchNormalization, activation, dropout, pooling, padding, merge "
            f"(Add, Multiply, ...), Concatenate, Flatten, Reshape or Permute layers. To proceed, use "
            f"dependency_aware=False (each layer pruned on its own).")

    def weighted(self, layer: Any, tensor: Any, output: Any) -> np.ndarray:
        axis = _channel_axis(layer, len(output.shape))
        cin, cout = int(tensor.shape[_channel_axis(layer, len(tensor.shape)) + 1]), int(output.shape[axis + 1])
        in_vars = self.couple(layer, tensor, "in")
        if isinstance(layer, L.DepthwiseConv1D | L.DepthwiseConv2D) and layer.depth_multiplier == 1:
            out_vars = in_vars
        else:
            out_vars = self.vars(layer, "out", cout)
        if isinstance(layer, L.DepthwiseConv1D | L.DepthwiseConv2D | L.SeparableConv1D | L.SeparableConv2D):
            depthwise_out = out_vars
            if isinstance(layer, L.SeparableConv1D | L.SeparableConv2D):  # its depthwise entry: the middle channels
                multiplier = layer.depth_multiplier
                depthwise_out = in_vars if multiplier == 1 else self.vars(layer, "mid", cin * multiplier)
                self.outputs[layout.entries(self.names[id(layer)], layer)[1][0]] = depthwise_out
            if layer.depth_multiplier > 1:  # depthwise part: cin groups of `multiplier` channels
                self.grouped.append((cin, [in_vars, depthwise_out]))
        elif getattr(layer, "groups", 1) > 1:
            self.grouped.append((layer.groups, [in_vars, out_vars]))
        self.outputs[self.names[id(layer)]] = out_vars
        shape = [1] * (len(output.shape) - 1)
        shape[axis] = cout
        return out_vars.reshape(shape)

    def merge(self, in_ids: list[np.ndarray], rank: int) -> np.ndarray:
        result = in_ids[0].reshape((1,) * (rank - in_ids[0].ndim) + in_ids[0].shape)
        for ids in in_ids[1:]:
            a, b = np.broadcast_arrays(result, ids)
            self.uf.union(a, b)
            result = np.where(a == FREE, b, a)
        return result

    def concatenate(self, op: Any, inputs: list[Any], rank: int, name: str) -> np.ndarray:
        axis = op.axis % (rank + 1) - 1
        if axis < 0:
            raise UnsupportedOpError(f"dependency_aware=True: {name!r} concatenates along the batch axis. "
                                     f"Expected a concatenation along a feature axis; use dependency_aware=False.")
        arrays = [self.ids[id(t)] for t in inputs]
        target = [max(a.shape[d] for a in arrays) for d in range(rank)]
        parts = []
        for tensor, ids in zip(inputs, arrays):
            shape = list(target)
            shape[axis] = _static_shape(tensor, repr(name), [axis])[axis]
            parts.append(np.broadcast_to(ids, shape))
        return np.concatenate(parts, axis=axis)

    def spatial(self, layer: Any, tensor: Any, output: Any, name: str) -> np.ndarray:
        in_axis = _channel_axis(layer, len(tensor.shape))
        n = int(tensor.shape[in_axis + 1])
        ids = self.ids[id(tensor)]
        if any(size > 1 for a, size in enumerate(ids.shape) if a != in_axis):
            raise UnsupportedOpError(
                f"dependency_aware=True: {name!r} ({type(layer).__name__}) receives channels that vary along its "
                f"spatial axes (after a Reshape / Permute). Expected a channels-only layout there; use "
                f"dependency_aware=False.")
        vector = np.ravel(ids) if ids.size == n else np.full(n, np.ravel(ids)[0])
        out_rank = len(output.shape) - 1
        out_axis = in_axis if out_rank == len(tensor.shape) - 1 else out_rank - 1
        shape = [1] * out_rank
        shape[out_axis] = n
        return vector.reshape(shape)

    def move(self, layer: Any, tensor: Any, output: Any, name: str) -> np.ndarray:
        full = np.broadcast_to(self.ids[id(tensor)], _static_shape(tensor, repr(name)))
        if isinstance(layer, L.Permute):
            return np.transpose(full, [d - 1 for d in layer.dims])
        if isinstance(layer, L.Flatten) and layout.activation_axis(layer) == 1 and full.ndim > 1:
            full = np.moveaxis(full, 0, -1)  # Keras flattens channels_first tensors in channels_last order
        return full.reshape(_static_shape(output, repr(name)))


def _functional(model: Any, name: str, purpose: str = "dependency_aware=True reads",
                remedy: str = "rebuild it that way, or use dependency_aware=False") -> Any:
    """The functional graph of ``model`` (a Sequential keeps one inside), or an error saying that ``purpose`` (what
    needs the graph) cannot run, with ``remedy``."""
    functional = getattr(model, "_functional", None) if isinstance(model, keras.Sequential) else model
    if functional is None or not hasattr(functional, "_nodes_by_depth"):
        raise UnsupportedModelError(
            f"{purpose} the layer graph of a Keras functional or Sequential model; model {name!r} "
            f"({type(model).__name__}) has none (a subclassed model, or a Sequential without keras.Input). "
            f"Expected a model built with the functional API (keras.Model(inputs, outputs)) or a Sequential "
            f"starting with keras.Input(shape). To proceed, {remedy}.")
    return functional


def _groups(walk: _Walk, order: dict[str, int]) -> Iterator[ChannelGroup]:
    by_roots: dict[tuple[int, ...], list[str]] = {}
    for name, out_vars in walk.outputs.items():
        by_roots.setdefault(walk.uf.roots(out_vars), []).append(name)
    for roots, members in by_roots.items():
        partitions = max([groups for groups, variables in walk.grouped
                          if any(walk.uf.roots(v) == roots for v in variables)], default=1)
        if len(members) > 1 or partitions > 1:
            yield ChannelGroup(sorted(members, key=order.get), partitions)


def channel_groups(model: Any) -> list[ChannelGroup]:
    """Groups of conv / dense layer names (qualified as in discovery) whose output channels are coupled.

    Raises:
        UnsupportedModelError: a subclassed model (no functional graph to read).
        UnsupportedOpError: a layer whose effect on channels is not known.
    """
    return channel_dependencies(model)[0]


def channel_dependencies(model: Any) -> tuple[list[ChannelGroup], ChannelFollowers]:
    """:func:`channel_groups`, and the BatchNormalization layers (with ``scale`` and ``center``) that follow output
    channels, as :func:`slimkit.speedup.dependency.channel_dependencies` finds them on the PyTorch twin."""
    walk = _Walk(model)
    functional = _functional(model, model.name)
    walk.run(model, [np.full((1,) * (len(t.shape) - 1), FREE) for t in functional.inputs])
    layers = list(named_layers(model))
    order = {entry: i for i, entry in enumerate(entry for name, layer in layers
                                                for entry, _, _ in layout.entries(name, layer))}
    groups = sorted(_groups(walk, order), key=lambda g: order[g.members[0]])
    sources = {name: np.array(walk.uf.roots(out_vars)) for name, out_vars in walk.outputs.items()}
    produced = np.concatenate(list(sources.values())) if sources else np.zeros(0, dtype=np.int64)
    followers = {}
    for name, layer in layers:
        variables = walk.layer_vars.get((id(layer), "ch"))
        if variables is not None and isinstance(layer, L.BatchNormalization) and layer.scale and layer.center:
            own = np.array(walk.uf.roots(variables))
            if np.isin(own, produced).any():
                followers[name] = own
    return groups, ChannelFollowers(sources, followers)
