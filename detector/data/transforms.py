"""Detection transforms ``(image, target) -> (image, target)`` and padded batching.

Targets keep the bookkeeping needed to map detections back to the original image: ``scale``
(resized / original, one factor for both axes) and ``flipped``. Resizing scales boxes by exactly
``scale`` and sizes the image ``resized_size(orig_size, scale)``, so ``to_original_pixels`` inverts
it exactly.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

Target = dict[str, Any]
Transform = Callable[[Tensor, Target], tuple[Tensor, Target]]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resized_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """(H, W) of an image of ``size`` (H, W) resized by ``scale``."""
    return round(size[0] * scale), round(size[1] * scale)


class _TransformRandom:
    """A ``random.Random`` for one transform that DataLoader workers reseed from their torch seed.

    Forked workers inherit the same generator state, so without reseeding every worker (and every
    epoch, when workers restart) would replay the same draws. The worker seed differs per worker and
    epoch and follows ``torch.manual_seed``; ``salt`` keeps transforms given the same seed apart.
    """

    def __init__(self, seed: int | None, salt: str) -> None:
        base = seed if seed is not None else random.SystemRandom().getrandbits(64)
        self._key = f"{salt}/{base}"
        self._rng = random.Random(self._key)
        self._worker_seed: int | None = None

    def __call__(self) -> random.Random:
        info = torch.utils.data.get_worker_info()
        if info is not None and info.seed != self._worker_seed:
            self._worker_seed = info.seed
            self._rng = random.Random(f"{self._key}/{info.seed}")
        return self._rng


class ResizeShortSide:
    """Resize so the short side is drawn uniformly from ``short_sides`` (inclusive; an int is fixed),
    reducing the scale when the long side would exceed ``max_size``."""

    def __init__(self, short_sides: tuple[int, int] | int, max_size: int, seed: int | None = None) -> None:
        low, high = (short_sides, short_sides) if isinstance(short_sides, int) else short_sides
        if not 0 < low <= high:
            raise ValueError(f"short_sides: expected 0 < low <= high, got {short_sides}")
        if max_size <= 0:
            raise ValueError(f"max_size: expected a positive number of pixels, got {max_size}")
        self.short_sides = (low, high)
        self.max_size = max_size
        self._random = _TransformRandom(seed, "resize")

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        height, width = image.shape[-2:]
        short = self._random().randint(*self.short_sides)
        scale = min(short / min(height, width), self.max_size / max(height, width))
        image = F.interpolate(
            image[None], size=resized_size((height, width), scale), mode="bilinear", align_corners=False,
            antialias=False,
        )[0]
        return image, {**target, "boxes": target["boxes"] * scale, "scale": target["scale"] * scale}


class RandomHorizontalFlip:
    """Mirror the image and its boxes with probability ``p``; toggles ``target["flipped"]``."""

    def __init__(self, p: float = 0.5, seed: int | None = None) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p: expected a probability in [0, 1], got {p}")
        self.p = p
        self._random = _TransformRandom(seed, "flip")

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        if self._random().random() >= self.p:
            return image, target
        return image.flip(-1), {
            **target,
            "boxes": flip_boxes(target["boxes"], image.shape[-1]),
            "flipped": not target["flipped"],
        }


def flip_boxes(boxes: Tensor, width: float) -> Tensor:
    """xyxy boxes mirrored in an image ``width`` wide: x1' = W - x2, x2' = W - x1."""
    return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)


class Normalize:
    """Subtract the per-channel mean and divide by the std (ImageNet statistics by default)."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        return (image - self.mean) / self.std, target


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        for transform in self.transforms:
            image, target = transform(image, target)
        return image, target


def collate_padded(
    batch: Sequence[tuple[Tensor, Target]], size_divisible: int = 32
) -> tuple[Tensor, list[tuple[int, int]], list[Target]]:
    """Zero-pad images (bottom and right) to the batch's largest size rounded up to a multiple of
    ``size_divisible``, so every pyramid level divides evenly; returns the unpadded sizes too."""
    images = [image for image, _ in batch]
    sizes = [(image.shape[-2], image.shape[-1]) for image in images]
    height = -(-max(h for h, _ in sizes) // size_divisible) * size_divisible
    width = -(-max(w for _, w in sizes) // size_divisible) * size_divisible
    padded = images[0].new_zeros(len(images), images[0].shape[0], height, width)
    for slot, image in zip(padded, images):
        slot[:, : image.shape[-2], : image.shape[-1]].copy_(image)
    return padded, sizes, [target for _, target in batch]


def train_transforms(
    short_sides: tuple[int, int] | int, max_size: int, flip_prob: float = 0.5, seed: int | None = None
) -> Compose:
    """Multi-scale resize, random flip, normalize. The flip follows the resize, as
    ``to_original_pixels`` assumes when it undoes a flip in the resized frame."""
    return Compose(
        [ResizeShortSide(short_sides, max_size, seed), RandomHorizontalFlip(flip_prob, seed), Normalize()]
    )
