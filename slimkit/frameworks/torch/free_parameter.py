"""Masks on free parameters: a module's own ``nn.Parameter`` attribute that is not a layer's weight.

ViT adds its ``cls_token`` and ``position_embeddings`` to the residual stream; to prune a hidden channel, a
dependency-aware pruner masks them with the linear layers writing the stream (see
:mod:`slimkit.speedup.parameters`). Such a parameter is a layer of its own to the compressor, named
``'<module>.<attribute>'``: its :class:`FreeParameter` stands where a layer's module would (``weight`` is the
parameter, there is no bias), and its :class:`ParameterMask` where a wrapper would. The mask applies in the owning
module's forward, as a wrapper's does: a forward pre-hook puts ``parameter * mask`` in the parameter's place for that
call and a forward hook puts the parameter back (even when the forward raises), so the parameter itself is never
written and the module tree and state-dict keys stay as they were.

Example:

>>> import torch
>>> owner = torch.nn.Module()
>>> owner.token = torch.nn.Parameter(torch.ones(1, 4))
>>> owner.forward = lambda x: x + owner.token
>>> mask = ParameterMask(FreeParameter(owner, 'token', axis=1))
>>> mask.weight_mask = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
>>> owner(torch.zeros(1, 4)).tolist(), owner.token.tolist()
([[1.0, 0.0, 1.0, 0.0]], [[1.0, 1.0, 1.0, 1.0]])
>>> mask.remove(); owner(torch.zeros(1, 4)).tolist()
[[1.0, 1.0, 1.0, 1.0]]
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class FreeParameter:
    """The free parameter ``attribute`` of ``owner`` seen as a layer: ``weight`` is the parameter (unmasked, also
    while a forward has the masked one in its place), ``bias`` is None, ``axis`` indexes its channels.

    Args:
        owner: the module holding the parameter.
        attribute: the parameter's attribute name.
        axis: the axis of the parameter that indexes channels.

    Example:

    >>> import torch
    >>> owner = torch.nn.Module(); owner.gamma = torch.nn.Parameter(torch.ones(3))
    >>> FreeParameter(owner, 'gamma', axis=0).weight is owner.gamma
    True
    """

    bias = None

    def __init__(self, owner: nn.Module, attribute: str, axis: int):
        self.owner = owner
        self.attribute = attribute
        self.axis = axis
        self.held: torch.Tensor | None = None  # the parameter while a forward uses the masked one

    @property
    def weight(self) -> torch.Tensor:
        return self.held if self.held is not None else self.owner._parameters[self.attribute]


class ParameterMask(nn.Module):
    """Applies ``weight_mask`` to a :class:`FreeParameter` in every forward of its owner (a wrapper's stand-in).

    Args:
        parameter: the free parameter to mask.

    Buffers ``weight_mask`` (None until a pruner sets it) and ``bias_mask`` (always None), as a wrapper has them.
    :meth:`remove` detaches the hooks. Not a submodule of the model.

    Example:

    >>> import torch
    >>> owner = torch.nn.Module(); owner.gamma = torch.nn.Parameter(torch.ones(3))
    >>> ParameterMask(FreeParameter(owner, 'gamma', axis=0)).weight_mask is None
    True
    """

    def __init__(self, parameter: FreeParameter):
        super().__init__()
        self.register_buffer("weight_mask", None)
        self.register_buffer("bias_mask", None)
        self.attached: list[Any] = []
        self._parameter = parameter
        owner = parameter.owner
        self._hooks = (owner.register_forward_pre_hook(self._apply),
                       owner.register_forward_hook(self._restore, always_call=True))

    def param(self, kind: str) -> torch.Tensor | None:
        """The free parameter for ``'weight'``, None for ``'bias'`` (a wrapper's ``param``)."""
        return self._parameter.weight if kind == "weight" else None

    @property
    def hook_ids(self) -> tuple[int, int]:
        """The ids of the owner's pre-hook and hook (a deep copy of the model carries them under the same ids)."""
        return self._hooks[0].id, self._hooks[1].id

    def _apply(self, module: nn.Module, args: Any) -> None:
        parameter = self._parameter
        if self.weight_mask is not None and parameter.held is None:
            value = module._parameters[parameter.attribute]
            masked = value * self.weight_mask  # first: a pre-hook that raises leaves nothing to restore
            parameter.held = value
            module._parameters[parameter.attribute] = masked

    def _restore(self, module: nn.Module, args: Any, output: Any) -> None:
        parameter = self._parameter
        if parameter.held is not None:
            module._parameters[parameter.attribute] = parameter.held
            parameter.held = None

    def remove(self) -> None:
        """Detach the hooks: the owner uses its parameter as it is again."""
        for handle in self._hooks:
            handle.remove()


def unhook_copy(owner: nn.Module, mask: ParameterMask) -> None:
    """Remove ``mask``'s hooks from ``owner``, a deep copy of the module it masks."""
    for table, hook_id in zip((owner._forward_pre_hooks, owner._forward_hooks), mask.hook_ids):
        table.pop(hook_id, None)
    owner._forward_hooks_always_called.pop(mask.hook_ids[1], None)


def parameter_refs(model: nn.Module, names: list[str], axes: dict[str, int]) -> dict[str, FreeParameter]:
    """``{name: FreeParameter}`` for the ``names`` that are ``'<module>.<attribute>'`` of a parameter of ``model``
    (channels along ``axes[name]``, default the last axis)."""
    refs = {}
    for name in names:
        path, _, attribute = name.rpartition(".")
        try:
            owner = model.get_submodule(path)
        except AttributeError:
            continue
        value = owner._parameters.get(attribute) if isinstance(owner, nn.Module) else None
        if isinstance(value, nn.Parameter):
            refs[name] = FreeParameter(owner, attribute, axes.get(name, value.dim() - 1))
    return refs
