"""Controller settings, validated: a search config embeds them under ``controller:``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from search_spaces.architecture import DEFAULT_LEVELS, ArchitectureError
from search_spaces.space import SearchSpace, inline_architecture_file, resolve_architecture


class ControllerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    algorithm: Literal["ppo", "reinforce"] = "ppo"
    """PPO with clipping as in NAS-FPN, or REINFORCE with a moving-average baseline."""
    levels: tuple[int, ...] = DEFAULT_LEVELS
    num_cells: int = Field(7, ge=1)
    hidden_size: int = Field(64, ge=1)
    learning_rate: float = Field(0.005, gt=0)
    batch_size: int = Field(8, ge=1)
    """Rewards collected before each policy update; they may arrive in any order."""
    ppo_epochs: int = Field(4, ge=1)
    ppo_clip: float = Field(0.2, gt=0, lt=1)
    entropy_weight: float = Field(0.03, ge=0)
    baseline_decay: float = Field(0.9, ge=0, lt=1)
    """Decay of the moving averages of the reward (the baseline) and of its variance."""
    normalize_advantages: bool = True
    """Divide advantages by the moving standard deviation, so the step size does not depend on the
    reward's scale (AP differences between cells are often a few hundredths)."""
    grad_clip: float | None = Field(5.0, gt=0)
    temperature: float = Field(1.0, gt=0)
    seed: int = 0
    seed_architecture: str | dict[str, Any] | None = "nasfpn"
    """Known name or inline architecture proposed first and pre-trained towards; None: none. A config file
    may name a JSON file (relative to the config file), read in when the file is loaded."""
    seed_target_probability: float = Field(0.1, gt=0, lt=1)
    """Pre-train by maximum likelihood until the seed architecture is sampled with this probability."""
    seed_learning_rate: float = Field(0.003, gt=0)
    seed_max_steps: int = Field(2000, ge=1)

    @field_validator("seed_architecture", mode="before")
    @classmethod
    def _read_file_named_in_a_config_file(cls, value: Any, info: ValidationInfo) -> Any:
        return inline_architecture_file(value, info.context)

    @model_validator(mode="after")
    def _check_space(self) -> "ControllerConfig":
        space = self.space()
        if self.seed_architecture is not None:
            try:
                seed = resolve_architecture(self.seed_architecture, self.levels)
            except ArchitectureError as error:
                raise ValueError(f"seed_architecture: {error}") from None
            if not space.contains(seed):
                raise ValueError(
                    f"seed_architecture: has {len(seed.cells)} cells on levels {list(seed.levels)}, but the "
                    f"controller searches {self.num_cells} cells on levels {list(self.levels)}"
                )
        return self

    def space(self) -> SearchSpace:
        try:
            return SearchSpace(levels=self.levels, num_cells=self.num_cells)
        except ArchitectureError as error:
            raise ValueError(str(error)) from None
