"""``EpisodeStore``: the one interface through which the runner and the API read and write searches.

Every write runs in one transaction that first locks the search row (``SELECT ... FOR UPDATE`` on
PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite). Writes to a search are therefore serialised, so episode
numbers come out consecutive and the search's counters and best-so-far, updated in the same
transaction as the episode, always agree with the episodes. Methods return frozen records, never ORM
objects, so no caller holds a session or sees a half-written row.

Statuses move only as ``nas_service.lifecycle`` allows. A runner holds its search by a lease (see
``acquire_lease``) and passes its token with every write (``lease=``), so a runner whose lease was
taken over cannot write another episode. A store opened with ``patience`` retries a database that does
not answer for that long; the runner's writes are therefore idempotent: repeating one whose commit was
lost with the connection finds it done and changes nothing.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from numbers import Integral, Real
from typing import Any, Self, TypeVar

from sqlalchemy import ColumnElement, delete, func, literal, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from nas_service.lifecycle import (
    ACTIVE,
    EPISODE_MOVES,
    FINISHED,
    RESUMABLE,
    SCORED_EPISODE,
    SEARCH_MOVES,
    UNFINISHED_EPISODE,
    EpisodeStatus,
    SearchStatus,
    can_move,
)
from nas_service.store.engine import create_store_engine, patient, writer
from nas_service.store.errors import Conflict, EpisodeNotFound, LeaseLost, SearchNotFound, StoreError
from nas_service.store.migrate import upgrade_engine
from nas_service.store.schema import (
    EPISODE_STATUSES,
    SEARCH_STATUSES,
    ControllerCheckpointModel,
    ControllerUpdateModel,
    EpisodeModel,
    SearchModel,
    UTCDateTime,
    utcnow,
)

EPISODE_SORTS = ("number", "reward", "finished_at", "flops")
_COUNTERS = {
    EpisodeStatus.COMPLETED: "num_completed",
    EpisodeStatus.FAILED: "num_failed",
    EpisodeStatus.CACHED: "num_cached",
}
_LEASE_COLUMNS = ("lease_owner", "lease_token", "lease_acquired_at", "lease_heartbeat_at", "lease_expires_at")
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
    status: SearchStatus
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
    lease_owner: str | None
    """The runner holding the search (``host:pid``), or who launched it until it takes over."""
    lease_acquired_at: datetime | None
    lease_heartbeat_at: datetime | None
    lease_expires_at: datetime | None
    """Without a heartbeat by then, the runner is taken for dead and a resume takes the search over."""


@dataclass(frozen=True, slots=True)
class EpisodeRecord:
    search_id: int
    number: int
    proposal_id: int
    architecture: dict[str, Any]
    arch_hash: str
    status: EpisodeStatus
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
    status: EpisodeStatus
    reward: float | None
    first_of_architecture: bool
    """The search proposed this architecture here for the first time (counts toward unique ones)."""


@dataclass(frozen=True, slots=True)
class EntropyPoint:
    update_number: int
    episodes_reported: int
    entropy: float


Record = TypeVar("Record", SearchRecord, EpisodeRecord, CheckpointRecord)


_STATUS_TYPES: dict[type, type] = {SearchRecord: SearchStatus, EpisodeRecord: EpisodeStatus}


def _record(cls: type[Record], row: object) -> Record:
    values = {item.name: getattr(row, item.name) for item in fields(cls)}
    if cls in _STATUS_TYPES:
        values["status"] = _STATUS_TYPES[cls](values["status"])
    return cls(**values)


class EpisodeStore:
    """Searches, episodes and controller checkpoints in SQLite (``sqlite:///path.db``) or PostgreSQL.

    Opening a store upgrades its database to the current schema. One store may be shared by threads;
    any number of processes may open the same database. With ``patience``, every call retries a
    database that does not answer for that many seconds before it raises ``StoreUnavailable``.
    """

    def __init__(self, url: str, patience: float = 0.0) -> None:
        self._engine = create_store_engine(url)
        self.patience = patience
        self.where = self._engine.url.render_as_string(hide_password=True)
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

    def with_patience(self, seconds: float) -> Self:
        """This store (the same connections) retrying a database that does not answer for ``seconds``."""
        other = copy.copy(self)
        other.patience = seconds
        return other

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- searches ------------------------------------------------------------------------------------

    @patient
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
            status=SearchStatus.CREATED,
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

    @patient
    def get_search(self, search_id: int) -> SearchRecord:
        with self._reading() as session:
            return _record(SearchRecord, _search_row(session, search_id))

    @patient
    def get_search_by_name(self, name: str) -> SearchRecord:
        with self._reading() as session:
            row = session.scalar(select(SearchModel).where(SearchModel.name == name))
            if row is None:
                raise SearchNotFound(f"no search named {name!r}")
            return _record(SearchRecord, row)

    @patient
    def list_searches(self, include_archived: bool = False) -> list[SearchRecord]:
        query = select(SearchModel).order_by(SearchModel.id)
        if not include_archived:
            query = query.where(SearchModel.archived.is_(False))
        with self._reading() as session:
            return [_record(SearchRecord, row) for row in session.scalars(query)]

    @patient
    def set_search_status(
        self, search_id: int, status: str, error: str | None = None, lease: str | None = None
    ) -> SearchRecord:
        """Move a search to ``status`` as the lifecycle allows; ``error`` replaces the stored one.

        ``lease``: the runner's token; refused with ``LeaseLost`` unless it still holds the search. A
        status without a runner (stopped, completed, failed) releases the lease.
        """
        status = SearchStatus(_choice("status", status, SEARCH_STATUSES))
        error = _optional(_text, "error", error)
        with self._writing.begin() as session:
            row = _search_row(session, search_id, lock=True)
            if lease is not None and row.lease_token != lease:
                if row.lease_token is None and row.status == status:
                    return _record(SearchRecord, row)  # a repeat of this write, whose answer was lost
                raise _lease_lost(row)
            _require_move(row, status)
            now = utcnow()
            if status == SearchStatus.RUNNING and row.started_at is None:
                row.started_at = now
            # A resumed search is not finished any more; finishing again stamps the new time.
            row.finished_at = now if status in FINISHED else None
            row.status = status
            row.error = error
            if status not in ACTIVE:
                _release(row)
            session.flush()
            return _record(SearchRecord, row)

    @patient
    def acquire_lease(self, search_id: int, owner: str, token: str, seconds: float) -> SearchRecord:
        """Take a search for a runner, in one compare-and-set: of any number of callers, one wins.

        Taken only from a resumable status and only if no live runner holds it: it is not active, its
        lease expired (no heartbeat for its period), or it is already ``token``'s (a repeated call); an
        active search without a lease (marked by hand) is refused. The search
        becomes ``running`` under a lease of ``seconds`` that ``renew_lease`` must extend; the refusal
        (``Conflict``) names the runner that holds it and its last heartbeat.
        """
        owner = _text("owner", owner, max_length=255)
        token = _text("token", token, max_length=64)
        seconds = _number("seconds", seconds, positive=True)
        search_id = _integer("search_id", search_id)
        with self._writing.begin() as session:
            now = _now(session)
            free = or_(
                SearchModel.status.in_(RESUMABLE - ACTIVE),  # no runner: a runner lets go when it ends
                SearchModel.lease_expires_at <= now,
                SearchModel.lease_token == token,
            )
            taken = session.execute(
                update(SearchModel)
                .where(SearchModel.id == search_id, SearchModel.status.in_(RESUMABLE), free)
                .values(
                    status=SearchStatus.RUNNING,
                    error=None,
                    finished_at=None,
                    started_at=func.coalesce(SearchModel.started_at, literal(now, UTCDateTime())),
                    lease_owner=owner,
                    lease_token=token,
                    lease_acquired_at=now,
                    lease_heartbeat_at=now,
                    lease_expires_at=now + timedelta(seconds=seconds),
                )
                .execution_options(synchronize_session=False)
            )
            row = _search_row(session, search_id)
            if taken.rowcount == 0:
                raise _refusal(row, now)
            return _record(SearchRecord, row)

    @patient
    def renew_lease(self, search_id: int, token: str, seconds: float, owner: str | None = None) -> SearchRecord:
        """The heartbeat: the lease ``token`` holds now expires ``seconds`` from now.

        ``owner`` renames the holder: a launched runner takes over the lease its launcher took for it.
        ``LeaseLost`` when ``token`` no longer holds the search (taken over, or released).
        """
        values: dict[str, Any] = {}
        if owner is not None:
            values["lease_owner"] = _text("owner", owner, max_length=255)
        seconds = _number("seconds", seconds, positive=True)
        search_id = _integer("search_id", search_id)
        with self._writing.begin() as session:
            now = _now(session)
            renewed = session.execute(
                update(SearchModel)
                .where(SearchModel.id == search_id, SearchModel.lease_token == token)
                .values(lease_heartbeat_at=now, lease_expires_at=now + timedelta(seconds=seconds), **values)
                .execution_options(synchronize_session=False)
            )
            row = _search_row(session, search_id)
            if renewed.rowcount == 0:
                raise _lease_lost(row)
            return _record(SearchRecord, row)

    @patient
    def release_lease(self, search: SearchRecord, token: str) -> SearchRecord:
        """Give back a search whose runner could not be launched, as it was in ``search``.

        Status, error and times go back to ``search``'s, so a failed start leaves no trace (a time
        budget does not start counting); a stop asked for since ends it ``stopped``. ``LeaseLost`` if
        ``token`` no longer holds the search.
        """
        with self._writing.begin() as session:
            row = _search_row(session, search.id, lock=True, lease=token)
            if row.status == SearchStatus.STOPPING:
                row.status, row.finished_at = SearchStatus.STOPPED, utcnow()
            else:
                _require_move(row, search.status)
                row.status, row.error = search.status, search.error
                row.started_at, row.finished_at = search.started_at, search.finished_at
            _release(row)
            session.flush()
            return _record(SearchRecord, row)

    @patient
    def request_stop(self, search_id: int) -> SearchRecord:
        """Ask a search's runner to stop: ``stopping`` while a live runner holds it, to end when its
        trials have; a search whose runner is gone (no lease, or an expired one) ends ``stopped`` now."""
        with self._writing.begin() as session:
            row = _search_row(session, search_id, lock=True)
            if row.status not in ACTIVE:
                raise Conflict(f"search {search_id} is {row.status}, not running")
            now = _now(session)
            if _live(row, now):
                row.status = SearchStatus.STOPPING
            else:
                row.error = "stopped without its runner, which was gone" + _last_beat(row, now)
                row.status, row.finished_at = SearchStatus.STOPPED, utcnow()
                _release(row)
            session.flush()
            return _record(SearchRecord, row)

    @patient
    def archive_search(self, search_id: int) -> SearchRecord:
        """Hide a search from ``list_searches()`` without deleting anything."""
        with self._writing.begin() as session:
            row = _search_row(session, search_id, lock=True)
            row.archived = True
            session.flush()
            return _record(SearchRecord, row)

    @patient
    def delete_search(self, search_id: int) -> None:
        """Delete a search with its episodes and checkpoints."""
        search_id = _integer("search_id", search_id)
        with self._writing.begin() as session:
            deleted = session.execute(delete(SearchModel).where(SearchModel.id == search_id))
            if deleted.rowcount == 0:
                raise SearchNotFound(f"search {search_id} does not exist")

    # -- episode lifecycle ---------------------------------------------------------------------------

    @patient
    def add_episode(
        self,
        search_id: int,
        proposal_id: int,
        architecture: dict[str, Any],
        arch_hash: str,
        status: str = EpisodeStatus.PROPOSED,
        lease: str | None = None,
    ) -> EpisodeRecord:
        """Append the episode of a proposal, numbered after the search's last one.

        Only unfinished statuses are accepted: results arrive through ``complete_episode``,
        ``record_cached`` or ``fail_episode``, which keep the counters right. A proposal that already
        has its episode gets that one back (the call was repeated), never a second.
        """
        proposal_id = _integer("proposal_id", proposal_id)
        architecture = _json_object("architecture", architecture)
        arch_hash = _arch_hash(arch_hash)
        if status not in UNFINISHED_EPISODE:
            raise StoreError(
                f"status: a new episode must be one of {', '.join(UNFINISHED_EPISODE)}, got {status!r}; "
                "record its result afterwards"
            )
        with self._writing.begin() as session:
            search = _search_row(session, search_id, lock=True, lease=lease)
            existing = session.scalar(
                select(EpisodeModel).where(EpisodeModel.search_id == search.id, EpisodeModel.proposal_id == proposal_id)
            )
            if existing is not None:
                if existing.arch_hash != arch_hash:
                    raise Conflict(
                        f"proposal {proposal_id} of search {search.id} already has episode {existing.number} "
                        f"with another architecture"
                    )
                return _record(EpisodeRecord, existing)
            now = utcnow()
            running = status == EpisodeStatus.RUNNING
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

    @patient
    def start_episode(self, search_id: int, number: int, worker: str, lease: str | None = None) -> EpisodeRecord:
        """Mark an attempt at training the episode as started on ``worker`` (repeated: no new attempt)."""
        worker = _text("worker", worker, max_length=255)
        with self._writing.begin() as session:
            _search_row(session, search_id, lock=True, lease=lease)
            row = _episode_row(session, search_id, number)
            if row.status == EpisodeStatus.RUNNING and row.worker == worker:
                return _record(EpisodeRecord, row)
            _require_move_of_episode(row, EpisodeStatus.RUNNING, "started")
            row.status = EpisodeStatus.RUNNING
            row.attempts += 1
            row.worker = worker
            row.started_at = utcnow()
            session.flush()
            return _record(EpisodeRecord, row)

    @patient
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
        lease: str | None = None,
    ) -> EpisodeRecord:
        """Record a trained episode's result (``worker``: where it actually ran, if known by now)."""
        extra = {} if worker is None else {"worker": _text("worker", worker)}
        return self._finish(
            search_id,
            number,
            EpisodeStatus.COMPLETED,
            lease,
            **extra,
            **_scored_result(reward, metrics, flops, params),
            train_seconds=_optional(_number, "train_seconds", train_seconds, minimum=0.0),
        )

    @patient
    def record_cached(
        self,
        search_id: int,
        number: int,
        reward: float,
        metrics: dict[str, Any] | None = None,
        flops: int | None = None,
        params: int | None = None,
        lease: str | None = None,
    ) -> EpisodeRecord:
        """Record an episode answered from an earlier result of the same architecture, untrained."""
        return self._finish(
            search_id,
            number,
            EpisodeStatus.CACHED,
            lease,
            **_scored_result(reward, metrics, flops, params),
        )

    @patient
    def fail_episode(
        self, search_id: int, number: int, error: str, reward: float | None = None, lease: str | None = None
    ) -> EpisodeRecord:
        """Record a failed episode; ``reward`` is the penalty the controller was given, if any."""
        return self._finish(
            search_id,
            number,
            EpisodeStatus.FAILED,
            lease,
            reward=_optional(_number, "reward", reward),
            error=_text("error", error),
        )

    @patient
    def requeue_episode(
        self, search_id: int, number: int, refund_attempt: bool = False, lease: str | None = None
    ) -> EpisodeRecord:
        """Put a running or failed episode back to ``proposed`` so it is trained again.

        Attempts and the last error are kept, except that ``refund_attempt`` takes back the attempt of
        a run that was cut short (its runner died, or it was cancelled) rather than failed by the trial.
        A completed or cached result is never thrown away; a proposed episode is left as it is.
        """
        with self._writing.begin() as session:
            search = _search_row(session, search_id, lock=True, lease=lease)
            row = _episode_row(session, search_id, number)
            if row.status in SCORED_EPISODE:
                raise StoreError(
                    f"episode {number} of search {search_id} is {row.status}; its result is kept, "
                    "so it cannot be requeued"
                )
            if row.status == EpisodeStatus.PROPOSED:
                return _record(EpisodeRecord, row)
            if row.status == EpisodeStatus.FAILED:
                search.num_failed -= 1
            if refund_attempt and row.attempts > 0:
                row.attempts -= 1
            row.status = EpisodeStatus.PROPOSED
            row.reward = row.metrics = row.flops = row.params = row.train_seconds = None
            row.worker = row.started_at = row.finished_at = None
            session.flush()
            return _record(EpisodeRecord, row)

    def _finish(
        self, search_id: int, number: int, status: EpisodeStatus, lease: str | None, **result: Any
    ) -> EpisodeRecord:
        with self._writing.begin() as session:
            search = _search_row(session, search_id, lock=True, lease=lease)
            row = _episode_row(session, search_id, number)
            if row.status == status and all(getattr(row, key) == result[key] for key in ("reward", "error")):
                return _record(EpisodeRecord, row)  # a repeat of this write, whose answer was lost
            _require_move_of_episode(row, status, status)
            if status == EpisodeStatus.COMPLETED and not _hash_completed(session, search.id, row.arch_hash):
                search.num_unique += 1
            for name, value in result.items():
                setattr(row, name, value)
            row.status = status
            row.finished_at = utcnow()
            counter = _COUNTERS[status]
            setattr(search, counter, getattr(search, counter) + 1)
            if status in SCORED_EPISODE and _beats_best(row.reward, row.number, search):
                search.best_reward = row.reward
                search.best_episode_number = row.number
            session.flush()
            return _record(EpisodeRecord, row)

    # -- episode queries -----------------------------------------------------------------------------

    @patient
    def get_episode(self, search_id: int, number: int) -> EpisodeRecord:
        with self._reading() as session:
            return _record(EpisodeRecord, _episode_row(session, search_id, number))

    @patient
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

    @patient
    def count_episodes(self, search_id: int, status: str | None = None) -> int:
        query = select(func.count()).select_from(EpisodeModel).where(*_episode_filter(search_id, status))
        with self._reading() as session:
            _search_row(session, search_id)
            return session.execute(query).scalar_one()

    @patient
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
            .where(EpisodeModel.search_id == search_id, EpisodeModel.status.in_(SCORED_EPISODE))
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

    @patient
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

    @patient
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

    @patient
    def find_completed_by_hash(self, search_id: int, arch_hash: str) -> EpisodeRecord | None:
        """The first completed (really trained) episode of this architecture, to answer a repeat from."""
        query = (
            select(EpisodeModel)
            .where(
                EpisodeModel.search_id == search_id,
                EpisodeModel.arch_hash == _arch_hash(arch_hash),
                EpisodeModel.status == EpisodeStatus.COMPLETED,
            )
            .order_by(EpisodeModel.number)
            .limit(1)
        )
        with self._reading() as session:
            _search_row(session, search_id)
            row = session.scalar(query)
            return None if row is None else _record(EpisodeRecord, row)

    @patient
    def unfinished_episodes(self, search_id: int) -> list[EpisodeRecord]:
        """Proposed and running episodes in number order: what a resumed search has to run again."""
        query = (
            select(EpisodeModel)
            .where(EpisodeModel.search_id == search_id, EpisodeModel.status.in_(UNFINISHED_EPISODE))
            .order_by(EpisodeModel.number)
        )
        with self._reading() as session:
            _search_row(session, search_id)
            return [_record(EpisodeRecord, row) for row in session.scalars(query)]

    # -- controller checkpoints ----------------------------------------------------------------------

    @patient
    def save_checkpoint(
        self,
        search_id: int,
        update_number: int,
        episodes_reported: int,
        state: bytes,
        entropy: float | None = None,
        keep_last: int | None = None,
        lease: str | None = None,
    ) -> CheckpointRecord:
        """Store the controller's ``to_bytes()`` as checkpoint ``update_number`` (increasing).

        A given ``entropy`` also becomes the search's ``last_entropy`` and a point of its
        ``entropy_history()``, which is never pruned. With ``keep_last``, older
        checkpoints beyond the newest ``keep_last`` are deleted in the same transaction, so a runner
        that checkpoints after every event keeps the store small. Saving the same state again under
        the same number changes nothing (the call was repeated).
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
            search = _search_row(session, search_id, lock=True, lease=lease)
            saved = session.scalar(
                select(ControllerCheckpointModel).where(
                    ControllerCheckpointModel.search_id == search.id,
                    ControllerCheckpointModel.update_number == row.update_number,
                )
            )
            if saved is not None and saved.state == row.state:
                return _record(CheckpointRecord, saved)
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

    @patient
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


def _search_row(session: Session, search_id: int, lock: bool = False, lease: str | None = None) -> SearchModel:
    """The search (locked for a write); with ``lease``, only while that token holds it."""
    search_id = _integer("search_id", search_id)
    row = session.get(SearchModel, search_id, with_for_update=lock)
    if row is None:
        raise SearchNotFound(f"search {search_id} does not exist")
    if lease is not None and row.lease_token != lease:
        raise _lease_lost(row)
    return row


def _require_move(row: SearchModel, status: SearchStatus) -> None:
    if not can_move(SEARCH_MOVES, row.status, status):
        raise Conflict(f"search {row.id} is {row.status}; it cannot become {status}")


def _now(session: Session) -> datetime:
    """The time leases are stamped and judged by: PostgreSQL's clock, which every runner and resume
    share whatever their machines' clocks say (SQLite is on one machine, whose clock it takes)."""
    if session.get_bind().dialect.name == "postgresql":
        return session.execute(select(func.now())).scalar_one().astimezone(UTC)
    return utcnow()


