"""Full detector training and testing settings: what `nas export best --to detector-config` writes.

``DetectorTrainingConfig(dataset=...)`` is a complete full-size recipe, the 2019 solution's
(Baidu, Objects365 Challenge 2019): Cascade R-CNN R-50 with FPN -> NAS-FPN (7 repeats, 256
channels), the 14x14 box head, adaptive cascade testing, Soft-NMS, multi-scale training with short
sides 400..1400 (max 1600) and multi-scale + flip testing at 400..1400 (max 2100).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator, model_validator

from detector.config import CascadeConfig, DetectorConfig, PostProcessConfig, SamplerKind, StrictModel
from detector.data.prepare import DatasetPaths, SyntheticDataConfig, ensure_synthetic_dataset

if TYPE_CHECKING:  # the dataset (torch) loads when a run reads it, not when a config is read
    from detector.data.coco import CocoDetection


class ExportSource(StrictModel):
    """Where the searched cell came from; informational, training does not read it."""

    search_id: int
    """Id of the search in the episode store."""
    search_name: str
    """Name of the search."""
    episode: int
    """Episode that trained the exported cell."""
    arch_hash: str
    """Canonical hash of the exported cell."""
    reward: float
    """The proxy reward the cell earned."""
    reward_metric: str
    """Metric behind the reward (AP or AP50, optionally cost-aware)."""
    exported_at: str
    """Time of the export (ISO 8601)."""


class SamplerConfig(StrictModel):
    """How training images are drawn; ``nas dataset stats ann.json`` prints each kind's weights."""

    kind: SamplerKind = "uniform"
    """uniform: a fresh permutation each epoch; class_diversity: the 2019 solution's W_i = ln(C_i) + eps * sum_c
    P_c H_c; class_aware: w_i = sum over the image's classes of 1 / (images with the class);
    repeat_factor: LVIS repeat factors max(1, sqrt(t / f_c))."""
    diversity_eps: float = Field(1.0, gt=0)
    """eps of class diversity sampling: the weight of the class priors, which keeps single-class
    images drawable (ln 1 = 0); the slides give no value."""
    repeat_threshold: float = Field(0.001, gt=0, le=1)
    """t of repeat-factor sampling: classes in fewer than this fraction of images are repeated."""


class DatasetConfig(StrictModel):
    """COCO-format train and val files (COCO, Objects365 v1/v2 or your own), or a synthetic set."""

    train_annotations: Path | None = None
    """COCO-format training annotation JSON."""
    train_images: Path | None = None
    """Folder the training ``file_name``s are relative to."""
    val_annotations: Path | None = None
    """COCO-format annotation JSON of the evaluation split."""
    val_images: Path | None = None
    """Folder the evaluation ``file_name``s are relative to."""
    objects365_v2_paths: bool = False
    """Objects365 v2: look images up in the ``patchN/`` folders the archives unpack to."""
    synthetic: SyntheticDataConfig | None = None
    """Instead of the four paths: the generated synthetic set (for tests and demos)."""
    sampler: SamplerConfig = SamplerConfig()
    """Training image sampler."""
    num_workers: int = Field(4, ge=0)
    """DataLoader worker processes per training process (0: load in the main process)."""
    max_val_images: int | None = Field(None, ge=1)
    """Evaluate on the first N images of the evaluation split only."""

    @model_validator(mode="after")
    def _one_source(self) -> "DatasetConfig":
        files = [self.train_annotations, self.train_images, self.val_annotations, self.val_images]
        if self.synthetic is None and any(f is None for f in files):
            raise ValueError(
                "dataset: give train_annotations, train_images, val_annotations and val_images, or synthetic"
            )
        if self.synthetic is not None and any(f is not None for f in files):
            raise ValueError("dataset: give either the four COCO paths or synthetic, not both")
        return self

    def paths(self) -> DatasetPaths:
        """The four paths, generating the synthetic set on first use."""
        if self.synthetic is not None:
            return ensure_synthetic_dataset(self.synthetic)
        return DatasetPaths(self.train_annotations, self.train_images, self.val_annotations, self.val_images)

    def load(self, split: Literal["train", "val"]) -> CocoDetection:
        """The training or evaluation split as a dataset."""
        from detector.data.coco import CocoDetection

        paths, train = self.paths(), split == "train"
        return CocoDetection(
            paths.train_annotations if train else paths.val_annotations,
            paths.train_images if train else paths.val_images,
            train=train,
            rewrite_objects365_v2_paths=self.objects365_v2_paths,
        )


