"""Which channels a Keras speedup removes: one walk over the functional graph of the masked model.

Every tensor carries, per value (broadcastable to its shape without the batch axis), a channel
variable and a constant: NaN where the values vary, else the one value every sample and position
holds there (a filter whose masked kernel is all zero outputs its bias, activated; BatchNormalization,
activations and merges of constants are evaluated with the layer itself). A channel is removed when
every tensor it reaches holds a constant there and every layer consuming it absorbs that constant:
a conv / dense folds ``constant * kernel`` into its bias (a padded conv only absorbs zeros, because
its borders see the padding instead), pooling, upsampling, cropping, flatten and merges pass it on.
Everything else keeps it: model outputs, live values, layers without a rule, and the channels coupled
with a kept one (residual adds, a depthwise conv's input and output, a shared layer's calls).

The variables are those of :mod:`slimkit.frameworks.tensorflow.dependency` (the channel groups the
dependency-aware pruners use); nothing here touches a model: :func:`analyse` returns a :class:`Plan`.

Example:

>>> import keras, numpy as np
>>> from slimkit.frameworks.tensorflow.speedup_analysis import analyse
>>> x = keras.Input((4,))
>>> model = keras.Model(x, keras.layers.Dense(2, name='b')(keras.layers.Dense(3, name='a')(x)))
>>> kernel, bias = model.get_layer('a').get_weights()
>>> model.get_layer('a').set_weights([kernel * [1, 0, 1], bias * [1, 0, 1]])  # filter 1 pruned
>>> plan = analyse(model)
>>> plan.keep['a', 'out'].tolist(), plan.keep['b', 'in'].tolist()
([True, False, True], [True, False, True])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from slimkit.errors import UnsupportedOpError
from slimkit.frameworks.tensorflow.dependency import _channel_axis, _functional, _UnionFind
from slimkit.frameworks.tensorflow.discovery import named_layers

L = keras.layers
Rule = Callable[["_Walk", Any], list["State"]]
RULES: dict[type, Rule] = {}
OP_RULES: dict[str, Rule] = {}  # keras.ops calls in the graph, by class name


def rule(*types: type, ops: tuple[str, ...] = ()) -> Callable[[Rule], Rule]:
    """Register ``fn(walk, node) -> [output State]`` for layers of ``types`` and ``keras.ops`` classes ``ops``."""

    def register(fn: Rule) -> Rule:
        RULES.update(dict.fromkeys(types, fn))
        OP_RULES.update(dict.fromkeys(ops, fn))
        return fn

    return register


def rule_for(operation: Any) -> Rule | None:
    """The rule of ``operation``: its class or nearest registered base class; keras.ops by class name."""
    for cls in type(operation).__mro__:
        if cls in RULES:
            return RULES[cls]
    return OP_RULES.get(type(operation).__name__)


@dataclass
class State:
    """A tensor's channel variables and constants (NaN: not constant), of one shape that broadcasts to the
    tensor's shape without the batch axis (size 1 along the axes the tensor does not vary along)."""

    ids: np.ndarray
    const: np.ndarray

    @staticmethod
    def of(ids: np.ndarray, const: np.ndarray) -> State:
        ids, const = np.broadcast_arrays(ids, const)
        for axis in range(ids.ndim):
            first_ids, first_const = np.take(ids, [0], axis=axis), np.take(const, [0], axis=axis)
            same = (const == first_const) | (np.isnan(const) & np.isnan(first_const))
            if ids.shape[axis] > 1 and (ids == first_ids).all() and same.all():
                ids, const = first_ids, first_const
        return State(np.ascontiguousarray(ids), np.ascontiguousarray(const, dtype=np.float64))

    def full(self) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, const)`` broadcast to one shape."""
        return tuple(np.broadcast_arrays(self.ids, self.const))

    def live(self) -> np.ndarray:
        """The variables of the values that are not constant."""
        ids, const = self.full()
        return ids[np.isnan(const)]

    def pruned(self) -> np.ndarray:
        """The variables of the constant values."""
        ids, const = self.full()
        return ids[~np.isnan(const)]


@dataclass
class Plan:
    """What speedup will do. ``keep[(layer, role)]``: kept channels, role ``'in'`` / ``'out'`` (``'ch'`` for
    per-channel layers, ``'mid'`` for a separable conv's depthwise output); ``folds[layer]``: ``{input channel:
    constant}`` of removed inputs whose constant goes into the layer's bias; ``layers``: name -> layer."""

    keep: dict[tuple[str, str], np.ndarray]
    folds: dict[str, dict[int, float]] = field(default_factory=dict)
    layers: dict[str, Any] = field(default_factory=dict)

    def changed(self) -> list[str]:
        """Layers that lose at least one channel, in model order."""
        names = list(self.layers)
        return sorted({name for (name, _), keep in self.keep.items() if not keep.all()}, key=names.index)


