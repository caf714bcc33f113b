"""COCO-format detection datasets (COCO, Objects365 v1/v2), validated once and served as tensors.

Every record is checked when the file is read, so a bad annotation fails at start-up with the file,
list index and field named, not hours into training. Images missing on disk, empty or not readable as
images are skipped and boxes that cannot be trained on are dropped or clipped, each reported once with
counts.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO
from torch import Tensor

from nas_errors import UserError

_MISSING = object()
_PATCH_DIR = re.compile(r"patch\d+")
_MAX_EXAMPLES = 5


class DatasetError(UserError):
    """A malformed annotation file; the message names the file, the list and index, and the field."""


@dataclass(frozen=True)
class LoadReport:
    """What loading found. Box counts cover the images kept (those present on disk).

    ``num_boxes`` is the boxes served in targets; ``num_crowd_boxes`` counts valid crowd boxes, which
    are removed from targets when ``train=True``. ``has_area`` / ``has_iscrowd`` say whether every
    annotation carried the field: without ``area`` the small/medium/large APs use box area ``w * h``
    instead of the (mask) area the file would have given.
    """

    num_images: int
    num_missing_images: int
    missing_examples: list[str]
    num_unreadable_images: int
    """Listed images on disk that are empty or not an image PIL can read (e.g. an HTML error page)."""
    unreadable_examples: list[str]
    num_boxes: int
    num_dropped_boxes: int
    num_clipped_boxes: int
    num_crowd_boxes: int
    has_area: bool
    has_iscrowd: bool


def coco_api(dataset: dict[str, Any]) -> COCO:
    """A pycocotools ``COCO`` over an already parsed dict, without re-reading a file or printing."""
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def objects365_v2_path(image_root: Path, file_name: str) -> Path:
    """Where an Objects365 v2 image lives: ``image_root/patchN/<basename>``.

    v2 ``file_name``s such as ``images/v2/patch8/objects365_v2_00908726.jpg`` name a folder layout
    that differs from how the archives unpack (``patchN/`` directly under the root). The ``patchN``
    component is taken from the file name; a name without one maps to ``image_root/<basename>``.
    """
    parts = PurePosixPath(file_name).parts
    patch = next((part for part in reversed(parts[:-1]) if _PATCH_DIR.fullmatch(part)), None)
    return image_root / patch / parts[-1] if patch else image_root / parts[-1]


class CocoDetection(torch.utils.data.Dataset):
    """Images as float32 [3, H, W] in [0, 1] with targets in the image's pixels (see ``__getitem__``).

    Categories map to contiguous labels 1..K by sorted category id, because Objects365 v1 train and
    val list their categories in different orders; 0 is the background.
    """

    def __init__(
        self,
        ann_file: str | Path,
        image_root: str | Path,
        transforms: Callable[[Tensor, dict[str, Any]], tuple[Tensor, dict[str, Any]]] | None = None,
        train: bool = True,
        rewrite_objects365_v2_paths: bool = False,
    ) -> None:
        self.ann_file = Path(ann_file)
        self.image_root = Path(image_root)
        self.transforms = transforms
        self.train = train
        self._dataset = _read_json(self.ann_file)
        parsed = _Parser(str(self.ann_file), self._dataset)
        self.categories: list[dict[str, Any]] = parsed.categories
        self.category_id_to_label = {cat["id"]: label for label, cat in enumerate(self.categories, 1)}
        self.label_to_category_id = {label: cat_id for cat_id, label in self.category_id_to_label.items()}
        self.class_names: list[str] = [cat["name"] for cat in self.categories]
        missing, unreadable = self._locate_images(parsed.images, rewrite_objects365_v2_paths)
        num_dropped, num_clipped, num_crowd = self._build_targets(parsed.annotations)
        self.report = LoadReport(
            num_images=len(self._images),
            num_missing_images=len(missing),
            missing_examples=missing[:_MAX_EXAMPLES],
            num_unreadable_images=len(unreadable),
            unreadable_examples=unreadable[:_MAX_EXAMPLES],
            num_boxes=len(self._boxes),
            num_dropped_boxes=num_dropped,
            num_clipped_boxes=num_clipped,
            num_crowd_boxes=num_crowd,
            has_area=parsed.has_area,
            has_iscrowd=parsed.has_iscrowd,
        )

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    @property
    def image_ids(self) -> list[int]:
        """COCO ids of the images served, in dataset order."""
        return [image["id"] for image in self._images]

    def __len__(self) -> int:
        return len(self._images)

    def labels_per_image(self) -> list[np.ndarray]:
        """Each served image's box labels (1..K, one per box served in its target)."""
        return np.split(self._labels, self._offsets[1:-1])

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Any]]:
        """``(image, target)``; target holds ``boxes`` (xyxy), ``labels``, ``iscrowd``, ``image_id``,
        ``orig_size`` (H, W), ``scale`` (resized / original) and ``flipped``."""
        info, path = self._images[index], self._paths[index]
        image = _load_rgb(path, info, self.ann_file)
        start, stop = self._offsets[index], self._offsets[index + 1]
        target = {
            "boxes": torch.from_numpy(self._boxes[start:stop].copy()),
            "labels": torch.from_numpy(self._labels[start:stop].copy()),
            "iscrowd": torch.from_numpy(self._crowd[start:stop].copy()),
            "image_id": info["id"],
            "orig_size": (image.shape[1], image.shape[2]),
            "scale": 1.0,
            "flipped": False,
        }
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    @cached_property
    def coco(self) -> COCO:
        """Ground truth for pycocotools, from the parsed file restricted to the images served.

        Annotations are the file's own (not clipped or dropped), so scores compare with published
        numbers; a missing ``iscrowd`` is 0 and a missing ``area`` is the box area.
        """
        kept = {image["id"] for image in self._images}
        if len(kept) == len(self._dataset["images"]):
            return coco_api(self._dataset)
        return coco_api(
            {
                **self._dataset,
                "images": self._images,
                "annotations": [ann for ann in self._dataset["annotations"] if ann["image_id"] in kept],
            }
        )

    # -- construction --------------------------------------------------------------------------------

    def _locate_images(self, images: list[dict[str, Any]], rewrite_v2: bool) -> tuple[list[str], list[str]]:
        """Resolve paths and keep the images on disk that read as images, listing each folder once
        instead of a ``stat`` per image (much faster on network file systems with 10^6 images) and
        reading only the header of the ones present; returns the missing and the unreadable names."""
        paths = [
            objects365_v2_path(self.image_root, image["file_name"])
            if rewrite_v2
            else self.image_root / image["file_name"]
            for image in images
        ]
        present = _present(paths)
        readable = [ok and _readable(path) for path, ok in zip(paths, present)]
        self._images = [image for image, ok in zip(images, readable) if ok]
        self._paths = [path for path, ok in zip(paths, readable) if ok]
        missing = [image["file_name"] for image, ok in zip(images, present) if not ok]
        unreadable = [image["file_name"] for image, ok, good in zip(images, present, readable) if ok and not good]
        problems = []
        if missing:
            problems.append(
                f"{len(missing)} of {len(images)} listed images are missing under {self.image_root}, "
                f"e.g. {missing[:_MAX_EXAMPLES]}"
            )
        if unreadable:
            problems.append(
                f"{len(unreadable)} of {len(images)} listed images are empty or not readable as images, "
                f"e.g. {unreadable[:_MAX_EXAMPLES]}"
            )
        if problems:
            warnings.warn(f"{self.ann_file}: {'; '.join(problems)}; they are skipped", stacklevel=3)
        return missing, unreadable

    def _build_targets(self, annotations: list[dict[str, Any]]) -> tuple[int, int, int]:
        """Boxes (xyxy, clipped), labels and crowd flags of the kept images in flat arrays grouped
        by image, with offsets; returns the numbers of dropped, clipped and crowd boxes."""
        position = {image["id"]: i for i, image in enumerate(self._images)}
        anns = [ann for ann in annotations if ann["image_id"] in position]
        image_index = np.array([position[ann["image_id"]] for ann in anns], dtype=np.int64)
        xywh = np.array([ann["bbox"] for ann in anns], dtype=np.float64).reshape(-1, 4)
        labels = np.array([self.category_id_to_label[ann["category_id"]] for ann in anns], dtype=np.int64)
        crowd = np.array([ann["iscrowd"] for ann in anns], dtype=np.int64)
        sizes = np.array([(image["width"], image["height"]) for image in self._images], dtype=np.float64)
        boxes, valid, clipped = _clip_boxes(xywh, sizes.reshape(-1, 2)[image_index])
        keep = valid & ~((crowd == 1) & self.train)
        order = np.argsort(image_index[keep], kind="stable")
        self._boxes = boxes[keep][order].astype(np.float32)
        self._labels = labels[keep][order]
        self._crowd = crowd[keep][order]
        counts = np.bincount(image_index[keep], minlength=len(position))
        self._offsets = np.concatenate([[0], np.cumsum(counts)])
        num_dropped, num_clipped = int((~valid).sum()), int((clipped & valid).sum())
        if num_dropped or num_clipped:
            warnings.warn(
                f"{self.ann_file}: dropped {num_dropped} boxes with no area inside their image, "
                f"clipped {num_clipped} boxes to their image",
                stacklevel=3,
            )
        return num_dropped, num_clipped, int(((crowd == 1) & valid).sum())


