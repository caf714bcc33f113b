"""Proxy-task settings: the small dataset, the small detector and the short schedule behind one reward.

The data, training and testing sections are the full trainer's (``detector.engine.config``); what makes
them a proxy is ``PROXY_PRESET``, merged under what a proxy config gives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from detector.config import DetectorConfig, StrictModel
from detector.engine.config import MAX_ITERATIONS, DatasetConfig, TestSettings, TrainSettings, with_preset
from search_spaces.architecture import ArchitectureError
from search_spaces.space import inline_architecture_file, resolve_architecture

__all__ = ["PROXY_PRESET", "BaseConfig", "ProxyConfig"]

PROXY_PRESET: dict[str, Any] = {
    "dataset": {"num_workers": 0},
    "train": {
        "iterations": 100,
        "batch_size": 8,
        "warmup_iterations": 50,
        "schedule": "cosine",
        "grad_clip": 10.0,
        "short_sides": (112, 144),
        "max_size": 192,
        "log_every": 25,
    },
    "test": {"short_side": 128, "max_size": 192, "batch_size": 8},
}
"""The proxy's values where they differ from the sections' (full-size) defaults: a short cosine schedule,
small images, and evaluation in the trial's own process."""


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
    """The training split and the held-out reward split."""
    detector: DetectorConfig
    train: TrainSettings = TrainSettings.model_validate(PROXY_PRESET["train"])
    """The short fit (``PROXY_PRESET`` under what the file gives)."""
    test: TestSettings = TestSettings.model_validate(PROXY_PRESET["test"])
    """The held-out evaluation behind the reward."""
    base: BaseConfig | None = None
    """A pretrained proxy base shared by every episode; None: every episode trains from scratch."""

    @model_validator(mode="before")
    @classmethod
    def _proxy_preset(cls, data: Any) -> Any:
        return with_preset(PROXY_PRESET, data)

    @model_validator(mode="after")
    def _check(self) -> "ProxyConfig":
        dataset = self.dataset
        if dataset.synthetic is None and dataset.train_annotations == dataset.val_annotations:
            raise ValueError("dataset.val_annotations: the reward split must differ from the training split")
        if dataset.sampler.kind != "uniform":
            raise ValueError(
                f"dataset.sampler: the proxy draws its training images uniformly (a seeded shuffle), "
                f"not {dataset.sampler.kind}; leave the sampler out"
            )
        if self.base is not None:
            try:
                resolve_architecture(self.base.architecture, self.detector.neck.levels)
            except ArchitectureError as error:
                raise ValueError(f"base.architecture: {error}") from None
        return self
