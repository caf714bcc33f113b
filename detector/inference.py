"""Testing: single-scale detection, multi-scale + flip test-time augmentation, and model ensembles.

Every path ends in the same form, per image id ``{"boxes" (xyxy, original pixels), "scores",
"labels"}``, so views and models merge in one coordinate frame:

- TTA runs every (scale, flip) view with suppression switched off (only the score threshold, up
  to ``detections_per_view`` boxes), maps the boxes back to the original image and applies the
  detector's NMS / Soft-NMS once to the union, as mmdetection and Detectron merge augmented views;
- ensembles fuse the models' final detections per image with weighted boxes fusion or box voting
  (the ``ensemble_boxes`` package) or Soft-NMS (``detector.ops``).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from ensemble_boxes import non_maximum_weighted, weighted_boxes_fusion
from torch import Tensor

from detector.coco_eval import to_original_pixels
from detector.data.coco import CocoDetection
from detector.data.transforms import (
    Compose,
    Normalize,
    RandomHorizontalFlip,
    ResizeShortSide,
    Transform,
    collate_padded,
)
from detector.modeling import CascadeRCNN
from detector.ops import Suppression, class_nms
from nas_errors import UserError

Detections = dict[str, Tensor]
FUSION_METHODS: tuple[str, ...] = ("wbf", "voting", "soft_nms")


class TransformedView(torch.utils.data.Dataset):
    """A ``CocoDetection`` without transforms seen through ``transform`` (one test view)."""

    def __init__(self, dataset: CocoDetection, transform: Transform, indices: Sequence[int]) -> None:
        if dataset.transforms is not None:
            raise ValueError("dataset: expected a CocoDetection without transforms")
        self.dataset, self.transform, self.indices = dataset, transform, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[Tensor, dict[str, Any]]:
        return self.transform(*self.dataset[self.indices[position]])


def view_transform(short_side: int, max_size: int, flip: bool = False) -> Compose:
    """A deterministic test view: resize to ``short_side`` (long side at most ``max_size``), mirror
    if ``flip``, normalise."""
    return Compose(
        [ResizeShortSide(short_side, max_size, seed=0), RandomHorizontalFlip(1.0 if flip else 0.0, seed=0), Normalize()]
    )


@torch.no_grad()
def detect(
    model: CascadeRCNN,
    dataset: CocoDetection,
    indices: Sequence[int],
    transform: Transform,
    batch_size: int,
    device: torch.device,
    amp: bool = True,
    num_workers: int = 0,
    suppression: Suppression | None = None,
) -> dict[int, Detections]:
    """The model's detections of ``dataset[indices]`` under one view, by image id, in original pixels
    (``suppression`` replaces the model's own NMS, see ``CascadeRCNN.forward``)."""
    loader = torch.utils.data.DataLoader(
        TransformedView(dataset, transform, indices),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_padded,
    )
    model.eval()
    results: dict[int, Detections] = {}
    for images, image_sizes, targets in loader:
        with torch.autocast(device.type, enabled=amp and device.type == "cuda"):
            predictions = model(images.to(device), image_sizes, suppression=suppression)
        for prediction, target in zip(predictions, targets):
            results[int(target["image_id"])] = {
                "boxes": to_original_pixels(prediction["boxes"].float(), target),
                "scores": prediction["scores"].detach().float().cpu().double(),
                "labels": prediction["labels"].detach().cpu(),
            }
    return results


def detect_tta(
    model: CascadeRCNN,
    dataset: CocoDetection,
    indices: Sequence[int],
    short_sides: Sequence[int],
    max_size: int,
    flip: bool,
    detections_per_view: int,
    batch_size: int,
    device: torch.device,
    amp: bool = True,
    num_workers: int = 0,
) -> dict[int, Detections]:
    """Detections merged over every short side, each with and (if ``flip``) without mirroring."""
    views = [(side, mirrored) for side in short_sides for mirrored in ((False, True) if flip else (False,))]
    final = model.roi_heads.suppression
    keep_all = final.keeping_all(detections_per_view)
    per_view = []
    for side, mirrored in views:
        transform = view_transform(side, max_size, mirrored)
        per_view.append(
            detect(model, dataset, indices, transform, batch_size, device, amp, num_workers, suppression=keep_all)
        )
    return {image_id: suppress(_concat([view[image_id] for view in per_view]), final) for image_id in per_view[0]}


def suppress(detections: Detections, suppression: Suppression) -> Detections:
    """The detector's final per-class NMS / Soft-NMS and top-k, applied to merged detections."""
    keep, scores = suppression(detections["boxes"], detections["scores"], detections["labels"])
    return {"boxes": detections["boxes"][keep], "scores": scores, "labels": detections["labels"][keep]}


def fuse(
    per_model: Sequence[Mapping[int, Detections]],
    image_sizes: Mapping[int, tuple[int, int]],
    method: str,
    iou_threshold: float,
    skip_score_threshold: float = 0.0,
    weights: Sequence[float] | None = None,
    detections_per_image: int = 100,
    soft_nms_method: str = "gaussian",
    sigma: float = 0.5,
) -> dict[int, Detections]:
    """One detection set per image from several models' (image id -> detections; (H, W) sizes).

    ``wbf``: weighted boxes fusion; ``voting``: non-maximum weighted (NMS whose kept box is the
    score-weighted mean of its cluster); ``soft_nms``: Soft-NMS over the union, scores scaled by
    weight / max weight.
    """
    if method not in FUSION_METHODS:
        raise UserError(f"test.ensemble.method: expected one of {', '.join(FUSION_METHODS)}, got {method!r}")
    weights = list(weights) if weights is not None else [1.0] * len(per_model)
    if len(weights) != len(per_model):
        raise UserError(f"test.ensemble.weights: {len(weights)} weights for {len(per_model)} models")
    fused = {}
    for image_id, size in image_sizes.items():
        members = [model[image_id] for model in per_model]
        if method == "soft_nms":
            scaled = [{**d, "scores": d["scores"] * w / max(weights)} for d, w in zip(members, weights)]
            merged = _concat(scaled)
            keep, scores = class_nms(
                merged["boxes"], merged["scores"], merged["labels"], soft_nms_method, iou_threshold, sigma,
                skip_score_threshold, detections_per_image,
            )
            fused[image_id] = {"boxes": merged["boxes"][keep], "scores": scores, "labels": merged["labels"][keep]}
        else:
            fused[image_id] = _fuse_with_library(
                members, size, method, iou_threshold, skip_score_threshold, weights, detections_per_image
            )
    return fused


def _fuse_with_library(
    members: Sequence[Detections],
    size: tuple[int, int],
    method: str,
    iou_threshold: float,
    skip_score_threshold: float,
    weights: Sequence[float],
    detections_per_image: int,
) -> Detections:
    """``ensemble_boxes`` works on boxes normalised to [0, 1]; scale there and back."""
    height, width = size
    scale = np.array([width, height, width, height], dtype=np.float64)
    boxes = [np.clip(d["boxes"].numpy() / scale, 0.0, 1.0) for d in members]
    scores = [d["scores"].numpy() for d in members]
    labels = [d["labels"].numpy() for d in members]
    if sum(len(b) for b in boxes) == 0:
        return _concat(members)
    fusion = weighted_boxes_fusion if method == "wbf" else non_maximum_weighted
    out_boxes, out_scores, out_labels = fusion(
        boxes, scores, labels, weights=list(weights), iou_thr=iou_threshold, skip_box_thr=skip_score_threshold
    )
    order = np.argsort(-out_scores, kind="stable")[:detections_per_image]
    return {
        "boxes": torch.from_numpy(out_boxes[order] * scale),
        "scores": torch.from_numpy(out_scores[order].astype(np.float64)),
        "labels": torch.from_numpy(out_labels[order].astype(np.int64)),
    }


def _concat(parts: Sequence[Detections]) -> Detections:
    return {key: torch.cat([part[key] for part in parts]) for key in ("boxes", "scores", "labels")}
