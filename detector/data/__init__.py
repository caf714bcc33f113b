"""Detection data: COCO-format datasets (COCO, Objects365), transforms, batching, a synthetic set."""

from detector.data.coco import (
    CocoDetection,
    DatasetError,
    LoadReport,
    annotation_labels,
    coco_api,
    objects365_v2_path,
)
from detector.data.synthetic import SyntheticDataset, generate_synthetic_dataset, synthetic_classes
from detector.data.transforms import (
    Compose,
    Normalize,
    RandomHorizontalFlip,
    ResizeShortSide,
    collate_padded,
    flip_boxes,
    resized_size,
    train_transforms,
)

__all__ = [
    "CocoDetection",
    "Compose",
    "DatasetError",
    "LoadReport",
    "annotation_labels",
    "Normalize",
    "RandomHorizontalFlip",
    "ResizeShortSide",
    "SyntheticDataset",
    "coco_api",
    "collate_padded",
    "flip_boxes",
    "generate_synthetic_dataset",
    "objects365_v2_path",
    "resized_size",
    "synthetic_classes",
    "train_transforms",
]