class FullCascadeConfig(CascadeConfig):
    """Cascade heads with the 2019 solution's large-resolution (14x14) box head."""

    box_head_resolution: Literal[7, 14] = 14
    """RoIAlign output size; 14 is the 2019 solution's large-resolution box head, 7 the usual one."""


class FullPostProcessConfig(PostProcessConfig):
    """Gaussian Soft-NMS with sigma 0.15, Baidu's Objects365 setting."""

    nms: Literal["hard", "linear", "gaussian"] = "gaussian"
    """Per-class hard NMS, or Soft-NMS (the 2019 solution used gaussian Soft-NMS)."""
    sigma: float = 0.15
    """Gaussian Soft-NMS: score decay exp(-iou^2 / sigma)."""


class FullDetectorConfig(DetectorConfig):
    """The 2019 solution's model: ResNet-50, FPN -> NAS-FPN (7 x 256), 14x14 box head, adaptive testing,
    Soft-NMS. Defaults hold per field, so a partial ``detector:`` section keeps the others."""

    cascade: FullCascadeConfig = FullCascadeConfig()
    """Cascade stages, box head and test mode."""
    postprocess: FullPostProcessConfig = FullPostProcessConfig()
    """Score threshold and NMS of the final detections."""


class DistributedConfig(StrictModel):
    """Data-parallel training; processes are started by ``torchrun`` (see docs/training.md)."""

    backend: Literal["auto", "nccl", "gloo"] = "auto"
    """torch.distributed backend; auto: nccl on CUDA, gloo on the CPU."""
    sync_bn: bool = False
    """Convert trainable BatchNorm layers to SyncBatchNorm (CUDA only), so small per-GPU batches
    normalise over the whole batch; GN needs no synchronisation."""


class TrainSettings(StrictModel):
    iterations: int = Field(350_000, ge=1)
    """Optimizer steps (the 2019 solution's sampling comparison ran 350k iterations)."""
    batch_size: int = Field(2, ge=1)
    """Images per process and step; the global batch is this times the number of processes."""
    learning_rate: float = Field(0.02, gt=0)
    """Base learning rate for the default 16-image global batch (scale it linearly with the batch)."""
    momentum: float = Field(0.9, ge=0, lt=1)
    """SGD momentum."""
    weight_decay: float = Field(1e-4, ge=0)
    """SGD weight decay."""
    warmup_iterations: int = Field(1000, ge=0)
    """Linear warm-up steps."""
    warmup_factor: float = Field(0.001, gt=0, le=1)
    """Learning-rate factor at the first step of the warm-up."""
    schedule: Literal["step", "cosine"] = "step"
    """After warm-up: step decay at ``steps``, or cosine decay to zero at the last iteration."""
    steps: tuple[int, ...] = (240_000, 320_000)
    """Iterations at which the step schedule multiplies the learning rate by ``gamma``."""
    gamma: float = Field(0.1, gt=0, le=1)
    """Step schedule decay factor."""
    grad_clip: float | None = Field(35.0, gt=0)
    """Clip the gradients' global L2 norm to this (None: no clipping)."""
    short_sides: tuple[int, int] = (400, 1400)
    """Multi-scale training: the short side is drawn uniformly from this inclusive range."""
    max_size: int = Field(1600, ge=1)
    """Cap on the long side after resizing."""
    flip_probability: float = Field(0.5, ge=0, le=1)
    """Horizontal flip probability."""
    checkpoint_every: int = Field(10_000, ge=1)
    """Write a checkpoint every N iterations (and always at the end)."""
    keep_checkpoints: int = Field(3, ge=1)
    """Periodic checkpoints kept in the work directory (older ones are deleted; the final one stays)."""
    log_every: int = Field(20, ge=1)
    """Print progress and write TensorBoard scalars every N iterations."""
    amp: bool = True
    """Mixed precision; used on CUDA only, CPU runs stay float32."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: CUDA when available."""
    seed: int = 0
    """Seeds weights, sampling, augmentation and RoI sampling; CPU runs repeat exactly."""
    threads: int | None = Field(None, ge=1)
    """CPU threads for torch per process (None: torch's default)."""
    init_from: Path | None = None
    """Checkpoint to start from (e.g. COCO-pretrained): layers with matching names and shapes load."""
    init_classes: Literal["remap", "reinit"] = "remap"
    """Class-dependent layers of ``init_from``: remap rows by category name, or re-initialise all."""
    init_class_map: dict[str, str] = {}
    """Extra name matches for remapping, this dataset's name -> the checkpoint's name."""
    distributed: DistributedConfig = DistributedConfig()
    """Multi-GPU / multi-node options."""

    @model_validator(mode="after")
    def _check(self) -> "TrainSettings":
        low, high = self.short_sides
        if not 0 < low <= high:
            raise ValueError(f"short_sides: expected 0 < low <= high, got {list(self.short_sides)}")
        if list(self.steps) != sorted(self.steps) or any(s <= 0 for s in self.steps):
            raise ValueError(f"steps: expected increasing positive iterations, got {list(self.steps)}")
        if self.warmup_iterations >= self.iterations:
            raise ValueError(
                f"warmup_iterations: {self.warmup_iterations} is not below iterations ({self.iterations})"
            )
        return self


