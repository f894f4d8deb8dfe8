"""ONNX export of a plain PyTorch model through torch.onnx (onnxscript-based exporter).

The example the exporter traces is the model's own input (``dummy_input``: a tensor of any dtype, or a tuple
of tensors for a model with several inputs); ``input_shape`` (a float ``torch.randn`` of that shape) is only a
fallback for float models.

Example:

>>> import os, tempfile, torch
>>> from slimkit.frameworks.torch.onnx_export import export_onnx
>>> path = os.path.join(tempfile.mkdtemp(), 'm.onnx')
>>> export_onnx(torch.nn.Embedding(10, 3), path, torch.tensor([[1, 2, 9]]))
>>> export_onnx(torch.nn.Linear(3, 2), path, [1, 3])
>>> os.path.getsize(path) > 0
True
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from typing import Any

import torch
from torch import nn

from slimkit.errors import ConfigError, UnsupportedOpError
from slimkit.utils.files import atomic_path
from slimkit.utils.optional import require

_TORCHSCRIPT_OPSET = 17


def example_inputs(example: Any, device: Any = None) -> tuple[torch.Tensor, ...]:
    """The positional inputs to trace: ``example`` as a tensor, a tuple / list of tensors, or an input shape
    (then one float ``torch.randn`` of that shape on ``device``)."""
    if isinstance(example, torch.Tensor):
        return (example,)
    if isinstance(example, (list, tuple)) and example and all(isinstance(t, torch.Tensor) for t in example):
        return tuple(example)
    if isinstance(example, (list, tuple, torch.Size)) and example and all(isinstance(s, int) for s in example):
        return (torch.randn(*example, device=device),)
    raise ConfigError("ONNX export needs an example input. Expected dummy_input (a tensor or a tuple of tensors) "
                      f"or input_shape (a list of ints such as [1, 3, 32, 32]). Received: {example!r}")


def export_onnx(model: nn.Module, path: str, example: Any, device: Any = None, opset_version: int | None = None,
                custom_translation_table: dict | None = None) -> None:
    """Write ``model`` traced on ``example`` (a tensor, a tuple of tensors, or an input shape: see
    :func:`example_inputs`) to ``path`` as one ONNX file (``opset_version`` and ``custom_translation_table``
    are passed to ``torch.onnx.export``).

    Raises:
        ConfigError: ``example`` is neither tensors nor a shape.
        UnsupportedOpError: ``torch.export`` cannot capture the model, or both exporters failed on the captured
            graph (the dynamo exporter, then the TorchScript one); the message names the model, its inputs and
            each innermost cause (the operator or the shape it could not handle), and nothing is written.
    """
    require("onnxscript", "ONNX export")  # torch.onnx's exporter
    parameter = next(model.parameters(), None)
    device = torch.device(device) if device is not None else (
        parameter.device if parameter is not None else torch.device("cpu"))
    inputs = example_inputs(example, device)
    was_training = model.training
    model.eval()
    try:
        with atomic_path(path) as tmp, contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            logging.getLogger("torch.onnx").setLevel(logging.ERROR)
            # torch.onnx deep-copies the exported program, re-creating pytree LeafSpecs: torch's own deprecation
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
            try:
                exported = torch.export.export(model, inputs, strict=False)
            except Exception as error:  # the model itself (data-dependent control flow, an untraceable call)
                raise _failure(model, inputs, error) from error
            try:
                program = torch.onnx.export(exported, inputs, dynamo=True, opset_version=opset_version,
                                            custom_translation_table=custom_translation_table, verbose=False)
                program.save(tmp, external_data=False)
            except Exception as error:  # the ONNX exporter's own passes: the captured graph is sound
                if custom_translation_table is not None:
                    raise _failure(model, inputs, error) from error
                _torchscript_export(model, inputs, tmp, opset_version, error)
    finally:
        model.train(was_training)


def _torchscript_export(model: nn.Module, inputs: tuple, path: str, opset_version: int | None,
                        dynamo_error: Exception) -> None:
    """torch.onnx's TorchScript exporter, for graphs that ``torch.export`` captured (so tracing sees the same
    single path) but the dynamo exporter's passes reject (a ``view`` of a transposed tensor after its
    decompositions: Hugging Face's T5 and Swin attention)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, inputs, path, dynamo=False, opset_version=opset_version or _TORCHSCRIPT_OPSET)
        except Exception as error:
            raise _failure(model, inputs, dynamo_error, error) from error


def _failure(model: nn.Module, inputs: tuple, *errors: Exception) -> UnsupportedOpError:
    """The innermost cause of each exporter's failure (their own first line blames torch.export)."""
    causes = []
    for error in errors:
        while error.__cause__ is not None:
            error = error.__cause__
        lines = str(error).strip().splitlines()
        causes.append(f"{type(error).__name__}: {lines[0] if lines else ''}")
    described = ", ".join(f"{tuple(t.shape)} {t.dtype}" for t in inputs)
    return UnsupportedOpError(
        f"ONNX export of {type(model).__name__} on inputs [{described}] failed: " + "; then ".join(causes)
        + ". Expected a model torch.onnx can export with this example: pass the model's real input as dummy_input "
        "(token ids as int64, several inputs as a tuple) or rewrite the call named above.")
