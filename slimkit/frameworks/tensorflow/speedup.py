"""Physical pruning of Keras models: a new, smaller ``keras.Model`` from a model and its masks.

:class:`slimkit.speedup.ModelSpeedup` hands Keras models to :class:`KerasModelSpeedup`. Keras layers
cannot change shape in place, so the result is a new model: the functional (or Sequential) graph cloned
with smaller layers (``keras.models.clone_model``) and the sliced weights of the masked model, checked to
give the masked model's output. The input model is never changed.

Example:

>>> import keras, numpy as np
>>> from slimkit.frameworks.tensorflow.speedup import KerasModelSpeedup
>>> x = keras.Input((8, 8, 3))
>>> y = keras.layers.Conv2D(4, 3, name='conv')(x)
>>> model = keras.Model(x, keras.layers.Dense(2, name='fc')(keras.layers.GlobalAveragePooling2D()(y)))
>>> keep = np.array([1.0, 0.0, 1.0, 0.0], dtype='float32')
>>> masks = {'conv': {'weight': np.ones((3, 3, 3, 4), 'float32') * keep, 'bias': keep}}
>>> small = KerasModelSpeedup(model, np.random.rand(1, 8, 8, 3), masks).speedup_model()
>>> small.get_layer('conv').filters, tuple(small.get_layer('fc').kernel.shape), model.get_layer('conv').filters
(2, (2, 2), 4)
"""

from __future__ import annotations

import os
import time
from typing import Any

import keras
import numpy as np

from slimkit.errors import ConfigError, SlimkitError, UnsupportedModelError
from slimkit.frameworks.tensorflow import layout
from slimkit.frameworks.tensorflow.dependency import _functional
from slimkit.frameworks.tensorflow.discovery import named_layers
from slimkit.frameworks.tensorflow.speedup_analysis import Plan, analyse
from slimkit.frameworks.tensorflow.speedup_layers import rebuild
from slimkit.frameworks.tensorflow.wrapper import wrapper_of
from slimkit.speedup.report import LayerChange, SpeedupReport


def _entry_variables(model: Any) -> dict[str, tuple[keras.Variable, keras.Variable | None]]:
    """``{entry: (weight variable, bias variable or None)}`` of every prunable entry (a layer's own, and its extra
    kernels': ``'sep1/depthwise'``)."""
    found = {}
    for name, layer in named_layers(model):
        for entry, kernel, _ in layout.entries(name, layer):
            weight_attr, bias_attr = layout.weight_attrs(layer, kernel)
            weight = layout.variable(layer, weight_attr)
            if weight is not None:
                found[entry] = (weight, layout.variable(layer, bias_attr))
    return found


def parameter_shapes(model: Any) -> dict[str, dict[str, tuple[int, ...] | None]]:
    """``{name: {'weight': shape, 'bias': shape or None}}`` of every entry with a prunable weight."""
    return {name: {"weight": tuple(weight.shape), "bias": None if bias is None else tuple(bias.shape)}
            for name, (weight, bias) in _entry_variables(model).items()}


