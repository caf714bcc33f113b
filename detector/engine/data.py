"""The training data pipelines: the full trainer's (a sampler, position-keyed augmentation, DataLoader workers)
and the proxy's seeded shuffle; both end in padded batches."""

from __future__ import annotations

import random
from typing import Any, Iterator

import torch
from torch import Tensor

from detector.data.coco import CocoDetection
from detector.data.samplers import TrainingSampler, sampling_weights
from detector.data.transforms import Compose, Normalize, RandomHorizontalFlip, ResizeShortSide, collate_padded
from detector.engine.config import DetectorTrainingConfig


class AugmentedTrainSet(torch.utils.data.Dataset):
    """Multi-scale resize and horizontal flip with parameters drawn from ``(seed, position)``.

    Keying the draw by the sample's position in the sampler's stream, not by a generator that
    advances as samples are loaded, makes the augmentation independent of worker processes and of
    where a run was resumed.
    """

    def __init__(
        self,
        dataset: CocoDetection,
        short_sides: tuple[int, int],
        max_size: int,
        flip_probability: float,
        seed: int,
    ) -> None:
        if dataset.transforms is not None:
            raise ValueError("dataset: expected a CocoDetection without transforms")
        self.dataset = dataset
        self.short_sides = short_sides
        self.max_size = max_size
        self.flip_probability = flip_probability
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, dict[str, Any]]:
        position, index = key
        rng = random.Random(f"{self.seed}/{position}")
        short_side = rng.randint(*self.short_sides)
        flip = rng.random() < self.flip_probability
        transform = Compose(
            [
                ResizeShortSide(short_side, self.max_size, seed=0),
                RandomHorizontalFlip(1.0 if flip else 0.0, seed=0),
                Normalize(),
            ]
        )
        return transform(*self.dataset[index])


def build_train_loader(
    config: DetectorTrainingConfig, dataset: CocoDetection, rank: int, world_size: int, start_iteration: int
) -> torch.utils.data.DataLoader:
    """Endless batches for this process, starting where ``start_iteration`` left the stream."""
    train, sampler_config = config.train, config.dataset.sampler
    weights = sampling_weights(
        sampler_config.kind,
        dataset.labels_per_image(),
        dataset.num_classes,
        diversity_eps=sampler_config.diversity_eps,
        repeat_threshold=sampler_config.repeat_threshold,
    )
    sampler = TrainingSampler(
        sampler_config.kind, weights, train.seed, rank, world_size, start=start_iteration * train.batch_size
    )
    augmented = AugmentedTrainSet(dataset, train.short_sides, train.max_size, train.flip_probability, train.seed)
    return torch.utils.data.DataLoader(
        augmented,
        batch_size=train.batch_size,
        sampler=sampler,
        num_workers=config.dataset.num_workers,
        collate_fn=collate_padded,
        # Its own generator: creating the iterator must not draw from the global torch RNG.
        generator=torch.Generator().manual_seed(train.seed),
        persistent_workers=config.dataset.num_workers > 0,
    )


def shuffled_batches(dataset: CocoDetection, batch_size: int, seed: int) -> Iterator[tuple]:
    """Endless padded batches of a uniform shuffle, reshuffled every epoch from a seeded generator; the
    dataset's own transforms augment (the proxy's stream: one process, no sampler, no resume)."""
    generator = torch.Generator().manual_seed(seed)
    batch_size = min(batch_size, len(dataset))
    while True:
        order = torch.randperm(len(dataset), generator=generator).tolist()
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield collate_padded([dataset[i] for i in order[start : start + batch_size]])
