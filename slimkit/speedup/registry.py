"""Registries of speedup rules: one for graph operators (analysis), one for module types (surgery).

An operator rule reads the states of a node's inputs and returns the state of its output
(:class:`slimkit.speedup.state.TensorState`, or a list for ops returning several tensors),
merging coupled channel variables on the way. A module rule builds the smaller module.

Example:

>>> from slimkit.speedup.registry import OP_RULES, ensure_loaded
>>> ensure_loaded()
>>> 'aten::conv2d' in OP_RULES and 'aten::add' in OP_RULES
True
>>> import torch
>>> from slimkit.speedup.registry import module_rule
>>> class Depthwise(torch.nn.Conv2d):
...     pass
>>> module_rule(Depthwise(4, 4, 3, groups=4)) is module_rule(torch.nn.Conv2d(4, 4, 3))
True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

OP_RULES: dict[str, Callable[..., Any]] = {}
MODULE_RULES: dict[type | str, Callable[..., Any]] = {}


def register_op(*names: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register an analysis rule for the ATen operators ``names``: schema names (``'aten::add'``), or a name
    with its overload (``'aten::max.other'``) where overloads of one operator mean different things."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        for name in names:
            OP_RULES[name] = fn
        return fn

    return decorate


def register_module(*types: type | str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register the surgery rule that rebuilds modules of ``types`` with fewer channels. A type of a library
    slimkit does not import is named by its qualified name (``'transformers.pytorch_utils.Conv1D'``)."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        for module_type in types:
            MODULE_RULES[module_type] = fn
        return fn

    return decorate


def op_rule(node: Any) -> Callable[..., Any] | None:
    """The analysis rule of ``node``'s operator: its overload's own rule first, then the operator's."""
    name = op_name(node)
    overload = getattr(node.target, "_overloadname", None)
    return OP_RULES.get(f"{name}.{overload}") or OP_RULES.get(name)


def module_rule(module: Any) -> Callable[..., Any] | None:
    """The surgery rule of ``module``'s class or of its nearest base class that has one (a subclass of
    ``nn.Conv2d`` in model code is rebuilt as a conv)."""
    for cls in type(module).__mro__:
        rule = MODULE_RULES.get(cls) or MODULE_RULES.get(qualified_name(cls))
        if rule is not None:
            return rule
    return None


def qualified_name(cls: type) -> str:
    """``'module.Class'`` of a class."""
    return f"{cls.__module__}.{cls.__qualname__}"


def op_name(node: Any) -> str:
    """``'aten::conv2d'`` for an ATen overload, the function name for Python callables."""
    target = node.target
    schema = getattr(target, "_schema", None)
    if schema is not None:
        return schema.name
    return getattr(target, "__name__", str(target))


def _load_rules() -> None:
    # The rule modules register themselves on import.
    from slimkit.speedup import attention, module_ops, ops, residual, rms_norm, surgery  # noqa: F401


_load_rules_done = False


def ensure_loaded() -> None:
    global _load_rules_done
    if not _load_rules_done:
        _load_rules()
        _load_rules_done = True
