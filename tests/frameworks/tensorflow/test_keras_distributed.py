"""Pruning and QAT under ``tf.distribute.MirroredStrategy`` on 2 logical CPU devices (issue 14 item 7): every replica
holds the same masks and the same quantization ranges, and the ranges are those of the global batch.

The strategy runs in a subprocess (tests/frameworks/tensorflow/mirrored_worker.py): logical devices must be
configured before TensorFlow starts, and this process's TensorFlow has started.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

WORKER = os.path.join(os.path.dirname(__file__), "mirrored_worker.py")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
LAYERS = ["conv1", "conv2", "conv3", "fc"]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    out = tmp_path_factory.mktemp("mirrored") / "replicas.npz"
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, WORKER, str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    with np.load(out) as archive:
        return dict(archive)


def test_masks_are_identical_on_both_replicas_and_are_the_pruners(results):
    for name in LAYERS:
        masks = results[f"mask/{name}"]
        assert masks.shape[0] == 2, name                       # one copy per replica: a mirrored variable
        np.testing.assert_array_equal(masks[0], masks[1])
        np.testing.assert_array_equal(masks[0], results[f"pruner/{name}"])
        kernels = results[f"kernel/{name}"]
        np.testing.assert_array_equal(kernels[0], kernels[1])  # the weights the replicas train stay in step
    # the schedule reached 0.8 of conv1's 72, conv2's 1152, conv3's 2304 and fc's 160 weights
    assert [int((results[f"pruner/{name}"] == 0).sum()) for name in LAYERS] == [58, 922, 1843, 128]
    for name in LAYERS:   # and QAT kept every pruned weight at zero
        quantized, pruned = results[f"quantized/{name}"], results[f"pruner/{name}"] == 0
        assert np.count_nonzero(quantized[pruned]) == 0 and np.count_nonzero(quantized[~pruned]) > 0, name


def test_quantization_ranges_are_identical_on_both_replicas(results):
    keys = sorted(key for key in results if key.startswith("range/"))
    assert keys == ["range/conv1/input", "range/conv3/output", "range/fc/output", "range/gap/output",
                    "range/relu1/output", "range/relu2/output"]
    for key in keys:
        ranges = results[key]
        assert ranges.shape == (2, 6), key
        np.testing.assert_array_equal(ranges[0], ranges[1])
        assert ranges[0][2] == 1.0 and ranges[0][5] == 1.0 and ranges[0][1] > ranges[0][0], key  # observed, set


def test_each_replica_observes_the_global_batch(results):
    # replica 0's shard spans [-1, 2], replica 1's [-3, 0.5]: both see [-3, 2]
    assert results["batch_range"].tolist() == [[-3.0, 2.0], [-3.0, 2.0]]
