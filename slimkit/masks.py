"""Masks: reading mask files back safely (no code in a file is ever executed), and checking masks.

PyTorch masks are written with ``torch.save`` and read with ``torch.load(weights_only=True)``;
Keras masks are ``.npz`` archives (keys ``'<layer>::weight'`` / ``'<layer>::bias'``) read with
``allow_pickle=False``.

:func:`check_masks` is the one validation every consumer of masks runs before it changes anything
(:func:`load_masks`, ``Pruner.load_masks`` / ``set_mask``, ``ModelSpeedup``): a mapping
``{layer_name: {'weight': mask, 'bias': mask or None}}`` whose masks are tensors or arrays of a real dtype
(bool, integer, float) holding exactly 0 and 1, and, given the model's parameter shapes, naming only layers
with a weight and matching their shapes. Every refusal is a :class:`slimkit.MaskError` naming the layer and key.

Example:

>>> import os, tempfile, torch
>>> from slimkit import load_masks
>>> path = os.path.join(tempfile.mkdtemp(), 'mask.pth')
>>> torch.save({'fc': {'weight': torch.ones(2, 2), 'bias': None}}, path)
>>> load_masks(path)['fc']['weight'].shape
torch.Size([2, 2])
>>> check_masks({'fc': {'weight': torch.full((2, 2), 0.5)}})
Traceback (most recent call last):
...
slimkit.errors.MaskError: masks: the weight mask of layer 'fc' must hold only 0 and 1. Received: 4 other ...
"""

from __future__ import annotations

import os
import sys
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from slimkit.errors import FileFormatError, MaskError, SlimkitError

NPZ_SEPARATOR = "::"
MASK_KEYS = ("weight", "bias")
Shapes = Mapping[str, Mapping[str, "tuple[int, ...] | None"]]
"""``{layer_name: {'weight': shape, 'bias': shape or None}}``: the parameters masks may cover."""


def _checkable(mask: Any) -> Any:
    """``mask`` as a torch tensor or numpy array whose dtype and values can be checked, or None."""
    torch = sys.modules.get("torch")  # a torch tensor implies torch is imported: never import it here
    if torch is not None and isinstance(mask, torch.Tensor):
        return mask.detach()
    if isinstance(mask, np.ndarray):
        return mask
    if all(hasattr(mask, attribute) for attribute in ("__array__", "shape", "dtype")):  # TF tensors, Keras variables
        return np.asarray(mask)
    return None


def _real_dtype(value: Any) -> bool:
    if isinstance(value, np.ndarray):
        return value.dtype.kind in "biuf"  # bool, signed / unsigned integer, float
    import torch

    integers = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
    return value.dtype == torch.bool or value.dtype.is_floating_point or value.dtype in integers


def check_mask(mask: Any, where: str, shape: tuple[int, ...] | None = None) -> None:
    """Raise :class:`MaskError` (message starting with ``where``) unless ``mask`` is a dense tensor or array of a
    real dtype holding only 0 and 1, of shape ``shape`` when given."""
    value = _checkable(mask)
    if value is None:
        raise MaskError(f"{where} must be a tensor or array of 0s and 1s. Received: {type(mask).__name__} "
                        f"{repr(mask)[:60]}")
    if getattr(value, "layout", None) not in (None, getattr(sys.modules.get("torch"), "strided", None)) or getattr(
            value, "is_meta", False):
        raise MaskError(f"{where} must be a dense tensor with values. Received: layout={value.layout}, "
                        f"device={value.device}")
    if not _real_dtype(value):
        raise MaskError(f"{where} must have a real dtype (bool, integer or float). Received: dtype={value.dtype}")
    if shape is not None and tuple(value.shape) != tuple(shape):
        raise MaskError(f"{where} has the wrong shape. Expected {tuple(shape)}. "
                        f"Received: shape={tuple(value.shape)}")
    bad = (value != 0) & (value != 1)
    if bad.any():
        others = value[bad]
        examples = (np.unique(others) if isinstance(others, np.ndarray) else others.unique())[:3].tolist()
        raise MaskError(f"{where} must hold only 0 and 1. Received: {int(bad.sum())} other values, such as "
                        f"{examples}")


