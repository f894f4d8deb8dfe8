"""Reading mask files back, safely (no code in a file is ever executed).

PyTorch masks are written with ``torch.save`` and read with ``torch.load(weights_only=True)``;
Keras masks are ``.npz`` archives (keys ``'<layer>::weight'`` / ``'<layer>::bias'``) read with
``allow_pickle=False``.

Example:

>>> import os, tempfile, torch
>>> from slimkit import load_masks
>>> path = os.path.join(tempfile.mkdtemp(), 'mask.pth')
>>> torch.save({'fc': {'weight': torch.ones(2, 2), 'bias': None}}, path)
>>> load_masks(path)['fc']['weight'].shape
torch.Size([2, 2])
"""

from __future__ import annotations

import os
import zipfile
from typing import Any

from slimkit.errors import SlimkitError

NPZ_SEPARATOR = "::"


def _load_npz(path: str) -> dict[str, dict[str, Any]]:
    import numpy as np

    masks: dict[str, dict[str, Any]] = {}
    with np.load(path, allow_pickle=False) as archive:
        for key in archive.files:
            layer, _, kind = key.rpartition(NPZ_SEPARATOR)
            masks.setdefault(layer, {"weight": None, "bias": None})[kind] = archive[key]
    return masks


def load_masks(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Read a mask file written by ``export_model(mask_path=...)``.

    Returns:
        ``{layer_name: {'weight': mask, 'bias': mask or None}}``: torch tensors for a PyTorch
        file, numpy arrays for a Keras ``.npz`` file.

    Raises:
        SlimkitError: the file is missing, or is not a mask file slimkit wrote.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise SlimkitError(f"Expected an existing mask file. Received: path={path!r}")
    if not zipfile.is_zipfile(path):
        raise SlimkitError(f"Expected a mask file written by export_model (a torch or .npz archive). "
                           f"Received: path={path!r}, which is neither")
    with zipfile.ZipFile(path) as archive:
        is_npz = all(name.endswith(".npy") for name in archive.namelist())
    if is_npz:
        return _load_npz(path)
    import pickle

    import torch

    try:
        masks = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError) as error:
        raise SlimkitError(f"Could not read masks from {path!r} with weights-only loading (no code is "
                           f"executed from a file): {error}") from None
    if not isinstance(masks, dict) or not all(isinstance(v, dict) and "weight" in v for v in masks.values()):
        raise SlimkitError(f"Expected {{layer_name: {{'weight': mask, 'bias': mask}}}} in {path!r}. "
                           f"Received: an object of type {type(masks).__name__}")
    return masks
