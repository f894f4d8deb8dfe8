"""The state a Keras quantizer's Python core and its compiled graph share: one :class:`Slot` per quantized
activation.

A slot holds ``[lo, hi, ready, scale, zero_point, has_params]`` in a float64 ``tf.Variable`` and the flags
``[fake_quant, observe in training, observe in inference, qmax - qmin]`` in another. The core keeps using its
own observer and parameter table, through stand-ins that read and write the slot:
:class:`SlotObserver` (in ``quantizer.states[layer].observers``, via :class:`SlotObservers`) and
:class:`SlotTable` (``quantizer.params[layer]``). Every exchange brings the two sides to the newer one: the
graph's ``assign`` s win over stale Python values, and a value the core stores wins over the graph's. In the
graph, :meth:`Slot.quantize` observes (EMA or running min / max, as the core's observer would) and
fake-quantizes with TF ops.

Example:

>>> import keras, numpy as np, tensorflow as tf
>>> from slimkit.algorithms.quantization import QATQuantizer
>>> model = keras.Sequential([keras.Input((2,)), keras.layers.Identity(name='id')])
>>> qat = QATQuantizer(model, [{'quant_types': ['output'], 'op_names': ['id']}])
>>> model = qat.compress()
>>> slot = qat._keras_graph.slots['id']['output']
>>> _ = tf.function(lambda x: model(x, training=True))(tf.constant([[-1.0, 3.0]]))
>>> slot.state.numpy()[:3].tolist(), qat.states['id'].observers['output'].range()[1].tolist()
([-1.0, 3.0, 1.0], [3.0])
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from slimkit.compression.observers import EMAObserver, MinMaxObserver
from slimkit.compression.quant import QParams, QuantType, qrange
from slimkit.frameworks.tensorflow.quant_ops import fake_quant_tensors, range_params
from slimkit.frameworks.tensorflow.replicas import batch_range, shared_variable

_GRAPH_OBSERVERS = {EMAObserver: "ema", MinMaxObserver: "minmax"}  # exact classes the graph updates


class Slot:
    """The shared state of one quantized activation (see the module docstring)."""

    def __init__(self, quantizer: Any, layer: Any, key: str, observer: Any):
        self.quantizer, self.layer, self.key = quantizer, layer, key
        self.kind = _GRAPH_OBSERVERS.get(type(observer))  # None: the graph never observes (histograms)
        self.decay = getattr(observer, "decay", None)
        qtype = QuantType.QUANT_INPUT if key.startswith("input") else QuantType.QUANT_OUTPUT
        self.bits = quantizer.states[layer.name].bits[qtype]
        self.scheme = quantizer.profile.activation
        self.qmin, self.qmax = qrange(self.bits, self.scheme.signed, self.scheme.narrow)
        self.state = shared_variable(np.zeros(6), f"{key}_slot")  # the same range on every replica
        self.flags = shared_variable(self._flags(False, False, False), f"{key}_flags")
        self.seen = np.zeros(6)  # the state as last exchanged between Python and the graph
        self.observer = observer
        self.params: QParams | None = None

    # ------------------------------------------------------------ Python <-> variables
    def python_row(self) -> np.ndarray:
        row = np.zeros(6)
        if self.observer.lo is not None:
            row[:3] = float(self.observer.lo[0]), float(self.observer.hi[0]), 1.0
        if self.params is not None:
            row[3:] = float(self.params.scale[0]), float(self.params.zero_point[0]), 1.0
        return row

    def sync(self) -> None:
        """Bring Python and the variable to the newer of the two (the graph's writes win over stale Python).
        While a function is traced the Python values are used as they are (synced when the state last changed)."""
        if not tf.executing_eagerly():
            return
        graph = self.state.numpy()
        if not np.array_equal(graph, self.seen):
            if graph[2]:
                type(self.observer).set_range(self.observer, graph[0:1], graph[1:2])
            if graph[5] and not np.array_equal(graph[3:], self.seen[3:]):
                self.params = QParams(self.bits, graph[3:4].copy(), graph[4:5].astype(np.int64), self.qmin, self.qmax,
                                      None, np.minimum(graph[0:1], 0.0), np.maximum(graph[1:2], 0.0))
            self.seen = graph
            return
        python = self.python_row()
        if not np.array_equal(python, self.seen):
            self.state.assign(python)
            self.seen = python

    def push_flags(self, fake_quant: bool, observe_train: bool, observe_infer: bool) -> None:
        flags = self._flags(fake_quant, observe_train, observe_infer)
        if not np.array_equal(self.flags.numpy(), flags):
            self.flags.assign(flags)

    def _flags(self, fake_quant: bool, observe_train: bool, observe_infer: bool) -> np.ndarray:
        """The flags row, ending with ``qmax - qmin``: read from the variable at run time, Grappler and XLA cannot
        turn the parameter division into a multiplication by the reciprocal (which rounds differently)."""
        observes = self.kind is not None
        return np.array([fake_quant, observe_train and observes, observe_infer and observes,
                         max(self.qmax - self.qmin, 1)], dtype=np.float64)

    # ------------------------------------------------------------ the graph
    def quantize(self, x: tf.Tensor, training: bool) -> tf.Tensor:
        """Observe ``x`` (when the flags say so) and fake-quantize it with the slot's parameters, in TF ops."""
        row, flags = self.state.read_value(), self.flags.read_value()
        if self.kind is not None:
            observed = self._observed(row, tf.stop_gradient(x), flags)
            row = tf.where(flags[1 if training else 2] > 0, observed, row)
            self.state.assign(row)
        has = row[5] > 0
        scale = tf.cast(tf.where(has, row[3], 1.0), tf.float32)
        out = fake_quant_tensors(x, scale, tf.cast(row[4], tf.float32), self.qmin, self.qmax)
        return tf.where(tf.logical_and(flags[0] > 0, has), out, x)

    def _observed(self, row: tf.Tensor, x: tf.Tensor, flags: tf.Tensor) -> tf.Tensor:
        batch_lo, batch_hi = batch_range(x)  # the global batch's, under a tf.distribute strategy
        ready = row[2] > 0
        if self.kind == "ema":
            lo = self.decay * row[0] + (1 - self.decay) * batch_lo
            hi = self.decay * row[1] + (1 - self.decay) * batch_hi
        else:
            lo, hi = tf.minimum(row[0], batch_lo), tf.maximum(row[1], batch_hi)
        lo, hi = tf.where(ready, lo, batch_lo), tf.where(ready, hi, batch_hi)
        if self.quantizer.live_params:
            scale, zero_point = range_params(lo[None], hi[None], self.bits, self.scheme, flags[3])
            params = [scale[0], zero_point[0], tf.constant(1.0, tf.float64)]
        else:
            params = [row[3], row[4], row[5]]
        return tf.stack([lo, hi, tf.constant(1.0, tf.float64), *params])


class SlotObserver:
    """The layer's observer as the core sees it: the quantizer's own observer, its range kept in the slot."""

    def __init__(self, slot: Slot):
        object.__setattr__(self, "_slot", slot)

    def __getattr__(self, name: str) -> Any:
        slot = self._slot
        slot.sync()
        value = getattr(slot.observer, name)
        if callable(value) and name in ("observe", "update", "set_range", "update_numpy"):
            def write_through(*args: Any, **kwargs: Any) -> Any:
                result = value(*args, **kwargs)
                slot.sync()
                return result
            return write_through
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._slot.observer, name, value)
        self._slot.sync()


