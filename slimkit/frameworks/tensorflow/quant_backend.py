"""Keras side of quantization: the fake-quant wrapper, BatchNorm folding, calibration runs, files and the deploy form.

The quantizer core (:class:`slimkit.compression.quantizer.Quantizer`, its observers and the built-in
formulas) is framework-neutral and runs in Python: observers read tensors as numpy, parameters are
numpy. :class:`QuantWrapper` (a :class:`~slimkit.frameworks.tensorflow.wrapper.MaskWrapper`, so masks
still apply) asks for the quantized input, weight and output of its layer on every call. Eagerly it
calls the quantizer directly. Inside a traced function (``fit``, ``predict``, a ``tf.function``, XLA) the
built-in quantizers run as TensorFlow ops in the graph (:mod:`slimkit.frameworks.tensorflow.quant_graph`:
the affine formulas with ranges in ``tf.Variable`` s shared with the Python core, DoReFa / BNN traced as
they are), so QAT's ranges, ``quant_start_step`` and ``step()`` counted by
:class:`~slimkit.frameworks.tensorflow.CompressionCallback` act inside ``fit`` exactly as in a PyTorch
loop, XLA included. A quantizer that overrides ``quantize_*`` (or the parameter helpers, ``make_observer``,
``quant_grad``) with arbitrary Python keeps the fallback: each request becomes a ``tf.py_function`` running
that code at run time, and such layers report ``supports_jit = False`` (the model runs without XLA while
they are wrapped).

Whether a call trains (QAT observes ranges only in training) comes from Keras' call context and is
given to the core as ``layer.training``, the attribute PyTorch modules carry.

With ``dummy_input`` and a quantizer that folds BatchNorm (QAT, PTQ), a conv / depthwise / dense layer
whose only consumer is a ``BatchNormalization`` computes with ``q(W f) / f``
(:mod:`slimkit.frameworks.tensorflow.quant_fold`): the quantized weight is the folded one, and the BN,
left in the model, sees the unfolded scale (batch statistics in training, moving statistics in inference).

For export, :meth:`KerasQuantBackend.deploy` freezes the parameters, writes the fake-quantized
(masked, ``q(W f) / f`` where folded) weights into the variables, and makes each wrapper quantize its
input / output with ``tf.quantization.fake_quant_with_min_max_vars`` on the frozen ranges, ops TFLite's
converter turns into int8 tensors with exactly those scales and zero points (see
:func:`slimkit.frameworks.tensorflow.export.export_tflite`); the converter folds the BN back, giving the
integer weights of ``q(W f)`` with the folded weights' scales.

A folding layer's ``'output'`` is quantized where its fused kernel ends, after the BN or the ReLU that follows it
(:class:`OutputTail`). Whole-graph quantization (``op_types: ['default']``) also quantizes the model inputs and the
functional layers between the selected ones (:mod:`slimkit.frameworks.tensorflow.quant_wholegraph`). A Keras layer's own
``activation`` (``Conv2D(..., activation='relu')``) is inside the layer, so its output is quantized
after the activation, as a fused TFLite kernel computes it.

Example:

>>> import numpy as np, keras
>>> from slimkit.algorithms.quantization import NaiveQuantizer
>>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, use_bias=False, name='fc')])
>>> _ = model.get_layer('fc').kernel.assign(np.array([[1.27], [0.333]], dtype='float32'))
>>> model = NaiveQuantizer(model, [{'quant_types': ['weight'], 'op_types': ['Dense']}]).compress()
>>> [round(float(v), 4) for v in np.ravel(model.get_layer('fc').quantized_weight())]
[1.27, 0.33]
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from slimkit.compression import bn_fold
from slimkit.compression.composition import stacking_targets
from slimkit.compression.quant import QuantType
from slimkit.errors import CompressionStateError, ConfigError, UnsupportedOpError
from slimkit.frameworks.tensorflow import layout, quant_fold
from slimkit.frameworks.tensorflow.adapter import ADAPTER, modules_of
from slimkit.frameworks.tensorflow.quant_graph import AFFINE, PYTHON, TRACED, GraphQuant
from slimkit.frameworks.tensorflow.quant_ops import OPS, call_training, fake_quant_deploy
from slimkit.frameworks.tensorflow.quant_wholegraph import GraphQuantizer, GraphWrapper, KerasPlan, plan_graph
from slimkit.frameworks.tensorflow.separable import separable_call
from slimkit.frameworks.tensorflow.wrapper import MaskWrapper, install, retrace, uninstall, wrapper_of
from slimkit.utils.files import atomic_path


class QuantWrapper(MaskWrapper):
    """Masks and fake quantization around one Keras layer (see the module docstring). ``entries``: the quantizer's
    entries of the layer by kernel (None: the layer's own, which quantizes its input, weight and output; an extra
    kernel such as ``'depthwise_kernel'``: that weight, and the tensor it computes inside the layer as its output).
    ``fold``: the BatchNormalization folded into the layer's own weight (and where its output is quantized), or
    None."""

    def __init__(self, layer: keras.layers.Layer, layer_name: str, quantizer: Any, entries: dict[str | None, Any],
                 graph: GraphQuant, fold: quant_fold.Fold | None = None):
        super().__init__(layer, layer_name)
        object.__setattr__(self, "_quantizer", quantizer)   # held without Keras tracking them
        object.__setattr__(self, "_entries", entries)
        object.__setattr__(self, "_slim_layer", entries.get(None))
        object.__setattr__(self, "_graph", graph)
        object.__setattr__(self, "_fold", fold)
        object.__setattr__(self, "_bn", None if fold is None else fold.bn)
        object.__setattr__(self, "_training_now", False)
        object.__setattr__(self, "deploy", False)

    def _run(self, fn: Callable[[Any], Any], x: Any) -> Any:
        """``fn(x)`` now when eager; in a traced function, at run time through ``tf.py_function``."""
        module, training = self.target, self._training_now

        def eager(value: Any) -> Any:
            object.__setattr__(module, "training", training)  # what QATQuantizer.should_observe reads
            return fn(value)

        if tf.executing_eagerly():
            return eager(x)
        out = tf.py_function(eager, [x], x.dtype)
        out.set_shape(x.shape)
        return out

    def _request(self, qtype: QuantType, x: Any, core: Callable[[Any], Any], layer: Any = None) -> Any:
        """``qtype``'s quantization of ``x`` for the entry ``layer`` (default: the layer's own): the Python core
        eagerly; in a traced function the graph-native formula, the traced core method, or the core through
        ``tf.py_function`` (``quant_graph.route``)."""
        layer = layer or self._slim_layer
        route = self._graph.routes[layer.name][qtype]
        if route == TRACED or (route == AFFINE and tf.executing_eagerly()):
            object.__setattr__(self.target, "training", self._training_now)
            return core(x)
        if route == PYTHON:
            return self._run(core, x)
        if qtype is QuantType.QUANT_WEIGHT:
            return self._graph.weight(layer, x)
        return self._graph.activation(layer, x, qtype.value, self._training_now)

    def quantize_kernel(self, kernel: Any, entry: Any = None) -> Any:
        """The kernel the layer computes with, from the masked ``kernel`` of ``entry`` (default: the layer's own
        weight): fake-quantized; with a folded BatchNorm ``q(W f) / f`` (the BatchNorm that follows multiplies by
        ``f`` again; an extra kernel is never folded)."""
        quantizer, layer = self._quantizer, entry or self._slim_layer
        bn = self._bn if layer.kernel is None else None
        if bn is None:
            return self._request(QuantType.QUANT_WEIGHT, kernel, lambda w: quantizer.forward_weight(layer, w), layer)
        factor, view = quant_fold.factor(bn), quant_fold.channel_view(self.target, kernel)
        folded = bn_fold.fold_weight(kernel, factor, view)
        quantized = self._request(QuantType.QUANT_WEIGHT, folded, lambda w: quantizer.forward_weight(layer, w))
        return bn_fold.unfold_weight(quantized, factor, view)

    def masked_values(self) -> list[tuple[keras.Variable, Any]]:
        if self.deploy:  # masks and fake-quantized weights are written into the variables
            return []
        return self.quantized_values()

    def quantized_values(self) -> list[tuple[keras.Variable, Any]]:
        """The masks' values with every weight this quantizer quantizes fake-quantized (masked first)."""
        values = {id(var): (var, value) for var, value in super().masked_values()}
        for kernel, layer in self._entries.items():
            if not self._quantizer.quantizes(layer, QuantType.QUANT_WEIGHT):
                continue
            var = self._weight_var if kernel is None else self._kernel_vars[kernel]
            mask = self.mask_of(kernel)
            var, value = values.get(id(var), (var, var * tf.cast(mask, var.dtype)))
            values[id(var)] = (var, self.quantize_kernel(value, layer))
        return list(values.values())

    def _deploy_quant(self, x: Any, key: str, layer: Any = None) -> Any:
        layer = layer or self._slim_layer
        return fake_quant_deploy(x, self._quantizer.params[layer.name].get(key), f"Layer {layer.name!r}", key)

    def _activation(self, qtype: QuantType, x: Any, core: Callable[[Any], Any], layer: Any = None) -> Any:
        """``qtype``'s quantization of ``x`` for the entry ``layer`` (default: the layer's own)."""
        if self.deploy:
            return self._deploy_quant(x, qtype.value, layer)
        return self._request(qtype, x, core, layer)

    def layer_call(self, layer: keras.layers.Layer, args: tuple, kwargs: dict) -> Any:
        """The layer's call; a separable conv whose depthwise entry quantizes its ``'output'`` is computed as its two
        halves with that tensor fake-quantized between them (:mod:`slimkit.frameworks.tensorflow.separable`)."""
        middle = next((entry for entry in self._entries.values() if entry.kernel_output
                       and self._quantizer.quantizes(entry, QuantType.QUANT_OUTPUT)), None)
        if middle is None:
            return super().layer_call(layer, args, kwargs)
        quantizer = self._quantizer
        return separable_call(layer, args[0], lambda t: self._activation(
            QuantType.QUANT_OUTPUT, t, lambda v: quantizer.forward_output(middle, v, 0), middle))

    def call(self, *args: Any, **kwargs: Any) -> Any:
        quantizer, layer = self._quantizer, self._slim_layer
        object.__setattr__(self, "_training_now", call_training(kwargs))
        if layer is None:  # only extra kernels of this layer are quantized
            return super().call(*args, **kwargs)
        if args and quantizer.quantizes(layer, QuantType.QUANT_INPUT):
            first = self._activation(QuantType.QUANT_INPUT, args[0],
                                     lambda t: quantizer.forward_input(layer, (t,), 0)[0])
            args = (first, *args[1:])
        elif quantizer._keras_wholegraph is not None:  # a model input it reads, quantized as a whole-graph tensor
            args = quantizer._keras_wholegraph.quantize_inputs(layer.name, args, self._training_now)
        outputs = super().call(*args, **kwargs)
        if self._fold is None or self._fold.tail is None:
            outputs = self.quantize_output(outputs)
        return outputs

    def quantize_output(self, outputs: Any) -> Any:
        """The layer's output quantization of ``outputs`` (here, or at its fused kernel's tail)."""
        quantizer, layer = self._quantizer, self._slim_layer
        if not quantizer.quantizes(layer, QuantType.QUANT_OUTPUT):
            return outputs
        return self._activation(QuantType.QUANT_OUTPUT, outputs, lambda t: quantizer.forward_output(layer, t, 0))

    def quantized_weight(self, kernel: str | None = None) -> np.ndarray:
        """The weight this layer computes with (masked, BN-folded, fake-quantized), as numpy; ``kernel``: that extra
        kernel's (``'depthwise_kernel'``).

        Raises:
            ConfigError: this quantizer has no entry for ``kernel`` on the layer.
        """
        quantizer, layer = self._quantizer, self._entries.get(kernel)
        if layer is None:
            raise ConfigError(f"Layer {self.layer_name!r}: {type(quantizer).__name__} quantizes the kernels "
                              f"{[k or 'its own weight (kernel=None)' for k in self._entries]} of it. Expected one of "
                              f"them. Received: kernel={kernel!r}")
        return np.asarray(quantizer.forward_weight(layer, BACKEND.effective_weight(layer)))


