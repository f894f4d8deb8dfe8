"""The registry of post-training quantization techniques, and what a technique reports.

Adding a technique touches one place: its own module in this package, with a class decorated by
:func:`register_technique` (and an import in ``techniques/__init__.py`` so it registers).

Example:

>>> from slimkit.algorithms.quantization.techniques.registry import resolve_techniques
>>> resolve_techniques(['sharpen'])
Traceback (most recent call last):
...
slimkit.errors.ConfigError: PostTrainingQuantizer: Expected techniques from [...]. Received: 'sharpen'
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from slimkit.errors import ConfigError

STAGES = ("float", "quantized")
"""When a technique runs in ``calibrate()``: before ranges are observed, or after they are fixed."""

TECHNIQUES: dict[str, type[Technique]] = {}
"""Registered technique classes by name, in registration order."""


@dataclass
class TechniqueReport:
    """What one technique did: the layers it changed and the layers it skipped, each with the reason."""

    technique: str
    applied: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)


class Technique:
    """Base class of a post-training technique.

    Subclasses set ``stage`` (one of :data:`STAGES`) and ``needs_batches`` and implement :meth:`apply`.
    ``apply`` gets the quantizer (its ``model``, ``layers``, ``backend``, ``dummy_input``) and the calibration
    batches as a list (None when ``calibrate()`` was called without batches); it returns a
    :class:`TechniqueReport`.
    """

    name: ClassVar[str] = ""
    stage: ClassVar[str] = "float"
    needs_batches: ClassVar[bool] = False

    def apply(self, quantizer: Any, batches: list[Any] | None) -> TechniqueReport:
        raise NotImplementedError


def register_technique(name: str) -> Callable[[type[Technique]], type[Technique]]:
    """Class decorator: register a :class:`Technique` subclass under ``name``."""
    def decorate(cls: type[Technique]) -> type[Technique]:
        if name in TECHNIQUES and TECHNIQUES[name] is not cls:
            raise ConfigError(f"Expected a new technique name. Received: name={name!r}, already {TECHNIQUES[name]}")
        if cls.stage not in STAGES:
            raise ConfigError(f"Expected a technique stage from {list(STAGES)}. Received: {cls.stage!r} ({name})")
        cls.name = name
        TECHNIQUES[name] = cls
        return cls

    return decorate


def resolve_techniques(names: Sequence[str | Technique] | None) -> list[Technique]:
    """Instances of the techniques named, in the order they run: every ``'float'`` technique before every
    ``'quantized'`` one, otherwise in the order given. An entry may be an instance (a technique with options,
    e.g. ``Smooth(alpha=0.75)``) instead of a name.

    Raises:
        ConfigError: an unknown or repeated name (the registered names are listed).
    """
    given = list(names or [])
    names = [entry.name if isinstance(entry, Technique) else entry for entry in given]
    for name in names:
        if name not in TECHNIQUES:
            raise ConfigError(f"PostTrainingQuantizer: Expected techniques from {sorted(TECHNIQUES)}. "
                              f"Received: {name!r}")
    if len(set(names)) != len(names):
        raise ConfigError(f"PostTrainingQuantizer: Expected each technique once. Received: techniques={names}")
    techniques = [entry if isinstance(entry, Technique) else TECHNIQUES[entry]() for entry in given]
    return sorted(techniques, key=lambda technique: STAGES.index(technique.stage))
