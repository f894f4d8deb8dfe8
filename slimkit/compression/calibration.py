"""Calibration files: the dict ``Quantizer.calibration()`` returns, written and read back safely.

``.json`` paths are JSON; other paths use the framework backend's safe format (``torch.save``,
read with ``torch.load(weights_only=True)``). Nothing in a file is ever executed.

Example:

>>> import os, tempfile
>>> from slimkit.compression.calibration import load_calibration, save_calibration
>>> path = os.path.join(tempfile.mkdtemp(), 'calib.json')
>>> save_calibration({'fc': {'output_scale': 0.5, 'output_zero_point': -3}}, path)
>>> load_calibration(path)['fc']['output_zero_point']
-3
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any


def save_calibration(calibration: Mapping[str, Any], path: str | os.PathLike, adapter: Any = None,
                     as_json: bool | None = None) -> None:
    """Write a calibration dict: JSON for ``.json`` paths (or ``as_json=True``), else the adapter's safe format
    (torch.save)."""
    import json

    from slimkit.utils.files import atomic_path

    path = os.fspath(path)
    if as_json is None:
        as_json = path.endswith(".json")
    if as_json or adapter is None:
        with atomic_path(path) as tmp, open(tmp, "w") as handle:
            json.dump(calibration, handle, indent=1)
    else:
        adapter.save_object(dict(calibration), path)


def load_calibration(path: str | os.PathLike, adapter: Any = None) -> dict[str, Any]:
    """Read a calibration file written by ``export_model(calibration_path=...)`` (no code executed)."""
    import json

    path = os.fspath(path)
    with open(path, "rb") as handle:
        head = handle.read(1)
    if head in (b"{", b" ", b"\n"):
        with open(path) as handle:
            return json.load(handle)
    if adapter is None:  # the only binary format so far is torch.save's
        from slimkit.frameworks.torch.quant_backend import BACKEND as adapter
    return adapter.load_object(path)
