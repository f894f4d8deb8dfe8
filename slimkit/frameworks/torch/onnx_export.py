"""ONNX export of a plain PyTorch model through torch.onnx (onnxscript-based exporter).

Example:

>>> import os, tempfile, torch
>>> from slimkit.frameworks.torch.onnx_export import export_onnx
>>> path = os.path.join(tempfile.mkdtemp(), 'm.onnx')
>>> export_onnx(torch.nn.Linear(3, 2), path, [1, 3])
>>> os.path.getsize(path) > 0
True
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from slimkit.errors import SlimkitError
from slimkit.utils.files import atomic_path
from slimkit.utils.optional import require


def _first_line(error: BaseException) -> str:
    cause = error.__cause__ or error  # torch.onnx wraps the model's own error
    return str(cause).strip().splitlines()[0] if str(cause).strip() else ""


def export_onnx(model: nn.Module, path: str, input_shape: Sequence[int] | torch.Tensor, device: Any = None,
                opset_version: int | None = None, custom_translation_table: dict | None = None) -> None:
    """Write ``model`` (evaluated on a random input of ``input_shape``, or on ``input_shape`` itself when it is an
    example tensor) to ``path`` as one ONNX file (``opset_version`` and ``custom_translation_table`` are passed to
    ``torch.onnx.export``)."""
    require("onnxscript", "ONNX export")  # torch.onnx's exporter
    parameter = next(model.parameters(), None)
    device = torch.device(device) if device is not None else (
        parameter.device if parameter is not None else torch.device("cpu"))
    dummy = input_shape.to(device) if isinstance(input_shape, torch.Tensor) else torch.randn(*input_shape,
                                                                                            device=device)
    was_training = model.training
    model.eval()
    try:
        with atomic_path(path) as tmp, contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            logging.getLogger("torch.onnx").setLevel(logging.ERROR)
            # torch.onnx deep-copies the exported program, re-creating pytree LeafSpecs: torch's own deprecation
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
            try:
                program = torch.onnx.export(model, (dummy,), dynamo=True, opset_version=opset_version,
                                            custom_translation_table=custom_translation_table, verbose=False)
            except ImportError:
                raise
            except Exception as error:  # the model cannot run (or be exported) on this input
                raise SlimkitError(f"ONNX export of {type(model).__name__} failed on an input of shape "
                                   f"{list(dummy.shape)}: {type(error).__name__}: {_first_line(error)} Expected "
                                   "input_shape (or dummy_input) the model takes; no file was written.") from error
            program.save(tmp, external_data=False)
    finally:
        model.train(was_training)
