"""``EpisodeStore``: the one interface through which the runner and the API read and write searches.

Every write runs in one transaction that first locks the search row (``SELECT ... FOR UPDATE`` on
PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite). Writes to a search are therefore serialised, so episode
numbers come out consecutive and the search's counters and best-so-far, updated in the same
transaction as the episode, always agree with the episodes. Methods return frozen records, never ORM
objects, so no caller holds a session or sees a half-written row.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, fields
from datetime import datetime
from numbers import Integral, Real
from typing import Any, Self, TypeVar

from sqlalchemy import ColumnElement, delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from nas_service.store.engine import create_store_engine, writer
from nas_service.store.errors import Conflict, EpisodeNotFound, SearchNotFound, StoreError
from nas_service.store.migrate import upgrade_engine
from nas_service.store.schema import (
    EPISODE_STATUSES,
    SEARCH_STATUSES,
    ControllerCheckpointModel,
    ControllerUpdateModel,
    EpisodeModel,
    SearchModel,
    utcnow,
)

EPISODE_SORTS = ("number", "reward", "finished_at", "flops")
UNFINISHED_STATUSES = ("proposed", "running")
FINISHED_STATUSES = ("completed", "failed", "cached")
SCORED_STATUSES = ("completed", "cached")
"""Episodes whose reward measures their architecture (a failure's reward is only a penalty)."""
FINISHED_SEARCH_STATUSES = ("stopped", "completed", "failed")

_COUNTERS = {"completed": "num_completed", "failed": "num_failed", "cached": "num_cached"}
_SORT_COLUMNS = {
    "number": EpisodeModel.number,
    "reward": EpisodeModel.reward,
    "finished_at": EpisodeModel.finished_at,
    "flops": EpisodeModel.flops,
}
INT32_MAX = 2**31 - 1
"""The largest id, number or count the INTEGER columns hold on every backend."""
INT64_MAX = 2**63 - 1
_ARCH_HASH = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class SearchRecord:
    id: int
    name: str
    config: dict[str, Any]
    status: str
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    budget_episodes: int | None
    budget_unique: int | None
    budget_seconds: float | None
    archived: bool
    error: str | None
    num_episodes: int
    num_completed: int
    num_failed: int
    num_cached: int
    num_unique: int
    """Distinct architecture hashes among completed episodes: how many cells were really trained."""
    best_reward: float | None
    """Highest reward of a completed or cached episode; ties go to the lowest episode number."""
    best_episode_number: int | None
    last_entropy: float | None


@dataclass(frozen=True, slots=True)
class EpisodeRecord:
    search_id: int
    number: int
    proposal_id: int
    architecture: dict[str, Any]
    arch_hash: str
    status: str
    reward: float | None
    metrics: dict[str, Any] | None
    flops: int | None
    params: int | None
    worker: str | None
    attempts: int
    error: str | None
    """Why the episode last failed: kept through a requeue, so a retry shows it, cleared on success."""
    proposed_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    train_seconds: float | None


@dataclass(frozen=True, slots=True)
class CheckpointRecord:
    search_id: int
    update_number: int
    episodes_reported: int
    state: bytes = field(repr=False)
    entropy: float | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class SeriesPoint:
    """One episode reduced to what the progress charts draw."""

    number: int
    status: str
    reward: float | None
    first_of_architecture: bool
    """The search proposed this architecture here for the first time (counts toward unique ones)."""


@dataclass(frozen=True, slots=True)
class EntropyPoint:
    update_number: int
    episodes_reported: int
    entropy: float


Record = TypeVar("Record", SearchRecord, EpisodeRecord, CheckpointRecord)


def _record(cls: type[Record], row: object) -> Record:
    return cls(**{item.name: getattr(row, item.name) for item in fields(cls)})


class EpisodeStore:
    """Searches, episodes and controller checkpoints in SQLite (``sqlite:///path.db``) or PostgreSQL.

    Opening a store upgrades its database to the current schema. One store may be shared by threads;
    any number of processes may open the same database.
    """

    def __init__(self, url: str) -> None:
        self._engine = create_store_engine(url)
        try:
            upgrade_engine(self._engine)
        except BaseException:
            self._engine.dispose()
            raise
        self._reading = sessionmaker(self._engine)
        self._writing = sessionmaker(writer(self._engine))

    def close(self) -> None:
        """Close the pooled connections."""
        self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- searches ------------------------------------------------------------------------------------

    def create_search(
        self,
        name: str,
        config: dict[str, Any],
        budget_episodes: int | None = None,
        budget_unique: int | None = None,
        budget_seconds: float | None = None,
    ) -> SearchRecord:
        name = _text("name", name, max_length=200)
        row = SearchModel(
            name=name,
            config=_json_object("config", config),
            status="created",
            budget_episodes=_optional(_integer, "budget_episodes", budget_episodes, minimum=1),
            budget_unique=_optional(_integer, "budget_unique", budget_unique, minimum=1),
            budget_seconds=_optional(_number, "budget_seconds", budget_seconds, positive=True),
        )
        with self._writing.begin() as session:
            session.add(row)
            try:
                session.flush()
            except IntegrityError:
                raise Conflict(f"a search named {name!r} already exists") from None
            return _record(SearchRecord, row)

    def get_search(self, search_id: int) -> SearchRecord:
        with self._reading() as session:
            return _record(SearchRecord, _search_row(session, search_id))

    def get_search_by_name(self, name: str) -> SearchRecord:
        with self._reading() as session:
            row = session.scalar(select(SearchModel).where(SearchModel.name == name))
            if row is None:
                raise SearchNotFound(f"no search named {name!r}")
            return _record(SearchRecord, row)

    def list_searches(self, include_archived: bool = False) -> list[SearchRecord]:
        query = select(SearchModel).order_by(SearchModel.id)
        if not include_archived:
            query = query.where(SearchModel.archived.is_(False))
        with self._reading() as session:
            return [_record(SearchRecord, row) for row in session.scalars(query)]

    def set_search_status(
        self, search_id: int, status: str, error: str | None = None, expected: Collection[str] | None = None
    ) -> SearchRecord:
        """Move a search to ``status``; ``error`` replaces the stored one (``None`` clears it).

        With ``expected``, only from one of those statuses (else ``Conflict``): a compare-and-set under
        the row lock, so of two callers racing to claim a search only one wins.
        """
        status = _choice("status", status, SEARCH_STATUSES)
        error = _optional(_text, "error", error)
        with self._writing.begin() as session:
            row = _search_row(session, search_id, lock=True)
            if expected is not None and row.status not in expected:
                raise Conflict(f"search {search_id} is {row.status}, not {' or '.join(sorted(expected))}")
            now = utcnow()
            if status == "running" and row.started_at is None:
                row.started_at = now
            # A resumed search is not finished any more; finishing again stamps the new time.
            row.finished_at = now if status in FINISHED_SEARCH_STATUSES else None
            row.status = status
            row.error = error
            session.flush()
            return _record(SearchRecord, row)

    def restore_search_state(self, search: SearchRecord) -> SearchRecord:
        """Undo a claim: status, error and timestamps back to ``search``'s, if still ``running``.

        Used when a runner could not be launched, so that the failed start leaves no trace (a time
        budget does not start counting) and a stop or resume that happened since is not overwritten.
        """
        with self._writing.begin() as session:
            row = _search_row(session, search.id, lock=True)
            if row.status != "running":
                raise Conflict(f"search {search.id} is {row.status}, not running")
            row.status, row.error = search.status, search.error
            row.started_at, row.finished_at = search.started_at, search.finished_at
            session.flush()
            return _record(SearchRecord, row)

    def archive_search(self, search_id: int) -> SearchRecord:
        """Hide a search from ``list_searches()`` without deleting anything."""
        with self._writing.begin() as session:
            row = _search_row(session, search_id, lock=True)
            row.archived = True
            session.flush()
            return _record(SearchRecord, row)

    def delete_search(self, search_id: int) -> None:
        """Delete a search with its episodes and checkpoints."""
        search_id = _integer("search_id", search_id)
        with self._writing.begin() as session:
            deleted = session.execute(delete(SearchModel).where(SearchModel.id == search_id))
            if deleted.rowcount == 0:
                raise SearchNotFound(f"search {search_id} does not exist")

    # -- episode lifecycle ---------------------------------------------------------------------------

    def add_episode(
        self,
        search_id: int,
        proposal_id: int,
        architecture: dict[str, Any],
        arch_hash: str,
        status: str = "proposed",
    ) -> EpisodeRecord:
        """Append an episode numbered after the search's last one.

        Only unfinished statuses are accepted: results arrive through ``complete_episode``,
        ``record_cached`` or ``fail_episode``, which keep the counters right.
        """
        proposal_id = _integer("proposal_id", proposal_id)
        architecture = _json_object("architecture", architecture)
        arch_hash = _arch_hash(arch_hash)
        if status not in UNFINISHED_STATUSES:
            raise StoreError(
                f"status: a new episode must be one of {', '.join(UNFINISHED_STATUSES)}, got {status!r}; "
                "record its result afterwards"
            )
        with self._writing.begin() as session:
            search = _search_row(session, search_id, lock=True)
            now = utcnow()
            running = status == "running"
            row = EpisodeModel(
                search_id=search.id,
                number=search.num_episodes,
                proposal_id=proposal_id,
                architecture=architecture,
                arch_hash=arch_hash,
                status=status,
                attempts=1 if running else 0,
                proposed_at=now,
                started_at=now if running else None,
            )
            search.num_episodes += 1
            session.add(row)
            session.flush()
            return _record(EpisodeRecord, row)

    def start_episode(self, search_id: int, number: int, worker: str) -> EpisodeRecord:
        """Mark an attempt at training the episode as started on ``worker``."""
        worker = _text("worker", worker, max_length=255)
        with self._writing.begin() as session:
            _search_row(session, search_id, lock=True)
            row = _episode_row(session, search_id, number)
            _require_unfinished(row, "started")
            row.status = "running"
            row.attempts += 1
            row.worker = worker
            row.started_at = utcnow()
            session.flush()
            return _record(EpisodeRecord, row)

    def complete_episode(
        self,
        search_id: int,
        number: int,
        reward: float,
        metrics: dict[str, Any] | None = None,
        flops: int | None = None,
        params: int | None = None,
        train_seconds: float | None = None,
        worker: str | None = None,
    ) -> EpisodeRecord:
        """Record a trained episode's result (``worker``: where it actually ran, if known by now)."""
        extra = {} if worker is None else {"worker": _text("worker", worker)}
        return self._finish(
            search_id,
            number,
            "completed",
            **extra,
            **_scored_result(reward, metrics, flops, params),
            train_seconds=_optional(_number, "train_seconds", train_seconds, minimum=0.0),
        )

    def record_cached(
        self,
        search_id: int,
        number: int,
        reward: float,
        metrics: dict[str, Any] | None = None,
        flops: int | None = None,
        params: int | None = None,
    ) -> EpisodeRecord:
        """Record an episode answered from an earlier result of the same architecture, untrained."""
        return self._finish(
            search_id,
            number,
            "cached",
            **_scored_result(reward, metrics, flops, params),
        )

    def fail_episode(
        self, search_id: int, number: int, error: str, reward: float | None = None
    ) -> EpisodeRecord:
        """Record a failed episode; ``reward`` is the penalty the controller was given, if any."""
        return self._finish(
            search_id,
            number,
            "failed",
            reward=_optional(_number, "reward", reward),
            error=_text("error", error),
        )

    def requeue_episode(self, search_id: int, number: int, refund_attempt: bool = False) -> EpisodeRecord:
        """Put a running or failed episode back to ``proposed`` so it is trained again.

        Attempts and the last error are kept, except that ``refund_attempt`` takes back the attempt of
        a run that was cut short by its runner dying rather than by the trial failing. A completed or
        cached result is never thrown away.
        """
        with self._writing.begin() as session:
            search = _search_row(session, search_id, lock=True)
            row = _episode_row(session, search_id, number)
            if row.status in SCORED_STATUSES:
                raise StoreError(
                    f"episode {number} of search {search_id} is {row.status}; its result is kept, "
                    "so it cannot be requeued"
                )
            if row.status == "failed":
                search.num_failed -= 1
            if refund_attempt and row.attempts > 0:
                row.attempts -= 1
            row.status = "proposed"
            row.reward = row.metrics = row.flops = row.params = row.train_seconds = None
            row.worker = row.started_at = row.finished_at = None
            session.flush()
            return _record(EpisodeRecord, row)

    def _finish(self, search_id: int, number: int, status: str, **result: Any) -> EpisodeRecord:
        with self._writing.begin() as session:
            search = _search_row(session, search_id, lock=True)
            row = _episode_row(session, search_id, number)
            _require_unfinished(row, status)
            if status == "completed" and not _hash_completed(session, search.id, row.arch_hash):
                search.num_unique += 1
            for name, value in result.items():
                setattr(row, name, value)
            row.status = status
            row.finished_at = utcnow()
            counter = _COUNTERS[status]
            setattr(search, counter, getattr(search, counter) + 1)
            if status in SCORED_STATUSES and _beats_best(row.reward, row.number, search):
                search.best_reward = row.reward
                search.best_episode_number = row.number
            session.flush()
            return _record(EpisodeRecord, row)

    # -- episode queries -----------------------------------------------------------------------------

    def get_episode(self, search_id: int, number: int) -> EpisodeRecord:
        with self._reading() as session:
            return _record(EpisodeRecord, _episode_row(session, search_id, number))

    def list_episodes(
        self,
        search_id: int,
        *,
        after: int | None = None,
        status: str | None = None,
        sort: str = "number",
        descending: bool = False,
        limit: int = 100,
        offset: int = 0,
    ) -> list[EpisodeRecord]:
        """A page of a search's episodes.

        ``after=N`` returns the episodes numbered above N in ascending order, so a poller can fetch
        only what is new. Missing values (no reward or FLOPs yet, not finished) sort last.
        """
        sort = _choice("sort", sort, EPISODE_SORTS)
        limit = _integer("limit", limit, minimum=1)
        offset = _integer("offset", offset)
        query = select(EpisodeModel).where(*_episode_filter(search_id, status))
        if after is not None:
            if sort != "number" or descending:
                raise StoreError(
                    f"after: lists episodes by ascending number; it cannot be combined with "
                    f"sort={sort!r}, descending={descending!r}"
                )
            query = query.where(EpisodeModel.number > _integer("after", after, minimum=-1))
        column = _SORT_COLUMNS[sort]
        key = column.desc() if descending else column.asc()
        if sort == "number":
            query = query.order_by(key)
        else:
            query = query.order_by(key.nulls_last(), EpisodeModel.number)
        with self._reading() as session:
            _search_row(session, search_id)
            rows = session.scalars(query.limit(limit).offset(offset))
            return [_record(EpisodeRecord, row) for row in rows]

    def count_episodes(self, search_id: int, status: str | None = None) -> int:
        query = select(func.count()).select_from(EpisodeModel).where(*_episode_filter(search_id, status))
        with self._reading() as session:
            _search_row(session, search_id)
            return session.execute(query).scalar_one()

    def top_episodes(self, search_id: int, k: int) -> list[EpisodeRecord]:
        """The ``k`` best completed or cached episodes, one per architecture, best first."""
        k = _integer("k", k, minimum=1)
        ranked = (
            select(
                EpisodeModel.id,
                func.row_number()
                .over(
                    partition_by=EpisodeModel.arch_hash,
                    order_by=(EpisodeModel.reward.desc(), EpisodeModel.number),
                )
                .label("rank"),
            )
            .where(EpisodeModel.search_id == search_id, EpisodeModel.status.in_(SCORED_STATUSES))
            .subquery()
        )
        query = (
            select(EpisodeModel)
            .join(ranked, ranked.c.id == EpisodeModel.id)
            .where(ranked.c.rank == 1)
            .order_by(EpisodeModel.reward.desc(), EpisodeModel.number)
            .limit(k)
        )
        with self._reading() as session:
            _search_row(session, search_id)
            return [_record(EpisodeRecord, row) for row in session.scalars(query)]

    def episode_series(self, search_id: int, after: int | None = None) -> list[SeriesPoint]:
        """Every episode numbered above ``after`` as a chart point, in ascending order.

        Only narrow columns are read, so a dashboard can draw 10,000 episodes from one request. First
        appearances are found in one pass in number order (a window function over the hashes sorts
        them, several times slower on SQLite).
        """
        after = -1 if after is None else _integer("after", after, minimum=-1)
        mine = EpisodeModel.search_id == search_id
        earlier = select(EpisodeModel.arch_hash).where(mine, EpisodeModel.number <= after).distinct()
        query = (
            select(EpisodeModel.number, EpisodeModel.status, EpisodeModel.reward, EpisodeModel.arch_hash)
            .where(mine, EpisodeModel.number > after)
            .order_by(EpisodeModel.number)
        )
        with self._reading() as session:
            _search_row(session, search_id)
            seen = set(session.scalars(earlier)) if after >= 0 else set()
            points = []
            for number, status, reward, arch_hash in session.execute(query):
                points.append(SeriesPoint(number, status, reward, arch_hash not in seen))
                seen.add(arch_hash)
            return points

    def entropy_history(self, search_id: int, after_update: int | None = None) -> list[EntropyPoint]:
        """The controller's entropy after each update (numbered above ``after_update``), oldest first."""
        update = ControllerUpdateModel
        after_update = -1 if after_update is None else _integer("after_update", after_update, minimum=-1)
        query = (
            select(update.update_number, update.episodes_reported, update.entropy)
            .where(update.search_id == search_id, update.update_number > after_update)
            .order_by(update.update_number)
        )
        with self._reading() as session:
            _search_row(session, search_id)
            return [EntropyPoint(*row) for row in session.execute(query)]

    def find_completed_by_hash(self, search_id: int, arch_hash: str) -> EpisodeRecord | None:
        """The first completed (really trained) episode of this architecture, to answer a repeat from."""
        query = (
            select(EpisodeModel)
            .where(
                EpisodeModel.search_id == search_id,
                EpisodeModel.arch_hash == _arch_hash(arch_hash),
                EpisodeModel.status == "completed",
            )
            .order_by(EpisodeModel.number)
            .limit(1)
        )
        with self._reading() as session:
            _search_row(session, search_id)
            row = session.scalar(query)
            return None if row is None else _record(EpisodeRecord, row)

    def unfinished_episodes(self, search_id: int) -> list[EpisodeRecord]:
        """Proposed and running episodes in number order: what a resumed search has to run again."""
        query = (
            select(EpisodeModel)
            .where(EpisodeModel.search_id == search_id, EpisodeModel.status.in_(UNFINISHED_STATUSES))
            .order_by(EpisodeModel.number)
        )
        with self._reading() as session:
            _search_row(session, search_id)
            return [_record(EpisodeRecord, row) for row in session.scalars(query)]

    # -- controller checkpoints ----------------------------------------------------------------------

    def save_checkpoint(
        self,
        search_id: int,
        update_number: int,
        episodes_reported: int,
        state: bytes,
        entropy: float | None = None,
        keep_last: int | None = None,
    ) -> CheckpointRecord:
        """Store the controller's ``to_bytes()`` as checkpoint ``update_number`` (increasing).

        A given ``entropy`` also becomes the search's ``last_entropy`` and a point of its
        ``entropy_history()``, which is never pruned. With ``keep_last``, older
        checkpoints beyond the newest ``keep_last`` are deleted in the same transaction, so a runner
        that checkpoints after every event keeps the store small.
        """
        if not isinstance(state, bytes | bytearray | memoryview) or len(state) == 0:
            raise StoreError(f"state: expected the controller's non-empty bytes, got {type(state).__name__}")
        row = ControllerCheckpointModel(
            update_number=_integer("update_number", update_number),
            episodes_reported=_integer("episodes_reported", episodes_reported),
            state=bytes(state),
            entropy=_optional(_number, "entropy", entropy),
        )
        with self._writing.begin() as session:
            search = _search_row(session, search_id, lock=True)
            row.search_id = search.id
            session.add(row)
            try:
                session.flush()
            except IntegrityError:
                raise Conflict(
                    f"search {search_id} already has a checkpoint for update {row.update_number}"
                ) from None
            if row.entropy is not None:
                search.last_entropy = row.entropy
                session.add(
                    ControllerUpdateModel(
                        search_id=search.id,
                        update_number=row.update_number,
                        episodes_reported=row.episodes_reported,
                        entropy=row.entropy,
                    )
                )
            if keep_last is not None:
                oldest_kept = row.update_number - _integer("keep_last", keep_last, minimum=1) + 1
                session.execute(
                    delete(ControllerCheckpointModel).where(
                        ControllerCheckpointModel.search_id == search.id,
                        ControllerCheckpointModel.update_number < oldest_kept,
                    )
                )
            session.flush()
            return _record(CheckpointRecord, row)

    def latest_checkpoint(self, search_id: int) -> CheckpointRecord | None:
        """The checkpoint with the highest update number, or ``None`` before the first update."""
        query = (
            select(ControllerCheckpointModel)
            .where(ControllerCheckpointModel.search_id == search_id)
            .order_by(ControllerCheckpointModel.update_number.desc())
            .limit(1)
        )
        with self._reading() as session:
            _search_row(session, search_id)
            row = session.scalar(query)
            return None if row is None else _record(CheckpointRecord, row)


# -- rows ------------------------------------------------------------------------------------------


def _scored_result(
    reward: float, metrics: dict[str, Any] | None, flops: int | None, params: int | None
) -> dict[str, Any]:
    """The validated columns shared by trained and cached results (a result clears the last error)."""
    return {
        "reward": _number("reward", reward),
        "metrics": _optional(_json_object, "metrics", metrics),
        "flops": _optional(_integer, "flops", flops, maximum=INT64_MAX),
        "params": _optional(_integer, "params", params, maximum=INT64_MAX),
        "error": None,
    }


def _search_row(session: Session, search_id: int, lock: bool = False) -> SearchModel:
    search_id = _integer("search_id", search_id)
    row = session.get(SearchModel, search_id, with_for_update=lock)
    if row is None:
        raise SearchNotFound(f"search {search_id} does not exist")
    return row


def _episode_row(session: Session, search_id: int, number: int) -> EpisodeModel:
    search_id = _integer("search_id", search_id)
    number = _integer("number", number)
    row = session.scalar(
        select(EpisodeModel).where(EpisodeModel.search_id == search_id, EpisodeModel.number == number)
    )
    if row is None:
        _search_row(session, search_id)
        raise EpisodeNotFound(f"search {search_id} has no episode {number}")
    return row


def _episode_filter(search_id: int, status: str | None) -> list[ColumnElement[bool]]:
    conditions = [EpisodeModel.search_id == _integer("search_id", search_id)]
    if status is not None:
        conditions.append(EpisodeModel.status == _choice("status", status, EPISODE_STATUSES))
    return conditions


def _require_unfinished(row: EpisodeModel, action: str) -> None:
    if row.status in FINISHED_STATUSES:
        raise Conflict(
            f"episode {row.number} of search {row.search_id} is already {row.status}; "
            f"it cannot be {action} again (requeue it first if it failed)"
        )


def _hash_completed(session: Session, search_id: int, arch_hash: str) -> bool:
    query = select(EpisodeModel.id).where(
        EpisodeModel.search_id == search_id,
        EpisodeModel.arch_hash == arch_hash,
        EpisodeModel.status == "completed",
    )
    return session.scalar(query.limit(1)) is not None


def _beats_best(reward: float, number: int, search: SearchModel) -> bool:
    # Episodes finish out of order; on a tie the earlier episode stays best, whatever finished first.
    if search.best_reward is None or reward > search.best_reward:
        return True
    return reward == search.best_reward and number < search.best_episode_number


# -- validation: every refusal names the field and the value ------------------------------------------


def _integer(name: str, value: Any, minimum: int = 0, maximum: int = INT32_MAX) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or not minimum <= value <= maximum:
        raise StoreError(f"{name}: expected an integer from {minimum} to {maximum}, got {value!r}")
    return int(value)


def _number(name: str, value: Any, minimum: float | None = None, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise StoreError(f"{name}: expected a finite number, got {value!r}")
    if positive and value <= 0:
        raise StoreError(f"{name}: expected a number > 0, got {value!r}")
    if minimum is not None and value < minimum:
        raise StoreError(f"{name}: expected a number >= {minimum}, got {value!r}")
    return float(value)


def _text(name: str, value: Any, max_length: int | None = None) -> str:
    if not isinstance(value, str) or not value.strip():
        raise StoreError(f"{name}: expected a non-empty string, got {value!r}")
    if max_length is not None and len(value) > max_length:
        raise StoreError(f"{name}: at most {max_length} characters, got {len(value)}")
    return value


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise StoreError(f"{name}: {value!r} is not one of {', '.join(choices)}")
    return value


def _arch_hash(value: Any) -> str:
    if not isinstance(value, str) or _ARCH_HASH.fullmatch(value) is None:
        raise StoreError(f"arch_hash: expected 64 lowercase hex digits (a SHA-256), got {value!r}")
    return value


def _json_object(name: str, value: Any) -> dict[str, Any]:
    """``value`` as it will read back: JSON without NaN (PostgreSQL refuses it), keys as strings."""
    if not isinstance(value, dict):
        raise StoreError(f"{name}: expected a JSON object (dict), got {type(value).__name__}")
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as error:
        raise StoreError(f"{name}: not storable as JSON: {error}") from None


Checked = TypeVar("Checked")


def _optional(check: Callable[..., Checked], name: str, value: Any, **limits: Any) -> Checked | None:
    return None if value is None else check(name, value, **limits)
