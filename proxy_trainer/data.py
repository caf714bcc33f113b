"""Resolve the proxy dataset's files, generating the synthetic dataset on first use."""

from __future__ import annotations

from detector.data.prepare import DatasetPaths, ensure_synthetic_dataset
from proxy_trainer.config import DatasetConfig

__all__ = ["DatasetPaths", "ensure_synthetic_dataset", "prepare_dataset"]


def prepare_dataset(config: DatasetConfig) -> DatasetPaths:
    if config.synthetic is None:
        return DatasetPaths(config.train_annotations, config.train_images, config.val_annotations, config.val_images)
    return ensure_synthetic_dataset(config.synthetic)
