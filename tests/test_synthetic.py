import hashlib
import json
import warnings
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from detector.data.coco import CocoDetection
from detector.data.synthetic import _Object, _visible, generate_synthetic_dataset, synthetic_classes

SIZE = 96
NUM_CLASSES = 10


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("synthetic")
    return generate_synthetic_dataset(out_dir, 300, 30, image_size=SIZE, num_classes=NUM_CLASSES, seed=0)


@pytest.fixture(scope="module")
def train_json(dataset):
    return json.loads(dataset.train_ann.read_text())


def _pixels(image_dir, data):
    return [np.asarray(Image.open(image_dir / image["file_name"])) for image in data["images"]]


def test_same_arguments_give_identical_files(tmp_path):
    runs = [generate_synthetic_dataset(tmp_path / name, 5, 3, 64, 6, seed=7) for name in ("a", "b")]
    other = generate_synthetic_dataset(tmp_path / "c", 5, 3, 64, 6, seed=8)
    for ann, images in (("train_ann", "train_images"), ("val_ann", "val_images")):
        a, b = (getattr(run, ann).read_bytes() for run in runs)
        assert a == b
        assert a != getattr(other, ann).read_bytes()
        data = json.loads(a)
        for x, y in zip(*(_pixels(getattr(run, images), data) for run in runs)):
            assert np.array_equal(x, y)


def test_val_images_are_not_train_images(dataset, train_json):
    val_json = json.loads(dataset.val_ann.read_text())

    def hashes(image_dir, data):
        return {hashlib.sha256(pixels.tobytes()).hexdigest() for pixels in _pixels(image_dir, data)}

    train, val = hashes(dataset.train_images, train_json), hashes(dataset.val_images, val_json)
    assert len(train) == 300 and len(val) == 30 and not train & val


def test_object_sizes_span_tiny_to_large(train_json):
    sides = np.array([np.sqrt(w * h) for _, _, w, h in (ann["bbox"] for ann in train_json["annotations"])])
    assert (sides < 8).sum() > 50 and (sides < 16).sum() > 200
    assert (sides > 0.5 * SIZE).sum() > 100


def test_boxes_are_inside_images_and_counts_are_crowded(train_json):
    for ann in train_json["annotations"]:
        x, y, w, h = ann["bbox"]
        assert 0 <= x < x + w <= SIZE and 0 <= y < y + h <= SIZE and ann["area"] == w * h
    per_image = Counter(ann["image_id"] for ann in train_json["annotations"])
    assert len(per_image) == 300 and max(per_image.values()) <= 12
    assert sum(per_image.values()) / 300 > 4


def test_objects_overlap(train_json):
    by_image = {}
    for ann in train_json["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann["bbox"])
    overlapping = sum(
        any(_intersection(a, b) > 0 for i, a in enumerate(boxes) for b in boxes[i + 1 :])
        for boxes in by_image.values()
    )
    assert overlapping > 150


def _intersection(a, b):
    width = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    height = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return max(width, 0) * max(height, 0)


def _block(x0, x1):
    mask = np.zeros((10, 10), dtype=bool)
    mask[:, x0:x1] = True
    return _Object(label=0, mask=mask, box=(x0, 0, x1, 10))


def _kept(*objects):
    """Indices, in drawing order, of the objects ``_visible`` keeps."""
    kept = _visible(list(objects), 10)
    return [i for i, obj in enumerate(objects) if any(obj is k for k in kept)]


def test_objects_more_than_80_percent_covered_by_later_ones_are_dropped():
    assert _kept(_block(0, 10), _block(0, 9)) == [1]  # 90% covered
    assert _kept(_block(0, 10), _block(0, 8)) == [0, 1]  # exactly 80%
    assert _kept(_block(0, 10), _block(0, 5), _block(4, 9)) == [1, 2]  # 90% by two objects together
    assert _kept(_block(0, 9), _block(0, 10)) == [1]  # fully hidden under a later object
    assert _kept(_block(0, 10), _block(0, 9), _block(0, 10)) == [2]


def test_classes_are_long_tailed_shape_colour_pairs(train_json):
    counts = Counter(ann["category_id"] for ann in train_json["annotations"])
    assert sorted(counts) == list(range(1, NUM_CLASSES + 1))
    assert max(counts.values()) >= 4 * min(counts.values())
    names = [category["name"] for category in train_json["categories"]]
    assert names == [f"{colour}_{shape}" for shape, colour in synthetic_classes(NUM_CLASSES)]
    shapes, colours = zip(*synthetic_classes(NUM_CLASSES))
    assert len(set(names)) == NUM_CLASSES
    assert len(set(shapes)) < NUM_CLASSES and len(set(colours)) < NUM_CLASSES  # classes share cues


def test_loads_through_coco_detection_without_warnings(dataset):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train = CocoDetection(dataset.train_ann, dataset.train_images)
        val = CocoDetection(dataset.val_ann, dataset.val_images, train=False)
    assert (len(train), len(val), train.num_classes) == (300, 30, NUM_CLASSES)
    assert train.report.num_dropped_boxes == train.report.num_clipped_boxes == 0
    image, target = val[0]
    assert image.shape == (3, SIZE, SIZE) and len(target["boxes"]) >= 1


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"num_classes: expected 1\.\.56 .*got 57"):
        generate_synthetic_dataset(tmp_path, 1, 1, 64, 57, seed=0)
    with pytest.raises(ValueError, match="image_size: expected at least 32 pixels, got 16"):
        generate_synthetic_dataset(tmp_path, 1, 1, 16, 3, seed=0)