class OutputTail(MaskWrapper):
    """Quantizes a folding layer's output where its fused kernel ends (the folded BatchNorm, or the ReLU after
    it): the tail layer runs as usual, then its output goes through the head layer's output quantization."""

    def __init__(self, layer: keras.layers.Layer, layer_name: str, head: QuantWrapper):
        super().__init__(layer, layer_name)
        object.__setattr__(self, "_head", head)

    def call(self, *args: Any, **kwargs: Any) -> Any:
        outputs = super().call(*args, **kwargs)
        object.__setattr__(self._head, "_training_now", call_training(kwargs))
        return self._head.quantize_output(outputs)


class KerasQuantBackend:
    """Everything the framework-neutral :class:`~slimkit.compression.quantizer.Quantizer` asks of Keras."""

    ops = OPS

    # ------------------------------------------------------------ planning and wrapping
    def plan(self, model: Any, dummy_input: Any, quantizer: Any) -> KerasPlan:
        """BatchNorm folding (``quantizer.fold_bn``) read from the Keras graph
        (:func:`~slimkit.frameworks.tensorflow.quant_fold.plan_folds`, with where a folding layer's output is
        quantized) and, in whole-graph mode, the functional tensors to quantize
        (:func:`~slimkit.frameworks.tensorflow.quant_wholegraph.plan_graph`; functional and sequential models)."""
        result = KerasPlan(quant_fold.plan_folds(quantizer.layers, quantizer) if quantizer.fold_bn else {})
        if quantizer.whole_graph:
            own = {id(layer.module): layer.name for layer in quantizer.layers if layer.kernel is None}
            for layer in quantizer.layers:
                if id(layer.module) not in own:
                    raise ConfigError(
                        f"{type(quantizer).__name__}: whole-graph quantization selects the kernel entry {layer.name!r} "
                        f"without its layer {layout.layer_name(layer.name, layer.kernel)!r}, whose input and output "
                        f"the whole graph quantizes. Expected both selected, or both excluded.")
            plan_graph(model, result, own, quantizer.profile.shares_input_params)
        return result

    def wrap(self, model: Any, layers: list[Any], quantizer: Any) -> None:
        below = stacking_targets(layers, lambda layer: wrapper_of(layer.module))
        plan = quantizer.graph_plan or KerasPlan()
        folds = plan.folds
        tails = [fold.tail for fold in folds.values() if fold.tail is not None]
        wrapped = [tail.name for tail in tails if wrapper_of(tail) is not None]
        if wrapped:
            raise CompressionStateError(
                f"Layers {wrapped} end fused kernels whose outputs this quantizer quantizes, but another compressor "
                f"has wrapped them. Expected them unwrapped: call unwrap_model() on that compressor first.")
        graph = quantizer._keras_graph = GraphQuant(quantizer, layers)
        quantizer._keras_wholegraph = GraphQuantizer(quantizer, plan) if plan.graph else None
        for module in modules_of(layers):  # one wrapper per Keras layer, quantizing each of its selected entries
            entries = {layer.kernel: layer for layer in layers if layer.module is module}
            own = entries.get(None)
            fold = folds.get(own.name) if own is not None else None
            first = next(iter(entries.values()))
            wrapper = install(module, layout.layer_name(first.name, first.kernel),
                              lambda target, name, _entries=entries, _fold=fold:
                              QuantWrapper(target, name, quantizer, _entries, graph, _fold))
            stacked = next((below[layer.name] for layer in entries.values() if layer.name in below), None)
            if stacked is not None:
                wrapper.stack_on(stacked)
            for layer in entries.values():
                layer.wrapper = wrapper
                wrapper.attached.append(layer)
            wrapper.models.add(model)
            safe = all(graph.graph_safe(layer) for layer in entries.values())
            if not safe:
                module.supports_jit = False  # tf.py_function does not compile with XLA
            object.__setattr__(module, "quantized_weight", wrapper.quantized_weight)
            if fold is not None and fold.tail is not None:
                tail = install(fold.tail, fold.tail.name,
                               lambda target, name, _head=wrapper: OutputTail(target, name, _head))
                tail.models.add(model)
                if not safe:
                    fold.tail.supports_jit = False
        if quantizer._keras_wholegraph is not None:
            self._wrap_graph(model, quantizer)
        retrace(model)

    def _wrap_graph(self, model: Any, quantizer: Any) -> None:
        """Install a :class:`GraphWrapper` on each functional layer whose output (or model input) is quantized."""
        plan, selected = quantizer.graph_plan, {layer.name for layer in quantizer.layers}
        by_name = {layer.name: layer for layer in model.layers}
        names = [name for name in [*plan.layers, *plan.input_keys] if name not in selected]
        for name in dict.fromkeys(names):
            layer = by_name[name]
            wrapper = install(layer, name, lambda module, _name, _key=name if name in plan.graph else None:
                              GraphWrapper(module, _name, quantizer._keras_wholegraph, _key))
            wrapper.models.add(model)
            layer.supports_jit = False  # the core's observers run through tf.py_function

    def unwrap(self, model: Any, layers: list[Any], quantizer: Any) -> None:
        plan = quantizer.graph_plan or KerasPlan()
        for fold in plan.folds.values():
            if fold.tail is not None:
                uninstall(fold.tail)
        if quantizer._keras_wholegraph is not None:
            selected = {layer.name for layer in layers}
            for layer in model.layers:
                if layer.name not in selected and (layer.name in plan.layers or layer.name in plan.input_keys):
                    uninstall(layer)
            vars(model).pop("training", None)
            quantizer._keras_wholegraph = None
        for module in modules_of(layers):
            uninstall(module)
            for attr in ("training", "quantized_weight"):
                vars(module).pop(attr, None)
        for layer in layers:
            layer.wrapper = None
        quantizer._keras_graph.release(layers)
        retrace(model)

    def state_changed(self, quantizer: Any) -> None:
        """The quantizer's switches or parameters changed in Python: update the graph's copy (parameters fixed in
        whole-graph mode: a concatenation's single-use inputs on its grid first)."""
        if quantizer.frozen and getattr(quantizer, "_keras_wholegraph", None) is not None:
            quantizer._keras_wholegraph.align()
        quantizer._keras_graph.sync()

    def effective_weight(self, layer: Any) -> tf.Tensor:
        """The weight the quantizer sees: masked, BN-folded when a BatchNorm is folded in."""
        weight = ADAPTER.weight(layer)
        bn = layer.wrapper._bn if layer.kernel is None else None
        if bn is None:
            return weight
        return bn_fold.fold_weight(weight, quant_fold.factor(bn), quant_fold.channel_view(layer.module, weight))

    def layer_extras(self, layer: Any, quantizer: Any) -> dict[str, Any]:
        if layer.kernel is not None:  # an extra kernel: a weight, no activation of its own
            return {}
        activation = getattr(getattr(layer.module, "activation", None), "__name__", None)
        fold = layer.wrapper._fold
        tail = None if fold is None else fold.tail
        return {"folded_bn": None if fold is None else fold.bn.name,
                "fused_activation": fold.activation if tail is not None else
                (None if activation in (None, "linear") else activation),
                "fused_output_module": layer.name if tail is None else tail.name}

    @contextlib.contextmanager
    def inference(self, model: Any) -> Iterator[None]:
        """Keras passes ``training=False`` per call (:meth:`run_batch`): nothing to switch."""
        yield

    def run_batch(self, model: Any, batch: Any) -> Any:
        """``model(x, training=False)`` for an array / tensor, or the inputs of an ``(x, y)`` pair."""
        if isinstance(batch, (tuple, list)):
            batch = batch[0]
        return model(batch, training=False)

    # ------------------------------------------------------------ files
    def save_weights(self, model: Any, layers: list[Any], path: str) -> None:
        """``.keras`` / ``.weights.h5`` of the original architecture (float weights, masks multiplied in)."""
        from slimkit.frameworks.tensorflow.export import save_model

        save_model(model, path)

    def save_object(self, obj: Any, path: str) -> None:
        """Calibrations of Keras models are JSON whatever the suffix."""
        with atomic_path(path) as tmp, open(tmp, "w") as handle:
            json.dump(obj, handle, indent=1)

    def load_object(self, path: str) -> Any:
        with open(path) as handle:
            return json.load(handle)

    def export_onnx(self, quantizer: Any, path: str, example: Any, device: Any) -> None:
        raise UnsupportedOpError("ONNX export of Keras models is not supported. Expected onnx_path=None; export with "
                                 "slimkit.frameworks.tensorflow.export_tflite(model, path, quantizer=quantizer). "
                                 f"Received: onnx_path={path!r}")

    # ------------------------------------------------------------ deploy form (TFLite export)
    def check_tflite(self, quantizer: Any) -> None:
        """Raise :class:`UnsupportedOpError` unless every parameter is TFLite int8 (8 bits; weights
        symmetric with zero point 0 and q in [-127, 127])."""
        tables = [(layer.name, quantizer.params[layer.name]) for layer in quantizer.layers]
        for name, table in [*tables, ("the whole graph", quantizer.graph_params)]:
            for key, params in table.items():
                if key.startswith("input_from_graph"):
                    continue
                weight = key == "weight" and table is not quantizer.graph_params
                ok = params.bits == 8 and (params.qmax - params.qmin == 255 if not weight else
                                           (params.qmin, params.qmax) == (-127, 127)
                                           and not np.any(params.zero_point))
                if not ok:
                    raise UnsupportedOpError(
                        f"TFLite int8 export: {name!r} quantizes its {key} to {params.bits} bits "
                        f"(q in [{params.qmin}, {params.qmax}]). Expected 8-bit affine parameters with symmetric "
                        f"weights (NaiveQuantizer, QATQuantizer or PostTrainingQuantizer under the 'tflite' "
                        f"profile); export the calibration instead.")

    @contextlib.contextmanager
    def deploy(self, quantizer: Any) -> Iterator[Any]:
        """Within the block the model computes what the int8 kernels compute: parameters frozen, masked
        fake-quantized weights written into the variables, inputs / outputs through TF FakeQuant ops."""
        quantizer._require_wrapped("export_tflite")
        was_frozen = quantizer.frozen
        quantizer.freeze()
        self.check_tflite(quantizer)
        saved: list[tuple[Any, np.ndarray]] = []
        wrappers = []
        try:
            for wrapper in {id(layer.wrapper): layer.wrapper for layer in quantizer.layers}.values():
                for var, value in wrapper.quantized_values():
                    saved.append((var, var.numpy()))
                    var.assign(value)
                object.__setattr__(wrapper, "deploy", True)
                wrappers.append(wrapper)
            if quantizer._keras_wholegraph is not None:
                quantizer._keras_wholegraph.deploy = True
            yield quantizer.model
        finally:
            if quantizer._keras_wholegraph is not None:
                quantizer._keras_wholegraph.deploy = False
            for wrapper in wrappers:
                object.__setattr__(wrapper, "deploy", False)
            for var, value in reversed(saved):
                var.assign(value)
            quantizer.frozen = was_frozen
            quantizer.state_changed()


BACKEND = KerasQuantBackend()
