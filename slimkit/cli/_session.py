"""The model, data and YAML settings one ``slimkit`` run works on (prune, config generate, quantize), PyTorch or
Keras."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import Any

from slimkit.cli import _common as common
from slimkit.cli._runtime import RUNTIMES, Runtime


class Session:
    """Read the YAML settings, pick the algorithm class, load the model and data, build the compressor.

    The model's framework picks :attr:`runtime` (:data:`slimkit.cli._runtime.RUNTIMES`): example input,
    optimizer, loss, training loop and accuracy for PyTorch or Keras.

    Args:
        args: parsed command line (``config``, ``model``, ``weights``, optional ``data`` and ``quiet``).
        keys: the YAML file's top-level keys.
        registry: algorithm classes by name (``algorithm:`` picks one).
        kind: what the registry holds, for messages (``'pruner'``, ``'quantizer'``).
        lr: default fine-tuning learning rate.
        train: whether this run trains (then the keys in ``data_keys`` need ``--data``).
        data_keys: YAML keys that need ``--data``.
        dummy_input_always: pass ``dummy_input`` wherever the constructor takes it (quantizers).
    """

    def __init__(self, args: argparse.Namespace, keys: Mapping[str, common.Key], registry: Mapping[str, type],
                 kind: str, *, lr: float = 1e-3, train: bool = True, data_keys: Sequence[str] = ("fine_tune",),
                 dummy_input_always: bool = False):
        import torch

        from slimkit.compression.adapter import framework_of

        self.doc, self.settings = common.read_settings(args.config, keys)
        seed = self.settings.get("seed", 0)
        torch.manual_seed(seed)  # before the factory: a PyTorch model's random init
        self.cls = common.lookup(registry, self.settings["algorithm"], self.doc, ("algorithm",), kind)
        self.model = common.load_model(args.model, args.weights)
        self.runtime: Runtime = RUNTIMES[framework_of(self.model)]
        self.runtime.seed_training(seed)
        self.data = common.load_data(args.data) if getattr(args, "data", None) else None
        fine_tune = common.check_keys(self.doc, self.settings.get("fine_tune", {}), common.FINE_TUNE_KEYS,
                                      ("fine_tune",))
        self.fine_tune = {"epochs": 1, "lr": lr, "batch_size": 64, "optimizer": "adam", **fine_tune}
        for key in data_keys:
            if train and key in self.settings and self.data is None:
                raise self.doc.error((key,), "needs data. Expected --data package.module:loader. Received: no --data")
        self.example = self.runtime.example(self.settings.get("input_shape"), self.data, self.model)
        self.optimizer: Any = None
        self.quiet: bool | None = getattr(args, "quiet", None)
        self.dummy_input_always = dummy_input_always

    def make_optimizer(self) -> Any:
        if self.optimizer is None:
            self.optimizer = self.runtime.optimizer(self.model, self.fine_tune)
        return self.optimizer

    def fit(self, model: Any, compressors: Sequence[Any]) -> None:
        """Fine-tune ``model`` for ``fine_tune: {epochs}`` epochs, the compressors' schedules stepped."""
        self.runtime.fit(model, self.data, self.fine_tune, self.make_optimizer(), compressors, self.quiet,
                         range(self.fine_tune["epochs"]))

    def accuracy(self, model: Any) -> float | None:
        """Top-1 accuracy of ``model`` on the evaluation batches; None without ``--data``."""
        return self.runtime.accuracy(model, self.data) if self.data is not None else None

    def build(self) -> Any:
        """The compressor: ``cls(model, config_list, **arguments)``, plus the objects YAML cannot hold.

        ``optimizer`` (the fine-tuning optimizer) is passed wherever the constructor takes it;
        ``dummy_input`` (from ``input_shape`` or the data) for quantizers and for ``dependency_aware``
        pruners; ``criterion`` (cross entropy) and ``trainer`` (one epoch over ``--data``) only to
        constructors that require them.
        """
        arguments = self.settings.get("arguments", {})
        wants_graph = self.dummy_input_always or bool(arguments.get("dependency_aware"))
        trainer = self.runtime.trainer(self.data, self.fine_tune["batch_size"], self.quiet)
        available = {
            "optimizer": (self.make_optimizer, common.ACCEPTED),
            "dummy_input": (lambda: self.example, common.ACCEPTED if wants_graph else common.REQUIRED_ONLY),
            "criterion": (self.runtime.criterion, common.REQUIRED_ONLY),
            "trainer": (lambda: trainer if self.data is not None else None, common.REQUIRED_ONLY),
        }
        kwargs = common.build_kwargs(self.cls, arguments, available)
        return common.construct(self.cls, self.model, self.settings["config_list"], kwargs, self.doc)
