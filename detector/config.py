"""The detector's settings as data: what `nas export best --to detector-config` writes and `nas train` reads.

Defaults are the Cascade R-CNN constants (Cai and Vasconcelos 2018) with the choices of Baidu's Objects365
Challenge 2019 solution ("the 2019 solution"):
FPN followed by the searched NAS-FPN cell, a configurable box-head resolution, adaptive testing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from search_spaces.architecture import ArchitectureError
from search_spaces.space import inline_architecture_file, resolve_architecture


SamplerKind = Literal["uniform", "class_diversity", "class_aware", "repeat_factor"]
"""Training image samplers (``detector.data.samplers``)."""
SAMPLER_KINDS: tuple[str, ...] = get_args(SamplerKind)


class StrictModel(BaseModel):
    """Config sections reject unknown keys, so a misspelt setting fails instead of being ignored."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class BackboneConfig(StrictModel):
    depth: Literal[18, 34, 50, 101] = 50
    """ResNet depth."""
    norm: Literal["frozen_bn", "bn", "gn"] = "frozen_bn"
    """Frozen BN for fine-tuning pretrained weights; BN or GN when training from scratch."""
    weight_standardization: bool = False
    """Weight Standardization on the backbone's convs (with GN or BN) and the heads' convs."""
    weights: Path | None = None
    """A local torchvision ResNet state dict; None trains from scratch. Nothing is downloaded."""
    frozen_stages: int = Field(1, ge=0, le=5)
    """Stem and the first ``frozen_stages - 1`` residual stages get no gradient and stay in eval mode, so
    with ``norm: bn`` their BN statistics are frozen too (0: none frozen; 5: the whole backbone)."""


class NeckConfig(StrictModel):
    architecture: str | dict[str, Any] = "nasfpn"
    """The NAS-FPN cell: a known name or inline JSON; a config file may name a JSON file (relative to
    the config file), which is read in when the file is loaded."""
    levels: tuple[int, ...] = (2, 3, 4, 5, 6)
    """Pyramid levels the neck works on (P2 has stride 4); the cell must be searched on the same ones."""
    fpn_channels: int = Field(256, ge=1)
    """Channels of the FPN that feeds the NAS-FPN cells."""
    width: int = Field(256, ge=1)
    """Channels of every NAS-FPN cell output."""
    repeats: int = Field(7, ge=1)
    """How many times the cell is stacked (NAS-FPN's 7 @ 256 in the paper's best AP setting)."""
    norm: Literal["bn", "gn", "none"] = "bn"
    """Normalisation after each cell's conv."""
    attention_pool: Literal["max", "avg"] = "max"
    """Global pooling of the global-pool (attention) op."""

    @field_validator("architecture", mode="before")
    @classmethod
    def _read_file_named_in_a_config_file(cls, value: Any, info: ValidationInfo) -> Any:
        return inline_architecture_file(value, info.context)

    @model_validator(mode="after")
    def _check_architecture(self) -> "NeckConfig":
        if not self.levels or self.levels[0] < 2:
            raise ValueError(f"levels: the backbone's finest feature is P2, got {list(self.levels)}")
        try:
            arch = resolve_architecture(self.architecture, self.levels)
        except ArchitectureError as error:
            raise ValueError(f"architecture: {error}") from None
        if arch.levels != tuple(self.levels):
            raise ValueError(f"architecture: works on levels {list(arch.levels)}, the neck on {list(self.levels)}")
        return self


class RPNConfig(StrictModel):
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    """One anchor size per pyramid level, finest first."""
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    """Anchor height/width ratios at every position."""
    pre_nms_top_n_train: int = Field(2000, ge=1)
    """Proposals kept per level before NMS, in training."""
    pre_nms_top_n_test: int = Field(1000, ge=1)
    """Proposals kept per level before NMS, in testing."""
    post_nms_top_n_train: int = Field(2000, ge=1)
    """Proposals per image after NMS, in training."""
    post_nms_top_n_test: int = Field(1000, ge=1)
    """Proposals per image after NMS, in testing."""
    nms_threshold: float = Field(0.7, gt=0, le=1)
    """IoU above which NMS drops a proposal."""
    fg_iou_threshold: float = Field(0.7, gt=0, le=1)
    """Anchors with at least this IoU to a box are positives."""
    bg_iou_threshold: float = Field(0.3, ge=0, le=1)
    """Anchors with IoU below this to every box are negatives."""
    batch_size_per_image: int = Field(256, ge=1)
    """Anchors sampled per image for the RPN loss."""
    positive_fraction: float = Field(0.5, gt=0, le=1)
    """Largest share of positives among the sampled anchors."""


