"""Hold back known noise that native runtimes (TensorFlow, LiteRT) write straight to the process's stderr.

Their C++ logging bypasses Python's ``sys.stderr`` and ``logging``, so it lands in the middle of whatever a
script prints. :func:`without_lines` captures file descriptor 2 for a block and writes back every line
that matches none of the given patterns: errors and unexpected messages still reach the user.

Example:

>>> import os
>>> from slimkit.utils.stderr import without_lines
>>> with without_lines(rb"^INFO: Created TensorFlow Lite XNNPACK delegate"):
...     _ = os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\\n")
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator

# What TensorFlow's native code prints on import and in its TFLite converter: absl INFO / WARNING lines
# (``I0101 12:00:00.000000  123 file.cc:45] ...``; ERROR and FATAL lines pass) and the converter's plain prints.
TENSORFLOW_NOISE = (
    rb"^[IW]\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] ",
    rb"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    rb"\] oneDNN custom operations are on\.",
    rb"cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized",
    rb"^To enable the following instructions: ",
    rb"^fully_quantize: \d+, inference_type: \d+, input_inference_type: ",
)


@contextlib.contextmanager
def without_lines(*patterns: bytes) -> Iterator[None]:
    """Capture file descriptor 2 during the block; then write back the lines no pattern (a bytes regex) matches."""
    noise = re.compile(b"|".join(b"(?:" + p + b")" for p in patterns))
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().splitlines(keepends=True) if not noise.search(line)]
            if kept:
                os.write(2, b"".join(kept))