class TTAConfig(StrictModel):
    """Test-time augmentation (``nas eval --tta``): every short side, each with and without flip."""

    enabled: bool = False
    """Use TTA without passing --tta."""
    short_sides: tuple[int, ...] = (400, 600, 800, 1000, 1200, 1400)
    """Test scales (the seed: 400..1400)."""
    max_size: int = Field(2100, ge=1)
    """Cap on the long side at every scale (the seed: 2100)."""
    flip: bool = True
    """Also run every scale on the mirrored image."""
    detections_per_view: int = Field(1000, ge=1)
    """Boxes kept per view before the views are merged with the detector's NMS / Soft-NMS."""

    @model_validator(mode="after")
    def _check(self) -> "TTAConfig":
        if not self.short_sides or any(s <= 0 for s in self.short_sides):
            raise ValueError(f"short_sides: expected positive pixel sizes, got {list(self.short_sides)}")
        return self


class EnsembleConfig(StrictModel):
    """How ``nas eval --ensemble`` fuses the models' boxes (per image and class)."""

    method: Literal["wbf", "voting", "soft_nms"] = "wbf"
    """wbf: weighted boxes fusion; voting: NMS whose kept boxes become the score-weighted mean of the
    boxes they suppress (non-maximum weighted); soft_nms: the detector's Soft-NMS over all models."""
    iou_threshold: float = Field(0.55, gt=0, le=1)
    """Boxes overlapping more than this belong to one cluster."""
    skip_score_threshold: float = Field(0.0, ge=0, le=1)
    """Boxes scoring below this are ignored by wbf and voting."""
    weights: tuple[float, ...] | None = None
    """One weight per model (None: equal)."""
    detections_per_image: int = Field(100, ge=1)
    """Boxes kept per image after fusion."""
    soft_nms_method: Literal["linear", "gaussian"] = "gaussian"
    """soft_nms fusion: the score decay."""
    sigma: float = Field(0.5, gt=0)
    """soft_nms fusion with gaussian decay: exp(-iou^2 / sigma)."""


class EvalSettings(StrictModel):
    short_side: int = Field(800, ge=1)
    """Single-scale test: short side in pixels."""
    max_size: int = Field(1333, ge=1)
    """Single-scale test: cap on the long side."""
    batch_size: int = Field(1, ge=1)
    """Images per forward pass."""
    tta: TTAConfig = TTAConfig()
    """Multi-scale + flip testing."""
    ensemble: EnsembleConfig = EnsembleConfig()
    """Box fusion of several checkpoints."""


class DetectorTrainingConfig(StrictModel):
    """Everything ``nas train`` and ``nas eval`` need."""

    source: ExportSource | None = None
    """Provenance written by ``nas export``; informational."""
    dataset: DatasetConfig
    """Training and evaluation data."""
    detector: FullDetectorConfig = FullDetectorConfig()
    """The Cascade R-CNN; ``neck.architecture`` is the searched cell."""
    train: TrainSettings = TrainSettings()
    """Schedule, augmentation, checkpoints, initialisation and distribution."""
    test: EvalSettings = EvalSettings()
    """Single-scale testing, TTA and ensembles."""

    @field_validator("detector", mode="before")
    @classmethod
    def _accept_plain_detector(cls, value: object) -> object:
        """A plain ``DetectorConfig`` is taken as it is, all of its values explicit."""
        if isinstance(value, DetectorConfig) and not isinstance(value, FullDetectorConfig):
            return value.model_dump()
        return value
