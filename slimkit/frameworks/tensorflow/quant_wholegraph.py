"""Whole-graph quantization of Keras models (``op_types: ['default']`` quantizing ``'output'``, with ``dummy_input``).

Besides the selected conv / dense layers, every tensor the int8 model holds between them gets parameters, as on
PyTorch (:mod:`slimkit.frameworks.torch.quant_graph`): the model inputs (``'input/<i>'``) and the outputs of the
functional layers of a functional or sequential model listed in :data:`GRAPH_KINDS` (``Add``, ``Concatenate``,
pooling, ``Flatten``, ``ReLU`` ...), keyed by the layer's name. The parameters follow the profile's rules through
the core's :meth:`~slimkit.compression.quantizer.Quantizer.quantize_graph_tensor`: max-pooling and reshapes share
their input's parameters, a concatenation covers the union of its inputs' ranges, the others observe their own
range. An ``Add`` / ``Subtract`` / ``Multiply`` whose only consumer is a plain ReLU is quantized once, after the
ReLU (the fused int8 kernel).

:class:`GraphWrapper` does the quantization around such a layer (and quantizes a model input where the layer reads
it); a selected layer reading a model input quantizes it in its :class:`~slimkit.frameworks.tensorflow.quant_backend.
QuantWrapper`. The core's observers run in Python: in a traced function (``fit``, ``predict``) the request runs
through ``tf.py_function`` and the model runs without XLA while wrapped. For export the wrappers use TF FakeQuant
ops on the frozen parameters, which TensorFlow's converter turns into the int8 tensors' parameters.

Example:

>>> import numpy as np, keras
>>> from slimkit.algorithms.quantization import PostTrainingQuantizer
>>> x = keras.Input((4, 4, 2))
>>> y = keras.layers.Add(name='add')([keras.layers.Conv2D(2, 1, name='conv')(x), x])
>>> model = keras.Model(x, keras.layers.MaxPooling2D(name='pool')(y))
>>> data = np.random.default_rng(0).standard_normal((4, 4, 4, 2)).astype('float32')
>>> cfg = [{'quant_types': ['weight', 'output'], 'op_types': ['default']}]
>>> ptq = PostTrainingQuantizer(model, cfg, dummy_input=data[:1])
>>> sorted(ptq.graph_plan.graph)
['add', 'input/0', 'pool']
>>> _ = ptq.compress(); ptq.calibrate([data])
>>> ptq.graph_meta['pool']['shared_from']
'graph:add'
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import keras
import tensorflow as tf

from slimkit.compression.graph_tensor import GraphTensor
from slimkit.errors import UnsupportedModelError
from slimkit.frameworks.tensorflow.quant_fold import Fold
from slimkit.frameworks.tensorflow.quant_ops import call_training, fake_quant_deploy
from slimkit.frameworks.tensorflow.wrapper import MaskWrapper

L = keras.layers
# Keras layer class -> the canonical op kind the profiles speak (torch's OP_KINDS names)
GRAPH_KINDS: dict[type, str] = {
    L.Add: "add", L.Subtract: "sub", L.Multiply: "mul", L.Concatenate: "cat",
    L.MaxPooling1D: "max_pool", L.MaxPooling2D: "max_pool", L.MaxPooling3D: "max_pool",
    L.GlobalMaxPooling1D: "max_pool", L.GlobalMaxPooling2D: "max_pool",
    L.AveragePooling1D: "avg_pool", L.AveragePooling2D: "avg_pool", L.AveragePooling3D: "avg_pool",
    L.GlobalAveragePooling1D: "mean", L.GlobalAveragePooling2D: "mean",
    L.Flatten: "flatten", L.Reshape: "reshape", L.Permute: "permute", L.ZeroPadding2D: "pad",
    L.UpSampling2D: "resize", L.ReLU: "relu", L.Softmax: "softmax",
}
# Keras activation function name -> op kind, for ``Activation`` layers
ACTIVATION_KINDS = {"relu": "relu", "relu6": "relu6", "sigmoid": "sigmoid", "tanh": "tanh", "softmax": "softmax",
                    "hard_swish": "hardswish", "silu": "silu", "gelu": "gelu"}
_FUSES_RELU = {"add", "sub", "mul"}
_PASS_THROUGH = (L.Dropout, L.Identity, L.SpatialDropout2D, L.GaussianNoise)


def graph_kind(layer: Any) -> str | None:
    """The op kind of a functional Keras layer whole-graph quantization covers, else None."""
    if isinstance(layer, L.Activation):
        return ACTIVATION_KINDS.get(getattr(layer.activation, "__name__", None))
    if isinstance(layer, L.ReLU):
        plain = not layer.negative_slope and not layer.threshold
        return None if not plain else ("relu" if layer.max_value is None else
                                       "relu6" if float(layer.max_value) == 6.0 else None)
    return next((kind for cls, kind in GRAPH_KINDS.items() if type(layer) is cls), None)


@dataclass
class KerasPlan:
    """What a Keras quantizer reads from the model's graph: BatchNorm folds, and the whole-graph tensors.

    Attributes:
        folds: ``{layer_name: Fold}`` (:func:`~slimkit.frameworks.tensorflow.quant_fold.plan_folds`).
        graph: ``{key: GraphTensor}`` (whole-graph mode only).
        layers: ``{key: keras layer}`` for the graph tensors that are layer outputs.
        input_keys: ``{consumer layer name: {position: key}}`` for the layers reading model inputs (``position``
            in the layer's flattened tensor inputs).
        fused: keys of add / sub / mul layers not quantized themselves (a ReLU after them is).
        concat_inputs: ``{owner: key of the concatenation}`` for tensors whose only consumer is a concatenation:
            TensorFlow's converter writes such a conv / add straight onto the concatenation's grid, so once the
            parameters are fixed they take the concatenation's (:meth:`GraphQuantizer.align`).
    """

    folds: dict[str, Fold] = field(default_factory=dict)
    graph: dict[str, GraphTensor] = field(default_factory=dict)
    layers: dict[str, Any] = field(default_factory=dict)
    input_keys: dict[str, dict[int, str]] = field(default_factory=dict)
    fused: set[str] = field(default_factory=set)
    concat_inputs: dict[str, str] = field(default_factory=dict)


def _producers(layer: Any) -> list[Any]:
    node = layer._inbound_nodes[0]
    return [tensor._keras_history.operation for tensor in node.arguments.keras_tensors]


def _consumers(layer: Any) -> list[Any]:
    return [node.operation for node in getattr(layer, "_outbound_nodes", [])]


def _onto_concat_grid(plan: KerasPlan, owners: dict[int, str | None], cat: Any, owner: str | None, producer: Any,
                      shares: Callable[[str], bool]) -> None:
    """Record ``owner`` (the tensor ``producer`` writes, read only by ``cat``) as written on the concatenation's grid;
    through ops that share their input's parameters (max-pooling, reshapes), the tensor before them too, when each is
    read only by the next. A chain that ends on a shared tensor read elsewhere is left alone (its requantization
    stays in the file), as are model inputs."""
    consumer, path = cat, []
    while owner is not None and _consumers(producer) == [consumer] and owner not in plan.concat_inputs:
        tensor = plan.graph.get(owner.partition(":")[2]) if owner.startswith("graph:") else None
        if tensor is not None and tensor.kind == "input":
            return
        path.append(owner)
        if tensor is None or not shares(tensor.kind) or len(tensor.inputs) != 1:
            plan.concat_inputs.update(dict.fromkeys(path, cat.name))
            return
        consumer, producer = producer, _producers(producer)[0]
        owner = owners.get(id(producer))


def plan_graph(model: Any, plan: KerasPlan, selected: dict[int, str], shares: Callable[[str], bool]) -> None:
    """Fill ``plan`` (graph, layers, input keys, fused, concat_inputs) for ``model``; ``selected``: id(layer) -> name
    of the layers the quantizer wraps; ``shares(kind)``: the profile's rule for ops passing their input's parameters.
    Layers called more than once, nested models and unknown layers are left float.

    Raises:
        UnsupportedModelError: ``model`` is subclassed (it has no layer graph to read).
    """
    inputs = None
    with contextlib.suppress(AttributeError, ValueError):
        inputs = model.inputs
    if not inputs:
        raise UnsupportedModelError(
            f"Whole-graph quantization (op_types ['default'] quantizing 'output') reads the Keras layer graph, which "
            f"the subclassed model {type(model).__name__!r} does not have. Expected a functional or Sequential "
            f"model, or layer types in op_types (e.g. ['Conv2D', 'Dense']). Received: {type(model).__name__}")
    owners: dict[int, str | None] = {lid: f"layer:{name}" for lid, name in selected.items()}
    for name, fold in plan.folds.items():
        for tail in (fold.bn, fold.tail):
            if tail is not None:
                owners[id(tail)] = f"layer:{name}"
    for index, tensor in enumerate(inputs):
        key = f"input/{index}"
        owners[id(tensor._keras_history.operation)] = f"graph:{key}"
        plan.graph[key] = GraphTensor(key, "input", key)
    for layer in model.layers:
        if id(layer) in owners or isinstance(layer, L.InputLayer) or len(getattr(layer, "_inbound_nodes", [])) != 1:
            continue
        inputs = [owners.get(id(producer)) for producer in _producers(layer)]
        if isinstance(layer, _PASS_THROUGH) and inputs and inputs[0] is not None:
            owners[id(layer)] = inputs[0]
            continue
        kind = graph_kind(layer)
        if kind is None:
            continue
        consumers = _consumers(layer)
        if kind in _FUSES_RELU and len(consumers) == 1 and graph_kind(consumers[0]) in ("relu", "relu6") \
                and id(consumers[0]) not in owners and len(consumers[0]._inbound_nodes) == 1:
            plan.fused.add(layer.name)
            owners[id(layer)] = None
            continue
        owners[id(layer)] = f"graph:{layer.name}"
        plan.graph[layer.name] = GraphTensor(layer.name, kind, layer.name, layer.name, 0, inputs)
        plan.layers[layer.name] = layer
        if kind == "cat":
            for owner, producer in zip(inputs, _producers(layer)):
                _onto_concat_grid(plan, owners, layer, owner, producer, shares)
    for layer in model.layers:
        if isinstance(layer, L.InputLayer) or len(getattr(layer, "_inbound_nodes", [])) != 1:
            continue
        reads = {position: owners[id(producer)].partition(":")[2] for position, producer in
                 enumerate(_producers(layer)) if isinstance(producer, L.InputLayer) and owners.get(id(producer))}
        if reads:
            plan.input_keys[selected.get(id(layer), layer.name)] = reads


class GraphQuantizer:
    """Quantizes the whole-graph tensors of one Keras model for one quantizer (see the module docstring)."""

    def __init__(self, quantizer: Any, plan: KerasPlan):
        self.quantizer, self.plan = quantizer, plan
        self.deploy = False

    def input_params(self, tensor: GraphTensor) -> list[Any]:
        return [self.quantizer.owner_params(owner) for owner in tensor.inputs]

    def quantize(self, key: str, x: Any, training: bool) -> Any:
        """``x`` (the tensor ``key``) fake-quantized: the core's rules eagerly, through ``tf.py_function`` in a
        traced function, TF FakeQuant on the frozen parameters in the deploy form."""
        quantizer, tensor = self.quantizer, self.plan.graph[key]
        if self.deploy:
            return fake_quant_deploy(x, quantizer.graph_params.get(key), f"Whole-graph tensor {key!r}", "output")

        def core(value: Any) -> Any:  # QAT observes in training only: the core reads the slot's module.training
            object.__setattr__(quantizer.graph_slot.module, "training", training)
            return quantizer.quantize_graph_tensor(key, value, tensor.kind, self.input_params(tensor),
                                                   inputs=tensor.inputs, module=tensor.module)

        return run_python(core, x)

    def align(self) -> None:
        """With the parameters fixed: each tensor written only for a concatenation takes the concatenation's
        parameters (:attr:`KerasPlan.concat_inputs`), as TensorFlow's converter writes a conv / add feeding a
        concatenation, so that the file holds no int8 -> int8 requantization there (XNNPACK rounds those its own
        way). Tensors with profile-fixed parameters (softmax, logistic) and model inputs keep theirs."""
        quantizer = self.quantizer
        for owner, cat in self.plan.concat_inputs.items():
            params = quantizer.graph_params.get(cat)
            kind, _, name = owner.partition(":")
            if params is None:
                continue
            if kind == "layer" and "output" in quantizer.params.get(name, {}):
                quantizer.params[name]["output"] = params
            elif kind == "graph" and name in quantizer.graph_params and self.plan.graph[name].kind != "input" \
                    and quantizer.profile.fixed_output(self.plan.graph[name].kind, params.bits) is None:
                quantizer.graph_params[name] = params

    def quantize_inputs(self, layer_name: str, args: tuple, training: bool) -> tuple:
        """``args`` of a call of ``layer_name`` with the model inputs it reads fake-quantized."""
        reads = self.plan.input_keys.get(layer_name)
        if not reads or not args:
            return args
        first = args[0]
        if isinstance(first, (list, tuple)):
            first = type(first)(self.quantize(reads[i], t, training) if i in reads else t for i, t in enumerate(first))
        elif 0 in reads:
            first = self.quantize(reads[0], first, training)
        return (first, *args[1:])


def run_python(fn: Callable[[Any], Any], x: Any) -> Any:
    """``fn(x)`` now when eager; in a traced function at run time through ``tf.py_function`` (shape kept)."""
    if tf.executing_eagerly():
        return fn(x)
    out = tf.py_function(fn, [x], x.dtype)
    out.set_shape(x.shape)
    return out


class GraphWrapper(MaskWrapper):
    """Fake-quantizes the output of a functional layer (its whole-graph tensor; ``output_key`` None when it is fused
    into the ReLU after it) and, where it reads model inputs, those inputs first."""

    def __init__(self, layer: keras.layers.Layer, layer_name: str, graph: GraphQuantizer, output_key: str | None):
        super().__init__(layer, layer_name)
        object.__setattr__(self, "_graph", graph)
        object.__setattr__(self, "_output_key", output_key)

    def call(self, *args: Any, **kwargs: Any) -> Any:
        training = call_training(kwargs)
        outputs = super().call(*self._graph.quantize_inputs(self.layer_name, args, training), **kwargs)
        key = self._output_key
        return outputs if key is None else self._graph.quantize(key, outputs, training)
