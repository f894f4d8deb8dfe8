"""Per-tensor quantization debugger: where along the graph does a quantized model drift from its float self?

:func:`quant_debug` captures the quantized PyTorch model's graph (as the TFLite converter does) and runs it
twice on each sample: once with every fake-quantize op as the identity (the float model, BatchNorm folded)
and once as it is (the fake-quant model). At every activation quantization point it accumulates the signal
to quantization-noise ratio ``SQNR = 10 log10(sum(float^2) / sum((float - other)^2))`` in dB. Given the
``.tflite`` file converted from that model, it also runs the file in LiteRT with every intermediate tensor
kept and reads the int8 tensor the converter wrote for that point (named ``<node>_q``), dequantized and put
back into PyTorch's layout. A row whose fake-quant SQNR is high but file SQNR low points at the converter
or the kernels; a row where both drop is the quantization itself.

Example:

>>> import torch
>>> from slimkit.algorithms.quantization import PostTrainingQuantizer
>>> from slimkit.analysis.quant_debug import quant_debug
>>> torch.manual_seed(0)
<torch._C.Generator object at ...>
>>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)).eval()
>>> batches = [torch.randn(8, 4) for _ in range(2)]
>>> config = [{'quant_types': ['input', 'weight', 'output'], 'op_types': ['default']}]
>>> quantizer = PostTrainingQuantizer(model, config, dummy_input=batches[0][:1])
>>> _ = quantizer.compress(); quantizer.calibrate(batches)
>>> table = quant_debug(model, quantizer, batches)
>>> [row.layer for row in table.rows]
['(input)', '1', '2']
>>> all(row.fake_quant_sqnr > 20 for row in table.rows)
True
>>> print(table.to_markdown().splitlines()[0])
| tensor | layer | op | shape | SQNR fake-quant (dB) | SQNR file (dB) | SQNR file vs fake-quant (dB) |
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from slimkit.analysis.plotting import new_axes, save_png
from slimkit.errors import ConfigError, UnsupportedModelError

_ACTIVATION_QUANT = "fake_quantize_per_tensor_affine"
_ANY_QUANT = ("fake_quantize_per_tensor_affine", "fake_quantize_per_channel_affine")


def sqnr(reference: np.ndarray, other: np.ndarray) -> float:
    """``10 log10(sum(reference^2) / sum((reference - other)^2))`` in dB; ``inf`` when they are equal.

    >>> sqnr(np.array([3.0, 4.0]), np.array([3.0, 4.5]))  # 25 / 0.25
    20.0
    """
    return _db(float(np.sum(np.square(reference, dtype=np.float64))),
               float(np.sum(np.square(reference - other, dtype=np.float64))))


def _db(signal: float, noise: float) -> float:
    if noise == 0:
        return math.inf
    return 10 * math.log10(signal / noise) if signal > 0 else -math.inf


@dataclass(frozen=True)
class QuantDebugRow:
    """One activation quantization point of the quantized graph.

    Attributes:
        tensor: the captured graph's fake-quantize node (the file's int8 tensor is ``<tensor>_q``).
        layer: the module that computes it (``'(input)'`` for a model input, ``'(graph)'`` for a functional op).
        op: the op whose output is quantized (``'relu'``, ``'linear'``, ...).
        shape: the tensor's shape in PyTorch's layout (one sample).
        fake_quant_sqnr: SQNR of the fake-quant model against the float model, dB.
        file_sqnr: SQNR of the file's dequantized int8 tensor against the float model, dB; None without a file
            or when the file holds no int8 tensor for this point (e.g. folded into a max-pool that shares it).
        file_vs_fake_quant_sqnr: SQNR of the file against the fake-quant model, dB (``inf`` where they agree).
    """

    tensor: str
    layer: str
    op: str
    shape: tuple[int, ...]
    fake_quant_sqnr: float
    file_sqnr: float | None = None
    file_vs_fake_quant_sqnr: float | None = None


@dataclass
class QuantDebugTable:
    """Rows of :func:`quant_debug` in graph order; ``print(table)`` shows the Markdown table."""

    rows: list[QuantDebugRow] = field(default_factory=list)
    tflite_path: str | None = None
    samples: int = 0

    def __str__(self) -> str:
        return self.to_markdown()

    def worst(self, count: int = 3) -> list[QuantDebugRow]:
        """The ``count`` rows with the lowest fake-quant SQNR (graph order breaks ties)."""
        order = sorted(range(len(self.rows)), key=lambda i: (self.rows[i].fake_quant_sqnr, i))
        return [self.rows[i] for i in order[:count]]

    def to_markdown(self, digits: int = 2) -> str:
        """The table as Markdown: one row per quantization point."""

        def cell(value: float | None) -> str:
            return "" if value is None else f"{value:.{digits}f}"

        lines = ["| tensor | layer | op | shape | SQNR fake-quant (dB) | SQNR file (dB) | "
                 "SQNR file vs fake-quant (dB) |", "|---|---|---|---|---:|---:|---:|"]
        for row in self.rows:
            lines.append(f"| {row.tensor} | {row.layer} | {row.op} | {'x'.join(map(str, row.shape))} | "
                         f"{cell(row.fake_quant_sqnr)} | {cell(row.file_sqnr)} | {cell(row.file_vs_fake_quant_sqnr)} |")
        return "\n".join(lines) + "\n"

    def plot(self, path: str | os.PathLike, title: str = "quantization SQNR per tensor") -> None:
        """Save a PNG of SQNR along the graph (matplotlib, Agg backend; atomic): fake-quant and, where read, file."""
        figure, axes = new_axes("QuantDebugTable.plot", (max(6.0, 0.45 * len(self.rows)), 4.5))
        xs = list(range(len(self.rows)))
        axes.plot(xs, [_finite(row.fake_quant_sqnr) for row in self.rows], marker="o", label="fake-quant vs float")
        if any(row.file_sqnr is not None for row in self.rows):
            axes.plot(xs, [_finite(row.file_sqnr) for row in self.rows], marker="x", label="file vs float")
        axes.set_xticks(xs, [row.layer for row in self.rows], rotation=60, fontsize="small")
        axes.set_ylabel("SQNR (dB)")
        save_png(figure, axes, title, path)


def _finite(value: float | None) -> float:
    return math.nan if value is None or math.isinf(value) else value


def _samples(batches: Iterable[Any]) -> list[Any]:
    """Batch-1 inputs: each batch is a tensor or an ``(inputs, targets)`` tuple / list."""
    import torch

    out = []
    for index, batch in enumerate(batches):
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if not isinstance(x, torch.Tensor) or x.dim() == 0:
            raise ConfigError(f"quant_debug: batch {index} is not a batched tensor (or an (inputs, targets) pair). "
                              f"Received: {type(x).__name__}")
        out.extend(x[i:i + 1] for i in range(x.shape[0]))
    if not out:
        raise ConfigError("quant_debug: batches is empty. Expected at least one batch of inputs.")
    return out


def _is_quant(node: Any, names: Sequence[str]) -> bool:
    return node.op == "call_function" and any(name in str(node.target) for name in names)


class _Recorder:
    """Runs the captured graph, keeping the value of every activation fake-quantize node; ``float_mode`` makes
    every fake-quantize op (activations and weights) the identity."""

    def __init__(self, captured: Any, quantizer: Any):
        import torch.fx

        self.module = captured.program.graph_module
        # a fake-quantize of an already quantized tensor (the next layer's input) adds a row with the same values
        self.points = [node.name for node in captured.call_nodes() if _is_quant(node, (_ACTIVATION_QUANT,))
                       and not _is_quant(node.args[0], (_ACTIVATION_QUANT,))]
        self.sources = {node.name: node.args[0].name for node in captured.call_nodes() if node.name in self.points}
        placeholders = [node for node in captured.graph.nodes if node.op == "placeholder"]
        self.state = [captured.tensor(node) if node.name in captured.state_names else None for node in placeholders]
        # the capture holds each layer's weight and bias already on the int8 / int32 grid: the float run swaps in
        # the float (BN-folded) kernel the wrapper computes with quantization switched off
        kernels = _float_kernels(captured.model, quantizer)
        self.float_state = [kernels.get(captured.state_names.get(node.name), value)
                            for node, value in zip(placeholders, self.state)]

        recorder = self

        class Interpreter(torch.fx.Interpreter):
            def run_node(self, node: Any) -> Any:
                if recorder.float_mode and _is_quant(node, _ANY_QUANT):
                    result = self.env[node.args[0]]
                else:
                    result = super().run_node(node)
                if node.name in recorder.wanted:
                    recorder.values[node.name] = result.detach().float().numpy().copy()
                return result

        self.interpreter = Interpreter(self.module)
        self.float_mode = False
        self.wanted = set(self.points)
        self.values: dict[str, np.ndarray] = {}

    def __call__(self, x: Any, float_mode: bool) -> dict[str, np.ndarray]:
        import torch

        self.float_mode, self.values = float_mode, {}
        user = iter([x])
        with torch.no_grad():
            state = self.float_state if float_mode else self.state
            self.interpreter.run(*[next(user) if value is None else value for value in state])
        return self.values


def _float_kernels(model: Any, quantizer: Any) -> dict[str, Any]:
    """``{'<layer>._capture_<field>': float value}`` for each wrapped layer: its kernel with quantization off."""
    import torch

    from slimkit.frameworks.torch.quant_backend import QuantWrapper, _Kernel, capture_value

    out = {}
    quantizer.should_fake_quant = lambda layer: False  # instance attributes shadow the methods for this block
    quantizer.quantizes = lambda layer, qtype: False
    try:
        with torch.no_grad():
            for path, wrapper in model.named_modules():
                if isinstance(wrapper, QuantWrapper) and wrapper._ref.quantizer is quantizer:
                    kernel = wrapper.kernel(quantizer, wrapper._ref.layer)
                    out.update({f"{path}._capture_{name}": capture_value(wrapper.module, name, value).detach()
                                for name, value in zip(_Kernel._fields, kernel) if value is not None})
    finally:
        del quantizer.should_fake_quant, quantizer.quantizes
    return out


class _FileReader:
    """The file's int8 tensor of each quantization point, dequantized, in PyTorch's layout."""

    def __init__(self, tflite_path: str, graph: Any, points: dict[str, str]):
        from slimkit.utils.tflite_file import tflite_interpreter

        with warnings.catch_warnings():  # LiteRT warns that keeping every tensor is for debugging: it is
            warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors")
            self.interpreter = tflite_interpreter(tflite_path, experimental_preserve_all_tensors=True)
        details = {d["name"]: d for d in self.interpreter.get_tensor_details()}
        orders = {t.name: t.order for op in graph.ops for t in [*op.inputs, *op.outputs] if t is not None}
        self.inputs = [(d["index"], graph.inputs[i].order) for i, d in enumerate(self.interpreter.get_input_details())]
        self.points: dict[str, tuple[dict, tuple[int, ...]]] = {}
        for point, source in points.items():
            # the quantize op's output, else the int8 op writing the source directly (max-pool keeps its input's
            # parameters, so no quantize op follows it)
            name = next((name for name in (point + "_q", source + "_int8") if name in details and name in orders), None)
            if name is not None and len(details[name]["quantization_parameters"]["scales"]) == 1:
                self.points[point] = (details[name], orders[name])

    def __call__(self, x: Any) -> dict[str, np.ndarray]:
        interp = self.interpreter
        index, order = self.inputs[0]
        interp.set_tensor(index, np.ascontiguousarray(x.numpy().transpose(order)))
        interp.invoke()
        out = {}
        for point, (detail, order) in self.points.items():
            q = detail["quantization_parameters"]
            values = (interp.get_tensor(detail["index"]).astype(np.float64) - q["zero_points"][0]) * q["scales"][0]
            out[point] = values.transpose(np.argsort(order))
        return out


def quant_debug(model: Any, quantizer: Any, batches: Iterable[Any],
                tflite_path: str | os.PathLike | None = None) -> QuantDebugTable:
    """Per-tensor SQNR of the fake-quant model (and of the int8 file) against the float model.

    Args:
        model: a PyTorch model quantized and calibrated by ``quantizer`` (single input; left unchanged).
        quantizer: its slimkit quantizer (parameters are held fixed while the graph is captured).
        batches: inputs (tensors, or ``(inputs, targets)`` pairs); each sample is run alone, batch 1.
        tflite_path: the file converted from ``model`` with :class:`~slimkit.converter.TFLiteConverter` and
            default options; its intermediate int8 tensors are compared too.

    Returns:
        A :class:`QuantDebugTable`, one row per activation quantization point in graph order.

    Raises:
        UnsupportedModelError: ``model`` is not a PyTorch module.
        ConfigError: the quantizer has not wrapped ``model``, the graph has no activation quantization, or
            the batches are empty / not tensors.
        FileFormatError: ``tflite_path`` is not a valid TFLite file.
    """
    import torch

    from slimkit.converter import TFLiteConverter

    if not isinstance(model, torch.nn.Module):
        raise UnsupportedModelError(f"quant_debug: Expected a PyTorch model (its TFLite graph is compared). "
                                    f"Received: {type(model).__name__}")
    if getattr(quantizer, "model", None) is not model or not getattr(quantizer, "wrapped", False):
        raise ConfigError("quant_debug: the quantizer has not wrapped this model. Expected the model passed to the "
                          "quantizer, after quantizer.compress() and calibration.")
    samples = _samples(batches)
    path = os.fspath(tflite_path) if tflite_path is not None else os.devnull
    with quantizer.fixed_parameters():
        converter = TFLiteConverter(model, samples[0], path)
        captured = converter.capture()
        recorder = _Recorder(captured, quantizer)
        if not recorder.points:
            raise ConfigError("quant_debug: the model's graph has no activation quantization. Expected a quantizer "
                              "config with quant_types including 'input' or 'output'.")
        reader = _FileReader(path, converter.build(), recorder.sources) if tflite_path is not None else None
        # float signal, fake-quant noise, file noise, fake-quant signal, file noise against the fake-quant model
        sums = {point: np.zeros(5) for point in recorder.points}
        shapes: dict[str, tuple[int, ...]] = {}
        for x in samples:
            floats, fakes = recorder(x, float_mode=True), recorder(x, float_mode=False)
            files = reader(x) if reader is not None else {}
            for point in recorder.points:
                ref, fake = floats[point], fakes[point]
                shapes[point] = tuple(ref.shape)
                total = sums[point]
                total[0] += np.sum(np.square(ref, dtype=np.float64))
                total[1] += np.sum(np.square(ref - fake, dtype=np.float64))
                total[3] += np.sum(np.square(fake, dtype=np.float64))
                if point in files:
                    total[2] += np.sum(np.square(ref - files[point]))
                    total[4] += np.sum(np.square(fake - files[point]))
    rows = []
    nodes = {node.name: node for node in captured.call_nodes()}
    for point in recorder.points:
        node = nodes[point]
        source = node.args[0]
        layer = captured.module_path(node) or (
            "(input)" if getattr(source, "op", "") == "placeholder" else "(graph)")
        signal, noise, file_noise, fake_signal, file_fq = sums[point]
        read = reader is not None and point in reader.points
        rows.append(QuantDebugRow(point, layer, _op_name(source), shapes[point], _db(signal, noise),
                                  _db(signal, file_noise) if read else None,
                                  _db(fake_signal, file_fq) if read else None))
    return QuantDebugTable(rows, os.fspath(tflite_path) if tflite_path is not None else None, len(samples))


def _op_name(source: Any) -> str:
    if getattr(source, "op", "") != "call_function":
        return "input"
    return str(source.target).split(".")[1] if str(source.target).startswith("aten.") else str(source.target)
