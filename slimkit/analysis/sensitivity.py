"""Per-layer pruning sensitivity: prune one layer at a time over a sparsity sweep and measure.

:func:`sensitivity` works on deep copies (the model passed in is never touched) and returns a
:class:`SensitivityTable`: ``table[layer][sparsity] -> metric``, with :meth:`~SensitivityTable.to_markdown`,
:meth:`~SensitivityTable.plot` and :meth:`~SensitivityTable.propose_config`, which turns a metric
budget into a per-layer ``config_list``.

Example:

>>> import torch
>>> from slimkit.algorithms.pruning import LevelPruner
>>> from slimkit.analysis.sensitivity import sensitivity
>>> model = torch.nn.Sequential(torch.nn.Linear(2, 2, bias=False))
>>> with torch.no_grad():
...     _ = model[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
>>> x = torch.eye(2)
>>> def evaluate(m):  # 1.0 while the outputs are unchanged
...     return float(torch.allclose(m(x), x))
>>> table = sensitivity(model, evaluate, LevelPruner, [0.5, 0.75], quiet=True)
>>> table.results
{'0': {0.5: 1.0, 0.75: 0.0}}
>>> table.propose_config(max_drop=0.0)
[{'sparsity': 0.5, 'op_names': ['0']}]
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from slimkit.analysis.plotting import new_axes, save_png
from slimkit.errors import ConfigError
from slimkit.utils.progress import progress

logger = logging.getLogger(__name__)


@dataclass
class SensitivityTable:
    """Metric of the model with one layer pruned, for each layer and sparsity.

    Attributes:
        baseline: the metric of the unpruned model.
        results: ``{layer: {sparsity: metric}}`` in model order.
        higher_is_better: True for accuracy-like metrics, False for losses.
    """

    baseline: float
    results: dict[str, dict[float, float]] = field(default_factory=dict)
    higher_is_better: bool = True

    def __getitem__(self, layer: str) -> dict[float, float]:
        return self.results[layer]

    @property
    def layers(self) -> list[str]:
        return list(self.results)

    @property
    def sparsities(self) -> list[float]:
        return sorted({s for row in self.results.values() for s in row})

    def drop(self, layer: str, sparsity: float) -> float:
        """How much worse than the baseline the metric is with ``layer`` pruned to ``sparsity``."""
        value = self.results[layer][sparsity]
        return self.baseline - value if self.higher_is_better else value - self.baseline

    def ranking(self) -> list[str]:
        """Layers from the most to the least sensitive (mean drop over the sweep; model order breaks ties)."""
        order = {name: index for index, name in enumerate(self.results)}

        def mean_drop(layer: str) -> float:
            row = self.results[layer]
            return sum(self.drop(layer, s) for s in row) / max(len(row), 1)

        return sorted(self.results, key=lambda layer: (-mean_drop(layer), order[layer]))

    def propose_config(self, max_drop: float) -> list[dict[str, Any]]:
        """A per-layer ``config_list``: for each layer the highest sparsity whose drop stays within ``max_drop``.

        The sweep is walked upwards and stops at the first sparsity that exceeds the budget, so a noisy
        recovery at a higher sparsity is never chosen. Layers with no sparsity within budget are left
        out (they stay dense). Drops are measured one layer at a time; pruning several layers together
        usually costs more than any single drop, so check the combined model.
        """
        if max_drop < 0:
            raise ConfigError(f"Expected max_drop >= 0. Received: max_drop={max_drop!r}")
        config = []
        for layer, row in self.results.items():
            chosen = None
            for sparsity in sorted(row):
                if self.drop(layer, sparsity) > max_drop + 1e-12:
                    break
                chosen = sparsity
            if chosen is not None and chosen > 0:
                config.append({"sparsity": chosen, "op_names": [layer]})
        return config

    def to_markdown(self, digits: int = 4) -> str:
        """The table as Markdown: one row per layer, one column per sparsity, baseline in the header."""
        sparsities = self.sparsities
        lines = [f"baseline: {self.baseline:.{digits}f}", "",
                 "| layer | " + " | ".join(f"{s:g}" for s in sparsities) + " |",
                 "|---|" + "---:|" * len(sparsities)]
        for layer, row in self.results.items():
            cells = [f"{row[s]:.{digits}f}" if s in row else "" for s in sparsities]
            lines.append(f"| {layer} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def plot(self, path: str | os.PathLike, title: str = "pruning sensitivity") -> None:
        """Save a PNG of metric versus sparsity, one line per layer (matplotlib, Agg backend; atomic)."""
        figure, axes = new_axes("SensitivityTable.plot", (7, 4.5))
        for layer, row in self.results.items():
            xs = [0.0] + sorted(row)
            axes.plot(xs, [self.baseline] + [row[s] for s in sorted(row)], marker="o", label=layer)
        axes.set_xlabel("sparsity of one layer")
        axes.set_ylabel("metric")
        save_png(figure, axes, title, path)


def _candidate_layers(model: Any, op_types: Iterable[str], op_names: Sequence[str] | None) -> list[str]:
    from slimkit.compression.adapter import adapter_for

    adapter = adapter_for(model)
    refs = adapter.discover(model)
    if op_names is not None:
        known = {ref.name for ref in refs}
        missing = [name for name in op_names if name not in known]
        if missing:
            raise ConfigError(f"sensitivity: op_names names layers the model does not have. Received: {missing}")
        return list(op_names)
    types = set(op_types)
    return [ref.name for ref in refs if not types.isdisjoint(ref.types) and adapter.has_weight(ref.module)]


def sensitivity(model: Any, evaluate: Callable[[Any], float], pruner_cls: type, sparsities: Sequence[float],
                op_types: Sequence[str] = ("Conv2d", "Linear"), *, op_names: Sequence[str] | None = None,
                pruner_kwargs: Mapping[str, Any] | None = None, higher_is_better: bool = True,
                quiet: bool | None = None) -> SensitivityTable:
    """Prune each selected layer alone at each sparsity (on a deep copy) and record ``evaluate(model)``.

    Args:
        model: the model to analyse (a PyTorch module; it is deep-copied, never modified).
        evaluate: ``evaluate(model) -> float``, e.g. validation accuracy.
        pruner_cls: a pruner class such as ``L1FilterPruner``.
        sparsities: the sweep, e.g. ``[0.25, 0.5, 0.75]``.
        op_types: layer types to analyse (Keras: ``('Conv2D', 'Dense')``).
        op_names: analyse exactly these layers instead of ``op_types``.
        pruner_kwargs: keyword arguments for ``pruner_cls``.
        higher_is_better: False when ``evaluate`` returns a loss.
        quiet: progress bar setting (see :func:`slimkit.utils.progress.progress`).

    Returns:
        A :class:`SensitivityTable`.

    Raises:
        ConfigError: no layer to analyse, or a sparsity outside [0, 1).
    """
    sweep = sorted(float(s) for s in sparsities)
    if not sweep or any(not 0 <= s < 1 for s in sweep):
        raise ConfigError(f"sensitivity: Expected sparsities in [0, 1). Received: sparsities={list(sparsities)!r}")
    layers = _candidate_layers(model, op_types, op_names)
    if not layers:
        raise ConfigError(f"sensitivity: no layer of the model matches op_types={list(op_types)!r}.")
    kwargs = dict(pruner_kwargs or {})
    table = SensitivityTable(float(evaluate(copy.deepcopy(model))), higher_is_better=higher_is_better)
    with progress(total=len(layers) * len(sweep), desc="sensitivity", quiet=quiet, unit="run") as bar:
        for layer in layers:
            table.results[layer] = {}
            for sparsity in sweep:
                clone = copy.deepcopy(model)
                pruner = pruner_cls(clone, [{"sparsity": sparsity, "op_names": [layer]}], **kwargs)
                pruned = pruner.compress()
                table.results[layer][sparsity] = float(evaluate(pruned))
                logger.info("sensitivity %s @ %.3f: %.6f", layer, sparsity, table.results[layer][sparsity])
                bar.update()
    return table
