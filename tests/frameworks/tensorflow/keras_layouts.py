"""PyTorch weight layout -> Keras weight layout, for the tests that give a Keras model a PyTorch twin's weights.

A uniquely named module (not conftest) so that test files can import it.
"""

import numpy as np

# torch layout -> Keras layout (a transpose), per weight kind
TO_KERAS = {"conv": (2, 3, 1, 0), "linear": (1, 0), "deconv": (2, 3, 1, 0), "depthwise": (2, 3, 0, 1)}


def depthwise_to_keras(weight: np.ndarray, multiplier: int) -> np.ndarray:
    """PyTorch ``Conv2d(c, c * m, groups=c)`` weight ``(c * m, 1, kh, kw)`` -> Keras ``(kh, kw, c, m)``."""
    out, _, kh, kw = weight.shape
    return weight.reshape(out // multiplier, multiplier, kh, kw).transpose(2, 3, 0, 1)
