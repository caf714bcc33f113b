"""Cascade R-CNN RoI heads (Cai and Vasconcelos 2018): stages trained at rising IoU thresholds.

Each stage samples RoIs from the boxes the previous stage refined (ground truth added), matches them at
its own IoU threshold and regresses class-agnostic deltas encoded with its own standard deviations.

Testing:
- ``standard``: every head scores the boxes the second-to-last stage produced, their class
  probabilities are averaged, and the boxes come from the last stage (the author's code, the
   2019 solution's "Standard Cascade RCNN").
- ``adaptive``: each stage scores the boxes it received itself; class probabilities and boxes of
  the stages are combined with ``adaptive_weights`` (the 2019 solution's "Adaptive Testing", 0.2/0.3/0.5).
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import _utils as det_utils
from torchvision.ops import MultiScaleRoIAlign, box_iou, clip_boxes_to_image, remove_small_boxes

from detector.modeling.box_head import BoxPredictor, ConvFCBoxHead
from detector.ops import Suppression

ImageSizes = list[tuple[int, int]]


class CascadeStage(nn.Module):
    def __init__(
        self, head: ConvFCBoxHead, num_classes: int, iou_threshold: float, box_std: tuple[float, ...]
    ) -> None:
        super().__init__()
        self.head = head
        self.predictor = BoxPredictor(head.out_dim, num_classes)
        self.matcher = det_utils.Matcher(iou_threshold, iou_threshold, allow_low_quality_matches=False)
        self.box_coder = det_utils.BoxCoder(weights=tuple(1.0 / s for s in box_std))

    def forward(self, roi_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.predictor(self.head(roi_features))


class CascadeRoIHeads(nn.Module):
    """The cascade's stages on RoIs pooled by ``roi_align``; losses in training, detections in eval."""

    def __init__(
        self,
        stages: Sequence[CascadeStage],
        roi_align: MultiScaleRoIAlign,
        *,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        loss_weights: Sequence[float] = (1.0, 0.5, 0.25),
        test_mode: Literal["standard", "adaptive"] = "adaptive",
        adaptive_weights: Sequence[float] = (0.2, 0.3, 0.5),
        score_threshold: float = 0.05,
        suppression: Suppression = Suppression(),
    ) -> None:
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.roi_align = roi_align
        self.num_classes = self.stages[0].predictor.cls_score.out_features - 1
        self.sampler = det_utils.BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self.loss_weights = tuple(loss_weights)
        self.test_mode = test_mode
        self.adaptive_weights = tuple(adaptive_weights)
        self.score_threshold = score_threshold
        self.suppression = suppression

    def forward(
        self,
        features: dict[str, torch.Tensor],
        proposals: list[torch.Tensor],
        image_sizes: ImageSizes,
        targets: list[dict[str, torch.Tensor]] | None = None,
        suppression: Suppression | None = None,
    ) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        """``suppression`` replaces the heads' own for this call (test-time views merged later)."""
        if self.training:
            if targets is None:
                raise ValueError("targets: required in training mode")
            return self._losses(features, proposals, image_sizes, targets)
        return self._detect(features, proposals, image_sizes, suppression or self.suppression)

    def _run(
        self, stage: CascadeStage, features: dict[str, torch.Tensor], rois: list[torch.Tensor], image_sizes: ImageSizes
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return stage(self.roi_align(features, rois, image_sizes))

    # -- training ----------------------------------------------------------------------------------

    def _losses(
        self,
        features: dict[str, torch.Tensor],
        proposals: list[torch.Tensor],
        image_sizes: ImageSizes,
        targets: list[dict[str, torch.Tensor]],
    ) -> dict[str, torch.Tensor]:
        losses: dict[str, torch.Tensor] = {}
        rois = proposals
        for index, (stage, weight) in enumerate(zip(self.stages, self.loss_weights)):
            sampled, labels, regression_targets, from_gt = self._sample(stage, rois, targets)
            logits, deltas = self._run(stage, features, sampled, image_sizes)
            labels_cat = torch.cat(labels)
            targets_cat = torch.cat(regression_targets)
            positive = labels_cat > 0
            losses[f"stage{index}_cls"] = weight * F.cross_entropy(logits, labels_cat)
            losses[f"stage{index}_box"] = weight * (
                F.smooth_l1_loss(deltas[positive], targets_cat[positive], beta=1 / 9, reduction="sum")
                / max(labels_cat.numel(), 1)
            )
            if index + 1 < len(self.stages):
                rois = self._refine(stage, deltas.detach(), sampled, image_sizes, keep=[~g for g in from_gt])
        return losses

    def _sample(
        self, stage: CascadeStage, proposals: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """Add ground truth to the proposals, match at the stage's IoU, sample, encode targets."""
        candidates, labels, matched_gt = [], [], []
        for boxes, target in zip(proposals, targets):
            gt_boxes = target["boxes"].to(boxes.dtype)
            boxes = torch.cat([boxes, gt_boxes])
            if gt_boxes.numel() == 0:
                matched = torch.zeros(len(boxes), dtype=torch.int64, device=boxes.device)
                image_labels = torch.zeros(len(boxes), dtype=torch.int64, device=boxes.device)
                gt_boxes = torch.zeros(1, 4, dtype=boxes.dtype, device=boxes.device)
            else:
                match = stage.matcher(box_iou(gt_boxes, boxes))
                matched = match.clamp(min=0)
                image_labels = target["labels"][matched].to(torch.int64)
                image_labels[match < 0] = 0
            candidates.append(boxes)
            labels.append(image_labels)
            matched_gt.append(gt_boxes[matched])
        positives, negatives = self.sampler(labels)
        sampled, sampled_labels, regression_targets, from_gt = [], [], [], []
        for boxes, image_labels, gt, pos, neg, proposal in zip(
            candidates, labels, matched_gt, positives, negatives, proposals
        ):
            keep = torch.where(pos | neg)[0]
            sampled.append(boxes[keep])
            sampled_labels.append(image_labels[keep])
            regression_targets.append(stage.box_coder.encode_single(gt[keep], boxes[keep]))
            from_gt.append(keep >= len(proposal))
        return sampled, sampled_labels, regression_targets, from_gt

    def _refine(
        self,
        stage: CascadeStage,
        deltas: torch.Tensor,
        rois: list[torch.Tensor],
        image_sizes: ImageSizes,
        keep: list[torch.Tensor] | None = None,
    ) -> list[torch.Tensor]:
        """Apply a stage's deltas to its RoIs, clipped to each image (optionally keeping a subset)."""
        decoded = stage.box_coder.decode_single(deltas, torch.cat(rois))
        refined = []
        for index, (boxes, size) in enumerate(zip(decoded.split([len(r) for r in rois]), image_sizes)):
            boxes = clip_boxes_to_image(boxes, size)
            refined.append(boxes if keep is None else boxes[keep[index]])
        return refined

    # -- testing -----------------------------------------------------------------------------------

    @torch.no_grad()
    def _detect(
        self,
        features: dict[str, torch.Tensor],
        proposals: list[torch.Tensor],
        image_sizes: ImageSizes,
        suppression: Suppression,
    ) -> list[dict[str, torch.Tensor]]:
        rois = proposals
        stage_inputs, stage_outputs, stage_probs = [], [], []
        for stage in self.stages:
            logits, deltas = self._run(stage, features, rois, image_sizes)
            stage_inputs.append(rois)
            stage_probs.append(logits.softmax(-1))
            rois = self._refine(stage, deltas, rois, image_sizes)
            stage_outputs.append(torch.cat(rois))
        if self.test_mode == "standard":
            final_rois = stage_inputs[-1]
            probs = [self._run(stage, features, final_rois, image_sizes)[0].softmax(-1) for stage in self.stages[:-1]]
            scores = torch.stack(probs + [stage_probs[-1]]).mean(0)
            boxes = stage_outputs[-1]
        else:
            weights = self.adaptive_weights
            scores = sum(w * p for w, p in zip(weights, stage_probs))
            boxes = sum(w * b for w, b in zip(weights, stage_outputs))
        counts = [len(r) for r in proposals]
        return [
            self._postprocess(image_boxes, image_scores, suppression)
            for image_boxes, image_scores in zip(boxes.split(counts), scores.split(counts))
        ]

    def _postprocess(
        self, boxes: torch.Tensor, scores: torch.Tensor, suppression: Suppression
    ) -> dict[str, torch.Tensor]:
        """Per-class score threshold, then hard NMS or Soft-NMS, then the top detections."""
        num_rois = len(boxes)
        class_scores = scores[:, 1:]
        labels = torch.arange(1, self.num_classes + 1, device=boxes.device).expand(num_rois, -1)
        boxes = boxes[:, None, :].expand(num_rois, self.num_classes, 4).reshape(-1, 4)
        class_scores, labels = class_scores.reshape(-1), labels.reshape(-1)
        keep = torch.where(class_scores > self.score_threshold)[0]
        boxes, class_scores, labels = boxes[keep], class_scores[keep], labels[keep]
        keep = remove_small_boxes(boxes, min_size=1e-2)
        boxes, class_scores, labels = boxes[keep], class_scores[keep], labels[keep]
        keep, kept_scores = suppression(boxes, class_scores, labels)
        return {"boxes": boxes[keep], "scores": kept_scores, "labels": labels[keep]}
