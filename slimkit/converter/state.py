"""State tensors reset on every invocation, so that each run of a file is independent of the runs before it.

UNIDIRECTIONAL_SEQUENCE_LSTM and BIDIRECTIONAL_SEQUENCE_LSTM take their initial hidden and cell states as
*variable* tensors and write their final states back into them: the second ``invoke()`` of one interpreter
would start from the first one's final state (LiteRT only zeroes variables in ``allocate_tensors()`` and
``reset_all_variables()``). PyTorch's ``lstm(x)`` starts from zeros every call, so the converter writes a
BROADCAST_TO of a zero constant into each state tensor right before the op that reads it: the file is correct
without relying on the caller.

Example:

>>> import numpy as np
>>> from slimkit.converter.ir import Graph, Op, Tensor
>>> from slimkit.converter.state import reset_state
>>> state = Tensor('h', (2, 5), is_variable=True)
>>> graph = Graph(ops=[Op('UNIDIRECTIONAL_SEQUENCE_LSTM', [Tensor('x', (2, 3, 4)), state], [Tensor('y', (2, 3, 5))])])
>>> [op.code for op in reset_state(graph).ops]
['BROADCAST_TO', 'UNIDIRECTIONAL_SEQUENCE_LSTM']
"""

from __future__ import annotations

import numpy as np

from slimkit.converter.ir import Graph, Op, Tensor


def reset_state(graph: Graph) -> Graph:
    """Write zeros into every variable tensor before its first reader (in place; returns ``graph``)."""
    ops: list[Op] = []
    reset: set[int] = set()
    for op in graph.ops:
        for t in op.inputs:
            if t is None or not t.is_variable or id(t) in reset:
                continue
            reset.add(id(t))
            zero = Tensor(f"{t.name}_zero", (1,) * t.rank, t.dtype, data=np.zeros((1,) * t.rank, t.dtype))
            shape = Tensor(f"{t.name}_shape", (t.rank,), "int32", data=np.asarray(t.physical_shape, np.int32))
            ops.append(Op("BROADCAST_TO", [zero, shape], [t], source=op.source))
        ops.append(op)
    graph.ops = ops
    return graph
