"""Keras 3 (TensorFlow backend) support: the adapter the core uses for ``keras.Model`` models,
the ``fit`` callback, and export to ``.keras`` / ``.weights.h5`` / TFLite.

See ``docs/keras.md``.
"""

from slimkit.utils.optional import require
from slimkit.utils.stderr import TENSORFLOW_NOISE, without_lines

with without_lines(*TENSORFLOW_NOISE):  # TensorFlow's native start-up lines
    for _module in ("tensorflow", "keras"):  # a missing one names the extra (slimkit[tensorflow]), not a trace
        require(_module, "Keras support (slimkit.frameworks.tensorflow)")

from slimkit.frameworks.tensorflow.callbacks import CompressionCallback  # noqa: E402
from slimkit.frameworks.tensorflow.export import export_tflite, run_tflite, save_masks, save_model  # noqa: E402

__all__ = ["CompressionCallback", "export_tflite", "run_tflite", "save_masks", "save_model"]
