"""Known tensors shared by the quantization formula tests of every framework (numpy, float32).

``W`` is a (2 outputs, 3 inputs) weight in PyTorch's layout (Keras' Dense kernel is ``W.T``), ``X`` a batch
of two 3-vectors.
"""

import numpy as np

W = np.array([[0.9, -0.35, 0.02], [-2.0, 0.5, 1.1]], dtype=np.float32)
X = np.array([[1.0, -2.0, 0.5], [0.25, 3.0, -1.5]], dtype=np.float32)


def fake_quant_float32(x, scale, zero_point, qmin, qmax, axis=None):
    """``(clip(round(x / scale) + zero_point, qmin, qmax) - zero_point) * scale`` in float32 arithmetic, round half
    to even (what the float32 kernels compute; per channel along ``axis`` when given)."""
    x = np.asarray(x, dtype=np.float32)
    scale = np.asarray(scale, dtype=np.float64).astype(np.float32)
    zero_point = np.asarray(zero_point).astype(np.float32)
    if axis is not None:
        shape = [1] * x.ndim
        shape[axis] = -1
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    q = np.clip(np.round(x / scale) + zero_point, qmin, qmax).astype(np.float32)
    return (q - zero_point) * scale