def annotation_labels(ann_file: str | Path) -> tuple[list[str], list[np.ndarray]]:
    """Class names in label order and every listed image's non-crowd box labels, from the file alone.

    Boxes are kept as ``CocoDetection(train=True)`` keeps them, but no image is looked for on disk,
    so sampling statistics can be computed where only the annotations are.
    """
    path = Path(ann_file)
    parsed = _Parser(str(path), _read_json(path))
    label_of = {category["id"]: label for label, category in enumerate(parsed.categories, 1)}
    position = {image["id"]: index for index, image in enumerate(parsed.images)}
    anns = parsed.annotations
    image_index = np.array([position[ann["image_id"]] for ann in anns], dtype=np.int64)
    sizes = np.array([(image["width"], image["height"]) for image in parsed.images], dtype=np.float64)
    xywh = np.array([ann["bbox"] for ann in anns], dtype=np.float64).reshape(-1, 4)
    _, valid, _ = _clip_boxes(xywh, sizes.reshape(-1, 2)[image_index])
    keep = valid & (np.array([ann["iscrowd"] for ann in anns], dtype=np.int64) == 0)
    labels = np.array([label_of[ann["category_id"]] for ann in anns], dtype=np.int64)
    order = np.argsort(image_index[keep], kind="stable")
    counts = np.bincount(image_index[keep], minlength=len(parsed.images))
    per_image = np.split(labels[keep][order], np.cumsum(counts)[:-1])
    return [category["name"] for category in parsed.categories], per_image


