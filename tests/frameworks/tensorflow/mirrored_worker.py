"""Worker of tests/frameworks/tensorflow/test_keras_distributed.py, run in its own process: the two logical CPU
devices of ``tf.distribute.MirroredStrategy`` must be configured before TensorFlow starts.

``python mirrored_worker.py OUT.npz``: the Keras digits CNN built in the strategy's scope, AGP-pruned (80 %, level
rule, 50 % at epoch 0) with ``CompressionCallback`` through ``fit``, then QAT stacked on it and fit on with both
callbacks while the schedule reaches 80 %. Writes every replica's copy of each mask, range slot and kernel, the
pruner's masks, and ``batch_range`` run on two different shards.
"""

from __future__ import annotations

import os
import sys

import numpy as np

LAYERS = ["conv1", "conv2", "conv3", "fc"]
QAT_CONFIG = [{"quant_types": ["input", "weight"], "op_names": ["conv1"]},
              {"quant_types": ["weight"], "op_names": ["conv2"]},
              {"quant_types": ["output"], "op_names": ["relu1", "relu2", "gap"]},
              {"quant_types": ["weight", "output"], "op_names": ["conv3", "fc"]}]


def main(out: str) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    # before TensorFlow creates its devices; here, not at import: pytest imports this module for its doctests
    tf.config.set_logical_device_configuration(tf.config.list_physical_devices("CPU")[0],
                                               [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras

    from slimkit.algorithms.pruning import AGPPruner
    from slimkit.algorithms.quantization import QATQuantizer
    from slimkit.frameworks.tensorflow import CompressionCallback
    from slimkit.frameworks.tensorflow.models import compile_classifier, digits_cnn, load_digits_arrays
    from slimkit.frameworks.tensorflow.replicas import batch_range
    from slimkit.frameworks.tensorflow.wrapper import wrapper_of

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    keras.utils.set_random_seed(0)
    x, y = (array[:128] for array in load_digits_arrays()[:2])
    with strategy.scope():
        model = digits_cnn(width=8)
        pruner = AGPPruner(model, [{"initial_sparsity": 0.5, "final_sparsity": 0.8, "end_epoch": 2,
                                    "op_types": ["Conv2D", "Dense"]}], pruning_algorithm="level")
        model = compile_classifier(pruner.compress())
    model.fit(x, y, epochs=1, batch_size=64, verbose=0, callbacks=[CompressionCallback(pruner)])
    with strategy.scope():
        quantizer = QATQuantizer(model, QAT_CONFIG, dummy_input=x[:1])
        model = compile_classifier(quantizer.compress())
    model.fit(x, y, initial_epoch=1, epochs=3, batch_size=64, verbose=0,
              callbacks=[CompressionCallback(pruner), CompressionCallback(quantizer)])

    def replicas(variable) -> np.ndarray:
        value = variable.value if isinstance(variable, keras.Variable) else variable  # Keras': a tf.distribute one
        return np.stack([np.asarray(v) for v in strategy.experimental_local_results(value)])

    results = {}
    for name in LAYERS:
        layer = model.get_layer(name)
        results[f"mask/{name}"] = replicas(wrapper_of(layer).weight_mask)
        results[f"kernel/{name}"] = replicas(layer.kernel)
        results[f"pruner/{name}"] = np.asarray(pruner.get_masks()[name]["weight"])
        results[f"quantized/{name}"] = np.asarray(layer.quantized_weight())
    for layer_name, slots in quantizer._keras_graph.slots.items():
        for key, slot in slots.items():
            results[f"range/{layer_name}/{key}"] = replicas(slot.state)
    shards = tf.constant([[-1.0, 2.0], [-3.0, 0.5]])   # replica 0 sees the first row, replica 1 the second
    per_replica = strategy.experimental_distribute_values_from_function(
        lambda context: shards[context.replica_id_in_sync_group])
    ranges = strategy.run(lambda shard: tf.stack(batch_range(shard)), args=(per_replica,))
    results["batch_range"] = np.stack([np.asarray(v) for v in strategy.experimental_local_results(ranges)])
    np.savez(out, **results)


if __name__ == "__main__":
    main(sys.argv[1])