def _live(row: SearchModel, now: datetime) -> bool:
    """A runner holds the search: its lease has not expired."""
    return row.lease_token is not None and row.lease_expires_at > now


def _release(row: SearchModel) -> None:
    for column in _LEASE_COLUMNS:
        setattr(row, column, None)


def _last_beat(row: SearchModel, now: datetime) -> str:
    if row.lease_heartbeat_at is None:
        return ""
    return f" ({row.lease_owner}, last heartbeat {(now - row.lease_heartbeat_at).total_seconds():.0f} s ago)"


def _refusal(row: SearchModel, now: datetime) -> Conflict:
    """Why ``acquire_lease`` did not take the search."""
    if row.status == SearchStatus.COMPLETED:
        return Conflict(f"search {row.id} has completed its budget; nothing to resume")
    if row.lease_token is None:
        return Conflict(
            f"search {row.id} is {row.status}, not created, stopped or failed, and no runner's lease is "
            f"recorded (marked by hand, or by an older version): stop it, which ends it stopped, then resume it"
        )
    left = (row.lease_expires_at - now).total_seconds()
    return Conflict(
        f"search {row.id} is {row.status}: a runner holds it{_last_beat(row, now)}. If that runner is "
        f"dead, its lease expires in {max(left, 0):.0f} s (at {row.lease_expires_at:%H:%M:%S} UTC), and a "
        f"resume then takes the search over; to end the search instead, stop it"
    )


def _lease_lost(row: SearchModel) -> LeaseLost:
    holder = f"taken over by {row.lease_owner}" if row.lease_token is not None else "released"
    return LeaseLost(f"search {row.id}: this runner's lease was {holder}; it no longer works on the search")


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


def _require_move_of_episode(row: EpisodeModel, status: EpisodeStatus, action: str) -> None:
    if not can_move(EPISODE_MOVES, row.status, status):
        raise Conflict(
            f"episode {row.number} of search {row.search_id} is already {row.status}; "
            f"it cannot be {action} again (requeue it first if it failed)"
        )


def _hash_completed(session: Session, search_id: int, arch_hash: str) -> bool:
    query = select(EpisodeModel.id).where(
        EpisodeModel.search_id == search_id,
        EpisodeModel.arch_hash == arch_hash,
        EpisodeModel.status == EpisodeStatus.COMPLETED,
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
