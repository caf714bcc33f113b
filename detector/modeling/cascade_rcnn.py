"""Cascade R-CNN with the 2019 solution's neck: backbone -> FPN -> searched NAS-FPN cell -> RPN -> cascade heads."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import FeaturePyramidNetwork

from detector.modeling.backbone import ResNetBackbone
from detector.modeling.cascade import CascadeRoIHeads
from detector.modeling.nasfpn import NASFPNNeck
from detector.ops import Suppression

BACKBONE_LEVELS = (2, 3, 4, 5)


class FeaturePyramid(nn.Module):
    """Ordinary FPN on the backbone's levels, plus extra coarser levels by stride-2 subsampling."""

    def __init__(self, in_channels: dict[int, int], levels: tuple[int, ...], channels: int) -> None:
        super().__init__()
        self.input_levels = [level for level in levels if level in BACKBONE_LEVELS]
        self.extra_levels = [level for level in levels if level > max(BACKBONE_LEVELS)]
        self.fpn = FeaturePyramidNetwork([in_channels[level] for level in self.input_levels], channels)

    def forward(self, features: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        out = self.fpn(OrderedDict((str(level), features[level]) for level in self.input_levels))
        pyramid = {int(level): feature for level, feature in out.items()}
        for level in self.extra_levels:
            pyramid[level] = F.max_pool2d(pyramid[level - 1], kernel_size=1, stride=2)
        return pyramid


class CascadeRCNN(nn.Module):
    """backbone -> FPN -> NAS-FPN -> RPN -> cascade heads, each part built outside (``build_detector``).

    Takes a padded batch and the true image sizes; returns losses in training, detections in eval:
    ``{"boxes" (xyxy in the batch's pixels), "scores", "labels" (1..num_classes)}``.
    """

    def __init__(
        self,
        backbone: ResNetBackbone,
        pyramid: FeaturePyramid,
        neck: NASFPNNeck,
        rpn: RegionProposalNetwork,
        roi_heads: CascadeRoIHeads,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.pyramid = pyramid
        self.neck = neck
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.levels = neck.levels

    def forward(
        self,
        images: torch.Tensor,
        image_sizes: list[tuple[int, int]],
        targets: list[dict[str, torch.Tensor]] | None = None,
        suppression: Suppression | None = None,
    ) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        """``suppression`` replaces the heads' own NMS for this call (to merge test-time views first)."""
        if self.training and targets is None:
            raise ValueError("targets: required in training mode")
        pyramid = self.neck(self.pyramid(self.backbone(images)))
        features = OrderedDict((str(level), pyramid[level]) for level in self.levels)
        proposals, rpn_losses = self.rpn(ImageList(images, list(image_sizes)), features, targets)
        heads = self.roi_heads(features, proposals, list(image_sizes), targets, suppression)
        if self.training:
            return {"rpn_objectness": rpn_losses["loss_objectness"], "rpn_box": rpn_losses["loss_rpn_box_reg"], **heads}
        return heads
