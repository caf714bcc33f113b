"""Cascade R-CNN with the seed's neck: backbone -> FPN -> searched NAS-FPN cell -> RPN -> cascade heads."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import FeaturePyramidNetwork

from detector.config import DetectorConfig
from detector.modeling.backbone import ResNetBackbone
from detector.modeling.cascade import CascadeRoIHeads
from detector.modeling.nasfpn import NASFPNNeck
from detector.ops import convert_to_ws
from search_spaces.space import resolve_architecture

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
    """Takes a padded batch and the true image sizes; returns losses in training, detections in eval.

    Detections are ``{"boxes" (xyxy in the batch's pixels), "scores", "labels" (1..num_classes)}``.
    """

    def __init__(self, config: DetectorConfig) -> None:
        super().__init__()
        if config.num_classes is None:
            raise ValueError("num_classes: must be set (from the dataset) before building the detector")
        self.config = config
        neck = config.neck
        levels = tuple(neck.levels)
        self.backbone = ResNetBackbone(config.backbone)
        self.pyramid = FeaturePyramid(self.backbone.out_channels, levels, neck.fpn_channels)
        self.neck = NASFPNNeck(
            resolve_architecture(neck.architecture, levels),
            in_channels=neck.fpn_channels,
            width=neck.width,
            repeats=neck.repeats,
            norm=neck.norm,
            attention_pool=neck.attention_pool,
        )
        self.levels = levels
        rpn = config.rpn
        anchors = AnchorGenerator(
            sizes=tuple((size,) for size in rpn.anchor_sizes),
            aspect_ratios=(tuple(rpn.aspect_ratios),) * len(levels),
        )
        self.rpn = RegionProposalNetwork(
            anchors,
            RPNHead(neck.width, len(rpn.aspect_ratios)),
            fg_iou_thresh=rpn.fg_iou_threshold,
            bg_iou_thresh=rpn.bg_iou_threshold,
            batch_size_per_image=rpn.batch_size_per_image,
            positive_fraction=rpn.positive_fraction,
            pre_nms_top_n={"training": rpn.pre_nms_top_n_train, "testing": rpn.pre_nms_top_n_test},
            post_nms_top_n={"training": rpn.post_nms_top_n_train, "testing": rpn.post_nms_top_n_test},
            nms_thresh=rpn.nms_threshold,
        )
        self.roi_heads = CascadeRoIHeads(
            config.cascade,
            config.postprocess,
            config.num_classes,
            in_channels=neck.width,
            roi_levels=tuple(level for level in levels if level in BACKBONE_LEVELS),
            norm=neck.norm,
        )
        if config.backbone.weight_standardization and neck.norm != "none":
            # WS only where a norm follows the conv: the NAS-FPN cells and the conv box heads.
            convert_to_ws(self.neck)
            convert_to_ws(self.roi_heads)

    def forward(
        self,
        images: torch.Tensor,
        image_sizes: list[tuple[int, int]],
        targets: list[dict[str, torch.Tensor]] | None = None,
    ) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        if self.training and targets is None:
            raise ValueError("targets: required in training mode")
        pyramid = self.neck(self.pyramid(self.backbone(images)))
        features = OrderedDict((str(level), pyramid[level]) for level in self.levels)
        proposals, rpn_losses = self.rpn(ImageList(images, list(image_sizes)), features, targets)
        heads = self.roi_heads(features, proposals, list(image_sizes), targets)
        if self.training:
            return {"rpn_objectness": rpn_losses["loss_objectness"], "rpn_box": rpn_losses["loss_rpn_box_reg"], **heads}
        return heads
