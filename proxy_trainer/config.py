"""Proxy-task settings: the small dataset, the small detector and the short schedule behind one reward."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from detector.config import DetectorConfig, StrictModel
from detector.data.prepare import SyntheticDataConfig
from search_spaces.architecture import ArchitectureError
from search_spaces.space import inline_architecture_file, resolve_architecture

__all__ = ["BaseConfig", "DatasetConfig", "ProxyConfig", "SyntheticDataConfig", "TrainConfig"]


class DatasetConfig(StrictModel):
    """COCO-format data; the reward split must be held out from training."""

    train_annotations: Path | None = None
    train_images: Path | None = None
    val_annotations: Path | None = None
    val_images: Path | None = None
    synthetic: SyntheticDataConfig | None = None
    max_val_images: int | None = Field(None, ge=1)
    """Score the reward on the first N held-out images only (a faster, noisier reward)."""

    @model_validator(mode="after")
    def _one_source(self) -> "DatasetConfig":
        files = [self.train_annotations, self.train_images, self.val_annotations, self.val_images]
        if self.synthetic is None and any(f is None for f in files):
            raise ValueError(
                "dataset: give train_annotations, train_images, val_annotations and val_images, or synthetic"
            )
        if self.synthetic is not None and any(f is not None for f in files):
            raise ValueError("dataset: give either the four COCO paths or synthetic, not both")
        if self.synthetic is None and self.train_annotations == self.val_annotations:
            raise ValueError("dataset.val_annotations: the reward split must differ from the training split")
        return self


MAX_IMAGE_SIDE = 4096
"""Largest image side a proxy trains or tests at (the full detector's largest is 2100)."""
MAX_ITERATIONS = 1_000_000
ImageSide = Annotated[int, Field(ge=1, le=MAX_IMAGE_SIDE)]


class TrainConfig(StrictModel):
    iterations: int = Field(100, ge=1, le=MAX_ITERATIONS)
    batch_size: int = Field(8, ge=1, le=1024)
    learning_rate: float = Field(0.02, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_iterations: int = Field(50, ge=0, le=MAX_ITERATIONS)
    warmup_factor: float = Field(0.001, gt=0, le=1)
    grad_clip: float | None = Field(10.0, gt=0)
    train_short_sides: tuple[ImageSide, ImageSide] = (112, 144)
    """Multi-scale training: the short side is drawn from this inclusive range."""
    train_max_size: ImageSide = 192
    flip_probability: float = Field(0.5, ge=0, le=1)
    eval_short_side: ImageSide = 128
    eval_max_size: ImageSide = 192
    eval_batch_size: int = Field(8, ge=1, le=1024)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: CUDA when available. AMP is used on CUDA only."""
    amp: bool = True
    threads: int | None = Field(None, ge=1, le=1024)
    """CPU threads for torch when the caller does not say (a search passes its trial's CPUs); None: the
    number of CPUs this process may run on. Never torch's default: on a shared machine that oversubscribes."""
    log_every: int = Field(25, ge=1)
    """Log iteration, loss and ETA every this many iterations (and at the first and last)."""
    inject_nonfinite_loss_at: int | None = Field(None, ge=0)
    """For testing failure handling end to end: the loss turns NaN at this iteration."""


BasePart = Literal["backbone", "pyramid", "rpn", "roi_heads"]
FrozenPart = Literal["backbone", "pyramid"]


class BaseConfig(StrictModel):
    """A proxy base: a detector trained once on the proxy's training split and shared by every episode.

    Episodes load the ``load`` parts from it (the searched cell never), freeze the ``freeze`` parts
    (BN statistics included) and train the rest for ``train.iterations``. The base's own recipe is
    ``architecture``, ``iterations``, ``learning_rate``, ``warmup_iterations`` and ``seed``; the other
    training settings (batch, input sizes, optimiser) are the proxy's ``train`` ones.
    """

    path: Path | None = None
    """The base file (``nas proxy base`` makes it). None: built on first use into ``cache_dir``, named by
    a hash of what it depends on (dataset, detector settings, recipe)."""
    cache_dir: Path = Path("data/proxy-bases")
    """Where bases built on first use are kept (relative to the working directory)."""
    architecture: str | dict[str, Any] = "fpn"
    """The cell the base is trained with: a known name or inline JSON; a config file may name a JSON file
    (relative to the config file), which is read in when the file is loaded."""
    iterations: int = Field(350, ge=1, le=MAX_ITERATIONS)
    learning_rate: float = Field(0.04, gt=0)
    warmup_iterations: int = Field(20, ge=0, le=MAX_ITERATIONS)
    seed: int = 0
    load: tuple[BasePart, ...] = ("backbone", "pyramid")
    """Parts every episode starts from; the others start from a fresh initialisation that depends only on
    the episode's seed, not on its cell."""
    freeze: tuple[FrozenPart, ...] = ("backbone", "pyramid")
    """Loaded parts that episodes do not train (in eval mode, so BN statistics stay the base's)."""

    @field_validator("architecture", mode="before")
    @classmethod
    def _read_file_named_in_a_config_file(cls, value: Any, info: ValidationInfo) -> Any:
        return inline_architecture_file(value, info.context)

    @model_validator(mode="after")
    def _parts(self) -> "BaseConfig":
        for name in ("load", "freeze"):
            parts = getattr(self, name)
            if len(set(parts)) != len(parts):
                raise ValueError(f"base.{name}: lists a part twice: {list(parts)}")
        if not self.load:
            raise ValueError("base.load: name at least one part to load from the base, or drop the base section")
        if unloaded := [part for part in self.freeze if part not in self.load]:
            raise ValueError(f"base.freeze: {unloaded} would be frozen at a random initialisation; add to base.load")
        return self


class ProxyConfig(StrictModel):
    dataset: DatasetConfig
    detector: DetectorConfig
    train: TrainConfig = TrainConfig()
    base: BaseConfig | None = None
    """A pretrained proxy base shared by every episode; None: every episode trains from scratch."""

    @model_validator(mode="after")
    def _base_cell(self) -> "ProxyConfig":
        if self.base is not None:
            try:
                resolve_architecture(self.base.architecture, self.detector.neck.levels)
            except ArchitectureError as error:
                raise ValueError(f"base.architecture: {error}") from None
        return self
