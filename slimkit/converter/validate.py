"""Validation of a written file before it takes its final name: LiteRT loads it and runs it once, out of process.

A file LiteRT rejects, or one that would crash the interpreter (a segfault in ``allocate_tensors`` kills the whole
Python process), must never reach the user's path. The check runs in a worker process that stays alive between
conversions (one Python start and one ``ai_edge_litert`` import per session, about a second; each later check costs
the load and one invocation of the file, a few milliseconds for small models); a worker that crashed is replaced
on the next check.

Example:

>>> import os, tempfile, torch
>>> from slimkit.converter import TFLiteConverter
>>> from slimkit.converter.validate import validate_file
>>> path = os.path.join(tempfile.mkdtemp(), 'm.tflite')
>>> TFLiteConverter(torch.nn.Linear(4, 2), torch.randn(1, 4), path, validate=False).convert()
>>> validate_file(path)
>>> open(path, 'wb').write(b'not a model')
11
>>> validate_file(path)
Traceback (most recent call last):
...
slimkit.errors.SlimkitError: ... LiteRT could not load and run the file: ...
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import threading

from slimkit.errors import SlimkitError

TIMEOUT_S = 300.0
"""Longest a load and one invocation may take before the file is refused."""

_WORKER = r"""
import json, sys
import numpy as np
from ai_edge_litert.interpreter import Interpreter

for line in sys.stdin:
    try:
        interpreter = Interpreter(model_path=line.rstrip("\n"))
        interpreter.allocate_tensors()
        for fill in (0, 1):  # a kernel may refuse zeros as data (an integer division by an input): then ones
            for detail in interpreter.get_input_details():
                interpreter.set_tensor(detail["index"], np.full(detail["shape"], fill, detail["dtype"]))
            try:
                interpreter.invoke()
                break
            except RuntimeError:
                if fill:
                    raise
        for detail in interpreter.get_output_details():
            interpreter.get_tensor(detail["index"])
        reply = {"ok": True}
    except Exception as error:
        reply = {"ok": False, "error": f"{type(error).__name__}: {error}"}
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()
"""


class _Worker:
    """The validating process (started on first use, replaced after a crash)."""

    def __init__(self):
        self.process: subprocess.Popen | None = None
        self.lock = threading.Lock()
        atexit.register(self.close)

    def _start(self) -> subprocess.Popen:
        if self.process is None or self.process.poll() is not None:
            self.process = subprocess.Popen([sys.executable, "-c", _WORKER], stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        return self.process

    def check(self, path: str) -> str | None:
        """None if LiteRT loads and runs ``path``; else the reason."""
        with self.lock:
            process = self._start()
            try:
                process.stdin.write(path + "\n")
                process.stdin.flush()
            except BrokenPipeError:
                return self._died(process)
            ready, _, _ = select.select([process.stdout], [], [], TIMEOUT_S)
            if not ready:
                process.kill()
                process.wait()
                return f"LiteRT did not finish loading and running it in {TIMEOUT_S:.0f} s"
            line = process.stdout.readline()
            if not line:
                return self._died(process)
            reply = json.loads(line)
            return None if reply["ok"] else reply["error"]

    @staticmethod
    def _died(process: subprocess.Popen) -> str:
        code = process.wait()
        if code < 0:
            return f"the interpreter crashed ({signal.Signals(-code).name}) while loading or running it"
        return f"the validating process exited with status {code}"

    def close(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.stdin.close()
            process.wait()


_worker = _Worker()


def validate_file(path: str | os.PathLike, name: str | os.PathLike | None = None) -> None:
    """Load ``path`` in LiteRT, allocate its tensors and invoke it once on zeros (on ones where a kernel refuses
    zeros as data, e.g. an integer division by an input), in a separate process.

    Args:
        path: the file to check.
        name: the path to name in the error (the final name of a file still under its temporary name).

    Raises:
        SlimkitError: naming the file and the reason (LiteRT's error, or the signal that ended the interpreter).
    """
    reason = _worker.check(os.path.abspath(os.fspath(path)))
    if reason is not None:
        raise SlimkitError(f"{os.fspath(name or path)}: LiteRT could not load and run the file: {reason}. Nothing was "
                           "written. Expected a file the interpreter accepts: please report the model; "
                           "ConverterOptions(validate=False) writes it unchecked.")