class CascadeConfig(StrictModel):
    iou_thresholds: tuple[float, ...] = (0.5, 0.6, 0.7)
    """Foreground IoU of each stage (Cascade R-CNN: 0.5, 0.6, 0.7)."""
    box_stds: tuple[tuple[float, float, float, float], ...] = (
        (0.1, 0.1, 0.2, 0.2),
        (0.05, 0.05, 0.1, 0.1),
        (0.033, 0.033, 0.067, 0.067),
    )
    """Box-regression target standard deviations (dx, dy, dw, dh) of each stage."""
    loss_weights: tuple[float, ...] = (1.0, 0.5, 0.25)
    """Weight of each stage's loss."""
    batch_size_per_image: int = Field(512, ge=1)
    """RoIs sampled per image for each stage's loss."""
    positive_fraction: float = Field(0.25, gt=0, le=1)
    """Largest share of positives among the sampled RoIs."""
    box_head_resolution: Literal[7, 14] = 7
    """RoIAlign output size; 14 is the 2019 solution's large-resolution box head."""
    roi_sampling_ratio: int = Field(2, ge=0)
    """RoIAlign samples per bin side (0: adaptive). 1 quarters RoIAlign's cost, which dominates a CPU
    training step since its backward pass runs once per stage and level."""
    head_convs: int | None = None
    """3x3 convs before the FC layer; None: 0 at resolution 7 (2fc head), 4 at resolution 14."""
    conv_channels: int = Field(256, ge=1)
    """Channels of the box head's convs."""
    fc_dim: int = Field(1024, ge=1)
    """Width of the box head's fully connected layer."""
    test_mode: Literal["standard", "adaptive"] = "adaptive"
    """standard: all heads score the stage-2 boxes; adaptive: each stage scores the boxes it received."""
    adaptive_weights: tuple[float, ...] = (0.2, 0.3, 0.5)
    """Adaptive testing: weight of each stage's scores (the 2019 solution's 0.2, 0.3, 0.5)."""

    @model_validator(mode="after")
    def _check_stages(self) -> "CascadeConfig":
        stages = len(self.iou_thresholds)
        for name in ("box_stds", "loss_weights", "adaptive_weights"):
            if len(getattr(self, name)) != stages:
                raise ValueError(f"{name}: needs one entry per stage ({stages}), got {len(getattr(self, name))}")
        return self


class PostProcessConfig(StrictModel):
    score_threshold: float = Field(0.05, ge=0, le=1)
    """Detections scoring below this are dropped before NMS."""
    nms: Literal["hard", "linear", "gaussian"] = "hard"
    """Per-class hard NMS, or Soft-NMS (the 2019 solution used gaussian Soft-NMS)."""
    iou_threshold: float = Field(0.5, gt=0, le=1)
    """Hard and linear NMS: IoU at which a box suppresses another."""
    sigma: float = Field(0.5, gt=0)
    """Gaussian Soft-NMS: score decay exp(-iou^2 / sigma)."""
    soft_score_threshold: float = Field(1e-3, ge=0, le=1)
    """Soft-NMS: boxes whose decayed score falls below this are dropped."""
    detections_per_image: int = Field(100, ge=1)
    """Detections kept per image."""


class DetectorConfig(StrictModel):
    num_classes: int | None = Field(None, ge=1)
    """Foreground classes (label 0 is background); None: taken from the training dataset."""
    backbone: BackboneConfig = BackboneConfig()
    """ResNet backbone."""
    neck: NeckConfig = NeckConfig()
    """FPN followed by the stacked NAS-FPN cell."""
    rpn: RPNConfig = RPNConfig()
    """Region proposal network."""
    cascade: CascadeConfig = CascadeConfig()
    """Cascade stages, box head and test mode."""
    postprocess: PostProcessConfig = PostProcessConfig()
    """Score threshold and NMS of the final detections."""

    @model_validator(mode="after")
    def _check_levels(self) -> "DetectorConfig":
        if len(self.rpn.anchor_sizes) != len(self.neck.levels):
            raise ValueError(
                f"rpn.anchor_sizes: needs one size per neck level {list(self.neck.levels)}, "
                f"got {list(self.rpn.anchor_sizes)}"
            )
        return self
