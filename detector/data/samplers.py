"""Training image samplers for long-tailed, many-class data.

Each sampler is a per-image weight plus a way to draw an epoch from it:

- ``uniform``: a fresh permutation of all images every epoch;
- ``class_diversity`` (the 2019 solution's class diversity sensitive sampling):
  ``W_i = ln(C_i) + eps * sum_c P_c H_c`` with C_i the distinct classes of image i, P_c the share of
  all boxes that are of class c and H_c = 1 when image i contains c; images are drawn with
  replacement with probability proportional to W_i;
- ``class_aware`` (Baidu's released code): ``w_i = sum over the classes c of image i of 1 / n_c``,
  n_c = images containing c, drawn with replacement;
- ``repeat_factor`` (LVIS): ``r_c = max(1, sqrt(t / f_c))``, f_c = fraction of images containing c,
  ``r_i = max over the classes of image i`` (1 without boxes); each epoch repeats image i
  ``floor(r_i)`` times plus once more with probability ``frac(r_i)``, shuffled.

Images without boxes weigh 0 under class_diversity and class_aware (they teach no class).

``TrainingSampler`` turns one of them into an endless stream split across data-parallel processes:
process ``rank`` takes every ``world_size``-th element of one shared stream, like
``DistributedSampler``, and epoch ``e`` is drawn from a generator seeded by ``(seed, e)``. The stream
is a pure function of the seed, so a resumed run restarts it at the number of samples already used.
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np
import torch

from detector.config import SAMPLER_KINDS, SamplerKind
from nas_errors import UserError



def sampling_weights(
    kind: str,
    image_labels: Sequence[np.ndarray],
    num_classes: int,
    diversity_eps: float = 1.0,
    repeat_threshold: float = 0.001,
) -> np.ndarray:
    """Per-image weights (float64) from each image's box labels (1..num_classes, one per box).

    For ``repeat_factor`` the weight is the repeat factor r_i, the expected draws per epoch.
    """
    if kind not in SAMPLER_KINDS:
        raise UserError(f"sampler.kind: expected one of {', '.join(SAMPLER_KINDS)}, got {kind!r}")
    num_images = len(image_labels)
    if kind == "uniform":
        return np.ones(num_images)
    present = [np.unique(labels) for labels in image_labels]
    if kind == "class_diversity":
        boxes = np.bincount(np.concatenate([np.zeros(0, np.int64), *image_labels]), minlength=num_classes + 1)
        prior = boxes / max(boxes.sum(), 1)
        return np.array(
            [math.log(len(c)) + diversity_eps * prior[c].sum() if len(c) else 0.0 for c in present]
        )
    images_with = np.bincount(np.concatenate([np.zeros(0, np.int64), *present]), minlength=num_classes + 1)
    if kind == "class_aware":
        return np.array([(1.0 / images_with[c]).sum() for c in present])
    fraction = images_with / max(num_images, 1)
    with np.errstate(divide="ignore"):
        class_factor = np.maximum(1.0, np.sqrt(repeat_threshold / fraction))
    return np.array([class_factor[c].max() if len(c) else 1.0 for c in present])


class TrainingSampler(torch.utils.data.Sampler):
    """Endless ``(position, index)`` pairs for one process; ``position`` numbers the shared stream.

    ``start`` is how many pairs this process has already consumed (``iteration * batch_size`` on
    resume). The position is unique across processes and keys the sample's augmentation.
    """

    def __init__(
        self,
        kind: str,
        weights: np.ndarray,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        start: int = 0,
    ) -> None:
        if kind not in SAMPLER_KINDS:
            raise UserError(f"sampler.kind: expected one of {', '.join(SAMPLER_KINDS)}, got {kind!r}")
        weights = np.asarray(weights, dtype=np.float64)
        if len(weights) == 0 or not np.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
            raise UserError(
                f"sampler.kind: {kind} gives no image a positive weight (do the training images have boxes?)"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank: expected 0 <= rank < world_size ({world_size}), got {rank}")
        self.kind = kind
        self.weights = weights
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start = start

    def epoch(self, epoch: int) -> np.ndarray:
        """The image indices of one epoch of the shared stream."""
        rng = np.random.default_rng([self.seed, epoch])
        count = len(self.weights)
        if self.kind == "uniform":
            return rng.permutation(count)
        if self.kind == "repeat_factor":
            whole = np.floor(self.weights)
            repeats = (whole + (rng.random(count) < self.weights - whole)).astype(np.int64)
            return rng.permutation(np.repeat(np.arange(count), repeats))
        return rng.choice(count, size=count, replace=True, p=self.weights / self.weights.sum())

    def __iter__(self) -> Iterator[tuple[int, int]]:
        position = self.start * self.world_size + self.rank
        epoch, epoch_start = 0, 0
        while True:
            indices = self.epoch(epoch)
            while position < epoch_start + len(indices):
                yield position, int(indices[position - epoch_start])
                position += self.world_size
            epoch, epoch_start = epoch + 1, epoch_start + len(indices)


def class_exposure(weights: np.ndarray, image_labels: Sequence[np.ndarray], num_classes: int) -> np.ndarray:
    """Per class (index 1..K; 0 unused): the probability that one draw is an image containing it."""
    probability = np.asarray(weights, dtype=np.float64) / max(float(np.sum(weights)), 1e-300)
    exposure = np.zeros(num_classes + 1)
    for p, labels in zip(probability, image_labels):
        exposure[np.unique(labels)] += p
    return exposure
