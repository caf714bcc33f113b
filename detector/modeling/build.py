"""``build_detector``: the one reader of a ``DetectorConfig``; every module below takes plain arguments.

As torchvision's model builders and detectron2's ``from_config``: the config's names are the papers'
(Cascade R-CNN's IoU thresholds and box stds, the 2019 solution's adaptive weights), and they are turned into
module arguments here only.
"""

from __future__ import annotations

from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import MultiScaleRoIAlign

from detector.config import BackboneConfig, CascadeConfig, DetectorConfig, NeckConfig, PostProcessConfig, RPNConfig
from detector.modeling.backbone import ResNetBackbone
from detector.modeling.box_head import ConvFCBoxHead
from detector.modeling.cascade import CascadeRoIHeads, CascadeStage
from detector.modeling.cascade_rcnn import BACKBONE_LEVELS, CascadeRCNN, FeaturePyramid
from detector.modeling.nasfpn import NASFPNNeck
from detector.ops import Suppression, convert_to_ws
from nas_errors import UserError
from search_spaces.space import resolve_architecture


def build_detector(config: DetectorConfig) -> CascadeRCNN:
    """The untrained detector ``config`` describes (weights only from ``backbone.weights`` if set)."""
    if config.num_classes is None:
        raise UserError("num_classes: must be set (from the dataset) before building the detector")
    neck_config = config.neck
    levels = tuple(neck_config.levels)
    backbone = build_backbone(config.backbone)
    pyramid = FeaturePyramid(backbone.out_channels, levels, neck_config.fpn_channels)
    neck = build_neck(neck_config)
    rpn = build_rpn(config.rpn, levels, neck_config.width)
    roi_levels = tuple(level for level in levels if level in BACKBONE_LEVELS)
    roi_heads = build_roi_heads(
        config.cascade, config.postprocess, config.num_classes, neck_config.width, roi_levels, neck_config.norm
    )
    if config.backbone.weight_standardization and neck_config.norm != "none":
        # WS only where a norm follows the conv: the NAS-FPN cells and the conv box heads.
        convert_to_ws(neck)
        convert_to_ws(roi_heads)
    return CascadeRCNN(backbone, pyramid, neck, rpn, roi_heads)


def build_backbone(config: BackboneConfig) -> ResNetBackbone:
    return ResNetBackbone(
        depth=config.depth,
        norm=config.norm,
        frozen_stages=config.frozen_stages,
        weights=config.weights,
        weight_standardization=config.weight_standardization,
    )


def build_neck(config: NeckConfig) -> NASFPNNeck:
    """The searched cell, stacked ``repeats`` times on the FPN's ``fpn_channels``-wide outputs."""
    levels = tuple(config.levels)
    return NASFPNNeck(
        resolve_architecture(config.architecture, levels),
        in_channels=config.fpn_channels,
        width=config.width,
        repeats=config.repeats,
        norm=config.norm,
        attention_pool=config.attention_pool,
    )


def build_rpn(config: RPNConfig, levels: tuple[int, ...], channels: int) -> RegionProposalNetwork:
    anchors = AnchorGenerator(
        sizes=tuple((size,) for size in config.anchor_sizes),
        aspect_ratios=(tuple(config.aspect_ratios),) * len(levels),
    )
    return RegionProposalNetwork(
        anchors,
        RPNHead(channels, len(config.aspect_ratios)),
        fg_iou_thresh=config.fg_iou_threshold,
        bg_iou_thresh=config.bg_iou_threshold,
        batch_size_per_image=config.batch_size_per_image,
        positive_fraction=config.positive_fraction,
        pre_nms_top_n={"training": config.pre_nms_top_n_train, "testing": config.pre_nms_top_n_test},
        post_nms_top_n={"training": config.post_nms_top_n_train, "testing": config.post_nms_top_n_test},
        nms_thresh=config.nms_threshold,
    )


def build_roi_heads(
    config: CascadeConfig,
    postprocess: PostProcessConfig,
    num_classes: int,
    in_channels: int,
    roi_levels: tuple[int, ...],
    norm: str,
) -> CascadeRoIHeads:
    """One stage per IoU threshold, each with its own box head and box-coder stds."""
    resolution = config.box_head_resolution
    num_convs = config.head_convs if config.head_convs is not None else (0 if resolution == 7 else 4)
    stages = [
        CascadeStage(
            ConvFCBoxHead(in_channels, resolution, num_convs, config.conv_channels, config.fc_dim, norm),
            num_classes,
            iou,
            std,
        )
        for iou, std in zip(config.iou_thresholds, config.box_stds)
    ]
    return CascadeRoIHeads(
        stages,
        MultiScaleRoIAlign([str(level) for level in roi_levels], resolution, sampling_ratio=config.roi_sampling_ratio),
        batch_size_per_image=config.batch_size_per_image,
        positive_fraction=config.positive_fraction,
        loss_weights=config.loss_weights,
        test_mode=config.test_mode,
        adaptive_weights=config.adaptive_weights,
        score_threshold=postprocess.score_threshold,
        suppression=suppression(postprocess),
    )


def suppression(postprocess: PostProcessConfig) -> Suppression:
    return Suppression(
        method=postprocess.nms,
        iou_threshold=postprocess.iou_threshold,
        sigma=postprocess.sigma,
        score_threshold=postprocess.soft_score_threshold,
        detections_per_image=postprocess.detections_per_image,
    )
