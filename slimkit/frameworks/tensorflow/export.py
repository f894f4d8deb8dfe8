"""Exporting a compressed Keras model: weights with masks baked in, masks, and TFLite files.

Every writer goes through :func:`slimkit.utils.atomic_path` (temporary file, then rename).
Baking is done by :func:`baked`: for the duration of a save it writes ``weight * mask`` into the
wrapped layers' variables and gives the layers their own ``call`` back, so the saved file is the
original architecture with zeros in it; on leaving, the original values and wrappers are restored.

Example:

>>> import os, tempfile, numpy as np, keras
>>> from slimkit.algorithms.pruning import LevelPruner
>>> from slimkit.frameworks.tensorflow.export import save_model
>>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name='fc')])
>>> pruner = LevelPruner(model, [{'sparsity': 0.5, 'op_types': ['Dense']}])
>>> model = pruner.compress()
>>> path = os.path.join(tempfile.mkdtemp(), 'pruned.weights.h5')
>>> pruner.export_model(path)
>>> fresh = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name='fc')])
>>> fresh.load_weights(path)
>>> int((fresh.get_layer('fc').kernel.numpy() == 0).sum())
4
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from slimkit.errors import ConfigError
from slimkit.frameworks.tensorflow.discovery import named_layers
from slimkit.frameworks.tensorflow.wrapper import MaskWrapper, wrapper_of
from slimkit.masks import NPZ_SEPARATOR
from slimkit.utils.files import atomic_path
from slimkit.utils.stderr import TENSORFLOW_NOISE, without_lines


def wrapped_layers(model: Any) -> list[tuple[str, Any, Any]]:
    """``(name, layer, wrapper)`` for every layer of ``model`` that slimkit has wrapped."""
    return [(name, layer, wrapper_of(layer)) for name, layer in named_layers(model) if wrapper_of(layer) is not None]


@contextlib.contextmanager
def baked(model: Any) -> Iterator[Any]:
    """Within the block, ``model`` is a plain Keras model whose weights have the masks multiplied in."""
    saved = []
    try:
        for _, layer, wrapper in wrapped_layers(model):
            for var, value in MaskWrapper.masked_values(wrapper):  # masks only: a quantizer's files hold float weights
                saved.append((var, var.numpy()))
                var.assign(value)
            object.__delattr__(layer, "call")
            saved.append((layer, wrapper))
        yield model
    finally:
        for target, value in reversed(saved):
            if isinstance(value, np.ndarray):
                target.assign(value)
            else:
                object.__setattr__(target, "call", value.call)


@contextlib.contextmanager
def _optimizer_left_out(model: Any, leave_out: bool) -> Iterator[None]:
    """Hide the compiled optimizer, whose slots Keras would otherwise add to a weights file."""
    optimizer = vars(model).get("optimizer")
    if not leave_out or optimizer is None:
        yield
        return
    object.__setattr__(model, "optimizer", None)
    try:
        yield
    finally:
        object.__setattr__(model, "optimizer", optimizer)


def save_model(model: Any, path: str | os.PathLike) -> None:
    """Write ``model`` with masks baked in: a ``.keras`` file (architecture and weights) or a
    ``.weights.h5`` file (the model's weights only, no optimizer state, for ``model.load_weights`` on
    the original architecture). A ``.keras`` file holds what ``model.save`` holds (compile config
    and optimizer state included).

    Raises:
        ConfigError: ``path`` has another suffix.
    """
    path = os.fspath(path)
    if path.endswith(".weights.h5"):
        save = "save_weights"
    elif path.endswith(".keras"):
        save = "save"
    else:
        raise ConfigError("A Keras model is exported to a '.keras' or '.weights.h5' file. Expected model_path ending "
                          f"in one of those. Received: model_path={path!r}")
    # Keras checks the file name's suffix: the temporary name ends with the destination's name.
    with atomic_path(path) as tmp, baked(model), _optimizer_left_out(model, save == "save_weights"):
        getattr(model, save)(tmp)


def save_masks(masks: dict[str, dict[str, Any]], path: str | os.PathLike) -> None:
    """Write masks as an ``.npz`` archive with keys ``'<layer>::weight'`` / ``'<layer>::bias'``."""
    arrays = {}
    for name, entry in masks.items():
        for kind, mask in entry.items():
            if mask is not None:
                arrays[f"{name}{NPZ_SEPARATOR}{kind}"] = np.asarray(keras.ops.convert_to_numpy(mask))
    with atomic_path(path) as tmp, open(tmp, "wb") as stream:
        np.savez(stream, **arrays)


def _batches(data: Any) -> Iterator[list[np.ndarray]]:
    if isinstance(data, (np.ndarray, tf.Tensor)):
        for row in np.asarray(data, dtype=np.float32):
            yield [row[None]]
        return
    for item in (data() if callable(data) else data):
        if isinstance(item, (tuple, list)) and len(item) == 2 and not isinstance(item[0], (int, float)):
            item = item[0]  # (x, y) pairs
        yield [np.asarray(x, dtype=np.float32) for x in (item if isinstance(item, (tuple, list)) else [item])]


def _input_specs(model: Any, representative_data: Any) -> list[tf.TensorSpec]:
    inputs = None
    with contextlib.suppress(AttributeError, ValueError):
        inputs = model.inputs
    if inputs:
        return [tf.TensorSpec([None, *tuple(x.shape)[1:]], x.dtype or "float32") for x in inputs]
    if representative_data is not None:
        first = next(iter(_batches(representative_data)))
        return [tf.TensorSpec([None, *x.shape[1:]], tf.float32) for x in first]
    raise ConfigError("export_tflite: the model has no keras.Input (a subclassed model), so the input shape is "
                      "unknown. Expected representative_data=<example inputs>. Received: representative_data=None")


def has_masks(model: Any) -> bool:
    """Whether a slimkit pruner has put a mask on any layer of ``model``."""
    return any(MaskWrapper.masked_values(wrapper) for _, _, wrapper in wrapped_layers(model))


def export_tflite(model: Any, path: str | os.PathLike, quantizer: Any = None,
                  representative_data: Any = None, sparse_weights: bool | None = None) -> bytes:
    """Convert a (compressed) Keras model to a TFLite flatbuffer with ``tf.lite.TFLiteConverter``.

    Masks are baked into the weights. Without ``representative_data`` the file is float32; with it
    the file is full-integer int8 (int8 input and output tensors), calibrated on those inputs.

    Args:
        model: a Keras model, compressed by slimkit or plain.
        path: the ``.tflite`` file to write (atomically).
        quantizer: a slimkit quantizer of ``model`` (Naive / QAT / PostTrainingQuantizer, 8 bits, 'tflite'
            profile): the file is int8 with the quantizer's weight scales and activation ranges (TF FakeQuant
            ops on the frozen ranges, which the converter turns into the int8 tensors' parameters). Tensors
            the quantizer does not cover (e.g. the model input when no first layer quantizes ``'input'``)
            are calibrated on ``representative_data`` (random normal samples when it is not given).
        representative_data: calibration inputs: an array of samples, or an iterable (or a
            function returning one) of input batches or ``(x, y)`` pairs.
        sparse_weights: convert with ``tf.lite.Optimize.EXPERIMENTAL_SPARSITY``: weights with enough zeros are
            stored with TFLite's sparsity encoding behind DENSIFY ops (the pruned zeros kept, the file smaller).
            None (default): for float files of a model with masks. int8 files leave it off unless asked: TF's
            converter then feeds int8 FULLY_CONNECTED weights through DENSIFY, which LiteRT's XNNPACK fails to
            prepare; with True the file is run once in LiteRT before it is written.

    Returns:
        The flatbuffer bytes that were written.

    Raises:
        UnsupportedOpError: ``quantizer`` has parameters TFLite int8 cannot hold (other bit widths, DoReFa / BNN).
        CompressionStateError: ``quantizer`` has not seen data yet (no activation ranges).
        ConfigError: a subclassed model without ``representative_data`` (unknown input shape).
        SlimkitError: ``sparse_weights=True`` gave a file LiteRT cannot run (nothing is written then).
    """
    specs = _input_specs(model, representative_data)
    int8 = quantizer is not None or representative_data is not None
    if sparse_weights is None:
        sparse_weights = not int8 and has_masks(model)
    if quantizer is not None and representative_data is None:  # only tensors the quantizer leaves out read it
        representative_data = _random_samples(specs)
    scratch = tempfile.mkdtemp()
    try:
        with quantizer.backend.deploy(quantizer) if quantizer is not None else baked(model):
            # A SavedModel written by Keras' ExportArchive: the converter then sees every variable.
            archive = keras.export.ExportArchive()
            archive.track(model)
            archive.add_endpoint("serve", lambda *xs: model(xs[0] if len(xs) == 1 else list(xs), training=False),
                                 input_signature=specs)
            archive.write_out(scratch, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(scratch, signature_keys=["serve"])
        if representative_data is not None:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: _batches(representative_data)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
        if sparse_weights:
            converter.optimizations = [*converter.optimizations, tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
        with without_lines(*TENSORFLOW_NOISE):
            flatbuffer = converter.convert()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as stream:
            stream.write(flatbuffer)
        if sparse_weights and int8:
            from slimkit.converter.validate import validate_file

            validate_file(tmp, path)
    return flatbuffer


def _random_samples(specs: list[Any], count: int = 8) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(0)
    return [[rng.standard_normal([1, *spec.shape[1:]]).astype(np.float32) for spec in specs] for _ in range(count)]


def run_tflite(path_or_bytes: str | os.PathLike | bytes, inputs: Iterable[np.ndarray] | np.ndarray,
               **interpreter_kwargs: Any) -> np.ndarray:
    """Run a single-input TFLite model in the LiteRT interpreter on ``inputs`` (float), sample by sample.

    int8 inputs / outputs are quantized / dequantized with the tensors' scale and zero point, so
    the result is float either way. ``interpreter_kwargs`` go to LiteRT's ``Interpreter`` (e.g.
    ``experimental_op_resolver_type`` to run its builtin kernels instead of the XNNPACK delegate).

    Raises:
        FileFormatError: the file (or bytes) is not a valid TFLite file.
    """
    from slimkit.utils.tflite_file import tflite_interpreter

    interpreter = tflite_interpreter(path_or_bytes, **interpreter_kwargs)
    [inp], [out] = interpreter.get_input_details(), interpreter.get_output_details()
    results = []
    for sample in np.asarray(inputs, dtype=np.float32):
        x = sample[None]
        if inp["dtype"] == np.int8:
            scale, zero = inp["quantization"]
            x = np.clip(np.round(x / scale + zero), -128, 127).astype(np.int8)
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        y = interpreter.get_tensor(out["index"])
        if out["dtype"] == np.int8:
            scale, zero = out["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        results.append(y[0])
    return np.stack(results)
