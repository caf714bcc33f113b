"""COCO box evaluation: map network outputs back to original images and score them with pycocotools."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor

from detector.data.coco import coco_api
from detector.data.transforms import flip_boxes, resized_size

logger = logging.getLogger(__name__)

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def to_original_pixels(boxes: Tensor, target: Mapping[str, Any]) -> Tensor:
    """xyxy boxes (float64, CPU) in the original image's pixels, from the network input's pixels.

    A flip is undone in the resized frame, whose width is ``round(orig_w * scale)`` (the width of the
    tensor the flip mirrored, since the pipelines resize before flipping), then the boxes are divided
    by ``scale``; this inverts ``ResizeShortSide`` + ``RandomHorizontalFlip`` exactly.
    """
    boxes = boxes.detach().to("cpu", torch.float64)
    if target["flipped"]:
        boxes = flip_boxes(boxes, resized_size(target["orig_size"], target["scale"])[1])
    return boxes / target["scale"]


def coco_results(
    image_id: int, boxes: Tensor, scores: Tensor, labels: Tensor, label_to_category_id: Mapping[int, int]
) -> list[dict[str, Any]]:
    """COCO result dicts of one image's xyxy boxes (original pixels) with ``bbox`` as [x, y, w, h]."""
    boxes = boxes.detach().to("cpu", torch.float64)
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    results = []
    for box, score, label in zip(xywh, scores.detach().cpu().tolist(), labels.tolist()):
        if label not in label_to_category_id:
            raise ValueError(f"labels: no category for label {label}")
        results.append(
            {"image_id": int(image_id), "category_id": label_to_category_id[label], "bbox": box, "score": score}
        )
    return results


def coco_results_by_image(
    detections: Mapping[int, Mapping[str, Tensor]], label_to_category_id: Mapping[int, int]
) -> list[dict[str, Any]]:
    """COCO result dicts of per-image detections (image id -> xyxy ``boxes`` in original pixels,
    ``scores``, ``labels``)."""
    return [
        entry
        for image_id, found in detections.items()
        for entry in coco_results(image_id, found["boxes"], found["scores"], found["labels"], label_to_category_id)
    ]


def evaluate_detections(
    coco_gt: COCO, detections: Sequence[Mapping[str, Any]], image_ids: Sequence[int] | None = None
) -> dict[str, float]:
    """COCO box AP, AP50, AP75 and AP for small / medium / large objects.

    A metric is NaN when the ground truth has no object of that kind (pycocotools reports -1): a
    missing size bucket is not a zero score. Detections of no image score 0 wherever there is
    ground truth. pycocotools' printout goes to this module's logger at DEBUG level.
    """
    evaluator = COCOeval(coco_gt, _results_coco(coco_gt, detections), "bbox")
    if image_ids is not None:
        evaluator.params.imgIds = sorted(image_ids)
    printout = io.StringIO()
    with contextlib.redirect_stdout(printout):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    logger.debug("pycocotools:\n%s", printout.getvalue())
    return {name: math.nan if value < 0 else float(value) for name, value in zip(METRICS, evaluator.stats)}


def summary_lines(metrics: Mapping[str, float]) -> list[str]:
    """One ``name value`` line per metric, values in percent (``n/a`` for NaN)."""
    return [
        f"{name:<5} {'n/a' if math.isnan(metrics[name]) else f'{100 * metrics[name]:.1f}'}"
        for name in METRICS
    ]


def write_detections(path: str | Path, detections: Sequence[Mapping[str, Any]]) -> None:
    """Write COCO result dicts as the JSON list pycocotools' ``loadRes`` and test servers read."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(list(detections)))


def _results_coco(coco_gt: COCO, detections: Sequence[Mapping[str, Any]]) -> COCO:
    """Detections as a ``COCO`` over the ground truth's images and categories.

    Replaces ``loadRes``, which fails on an empty list and asserts without naming the bad entry.
    """
    annotations = []
    for index, detection in enumerate(detections):
        for key, known in (("image_id", coco_gt.imgs), ("category_id", coco_gt.cats)):
            if detection[key] not in known:
                raise ValueError(f"detections[{index}].{key}: {detection[key]} is not in the ground truth")
        x, y, w, h = detection["bbox"]
        annotations.append({**detection, "id": index + 1, "area": w * h, "iscrowd": 0})
    return coco_api(
        {
            "images": coco_gt.dataset["images"],
            "categories": coco_gt.dataset["categories"],
            "annotations": annotations,
        }
    )
