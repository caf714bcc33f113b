"""Tables of the episode store: searches, their episodes and their controller checkpoints.

The search row carries summary counters that every episode write updates in the same transaction, so
the API can show progress and the best-so-far without scanning episodes. Status columns are checked by
the database as well as by the store, so no writer can leave a value the readers do not know.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from nas_service.lifecycle import EpisodeStatus, SearchStatus

SEARCH_STATUSES = tuple(SearchStatus)
EPISODE_STATUSES = tuple(EpisodeStatus)


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend.

    SQLite keeps no offset, so values are normalised to UTC on the way in and marked UTC on the way
    out; naive datetimes are refused rather than guessed at.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()} has no timezone; use UTC")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _status_check(statuses: tuple[str, ...]) -> CheckConstraint:
    allowed = ", ".join(f"'{status}'" for status in statuses)
    return CheckConstraint(f"status IN ({allowed})", name="status")


class Base(DeclarativeBase):
    # Deterministic constraint names keep the migrations and the ORM metadata comparable.
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON()}


class SearchModel(Base):
    __tablename__ = "searches"
    # AUTOINCREMENT: ids of deleted searches are never handed out again (API links stay unambiguous).
    __table_args__ = (_status_check(SEARCH_STATUSES), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    config: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    budget_episodes: Mapped[int | None] = mapped_column(Integer)
    budget_unique: Mapped[int | None] = mapped_column(Integer)
    budget_seconds: Mapped[float | None] = mapped_column(Float)
    archived: Mapped[bool] = mapped_column(default=False, server_default=false())
    error: Mapped[str | None] = mapped_column(Text)
    num_episodes: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    num_completed: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    num_failed: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    num_cached: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    num_unique: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    best_reward: Mapped[float | None] = mapped_column(Float)
    best_episode_number: Mapped[int | None] = mapped_column(Integer)
    last_entropy: Mapped[float | None] = mapped_column(Float)
    # The runner's lease (migration 0003): all null while no runner holds the search.
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_token: Mapped[str | None] = mapped_column(String(64))
    lease_acquired_at: Mapped[datetime | None]
    lease_heartbeat_at: Mapped[datetime | None]
    lease_expires_at: Mapped[datetime | None]


class EpisodeModel(Base):
    __tablename__ = "episodes"
    __table_args__ = (
        UniqueConstraint("search_id", "number"),
        Index("ix_episodes_search_id_status", "search_id", "status"),
        Index("ix_episodes_search_id_arch_hash", "search_id", "arch_hash"),
        Index("ix_episodes_search_id_reward", "search_id", "reward"),
        Index("ix_episodes_search_id_proposal_id", "search_id", "proposal_id"),
        _status_check(EPISODE_STATUSES),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    search_id: Mapped[int] = mapped_column(ForeignKey("searches.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    proposal_id: Mapped[int] = mapped_column(Integer)
    architecture: Mapped[dict[str, Any]]
    arch_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    reward: Mapped[float | None] = mapped_column(Float)
    metrics: Mapped[dict[str, Any] | None]
    flops: Mapped[int | None] = mapped_column(BigInteger)
    params: Mapped[int | None] = mapped_column(BigInteger)
    worker: Mapped[str | None] = mapped_column(String(255))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    error: Mapped[str | None] = mapped_column(Text)
    proposed_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    train_seconds: Mapped[float | None] = mapped_column(Float)


class ControllerCheckpointModel(Base):
    __tablename__ = "controller_checkpoints"
    __table_args__ = (UniqueConstraint("search_id", "update_number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    search_id: Mapped[int] = mapped_column(ForeignKey("searches.id", ondelete="CASCADE"))
    update_number: Mapped[int] = mapped_column(Integer)
    episodes_reported: Mapped[int] = mapped_column(Integer)
    state: Mapped[bytes] = mapped_column(LargeBinary)
    entropy: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ControllerUpdateModel(Base):
    """One row per controller update with its entropy; unlike checkpoints, never pruned."""

    __tablename__ = "controller_updates"

    search_id: Mapped[int] = mapped_column(ForeignKey("searches.id", ondelete="CASCADE"), primary_key=True)
    update_number: Mapped[int] = mapped_column(Integer, primary_key=True)
    episodes_reported: Mapped[int] = mapped_column(Integer)
    entropy: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
