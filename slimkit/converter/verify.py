"""Run a converted file in the LiteRT interpreter and compare with PyTorch."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

from slimkit.converter.options import ConverterOptions
from slimkit.utils.litert import interpreter


@dataclass(frozen=True)
class VerifyResult:
    """Worst errors over all outputs: ``max_abs_error``, ``max_rel_error`` (relative to max |reference|);
    ``emulated_integer``: the reference was the quantized model under ``emulate_integer()``."""

    max_abs_error: float
    max_rel_error: float
    outputs: int
    emulated_integer: bool = False

    def ok(self, rtol: float = 1e-5) -> bool:
        return self.max_rel_error <= rtol


def _flatten(obj):
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _flatten(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _flatten(o)]
    return []


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    try:
        return t.float().numpy()
    except RuntimeError:  # tensor subclasses (e.g. from a quantizer's function mode)
        return np.asarray(t.tolist(), dtype=np.float32)


def run_tflite(tflite_path, inputs, num_threads: int = 1):
    """Run ``tflite_path`` on numpy ``inputs`` (already in the file's layout); returns its outputs."""
    interp = interpreter(model_path=str(tflite_path), num_threads=num_threads)
    for detail, x in zip(interp.get_input_details(), inputs):
        interp.set_tensor(detail["index"], np.ascontiguousarray(x).astype(detail["dtype"]))
    interp.invoke()
    return [interp.get_tensor(d["index"]) for d in interp.get_output_details()]


def verify(model: torch.nn.Module, dummy_input, tflite_path, options: ConverterOptions | None = None, *,
           emulate_integer: bool = True, **kwargs) -> VerifyResult:
    """Max absolute / relative error of ``tflite_path`` against ``model`` on ``dummy_input``.

    ``options`` (or the same keywords given to the converter) tell which inputs / outputs the file
    holds channels-last. A model quantized by slimkit (int8 layers with input, weight and output parameters) is
    evaluated under its quantizer's ``emulate_integer()`` unless ``emulate_integer=False``: the int8 kernels'
    own arithmetic, which a correct int8 file matches exactly (the plain fake-quant model differs by a step
    wherever it resolves a rounding tie differently).
    """
    from slimkit.frameworks.torch.quant_backend import emulable_quantizer

    options = options or ConverterOptions.from_kwargs(**kwargs)
    inputs = tuple(dummy_input) if isinstance(dummy_input, (list, tuple)) else (dummy_input,)
    quantizer = emulable_quantizer(model) if emulate_integer else None
    was_training = model.training
    model.eval()
    with torch.no_grad(), quantizer.emulate_integer() if quantizer is not None else contextlib.nullcontext():
        expected = [_to_numpy(t) for t in _flatten(model(*inputs))]
    model.train(was_training)
    feeds = []
    for i, x in enumerate(inputs):
        a = x.detach().numpy()
        if options.transposes_input(i, a.ndim):
            a = np.moveaxis(a, 1, -1)
        feeds.append(a)
    got = run_tflite(tflite_path, feeds)
    abs_err = rel_err = 0.0
    for i, (e, g) in enumerate(zip(expected, got)):
        if options.transposes_output(i, e.ndim):
            g = np.moveaxis(g, -1, 1)
        g = g.reshape(e.shape).astype(np.float32)
        err = float(np.abs(g - e).max()) if e.size else 0.0
        scale = float(np.abs(e).max()) if e.size else 0.0
        abs_err = max(abs_err, err)
        rel_err = max(rel_err, err / scale if scale > 0 else err)
    return VerifyResult(abs_err, rel_err, len(expected), quantizer is not None)
