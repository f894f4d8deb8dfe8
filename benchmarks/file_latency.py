"""LiteRT latency of one TFLite file on one input, for the benchmark scripts that time their own files.

Example:

>>> import inspect
>>> from file_latency import invoke_ms
>>> list(inspect.signature(invoke_ms).parameters)
['path', 'feed', 'threads', 'runs', 'warmup']
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from slimkit.utils.litert import interpreter


def invoke_ms(path: Path | str, feed: np.ndarray, threads: int, runs: int = 20, warmup: int = 3) -> float:
    """Median milliseconds of one ``invoke()`` of the file on ``feed`` (its first input, already in the file's
    layout) with LiteRT's default path on ``threads`` threads, after ``warmup`` untimed invokes."""
    runner = interpreter(model_path=str(path), num_threads=threads)
    runner.set_tensor(runner.get_input_details()[0]["index"], feed)
    for _ in range(warmup):
        runner.invoke()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        runner.invoke()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)
