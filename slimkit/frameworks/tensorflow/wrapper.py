"""The Keras layer that stands in for a compressed layer: masks applied inside ``call``.

Keras layers cannot be swapped in a built functional graph, so slimkit does not swap them.
:func:`install` gives the target layer an instance-level ``call`` that routes through a
:class:`MaskWrapper`; the layer object stays where it is in every Functional, Sequential or
subclassed model (nested or shared), and :func:`uninstall` deletes that attribute again, which
is the exact inverse. The wrapper runs the layer's own class ``call`` inside a
``keras.StatelessScope`` that reads ``kernel * mask`` in place of the kernel: the layer's
variables are never written, and gradients reach only the unmasked weights.

Masks are non-trainable variables of the wrapper, which the model does not track (the wrapper is
found through a weak mapping from layer to wrapper, not an attribute): the model's ``weights``
and the files Keras saves keep exactly the original architecture.

Example:

>>> import numpy as np, keras
>>> from slimkit.frameworks.tensorflow.wrapper import install, uninstall
>>> dense = keras.layers.Dense(2, use_bias=False)
>>> model = keras.Sequential([keras.Input((2,)), dense])
>>> wrapper = install(dense)
>>> _ = wrapper.weight_mask.assign(np.array([[1.0, 0.0], [1.0, 0.0]], dtype='float32'))
>>> bool(np.all(model(np.ones((1, 2)))[:, 1] == 0.0))
True
>>> uninstall(dense)
>>> 'call' in vars(dense)
False
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from slimkit.frameworks.tensorflow.layout import extra_kernels, variable, weight_attrs

# layer -> its MaskWrapper. Kept outside the layer: Keras' saving walks a layer's attributes and
# would otherwise write the wrapper's masks into the model's files.
_WRAPPERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class MaskWrapper(keras.layers.Layer):
    """Applies weight / bias masks to ``layer`` on every call.

    Args:
        layer: the Keras layer being compressed (already built).
        layer_name: its qualified name in the model.

    ``weight_mask`` (and ``bias_mask`` when the layer has a bias) start as ones; so does one mask per extra kernel
    of the layer (``kernel_masks``, e.g. a SeparableConv2D's ``'depthwise_kernel'``, see
    :func:`~slimkit.frameworks.tensorflow.layout.extra_kernels`), applied once set. :meth:`mask_of` finds the mask
    of an entry. :meth:`masked_values` is the one place that decides what the layer reads in place of its
    variables (a fake-quantizing wrapper extends it). ``attached`` lists the
    :class:`~slimkit.compression.Layer` objects of the compressors working through this wrapper, bottom first
    (a pruner, then a quantizer stacked on it: :mod:`slimkit.compression.composition`).
    """

    def __init__(self, layer: keras.layers.Layer, layer_name: str, **kwargs: Any):
        super().__init__(name=f"{layer.name}_slimkit", trainable=False, **kwargs)
        self.layer_name = layer_name
        weight_attr, bias_attr = weight_attrs(layer)
        # the layer's own variables, held without Keras tracking them as the wrapper's
        object.__setattr__(self, "_weight_var", variable(layer, weight_attr))
        object.__setattr__(self, "_bias_var", variable(layer, bias_attr))
        self.weight_mask = (self.add_weight(shape=tuple(self._weight_var.shape), initializer="ones",
                                            trainable=False, name="weight_mask", dtype="float32")
                            if self._weight_var is not None else None)  # weightless: a quantized activation
        self.bias_mask = (self.add_weight(shape=tuple(self._bias_var.shape), initializer="ones",
                                          trainable=False, name="bias_mask", dtype="float32")
                          if self._bias_var is not None else None)
        self.bias_mask_set = False  # get_masks reports None for a bias mask never set, like PyTorch
        object.__setattr__(self, "_kernel_vars", {kernel.attr: variable(layer, kernel.attr)
                                                  for kernel in extra_kernels(layer)})
        self.kernel_masks = {attr: self.add_weight(shape=tuple(var.shape), initializer="ones", trainable=False,
                                                   name=f"{attr}_mask", dtype="float32")
                             for attr, var in self._kernel_vars.items()}
        object.__setattr__(self, "kernel_masks_set", set())  # kernels whose mask the forward multiplies in
        self._target = weakref.ref(layer)
        self.models: weakref.WeakSet = weakref.WeakSet()  # models whose compiled functions include this layer
        self.hooks: dict[int, Callable[[np.ndarray], None]] = {}
        self._next_hook = 0
        object.__setattr__(self, "attached", [])  # untracked: Keras would walk the layers' models
        object.__setattr__(self, "below", None)

    def stack_on(self, below: MaskWrapper) -> None:
        """Take the place of ``below`` (a pruner's wrapper): its masks, output hooks and attached compressors, whose
        layers now point here, so their masks keep applying under this wrapper."""
        self._copy_masks(below, self)
        object.__setattr__(self, "hooks", below.hooks)  # the same dict (Keras would track a copy): handles stay valid
        self._next_hook = below._next_hook
        object.__setattr__(self, "attached", list(below.attached))
        object.__setattr__(self, "below", below)
        for layer in below.attached:
            layer.wrapper = self

    def unstack(self) -> MaskWrapper | None:
        """The wrapper this one stacked on, given the current masks and its compressors' layers back; None if none."""
        below = self.below
        if below is not None:
            self._copy_masks(self, below)
            below._next_hook = self._next_hook
            for layer in below.attached:
                layer.wrapper = below
        return below

    @staticmethod
    def _copy_masks(source: MaskWrapper, target: MaskWrapper) -> None:
        for name in ("weight_mask", "bias_mask"):
            if getattr(source, name) is not None:
                getattr(target, name).assign(getattr(source, name))
        for attr, mask in source.kernel_masks.items():
            target.kernel_masks[attr].assign(mask)
        target.bias_mask_set = source.bias_mask_set
        object.__setattr__(target, "kernel_masks_set", set(source.kernel_masks_set))

    def mask_of(self, kernel: str | None) -> keras.Variable | None:
        """The weight mask of the entry compressing ``kernel`` (None: the layer's own weight)."""
        return self.weight_mask if kernel is None else self.kernel_masks[kernel]

    def mask_set(self, kernel: str) -> None:
        """From now on the forward multiplies ``kernel``'s mask in (traced functions are rebuilt to do so)."""
        if kernel not in self.kernel_masks_set:
            self.kernel_masks_set.add(kernel)
            self.refresh_models()

    @property
    def target(self) -> keras.layers.Layer:
        return self._target()

    def masked_values(self) -> list[tuple[keras.Variable, Any]]:
        """(variable, value to read in its place) pairs for this forward."""
        if self._weight_var is None:
            return []
        mapping = [(self._weight_var, self._weight_var * tf.cast(self.weight_mask, self._weight_var.dtype))]
        if self.bias_mask_set:  # no multiply by ones in the graph for layers whose bias is never masked
            mapping.append((self._bias_var, self._bias_var * tf.cast(self.bias_mask, self._bias_var.dtype)))
        for attr in sorted(self.kernel_masks_set):
            var = self._kernel_vars[attr]
            mapping.append((var, var * tf.cast(self.kernel_masks[attr], var.dtype)))
        return mapping

    def call(self, *args: Any, **kwargs: Any) -> Any:
        layer = self.target
        mapping = self.masked_values()
        mapped = {id(var) for var, _ in mapping}
        with keras.StatelessScope(state_mapping=mapping) as scope:
            outputs = self.layer_call(layer, args, kwargs)
        for var in layer.variables:  # state updates made in the call (BatchNormalization moving stats)
            if id(var) not in mapped:
                value = scope.get_current_value(var)
                if value is not None:
                    var.assign(value)
        if self.hooks:
            self._emit(outputs)
        return outputs

    def layer_call(self, layer: keras.layers.Layer, args: tuple, kwargs: dict) -> Any:
        """The layer's own computation (its class ``call``), with the variables mapped by :meth:`masked_values`."""
        return type(layer).call(layer, *args, **kwargs)

    def _emit(self, outputs: Any) -> None:
        if tf.executing_eagerly():
            self.run_hooks(outputs)
        else:  # inside a traced train / predict function: call back into Python at run time
            tf.py_function(self.run_hooks, [outputs], [])

    def run_hooks(self, outputs: Any) -> None:
        array = np.asarray(outputs)
        for fn in list(self.hooks.values()):
            fn(array)

    def add_hook(self, fn: Callable[[np.ndarray], None]) -> HookHandle:
        key = self._next_hook
        self._next_hook += 1
        self.hooks[key] = fn
        self.target.supports_jit = False  # py_function does not compile with XLA
        self.refresh_models()
        return HookHandle(self, key)

    def remove_hook(self, key: int) -> None:
        if self.hooks.pop(key, None) is not None and not self.hooks:
            vars(self.target).pop("supports_jit", None)
            self.refresh_models()

    def refresh_models(self) -> None:
        """Make the models' compiled train / test / predict functions trace this layer's call again."""
        for model in list(self.models):
            retrace(model)


class HookHandle:
    """Returned by ``add_output_hook``; ``remove()`` detaches the hook."""

    def __init__(self, wrapper: MaskWrapper, key: int):
        self._wrapper = wrapper
        self._key = key

    def remove(self) -> None:
        self._wrapper.remove_hook(self._key)


def retrace(model: Any) -> None:
    """Rebuild ``model``'s compiled functions so the next call traces the current layer calls.

    Safe in the middle of ``fit`` (the new function replaces the old one between steps). XLA is
    turned off while any of the model's layers has an output hook, and back on afterwards.
    """
    if getattr(model, "compiled", False):
        wants_xla = all(getattr(layer, "supports_jit", True) for layer in model._flatten_layers())
        saved = vars(model).get("_slimkit_jit_compile")
        if not wants_xla and model._jit_compile:
            model._slimkit_jit_compile = True
            model._jit_compile = False
        elif wants_xla and saved:
            model._jit_compile = True
            del model._slimkit_jit_compile
    for kind in ("train", "test", "predict"):
        if getattr(model, f"{kind}_function", None) is not None:
            getattr(model, f"make_{kind}_function")(force=True)


def wrapper_of(layer: Any) -> MaskWrapper | None:
    """The :class:`MaskWrapper` installed on ``layer``, or None."""
    return _WRAPPERS.get(layer)


def install(layer: keras.layers.Layer, layer_name: str | None = None, factory: Callable[..., MaskWrapper] | None = None
            ) -> MaskWrapper:
    """Route ``layer``'s calls through a new :class:`MaskWrapper` (or ``factory(layer, layer_name)``,
    e.g. a fake-quantizing subclass) and return it."""
    wrapper = (factory or MaskWrapper)(layer, layer_name or layer.name)
    _WRAPPERS[layer] = wrapper
    object.__setattr__(layer, "call", wrapper.call)
    return wrapper


def uninstall(layer: keras.layers.Layer) -> None:
    """Give ``layer`` its own ``call`` back (the exact inverse of :func:`install`); a wrapper stacked on another
    (:meth:`MaskWrapper.stack_on`) gives the layer back to that one."""
    wrapper = _WRAPPERS.pop(layer, None)
    if wrapper is None:
        return
    below = wrapper.unstack()
    if below is not None:
        _WRAPPERS[layer] = below
        object.__setattr__(layer, "call", below.call)
    else:
        wrapper.hooks.clear()
        vars(layer).pop("supports_jit", None)
        object.__delattr__(layer, "call")
    wrapper.refresh_models()
