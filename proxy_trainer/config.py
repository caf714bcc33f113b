"""Proxy-task settings: the small dataset, the small detector and the short schedule behind one reward."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from detector.config import DetectorConfig, StrictModel
from detector.data.prepare import SyntheticDataConfig

__all__ = ["DatasetConfig", "ProxyConfig", "SyntheticDataConfig", "TrainConfig"]


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

    def absolute(self) -> "DatasetConfig":
        """The same dataset with absolute paths, for workers that run in other directories."""
        paths = {
            name: path.resolve()
            for name in ("train_annotations", "train_images", "val_annotations", "val_images")
            if (path := getattr(self, name)) is not None
        }
        if self.synthetic is not None:
            paths["synthetic"] = self.synthetic.model_copy(update={"root": self.synthetic.root.resolve()})
        return self.model_copy(update=paths)


class TrainConfig(StrictModel):
    iterations: int = Field(100, ge=1)
    batch_size: int = Field(8, ge=1)
    learning_rate: float = Field(0.02, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_iterations: int = Field(50, ge=0)
    warmup_factor: float = Field(0.001, gt=0, le=1)
    grad_clip: float | None = Field(10.0, gt=0)
    train_short_sides: tuple[int, int] = (112, 144)
    """Multi-scale training: the short side is drawn from this inclusive range."""
    train_max_size: int = 192
    flip_probability: float = Field(0.5, ge=0, le=1)
    eval_short_side: int = 128
    eval_max_size: int = 192
    eval_batch_size: int = Field(8, ge=1)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: CUDA when available. AMP is used on CUDA only."""
    amp: bool = True
    threads: int | None = Field(None, ge=1)
    """CPU threads for torch (None: torch's default)."""
    inject_nonfinite_loss_at: int | None = Field(None, ge=0)
    """For testing failure handling end to end: the loss turns NaN at this iteration."""


class ProxyConfig(StrictModel):
    dataset: DatasetConfig
    detector: DetectorConfig
    train: TrainConfig = TrainConfig()
