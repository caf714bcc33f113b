"""Request and response bodies of the REST API: the OpenAPI schema is generated from these."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from nas_service.comparison import SeedComparison
from nas_service.lifecycle import EpisodeStatus, SearchStatus
from nas_service.search_config import SearchConfig, stored_reward_metric
from nas_service.store import EpisodeRecord, SearchRecord


class FieldProblem(BaseModel):
    loc: list[str | int]
    """Where the bad value is, e.g. ``["body", "config", "budget", "episodes"]``."""
    msg: str


class Problem(BaseModel):
    """Every error response: why the request was refused."""

    detail: str
    errors: list[FieldProblem] | None = None
    """For a request that does not validate: each bad field and what is wrong with it."""


class Health(BaseModel):
    status: Literal["ok"]
    database: str
    """The store's backend (sqlite or postgresql)."""
    version: str


class SearchCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _no_nul_characters(cls, data: Any) -> Any:
        """PostgreSQL stores no NUL in text or JSON, and no file name holds one: refuse it up front."""
        if (where := nul_at(data)) is not None:
            raise ValueError(f"{where}: contains a NUL character")
        return data

    name: str | None = Field(None, min_length=1, max_length=200)
    """Unique name; default: ``api-<time>``."""
    config: SearchConfig
    """The whole search config, as in ``configs/search/*.yaml`` with the proxy inline."""
    start: bool = True
    """Launch the runner right away (false: only store the search; resume it later)."""


class SearchSummary(BaseModel):
    id: int
    name: str
    status: SearchStatus
    archived: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    budget_episodes: int | None
    budget_unique: int | None
    budget_seconds: float | None
    num_episodes: int
    num_completed: int
    num_failed: int
    num_cached: int
    num_unique: int
    best_reward: float | None
    best_episode_number: int | None
    last_entropy: float | None
    lease_owner: str | None
    """The runner that holds the search (``host:pid``), while one does."""
    lease_heartbeat_at: datetime | None
    lease_expires_at: datetime | None
    """Without a heartbeat by then, the runner is taken for dead and a resume takes the search over."""
    error: str | None
    """Why the search failed or stopped, as a message (a trace stays in the runner's log)."""
    progress: float
    """Share of the episode budget proposed so far, from 0 to 1."""

    @classmethod
    def from_record(cls, search: SearchRecord) -> "SearchSummary":
        budget = search.budget_episodes
        progress = min(1.0, search.num_episodes / budget) if budget else 0.0
        fields = {name: getattr(search, name) for name in cls.model_fields if name not in ("progress", "error")}
        return cls(**fields, progress=progress, error=error_message(search.error))


class SeedComparisonView(BaseModel):
    """The best episode against the seed architecture's, with the proxy's measured noise (null: unknown)."""

    seed_episode: int
    seed_reward: float
    best_episode: int
    best_reward: float
    noise: float | None
    """The proxy's paired noise: the dashboard draws seed_reward +- noise as a band."""
    beats_seed: bool | None
    """Whether the best leads by at least ``NOISE_MULTIPLE`` times the noise; null without a noise."""
    summary: list[str]

    @classmethod
    def of(cls, comparison: SeedComparison) -> "SeedComparisonView":
        noise = comparison.noise
        return cls(
            **{name: getattr(comparison, name) for name in ("seed_episode", "seed_reward", "best_episode", "best_reward")},
            noise=None if noise is None else noise.paired,
            beats_seed=comparison.beats_seed,
            summary=comparison.lines(),
        )


class SearchDetail(SearchSummary):
    config: dict[str, Any]
    reward_metric: str
    seed_comparison: SeedComparisonView | None
    """Null for an unseeded search, or before the seed architecture and another cell are scored."""

    @classmethod
    def from_record(cls, search: SearchRecord, comparison: SeedComparison | None) -> "SearchDetail":
        summary = SearchSummary.from_record(search)
        metric = stored_reward_metric(search.config)
        view = None if comparison is None else SeedComparisonView.of(comparison)
        return cls(**summary.model_dump(), config=search.config, reward_metric=metric, seed_comparison=view)


