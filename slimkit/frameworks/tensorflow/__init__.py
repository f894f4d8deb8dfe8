"""Keras 3 (TensorFlow backend) support: the adapter the core uses for ``keras.Model`` models,
the ``fit`` callback, and export to ``.keras`` / ``.weights.h5`` / TFLite.

See ``docs/keras.md``.
"""

from slimkit.frameworks.tensorflow.callbacks import CompressionCallback
from slimkit.frameworks.tensorflow.export import export_tflite, run_tflite, save_masks, save_model

__all__ = ["CompressionCallback", "export_tflite", "run_tflite", "save_masks", "save_model"]
