"""The machine a benchmark ran on, recorded beside its figures (every benchmark script uses this).

Example:

>>> from machine_info import describe_machine
>>> info = describe_machine(torch='2.13.0')
>>> sorted(info)[:4], info['torch']
(['cpu', 'load_average', 'note', 'nproc'], '2.13.0')
"""

from __future__ import annotations

import os
import platform
from typing import Any

SHARED_NOTE = "shared 2-core machine, other engineers' jobs running: timings are noisy upper bounds"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (``platform.processor()`` where that is missing)."""
    try:
        with open("/proc/cpuinfo") as handle:
            return next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def describe_machine(note: str = SHARED_NOTE, **versions: Any) -> dict[str, Any]:
    """Cores, CPU model, Python, platform, the 1/5/15-minute load average now, and ``versions``."""
    return {"nproc": os.cpu_count(), "cpu": cpu_model(), "python": platform.python_version(),
            "platform": platform.platform(), "load_average": [round(v, 2) for v in os.getloadavg()],
            "note": note, **versions}
