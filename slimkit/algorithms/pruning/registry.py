"""The pruner registry: a decorator registers a pruner class under a short name.

AGP looks its ``pruning_algorithm`` up here, and the tests run every registered pruner. Adding
a pruner touches one place: its own module, decorated with :func:`register_pruner`.

Example:

>>> from slimkit.algorithms.pruning import registry
>>> registry.get_pruner('l1').__name__
'L1FilterPruner'
>>> registry.get_pruner('l3')
Traceback (most recent call last):
...
slimkit.errors.ConfigError: Expected a registered pruner name, one of [...]. Received: name='l3'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from slimkit.errors import ConfigError

PRUNERS: dict[str, type] = {}
"""Registered pruner classes by name, in registration order."""


def register_pruner(name: str, *, schedulable: bool = True) -> Callable[[type], type]:
    """Class decorator: register a pruner under ``name``.

    Args:
        name: the short name (``'l1'``), also AGP's ``pruning_algorithm`` value.
        schedulable: whether AGP can drive the class's mask rule (``calc_mask`` with a
            scheduled ``sparsity``); False for pruners that are schedules themselves.
    """
    def decorate(cls: type) -> type:
        if name in PRUNERS and PRUNERS[name] is not cls:
            raise ConfigError(f"Expected a new pruner name. Received: name={name!r}, already {PRUNERS[name]}")
        PRUNERS[name] = cls
        cls.registry_name = name
        cls.schedulable = schedulable
        return cls

    return decorate


def get_pruner(name: str, *, schedulable: bool = False) -> type:
    """The pruner class registered as ``name`` (with ``schedulable=True``: only a rule AGP can drive).

    Raises:
        ConfigError: listing the registered names.
    """
    names = schedulable_names() if schedulable else list(PRUNERS)
    if name not in names:
        raise ConfigError(f"Expected a registered pruner name, one of {sorted(names)}. Received: name={name!r}")
    return PRUNERS[name]


def schedulable_names() -> list[str]:
    """Names of the pruners whose mask rule AGP can drive."""
    return [name for name, cls in PRUNERS.items() if cls.schedulable]


def pruned_weights(pruner: Any, layer: Any) -> np.ndarray | None:
    """Boolean array marking the weights of ``layer`` its current mask removes (None if unwrapped)."""
    if layer.wrapper is None:
        return None
    weight_mask, _ = pruner.adapter.get_masks(layer)
    return pruner.adapter.to_numpy(weight_mask) == 0
