"""config_list: validation with the ``schema`` package, and matching dicts to layers.

A ``config_list`` is a list of dicts applied in order; for a layer matched by several dicts
the later dict wins. Each dict names ``op_types`` or ``op_names`` (or both). Every dict is
checked at construction, before any layer is touched, and parsed into a small frozen
dataclass whose fields the algorithms read.

Example:

>>> from slimkit.compression.config import ConfigKey, parse_config_list, FRACTION
>>> keys = {'sparsity': ConfigKey(FRACTION, 'a number in [0, 1)')}
>>> [cfg] = parse_config_list([{'sparsity': 0.5, 'op_types': ['Conv2d']}], keys, 'MyPruner')
>>> cfg.sparsity, cfg.op_types, cfg.exclude
(0.5, ('Conv2d',), False)
>>> parse_config_list([{'sparsity': 1.5, 'op_types': ['Conv2d']}], keys, 'MyPruner')
Traceback (most recent call last):
...
slimkit.errors.ConfigError: MyPruner: config_list[0]['sparsity'] is invalid. Expected a number in [0, 1). ...
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from schema import And, Schema, SchemaError

from slimkit.errors import ConfigError

REQUIRED: Any = object()
"""Sentinel default of a :class:`ConfigKey` that every non-exclude dict must give."""


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


FRACTION = And(_number, lambda v: 0 <= v < 1)
"""A float in [0, 1): sparsities."""
NON_NEGATIVE_INT = And(_integer, lambda v: v >= 0)
POSITIVE_INT = And(_integer, lambda v: v >= 1)
NAME_LIST = And([str], lambda v: len(v) > 0, lambda v: all(v))


@dataclass(frozen=True)
class ConfigKey:
    """One key an algorithm accepts in its config dicts.

    Args:
        validator: a ``schema`` validator (type, callable, ``And``/``Or`` ...).
        allowed: human-readable description of the allowed values, used in errors.
        default: value when the key is absent; :data:`REQUIRED` makes it mandatory
            (except in ``exclude`` dicts).
        convert: optional function applied to the validated value (e.g. list -> tuple).
    """

    validator: Any
    allowed: str
    default: Any = REQUIRED
    convert: Callable[[Any], Any] | None = None


COMMON_KEYS: dict[str, ConfigKey] = {
    "op_types": ConfigKey(NAME_LIST, "a non-empty list of layer type names such as ['Conv2d']", None, tuple),
    "op_names": ConfigKey(NAME_LIST, "a non-empty list of qualified layer names such as ['features.0']",
                          None, tuple),
    "exclude": ConfigKey(bool, "True or False", False),
}


class LayerConfig:
    """Base of the frozen dataclasses a config dict is parsed into.

    Fields are read as attributes (``config.sparsity``); ``config['sparsity']`` and
    ``config.get('sparsity')`` also work for code written against NNI's dict configs.
    ``index`` is the position of the dict in the ``config_list``.
    """

    index: int

    def __getitem__(self, key: str) -> Any:
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)

    def as_dict(self) -> dict[str, Any]:
        """The dict this config was parsed from, defaults filled in (``index`` left out)."""
        data = dataclasses.asdict(self)
        data.pop("index")
        return data


_CONFIG_CLASSES: dict[tuple[str, tuple[str, ...]], type] = {}


def config_class(algorithm: str, keys: Mapping[str, ConfigKey]) -> type:
    """The frozen dataclass holding one parsed config dict of ``algorithm``."""
    cache_key = (algorithm, tuple(keys))
    if cache_key not in _CONFIG_CLASSES:
        fields = [("index", int)] + [(name, Any, dataclasses.field(default=None)) for name in {
            **COMMON_KEYS, **keys}]
        _CONFIG_CLASSES[cache_key] = dataclasses.make_dataclass(
            f"{algorithm}Config", fields, bases=(LayerConfig,), frozen=True)
    return _CONFIG_CLASSES[cache_key]


def _closest(word: str, candidates: Iterable[str]) -> str:
    match = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" Did you mean {match[0]!r}?" if match else ""


def parse_config_list(config_list: Any, keys: Mapping[str, ConfigKey], algorithm: str) -> list[LayerConfig]:
    """Validate ``config_list`` against ``keys`` (plus the common keys) and parse it.

    Raises:
        ConfigError: naming the dict index, the key, the bad value and what is allowed.
    """
    if not isinstance(config_list, Sequence) or isinstance(config_list, (str, bytes)) or not config_list:
        raise ConfigError(f"{algorithm}: Expected config_list to be a non-empty list of dicts. "
                          f"Received: config_list={config_list!r}")
    all_keys = {**COMMON_KEYS, **keys}
    cls = config_class(algorithm, keys)
    parsed = []
    for index, entry in enumerate(config_list):
        where = f"{algorithm}: config_list[{index}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{where} must be a dict. Received: {entry!r}")
        for key in entry:
            if key not in all_keys:
                raise ConfigError(
                    f"{where} has unknown key {key!r}.{_closest(str(key), all_keys)} "
                    f"Allowed keys: {sorted(all_keys)}. Received: {key}={entry[key]!r}")
        if "op_types" not in entry and "op_names" not in entry:
            raise ConfigError(f"{where} names no layers. Expected 'op_types' or 'op_names' (or both). "
                              f"Received: {dict(entry)!r}")
        values: dict[str, Any] = {"index": index}
        excluded = bool(entry.get("exclude", False))
        for name, spec in all_keys.items():
            if name in entry:
                value = entry[name]
                try:
                    value = Schema(spec.validator).validate(value)
                except SchemaError:
                    raise ConfigError(f"{where}[{name!r}] is invalid. Expected {spec.allowed}. "
                                      f"Received: {name}={value!r}") from None
                values[name] = spec.convert(value) if spec.convert else value
            elif spec.default is REQUIRED:
                if not excluded:
                    raise ConfigError(f"{where} is missing required key {name!r} "
                                      f"({spec.allowed}). Received: {dict(entry)!r}")
                values[name] = None
            else:
                values[name] = spec.default
        parsed.append(cls(**values))
    return parsed


@dataclass(frozen=True)
class LayerRef:
    """A layer found by a framework adapter: qualified name, class name, native object, and ``types``: every
    name ``op_types`` matches it by (its class, the layer classes it derives from, an alias such as ``'Linear'``
    for a Linear-like layer of another library; see :func:`class_names`). Left empty, ``types`` is ``(type,)``.

    ``kernel`` names the weight of ``module`` this entry compresses when a layer holds several that are compressed
    apart (a Keras ``SeparableConv2D``'s ``'depthwise_kernel'``: the entry ``'sep1/depthwise'`` beside ``'sep1'``);
    None for the layer's own weight and bias. Such an entry is a weight, not a layer with its own input: a quantizer
    quantizes its ``'weight'``, and its ``'output'`` only where ``kernel_output`` says the kernel produces a tensor
    of its own inside the layer (a separable conv's depthwise half, a tensor of the int8 file).
    """

    name: str
    type: str
    module: Any
    types: tuple[str, ...] = ()
    kernel: str | None = None
    kernel_output: bool = False

    def __post_init__(self) -> None:
        if not self.types:
            object.__setattr__(self, "types", (self.type,))


def class_names(cls: type, base: type, aliases: Iterable[str] = ()) -> tuple[str, ...]:
    """The short names a layer of class ``cls`` answers to in ``op_types``: its own, those of the public
    classes it derives from up to (not including) the framework's layer ``base``, then ``aliases``.

    Example:

    >>> class Base: pass
    >>> class Conv(Base): pass
    >>> class _Private(Conv): pass
    >>> class Depthwise(_Private): pass
    >>> class_names(Depthwise, Base, aliases=['DW'])
    ('Depthwise', 'Conv', 'DW')
    """
    names = [cls.__name__] + [klass.__name__ for klass in cls.__mro__[1:]
                              if issubclass(klass, base) and klass is not base and not klass.__name__.startswith("_")]
    return tuple(dict.fromkeys([*names, *aliases]))


def match_layers(
    configs: Sequence[LayerConfig],
    layers: Sequence[LayerRef],
    *,
    algorithm: str,
    default_types: Iterable[str],
    known_types: Iterable[str] = (),
) -> list[tuple[LayerRef, LayerConfig]]:
    """Assign each layer the last config dict that matches it; drop excluded layers.

    An ``op_types`` entry matches a layer when it is one of the layer's ``types`` (its class or a base class,
    by short name). ``'default'`` in ``op_types`` expands to ``default_types``. An ``op_names`` entry matching no
    layer, an ``op_types`` entry that is neither in the model nor a known type of the framework,
    a non-exclude dict matching no layer, and a config_list matching nothing all raise
    :class:`ConfigError`.

    Example:

    >>> from slimkit.compression.config import LayerRef, match_layers, parse_config_list
    >>> layers = [LayerRef('conv1', 'Conv2d', None), LayerRef('fc', 'Linear', None)]
    >>> configs = parse_config_list([{'op_types': ['default']}, {'exclude': True, 'op_names': ['fc']}],
    ...                             {}, 'Demo')
    >>> [(layer.name, cfg.index) for layer, cfg in match_layers(
    ...     configs, layers, algorithm='Demo', default_types=['Conv2d', 'Linear'])]
    [('conv1', 0)]
    """
    default_types = tuple(default_types)
    names = [layer.name for layer in layers]
    model_types = {layer.type for layer in layers}
    known = set(known_types) | {name for layer in layers for name in layer.types}
    assignment: dict[str, LayerConfig] = {}
    for cfg in configs:
        where = f"{algorithm}: config_list[{cfg.index}]"
        for name in cfg.op_names or ():
            if name not in names:
                raise ConfigError(f"{where}['op_names'] names a layer the model does not have.{_closest(name, names)} "
                                  f"Received: op_names entry {name!r}")
        types: set[str] | None = None
        if cfg.op_types is not None:
            types = set()
            for op_type in cfg.op_types:
                if op_type == "default":
                    types.update(default_types)
                elif op_type in known:
                    types.add(op_type)
                else:
                    raise ConfigError(
                        f"{where}['op_types'] has unknown layer type {op_type!r}.{_closest(op_type, known)} "
                        f"Layer types in this model: {sorted(model_types)}. Received: op_types entry {op_type!r}")
        matched = [layer for layer in layers
                   if (types is None or not types.isdisjoint(layer.types))
                   and (cfg.op_names is None or layer.name in cfg.op_names)]
        if not matched and not cfg.exclude:
            raise ConfigError(f"{where} matches no layer of the model. Layer types in this model: "
                              f"{sorted(model_types)}. Received: {cfg.as_dict()!r}")
        for layer in matched:
            assignment[layer.name] = cfg
    result = [(layer, assignment[layer.name]) for layer in layers
              if layer.name in assignment and not assignment[layer.name].exclude]
    if not result:
        raise ConfigError(f"{algorithm}: the config_list matches no layer to compress (every match is excluded "
                          f"or nothing matched). Layer types in this model: {sorted(model_types)}.")
    return result
