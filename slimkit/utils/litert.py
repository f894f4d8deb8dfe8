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
