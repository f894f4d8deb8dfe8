"""The float islands of an int8 file: the ops it runs in float32 between a DEQUANTIZE and a QUANTIZE, named per layer.

An int8 (or int16) file keeps some layers in float: LayerNorm, Hugging Face's RMSNorm (``pow`` / ``mean`` / ``rsqrt``),
``scaled_dot_product_attention``, LSTM / GRU cells, SiLU, float convolutions. Under
:meth:`~slimkit.compression.Quantizer.emulate_integer` those layers compute PyTorch's float ops, and the file
LiteRT's float kernels. Both are float32, but only an op whose result is one correctly rounded IEEE-754 operation of
the same operands (``add``, ``sub``, ``mul``, ``neg``) gives the same bits on both sides. A
reduction (MEAN, a matrix product, a recurrent cell) sums in another order, and RSQRT, SOFTMAX, LOGISTIC, TANH or EXP
are XNNPACK's own approximations, not PyTorch's: measured on LiteRT 2.3 (``benchmarks/bench_float_islands.py``,
``benchmarks/RESULTS_float_islands.md``), their float32 results differ in the last bits on a share of elements, so the
rounding to the next int8 grid can differ by a step, rarely but without any guarantee. Those islands are named
``'<module path> (<module class>, float: <PyTorch functions>)'``; islands made only of correctly rounded ops and moves
are exact and not named.

Example:

>>> from slimkit.converter.ir import Graph, Op, Tensor
>>> q, x, m, y = Tensor('q', (1, 8), 'int8'), Tensor('x', (1, 8)), Tensor('m', (1, 1)), Tensor('y', (1, 8))
>>> graph = Graph(ops=[Op('DEQUANTIZE', [q], [x]), Op('MEAN', [x], [m], source='norm', origin='layer_norm'),
...                    Op('SUB', [x, m], [y], source='norm', origin='layer_norm'),
...                    Op('MUL', [y, y], [y], source='head', origin='mul')])
>>> float_islands(graph)
['norm (float: layer_norm)']
"""

from __future__ import annotations

import numpy as np
import torch

from slimkit.converter.ir import Graph, Op

INTEGER_TYPES = frozenset({"int8", "uint8", "int16"})
"""Activation types of a quantized file (LiteRT's int8 and 16x8 kernels)."""

CORRECTLY_ROUNDED = {"ADD": {"add"}, "SUB": {"sub", "rsub"}, "MUL": {"mul"}, "NEG": {"neg"}, "ABS": {"abs"},
                     "MAXIMUM": {"maximum", "clamp", "clamp_min"}, "MINIMUM": {"minimum", "clamp", "clamp_max"},
                     "RELU": {"relu"}}
"""File op -> the PyTorch functions it gives the same float32 bits as: one correctly rounded operation of the same
operands on both sides, on every instruction set XNNPACK targets. A division by a constant is written as a MUL by its
reciprocal (not the same bits); DIV and SQRT are left out, as some of XNNPACK's ARM kernels refine a reciprocal
estimate instead of dividing."""


def _moves() -> frozenset[str]:
    from slimkit.frameworks.torch.int8_emulation import EXACT_OPS

    return EXACT_OPS | {"SELECT_V2", "CAST", "QUANTIZE"}


def is_quantized(graph: Graph) -> bool:
    """Whether ``graph`` holds integer activations (not only integer weights, as weight-only and hybrid files do)."""
    return any(t is not None and not t.is_const and t.dtype in INTEGER_TYPES
               for op in graph.ops for t in (*op.inputs, *op.outputs))


def _halving(op: Op) -> bool:
    """A division by a power of two written as a MUL by its (exact) reciprocal: the same bits as the division."""
    constants = [t.data for t in op.inputs if t is not None and t.is_const and t.data_scale is None]
    return op.code == "MUL" and op.origin == "div" and len(constants) == 1 and \
        bool(np.all(np.abs(np.frexp(constants[0].astype(np.float32))[0]) == 0.5))


def _exact(op: Op) -> bool:
    fused = op.options.get("FusedActivationFunction", 0) in (0, 1, 2, 3)  # none, RELU, RELU_N1_TO_1, RELU6: clamps
    return op.code in _moves() or (fused and (op.origin in CORRECTLY_ROUNDED.get(op.code, ()) or _halving(op)))


def _kind(model: torch.nn.Module | None, path: str) -> str:
    """The class name of the module at ``path`` ('' when unknown)."""
    if model is None:
        return ""
    try:
        return type(model.get_submodule(path)).__name__
    except AttributeError:
        return ""


def float_islands(graph: Graph, model: torch.nn.Module | None = None) -> list[str]:
    """Each layer of a quantized ``graph`` that computes in float32 with ops whose bits LiteRT's kernels need not
    share with PyTorch's, as ``'<module path> (<module class>, float: <PyTorch functions>)'`` (the class read from
    ``model``, left out without it), in graph order; empty for a float graph and for a file whose float ops are all
    exact."""
    if not is_quantized(graph):
        return []
    functions: dict[str, list[str]] = {}
    for op in graph.ops:
        if op.code == "DEQUANTIZE" or not any(t.dtype == "float32" for t in op.outputs if t is not None):
            continue
        if _exact(op):
            continue
        names = functions.setdefault(op.source, [])
        if (op.origin or op.code.lower()) not in names:
            names.append(op.origin or op.code.lower())
    found = []
    for path, names in functions.items():
        kind = _kind(model, path)
        found.append(f"{path or '<root>'} ({kind + ', ' if kind else ''}float: {', '.join(names)})")
    return found
