"""What the ``slimkit`` commands do differently per framework: seeding, example inputs, the fine-tuning loop,
accuracy, speedup and the names of the files a compressor's ``export_model`` writes.

:data:`RUNTIMES` maps a framework (``slimkit.compression.adapter.framework_of``) to its :class:`Runtime`; the
commands read the model's runtime instead of branching on the framework. PyTorch trains with its own loop
(``update_epoch`` / ``step`` called by hand), Keras with ``model.fit`` and one
:class:`~slimkit.frameworks.tensorflow.CompressionCallback` per compressor.

Example:

>>> from slimkit.cli._runtime import RUNTIMES
>>> sorted(RUNTIMES)
['keras', 'torch']
>>> RUNTIMES['keras'].files.masks, RUNTIMES['torch'].files.masks
('mask.npz', 'mask.pth')
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from slimkit.cli import _common as common
from slimkit.errors import SlimkitError


@dataclass(frozen=True)
class FileNames:
    """Names, inside ``--out``, of the files the commands write for one framework.

    Attributes:
        weights: weights with masks baked in, loadable into the factory's model (``--weights`` of later commands).
        masks: the pruner's masks.
        calibration: the quantizer's calibration.
        reshaped: the model after ``--masks`` speedup, whose architecture the factory no longer builds.
    """

    weights: str
    masks: str
    calibration: str
    reshaped: str


class Runtime(Protocol):
    """One framework's part of a ``slimkit`` run (see :data:`RUNTIMES`)."""

    files: FileNames
    latency_note: str | None

    def seed_training(self, seed: int) -> None: ...

    def example(self, shape: Sequence[int] | None, data: common.Data | None, model: Any) -> Any: ...

    def optimizer(self, model: Any, fine_tune: dict[str, Any]) -> Any: ...

    def criterion(self) -> Any: ...

    def trainer(self, data: common.Data | None, batch_size: int, quiet: bool | None) -> Any: ...

    def fit(self, model: Any, data: common.Data, fine_tune: dict[str, Any], optimizer: Any,
            compressors: Sequence[Any], quiet: bool | None, epochs: range) -> None: ...

    def accuracy(self, model: Any, data: common.Data) -> float: ...

    def detached(self, model: Any) -> Any: ...

    def speed_up(self, model: Any, masks_path: str, example: Any) -> Any: ...