class KerasModelSpeedup:
    """Build a smaller Keras model (fewer filters / units) whose output equals the masked model's.

    Channel groups are those of :mod:`slimkit.frameworks.tensorflow.dependency` (residual adds,
    concatenations, depthwise convs with multipliers, separable convs, BatchNormalization, Flatten into
    Dense); :mod:`slimkit.frameworks.tensorflow.speedup_analysis` says which channels go.

    Args:
        model: a functional or Sequential ``keras.Model`` (plain, not wrapped by a compressor).
        dummy_input: an example input (array, or a list of arrays for several inputs) to check the result on.
        masks_or_mask_path: ``{layer_name: {'weight': mask, 'bias': mask or None}}`` (``Pruner.get_masks()``)
            or a Keras mask file (``.npz``, written by ``export_model(mask_path=...)``).
        tolerance: largest relative difference to the masked model accepted.
        verify: compare with the masked model on ``dummy_input``.

    Raises:
        UnsupportedModelError: (at construction) a subclassed model, a Sequential without an input shape, or a
            model with nested models.
        MaskError: (at construction) masks naming no layer with a weight, or not 0/1 arrays of its shape.
        ConfigError: (at construction) ``dummy_input`` does not fit the model's inputs.
        SlimkitError: (at construction) a model still wrapped by a compressor.
    """

    def __init__(self, model: keras.Model, dummy_input: Any, masks_or_mask_path: Any, *, tolerance: float = 1e-5,
                 verify: bool = True):
        from slimkit.masks import check_masks, load_masks

        self.model = model
        _check_model(model)
        source = "masks"
        if isinstance(masks_or_mask_path, (str, os.PathLike)):
            source, masks_or_mask_path = os.fspath(masks_or_mask_path), load_masks(masks_or_mask_path)
        self.masks = check_masks(masks_or_mask_path, parameter_shapes(model), source=f"ModelSpeedup: {source}")
        self.dummy_input = _inputs(model, dummy_input)
        self.tolerance = tolerance
        self.verify = verify
        self.report: SpeedupReport | None = None

    def speedup_model(self) -> keras.Model:
        """Build and return the smaller model; :attr:`report` then holds a :class:`SpeedupReport`."""
        start = time.perf_counter()
        timings = {}
        reference = self._masked()
        timings["reference"] = time.perf_counter() - start
        plan = analyse(reference)
        timings["analyse"] = time.perf_counter() - start - timings["reference"]
        small = _clone(reference, plan)
        error = None
        if self.verify:
            error = _relative_error(small(self.dummy_input, training=False), reference(self.dummy_input,
                                                                                      training=False))
            if not error <= self.tolerance:
                raise SlimkitError(f"Keras speedup changed the model's output (relative error {error:.3g} > "
                                   f"tolerance {self.tolerance:g}); the model is unchanged. Please report this model.")
        timings["rebuild+verify"] = time.perf_counter() - start - sum(timings.values())
        changes = [_change(name, plan.layers[name], plan) for name in plan.changed()]
        self.report = SpeedupReport(changes, self.model.count_params(), small.count_params(), _macs(reference),
                                    _macs(small), time.perf_counter() - start, error, timings)
        return small

    def _masked(self) -> keras.Model:
        """A copy of the model with the masks multiplied into its weights."""
        reference = keras.models.clone_model(self.model)
        reference.set_weights(self.model.get_weights())
        variables = _entry_variables(reference)
        for name, entry in self.masks.items():
            for var, mask in zip(variables[name], (entry["weight"], entry["bias"])):
                if mask is not None:
                    var.assign(var.numpy() * np.asarray(keras.ops.convert_to_numpy(mask), dtype=var.dtype))
        return reference


def _check_model(model: Any) -> None:
    _functional(model, model.name, "Keras speedup clones",
                "rebuild it that way (the same layers, called on keras.Input tensors) and load its weights, or build "
                "the smaller subclassed model yourself from the kept channels of the masks")
    for name, layer in named_layers(model):
        if isinstance(layer, keras.Model):
            raise UnsupportedModelError(
                f"Keras speedup rebuilds one functional graph; layer {name!r} of model {model.name!r} is a nested "
                f"model. Expected a model whose layers are not models: rebuild it flat (call the inner model's "
                f"layers on the outer model's tensors).")
        if wrapper_of(layer) is not None:
            raise SlimkitError(
                f"Layer {name!r} is still wrapped by a compressor. Expected the plain model: call "
                f"pruner.unwrap_model() (or load the exported weights into a fresh model) before speedup.")