class SearchLaunch(BaseModel):
    search: SearchSummary
    runner: str | None
    """Where the runner was launched (pid and log, or Ray job), or null when not started."""


class EpisodeSummary(BaseModel):
    number: int
    status: EpisodeStatus
    arch_hash: str
    reward: float | None
    metrics: dict[str, float | None] | None
    flops: int | None
    params: int | None
    attempts: int
    worker: str | None
    proposed_at: datetime
    finished_at: datetime | None
    train_seconds: float | None
    error: str | None
    """Why the last attempt failed, as a message (the trace stays in the runner's log)."""

    @classmethod
    def from_record(cls, episode: EpisodeRecord) -> "EpisodeSummary":
        fields = {name: getattr(episode, name) for name in cls.model_fields if name != "error"}
        return cls(**fields, error=error_message(episode.error))


class EpisodeDetail(EpisodeSummary):
    search_id: int
    proposal_id: int
    architecture: dict[str, Any]
    """The cell in the architecture JSON schema (``search_spaces.Architecture.to_dict()``)."""
    description: str
    """The cell in one line, as ``nas arch show`` prints it."""
    started_at: datetime | None

    @classmethod
    def from_record(cls, episode: EpisodeRecord, description: str) -> "EpisodeDetail":
        fields = {name: getattr(episode, name) for name in cls.model_fields if name not in ("description", "error")}
        return cls(**fields, description=description, error=error_message(episode.error))


class EpisodePage(BaseModel):
    items: list[EpisodeSummary]
    total: int
    """Episodes matching the status filter (all of them, not only this page)."""
    limit: int
    offset: int
    last_number: int | None
    """Highest episode number in this page."""
    poll_after: int | None
    """Pass this as ``after`` to poll: every episode up to it has finished, later ones may still change
    (null unless the page is the first, or an ``after`` page, by ascending number)."""


class Series(BaseModel):
    """Columns for the progress charts: one entry per episode, ascending by number.

    Unfinished episodes are included (reward null) and change when they finish: poll with
    ``after=poll_after``, not ``after=last_number``.
    """

    numbers: list[int]
    statuses: list[EpisodeStatus]
    rewards: list[float | None]
    first_of_architecture: list[bool]
    """True where the search proposed an architecture for the first time."""
    entropy_episodes: list[int]
    """Episodes reported to the controller at each update."""
    entropy: list[float]
    """The controller's policy entropy after each update."""
    last_number: int | None
    poll_after: int
    """Pass this as ``after`` to poll: every episode up to it has finished, later ones may still change."""
    last_update: int | None


class RankedArchitecture(BaseModel):
    rank: int
    episode: EpisodeDetail


class ArchitectureInfo(BaseModel):
    name: str
    arch_hash: str
    description: str
    architecture: dict[str, Any]


class ConfigPreset(BaseModel):
    name: str
    path: str
    config: dict[str, Any] | None
    error: str | None
    """Why the file does not load as a search config (then ``config`` is null)."""


TRACEBACK_HEADER = "Traceback (most recent call last):"


def error_message(error: str | None) -> str | None:
    """A stored error as a message: of a Python traceback, only the exception's own lines (the frames
    name the server's files; the runner's log has them)."""
    if error is None or TRACEBACK_HEADER not in error:
        return error
    lines = error.rstrip().splitlines()
    frames = [number for number, line in enumerate(lines) if line.startswith('  File "')]
    after = lines[frames[-1] + 1 :] if frames else lines[-1:]
    return "\n".join(line for line in after if not line.startswith("    ")) or lines[-1]


def nul_at(value: Any, where: str = "") -> str | None:
    """The first place in a JSON value holding a NUL character (``config.proxy.dataset.root``), or None."""
    if isinstance(value, str):
        return (where or "body") if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            if "\x00" in str(key):
                return where or "body"
            if (found := nul_at(item, f"{where}.{key}" if where else str(key))) is not None:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            if (found := nul_at(item, f"{where}[{index}]")) is not None:
                return found
    return None
