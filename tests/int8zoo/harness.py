"""Quantize a zoo structure (post-training minmax or a few QAT steps on the digits), convert it to an int8 ``.tflite``
and compare LiteRT (XNNPACK) with ``quantizer.emulate_integer()`` output by output, in steps of the output's grid.

Example:

>>> import tempfile
>>> from tests.int8zoo.harness import measure
>>> result = measure('mlp_forms', 'ptq', tempfile.mkdtemp())
>>> result.outputs, result.exact == result.outputs, result.max_steps
(320, True, 0)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from slimkit.algorithms.quantization import PostTrainingQuantizer, QATQuantizer
from slimkit.converter import TFLiteConverter
from slimkit.converter.options import ConverterOptions
from slimkit.converter.verify import int8_ops, output_steps, run_tflite
from tests.converter.conftest import op_codes
from tests.int8zoo.structures import STRUCTURES, build, digits

WHOLE_GRAPH = [{"quant_types": ["input", "weight", "output"], "op_types": ["default"]}]
MODES = ("ptq", "qat")
BATCH = 8
CALIBRATION_BATCHES = 4
QAT_STEPS = 12
COMPARED_BATCHES = 4  # three of test digits and one of noise around them


@dataclass(frozen=True)
class Result:
    """How one structure's int8 file compares with the emulation.

    Attributes:
        name, mode: the structure and ``'ptq'`` / ``'qat'``.
        outputs: output elements compared (over every input).
        exact: how many are equal.
        max_steps: the largest difference, in steps of the output's scale.
        ops: the file's int8 ops (sorted, each once).
        float_ops: the file's other ops, computed in float (QUANTIZE and DEQUANTIZE aside).
    """

    name: str
    mode: str
    outputs: int
    exact: int
    max_steps: int
    ops: tuple[str, ...]
    float_ops: tuple[str, ...] = ()

    @property
    def fraction(self) -> float:
        return self.exact / self.outputs


def float_boundaries(path: str | Path) -> list[str]:
    """The file's QUANTIZE ops from float that read no model input and DEQUANTIZE ops that write no model output (each
    as ``'OP #index'``): the two ends of a float island between int8 ops. Empty when the file leaves int8 only at its
    edges."""
    import tflite

    from tests.converter.conftest import read_model

    _, graph = read_model(path)
    inputs = {graph.Inputs(i) for i in range(graph.InputsLength())}
    outputs = {graph.Outputs(i) for i in range(graph.OutputsLength())}
    found = []
    for index, code in enumerate(op_codes(path)):
        op = graph.Operators(index)
        if code == "QUANTIZE" and graph.Tensors(op.Inputs(0)).Type() == tflite.TensorType.FLOAT32 and \
                op.Inputs(0) not in inputs:
            found.append(f"QUANTIZE #{index}")
        if code == "DEQUANTIZE" and op.Outputs(0) not in outputs:
            found.append(f"DEQUANTIZE #{index}")
    return found


def quantize(name: str, mode: str) -> tuple[torch.nn.Module, PostTrainingQuantizer | QATQuantizer, torch.Tensor]:
    """Structure ``name`` whole-graph quantized: ``'ptq'`` calibrated (minmax) on training digits, ``'qat'`` trained
    ``QAT_STEPS`` Adam steps on them; returns the model (eval mode), its quantizer and an example batch."""
    model, example = build(name, batch=BATCH)
    data = STRUCTURES[name].data
    x_train, y_train = digits(data)
    batches = [x_train[i * BATCH * 4:(i + 1) * BATCH * 4] for i in range(CALIBRATION_BATCHES)]
    if mode == "ptq":
        quantizer = PostTrainingQuantizer(model, WHOLE_GRAPH, algorithm="minmax", dummy_input=example[:1])
        quantizer.compress()
        quantizer.calibrate(batches)
    elif mode == "qat":
        torch.manual_seed(0)
        optimizer = torch.optim.Adam(model.parameters(), 3e-3)
        quantizer = QATQuantizer(model, WHOLE_GRAPH, optimizer=optimizer, dummy_input=example[:1])
        quantizer.compress()
        model.train()
        for step in range(QAT_STEPS):
            rows = slice(step * 32 % 1024, step * 32 % 1024 + 32)
            optimizer.zero_grad()
            F.cross_entropy(model(x_train[rows]), y_train[rows]).backward()
            optimizer.step()
    else:
        raise ValueError(f"Expected mode in {MODES}. Received: mode={mode!r}")
    return model.eval(), quantizer, example


def inputs_for(name: str) -> list[torch.Tensor]:
    """The compared batches: test digits, then a batch of noise around them (values outside the calibrated range)."""
    x_test, _ = digits(STRUCTURES[name].data, "test")
    batches = [x_test[(i + 1) * BATCH:(i + 2) * BATCH] for i in range(COMPARED_BATCHES - 1)]
    generator = torch.Generator().manual_seed(1)
    return batches + [batches[0] + torch.randn(batches[0].shape, generator=generator) * 0.3]


def measure(name: str, mode: str, directory: str | Path) -> Result:
    """Quantize, convert and compare structure ``name`` (see the module's docstring)."""
    model, quantizer, example = quantize(name, mode)
    path = Path(directory) / f"{name}_{mode}.tflite"
    options = ConverterOptions()
    TFLiteConverter(model, example, path).convert()
    (scale,) = output_steps(path)
    outputs = exact = max_steps = 0
    for x in inputs_for(name):
        with torch.no_grad(), quantizer.emulate_integer():
            expected = model(x).numpy()
        feed = np.moveaxis(x.numpy(), 1, -1) if options.transposes_input(0, x.dim()) else x.numpy()
        got = run_tflite(path, [feed])[0].reshape(expected.shape)
        steps = np.rint(np.abs(got.astype(np.float64) - expected) / scale).astype(np.int64)
        outputs += steps.size
        exact += int((got == expected).sum())
        max_steps = max(max_steps, int(steps.max()))
    return Result(name, mode, outputs, exact, max_steps, tuple(sorted(set(int8_ops(path)))), float_ops(path))


def float_ops(path: str | Path) -> tuple[str, ...]:
    """The file's ops (sorted, each once) that read and write no integer tensor, QUANTIZE and DEQUANTIZE aside: those
    computed in float (an op whose code also runs on int8 elsewhere in the file counts here too)."""
    import tflite

    from tests.converter.conftest import read_model

    model, graph = read_model(path)
    integer = {tflite.TensorType.INT8, tflite.TensorType.UINT8, tflite.TensorType.INT16}
    found = set()
    for index, code in enumerate(op_codes(path)):
        op = graph.Operators(index)
        tensors = [op.Inputs(j) for j in range(op.InputsLength())] + [op.Outputs(j) for j in range(op.OutputsLength())]
        if code not in ("QUANTIZE", "DEQUANTIZE") and not any(
                k >= 0 and graph.Tensors(k).Type() in integer and model.Buffers(graph.Tensors(k).Buffer()).DataLength()
                == 0 for k in tensors):  # an integer activation (a constant holds data)
            found.add(code)
    return tuple(sorted(found))
