"""The model, data and YAML settings one ``slimkit`` run works on (prune, config generate, quantize)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import Any

from slimkit.cli import _common as common


class Session:
    """Read the YAML settings, pick the algorithm class, load the model and data, build the compressor.

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

        self.doc, self.settings = common.read_settings(args.config, keys)
        torch.manual_seed(self.settings.get("seed", 0))
        self.cls = common.lookup(registry, self.settings["algorithm"], self.doc, ("algorithm",), kind)
        self.model = common.load_model(args.model, args.weights)
        common.require_torch_model(self.model, args.model)
        self.data = common.load_data(args.data) if getattr(args, "data", None) else None
        fine_tune = common.check_keys(self.doc, self.settings.get("fine_tune", {}), common.FINE_TUNE_KEYS,
                                      ("fine_tune",))
        self.fine_tune = {"epochs": 1, "lr": lr, "batch_size": 64, "optimizer": "adam", **fine_tune}
        for key in data_keys:
            if train and key in self.settings and self.data is None:
                raise self.doc.error((key,), "needs data. Expected --data package.module:loader. Received: no --data")
        shape = self.settings.get("input_shape")
        self.example = (torch.randn(*shape) if shape else
                        self.data.example_input() if self.data is not None else None)
        self.optimizer: Any = None
        self.quiet: bool | None = getattr(args, "quiet", None)
        self.dummy_input_always = dummy_input_always

    def make_optimizer(self) -> Any:
        import torch

        if self.optimizer is None:
            kind = torch.optim.Adam if self.fine_tune["optimizer"] == "adam" else torch.optim.SGD
            self.optimizer = kind(self.model.parameters(), lr=self.fine_tune["lr"])
        return self.optimizer

    def trainer(self, model: Any, optimizer: Any, criterion: Any, epoch: int) -> None:
        """NNI-style trainer: one epoch over the training batches."""
        self.train_epoch(model, optimizer, criterion, epoch, pruner=None)

    def train_epoch(self, model: Any, optimizer: Any, criterion: Any, epoch: int, pruner: Any) -> None:
        from slimkit.utils.progress import progress

        model.train()
        batches = self.data.train(self.fine_tune["batch_size"]) if self.data else ()
        for x, y in progress(batches, desc=f"epoch {epoch}", quiet=self.quiet, unit="batch"):
            loss = criterion(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if pruner is not None:
                pruner.step()

    def build(self) -> Any:
        """The compressor: ``cls(model, config_list, **arguments)``, plus the objects YAML cannot hold.

        ``optimizer`` (the fine-tuning optimizer) is passed wherever the constructor takes it;
        ``dummy_input`` (from ``input_shape`` or the data) for quantizers and for ``dependency_aware``
        pruners; ``criterion`` (cross entropy) and ``trainer`` (one epoch over ``--data``) only to
        constructors that require them.
        """
        import torch

        arguments = self.settings.get("arguments", {})
        wants_graph = self.dummy_input_always or bool(arguments.get("dependency_aware"))
        available = {
            "optimizer": (self.make_optimizer, common.ACCEPTED),
            "dummy_input": (lambda: self.example, common.ACCEPTED if wants_graph else common.REQUIRED_ONLY),
            "criterion": (lambda: torch.nn.functional.cross_entropy, common.REQUIRED_ONLY),
            "trainer": (lambda: self.trainer if self.data is not None else None, common.REQUIRED_ONLY),
        }
        kwargs = common.build_kwargs(self.cls, arguments, available)
        return common.construct(self.cls, self.model, self.settings["config_list"], kwargs, self.doc)
