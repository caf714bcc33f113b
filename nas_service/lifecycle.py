"""The states of a search and of its episodes, and the one table of moves between them.

The store refuses every move that is not in these tables; the runner, the launcher, the API and its
OpenAPI schema use these names. A search is *active* (``running`` or ``stopping``) while a runner holds
its lease: a row the runner renews every few seconds (a heartbeat, as in Optuna's RDB storage). A lease
that has not been renewed in time has *expired*: its runner is taken for dead, and a resume takes the
search over. Timings come from the environment, so a deployment (or a test) can tune them.
"""

from __future__ import annotations

import os
from enum import StrEnum

from nas_errors import UserError

LEASE_SECONDS_VARIABLE = "NAS_LEASE_SECONDS"
"""How long a runner's lease lasts without a heartbeat before a resume may take the search over."""
DEFAULT_LEASE_SECONDS = 30.0
BEATS_PER_LEASE = 6
"""Heartbeats per lease period: a runner misses five in a row before it is taken for dead."""
PATIENCE_VARIABLE = "NAS_STORE_PATIENCE"
"""How long a runner keeps retrying a store that does not answer before it gives up."""
DEFAULT_PATIENCE_SECONDS = 60.0


class SearchStatus(StrEnum):
    CREATED = "created"
    RUNNING = "running"
    STOPPING = "stopping"
    """A stop was asked for: the runner proposes nothing more and ends when its trials have."""
    STOPPED = "stopped"
    COMPLETED = "completed"
    FAILED = "failed"


class EpisodeStatus(StrEnum):
    PROPOSED = "proposed"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CACHED = "cached"
    """Answered from an earlier result of the same architecture, untrained."""


S, E = SearchStatus, EpisodeStatus
SEARCH_MOVES: dict[SearchStatus, frozenset[SearchStatus]] = {
    S.CREATED: frozenset({S.RUNNING}),
    # running -> running: a resume took over an expired lease. running -> created/stopped/failed: a
    # runner that could not be launched gives the search back in the state it was taken from.
    S.RUNNING: frozenset({S.RUNNING, S.STOPPING, S.STOPPED, S.COMPLETED, S.FAILED, S.CREATED}),
    # stopping -> running: a resume after the runner died; -> completed: the last trial spent the budget.
    S.STOPPING: frozenset({S.RUNNING, S.STOPPING, S.STOPPED, S.COMPLETED, S.FAILED}),
    S.STOPPED: frozenset({S.RUNNING}),
    S.FAILED: frozenset({S.RUNNING}),
    S.COMPLETED: frozenset(),
}
EPISODE_MOVES: dict[EpisodeStatus, frozenset[EpisodeStatus]] = {
    E.PROPOSED: frozenset({E.RUNNING, E.COMPLETED, E.CACHED, E.FAILED}),
    # running -> proposed: requeued after its runner died or its trial was cancelled.
    E.RUNNING: frozenset({E.RUNNING, E.COMPLETED, E.CACHED, E.FAILED, E.PROPOSED}),
    E.FAILED: frozenset({E.PROPOSED}),  # a retry
    E.COMPLETED: frozenset(),
    E.CACHED: frozenset(),
}
del S, E

ACTIVE = frozenset({SearchStatus.RUNNING, SearchStatus.STOPPING})
"""A runner may hold the search's lease: it must not be archived or deleted."""
FINISHED = frozenset({SearchStatus.STOPPED, SearchStatus.COMPLETED, SearchStatus.FAILED})
"""No runner: the search's ``finished_at`` is set."""
RESUMABLE = frozenset(SearchStatus) - {SearchStatus.COMPLETED}
"""A runner may take the search, if no live runner holds its lease."""
UNFINISHED_EPISODE = (EpisodeStatus.PROPOSED, EpisodeStatus.RUNNING)
"""What a resumed search runs again, and the only statuses an episode is added in."""
SCORED_EPISODE = (EpisodeStatus.COMPLETED, EpisodeStatus.CACHED)
"""Episodes whose reward measures their architecture (a failure's reward is only a penalty)."""


def can_move(moves: dict, old: str, new: str) -> bool:
    """Whether ``moves`` (``SEARCH_MOVES`` or ``EPISODE_MOVES``) allows ``old`` -> ``new``."""
    return new in moves[old]


def lease_seconds() -> float:
    """The lease period of runners started by this process (``$NAS_LEASE_SECONDS``, default 30)."""
    return _seconds(LEASE_SECONDS_VARIABLE, DEFAULT_LEASE_SECONDS)


def store_patience() -> float:
    """How long a runner retries an unreachable store (``$NAS_STORE_PATIENCE``, default 60 s)."""
    return _seconds(PATIENCE_VARIABLE, DEFAULT_PATIENCE_SECONDS)


def _seconds(variable: str, default: float) -> float:
    text = os.environ.get(variable)
    if text is None or not text.strip():
        return default
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise UserError(f"${variable}: expected a number of seconds > 0, got {text!r}")
    return value
