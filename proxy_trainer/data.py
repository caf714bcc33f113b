"""Resolve the proxy dataset's files, generating the synthetic dataset on first use."""

from __future__ import annotations

from detector.data.prepare import DatasetPaths
from detector.engine.config import DatasetConfig

__all__ = ["DatasetPaths", "prepare_dataset"]


def prepare_dataset(config: DatasetConfig) -> DatasetPaths:
    return config.paths()
