"""The detector config of a ``DetectorTrainingConfig``, with the class count its dataset gives."""

from __future__ import annotations

import json

from detector.config import DetectorConfig
from detector.data.coco import DatasetError
from detector.engine.config import DetectorTrainingConfig


def dataset_num_classes(config: DetectorTrainingConfig) -> int:
    """Classes of the training set: the synthetic set's setting, else the annotation file's categories."""
    dataset = config.dataset
    if dataset.synthetic is not None:
        return dataset.synthetic.num_classes
    path = dataset.train_annotations
    try:
        categories = json.loads(path.read_text()).get("categories")
    except (OSError, json.JSONDecodeError) as error:
        raise DatasetError(f"{path}: cannot read the categories: {error}") from None
    if not isinstance(categories, list) or not categories:
        raise DatasetError(f"{path}: categories: expected a non-empty list")
    return len(categories)


def detector_config(config: DetectorTrainingConfig, num_classes: int | None = None) -> DetectorConfig:
    """``config.detector`` with ``num_classes`` filled in: the argument, the config's own value, or the
    training set's (``dataset_num_classes``)."""
    if num_classes is None:
        num_classes = config.detector.num_classes or dataset_num_classes(config)
    return config.detector.model_copy(update={"num_classes": num_classes})
