"""Deterministic 224x224 natural-image inputs for PTQ benchmarks, offline: crops, scales and flips of the sample
images bundled with scikit-learn (``load_sample_images``: a temple and a flower) and scikit-image (``skimage.data``:
the 22 images its wheel ships, :data:`SKIMAGE_IMAGES`; grey ones repeated over three channels, alpha dropped).

scikit-image is in the ``bench`` extra (``pip install -c constraints.txt 'slimkit[bench]'``).

Example:

>>> from ptq_images import sample_crops
>>> batch = sample_crops(4, seed=0)
>>> tuple(batch.shape), float(batch.min()) >= 0.0, float(batch.max()) <= 1.0
((4, 3, 224, 224), True, True)
>>> len(photos())
24
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

SKIMAGE_IMAGES = ("astronaut", "brick", "camera", "cell", "chelsea", "clock", "coffee", "coins", "colorwheel", "grass",
                  "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "logo", "microaneurysms", "moon",
                  "page", "retina", "rocket", "stereo_motorcycle", "text")
"""The ``skimage.data`` images in the scikit-image 0.26 wheel (``cat`` is ``chelsea`` again; ``eagle``, ``lily``,
``skin`` and others are downloaded on first use, which this offline machine cannot)."""


def _rgb(image: np.ndarray) -> torch.Tensor:
    """``(3, H, W)`` float in [0, 1] from a grey, RGB or RGBA array (uint8 or bool)."""
    image = np.asarray(image, np.float32) / (1.0 if image.dtype == bool else 255.0)
    image = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)


def photos() -> list[torch.Tensor]:
    """scikit-learn's two photographs, then :data:`SKIMAGE_IMAGES`, each ``(3, H, W)`` in [0, 1]."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    bundled = [getattr(skimage.data, name)() for name in SKIMAGE_IMAGES]
    return [_rgb(image) for image in load_sample_images().images] + [
        _rgb(image[0] if isinstance(image, tuple) else image) for image in bundled]


def sample_crops(count: int, seed: int = 0, size: int = 224) -> torch.Tensor:
    """``count`` images in [0, 1], ``(count, 3, size, size)``: for each, an image of :func:`photos`, a square crop of
    a random side (from ``size / 2``, or the short side when it is smaller, to the short side) at a random place,
    resized to ``size``, flipped left-right half the time. The same ``seed`` gives the same images."""
    images = photos()
    generator = torch.Generator().manual_seed(seed)
    out = torch.empty(count, 3, size, size)
    for index in range(count):
        image = images[int(torch.randint(len(images), (1,), generator=generator))]
        height, width = image.shape[1:]
        short = min(height, width)
        side = int(torch.randint(min(size // 2, short), short + 1, (1,), generator=generator))
        top = int(torch.randint(0, height - side + 1, (1,), generator=generator))
        left = int(torch.randint(0, width - side + 1, (1,), generator=generator))
        crop = image[:, top:top + side, left:left + side][None]
        crop = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
        if torch.rand((), generator=generator) < 0.5:
            crop = crop.flip(-1)
        out[index] = crop.clamp(0, 1)
    return out


def normalize(images: torch.Tensor, mean: tuple, std: tuple) -> torch.Tensor:
    """``(images - mean) / std`` per channel."""
    return (images - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
