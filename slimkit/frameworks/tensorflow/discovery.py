"""Finding the layers of a Keras 3 model: Functional, Sequential or subclassed, nested or shared.

Top-level layers keep their Keras names; layers inside a nested model or a composite layer are
named ``'<parent>/<child>'`` (the separator Keras uses in variable paths). A layer reachable from
several places (a shared layer) is listed once, under its first name.

Example:

>>> import keras
>>> from slimkit.frameworks.tensorflow.discovery import named_layers
>>> inner = keras.Sequential([keras.layers.Dense(3, name='fc')], name='head')
>>> inputs = keras.Input((4,))
>>> model = keras.Model(inputs, inner(keras.layers.Dense(4, name='stem')(inputs)))
>>> [(name, type(layer).__name__) for name, layer in named_layers(model)]
[('stem', 'Dense'), ('head', 'Sequential'), ('head/fc', 'Dense')]
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import keras

SEPARATOR = "/"


def _children(layer: Any) -> list[Any]:
    children = layer._flatten_layers(include_self=False, recursive=False)
    return [child for child in children if not isinstance(child, keras.layers.InputLayer)]


def named_layers(model: Any) -> Iterator[tuple[str, Any]]:
    """``(qualified_name, layer)`` for every layer under ``model``, depth-first, each layer once."""
    seen: set[int] = {id(model)}

    def walk(parent: Any, prefix: str) -> Iterator[tuple[str, Any]]:
        for child in _children(parent):
            if id(child) in seen:
                continue
            seen.add(id(child))
            name = f"{prefix}{child.name}"
            yield name, child
            yield from walk(child, f"{name}{SEPARATOR}")

    yield from walk(model, "")


def find_layer(model: Any, name: str) -> Any:
    """The layer called ``name`` (as :func:`named_layers` names it)."""
    for qualified, layer in named_layers(model):
        if qualified == name:
            return layer
    raise KeyError(name)
