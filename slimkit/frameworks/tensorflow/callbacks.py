"""``CompressionCallback``: lets ``model.fit`` drive a compressor's schedule.

Example:

>>> import numpy as np, keras
>>> from slimkit.algorithms.pruning import LevelPruner
>>> from slimkit.frameworks.tensorflow import CompressionCallback
>>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
>>> pruner = LevelPruner(model, [{'sparsity': 0.5, 'op_types': ['Dense']}])
>>> model = pruner.compress()
>>> model.compile(optimizer='sgd', loss='mse')
>>> history = model.fit(np.ones((8, 4)), np.ones((8, 2)), epochs=1, verbose=0,
...                     callbacks=[CompressionCallback(pruner)])
"""

from __future__ import annotations

from typing import Any

import keras


class CompressionCallback(keras.callbacks.Callback):
    """Calls ``compressor.update_epoch(epoch)`` when each epoch begins and ``compressor.step()``
    after each training batch, the hooks a custom training loop calls by hand.

    Args:
        compressor: a slimkit pruner or quantizer whose ``compress()`` returned the model being fit.
    """

    def __init__(self, compressor: Any):
        super().__init__()
        self.compressor = compressor

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.compressor.update_epoch(epoch)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.compressor.step()
