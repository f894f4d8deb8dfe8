"""Run a converted file in the LiteRT interpreter and compare with PyTorch, on several inputs."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from slimkit.converter.options import ConverterOptions
from slimkit.errors import SlimkitError


@dataclass(frozen=True)
class VerifyResult:
    """The worst element over every input and output.

    Attributes:
        max_abs_error: the largest ``|file - model|``.
        max_rel_error: the largest error of an output relative to that output's max ``|model|``.
        outputs: how many outputs each input gave.
        emulated_integer: the reference was the quantized model under ``emulate_integer()``.
        inputs: how many inputs were compared (the example, random draws, the user's batches).
        worst: where the largest absolute error is: input, output, element, model and file values.
        emulated_ops: the int8 ops of the file whose integers the emulation computes exactly.
        approximate_ops: the int8 ops of the file the emulation leaves to fake quantization (within about a step
            each, not exact), e.g. RESIZE_BILINEAR.
        approximate_layers: the same ops named per layer, ``'<module path> (<OP>)'``.
        max_steps: the largest ``|file - model|`` in steps of the output's int8 grid (None where no output of the file
            is dequantized from int8).
        float_layers: the layers the int8 file runs in float32 between DEQUANTIZE and QUANTIZE with ops whose bits
            LiteRT's float kernels need not share with PyTorch's (LayerNorm, RMSNorm, attention's softmax, LSTM ...),
            ``'<module path> (<module class>, float: <PyTorch functions>)'``: the emulation computes PyTorch's float
            ops there, so the outputs are measured (``max_steps``), not guaranteed, equal.

    Example:

    >>> from slimkit.converter import VerifyResult
    >>> result = VerifyResult(0.0, 0.0, 1, emulated_integer=True, inputs=4, max_steps=0.0,
    ...                       float_layers=('norm (LayerNorm, float: layer_norm)',))
    >>> print(result.describe())  # doctest: +NORMALIZE_WHITESPACE
    max |file - model| = 0 (0 output steps) over 4 inputs; not bit-exact in general: norm (LayerNorm, float:
    layer_norm) run in float32 in the file, computed with PyTorch's float ops, not LiteRT's kernels, under the
    emulation, so its outputs are within 0 steps of the file on these inputs, not guaranteed equal.
    """

    max_abs_error: float
    max_rel_error: float
    outputs: int
    emulated_integer: bool = False
    inputs: int = 1
    worst: str = ""
    emulated_ops: tuple[str, ...] = ()
    approximate_ops: tuple[str, ...] = ()
    approximate_layers: tuple[str, ...] = ()
    max_steps: float | None = None
    float_layers: tuple[str, ...] = ()

    def ok(self, rtol: float = 1e-5) -> bool:
        return self.max_rel_error <= rtol

    def describe(self) -> str:
        """One sentence on how the file and the model compare."""
        steps = f" ({self.max_steps:g} output steps)" if self.max_steps is not None else ""
        text = f"max |file - model| = {self.max_abs_error:g}{steps} over {self.inputs} inputs"
        if not self.emulated_integer:
            return text + "."
        if not self.approximate_layers and not self.float_layers:
            return text + "; every int8 op of the file is emulated exactly."
        why = []
        if self.approximate_layers:
            why.append(f"{', '.join(self.approximate_layers)} run as fake quantization under the emulation")
        if self.float_layers:
            why.append(f"{'; '.join(self.float_layers)} run in float32 in the file, computed with PyTorch's float "
                       "ops, not LiteRT's kernels, under the emulation")
        measured = "within the steps measured here" if self.max_steps is None else \
            f"within {self.max_steps:g} steps of the file on these inputs"
        return text + f"; not bit-exact in general: {', and '.join(why)}, so its outputs are {measured}, not " \
            "guaranteed equal."


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


class _Runner:
    """One interpreter for a file, its inputs resized when a batch differs from the file's (a dynamic_batch file)."""

    def __init__(self, tflite_path, num_threads: int = 1):
        from slimkit.utils.tflite_file import tflite_interpreter

        self.path = tflite_path
        self.interpreter = tflite_interpreter(tflite_path, num_threads=num_threads)
        self.shapes: list | None = None

    def __call__(self, inputs) -> list[np.ndarray]:
        interp = self.interpreter
        shapes = [np.shape(x) for x in inputs]
        if shapes != self.shapes:
            for detail, x in zip(interp.get_input_details(), inputs):
                if tuple(detail["shape"]) != np.shape(x):
                    self._resize(detail, np.shape(x))
            interp.allocate_tensors()
            self.shapes = shapes
        for detail, x in zip(interp.get_input_details(), inputs):
            interp.set_tensor(detail["index"], np.asarray(x, order="C").astype(detail["dtype"]))  # keeps 0-d
        interp.invoke()
        return [interp.get_tensor(d["index"]) for d in interp.get_output_details()]

    def _resize(self, detail: dict, shape: tuple) -> None:
        signature = detail["shape_signature"]
        if len(signature) != len(shape) or any(s not in (-1, n) for s, n in zip(signature, shape)):
            raise SlimkitError(f"{self.path}: input {detail['name']!r} has shape {detail['shape'].tolist()} "
                               f"(signature {signature.tolist()}); it cannot take batch {shape[0] if shape else '-'} "
                               f"of shape {list(shape)}. Expected a file converted with dynamic_batch=True, or inputs "
                               "of the file's shape.")
        self.interpreter.resize_tensor_input(detail["index"], list(shape), strict=True)


def run_tflite(tflite_path, inputs, num_threads: int = 1):
    """Run ``tflite_path`` on numpy ``inputs`` (already in the file's layout); returns its outputs.

    Raises:
        FileFormatError: the file is not a valid TFLite file (checked before LiteRT opens it).
    """
    return _Runner(tflite_path, num_threads)(inputs)


def _opened(tflite_path):
    """The file's main subgraph and each of its ops' builtin names, by op index."""
    import tflite

    with open(tflite_path, "rb") as f:
        model = tflite.Model.GetRootAs(f.read(), 0)
    codes = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
    graph = model.Subgraphs(0)
    return graph, [codes[model.OperatorCodes(graph.Operators(i).OpcodeIndex()).BuiltinCode()]
                   for i in range(graph.OperatorsLength())]


def int8_ops(tflite_path, dtype: str = "INT8") -> list[str]:
    """The builtin names of the file's ops that read or write int8 activations (``dtype='INT16'``: int16), in order."""
    import tflite

    graph, names = _opened(tflite_path)
    found = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        tensors = [op.Inputs(j) for j in range(min(op.InputsLength(), 1))] + \
            [op.Outputs(j) for j in range(op.OutputsLength())]
        if any(k >= 0 and graph.Tensors(k).Type() == getattr(tflite.TensorType, dtype) for k in tensors):
            found.append(names[i])
    return found


def float_ops(tflite_path) -> list[str]:
    """The builtin names of the file's ops that compute a float32 result other than DEQUANTIZE, in order (a float
    file's every op; in an int8 file, its float islands and the moves inside them)."""
    import tflite

    graph, names = _opened(tflite_path)
    found = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        if names[i] != "DEQUANTIZE" and any(graph.Tensors(op.Outputs(j)).Type() == tflite.TensorType.FLOAT32
                                            for j in range(op.OutputsLength()) if op.Outputs(j) >= 0):
            found.append(names[i])
    return found


def output_steps(tflite_path) -> list[float | None]:
    """The integer grid step of each output of the file: the scale of the int8 (uint8, int16) tensor a DEQUANTIZE
    output reads, or of an integer output itself; None for outputs computed in float."""
    import tflite

    with open(tflite_path, "rb") as f:
        model = tflite.Model.GetRootAs(f.read(), 0)
    graph = model.Subgraphs(0)
    producers = {}
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        for j in range(op.OutputsLength()):
            producers[op.Outputs(j)] = op
    steps: list[float | None] = []
    for k in (graph.Outputs(i) for i in range(graph.OutputsLength())):
        op = producers.get(k)
        if op is not None and model.OperatorCodes(op.OpcodeIndex()).BuiltinCode() == \
                tflite.BuiltinOperator.DEQUANTIZE:
            k = op.Inputs(0)
        quant = graph.Tensors(k).Quantization()
        integer = graph.Tensors(k).Type() in (tflite.TensorType.INT8, tflite.TensorType.UINT8, tflite.TensorType.INT16)
        steps.append(float(quant.Scale(0)) if integer and quant is not None and quant.ScaleLength() == 1 else None)
    return steps


def _draws(inputs: tuple, count: int, seed: int) -> list[tuple]:
    """``count`` random inputs shaped as the example: floats with its mean and spread, integers within the range the
    example holds, booleans at random."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        draw = []
        for x in inputs:
            if not isinstance(x, torch.Tensor):
                draw.append(x)
            elif x.dtype == torch.bool:
                draw.append(torch.rand(x.shape, generator=generator) < 0.5)
            elif x.is_floating_point():
                values = x.detach().float()
                spread = float(values.std()) if values.numel() > 1 and float(values.std()) > 0 else 1.0
                draw.append((torch.randn(x.shape, generator=generator) * spread + float(values.mean())).to(x.dtype))
            else:
                low, high = int(x.min()), int(x.max())
                draw.append(torch.randint(low, high + 1, x.shape, generator=generator, dtype=x.dtype))
        out.append(tuple(draw))
    return out


def verify(model: torch.nn.Module, dummy_input, tflite_path, options: ConverterOptions | None = None, *,
           emulate_integer: bool = True, batches: Any = None, draws: int = 3, seed: int = 0,
           **kwargs) -> VerifyResult:
    """Max absolute / relative error of ``tflite_path`` against ``model`` on several inputs.

    The inputs are ``dummy_input``, ``draws`` random inputs of its shape (floats with its mean and spread, integers
    within the range it holds) and every item of ``batches`` (tensors or tuples of tensors; other batch sizes need a
    ``dynamic_batch`` file). ``options`` (or the same keywords given to the converter) tell which inputs / outputs the
    file holds channels-last. A model quantized by slimkit (int8 layers with input, weight and output parameters) is
    evaluated under its quantizer's ``emulate_integer()`` unless ``emulate_integer=False``: the int8 kernels' own
    arithmetic, which a correct int8 file matches exactly on the ops listed in ``emulated_ops``.

    Example:

    >>> import os, tempfile, torch
    >>> from slimkit.converter import TFLiteConverter, verify
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh()).eval()
    >>> path = os.path.join(tempfile.mkdtemp(), 'm.tflite')
    >>> TFLiteConverter(model, torch.randn(1, 4), path).convert()
    >>> result = verify(model, torch.randn(1, 4), path, draws=2)
    >>> result.inputs, result.max_abs_error < 1e-5
    (3, True)
    """
    from slimkit.converter.convert import as_module
    from slimkit.frameworks.torch import int8_emulation
    from slimkit.frameworks.torch.quant_backend import emulable_quantizer

    model = as_module(model)
    options = options or ConverterOptions.from_kwargs(**kwargs)
    example = tuple(dummy_input) if isinstance(dummy_input, (list, tuple)) else (dummy_input,)
    cases = [example, *_draws(example, draws, seed)]
    cases += [tuple(b) if isinstance(b, (list, tuple)) else (b,) for b in (batches or ())]
    quantizer = emulable_quantizer(model) if emulate_integer else None
    runner = _Runner(tflite_path)
    steps = output_steps(tflite_path)
    max_steps = 0.0 if any(step is not None for step in steps) else None
    abs_err = rel_err = 0.0
    worst = ""
    outputs = 0
    was_training = model.training
    model.eval()
    try:
        for number, inputs in enumerate(cases):
            with torch.no_grad(), quantizer.emulate_integer() if quantizer is not None else contextlib.nullcontext():
                expected = [_to_numpy(t) for t in _flatten(model(*inputs))]
            feeds = [np.moveaxis(x.detach().numpy(), 1, -1) if options.transposes_input(i, x.dim())
                     else x.detach().numpy() for i, x in enumerate(inputs)]
            outputs = len(expected)
            for i, (e, g) in enumerate(zip(expected, runner(feeds))):
                if options.transposes_output(i, e.ndim):
                    g = np.moveaxis(g, -1, 1)
                g = g.reshape(e.shape).astype(np.float32)
                if not e.size:
                    continue
                diff = np.abs(g - e)
                at = np.unravel_index(int(np.argmax(diff)), diff.shape)
                err, scale = float(diff[at]), float(np.abs(e).max())
                rel_err = max(rel_err, err / scale if scale > 0 else err)
                if i < len(steps) and steps[i]:
                    max_steps = max(max_steps, round(err / steps[i], 3))
                if err > abs_err or not worst:
                    abs_err = max(abs_err, err)
                    worst = (f"input {number} ({'example' if number == 0 else 'draw' if number <= draws else 'batch'}"
                             f"), output {i}, element {tuple(int(a) for a in at)}: model {float(e[at])!r}, file "
                             f"{float(g[at])!r}")
    finally:
        model.train(was_training)
    emulated = approximate = layers = islands = ()
    if quantizer is not None:
        from slimkit.frameworks.torch.int16_emulation import EMULATED_INT16_OPS

        ops8, ops16 = set(int8_ops(tflite_path)), set(int8_ops(tflite_path, "INT16"))
        emulated = tuple(sorted(ops8 & (int8_emulation.EMULATED_OPS | int8_emulation.EXACT_OPS) |
                                ops16 & (EMULATED_INT16_OPS | int8_emulation.EXACT_OPS)))
        approximate = tuple(sorted((ops8 | ops16) - set(emulated)))
        if approximate or float_ops(tflite_path):  # named per layer from the converter's own graph of the model
            from slimkit.converter.convert import TFLiteConverter

            converter = TFLiteConverter(model, example, tflite_path, options)
            layers, islands = tuple(converter.approximate_int8_ops()), tuple(converter.float_islands())
    return VerifyResult(abs_err, rel_err, outputs, quantizer is not None, len(cases), worst, emulated, approximate,
                        layers, max_steps, islands)
