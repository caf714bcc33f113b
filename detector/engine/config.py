"""The training and testing vocabulary shared by the proxy and the full trainer, and the full recipe.

One set of sections for both: ``DatasetConfig`` (data), ``TrainSettings`` (optimisation, schedule,
input sizes, runtime) and ``TestSettings`` (test sizes). The full trainer adds checkpoints,
initialisation and distribution (``FullTrainSettings``) and TTA and ensembles (``FullTestSettings``).
The sections' defaults are the full-size recipe's; a recipe that differs says so in a preset, values
merged under what its config file gives (``with_preset``): the proxy's short schedule and small sizes
(``proxy_trainer.config.PROXY_PRESET``), and the model choices of the 2019 solution (``FULL_PRESET``).

``DetectorTrainingConfig(dataset=...)`` is a complete full-size recipe, the 2019 solution's
(Baidu, Objects365 Challenge 2019): Cascade R-CNN R-50 with FPN -> NAS-FPN (7 repeats, 256
channels), the 14x14 box head, adaptive cascade testing, Soft-NMS, multi-scale training with short
sides 400..1400 (max 1600) and multi-scale + flip testing at 400..1400 (max 2100).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Mapping

from pydantic import BaseModel, Field, model_validator

from detector.config import DetectorConfig, SamplerKind, StrictModel
from detector.data.prepare import DatasetPaths, SyntheticDataConfig, ensure_synthetic_dataset

if TYPE_CHECKING:  # the dataset (torch) loads when a run reads it, not when a config is read
    from detector.data.coco import CocoDetection
    from detector.data.transforms import Transform


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
    """Training image sampler of the full trainer (the proxy draws a seeded uniform shuffle)."""
    num_workers: int = Field(4, ge=0, le=64)
    """DataLoader worker processes per process (0: load in the main process)."""
    max_val_images: int | None = Field(None, ge=1)
    """Evaluate on the first N images of the evaluation split only (for the proxy: a faster, noisier reward)."""

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

    def load(self, split: Literal["train", "val"], transforms: Transform | None = None) -> CocoDetection:
        """The training or evaluation split as a dataset, its samples passed through ``transforms``."""
        from detector.data.coco import CocoDetection

        paths, train = self.paths(), split == "train"
        return CocoDetection(
            paths.train_annotations if train else paths.val_annotations,
            paths.train_images if train else paths.val_images,
            transforms=transforms,
            train=train,
            rewrite_objects365_v2_paths=self.objects365_v2_paths,
        )


class DistributedConfig(StrictModel):
    """Data-parallel training; processes are started by ``torchrun`` (see docs/training.md)."""

    backend: Literal["auto", "nccl", "gloo"] = "auto"
    """torch.distributed backend; auto: nccl on CUDA, gloo on the CPU."""
    sync_bn: bool = False
    """Convert trainable BatchNorm layers to SyncBatchNorm (CUDA only), so small per-GPU batches
    normalise over the whole batch; GN needs no synchronisation."""


MAX_IMAGE_SIDE = 4096
"""Largest image side trained or tested at (the full recipe's largest is 2100)."""
MAX_ITERATIONS = 1_000_000
ImageSide = Annotated[int, Field(ge=1, le=MAX_IMAGE_SIDE)]


class TrainSettings(StrictModel):
    """Optimisation, schedule, input sizes and runtime: what the one training loop reads."""

    iterations: int = Field(350_000, ge=1, le=MAX_ITERATIONS)
    """Optimizer steps (the 2019 solution's sampling comparison ran 350k iterations)."""
    batch_size: int = Field(2, ge=1, le=1024)
    """Images per process and step; the global batch is this times the number of processes."""
    learning_rate: float = Field(0.02, gt=0)
    """Base learning rate for the default 16-image global batch (scale it linearly with the batch)."""
    momentum: float = Field(0.9, ge=0, lt=1)
    """SGD momentum."""
    weight_decay: float = Field(1e-4, ge=0)
    """SGD weight decay."""
    warmup_iterations: int = Field(1000, ge=0, le=MAX_ITERATIONS)
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
    short_sides: tuple[ImageSide, ImageSide] = (400, 1400)
    """Multi-scale training: the short side is drawn uniformly from this inclusive range."""
    max_size: ImageSide = 1600
    """Cap on the long side after resizing."""
    flip_probability: float = Field(0.5, ge=0, le=1)
    """Horizontal flip probability."""
    log_every: int = Field(20, ge=1)
    """Log progress (and write TensorBoard scalars) every N iterations, and at the first and last."""
    amp: bool = True
    """Mixed precision; used on CUDA only, CPU runs stay float32."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: CUDA when available."""
    seed: int = 0
    """Seeds weights, sampling, augmentation and RoI sampling; CPU runs repeat exactly."""
    threads: int | None = Field(None, ge=1, le=1024)
    """CPU threads for torch per process. A search's proxy always takes the CPUs its trial was given
    (``resources.cpus_per_trial``); ``nas proxy`` and its reports take ``--threads``, else this, else the
    CPUs this process may run on (never torch's default, which oversubscribes a shared machine). None
    in the full trainer keeps torch's default (torchrun sets one thread per process)."""

    @model_validator(mode="after")
    def _check(self) -> "TrainSettings":
        low, high = self.short_sides
        if not low <= high:
            raise ValueError(f"short_sides: expected 0 < low <= high, got {list(self.short_sides)}")
        if list(self.steps) != sorted(self.steps) or any(s <= 0 for s in self.steps):
            raise ValueError(f"steps: expected increasing positive iterations, got {list(self.steps)}")
        return self


class FullTrainSettings(TrainSettings):
    """The full trainer's: the shared settings, and checkpoints, initialisation and distribution."""

    checkpoint_every: int = Field(10_000, ge=1)
    """Write a checkpoint every N iterations (and always at the end)."""
    keep_checkpoints: int = Field(3, ge=1)
    """Periodic checkpoints kept in the work directory (older ones are deleted; the final one stays)."""
    init_from: Path | None = None
    """Checkpoint to start from (e.g. COCO-pretrained): layers with matching names and shapes load."""
    init_classes: Literal["remap", "reinit"] = "remap"
    """Class-dependent layers of ``init_from``: remap rows by category name, or re-initialise all."""
    init_class_map: dict[str, str] = {}
    """Extra name matches for remapping, this dataset's name -> the checkpoint's name."""
    distributed: DistributedConfig = DistributedConfig()
    """Multi-GPU / multi-node options."""

    @model_validator(mode="after")
    def _warmup_within(self) -> "FullTrainSettings":
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


class TestSettings(StrictModel):
    """Single-scale testing: the proxy's reward and ``nas eval`` without TTA."""

    short_side: ImageSide = 800
    """Short side in pixels."""
    max_size: ImageSide = 1333
    """Cap on the long side."""
    batch_size: int = Field(1, ge=1, le=1024)
    """Images per forward pass."""


class FullTestSettings(TestSettings):
    """The full trainer's: single-scale testing, and TTA and ensembles."""

    tta: TTAConfig = TTAConfig()
    """Multi-scale + flip testing."""
    ensemble: EnsembleConfig = EnsembleConfig()
    """Box fusion of several checkpoints."""


FULL_PRESET: dict[str, Any] = {
    "detector": {
        "cascade": {"box_head_resolution": 14},
        "postprocess": {"nms": "gaussian", "sigma": 0.15},
    }
}
"""The 2019 solution's model choices beyond the sections' defaults: the 14x14 box head and gaussian
Soft-NMS with sigma 0.15 (Baidu's Objects365 setting)."""


def with_preset(preset: Mapping[str, Any], data: Any) -> Any:
    """``data`` (a config's fields) over ``preset``, section by section: a field a config gives wins, one
    it leaves out takes the preset's value, else the section's default. A section given as a model
    object is complete and taken as it is."""
    if not isinstance(data, Mapping):
        return data
    merged = dict(data)
    for name, value in preset.items():
        if name not in merged:
            merged[name] = value
        elif isinstance(value, Mapping) and not isinstance(merged[name], BaseModel):
            merged[name] = with_preset(value, merged[name])
    return merged


class DetectorTrainingConfig(StrictModel):
    """Everything ``nas train`` and ``nas eval`` need; ``FULL_PRESET`` under what a file gives."""

    source: ExportSource | None = None
    """Provenance written by ``nas export``; informational."""
    dataset: DatasetConfig
    """Training and evaluation data."""
    detector: DetectorConfig = DetectorConfig.model_validate(FULL_PRESET["detector"])
    """The Cascade R-CNN; ``neck.architecture`` is the searched cell."""
    train: FullTrainSettings = FullTrainSettings()
    """Schedule, augmentation, checkpoints, initialisation and distribution."""
    test: FullTestSettings = FullTestSettings()
    """Single-scale testing, TTA and ensembles."""

    @model_validator(mode="before")
    @classmethod
    def _full_preset(cls, data: Any) -> Any:
        return with_preset(FULL_PRESET, data)
