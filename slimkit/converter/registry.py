"""The table from ATen operator to converter: one decorated function per source op.

Example:

>>> from slimkit.converter.registry import CONVERTERS, supported_ops
>>> 'aten.conv2d.default' in CONVERTERS
True
>>> CONVERTERS['aten.relu.default'].emits
('RELU',)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from slimkit.errors import ConfigError


@dataclass(frozen=True)
class Converter:
    """A registered converter: ``fn(ctx, node, args) -> Tensor | tuple`` and the TFLite ops it emits."""

    target: str
    fn: Callable
    emits: tuple[str, ...]


CONVERTERS: dict[str, Converter] = {}


def register(*targets: str, emits: tuple[str, ...] | list[str] = ()):
    """Register ``fn`` as the converter of each ATen overload in ``targets`` (``'aten.relu.default'``).

    ``emits`` lists the TFLite builtin operators the converter may write (``()`` for layout-only
    or pass-through ops that write nothing).

    Raises:
        ConfigError: a target already has a converter.
    """

    def decorate(fn):
        for target in targets:
            if target in CONVERTERS:
                existing = CONVERTERS[target].fn
                raise ConfigError(f"Expected one converter per op: {target!r} is already converted by "
                                  f"{existing.__module__}.{existing.__qualname__}. Received: duplicate "
                                  f"target={target!r} from {fn.__module__}.{fn.__qualname__}")
        for target in targets:  # all or none
            CONVERTERS[target] = Converter(target, fn, tuple(emits))
        return fn

    return decorate


def supported_ops() -> list[tuple[str, tuple[str, ...]]]:
    """``[(aten_op, tflite_ops), ...]`` sorted by ATen op name."""
    _load()
    return sorted((c.target, c.emits) for c in CONVERTERS.values())


def _load() -> None:
    import slimkit.converter.ops  # noqa: F401  (registers everything)


_load()
