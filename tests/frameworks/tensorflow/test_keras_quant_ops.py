"""The TensorFlow quantization ops seam against the numpy formula and the PyTorch seam's semantics."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import tensorflow as tf

from slimkit.frameworks.tensorflow.quant_ops import OPS


def params(scale, zero_point, qmin=-128, qmax=127, axis=None, bits=8):
    return SimpleNamespace(bits=bits, scale=np.asarray(scale, np.float64), zero_point=np.asarray(zero_point),
                           qmin=qmin, qmax=qmax, axis=axis)


def reference(x, p):
    scale, zero = np.asarray(p.scale), np.asarray(p.zero_point)
    if p.axis is not None:
        shape = [1] * x.ndim
        shape[p.axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    q = np.clip(np.round(x / scale) + zero, p.qmin, p.qmax)
    return (q - zero) * scale


@pytest.mark.parametrize("p", [params([0.02], [-10]), params([0.01, 0.05, 0.1], [0, 0, 0], -127, 127, axis=-1)],
                         ids=["per-tensor-asymmetric", "per-channel-symmetric"])
def test_fake_quant_matches_the_formula_and_clips_gradients(p):
    x = tf.constant(np.random.default_rng(0).normal(scale=3.0, size=(4, 3)).astype(np.float32))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = OPS.fake_quant(x, p)
        total = tf.reduce_sum(y)
    np.testing.assert_allclose(y.numpy(), reference(x.numpy(), p), rtol=1e-6, atol=1e-6)
    grad = tape.gradient(total, x).numpy()
    scale = np.asarray(p.scale) if p.axis is None else np.asarray(p.scale)[None, :]
    q = np.round(x.numpy() / scale) + (np.asarray(p.zero_point) if p.axis is None else 0)
    inside = (q >= p.qmin) & (q <= p.qmax)
    assert (~inside).any() and inside.any()
    np.testing.assert_array_equal(grad, inside.astype(np.float32))
    np.testing.assert_array_equal(OPS.clip_grad(x, tf.ones_like(x), p).numpy(), inside.astype(np.float32))


def test_straight_through_helpers():
    x = tf.constant([-1.6, -0.4, 0.0, 0.4, 2.5])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        rounded, signed = OPS.round_ste(x), OPS.sign_ste(x)
        custom = OPS.straight_through(x, lambda v: v * 0 + 7.0, lambda v, g: g * 3.0)
    np.testing.assert_array_equal(rounded.numpy(), np.round(x.numpy()))
    np.testing.assert_array_equal(signed.numpy(), [-1, -1, 1, 1, 1])
    np.testing.assert_array_equal(custom.numpy(), [7.0] * 5)
    for out, expected in ((rounded, 1.0), (signed, 1.0), (custom, 3.0)):
        np.testing.assert_array_equal(tape.gradient(out, x).numpy(), [expected] * 5)
    np.testing.assert_array_equal(OPS.zero_grad_where_abs_above(x, tf.ones_like(x), 1.0).numpy(), [0, 1, 1, 1, 0])
    assert float(OPS.abs_max(x)) == 2.5
    np.testing.assert_allclose(OPS.clamp(x, -1.0, 1.0).numpy(), np.clip(x.numpy(), -1, 1))


def test_statistics():
    x = tf.constant([[0.0, -2.0, 1.0], [3.0, 0.5, -0.25]])
    lo, hi = OPS.min_max(x)
    assert lo.tolist() == [-2.0] and hi.tolist() == [3.0]
    lo, hi = OPS.min_max(x, axis=-1)
    assert lo.tolist() == [0.0, -2.0, -0.25] and hi.tolist() == [3.0, 0.5, 1.0]  # per column
    np.testing.assert_array_equal(OPS.histogram(x, 3, 3.0), [3, 1, 2])  # |x| in [0,1), [1,2), [2,3]
    np.testing.assert_array_equal(OPS.histogram(x, 3, 3.0, skip_zeros=True), [2, 1, 2])