class SlotObservers(dict):
    """``states[layer].observers`` with slot-backed entries: an observer the core stores becomes the slot's."""

    def __init__(self, slots: dict[str, Slot], entries: dict):
        super().__init__(entries)
        self.slots = slots
        for key, slot in slots.items():
            dict.__setitem__(self, key, SlotObserver(slot))

    def __setitem__(self, key: str, observer: Any) -> None:
        slot = self.slots.get(key)
        if slot is None or type(observer) is not type(slot.observer):
            dict.__setitem__(self, key, observer)
            return
        slot.sync()  # the graph's pending writes reach the old observer first; then the new one wins
        slot.observer = observer
        slot.sync()


class SlotTable(dict):
    """``quantizer.params[layer]`` with the activation entries kept in the slots."""

    def __init__(self, slots: dict[str, Slot], entries: dict):
        super().__init__()
        self.slots = slots
        for key, value in entries.items():
            self[key] = value

    def _entries(self) -> dict:
        for key, slot in self.slots.items():
            slot.sync()
            if slot.params is not None:
                dict.__setitem__(self, key, slot.params)
        return self

    def __setitem__(self, key: str, value: QParams) -> None:
        slot = self.slots.get(key)
        if slot is not None and not value.per_channel:
            slot.sync()  # the graph's pending writes first; then this value wins
            slot.params = value
            slot.sync()
        dict.__setitem__(self, key, value)

    def __getitem__(self, key: str) -> Any:
        return dict.__getitem__(self._entries(), key)

    def get(self, key: str, default: Any = None) -> Any:
        return dict.get(self._entries(), key, default)

    def __contains__(self, key: object) -> bool:
        return dict.__contains__(self._entries(), key)

    def items(self) -> Any:
        return dict.items(self._entries())

    def values(self) -> Any:
        return dict.values(self._entries())

    def keys(self) -> Any:
        return dict.keys(self._entries())

    def __iter__(self) -> Any:
        return dict.__iter__(self._entries())
