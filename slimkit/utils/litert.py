"""The LiteRT interpreter, created the one way slimkit runs TFLite files.

:func:`interpreter` imports LiteRT through :func:`slimkit.utils.optional.require` (a missing
``ai-edge-litert`` names the ``litert`` extra) and allocates the tensors with LiteRT's one-time
``INFO: Created TensorFlow Lite XNNPACK delegate for CPU.`` line held back: the runtime writes it
straight to the process's stderr, in the middle of whatever table a script is printing. Anything
else the runtime writes there is passed through.

Example:

>>> import os, tempfile, torch
>>> from slimkit.converter import TFLiteConverter
>>> from slimkit.utils.litert import interpreter
>>> path = os.path.join(tempfile.mkdtemp(), 'm.tflite')
>>> TFLiteConverter(torch.nn.Linear(4, 3), torch.randn(1, 4), path).convert()
>>> [d['shape'].tolist() for d in interpreter(model_path=path).get_output_details()]
[[1, 3]]
"""

from __future__ import annotations

from typing import Any

from slimkit.utils.optional import require
from slimkit.utils.stderr import without_lines

_BANNER = rb"Created TensorFlow Lite XNNPACK delegate"
LITERT, LITERT_FEATURE = "ai_edge_litert.interpreter", "Running a TFLite file"  # for require()


def interpreter(**kwargs: Any) -> Any:
    """A LiteRT ``Interpreter(**kwargs)`` (``model_path=`` or ``model_content=``, ``num_threads=``, ...)
    with its tensors allocated."""
    interpreter_class = require(LITERT, LITERT_FEATURE).Interpreter
    result = interpreter_class(**kwargs)
    with without_lines(_BANNER):
        result.allocate_tensors()
    return result


def delegate_partitions(**kwargs: Any) -> tuple[int, list[str]]:
    """How LiteRT's default CPU path (XNNPACK) runs a file: ``(partitions, undelegated)``, the number of delegate
    kernels it made of the file's ops and the ops it left to its own kernels (by name, in file order). A file XNNPACK
    takes whole gives ``(1, [])``; each refused op between delegated ones splits the graph once more. Takes
    :func:`interpreter`'s arguments.

    Example:

    >>> import os, tempfile, torch
    >>> from slimkit.converter import TFLiteConverter
    >>> path = os.path.join(tempfile.mkdtemp(), 'm.tflite')
    >>> TFLiteConverter(lambda x: torch.cumsum(x, 1) + 1, torch.randn(1, 4), path).convert()
    >>> delegate_partitions(model_path=path)
    (1, ['CUMSUM'])
    """
    ops = interpreter(**kwargs)._get_ops_details()
    delegates = [op for op in ops if op["op_name"] == "DELEGATE"]  # LiteRT appends one node per partition
    producer = {int(t): op["index"] for op in ops if op["op_name"] != "DELEGATE" for t in op["outputs"]}
    delegated: set[int] = set()
    for partition in delegates:  # its ops: walk back from its outputs to its inputs
        boundary = {int(t) for t in partition["inputs"]}
        pending = [int(t) for t in partition["outputs"]]
        while pending:
            index = producer.get(pending.pop())
            if index is None or index in delegated:
                continue
            delegated.add(index)
            pending += [int(t) for t in ops[index]["inputs"] if int(t) >= 0 and int(t) not in boundary]
    return len(delegates), [op["op_name"] for op in ops if op["op_name"] != "DELEGATE" and op["index"] not in delegated]
