"""Shared pieces of the ``slimkit`` subcommands: loading ``pkg.module:name`` objects, reading
YAML settings with file:line errors, the pruner registry, and the model / data plumbing.

Library code logs; only the CLI writes to stdout (through :func:`say`).
"""

from __future__ import annotations

import importlib
import inspect
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from slimkit.errors import ConfigError, SlimkitError
from slimkit.utils.yamlfile import YamlDocument, load_yaml


def say(*lines: str) -> None:
    """The CLI's own output (stdout)."""
    for line in lines:
        print(line, file=sys.stdout)


# --------------------------------------------------------------------------- objects by name

def load_object(spec: str, what: str = "object") -> Any:
    """Import ``pkg.module:name`` (``name`` may be dotted: ``module:Class.method``) from the current folder,
    ``PYTHONPATH`` or the installed packages.

    Raises:
        SlimkitError: the spec is malformed, the module cannot be imported, or it has no such name.
    """
    module_name, sep, attr = (spec or "").partition(":")
    if not sep or not module_name or not attr:
        raise SlimkitError(f"Expected the {what} as 'package.module:name'. Received: {spec!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # the current folder is importable, as under `python -m slimkit.cli`
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise SlimkitError(f"Could not import module {module_name!r} for the {what} {spec!r}: {error}. "
                           f"Check the name, and that its package is in the current folder "
                           f"({os.getcwd()}) or on PYTHONPATH.") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = sorted(n for n in vars(module) if not n.startswith("_"))[:20]
            raise SlimkitError(f"Module {module_name!r} has no attribute {attr!r} (the {what} {spec!r}). "
                               f"Names it defines include: {public}")
        obj = getattr(obj, part)
    return obj


def _load_torch_weights(model: Any, weights: str, spec: str) -> None:
    import torch

    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise SlimkitError(f"Expected an existing weights file. Received: --weights {weights!r}") from None
    except Exception as error:  # noqa: BLE001 - any unreadable file is a user error here
        raise SlimkitError(f"Could not read weights from {weights!r} (weights-only loading): {error}") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise SlimkitError(f"The weights in {weights!r} do not fit the model from {spec!r}: {error}") from None


def _load_keras_weights(model: Any, weights: str, spec: str) -> None:
    """``model.load_weights`` of a ``.weights.h5`` or ``.keras`` file (what slimkit's Keras exports write)."""
    if not weights.endswith((".weights.h5", ".keras")):
        raise SlimkitError(f"A Keras model's weights are a '.weights.h5' or '.keras' file. Expected --weights ending "
                           f"in one of those. Received: --weights {weights!r}")
    if not os.path.isfile(weights):
        raise SlimkitError(f"Expected an existing weights file. Received: --weights {weights!r}")
    try:
        model.load_weights(weights)
    except Exception as error:  # noqa: BLE001 - any unreadable or mismatched file is a user error here
        raise SlimkitError(f"The weights in {weights!r} do not fit the Keras model from {spec!r}: {error}") from None


# framework (slimkit.compression.adapter.framework_of) -> how --weights are loaded into its models
WEIGHT_LOADERS: dict[str, Callable[[Any, str, str], None]] = {"torch": _load_torch_weights,
                                                             "keras": _load_keras_weights}


def load_model(spec: str, weights: str | None = None) -> Any:
    """Call the factory ``spec`` (no arguments): a ``torch.nn.Module`` or a ``keras.Model``; load ``weights`` into
    the result (a PyTorch state dict, or a Keras ``.weights.h5`` / ``.keras`` file)."""
    from slimkit.compression.adapter import framework_of

    factory = load_object(spec, "model factory")
    if not callable(factory):
        raise SlimkitError(f"Expected a callable model factory. Received: {spec!r} is a {type(factory).__name__}")
    model = factory()
    try:
        framework = framework_of(model)
    except SlimkitError as error:
        raise SlimkitError(f"The model factory {spec!r} returned no model. {error}") from None
    if weights:
        WEIGHT_LOADERS[framework](model, weights, spec)
    return model


# --------------------------------------------------------------------------- data

@dataclass
class Data:
    """Training and evaluation batches for fine-tuning, accuracy and latency."""

    train: Callable[[int], Iterable[tuple[Any, Any]]]
    evaluate: Callable[[], Iterable[tuple[Any, Any]]]

    def example_input(self) -> Any:
        """The first evaluation input, batch size 1."""
        for x, _ in self.evaluate():
            return x[:1]
        raise SlimkitError("The data loader returned no evaluation batches.")


def _tensor_batches(x: Any, y: Any, batch_size: int) -> Iterable[tuple[Any, Any]]:
    for start in range(0, len(x), batch_size):
        yield x[start:start + batch_size], y[start:start + batch_size]


def load_data(spec: str) -> Data:
    """Call the data loader ``spec``; it returns ``(x_train, y_train, x_test, y_test)`` tensors or
    ``(train_batches, eval_batches)`` iterables of ``(x, y)``."""
    loader = load_object(spec, "data loader")
    result = loader() if callable(loader) else loader
    if isinstance(result, tuple) and len(result) == 4:
        x_train, y_train, x_test, y_test = result
        return Data(lambda bs: _tensor_batches(x_train, y_train, bs), lambda: _tensor_batches(x_test, y_test, 256))
    if isinstance(result, tuple) and len(result) == 2:
        train, evaluate = result
        return Data(lambda bs: train, lambda: evaluate)
    raise SlimkitError(f"Expected the data loader {spec!r} to return (x_train, y_train, x_test, y_test) or "
                       f"(train_batches, eval_batches). Received: {type(result).__name__}")


def require_torch_model(model: Any, spec: str) -> None:
    """Refuse a Keras model in a command whose training loop, reports and files are PyTorch's.

    Raises:
        SlimkitError: ``model`` is not a ``torch.nn.Module``.
    """
    from slimkit.compression.adapter import framework_of

    framework = framework_of(model)
    if framework != "torch":
        raise SlimkitError(f"The factory {spec!r} returned a {framework} model; this command takes PyTorch models. "
                           "Expected a torch.nn.Module, or the Python API for Keras models "
                           "(slimkit.analysis.quant_debug, docs/keras.md); `slimkit prune`, `quantize`, `speedup` "
                           "and `convert` take Keras models.")


def require_input_shape(args: Any) -> list[int]:
    """``--input-shape`` parsed; a PyTorch model has no declared input, so the commands need it.

    Raises:
        SlimkitError: no ``--input-shape`` was given.
    """
    if not args.input_shape:
        raise SlimkitError(f"The PyTorch model {args.model!r} needs an example input. Expected --input-shape, "
                           "e.g. 1,1,8,8. Received: no --input-shape")
    return parse_shape(args.input_shape)


def keras_example(model: Any, input_shape: str | None) -> Any:
    """A random example input of a Keras model: of ``--input-shape`` if given, else of the model's
    ``keras.Input`` shapes with batch 1 (a list of arrays for several inputs).

    Raises:
        SlimkitError: ``input_shape`` does not fit the model's (single) input.
    """
    import numpy as np

    rng = np.random.default_rng(0)
    if input_shape:
        shape = parse_shape(input_shape)
        declared = [tuple(tensor.shape) for tensor in model.inputs]
        if len(declared) != 1 or len(shape) != len(declared[0]) or any(
                d is not None and d != s for d, s in zip(declared[0][1:], shape[1:])):
            raise SlimkitError(f"--input-shape does not fit the Keras model's inputs {declared}. Expected one input's "
                               f"shape, or no --input-shape (the model's keras.Input gives it). Received: "
                               f"--input-shape {input_shape!r}")
        return rng.standard_normal(shape).astype(np.float32)
    arrays = [rng.standard_normal([1 if d is None else d for d in tensor.shape]).astype(np.float32)
              for tensor in model.inputs]
    return arrays if len(arrays) > 1 else arrays[0]


def keras_speed_up(model: Any, masks_path: str, input_shape: str | None) -> tuple[Any, Any]:
    """The smaller ``keras.Model`` :class:`slimkit.speedup.ModelSpeedup` builds from ``model`` and the ``.npz``
    masks in ``masks_path`` (checked on :func:`keras_example`), and its :class:`SpeedupReport`."""
    from slimkit.speedup import ModelSpeedup

    speedup = ModelSpeedup(model, keras_example(model, input_shape), masks_path)
    return speedup.speedup_model(), speedup.report


def speed_up(model: Any, masks_path: str, example: Any) -> None:
    """Shrink ``model`` in place with :class:`slimkit.speedup.ModelSpeedup` and the masks in ``masks_path``."""
    from slimkit.masks import load_masks
    from slimkit.speedup import ModelSpeedup

    ModelSpeedup(model, example, load_masks(masks_path)).speedup_model()


def accuracy(model: Any, data: Data) -> float:
    """Top-1 accuracy of ``model`` on the evaluation batches."""
    import torch

    was_training = model.training
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in data.evaluate():
            correct += int((model(x).argmax(dim=1) == y).sum())
            total += len(y)
    model.train(was_training)
    return correct / max(total, 1)


# --------------------------------------------------------------------------- YAML settings

@dataclass(frozen=True)
class Key:
    """One top-level (or nested) key of a CLI YAML file."""

    check: Callable[[Any], bool]
    allowed: str
    required: bool = False


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


IS_NAME = Key(lambda v: isinstance(v, str) and bool(v), "a name such as 'L1FilterPruner'", True)
IS_MAPPING = Key(lambda v: isinstance(v, Mapping), "a mapping of keyword arguments")
IS_LIST = Key(lambda v: isinstance(v, list) and len(v) > 0, "a non-empty list of dicts", True)
MAX_INPUT_ELEMENTS = 2**28
"""Largest example input the commands build (1 GiB of float32): a larger shape is a typo, not a model input."""


def _is_shape(v: Any) -> bool:
    return (isinstance(v, list) and bool(v) and all(_is_int(d) and d > 0 for d in v)
            and math.prod(v) <= MAX_INPUT_ELEMENTS)


IS_SHAPE = Key(_is_shape, f"a list of positive integers such as [1, 1, 8, 8], at most {MAX_INPUT_ELEMENTS:,} "
                          f"elements in all")
IS_SEED = Key(_is_int, "an integer")
FINE_TUNE_KEYS = {
    "epochs": Key(lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "lr": Key(lambda v: _is_number(v) and v > 0, "a number > 0"),
    "batch_size": Key(lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "optimizer": Key(lambda v: v in ("sgd", "adam"), "'sgd' or 'adam'"),
}
IS_FINE_TUNE = Key(lambda v: isinstance(v, Mapping), "a mapping with epochs, lr, batch_size, optimizer")


def _closest(word: str, options: Iterable[str]) -> str:
    import difflib

    match = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" Did you mean {match[0]!r}?" if match else ""


def check_keys(doc: YamlDocument, mapping: Any, keys: Mapping[str, Key], path: tuple = ()) -> dict[str, Any]:
    """Validate ``mapping`` (at ``path`` in ``doc``) against ``keys``; errors name file, line and key."""
    if not isinstance(mapping, Mapping):
        raise doc.error(path, f"Expected a mapping with keys {sorted(keys)}. Received: {type(mapping).__name__}")
    for key, value in mapping.items():
        if key not in keys:
            raise doc.error(path + (key,), f"unknown key.{_closest(str(key), keys)} Allowed keys: "
                                           f"{sorted(keys)}. Received: {key}={value!r}")
        if not keys[key].check(value):
            raise doc.error(path + (key,), f"Expected {keys[key].allowed}. Received: {key}={value!r}")
    for key, spec in keys.items():
        if spec.required and key not in mapping:
            raise doc.error(path, f"missing required key {key!r} ({spec.allowed}).")
    return dict(mapping)


def read_settings(path: str, keys: Mapping[str, Key]) -> tuple[YamlDocument, dict[str, Any]]:
    """Load the YAML file ``path`` and validate its top-level keys."""
    doc = load_yaml(path)
    return doc, check_keys(doc, doc.data, keys)


_CONFIG_INDEX = re.compile(r"config_list\[(\d+)\](?:\[(['\"])(.+?)\2\])?")
_NAMED_KEY = re.compile(r"(?:unknown key|missing required key) (['\"])(.+?)\1")


def located(doc: YamlDocument, error: ConfigError, key: str = "config_list") -> ConfigError:
    """Re-raise a config_list :class:`ConfigError` with the file and line of the offending entry (and key)."""
    message = str(error)
    match = _CONFIG_INDEX.search(message)
    if not match:
        return ConfigError(f"{doc.where((key,))}: key {key!r}: {message}")
    path: tuple = (key, int(match.group(1)))
    bad_key = match.group(3)
    if bad_key is None:
        named = _NAMED_KEY.search(message)
        bad_key = named.group(2) if named else None
    if bad_key is not None and path + (bad_key,) in doc.lines:
        path = path + (bad_key,)
    return doc.error(path, message)


# --------------------------------------------------------------------------- pruners

def pruner_registry() -> dict[str, type]:
    """Pruner classes by class name (``L1FilterPruner``), from :data:`slimkit.algorithms.pruning.PRUNERS`."""
    from slimkit.algorithms.pruning import PRUNERS

    return {cls.__name__: cls for cls in PRUNERS.values()}


def lookup(registry: Mapping[str, type], name: str, doc: YamlDocument, path: tuple, what: str) -> type:
    """The class ``name`` picks: a registry name, or ``package.module:Class`` for a user's own subclass.

    A class given by import path must subclass the base the registry's classes share
    (``Pruner``, ``Quantizer``).
    """
    if ":" in name:
        cls = load_object(name, what)
        base = _common_base(registry.values())
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise doc.error(path, f"Expected a {base.__name__} subclass. Received: {path[-1]}={name!r}, {cls!r}")
        return cls
    if name not in registry:
        raise doc.error(path, f"unknown {what}.{_closest(name, registry)} Expected one of {sorted(registry)}. "
                              f"Received: {path[-1]}={name!r}")
    return registry[name]


def _common_base(classes: Iterable[type]) -> type:
    """The most derived class every one of ``classes`` subclasses (``object`` if none)."""
    shared: list[type] | None = None
    for cls in classes:
        shared = [base for base in (shared if shared is not None else cls.__mro__) if issubclass(cls, base)]
    return (shared or [object])[0]


ACCEPTED, REQUIRED_ONLY = "accepted", "required"


def build_kwargs(cls: type, given: Mapping[str, Any],
                 available: Mapping[str, tuple[Callable[[], Any], str]]) -> dict[str, Any]:
    """``given`` plus the ``available`` keywords ``cls.__init__`` takes and ``given`` lacks.

    ``available`` maps a keyword (``optimizer``, ``dummy_input``, ``trainer``, ``criterion``) to a
    zero-argument factory and when to supply it: :data:`ACCEPTED` whenever the constructor has the
    parameter, :data:`REQUIRED_ONLY` only when the parameter has no default (constructors may reject an
    optional object their configuration does not use).

    Example:

    >>> class Algo:
    ...     def __init__(self, model, config_list, *, optimizer=None, trainer, criterion=None): ...
    >>> sorted(build_kwargs(Algo, {'x': 1}, {'optimizer': (lambda: 'opt', ACCEPTED),
    ...     'trainer': (lambda: 'fit', REQUIRED_ONLY), 'criterion': (lambda: 'ce', REQUIRED_ONLY)}).items())
    [('optimizer', 'opt'), ('trainer', 'fit'), ('x', 1)]
    """
    params = inspect.signature(cls.__init__).parameters
    kwargs = dict(given)
    for name, (make, when) in available.items():
        if name not in params or name in kwargs:
            continue
        if when == REQUIRED_ONLY and params[name].default is not inspect.Parameter.empty:
            continue
        value = make()
        if value is not None:
            kwargs[name] = value
    return kwargs


def construct(cls: type, model: Any, config_list: list, kwargs: Mapping[str, Any], doc: YamlDocument,
              config_key: str = "config_list", arguments_key: str = "arguments") -> Any:
    """``cls(model, config_list, **kwargs)`` with YAML-located errors."""
    try:
        return cls(model, config_list, **kwargs)
    except ConfigError as error:
        raise located(doc, error, config_key) from None
    except TypeError as error:
        if "argument" not in str(error):
            raise
        raise doc.error((arguments_key,), f"{cls.__name__} does not accept these arguments: {error}") from None


def add_model_arguments(parser: Any, config_help: str) -> None:
    """``--config`` (described by ``config_help``), ``--model`` and ``--weights`` of the YAML-driven commands."""
    parser.add_argument("--config", required=True, help=config_help)
    parser.add_argument("--model", required=True, help="model factory as package.module:function")
    parser.add_argument("--weights", help="weights to load into the model first: a PyTorch state dict (.pth), a "
                        "Keras .weights.h5 / .keras file")


def add_output_arguments(parser: Any) -> None:
    """``--out`` and ``--quiet``, shared by the commands that write a folder of results."""
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--quiet", action="store_true", default=None, help="no progress bars")


def registry_of(module: Any, base: type) -> dict[str, type]:
    """Classes named in ``module.__all__`` that subclass ``base``, by name."""
    return {name: getattr(module, name) for name in getattr(module, "__all__", ())
            if isinstance(getattr(module, name, None), type) and issubclass(getattr(module, name), base)}


def parse_shape(text: str) -> list[int]:
    """``'1,1,8,8'`` -> ``[1, 1, 8, 8]``."""
    try:
        shape = [int(part) for part in text.replace("x", ",").split(",") if part.strip()]
    except ValueError:
        shape = []
    if not _is_shape(shape):
        raise SlimkitError(f"Expected an input shape such as 1,1,8,8. Received: --input-shape {text!r} (sizes must "
                           f"be positive, at most {MAX_INPUT_ELEMENTS:,} elements in all)")
    return shape