def _inputs(model: keras.Model, dummy_input: Any) -> list[np.ndarray] | np.ndarray:
    arrays = list(dummy_input) if isinstance(dummy_input, (list, tuple)) else [dummy_input]
    arrays = [np.asarray(keras.ops.convert_to_numpy(a), dtype=np.float32) for a in arrays]
    expected = [tuple(t.shape) for t in model.inputs]
    fits = len(arrays) == len(expected) and all(
        a.ndim == len(e) and all(s is None or s == d for s, d in zip(e[1:], a.shape[1:])) for a, e in zip(arrays,
                                                                                                          expected))
    if not fits:
        raise ConfigError(f"ModelSpeedup: dummy_input does not fit the inputs of model {model.name!r}. Expected "
                          f"{len(expected)} array(s) of shape {expected}. Received: shapes "
                          f"{[a.shape for a in arrays]}")
    return arrays if len(arrays) > 1 else arrays[0]


def _clone(reference: keras.Model, plan: Plan) -> keras.Model:
    # the graph's own layers (no nested models): their sublayers are rebuilt by their config
    built = {layer.name: rebuild(layer, layer.name, plan) for layer in _graph_layers(reference)}

    def clone(layer: Any) -> Any:
        if not isinstance(layer, keras.layers.Layer):
            return layer  # a keras.ops operation: stateless
        return type(layer).from_config(built[layer.name][0])

    inputs = None
    if not isinstance(reference, keras.Sequential):  # keep the input names (the TFLite signature's)
        inputs = [keras.Input(batch_shape=t.shape, dtype=t.dtype, name=t._keras_history.operation.name)
                  for t in reference.inputs]
        inputs = inputs if isinstance(reference.input, (list, tuple)) else inputs[0]
    small = keras.models.clone_model(reference, clone_function=clone, input_tensors=inputs)
    for layer in _graph_layers(small):
        weights = built[layer.name][1]
        if weights is None:
            layer.set_weights(reference.get_layer(layer.name).get_weights())
        else:
            for var in layer.weights:
                var.assign(weights[var.name])
    return small


def _graph_layers(model: keras.Model) -> list[Any]:
    return [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]


def _change(name: str, layer: Any, plan: Plan) -> LayerChange:
    """Channels in and out of a changed layer, before and after, from its keep-vectors."""
    keep_in = plan.keep.get((name, "in"), plan.keep.get((name, "ch")))
    keep_out = plan.keep.get((name, "out"), keep_in)  # a depthwise conv with multiplier 1: its input's
    return LayerChange(name, type(layer).__name__, keep_in.size, int(keep_in.sum()), keep_out.size,
                       int(keep_out.sum()))


def _macs(model: keras.Model) -> int:
    """Multiply-accumulates per sample of the conv / dense kernels (kernel size times output positions; input
    positions for a transposed conv)."""
    total = 0
    for node in (n for nodes in _functional(model, model.name)._nodes_by_depth.values() for n in nodes):
        operation = node.operation
        kernels = [v for v in getattr(operation, "weights", []) if v.name.endswith("kernel")] if isinstance(
            operation, keras.layers.Layer) and not isinstance(operation, keras.layers.InputLayer) else []
        if not kernels:
            continue
        transposed = isinstance(operation, (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose,
                                            keras.layers.Conv3DTranspose))
        tensor = node.input_tensors[0] if transposed else node.outputs[0]
        positions = int(np.prod([s or 1 for s in tuple(tensor.shape)[1:-1]]))
        total += sum(int(np.prod(v.shape)) for v in kernels) * positions
    return total


def _relative_error(output: Any, reference: Any) -> float:
    worst = 0.0
    outputs, references = keras.tree.flatten(output), keras.tree.flatten(reference)
    for out, ref in zip(outputs, references):
        out, ref = np.asarray(keras.ops.convert_to_numpy(out)), np.asarray(keras.ops.convert_to_numpy(ref))
        if out.shape != ref.shape:
            return float("inf")
        scale = float(np.abs(ref).max()) if ref.size else 0.0
        diff = float(np.abs(out - ref).max()) if ref.size else 0.0
        worst = max(worst, diff / scale if scale > 0 else diff)
    return worst