def check_masks(masks: Any, shapes: Shapes | None = None, *, source: str = "masks",
                layers: str = "a layer with a weight in the model") -> dict[str, dict[str, Any]]:
    """Check ``masks`` and return them as ``{layer_name: {'weight': mask, 'bias': mask or None}}``.

    Args:
        masks: the masks to check, as :func:`load_masks` or ``Pruner.get_masks()`` return them.
        shapes: the model's parameters that masks may cover; None checks the masks on their own.
        source: where the masks came from (a file path), to begin messages with.
        layers: what the layers in ``shapes`` are, for the message about a layer not among them.

    Raises:
        MaskError: not a mapping of layer names to ``{'weight', 'bias'}`` mappings; a key other than those; a
            mask that is not a 0/1 tensor of a real dtype; given ``shapes``, a layer the model lacks (or that has
            no bias for a bias mask) or a mask of another shape than its parameter.
    """
    if not isinstance(masks, Mapping):
        raise MaskError(f"{source}: Expected masks as {{layer_name: {{'weight': mask, 'bias': mask or None}}}}. "
                        f"Received: {type(masks).__name__}")
    checked = {}
    for name, entry in masks.items():
        if not isinstance(name, str) or not isinstance(entry, Mapping):
            raise MaskError(f"{source}: Expected each layer name (a string) to map to {{'weight': mask, 'bias': "
                            f"mask or None}}. Received: {name!r}: {type(entry).__name__}")
        unknown = [key for key in entry if key not in MASK_KEYS]
        if unknown or "weight" not in entry:
            raise MaskError(f"{source}: layer {name!r}: Expected the keys 'weight' and, optionally, 'bias'. "
                            f"Received: keys {list(entry)}")
        if shapes is not None and name not in shapes:
            raise MaskError(f"{source}: the masks name layer {name!r}, which is not {layers}. Expected masks "
                            f"computed for this model, for layers among {sorted(shapes)[:8]}"
                            f"{' ...' if len(shapes) > 8 else ''}")
        for key in MASK_KEYS:
            mask = entry.get(key)
            if key == "bias" and mask is None:
                continue
            target = shapes[name].get(key) if shapes is not None else None
            if shapes is not None and target is None:
                raise MaskError(f"{source}: layer {name!r} has no {key} to mask. Received: a {key} mask")
            check_mask(mask, f"{source}: the {key} mask of layer {name!r}", target)
        checked[name] = {"weight": entry["weight"], "bias": entry.get("bias")}
    return checked


def _load_npz(path: str) -> dict[str, dict[str, Any]]:
    masks: dict[str, dict[str, Any]] = {}
    with np.load(path, allow_pickle=False) as archive:
        for key in archive.files:
            layer, _, kind = key.rpartition(NPZ_SEPARATOR)
            if not layer or kind not in MASK_KEYS:
                raise MaskError(f"{path}: Expected arrays named '<layer>{NPZ_SEPARATOR}weight' or "
                                f"'<layer>{NPZ_SEPARATOR}bias'. Received: {key!r}")
            masks.setdefault(layer, {})[kind] = archive[key]
    return masks


def _load_torch(path: str) -> Any:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def load_masks(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Read a mask file written by ``export_model(mask_path=...)`` and check it with :func:`check_masks`.

    Returns:
        ``{layer_name: {'weight': mask, 'bias': mask or None}}``: torch tensors for a PyTorch
        file, numpy arrays for a Keras ``.npz`` file.

    Raises:
        FileFormatError: the file is missing, damaged, or not a mask file slimkit wrote (or holds code, which is
            never run: files are read with weights-only loading).
        MaskError: the file holds something other than 0/1 masks.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileFormatError(f"Expected an existing mask file. Received: path={path!r}")
    try:
        if not zipfile.is_zipfile(path):
            raise FileFormatError(f"Expected a mask file written by export_model (a torch or .npz archive). "
                                  f"Received: path={path!r}, which is neither")
        with zipfile.ZipFile(path) as archive:
            is_npz = all(name.endswith(".npy") for name in archive.namelist())
        masks = _load_npz(path) if is_npz else _load_torch(path)
    except SlimkitError:
        raise
    except Exception as error:  # any failure to parse the archive: the file is damaged or not ours
        raise FileFormatError(f"not a valid mask file: {path} ({type(error).__name__}: {str(error)[:300]}). Mask "
                              f"files are read with weights-only loading: no code in a file is executed.") from None
    return check_masks(masks, source=path)
