"""Which int8 ops of a converted graph :meth:`~slimkit.compression.Quantizer.emulate_integer` computes exactly, and
which it leaves to fake quantization, named per layer.

Example:

>>> from slimkit.converter.ir import Graph, Op, Tensor
>>> x, y, z = (Tensor(name, (1, 4, 4, 2), 'int8') for name in 'xyz')
>>> graph = Graph(ops=[Op('SQUARED_DIFFERENCE', [x, x], [y], source='up'), Op('LOGISTIC', [y], [z], source='head')])
>>> approximate_int8_ops(graph)
['up (SQUARED_DIFFERENCE)']
"""

from __future__ import annotations

from slimkit.converter.ir import Graph


def approximate_int8_ops(graph: Graph) -> list[str]:
    """``'<module path> (<OP>)'`` for each op of ``graph`` that reads or writes int8 (or int16) activations and whose
    integers the emulation does not compute (it runs as fake quantization there: within about a step of the file, not
    exact)."""
    from slimkit.frameworks.torch.int8_emulation import EMULATED_OPS, EXACT_OPS
    from slimkit.frameworks.torch.int16_emulation import EMULATED_INT16_OPS

    covered = {"int8": EMULATED_OPS | EXACT_OPS, "uint8": EMULATED_OPS | EXACT_OPS,
               "int16": EMULATED_INT16_OPS | EXACT_OPS}
    found: list[str] = []
    for op in graph.ops:
        tensors = [t for t in op.inputs[:1] if t is not None] + [t for t in op.outputs if t is not None]
        types = {t.dtype for t in tensors} & set(covered)
        if not types or all(op.code in covered[dtype] for dtype in types):
            continue
        entry = f"{op.source or '<root>'} ({op.code})"
        if entry not in found:
            found.append(entry)
    return found