def _clip_boxes(xywh: np.ndarray, image_wh: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """xyxy boxes clipped to their image; ``valid``: positive size before and after clipping."""
    xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    limits = np.concatenate([image_wh, image_wh], axis=1)
    clipped_xyxy = np.clip(xyxy, 0.0, limits)
    positive = (xywh[:, 2] > 0) & (xywh[:, 3] > 0)
    inside = (clipped_xyxy[:, 2] > clipped_xyxy[:, 0]) & (clipped_xyxy[:, 3] > clipped_xyxy[:, 1])
    clipped = (clipped_xyxy != xyxy).any(axis=1)
    return clipped_xyxy, positive & inside, clipped


def _present(paths: list[Path]) -> list[bool]:
    listings: dict[Path, set[str]] = {}
    for path in paths:
        if path.parent not in listings:
            try:
                listings[path.parent] = set(os.listdir(path.parent))
            except OSError:
                listings[path.parent] = set()
    return [path.name in listings[path.parent] for path in paths]


def _readable(path: Path) -> bool:
    """PIL recognises the file as an image from its header (a 0-byte file or an HTML page it does not)."""
    try:
        with Image.open(path):
            return True
    except (OSError, Image.DecompressionBombError):  # UnidentifiedImageError is an OSError
        return False


def _load_rgb(path: Path, info: dict[str, Any], ann_file: Path) -> Tensor:
    """RGB float32 [3, H, W] in [0, 1]; grayscale, palette and RGBA images are converted.

    A size that disagrees with the annotation file would silently misplace every box, so it fails.
    """
    try:
        with Image.open(path) as image:
            rgb = np.array(image.convert("RGB"))
    except (OSError, Image.DecompressionBombError) as error:  # e.g. a truncated file
        raise DatasetError(f"{path}: cannot decode image id {info['id']} of {ann_file}: {error}") from None
    height, width = rgb.shape[:2]
    if (width, height) != (info["width"], info["height"]):
        raise DatasetError(
            f"{path}: image is {width}x{height} pixels but {ann_file} gives width x height "
            f"{info['width']}x{info['height']} for image id {info['id']}"
        )
    return torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255.0)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
    except json.JSONDecodeError as error:
        raise DatasetError(
            f"{path}: invalid JSON at line {error.lineno}, column {error.colno}: {error.msg}"
        ) from None
    except OSError as error:
        raise DatasetError(f"{path}: cannot read: {error.strerror}") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a JSON object at the top level, got {type(data).__name__}")
    return data


