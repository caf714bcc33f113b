"""Small detection ops used by the Cascade R-CNN: Soft-NMS and Weight Standardization."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms, box_iou

SOFT_NMS_METHODS: tuple[str, ...] = ("linear", "gaussian", "hard")


def _check_boxes_scores(boxes: Tensor, scores: Tensor) -> None:
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape [N, 4], got {list(boxes.shape)}")
    if scores.dim() != 1:
        raise ValueError(f"scores must have shape [N], got {list(scores.shape)}")
    if boxes.shape[0] != scores.shape[0]:
        raise ValueError(f"boxes and scores disagree on N: {boxes.shape[0]} boxes, {scores.shape[0]} scores")
    if not scores.is_floating_point():
        raise ValueError(f"scores must be floating point, got {scores.dtype}")


def soft_nms(
    boxes: Tensor,
    scores: Tensor,
    method: str = "linear",
    iou_threshold: float = 0.3,
    sigma: float = 0.5,
    score_threshold: float = 1e-3,
    max_detections: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Soft-NMS (Bodla et al. 2017): decay the scores of overlapping boxes instead of deleting them.

    Greedy: take the remaining box with the highest current score, multiply the score of every other
    remaining box by a weight of its IoU with it, and drop boxes whose score falls below
    ``score_threshold``; boxes whose initial score is below it are dropped up front. Weights:

    * ``"linear"``: ``1 - iou`` if ``iou > iou_threshold`` else ``1``;
    * ``"gaussian"``: ``exp(-iou**2 / sigma)`` (``iou_threshold`` is unused);
    * ``"hard"``: ``0`` if ``iou > iou_threshold`` else ``1``. This is plain NMS, so suppressed boxes are
      removed outright rather than kept with score 0 (which ``score_threshold=0`` would otherwise allow).

    The comparison is strict ``>`` as in the authors' code, but areas use continuous coordinates (no +1
    pixel, as ``torchvision.ops.box_iou``); the authors' code added +1 pixel and mmcv uses ``>=``, so
    results can differ from both on boxes at the exact threshold. Ties in score pick the lowest index
    first, which makes the output deterministic.

    ``boxes`` is ``[N, 4]`` in ``(x1, y1, x2, y2)``; ``scores`` is ``[N]`` and non-negative, so decayed
    scores never grow and the selection order is also decreasing score order. The IoU matrix is computed
    once; each of at most N selections updates all remaining scores with one tensor op.

    Returns ``(keep, kept_scores)``: int64 indices into the input and their decayed scores, in decreasing
    decayed-score order, on the input's device; at most ``max_detections`` of them if given.
    """
    if method not in SOFT_NMS_METHODS:
        raise ValueError(f"unknown soft-NMS method {method!r}; expected one of {SOFT_NMS_METHODS}")
    if method == "gaussian" and sigma <= 0:
        raise ValueError(f"sigma must be positive for gaussian soft-NMS, got {sigma}")
    if max_detections is not None and max_detections < 0:
        raise ValueError(f"max_detections must be non-negative, got {max_detections}")
    _check_boxes_scores(boxes, scores)

    limit = scores.shape[0] if max_detections is None else min(scores.shape[0], max_detections)
    work = scores.clone()
    alive = work >= score_threshold
    iou = box_iou(boxes, boxes).to(work.dtype)
    keep: list[Tensor] = []
    kept_scores: list[Tensor] = []
    for _ in range(limit):
        best = torch.where(alive, work, float("-inf")).argmax()
        if not alive[best]:
            break
        keep.append(best)
        kept_scores.append(work[best])
        alive[best] = False
        overlap = iou[best]
        if method == "linear":
            work = work * torch.where(overlap > iou_threshold, 1 - overlap, 1)
        elif method == "gaussian":
            work = work * torch.exp(-overlap.square() / sigma)
        else:
            alive &= overlap <= iou_threshold
        alive &= work >= score_threshold

    if not keep:
        return torch.empty(0, dtype=torch.int64, device=scores.device), scores.new_empty(0)
    return torch.stack(keep), torch.stack(kept_scores)


