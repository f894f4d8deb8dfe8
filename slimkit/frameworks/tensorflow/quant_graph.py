"""Graph-native fake quantization for Keras: the built-in quantizers' formulas as TensorFlow ops.

Inside a traced function (``fit``, ``predict``, a ``tf.function``, XLA) the Keras wrapper computes the
built-in quantization in the graph instead of calling back into Python:

- **affine** (the base :class:`~slimkit.compression.quantizer.Quantizer` methods, used by
  ``NaiveQuantizer``, ``QATQuantizer`` and ``PostTrainingQuantizer``): weight parameters from the current
  (masked, BN-folded) weight per channel; activation ranges tracked in ``tf.Variable`` s updated with
  ``assign`` (EMA for QAT, running min / max for a ``MinMaxObserver``; histogram observers, PTQ's
  ``'l2'`` / ``'kl'``, record in eager calls only, as ``calibrate`` makes them); parameters from the
  range (:func:`~slimkit.frameworks.tensorflow.quant_ops.range_params`, ``affine_params``' float64
  arithmetic) and fake quantization with round half to even and the clipped straight-through gradient
  (:func:`~slimkit.frameworks.tensorflow.quant_ops.fake_quant_tensors`, the eager path's formula);
- **traced**: methods marked :func:`~slimkit.compression.quantizer.traceable` (DoReFa, BNN) use only the
  ops seam and fixed parameters, so the quantizer's own method is traced as is;
- **python**: anything else (a subclass overriding ``quantize_*``, the parameter helpers or
  ``make_observer``, a custom ``quant_grad``, power-of-two scales) keeps the ``tf.py_function`` path.

The Python core and the graph share one state (:mod:`slimkit.frameworks.tensorflow.quant_slots`): each
quantized activation's range and parameters live in variables that the core's observer and parameter table
read and write through; the switches (fake-quantize, observe in training / in inference) are evaluated from
the quantizer's ``should_fake_quant`` / ``should_observe`` whenever its state changes
(:meth:`GraphQuant.sync`, called by the core's ``state_changed``).

Traced without XLA, ranges, parameters, outputs and gradients equal the eager core's bit for bit. XLA may
fuse the EMA's multiply-adds (FMA), so QAT's tracked float64 ranges can differ from the eager ones in their
last bits there (the fake-quantized float32 values agreed on the data tested).

Example:

>>> import numpy as np, keras, tensorflow as tf
>>> from slimkit.algorithms.quantization import QATQuantizer
>>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name='fc')])
>>> qat = QATQuantizer(model, [{'quant_types': ['weight', 'output'], 'op_names': ['fc']}])
>>> model = qat.compress()
>>> step = tf.function(lambda x: model(x, training=True))
>>> _ = step(tf.ones((4, 3)))                        # the EMA range is updated in the graph
>>> qat.states['fc'].observers['output'].ready       # and read by the Python core
True
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from slimkit.compression.channels import channel_axes, channel_shape
from slimkit.compression.observers import EMAObserver, HistogramObserver, MinMaxObserver
from slimkit.compression.quant import QuantGrad, QuantType, qrange
from slimkit.compression.quantizer import Quantizer
from slimkit.frameworks.tensorflow.quant_ops import fake_quant_tensors, range_params
from slimkit.frameworks.tensorflow.quant_slots import Slot, SlotObservers, SlotTable
from slimkit.frameworks.tensorflow.replicas import shared_variable

AFFINE, TRACED, PYTHON = "affine", "traced", "python"
_HELPERS = {QuantType.QUANT_WEIGHT: ("weight_params",),
            QuantType.QUANT_INPUT: ("activation_params", "quantize_activation"),
            QuantType.QUANT_OUTPUT: ("activation_params", "quantize_activation")}
_KNOWN_OBSERVERS = (EMAObserver, MinMaxObserver, HistogramObserver)


def _own(quantizer: Any, name: str) -> bool:
    return getattr(type(quantizer), name) is getattr(Quantizer, name)


def route(quantizer: Any, qtype: QuantType) -> str:
    """How a wrapper computes ``qtype`` in a traced function: :data:`AFFINE`, :data:`TRACED` or :data:`PYTHON`."""
    name = f"quantize_{qtype.value}"
    method = getattr(type(quantizer), name)
    grad = quantizer.quant_grad
    scheme = quantizer.profile.weight if qtype is QuantType.QUANT_WEIGHT else quantizer.profile.activation
    if _own(quantizer, name) and all(_own(quantizer, h) for h in _HELPERS[qtype]) and grad is QuantGrad \
            and not scheme.pow2:
        return AFFINE
    if getattr(method, "_slimkit_traceable", False) and (
            (grad is QuantGrad and getattr(method, "_slimkit_differentiable", False))
            or getattr(grad.quant_backward, "_slimkit_traceable", False)):
        return TRACED
    return PYTHON


def _observes(quantizer: Any, layer: Any) -> tuple[bool, bool]:
    """``quantizer.should_observe(layer)`` in a training call and in an inference call (the core reads the
    call's mode from ``layer.module.training``, as on PyTorch)."""
    module = layer.module
    saved = vars(module).get("training")
    answers = []
    for training in (True, False):
        object.__setattr__(module, "training", training)
        answers.append(bool(quantizer.should_observe(layer)))
    if saved is None:
        vars(module).pop("training", None)
    else:
        object.__setattr__(module, "training", saved)
    return answers[0], answers[1]


class GraphQuant:
    """The graph-native side of one quantizer: routes, slots and the weight formula (module docstring)."""

    def __init__(self, quantizer: Any, layers: list[Any]):
        self.quantizer = quantizer
        self.routes: dict[str, dict[QuantType, str]] = {}
        self.slots: dict[str, dict[str, Slot]] = {}
        self.weight_flags: dict[str, tf.Variable] = {}
        for layer in layers:
            routes = self.routes[layer.name] = {t: route(quantizer, t) for t in quantizer.states[layer.name].types}
            slots = {}
            for qtype in (QuantType.QUANT_INPUT, QuantType.QUANT_OUTPUT):
                if routes.get(qtype) != AFFINE:
                    continue
                observer = quantizer.states[layer.name].observers.get(qtype.value) or \
                    quantizer.make_observer(layer, qtype.value)
                if type(observer) not in _KNOWN_OBSERVERS:  # a custom observer: its Python code runs per call
                    routes[qtype] = PYTHON
                    continue
                slots[qtype.value] = Slot(quantizer, layer, qtype.value, observer)
            self.slots[layer.name] = slots
            if routes.get(QuantType.QUANT_WEIGHT) == AFFINE:  # [fake_quant, qmax - qmin]
                scheme = quantizer.profile.weight
                qmin, qmax = qrange(quantizer.states[layer.name].bits[QuantType.QUANT_WEIGHT], scheme.signed,
                                    scheme.narrow)
                self.weight_flags[layer.name] = shared_variable(np.array([0.0, max(qmax - qmin, 1)]))
            state = quantizer.states[layer.name]
            state.observers = SlotObservers(slots, state.observers)
            quantizer.params[layer.name] = SlotTable(slots, quantizer.params[layer.name])
        self.sync()

    def release(self, layers: list[Any]) -> None:
        """Give the core plain dicts again (after unwrapping), with the current values."""
        for layer in layers:
            state = self.quantizer.states[layer.name]
            if isinstance(state.observers, SlotObservers):
                slots = self.slots.get(layer.name, {})
                for slot in slots.values():
                    slot.sync()
                state.observers = {key: (slots[key].observer if key in slots else value)
                                   for key, value in dict.items(state.observers)}
                self.quantizer.params[layer.name] = dict(self.quantizer.params[layer.name].items())

    def graph_safe(self, layer: Any) -> bool:
        """No request of ``layer`` needs ``tf.py_function`` (it can run under XLA)."""
        return PYTHON not in self.routes[layer.name].values()

    def sync(self) -> None:
        """Push the quantizer's flags and any Python-side state into the variables; pull the graph's writes."""
        quantizer = self.quantizer
        for layer in quantizer.layers:
            if layer.name not in self.routes:
                continue
            fake_quant = bool(quantizer.should_fake_quant(layer))
            observe_train, observe_infer = _observes(quantizer, layer)
            fixed = quantizer._fixed_keys.get(layer.name, ())
            for key, slot in self.slots[layer.name].items():
                slot.push_flags(fake_quant, observe_train and key not in fixed, observe_infer and key not in fixed)
                slot.sync()
            flag = self.weight_flags.get(layer.name)
            if flag is not None and float(flag.numpy()[0]) != float(fake_quant):
                flag.assign([float(fake_quant), flag.numpy()[1]])  # whole: a mirrored variable has no slice assign

    # ------------------------------------------------------------ the graph
    def weight(self, layer: Any, weight: tf.Tensor) -> tf.Tensor:
        """``quantize_weight``'s affine formula in TF ops: parameters from ``weight``'s range under the profile."""
        quantizer = self.quantizer
        scheme = quantizer.profile.weight
        bits = quantizer.states[layer.name].bits[QuantType.QUANT_WEIGHT]
        shape = tuple(weight.shape)
        values = tf.cast(tf.stop_gradient(weight), tf.float64)
        if scheme.per_channel:  # one axis, or the (in, multiplier) axes of a depthwise kernel, row-major
            axes = channel_axes(layer.out_axis, len(shape))
            reduce = [d for d in range(len(shape)) if d not in axes]
            lo, hi = tf.reduce_min(values, axis=reduce), tf.reduce_max(values, axis=reduce)
            view = channel_shape(shape, layer.out_axis)
        else:
            lo, hi = tf.reshape(tf.reduce_min(values), [1]), tf.reshape(tf.reduce_max(values), [1])
            view = [1] * len(shape)
        flags = self.weight_flags[layer.name].read_value()
        scale, zero_point = range_params(lo, hi, bits, scheme, flags[1])
        qmin, qmax = qrange(bits, scheme.signed, scheme.narrow)
        out = fake_quant_tensors(weight, tf.reshape(tf.cast(scale, tf.float32), view),
                                 tf.reshape(tf.cast(zero_point, tf.float32), view), qmin, qmax)
        return tf.where(flags[0] > 0, out, weight)

    def activation(self, layer: Any, x: tf.Tensor, key: str, training: bool) -> tf.Tensor:
        return self.slots[layer.name][key].quantize(x, training)
