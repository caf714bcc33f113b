"""The episode store against real databases: an SQLite file and a fresh PostgreSQL database."""

import hashlib
import math
import re
import secrets
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC
from pathlib import Path

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from psycopg import sql
from sqlalchemy import Engine, create_engine, event, text

from nas_service.store import (
    Conflict,
    EpisodeNotFound,
    EpisodeStore,
    SearchNotFound,
    StoreError,
    upgrade_database,
)
from nas_service.store.engine import create_store_engine, writer
from nas_service.store.migrate import MIGRATIONS
from nas_service.store.schema import Base

POSTGRES = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
ARCH = {"schema_version": 1, "levels": [3, 4, 5, 6, 7], "cells": []}
COUNTERS = (
    "num_episodes",
    "num_completed",
    "num_failed",
    "num_cached",
    "num_unique",
    "best_reward",
    "best_episode_number",
)


def arch_hash(key: object) -> str:
    return hashlib.sha256(str(key).encode()).hexdigest()


@pytest.fixture(scope="module")
def postgres_url():
    name = f"nasfpn_test_{secrets.token_hex(6)}"
    try:
        admin = psycopg.connect(**POSTGRES, dbname="test", autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as error:
        problem = str(error)
    else:
        problem = None
    if problem is not None:  # fail, never skip: CI guarantees the server runs
        pytest.fail(
            f"PostgreSQL is unreachable at {POSTGRES['host']}:{POSTGRES['port']} as {POSTGRES['user']}: "
            f"{problem}",
            pytrace=False,
        )
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield f"postgresql+psycopg://{POSTGRES['user']}@{POSTGRES['host']}:{POSTGRES['port']}/{name}"
    with psycopg.connect(**POSTGRES, dbname="test", autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def store(url):
    store = EpisodeStore(url)
    yield store
    # The PostgreSQL database is shared by the module's tests: leave it empty for the next one.
    for search in store.list_searches(include_archived=True):
        store.delete_search(search.id)
    store.close()


def counters(store: EpisodeStore, search_id: int) -> dict:
    search = store.get_search(search_id)
    return {name: getattr(search, name) for name in COUNTERS}


def recomputed(store: EpisodeStore, search_id: int) -> dict:
    episodes = store.list_episodes(search_id, limit=10_000)
    scored = [e for e in episodes if e.status in ("completed", "cached")]
    best = min(scored, key=lambda e: (-e.reward, e.number), default=None)
    return {
        "num_episodes": len(episodes),
        "num_completed": sum(e.status == "completed" for e in episodes),
        "num_failed": sum(e.status == "failed" for e in episodes),
        "num_cached": sum(e.status == "cached" for e in episodes),
        "num_unique": len({e.arch_hash for e in episodes if e.status == "completed"}),
        "best_reward": best.reward if best else None,
        "best_episode_number": best.number if best else None,
    }


def test_search_crud_and_errors(store):
    config = {"controller": {"algorithm": "ppo"}, "budget": [1, 2]}
    search = store.create_search("s1", config, budget_episodes=100, budget_seconds=3600)
    assert (search.name, search.config, search.status, search.archived) == ("s1", config, "created", False)
    assert (search.budget_episodes, search.budget_unique, search.budget_seconds) == (100, None, 3600.0)
    assert search.created_at.tzinfo == UTC and search.started_at is None
    assert store.get_search(search.id) == search
    assert store.get_search_by_name("s1") == search

    with pytest.raises(Conflict, match="a search named 's1' already exists"):
        store.create_search("s1", {})
    with pytest.raises(Conflict, match=f"search {search.id} is created; it cannot become stopping"):
        store.set_search_status(search.id, "stopping")  # only moves of nas_service.lifecycle are allowed
    assert store.get_search(search.id).status == "created"  # a refused move changes nothing
    claimed = store.set_search_status(search.id, "running")
    assert claimed.status == "running" and claimed.started_at is not None
    store.set_search_status(search.id, "created")
    with pytest.raises(SearchNotFound) as missing:
        store.get_search(search.id + 1000)
    assert isinstance(missing.value, KeyError)
    assert str(missing.value) == f"search {search.id + 1000} does not exist"
    with pytest.raises(SearchNotFound, match="no search named 'nope'"):
        store.get_search_by_name("nope")
    # 2147483647 = 2**31 - 1, the largest value of the INTEGER columns on both backends.
    for kwargs, message in [
        ({"name": " ", "config": {}}, "name: expected a non-empty string"),
        ({"name": "x", "config": [1]}, "config: expected a JSON object"),
        ({"name": "x", "config": {"lr": math.nan}}, "config: not storable as JSON"),
        ({"name": "x", "config": {}, "budget_episodes": 0}, "budget_episodes: expected an integer from 1 to 2147483647"),
        ({"name": "x", "config": {}, "budget_seconds": math.inf}, "budget_seconds: expected a finite number"),
    ]:
        with pytest.raises(StoreError, match=message):
            store.create_search(**kwargs)
    assert [s.name for s in store.list_searches()] == ["s1"]

    running = store.set_search_status(search.id, "running")
    assert running.started_at is not None and running.finished_at is None
    assert running.updated_at >= search.updated_at
    stopped = store.set_search_status(search.id, "stopped")
    assert stopped.finished_at >= stopped.started_at
    resumed = store.set_search_status(search.id, "running")
    assert resumed.started_at == running.started_at and resumed.finished_at is None
    failed = store.set_search_status(search.id, "failed", error="controller diverged")
    assert (failed.status, failed.error) == ("failed", "controller diverged")
    with pytest.raises(StoreError, match="status: 'paused' is not one of created, running"):
        store.set_search_status(search.id, "paused")
    assert store.get_search(search.id).status == "failed"

    other = store.create_search("s2", {})
    assert store.archive_search(search.id).archived
    assert [s.name for s in store.list_searches()] == ["s2"]
    assert [s.name for s in store.list_searches(include_archived=True)] == ["s1", "s2"]
    store.delete_search(search.id)
    with pytest.raises(SearchNotFound):
        store.get_search(search.id)
    with pytest.raises(SearchNotFound):
        store.delete_search(search.id)
    assert [s.id for s in store.list_searches(include_archived=True)] == [other.id]


def test_episode_numbering_and_lifecycle(store):
    search = store.create_search("s", {})
    episodes = [store.add_episode(search.id, 10 + i, ARCH, arch_hash(i)) for i in range(4)]
    assert [e.number for e in episodes] == [0, 1, 2, 3]
    assert episodes[2].proposal_id == 12 and episodes[2].architecture == ARCH
    assert episodes[0].status == "proposed" and episodes[0].attempts == 0

    started = store.start_episode(search.id, 0, "worker-a")
    assert (started.status, started.attempts, started.worker) == ("running", 1, "worker-a")
    metrics = {"AP": 42.0, "AP50": 60.1}
    flops = 96_819_609_600  # beyond 32 bits
    done = store.complete_episode(search.id, 0, 0.42, metrics, flops=flops, params=2, train_seconds=9.5)
    assert (done.status, done.reward, done.metrics, done.flops) == ("completed", 0.42, metrics, flops)
    assert done.finished_at >= done.started_at and done.finished_at.tzinfo == UTC
    cached = store.record_cached(search.id, 1, 0.42, {"AP": 42.0}, flops=1, params=2)
    assert (cached.status, cached.attempts) == ("cached", 0)

    store.start_episode(search.id, 2, "worker-a")
    failed = store.fail_episode(search.id, 2, "loss is nan", reward=-1.0)
    assert (failed.status, failed.reward, failed.error) == ("failed", -1.0, "loss is nan")
    requeued = store.requeue_episode(search.id, 2)
    assert (requeued.status, requeued.attempts, requeued.reward, requeued.error) == (
        "proposed", 1, None, "loss is nan"
    )
    assert store.start_episode(search.id, 2, "worker-b").attempts == 2
    retried = store.complete_episode(search.id, 2, 0.1)
    assert (retried.status, retried.error, retried.worker) == ("completed", None, "worker-b")

    running = store.add_episode(search.id, 20, ARCH, arch_hash(20), status="running")
    assert (running.number, running.status, running.attempts) == (4, "running", 1)
    assert store.get_episode(search.id, 4) == running

    for status in ("cached", "done"):
        expected = f"status: a new episode must be one of proposed, running, got '{status}'"
        with pytest.raises(StoreError, match=expected):
            store.add_episode(search.id, 0, ARCH, arch_hash(0), status=status)
    with pytest.raises(StoreError, match="arch_hash: expected 64 lowercase hex digits"):
        store.add_episode(search.id, 0, ARCH, "abc")
    with pytest.raises(StoreError, match="proposal_id: expected an integer from 0 to 2147483647, got -1"):
        store.add_episode(search.id, -1, ARCH, arch_hash(0))
    with pytest.raises(SearchNotFound):
        store.add_episode(search.id + 1000, 0, ARCH, arch_hash(0))
    with pytest.raises(EpisodeNotFound, match=f"search {search.id} has no episode 99"):
        store.get_episode(search.id, 99)
    with pytest.raises(StoreError, match="episode 0 of search .* is already completed; it cannot be started"):
        store.start_episode(search.id, 0, "worker-a")
    with pytest.raises(StoreError, match="is completed; its result is kept"):
        store.requeue_episode(search.id, 0)
    for bad in (math.nan, math.inf, "0.5", None):
        with pytest.raises(StoreError, match="reward: expected a finite number"):
            store.complete_episode(search.id, 3, bad)
    with pytest.raises(StoreError, match="metrics: not storable as JSON"):
        store.complete_episode(search.id, 3, 0.5, {"AP": math.nan})
    assert store.get_episode(search.id, 3).status == "proposed"
    assert store.get_search(search.id).num_episodes == 5


def test_counters_follow_every_transition(store):
    search = store.create_search("s", {})
    a, b, c = arch_hash("a"), arch_hash("b"), arch_hash("c")
    steps = [
        lambda: store.add_episode(search.id, 0, ARCH, a),
        lambda: store.add_episode(search.id, 1, ARCH, b),
        lambda: store.add_episode(search.id, 2, ARCH, a),
        lambda: store.add_episode(search.id, 3, ARCH, c),
        lambda: store.add_episode(search.id, 4, ARCH, b),
        # Out of order, and a failure whose penalty is above every real reward: it is not "best".
        lambda: store.complete_episode(search.id, 1, 0.3),
        lambda: store.fail_episode(search.id, 3, "oom", reward=5.0),
        lambda: store.complete_episode(search.id, 0, 0.3),
        lambda: store.record_cached(search.id, 2, 0.3),
        lambda: store.complete_episode(search.id, 4, 0.2),
        lambda: store.requeue_episode(search.id, 3),
        lambda: store.start_episode(search.id, 3, "w"),
        lambda: store.complete_episode(search.id, 3, 0.7),
        lambda: store.add_episode(search.id, 5, ARCH, c),
        lambda: store.fail_episode(search.id, 5, "timeout"),
    ]
    for step in steps:
        step()
        assert counters(store, search.id) == recomputed(store, search.id)
    assert counters(store, search.id) == {
        "num_episodes": 6,
        "num_completed": 4,
        "num_failed": 1,
        "num_cached": 1,
        "num_unique": 3,
        "best_reward": 0.7,
        "best_episode_number": 3,
    }


def test_tie_keeps_the_earlier_episode_as_best(store):
    search = store.create_search("s", {})
    for i in range(3):
        store.add_episode(search.id, i, ARCH, arch_hash(i))
    store.complete_episode(search.id, 2, 0.5)
    store.complete_episode(search.id, 0, 0.5)
    store.complete_episode(search.id, 1, 0.5)
    assert counters(store, search.id) == recomputed(store, search.id)
    assert store.get_search(search.id).best_episode_number == 0


def test_finishing_twice_is_rejected_without_double_counting(store):
    search = store.create_search("s", {})
    store.add_episode(search.id, 0, ARCH, arch_hash(0))
    store.complete_episode(search.id, 0, 0.5, {"AP": 50.0})
    before = counters(store, search.id)
    episode = store.get_episode(search.id, 0)
    for finish in (
        lambda: store.complete_episode(search.id, 0, 0.9),
        lambda: store.record_cached(search.id, 0, 0.9),
        lambda: store.fail_episode(search.id, 0, "late failure"),
    ):
        with pytest.raises(StoreError, match="episode 0 of search .* is already completed"):
            finish()
    assert counters(store, search.id) == before
    assert store.get_episode(search.id, 0) == episode


def test_incremental_listing_with_after(store):
    search = store.create_search("s", {})
    for i in range(5):
        store.add_episode(search.id, i, ARCH, arch_hash(i))
    assert [e.number for e in store.list_episodes(search.id, after=2)] == [3, 4]
    assert [e.number for e in store.list_episodes(search.id, after=-1, limit=2)] == [0, 1]
    assert store.list_episodes(search.id, after=4) == []
    store.add_episode(search.id, 5, ARCH, arch_hash(5))
    assert [e.number for e in store.list_episodes(search.id, after=4)] == [5]
    with pytest.raises(StoreError, match="after: lists episodes by ascending number.*sort='reward'"):
        store.list_episodes(search.id, after=0, sort="reward")
    with pytest.raises(StoreError, match="after: .*descending=True"):
        store.list_episodes(search.id, after=0, descending=True)
    with pytest.raises(SearchNotFound):
        store.list_episodes(search.id + 1000, after=0)


def test_sorting_filtering_and_paging(store):
    search = store.create_search("s", {})
    rewards = [0.3, None, 0.9, 0.1, 0.9, None]
    for number, reward in enumerate(rewards):
        store.add_episode(search.id, number, ARCH, arch_hash(number))
        if reward is not None:
            store.complete_episode(search.id, number, reward, flops=1000 - number * 100)

    def numbers(**kwargs):
        return [e.number for e in store.list_episodes(search.id, **kwargs)]

    assert numbers() == [0, 1, 2, 3, 4, 5]
    assert numbers(descending=True) == [5, 4, 3, 2, 1, 0]
    # Ties by number; episodes without a value come last in both directions.
    assert numbers(sort="reward", descending=True) == [2, 4, 0, 3, 1, 5]
    assert numbers(sort="reward") == [3, 0, 2, 4, 1, 5]
    assert numbers(sort="reward", descending=True, limit=2, offset=1) == [4, 0]
    assert numbers(sort="flops") == [4, 3, 2, 0, 1, 5]
    assert numbers(sort="finished_at") == [0, 2, 3, 4, 1, 5]
    assert numbers(status="proposed") == [1, 5]
    assert numbers(status="completed", sort="reward", limit=1) == [3]
    assert store.count_episodes(search.id) == 6
    assert store.count_episodes(search.id, status="completed") == 4
    assert store.count_episodes(search.id, status="failed") == 0
    with pytest.raises(StoreError, match="sort: 'speed' is not one of number, reward, finished_at, flops"):
        store.list_episodes(search.id, sort="speed")
    with pytest.raises(StoreError, match="status: 'done' is not one of proposed, running"):
        store.list_episodes(search.id, status="done")
    with pytest.raises(StoreError, match="status: 'done'"):
        store.count_episodes(search.id, status="done")
    with pytest.raises(StoreError, match="limit: expected an integer from 1 to 2147483647, got 0"):
        store.list_episodes(search.id, limit=0)


def test_top_episodes_and_cache_lookup(store):
    search = store.create_search("s", {})
    a, b, c = arch_hash("a"), arch_hash("b"), arch_hash("c")
    plan = [(a, "completed", 0.5), (b, "completed", 0.6), (a, "cached", 0.5), (a, "completed", 0.8),
            (c, "failed", 9.0), (c, "cached", 0.55), (b, "proposed", None)]
    for number, (hash_, status, reward) in enumerate(plan):
        store.add_episode(search.id, number, ARCH, hash_)
        if status == "completed":
            store.complete_episode(search.id, number, reward)
        elif status == "cached":
            store.record_cached(search.id, number, reward)
        elif status == "failed":
            store.fail_episode(search.id, number, "boom", reward=reward)

    top = store.top_episodes(search.id, 10)
    assert [(e.number, e.reward) for e in top] == [(3, 0.8), (1, 0.6), (5, 0.55)]
    assert [e.number for e in store.top_episodes(search.id, 2)] == [3, 1]
    assert store.find_completed_by_hash(search.id, a).number == 0
    assert store.find_completed_by_hash(search.id, b).number == 1
    assert store.find_completed_by_hash(search.id, c) is None
    assert store.find_completed_by_hash(search.id, arch_hash("unseen")) is None
    with pytest.raises(StoreError, match="k: expected an integer from 1 to 2147483647"):
        store.top_episodes(search.id, 0)


def test_unfinished_episodes(store):
    search = store.create_search("s", {})
    for i in range(5):
        store.add_episode(search.id, i, ARCH, arch_hash(i))
    store.start_episode(search.id, 1, "w")
    store.start_episode(search.id, 3, "w")
    store.complete_episode(search.id, 3, 0.2)
    store.fail_episode(search.id, 4, "boom")
    assert [(e.number, e.status) for e in store.unfinished_episodes(search.id)] == [
        (0, "proposed"), (1, "running"), (2, "proposed")
    ]
    store.requeue_episode(search.id, 1)
    store.requeue_episode(search.id, 4)
    assert [e.number for e in store.unfinished_episodes(search.id)] == [0, 1, 2, 4]


def test_checkpoints_round_trip(store):
    search = store.create_search("s", {})
    assert store.latest_checkpoint(search.id) is None
    blob = bytes(range(256)) * 64 + b"\x00"
    saved = store.save_checkpoint(search.id, 1, 8, blob, entropy=12.5)
    assert store.get_search(search.id).last_entropy == 12.5
    store.save_checkpoint(search.id, 3, 24, b"\x00third\xff", entropy=None)
    store.save_checkpoint(search.id, 2, 16, bytearray(b"second"), entropy=11.0)
    latest = store.latest_checkpoint(search.id)
    assert (latest.update_number, latest.episodes_reported, latest.state, latest.entropy) == (
        3, 24, b"\x00third\xff", None
    )
    assert latest.created_at.tzinfo == UTC
    assert store.get_search(search.id).last_entropy == 11.0
    assert saved.state == blob and "state" not in repr(saved)
    with pytest.raises(StoreError, match=f"search {search.id} already has a checkpoint for update 3"):
        store.save_checkpoint(search.id, 3, 24, b"again")
    with pytest.raises(StoreError, match="state: expected the controller's non-empty bytes, got str"):
        store.save_checkpoint(search.id, 4, 24, "text")
    with pytest.raises(StoreError, match="entropy: expected a finite number, got nan"):
        store.save_checkpoint(search.id, 4, 24, b"x", entropy=math.nan)
    assert store.latest_checkpoint(search.id).state == b"\x00third\xff"
    with pytest.raises(SearchNotFound):
        store.save_checkpoint(search.id + 1000, 1, 0, b"x")


def test_entropy_history_outlives_pruned_checkpoints(store):
    search = store.create_search("s", {})
    for update in range(1, 7):
        store.save_checkpoint(search.id, update, update * 8, b"state", entropy=30.0 - update, keep_last=2)
    store.save_checkpoint(search.id, 7, 56, b"state", entropy=None, keep_last=2)
    history = store.entropy_history(search.id)
    assert [(p.update_number, p.episodes_reported, p.entropy) for p in history] == [
        (update, update * 8, 30.0 - update) for update in range(1, 7)
    ]
    assert [p.update_number for p in store.entropy_history(search.id, after_update=4)] == [5, 6]


def stored_checkpoints(url: str, search_id: int) -> list[int]:
    """The update numbers of the search's checkpoint rows, read past the store."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            query = "SELECT update_number FROM controller_checkpoints WHERE search_id = :id ORDER BY update_number"
            return list(connection.execute(text(query), {"id": search_id}).scalars())
    finally:
        engine.dispose()


def test_pruning_keeps_the_newest_checkpoints_and_the_whole_entropy_history(store, url):
    search, other = store.create_search("s", {}), store.create_search("other", {})
    store.save_checkpoint(other.id, 1, 8, b"other", entropy=1.0, keep_last=1)
    for update in range(1, 8):
        store.save_checkpoint(search.id, update, 8 * update, b"state %d" % update, entropy=30.0 - update, keep_last=3)
        assert stored_checkpoints(url, search.id) == list(range(max(1, update - 2), update + 1)), update
    latest = store.latest_checkpoint(search.id)
    assert (latest.update_number, latest.episodes_reported, latest.state) == (7, 56, b"state 7")
    assert [(p.update_number, p.entropy) for p in store.entropy_history(search.id)] == [
        (update, 30.0 - update) for update in range(1, 8)
    ]
    assert stored_checkpoints(url, other.id) == [1]  # pruning stays within its search
    store.save_checkpoint(search.id, 8, 64, b"state 8")  # no keep_last: nothing is deleted
    assert stored_checkpoints(url, search.id) == [5, 6, 7, 8]


def test_episode_series_marks_first_proposals_of_each_architecture(store):
    search = store.create_search("s", {})
    keys = ["a", "b", "a", "c", "b", "a"]
    for number, key in enumerate(keys):
        store.add_episode(search.id, number, ARCH, arch_hash(key))
    store.start_episode(search.id, 0, "w")
    store.complete_episode(search.id, 0, reward=0.5)
    series = store.episode_series(search.id)
    assert [p.number for p in series] == list(range(6))
    assert [p.first_of_architecture for p in series] == [True, True, False, True, False, False]
    assert (series[0].status, series[0].reward) == ("completed", 0.5) and series[1].reward is None
    assert [p.number for p in store.episode_series(search.id, after=3)] == [4, 5]
    assert [p.first_of_architecture for p in store.episode_series(search.id, after=2)] == [True, False, False]


def test_delete_cascades_to_episodes_and_checkpoints(store, url):
    doomed = store.create_search("doomed", {})
    kept = store.create_search("kept", {})
    for search in (doomed, kept):
        store.add_episode(search.id, 0, ARCH, arch_hash(0))
        store.save_checkpoint(search.id, 1, 1, b"state")
    store.delete_search(doomed.id)
    with pytest.raises(SearchNotFound):
        store.list_episodes(doomed.id)
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            for table in ("episodes", "controller_checkpoints"):
                rows = connection.execute(text(f"SELECT search_id FROM {table}")).scalars().all()
                assert rows == [kept.id], table
    finally:
        engine.dispose()
    assert store.get_episode(kept.id, 0).number == 0


def test_migrations_create_exactly_the_orm_schema(store, url):
    upgrade_database(url)  # a second upgrade of a database at head changes nothing
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_server_default": True})
            assert context.get_current_revision() == head
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def test_reopening_keeps_the_data(store, url):
    search = store.create_search("s", {"seed": 1})
    store.add_episode(search.id, 0, ARCH, arch_hash(0))
    store.complete_episode(search.id, 0, 0.25, {"AP": 25.0})
    store.save_checkpoint(search.id, 1, 1, b"controller", entropy=3.0)
    store.close()

    with EpisodeStore(url) as reopened:
        assert reopened.get_search(search.id) == store.get_search(search.id)
        assert reopened.get_episode(search.id, 0).metrics == {"AP": 25.0}
        assert reopened.latest_checkpoint(search.id).state == b"controller"
        assert reopened.add_episode(search.id, 1, ARCH, arch_hash(1)).number == 1


def test_bad_urls_are_refused_by_name(tmp_path):
    with pytest.raises(StoreError, match="unsupported database URL scheme 'mysql'"):
        EpisodeStore("mysql://user@host/db")
    with pytest.raises(StoreError, match="SQLite URL needs a file path"):
        EpisodeStore("sqlite://")
    with pytest.raises(StoreError, match=f"directory {tmp_path / 'missing'} does not exist"):
        EpisodeStore(f"sqlite:///{tmp_path / 'missing' / 'store.db'}")
    hidden = re.escape("cannot open the store at postgresql+psycopg://postgres:***@127.0.0.1:1/")
    with pytest.raises(StoreError, match=hidden):
        EpisodeStore("postgresql://postgres:secret@127.0.0.1:1/nasfpn_test_none")


def test_sqlite_runs_in_wal_mode(tmp_path):
    path = tmp_path / "store.db"
    with EpisodeStore(f"sqlite:///{path}"):
        with sqlite3.connect(path) as other:
            assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)


class WriteAttempts:
    """Reports when a thread's SQLite write transaction (``BEGIN IMMEDIATE``) starts to run, through a
    trace callback on every SQLite connection opened while it is installed."""

    def __init__(self) -> None:
        self.thread_ids: set[int] = set()
        self.begun = threading.Event()

    def __enter__(self) -> "WriteAttempts":
        event.listen(Engine, "connect", self._trace)
        return self

    def __exit__(self, *exc_info: object) -> None:
        event.remove(Engine, "connect", self._trace)

    def _trace(self, dbapi_connection, _record) -> None:
        if isinstance(dbapi_connection, sqlite3.Connection):
            dbapi_connection.set_trace_callback(self._statement)

    def _statement(self, statement: str) -> None:
        if statement.startswith("BEGIN IMMEDIATE") and threading.get_native_id() in self.thread_ids:
            self.begun.set()


def wait_until_blocked(url: str, attempts: WriteAttempts, thread_id: int, write: Future) -> None:
    """Return once the store's ``write`` in thread ``thread_id`` waits for a lock another client holds.

    PostgreSQL shows it: a backend of the database waits on a lock. SQLite does not, so: the thread's
    ``BEGIN IMMEDIATE`` has started and the thread sleeps, which within that statement only SQLite's
    busy handler (retrying the lock) does.
    """
    deadline = time.monotonic() + 60  # generous; the wait begins within milliseconds on an idle machine
    if url.startswith("postgresql"):
        with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as watcher:
            query = (
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'"
            )
            while watcher.execute(query).fetchone() == (0,):
                assert not write.done(), f"the write ended without waiting: {write.exception() or write.result()}"
                assert time.monotonic() < deadline, "the write did not wait for the row lock"
                time.sleep(0.01)
        return
    assert attempts.begun.wait(60) or write.done(), "the write never began its transaction"
    wchan = Path(f"/proc/self/task/{thread_id}/wchan")
    while "nanosleep" not in wchan.read_text():
        assert not write.done(), f"the write ended without waiting: {write.exception() or write.result()}"
        assert time.monotonic() < deadline, "the write did not wait for SQLite's write lock"
        time.sleep(0.01)


def test_reading_goes_on_and_writing_waits_while_another_client_holds_the_row(url):
    """Another client's open write transaction has renamed a search and counted one more episode.

    Until it commits, the store reads the committed row without waiting (the reads return while the
    lock is still held: it is released only further down), and a write blocks on the lock. After the
    commit the write goes on with the committed row: its episode is numbered after the other
    client's count. Either backend: SQLite's write lock (WAL), PostgreSQL's row lock.
    """
    with WriteAttempts() as attempts, EpisodeStore(url) as store, ThreadPoolExecutor(2) as pool:
        search = store.create_search("s", {})
        engine = create_store_engine(url)  # the other client, configured as any store's
        other = writer(engine).connect()
        transaction = other.begin()  # BEGIN IMMEDIATE on SQLite
        update = "UPDATE searches SET name = 'renamed', num_episodes = num_episodes + 1 WHERE id = :id"
        other.execute(text(update), {"id": search.id})
        thread_ids: list[int] = []
        started = threading.Event()

        def add_episode():
            thread_ids.append(threading.get_native_id())
            attempts.thread_ids.add(thread_ids[0])
            started.set()
            return store.add_episode(search.id, 0, ARCH, arch_hash(0))

        try:
            read = pool.submit(lambda: (store.get_search(search.id), store.list_episodes(search.id)))
            summary, episodes = read.result(timeout=60)  # a read that waited for the lock would time out
            assert (summary.name, summary.num_episodes, episodes) == ("s", 0, [])
            write = pool.submit(add_episode)
            assert started.wait(60)
            wait_until_blocked(url, attempts, thread_ids[0], write)
            assert not write.done()
        finally:
            transaction.commit()
            other.close()
            engine.dispose()
        try:
            assert write.result(timeout=60).number == 1
            assert (store.get_search(search.id).name, store.get_search(search.id).num_episodes) == ("renamed", 2)
        finally:
            store.delete_search(search.id)  # the PostgreSQL database is shared by the module's tests


WRITER_PROCESS = """
import sys
from nas_service.store import EpisodeStore

store = EpisodeStore(sys.argv[1])
search_id, count = int(sys.argv[2]), int(sys.argv[3])
print("ready", flush=True)
sys.stdin.readline()
for i in range(count):
    episode = store.add_episode(search_id, 1000 + i, {"writer": "process"}, "%064x" % (1000 + i))
    store.complete_episode(search_id, episode.number, 0.5)
store.close()
"""


def test_concurrent_writers_and_a_reader(store, url):
    count = 30
    search = store.create_search("s", {})
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER_PROCESS, url, str(search.id), str(count)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    errors: list[BaseException] = []
    done = threading.Event()
    polls: list[list[int]] = []

    def write():
        try:
            for i in range(count):
                episode = store.add_episode(search.id, i, {"writer": "thread"}, arch_hash(i))
                store.complete_episode(search.id, episode.number, i / count)
        except BaseException as error:
            errors.append(error)

    def read():
        seen = -1
        try:
            while not done.is_set():
                new = [e.number for e in store.list_episodes(search.id, after=seen)]
                polls.append(new)
                seen = new[-1] if new else seen
                summary = store.get_search(search.id)
                assert summary.num_completed <= summary.num_episodes
        except BaseException as error:
            errors.append(error)

    try:
        assert process.stdout.readline() == "ready\n", process.stderr.read()
        threads = [threading.Thread(target=write), threading.Thread(target=read)]
        for thread in threads:
            thread.start()
        process.stdin.write("go\n")
        process.stdin.flush()
        _, stderr = process.communicate(timeout=60)
        threads[0].join(timeout=60)
    finally:
        done.set()
        if process.poll() is None:
            process.kill()
    threads[1].join(timeout=60)
    assert process.returncode == 0, stderr
    assert errors == []

    episodes = store.list_episodes(search.id, limit=1000)
    assert [e.number for e in episodes] == list(range(2 * count))
    assert sorted(e.proposal_id for e in episodes) == list(range(count)) + list(range(1000, 1000 + count))
    # Numbers commit in order, so polling with after= never skips one.
    assert [n for poll in polls for n in poll] == list(range(len([n for poll in polls for n in poll])))
    assert counters(store, search.id) == recomputed(store, search.id)
    assert store.get_search(search.id).num_unique == 2 * count