class TorchRuntime:
    """PyTorch: ``torch.optim``, cross entropy, a loop over ``--data``'s training batches."""

    files = FileNames(weights="model.pth", masks="mask.pth", calibration="calibration.pth",
                      reshaped="model.pth")
    latency_note = None

    def seed_training(self, seed: int) -> None:
        """Nothing: the session seeds torch before it calls the factory."""

    def example(self, shape: Sequence[int] | None, data: common.Data | None, model: Any) -> Any:
        import torch

        return torch.randn(*shape) if shape else data.example_input() if data is not None else None

    def optimizer(self, model: Any, fine_tune: dict[str, Any]) -> Any:
        import torch

        kind = torch.optim.Adam if fine_tune["optimizer"] == "adam" else torch.optim.SGD
        return kind(model.parameters(), lr=fine_tune["lr"])

    def criterion(self) -> Any:
        import torch

        return torch.nn.functional.cross_entropy

    def trainer(self, data: common.Data | None, batch_size: int, quiet: bool | None) -> Any:
        """NNI-style ``trainer(model, optimizer, criterion, epoch)``: one epoch over the training batches."""
        def train(model: Any, optimizer: Any, criterion: Any, epoch: int) -> None:
            self.train_epoch(model, data, batch_size, optimizer, criterion, epoch, (), quiet)

        return train

    def train_epoch(self, model: Any, data: common.Data | None, batch_size: int, optimizer: Any, criterion: Any,
                    epoch: int, compressors: Sequence[Any], quiet: bool | None) -> None:
        """One epoch over the training batches, ``step()`` of every compressor after each optimizer step."""
        from slimkit.utils.progress import progress

        model.train()
        batches = data.train(batch_size) if data else ()
        for x, y in progress(batches, desc=f"epoch {epoch}", quiet=quiet, unit="batch"):
            loss = criterion(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            for compressor in compressors:
                compressor.step()

    def fit(self, model: Any, data: common.Data, fine_tune: dict[str, Any], optimizer: Any,
            compressors: Sequence[Any], quiet: bool | None, epochs: range) -> None:
        criterion = self.criterion()
        for epoch in epochs:
            for compressor in compressors:
                compressor.update_epoch(epoch)
            self.train_epoch(model, data, fine_tune["batch_size"], optimizer, criterion, epoch, compressors, quiet)

    def accuracy(self, model: Any, data: common.Data) -> float:
        return common.accuracy(model, data)

    def detached(self, model: Any) -> Any:
        return copy.deepcopy(model)

    def speed_up(self, model: Any, masks_path: str, example: Any) -> Any:
        common.speed_up(model, masks_path, example)
        return model


class KerasRuntime:
    """Keras: ``keras.optimizers``, sparse categorical cross entropy on logits, ``model.fit`` with a
    ``CompressionCallback`` per compressor (training batches of ``--data`` joined into arrays, not shuffled, as the
    PyTorch loop reads them)."""

    files = FileNames(weights="model.weights.h5", masks="mask.npz", calibration="calibration.json",
                      reshaped="model.keras")
    latency_note = "latency: eager Keras calls under TensorFlow's own thread settings (not one thread)"

    def seed_training(self, seed: int) -> None:
        import keras

        keras.utils.set_random_seed(seed)

    def example(self, shape: Sequence[int] | None, data: common.Data | None, model: Any) -> Any:
        import numpy as np

        if shape:
            return common.keras_example(model, ",".join(map(str, shape)))
        if data is not None:
            return np.asarray(data.example_input(), dtype=np.float32)
        return common.keras_example(model, None)

    def optimizer(self, model: Any, fine_tune: dict[str, Any]) -> Any:
        import keras

        kind = keras.optimizers.Adam if fine_tune["optimizer"] == "adam" else keras.optimizers.SGD
        return kind(learning_rate=fine_tune["lr"])

    def criterion(self) -> Any:
        import keras

        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def trainer(self, data: common.Data | None, batch_size: int, quiet: bool | None) -> Any:
        """NNI-style ``trainer(model, optimizer, criterion, epoch)``: one epoch of ``fit`` with that loss."""
        def train(model: Any, optimizer: Any, criterion: Any, epoch: int) -> None:
            model.compile(optimizer=optimizer, loss=criterion)
            x, y = _arrays(data.train(batch_size))
            model.fit(x, y, batch_size=batch_size, epochs=epoch + 1, initial_epoch=epoch, shuffle=False, verbose=0)

        return train

    def fit(self, model: Any, data: common.Data, fine_tune: dict[str, Any], optimizer: Any,
            compressors: Sequence[Any], quiet: bool | None, epochs: range) -> None:
        from slimkit.frameworks.tensorflow import CompressionCallback
        from slimkit.utils.progress import is_quiet

        model.compile(optimizer=optimizer, loss=self.criterion())
        x, y = _arrays(data.train(fine_tune["batch_size"]))
        model.fit(x, y, batch_size=fine_tune["batch_size"], initial_epoch=epochs.start, epochs=epochs.stop,
                  shuffle=False, verbose=0 if is_quiet(quiet) else 1,
                  callbacks=[CompressionCallback(compressor) for compressor in compressors])

    def accuracy(self, model: Any, data: common.Data) -> float:
        import numpy as np

        correct = total = 0
        for x, y in data.evaluate():
            logits = np.asarray(model(np.asarray(x, dtype=np.float32), training=False))
            correct += int((logits.argmax(axis=-1) == np.asarray(y)).sum())
            total += len(y)
        return correct / max(total, 1)

    def detached(self, model: Any) -> Any:
        return model  # measure() reads a Keras model without changing it

    def speed_up(self, model: Any, masks_path: str, example: Any) -> Any:
        from slimkit.speedup import ModelSpeedup

        return ModelSpeedup(model, example, masks_path).speedup_model()


def _arrays(batches: Any) -> tuple[Any, Any]:
    """``(x, y)`` batches joined into two float32 / integer arrays."""
    import numpy as np

    pairs = [(np.asarray(x, dtype=np.float32), np.asarray(y)) for x, y in batches]
    if not pairs:
        raise SlimkitError("The data loader returned no training batches. Expected (x, y) batches to "
                                  "fine-tune on. Received: none")
    return np.concatenate([x for x, _ in pairs]), np.concatenate([y for _, y in pairs])


RUNTIMES: dict[str, Runtime] = {"torch": TorchRuntime(), "keras": KerasRuntime()}
"""framework (``slimkit.compression.adapter.framework_of``) -> its part of a CLI run."""
