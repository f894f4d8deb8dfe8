"""The one check for NaN and infinity: masks and quantization ranges are computed from finite values only.

Pruners check each layer's weight before a mask is computed from it, quantizers check the range of a weight
or an activation where it is first reduced (weight parameters, observer updates), so the error names the layer
and nothing has been changed yet.

Example:

>>> import numpy as np
>>> from slimkit.compression.finite import check_finite
>>> check_finite(np.array([1.0, 2.0]), where="the weight of layer 'fc'")
>>> check_finite(np.array([1.0, np.nan]), where="the weight of layer 'fc'")
Traceback (most recent call last):
...
slimkit.errors.NonFiniteError: Expected finite values in the weight of layer 'fc'. Received: 1 NaN and 0 infinite...
"""

from __future__ import annotations

from typing import Any

import numpy as np

from slimkit.errors import NonFiniteError


def check_finite(*values: Any, where: str) -> None:
    """Raise :class:`~slimkit.errors.NonFiniteError` naming ``where`` if any of the numpy ``values`` holds NaN
    or infinity (non-float arrays always pass)."""
    arrays = [np.asarray(value) for value in values if value is not None]
    if all(_finite(array) for array in arrays):
        return
    nan = sum(int(np.isnan(array).sum()) for array in arrays if array.dtype.kind in "fc")
    inf = sum(int(np.isinf(array).sum()) for array in arrays if array.dtype.kind in "fc")
    total = sum(array.size for array in arrays)
    raise NonFiniteError(f"Expected finite values in {where}. Received: {nan} NaN and {inf} infinite of {total} "
                         "values. Nothing was changed: find where they come from (a diverged training step, a bad "
                         "input batch) or exclude the layer.")


def _finite(array: np.ndarray) -> bool:
    # NaN propagates through min / max and infinity is an extreme: two reductions, no boolean copy of the array
    return array.dtype.kind not in "fc" or array.size == 0 or bool(np.isfinite(array.min()) and np.isfinite(
        array.max()))
