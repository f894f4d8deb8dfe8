"""Quantization state under ``tf.distribute`` (``MirroredStrategy``): one value on every replica.

A quantizer's range variables are updated inside the replicated train step, where each replica sees only its
shard of the batch. :func:`shared_variable` makes them take the first replica's write on every replica, and
:func:`batch_range` gives every replica the range of the whole global batch (an all-gather of the shards'
minima and maxima), so each replica computes, and keeps, the same range, as one device would on that batch.
Masks need nothing: pruners write them from Python, between steps, onto every replica. Without a strategy both
are plain TensorFlow (one variable, the batch's own range).

Example:

>>> import numpy as np, tensorflow as tf
>>> from slimkit.frameworks.tensorflow.replicas import batch_range, shared_variable
>>> state = shared_variable(np.zeros(2), 'range')
>>> lo, hi = batch_range(tf.constant([[-1.0, 2.0], [0.5, 3.0]]))
>>> _ = state.assign(tf.stack([lo, hi]))
>>> state.numpy().tolist()
[-1.0, 3.0]
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf


def shared_variable(value: np.ndarray, name: str | None = None) -> tf.Variable:
    """A non-trainable float64 variable that holds one value on every replica: an update made inside a replicated step
    is the first replica's (``ONLY_FIRST_REPLICA``; replicas that compute the same value agree anyway)."""
    return tf.Variable(value, dtype=tf.float64, trainable=False, name=name,
                       aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)


def batch_range(x: Any) -> tuple[tf.Tensor, tf.Tensor]:
    """``(min, max)`` of ``x`` as float64 scalars, over the global batch when called in a replica context of several
    replicas (each replica's shard minimum and maximum all-gathered)."""
    lo, hi = tf.cast(tf.reduce_min(x), tf.float64), tf.cast(tf.reduce_max(x), tf.float64)
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return lo, hi
    gathered = context.all_gather(tf.stack([lo, -hi])[None], axis=0)  # (replicas, 2): min of -hi is -max
    both = tf.reduce_min(gathered, axis=0)
    return both[0], -both[1]