def _short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _is_positive(value: Any) -> bool:
    return _is_number(value) and value > 0


def _is_box(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 4 and all(_is_number(v) for v in value)


class _Parser:
    """Checks every record of a COCO dict once, naming ``file: list[index].field`` on error.

    Fills ``iscrowd`` (0) and ``area`` (box area) in place where missing, so pycocotools can
    evaluate against the same dict.
    """

    def __init__(self, file: str, data: dict[str, Any]) -> None:
        self.file = file
        self.images = self._records(data, "images", self._check_image)
        self._image_ids = self._unique_ids("images", self.images)
        categories = self._records(data, "categories", self._check_category)
        self._category_ids = self._unique_ids("categories", categories)
        self.categories = sorted(categories, key=lambda category: category["id"])
        self.has_area = self.has_iscrowd = True
        self.annotations = self._records(data, "annotations", self._check_annotation)
        self._unique_ids("annotations", self.annotations)

    def _records(self, data: dict[str, Any], key: str, check: Callable[[str, dict], None]) -> list[dict]:
        if key not in data:
            raise DatasetError(f"{self.file}: {key}: missing")
        records = data[key]
        if not isinstance(records, list):
            raise DatasetError(f"{self.file}: {key}: expected a list, got {_short_repr(records)}")
        for index, record in enumerate(records):
            where = f"{key}[{index}]"
            if not isinstance(record, dict):
                raise DatasetError(f"{self.file}: {where}: expected an object, got {_short_repr(record)}")
            check(where, record)
        return records

    def _field(self, where: str, record: dict, key: str, ok: Callable[[Any], bool], expected: str) -> Any:
        if key not in record:
            raise DatasetError(f"{self.file}: {where}.{key}: missing")
        value = record[key]
        if not ok(value):
            raise DatasetError(f"{self.file}: {where}.{key}: expected {expected}, got {_short_repr(value)}")
        return value

    def _unique_ids(self, key: str, records: list[dict]) -> set[int]:
        seen: set[int] = set()
        for index, record in enumerate(records):
            if record["id"] in seen:
                raise DatasetError(f"{self.file}: {key}[{index}].id: duplicate id {record['id']}")
            seen.add(record["id"])
        return seen

    def _check_image(self, where: str, image: dict) -> None:
        self._field(where, image, "id", _is_int, "an integer")
        self._field(where, image, "file_name", lambda v: isinstance(v, str) and v != "", "a file name")
        self._field(where, image, "width", _is_positive, "a positive number")
        self._field(where, image, "height", _is_positive, "a positive number")

    def _check_category(self, where: str, category: dict) -> None:
        self._field(where, category, "id", _is_int, "an integer")
        self._field(where, category, "name", lambda v: isinstance(v, str), "a string")

    def _check_annotation(self, where: str, ann: dict) -> None:
        self._field(where, ann, "id", _is_int, "an integer")
        image_id = self._field(where, ann, "image_id", _is_int, "an integer")
        category_id = self._field(where, ann, "category_id", _is_int, "an integer")
        bbox = self._field(where, ann, "bbox", _is_box, "4 numbers [x, y, w, h]")
        if image_id not in self._image_ids:
            raise DatasetError(f"{self.file}: {where}.image_id: no image with id {image_id}")
        if category_id not in self._category_ids:
            raise DatasetError(f"{self.file}: {where}.category_id: no category with id {category_id}")
        self.has_iscrowd &= "iscrowd" in ann
        self.has_area &= "area" in ann
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", bbox[2] * bbox[3])
        self._field(where, ann, "iscrowd", lambda v: _is_int(v) and v in (0, 1), "0 or 1")
        self._field(where, ann, "area", _is_number, "a number")