def batched_soft_nms(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    method: str = "linear",
    iou_threshold: float = 0.3,
    sigma: float = 0.5,
    score_threshold: float = 1e-3,
    max_detections: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-class :func:`soft_nms`, merged in decreasing decayed-score order (ties by index).

    Each class gets its own IoU matrix: one matrix over all classes (the coordinate-offset trick of
    ``batched_nms``) would grow with the square of the total box count, which is gigabytes for a few
    hundred classes at a low score threshold.
    """
    _check_boxes_scores(boxes, scores)
    if labels.shape != scores.shape:
        raise ValueError(f"labels must have shape [N] = {list(scores.shape)}, got {list(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integers, got {labels.dtype}")
    keep_parts, score_parts = [], []
    for label in labels.unique():
        members = torch.where(labels == label)[0]
        keep, kept_scores = soft_nms(
            boxes[members], scores[members], method, iou_threshold, sigma, score_threshold, max_detections
        )
        keep_parts.append(members[keep])
        score_parts.append(kept_scores)
    if not keep_parts:
        return torch.empty(0, dtype=torch.int64, device=scores.device), scores.new_empty(0)
    keep, kept_scores = torch.cat(keep_parts), torch.cat(score_parts)
    # Sort by index first, then stably by score, so equal scores stay in index order.
    by_index = keep.argsort()
    keep, kept_scores = keep[by_index], kept_scores[by_index]
    order = kept_scores.argsort(descending=True, stable=True)[:max_detections]
    return keep[order], kept_scores[order]


def class_nms(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    method: str,
    iou_threshold: float,
    sigma: float = 0.5,
    score_threshold: float = 1e-3,
    max_detections: int = 100,
) -> tuple[Tensor, Tensor]:
    """Per-class suppression, ``method`` ``"hard"`` (torchvision's ``batched_nms``) or a Soft-NMS
    method (:func:`batched_soft_nms`; ``score_threshold`` applies to it only); returns
    ``(keep, kept_scores)`` in decreasing score order, at most ``max_detections``."""
    if method == "hard":
        keep = batched_nms(boxes, scores, labels, iou_threshold)[:max_detections]
        return keep, scores[keep]
    return batched_soft_nms(
        boxes,
        scores,
        labels,
        method=method,
        iou_threshold=iou_threshold,
        sigma=sigma,
        score_threshold=score_threshold,
        max_detections=max_detections,
    )


@dataclass(frozen=True)
class Suppression:
    """The last step of testing: per-class hard NMS or Soft-NMS, then the top ``detections_per_image``."""

    method: str = "hard"
    """``hard``, or a Soft-NMS method (``linear``, ``gaussian``)."""
    iou_threshold: float = 0.5
    sigma: float = 0.5
    score_threshold: float = 1e-3
    """Soft-NMS only: boxes whose decayed score falls below this are dropped."""
    detections_per_image: int = 100

    def keeping_all(self, max_detections: int) -> "Suppression":
        """Hard NMS at IoU 1.0 removes nothing: every box, up to ``max_detections``, so that test-time
        views can be merged before the real suppression."""
        return replace(self, method="hard", iou_threshold=1.0, detections_per_image=max_detections)

    def __call__(self, boxes: Tensor, scores: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """``(keep, kept_scores)`` as :func:`class_nms` returns them."""
        return class_nms(
            boxes,
            scores,
            labels,
            method=self.method,
            iou_threshold=self.iou_threshold,
            sigma=self.sigma,
            score_threshold=self.score_threshold,
            max_detections=self.detections_per_image,
        )


def standardize_weight(weight: Tensor, eps: float = 1e-5) -> Tensor:
    """Weight Standardization (Qiao et al. 2019): zero mean, unit unbiased std per output channel.

    Statistics run over every dim but the first (in-channels and kernel); ``eps`` is added to the std,
    not the variance, as in the paper.
    """
    dims = tuple(range(1, weight.dim()))
    mean = weight.mean(dim=dims, keepdim=True)
    std = weight.std(dim=dims, keepdim=True, unbiased=True)
    return (weight - mean) / (std + eps)


class WSConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose weight is standardised per output channel on every forward.

    Use only on convs followed by GroupNorm or BatchNorm: standardisation removes the weight's scale and
    shift, which only a following normalization layer can restore.
    """

    def forward(self, input: Tensor) -> Tensor:
        return self._conv_forward(input, standardize_weight(self.weight), self.bias)


def _to_ws(conv: nn.Conv2d) -> WSConv2d:
    ws = WSConv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    with torch.no_grad():
        ws.weight.copy_(conv.weight)
        if conv.bias is not None:
            ws.bias.copy_(conv.bias)
    ws.weight.requires_grad_(conv.weight.requires_grad)
    if conv.bias is not None:
        ws.bias.requires_grad_(conv.bias.requires_grad)
    ws.train(conv.training)
    return ws


def convert_to_ws(module: nn.Module) -> nn.Module:
    """Replace every plain ``nn.Conv2d`` (exact type) inside ``module`` by a ``WSConv2d`` with its weights.

    Only the caller knows which convs feed a GN/BN layer, so apply this to those parts (backbone, GN
    heads). Modules are replaced in place; the module is returned, or the new conv if ``module`` is one.
    """
    if type(module) is nn.Conv2d:
        return _to_ws(module)
    for name, child in module.named_children():
        setattr(module, name, convert_to_ws(child))
    return module
