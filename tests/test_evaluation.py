import json
import math

import pytest
import torch

from detector.coco_eval import (
    coco_results_by_image,
    evaluate_detections,
    summary_lines,
    to_original_pixels,
    write_detections,
)
from detector.data.coco import CocoDetection
from detector.data.synthetic import generate_synthetic_dataset
from detector.data.transforms import Compose, RandomHorizontalFlip, ResizeShortSide

SIZE = 64  # no object reaches COCO's "large" (area > 96^2), so APl has no ground truth


@pytest.fixture(scope="module")
def val(tmp_path_factory):
    data = generate_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), 2, 12, SIZE, 6, seed=1)
    return CocoDetection(data.val_ann, data.val_images, train=False)


def _detections(coco, shift=0.0, image_ids=None):
    """Ground-truth boxes as score-1 detections, moved right by ``shift`` box widths."""
    anns = coco.loadAnns(coco.getAnnIds(imgIds=image_ids or []))
    return [
        {"image_id": a["image_id"], "category_id": a["category_id"], "score": 1.0,
         "bbox": [a["bbox"][0] + shift * a["bbox"][2], *a["bbox"][1:]]}
        for a in anns
    ]


def test_perfect_detections_score_one_and_missing_sizes_are_nan(val):
    metrics = evaluate_detections(val.coco, _detections(val.coco))
    assert set(metrics) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert metrics["AP"] == metrics["AP50"] == metrics["AP75"] == metrics["APs"] == metrics["APm"] == 1.0
    assert math.isnan(metrics["APl"])
    assert summary_lines(metrics)[0] == "AP    100.0" and summary_lines(metrics)[-1] == "APl   n/a"


def test_shifted_boxes_score_lower(val):
    # IoU of a box with itself moved by 0.3 widths is 0.7 / 1.3 = 0.54: a hit at 0.5 only (bar the
    # odd detection that lands on a neighbouring object of its class)
    metrics = evaluate_detections(val.coco, _detections(val.coco, shift=0.3))
    assert metrics["AP50"] > 0.95 and metrics["AP75"] == 0.0
    assert metrics["AP"] == pytest.approx(0.1, abs=0.01)


def test_no_detections_score_zero(val):
    metrics = evaluate_detections(val.coco, [])
    assert metrics["AP"] == metrics["AP50"] == metrics["APs"] == metrics["APm"] == 0.0
    assert math.isnan(metrics["APl"])


def test_evaluation_restricted_to_image_ids(val):
    half = val.image_ids[:6]
    detections = _detections(val.coco, image_ids=half)
    assert evaluate_detections(val.coco, detections, image_ids=half)["AP"] == 1.0
    assert evaluate_detections(val.coco, detections)["AP"] < 0.9


def test_detections_for_unknown_images_are_named(val):
    detections = _detections(val.coco)
    detections[3]["image_id"] = 999
    with pytest.raises(ValueError, match=r"detections\[3\]\.image_id: 999 is not in the ground truth"):
        evaluate_detections(val.coco, detections)


@pytest.mark.parametrize("flip_prob", [0.0, 1.0])
def test_detections_map_back_through_resize_and_flip(val, flip_prob):
    resize = ResizeShortSide((41, 97), max_size=120, seed=2)
    val.transforms = Compose([resize, RandomHorizontalFlip(flip_prob)])
    try:
        predictions, targets = [], []
        for image, target in (val[i] for i in range(len(val))):
            assert target["flipped"] is (flip_prob == 1.0)
            assert image.shape[-2:] == (round(SIZE * target["scale"]),) * 2
            scores = torch.ones(len(target["boxes"]))
            predictions.append({"boxes": target["boxes"], "scores": scores, "labels": target["labels"]})
            targets.append(target)
    finally:
        val.transforms = None
    assert len({target["scale"] for target in targets}) > 5
    detections = _in_original_pixels(predictions, targets, val.label_to_category_id)
    expected = _detections(val.coco)
    assert len(detections) == len(expected)
    for got, want in zip(detections, expected):
        assert (got["image_id"], got["category_id"]) == (want["image_id"], want["category_id"])
        assert got["score"] == 1.0
        assert got["bbox"] == pytest.approx(want["bbox"], abs=1e-3)
    assert evaluate_detections(val.coco, detections)["AP"] == 1.0


def test_detections_map_back_on_non_square_images():
    # the resized width round(53 * scale) is not 53 * scale: the flip is undone in the tensor's width
    boxes = torch.tensor([[0.0, 1.5, 10.25, 20.0], [30.0, 5.0, 53.0, 37.0]])
    expected = [[0.0, 1.5, 10.25, 18.5], [30.0, 5.0, 23.0, 32.0]]
    transform = Compose([ResizeShortSide((20, 90), max_size=100, seed=4), RandomHorizontalFlip(1.0)])
    original = {"boxes": boxes, "image_id": 1, "orig_size": (37, 53), "scale": 1.0, "flipped": False}
    for _ in range(10):
        image, target = transform(torch.zeros(3, 37, 53), original)
        prediction = {"boxes": target["boxes"], "scores": torch.ones(2), "labels": torch.tensor([1, 2])}
        detections = _in_original_pixels([prediction], [target], {1: 5, 2: 9})
        assert [d["category_id"] for d in detections] == [5, 9]
        for detection, bbox in zip(detections, expected):
            assert detection["bbox"] == pytest.approx(bbox, abs=1e-3)


def test_unknown_labels_are_named():
    prediction = {"boxes": torch.zeros(1, 4), "scores": torch.ones(1), "labels": torch.tensor([7])}
    target = {"image_id": 1, "scale": 1.0, "flipped": False, "orig_size": (10, 10)}
    with pytest.raises(ValueError, match=r"labels: no category for label 7"):
        _in_original_pixels([prediction], [target], {1: 3})


def _in_original_pixels(predictions, targets, label_to_category_id):
    """COCO results of network-input predictions, mapped back as the product's testing does."""
    by_image = {
        target["image_id"]: {**prediction, "boxes": to_original_pixels(prediction["boxes"], target)}
        for prediction, target in zip(predictions, targets)
    }
    return coco_results_by_image(by_image, label_to_category_id)


def test_write_detections_round_trips(tmp_path, val):
    detections = _detections(val.coco)
    path = tmp_path / "out" / "detections.json"
    write_detections(path, detections)
    assert json.loads(path.read_text()) == detections
