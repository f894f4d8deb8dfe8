"""The ``TFLiteConverter`` entry point: capture -> lower -> passes -> write (atomically)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings
from collections.abc import Callable
from typing import Any

import torch

from slimkit.converter.batch import example_batch, mark_dynamic_batch, with_rows
from slimkit.converter.eager_check import check_outputs_match, eager_outputs, graph_outputs
from slimkit.converter.limits import check_xnnpack_limits
from slimkit.converter.lower import Lowering
from slimkit.converter.options import ConverterOptions
from slimkit.converter.passes import run_passes, share_constants, unique_names
from slimkit.converter.validate import validate_file
from slimkit.converter.writer import serialize
from slimkit.errors import ConfigError, UnsupportedModelError
from slimkit.frameworks.torch.graph import capture_graph
from slimkit.utils import atomic_path

# modules that compute differently in training mode (batch statistics, dropout)
_MODE_DEPENDENT = (torch.nn.modules.batchnorm._NormBase, torch.nn.modules.dropout._DropoutNd, torch.nn.RNNBase)


class FunctionModule(torch.nn.Module):
    """A plain function ``fn(*tensors)`` as a parameterless module (tensors it closes over become constants).

    Example:

    >>> import torch
    >>> from slimkit.converter.convert import FunctionModule
    >>> FunctionModule(lambda x: x * 2)(torch.ones(2)).tolist()
    [2.0, 2.0]
    """

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def as_module(model) -> torch.nn.Module:
    """``model`` itself if it is a module, a :class:`FunctionModule` around a plain callable.

    Raises:
        UnsupportedModelError: ``model`` is neither.
    """
    if isinstance(model, torch.nn.Module):
        return model
    if callable(model):
        return FunctionModule(model)
    raise UnsupportedModelError("Expected a torch.nn.Module or a callable taking tensors. "
                                f"Received: model of type {type(model).__name__}")


class TFLiteConverter:
    """Convert a PyTorch model to a TFLite flatbuffer, without TensorFlow.

    Args:
        model: a ``torch.nn.Module``, captured in eval mode (a model in training mode converts in eval mode too,
            with a warning, and keeps its mode), or a plain function of tensors (wrapped in a module).
        dummy_input: a tensor or a tuple of tensors the model accepts.
        tflite_path: where to write the ``.tflite`` file (written atomically).
        options: a :class:`ConverterOptions`; or pass its fields as keywords
            (``nchw_transpose``, ``group_conv_rewrite``, ``unroll_rnn``, ``hybrid``, ``optimize``, ...).

    Raises:
        UnsupportedOpError: listing every op (with its module path) that cannot be converted;
            nothing is written then.
        SlimkitError: LiteRT could not load and run the written file (``validate``); nothing is written then.
        ConfigError: an unknown option.

    Example:

    >>> import os, tempfile, torch
    >>> from slimkit.converter import TFLiteConverter
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU()).eval()
    >>> path = os.path.join(tempfile.mkdtemp(), 'model.tflite')
    >>> TFLiteConverter(model, torch.randn(1, 3, 8, 8), path).convert()
    >>> os.path.getsize(path) > 0
    True
    """

    def __init__(self, model: torch.nn.Module | Callable, dummy_input: Any, tflite_path: str | os.PathLike,
                 options: ConverterOptions | None = None, **kwargs):
        if options is not None and kwargs:
            raise ConfigError(f"Expected either options= or option keywords, not both. Received: {sorted(kwargs)}")
        self.model = as_module(model)
        self.dummy_input = tuple(dummy_input) if isinstance(dummy_input, (list, tuple)) else (dummy_input,)
        self.tflite_path = os.fspath(tflite_path)
        self.options = options if options is not None else ConverterOptions.from_kwargs(**kwargs)
        self.captured = None
        self.graph = None

    def capture(self):
        """The model's graph; a slimkit quantizer's parameters are held fixed while it is traced (a QAT model not
        frozen yet converts with the parameters of its current weights and ranges)."""
        if self.captured is None:
            from slimkit.frameworks.torch.quant_backend import BACKEND, quantizer_of

            training = [name for name, m in self.model.named_modules() if m.training and isinstance(m, _MODE_DEPENDENT)]
            if training:
                warnings.warn(f"TFLiteConverter: the model is in training mode (modules {training[:3]}"
                              f"{' ...' if len(training) > 3 else ''}); it is converted in eval mode, as deployed "
                              "(BatchNorm running statistics, no dropout), and left as it was. Call model.eval() "
                              "first to silence this.", UserWarning, stacklevel=4)

            quantizer = quantizer_of(self.model)
            traced = self.model
            if quantizer is not None and quantizer.profile.bias_bits > 32:
                # int64 biases (16x8) lie on a grid finer than float32 resolves: trace the model with BatchNorm
                # folded by the quantizer, so the file's bias is the one the quantizer (and emulate_integer) holds,
                # not a refold of it through float32 BatchNorm arithmetic
                traced = BACKEND.deploy_copy(quantizer)
            with contextlib.ExitStack() as stack:
                if quantizer is not None:  # frozen once (its weight parameters refreshed once) for both runs
                    stack.enter_context(quantizer.fixed_parameters())
                    stack.enter_context(BACKEND.kept_kernels(self.model, quantizer))
                # the eager run first: a whole-graph quantizer records there the grid each layer's input lies on
                # (calibration may have moved it since), which the captured kernels' integer biases are rounded to;
                # each layer keeps the kernel it computed there for the capture
                eager = eager_outputs(self.model, self.dummy_input)
                if quantizer is not None:
                    stack.enter_context(BACKEND.fixed_for_capture(traced, quantizer))
                with torch.no_grad():
                    captured = capture_graph(traced, self.dummy_input)
                check_outputs_match(graph_outputs(captured.program), eager, type(self.model).__name__)
            self.captured = captured
        return self.captured

    def lower(self):
        """Capture and lower to the IR, graph passes run."""
        with torch.no_grad():
            graph = Lowering(self.capture(), self.options).run()
        return run_passes(graph, self.options)

    def build(self):
        """Capture and lower to the IR (no file written); returns the IR graph. Equal constants are shared last
        (:func:`~slimkit.converter.passes.share_constants`), once the graph's tensors are final, and every tensor
        gets a name of its own (:func:`~slimkit.converter.passes.unique_names`)."""
        self.graph = self.lower() if not self.options.dynamic_batch else self._lower_dynamic_batch()
        share_constants(self.graph)
        unique_names(self.graph)
        return self.graph

    def _built(self):
        """The IR graph, built on first use (:meth:`build`) and reused by the file, the reports and :meth:`convert`."""
        return self.build() if self.graph is None else self.graph

    def _lower_dynamic_batch(self):
        """The graph with the batch written as -1 (:mod:`slimkit.converter.batch`)."""
        batch = example_batch(self.dummy_input)
        rows = max(batch, 2)
        static = dataclasses.replace(self.options, dynamic_batch=False)

        def at(n):
            converter = self if n == batch else TFLiteConverter(self.model, with_rows(self.dummy_input, n),
                                                                self.tflite_path, static)
            return converter.lower()
        return mark_dynamic_batch(at(rows), at(rows + 1), batch, rows)

    def to_bytes(self) -> bytes:
        """The ``.tflite`` file's bytes (without writing a file)."""
        return serialize(self._built()).tobytes()

    def approximate_int8_ops(self) -> list[str]:
        """The file's int8 ops that :meth:`~slimkit.compression.Quantizer.emulate_integer` does not compute exactly
        (it leaves them to fake quantization: within about a step of the file there), as ``'<module path> (<OP>)'``;
        empty when the emulation gives every integer of the file."""
        from slimkit.converter.emulation import approximate_int8_ops

        return approximate_int8_ops(self._built())

    def float_islands(self) -> list[str]:
        """The layers of an int8 (or int16) file that run in float32 between a DEQUANTIZE and a QUANTIZE with ops
        whose bits LiteRT's float kernels need not share with PyTorch's (reductions, RSQRT, SOFTMAX, recurrent
        cells ...), as ``'<module path> (<module class>, float: <PyTorch functions>)'``: there
        :meth:`~slimkit.compression.Quantizer.emulate_integer` computes PyTorch's float ops, so the file's integers
        are measured, not guaranteed, equal (:mod:`slimkit.converter.float_islands`). Empty for a float file."""
        from slimkit.converter.float_islands import float_islands

        return float_islands(self._built(), self.model)

    def convert(self) -> None:
        """Write the ``.tflite`` file (every unsupported op is reported before anything is written; the file is
        validated in LiteRT before it takes its name unless ``validate=False``). A warning names the int8 ops the
        integer emulation does not compute exactly (:meth:`approximate_int8_ops`) and the layers the file runs in
        float (:meth:`float_islands`)."""
        graph = self._built()
        if self.options.validate:
            check_xnnpack_limits(graph)
        model = serialize(graph)
        approximate = self.approximate_int8_ops()
        if approximate:
            warnings.warn(f"TFLiteConverter: emulate_integer() does not compute these int8 ops of "
                          f"{self.tflite_path} exactly: {', '.join(approximate)}. It runs them as fake quantization "
                          "(about a step from the file each); verify() measures how far the outputs are.",
                          UserWarning, stacklevel=2)
        islands = self.float_islands()
        if islands:
            warnings.warn(f"TFLiteConverter: {self.tflite_path} runs these layers in float32 between DEQUANTIZE and "
                          f"QUANTIZE: {'; '.join(islands)}. emulate_integer() computes PyTorch's float ops there, not "
                          "LiteRT's kernels (summation order, rsqrt / exp approximations), so its integers are not "
                          "guaranteed equal to the file's; verify() measures how many output steps apart they are.",
                          UserWarning, stacklevel=2)
        with atomic_path(self.tflite_path) as tmp:
            with open(tmp, "wb") as f:
                model.write_to(f)
            if self.options.validate:
                validate_file(tmp, self.tflite_path)