class _Walk:
    def __init__(self, model: Any):
        self.uf = _UnionFind()
        self.kept: list[int] = []
        self.layers = dict(named_layers(model))
        self.names = {id(layer): name for name, layer in self.layers.items()}
        self.states: dict[int, State] = {}
        self.variables: dict[tuple[str, str], np.ndarray] = {}
        self.folds: dict[str, dict[int, tuple[float, int]]] = {}

    # ------------------------------------------------------------------ helpers the rules use
    def name(self, operation: Any) -> str:
        return self.names.get(id(operation), operation.name)

    def keep(self, ids: np.ndarray) -> None:
        self.kept.extend(int(i) for i in np.ravel(ids))

    def fresh(self, shape: tuple[int, ...], axis: int = -1) -> State:
        """Kept, non-constant channels for a tensor of ``shape`` (without the batch axis)."""
        n = int(shape[axis] or 1) if shape else 1
        ids = self.uf.new(n)
        self.keep(ids)
        layout = [1] * max(len(shape), 1)
        layout[axis] = n
        return State(ids.reshape(layout), np.full(layout, np.nan))

    def vars(self, name: str, role: str, n: int) -> np.ndarray:
        if (name, role) not in self.variables:
            self.variables[(name, role)] = self.uf.new(n)
        return self.variables[(name, role)]

    def couple(self, name: str, role: str, state: State, axis: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The layer's own ``n`` channel variables for ``role``, united with ``state``'s channels along ``axis``,
        and the constant of each channel (NaN where not one constant)."""
        own = self.vars(name, role, n)
        ids, const = np.broadcast_arrays(state.ids, state.const)
        if any(size > 1 for a, size in enumerate(ids.shape) if a != axis % ids.ndim):  # channels spread out
            self.keep(ids)
            self.keep(own)
            return own, np.full(n, np.nan)
        ids, const = np.resize(np.ravel(ids), n), np.resize(np.ravel(const), n)
        self.uf.union(ids, own)
        return own, const

    def absorb(self, name: str, own: np.ndarray, const: np.ndarray, only_zero: bool) -> None:
        """Record that removing input channel ``c`` (constant ``const[c]``) adds ``const[c] * weights`` to the
        bias of layer ``name``; keep those the layer cannot absorb (nonzero before padding, or a shared layer
        seeing different constants)."""
        folds = self.folds.setdefault(name, {})
        for c in np.nonzero(~np.isnan(const))[0].tolist():
            value, previous = float(const[c]), folds.get(c)
            if (only_zero and value != 0.0) or (previous is not None and previous[0] != value):
                self.keep(own[c:c + 1])
            folds[c] = (value, int(own[c]))

    def evaluate(self, node: Any) -> np.ndarray:
        """The node's output computed by its own operation on its inputs' constants (NaN where any input is
        not constant); for element-wise layers and ops."""
        consts = {key: self.states[key].const for key in self._input_keys(node)}
        values = {key: keras.ops.convert_to_tensor(np.nan_to_num(c)[None].astype(np.float32))
                  for key, c in consts.items()}
        args, kwargs = node.arguments.fill_in(values)
        output = np.asarray(keras.ops.convert_to_numpy(node.operation(*args, **kwargs)), dtype=np.float64)[0]
        live = np.zeros(output.shape, dtype=bool)
        for const in consts.values():
            live |= np.broadcast_to(np.isnan(const).reshape((1,) * (output.ndim - const.ndim) + const.shape),
                                    output.shape)
        return np.where(live, np.nan, output)

    def _input_keys(self, node: Any) -> list[int]:
        return [id(t) for t in node.input_tensors]

    def inputs(self, node: Any) -> list[State]:
        return [self.states[key] for key in self._input_keys(node)]

    # ------------------------------------------------------------------ the walk
    def run(self, model: Any) -> None:
        functional = _functional(model, model.name)
        for depth in sorted(functional._nodes_by_depth, reverse=True):
            for node in functional._nodes_by_depth[depth]:
                outputs = list(node.outputs)
                if isinstance(node.operation, L.InputLayer):
                    states = [self.fresh(tuple(t.shape)[1:]) for t in outputs]
                else:
                    states = self.apply(node)
                for tensor, state in zip(outputs, states):
                    self.keep(state.live())  # values that vary keep their channel
                    self.states[id(tensor)] = state
        for tensor in functional.outputs:
            self.keep(self.states[id(tensor)].ids)

    def apply(self, node: Any) -> list[State]:
        operation = node.operation
        if isinstance(operation, keras.Model):
            raise UnsupportedOpError(
                f"Keras speedup reads one functional graph; layer {self.name(operation)!r} is a nested model. "
                f"Expected a model whose layers are not models: rebuild it flat (call the inner model's layers "
                f"directly on the outer model's tensors).")
        found = rule_for(operation)
        if found is None:
            return self.unknown(node)
        return found(self, node)

    def unknown(self, node: Any) -> list[State]:
        """A layer without a rule: exact when its inputs keep every channel; refused where a pruned (constant)
        channel reaches it."""
        states = self.inputs(node)
        if any(s.pruned().size for s in states):
            name, masked = self.name(node.operation), self.masked_feeding(states)
            raise UnsupportedOpError(
                f"Keras speedup cannot remove pruned channels that reach layer {name!r} of type "
                f"{type(node.operation).__name__}: it has no speedup rule. Expected pruned channels to reach only "
                f"{supported()}. To proceed, add {{'exclude': True, 'op_names': {masked!r}}} to the pruner's "
                f"config_list.")
        return self.keep_all(node)

    def keep_all(self, node: Any) -> list[State]:
        """Keep every channel of the node's inputs; its outputs get kept channels of their own."""
        for state in self.inputs(node):
            self.keep(state.ids)
        return [self.fresh(tuple(t.shape)[1:]) for t in node.outputs]

    def masked_feeding(self, states: list[State]) -> list[str]:
        """Layers whose output channels are coupled with the constant channels of ``states``."""
        roots = {self.uf.root(int(i)) for s in states for i in s.pruned()}
        return [name for (name, role), ids in self.variables.items()
                if role == "out" and roots & {self.uf.root(int(i)) for i in ids}]

    def plan(self) -> Plan:
        while True:  # every layer keeps at least one channel
            kept = {self.uf.root(i) for i in self.kept}
            keep = {key: np.array([self.uf.root(int(i)) in kept for i in ids], dtype=bool)
                    for key, ids in self.variables.items()}
            empty = [key for key, mask in keep.items() if not mask.any()]
            if not empty:
                break
            for key in empty:
                self.keep(self.variables[key][:1])
        folds = {}
        for name, entries in self.folds.items():
            removed = {c: value for c, (value, var) in entries.items()
                       if value != 0.0 and self.uf.root(var) not in kept}
            if removed:
                folds[name] = removed
        return Plan(keep, folds, self.layers)


def supported() -> str:
    """The layer types with a speedup rule, for messages."""
    return ", ".join(sorted({cls.__name__ for cls in RULES} | set(OP_RULES)))


def channel_axis(layer: Any, tensor: Any) -> int:
    """Channel axis of ``tensor`` (a layer's input or output), counted without the batch axis."""
    return _channel_axis(layer, len(tensor.shape))


def analyse(model: Any) -> Plan:
    """Decide the kept channels of every layer of ``model``, a functional or Sequential model holding the
    masked weights (masks multiplied in).

    Raises:
        UnsupportedModelError: a subclassed model.
        UnsupportedOpError: a pruned channel reaches a layer without a rule, or a nested model.
    """
    from slimkit.frameworks.tensorflow import speedup_rules  # noqa: F401 - registers the rules

    walk = _Walk(model)
    walk.run(model)
    return walk.plan()


__all__ = ["Plan", "State", "analyse", "channel_axis", "rule", "rule_for", "supported"]
