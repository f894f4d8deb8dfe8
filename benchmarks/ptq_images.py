"""Deterministic 224x224 natural-image inputs for PTQ benchmarks, offline: crops, scales and flips of
scikit-learn's two bundled sample photographs (``load_sample_images``: a temple and a flower, 640x427 each).

scikit-image's bundled sample images would add about 25 more scenes; scikit-image is not installed in this
environment, so only scikit-learn's two are used (see RESULTS_ptq.md).

Example:

>>> from ptq_images import sample_crops
>>> batch = sample_crops(4, seed=0)
>>> tuple(batch.shape), float(batch.min()) >= 0.0, float(batch.max()) <= 1.0
((4, 3, 224, 224), True, True)
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F


def _photos() -> list[torch.Tensor]:
    from sklearn.datasets import load_sample_images

    return [torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255 for image in load_sample_images().images]


def sample_crops(count: int, seed: int = 0, size: int = 224) -> torch.Tensor:
    """``count`` images in [0, 1], ``(count, 3, size, size)``: for each, a photo, a square crop of a random side
    (from ``size / 2`` to the photo's height) at a random place, resized to ``size``, flipped left-right half the
    time. The same ``seed`` gives the same images."""
    photos = _photos()
    generator = torch.Generator().manual_seed(seed)
    out = torch.empty(count, 3, size, size)
    for index in range(count):
        photo = photos[int(torch.randint(len(photos), (1,), generator=generator))]
        height, width = photo.shape[1:]
        side = int(torch.randint(size // 2, height + 1, (1,), generator=generator))
        top = int(torch.randint(0, height - side + 1, (1,), generator=generator))
        left = int(torch.randint(0, width - side + 1, (1,), generator=generator))
        crop = photo[:, top:top + side, left:left + side][None]
        crop = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
        if torch.rand((), generator=generator) < 0.5:
            crop = crop.flip(-1)
        out[index] = crop.clamp(0, 1)
    return out


def normalize(images: torch.Tensor, mean: tuple, std: tuple) -> torch.Tensor:
    """``(images - mean) / std`` per channel."""
    return (images - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
