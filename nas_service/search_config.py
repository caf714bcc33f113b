"""A search's settings: controller, proxy task, reward, failure policy, budgets and resources.

The whole resolved config (the proxy file read in) is stored with the search, so a resume never
depends on files that may have changed since.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator, model_validator

from controller.config import ControllerConfig
from detector.config import StrictModel
from nas_errors import UserError
from nas_service.yaml_config import read_yaml, validate_config
from proxy_trainer.config import ProxyConfig


class RewardNoise(StrictModel):
    """The proxy's noise as ``nas proxy fidelity`` measured it, carried by a search so that its results
    say whether its best cell beats the seed architecture by more than the noise (see ``comparison``)."""

    paired: float = Field(gt=0, allow_inf_nan=False)
    """Spread of the same-seed reward difference between two cells (the report's paired noise)."""
    cells: dict[str, float] = {}
    """The reward of each cell the report trained, under the search's seed (e.g. fpn, nasfpn)."""
    source: str = "measured"
    """Where the figures come from (the report, its cells and seeds)."""


class RewardConfig(StrictModel):
    metric: Literal["AP", "AP50"] = "AP"
    """AP@[.5:.95] or AP50 of the proxy on the held-out split."""
    noise: RewardNoise | None = None
    """The proxy's measured noise (``nas search start --fidelity REPORT.json`` fills it in); None: unknown."""
    flops_target: float | None = Field(None, gt=0)
    """Cost-aware (MnasNet): reward = metric * (neck FLOPs / flops_target) ** flops_weight."""
    flops_weight: float = Field(-0.07, le=0)

    def reward(self, metrics: dict[str, float], neck_flops: int) -> float:
        value = float(metrics[self.metric])
        if not math.isfinite(value):
            raise ValueError(f"reward: metric {self.metric} is {value}")
        if self.flops_target is None:
            return value
        return value * (neck_flops / self.flops_target) ** self.flops_weight


class FailureConfig(StrictModel):
    max_retries: int = Field(1, ge=0)
    """Re-runs of a failed episode (exception, non-finite loss, killed worker) before giving up."""
    penalty_reward: float | None = Field(0.0, allow_inf_nan=False)
    """Reward the controller learns for an episode that failed every attempt; None: it learns nothing."""


class BudgetConfig(StrictModel):
    episodes: int = Field(400, ge=1, le=100_000)
    """Episodes proposed in all, cached ones included (the seed solution searched ~400)."""
    unique: int | None = Field(None, ge=1, le=100_000)
    """Stop after this many distinct architectures were trained."""
    seconds: float | None = Field(None, gt=0, le=366 * 24 * 3600)
    """Wall-clock budget, counted from the search's first start (time between runs counts too)."""


class ResourcesConfig(StrictModel):
    """What each trial reserves on the Ray cluster (a trial runs on one node, so at most one node's worth)."""

    concurrency: int = Field(1, ge=1, le=1024)
    """Proxy trainings at once."""
    cpus_per_trial: float = Field(1.0, gt=0, le=1024)
    gpus_per_trial: float = Field(0.0, ge=0, le=16)


class SearchConfig(StrictModel):
    proxy: ProxyConfig
    """Validated before ``controller``, which takes its pyramid levels from the proxy's neck."""
    controller: ControllerConfig = Field(default_factory=dict, validate_default=True)
    reward: RewardConfig = RewardConfig()
    failures: FailureConfig = FailureConfig()
    budget: BudgetConfig = BudgetConfig()
    resources: ResourcesConfig = ResourcesConfig()

    @field_validator("controller", mode="before")
    @classmethod
    def _levels_of_the_neck(cls, value: Any, info: ValidationInfo) -> Any:
        """The levels are stated once, in ``proxy.detector.neck.levels``: the controller searches cells
        for that neck. A config that states ``controller.levels`` too (every search stored before) must
        agree with it (``_same_levels``)."""
        proxy = info.data.get("proxy")
        if proxy is None or not isinstance(value, dict) or "levels" in value:
            return value
        return {**value, "levels": proxy.detector.neck.levels}

    @model_validator(mode="after")
    def _same_levels(self) -> "SearchConfig":
        neck_levels = tuple(self.proxy.detector.neck.levels)
        if tuple(self.controller.levels) != neck_levels:
            raise ValueError(
                f"controller.levels: {list(self.controller.levels)} must equal the proxy neck's levels "
                f"{list(neck_levels)} (proxy.detector.neck.levels); leave controller.levels out, it is taken "
                "from the neck"
            )
        return self


def stored_reward_metric(config: dict) -> str:
    """The reward metric of a search config as stored with the search (a dumped ``SearchConfig``)."""
    return config.get("reward", {}).get("metric", RewardConfig().metric)


def load_search_config(path: Path) -> SearchConfig:
    """Read a search YAML; ``proxy:`` is inline or the path of a proxy config file.

    An architecture file named in either file is read in, relative to the file that names it; file
    paths are made absolute (see ``with_absolute_paths``).
    """
    data = read_yaml(path)
    if isinstance(data.get("proxy"), str):
        proxy_path = Path(data["proxy"])
        data["proxy"] = validate_config(proxy_path, read_yaml(proxy_path), ProxyConfig).model_dump(mode="json")
    return with_absolute_paths(validate_config(path, data, SearchConfig))


def config_paths(model: BaseModel, within: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Path]]:
    """Every file or folder path set in a config, with its field names (``("proxy", "dataset", "val_images")``)."""
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, Path):
            yield (*within, name), value
        elif isinstance(value, BaseModel):
            yield from config_paths(value, (*within, name))


def with_absolute_paths(config: SearchConfig) -> SearchConfig:
    """The config with every path resolved against the working directory, symlinks followed, because
    the trials run in folders of their own, possibly on other machines sharing the storage.

    Resolving looks at names and links only: no file is opened.
    """
    data = config.model_dump(mode="json")
    for location, path in config_paths(config):
        try:
            resolved = path.resolve()
        except (OSError, ValueError) as error:  # a NUL character, a symlink loop
            raise UserError(f"config.{'.'.join(location)}: {path}: {error}") from None
        *parents, name = location
        section = data
        for parent in parents:
            section = section[parent]
        section[name] = str(resolved)
    return SearchConfig.model_validate(data)
