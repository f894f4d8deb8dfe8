"""Checkpoint state of a compressor: plain Python values and native tensors, nothing pickled.

:meth:`Compressor.state_dict` gathers numpy arrays, numbers, strings and None in nested dicts and lists, and
hands every array to the framework adapter (``state_tensor``: a ``torch.Tensor`` for PyTorch, so that
``torch.load(path, weights_only=True)`` reads the file back; a numpy array for Keras). Loading turns every
non-plain leaf back into numpy (``state_array``). Arrays are copied both ways, so a saved state never changes
with the compressor and floats keep their dtype (bit-exact).

Example:

>>> import numpy as np
>>> from slimkit.compression.state import decode, encode
>>> state = encode({'lo': np.array([-1.5]), 'steps': 3, 'keys': ['output']}, np.array)
>>> decode(state, np.asarray)['lo'].dtype, decode(state, np.asarray)['steps']
(dtype('float64'), 3)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from slimkit.compression.quant import QParams

_PLAIN = (str, int, float, bool, type(None))


def encode(value: Any, to_native: Callable[[np.ndarray], Any]) -> Any:
    """``value`` with every numpy array (and numpy scalar) replaced by ``to_native(copy of it)``."""
    if isinstance(value, dict):
        return {key: encode(item, to_native) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(encode(item, to_native) for item in value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return to_native(np.array(value, copy=True))
    return value


def decode(value: Any, to_numpy: Callable[[Any], np.ndarray]) -> Any:
    """The inverse of :func:`encode`: every leaf that is not a plain Python value becomes a numpy array."""
    if isinstance(value, dict):
        return {key: decode(item, to_numpy) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(decode(item, to_numpy) for item in value)
    if isinstance(value, _PLAIN):
        return value
    return np.array(to_numpy(value), copy=True)


def qparams_state(params: QParams) -> dict[str, Any]:
    """:class:`QParams` as a dict of numpy arrays and plain values (lossless)."""
    axis = list(params.axis) if isinstance(params.axis, tuple) else params.axis
    return {"bits": params.bits, "scale": params.scale, "zero_point": params.zero_point, "qmin": params.qmin,
            "qmax": params.qmax, "axis": axis, "min": params.min, "max": params.max}


def qparams_from_state(state: dict[str, Any]) -> QParams:
    """The inverse of :func:`qparams_state`."""
    axis = tuple(state["axis"]) if isinstance(state["axis"], list) else state["axis"]
    return QParams(int(state["bits"]), state["scale"], state["zero_point"], int(state["qmin"]), int(state["qmax"]),
                   axis, state["min"], state["max"])
