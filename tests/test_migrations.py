"""The store's Alembic revisions on real databases (an SQLite file and a fresh PostgreSQL database).

A database written at the first revision keeps its rows through every later one and back down to the
first; every revision's downgrade restores the schema its upgrade started from, down to an empty
database and up again to the schema of the ORM. Written against "head": a new revision is checked
without changing this file.
"""

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from nas_service.store import EpisodeStore, upgrade_database
from nas_service.store.engine import create_store_engine, writer
from nas_service.store.schema import Base
from tests.test_store import _alembic_config, postgres_url  # noqa: F401  (postgres_url: a fresh database)

FIRST = "0001"  # the initial schema (migrations/versions/0001_initial.py)
T = TypeVar("T")
TABLES_AT_FIRST = ("searches", "episodes", "controller_checkpoints")


SCRIPTS = ScriptDirectory.from_config(_alembic_config())
REVISIONS = [script.revision for script in SCRIPTS.walk_revisions()][::-1]  # base first, head last


def migrate(url: str, target: str, down: bool = False) -> None:
    """``alembic upgrade|downgrade target`` in one write transaction, as the store runs its upgrades."""
    engine = create_store_engine(url)
    try:
        with writer(engine).begin() as connection:
            config = _alembic_config()
            config.attributes["connection"] = connection  # what migrations/env.py runs on
            (command.downgrade if down else command.upgrade)(config, target)
    finally:
        engine.dispose()


def on_database(url: str, work: Callable[[sa.Connection], T]) -> T:
    engine = create_store_engine(url)
    try:
        with engine.connect() as connection:
            return work(connection)
    finally:
        engine.dispose()


def revision(url: str) -> str | None:
    return on_database(url, lambda connection: MigrationContext.configure(connection).get_current_revision())


def schema(url: str) -> dict[str, dict]:
    """Every table's columns (name, type, nullable), indexes, unique constraints and foreign keys."""

    def read(connection: sa.Connection) -> dict[str, dict]:
        inspector = sa.inspect(connection)
        return {
            table: {
                "columns": [(c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(table)],
                "indexes": sorted((i["name"], tuple(i["column_names"])) for i in inspector.get_indexes(table)),
                "unique": sorted(tuple(u["column_names"]) for u in inspector.get_unique_constraints(table)),
                "foreign_keys": sorted(
                    (tuple(f["constrained_columns"]), f["referred_table"]) for f in inspector.get_foreign_keys(table)
                ),
            }
            for table in inspector.get_table_names()
            if table != "alembic_version"
        }

    return on_database(url, read)


def rows(url: str, columns: dict[str, list[str]]) -> dict[str, list[tuple]]:
    """The rows of each table, restricted to the given columns, in id order."""

    def read(connection: sa.Connection) -> dict[str, list[tuple]]:
        return {
            table: [
                tuple(row)
                for row in connection.execute(
                    sa.select(*(sa.column(c) for c in names)).select_from(sa.table(table)).order_by(sa.column("id"))
                )
            ]
            for table, names in columns.items()
        }

    return on_database(url, read)


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    url = request.getfixturevalue("postgres_url")
    migrate(url, "base", down=True)  # the module's PostgreSQL database starts every test empty
    return url


# Timestamps as the store writes them (UTC), arbitrary but distinct.
PROPOSED, STARTED, FINISHED = (datetime(2024, 5, 1, 12, minute, 30, tzinfo=UTC) for minute in (0, 1, 7))
TIMESTAMP = sa.DateTime(timezone=True)


def populate_first_revision(url: str) -> int:
    """A stopped search with a completed and a proposed episode and a controller checkpoint, written by
    raw SQL against the first revision's tables (no ORM of a later schema involved); its id."""
    engine = create_store_engine(url)
    try:
        with writer(engine).begin() as connection:
            connection.execute(
                sa.text(
                    "INSERT INTO searches (name, config, status, created_at, updated_at, started_at, finished_at, "
                    "budget_episodes, budget_seconds, archived, num_episodes, num_completed, num_unique, "
                    "best_reward, best_episode_number, last_entropy) VALUES ('written at 0001', :config, 'stopped', "
                    ":proposed, :finished, :started, :finished, 10, 3600.0, :archived, 2, 1, 2, 0.25, 0, 1.5)"
                ).bindparams(
                    sa.bindparam("config", type_=sa.JSON), sa.bindparam("proposed", type_=TIMESTAMP),
                    sa.bindparam("started", type_=TIMESTAMP), sa.bindparam("finished", type_=TIMESTAMP),
                    sa.bindparam("archived", type_=sa.Boolean),
                ),
                {"config": {"seed": 3, "controller": {"levels": [3, 4, 5, 6, 7]}}, "proposed": PROPOSED,
                 "started": STARTED, "finished": FINISHED, "archived": False},
            )
            search_id = connection.execute(sa.text("SELECT id FROM searches WHERE name = 'written at 0001'")).scalar()
            episode = sa.text(
                "INSERT INTO episodes (search_id, number, proposal_id, architecture, arch_hash, status, reward, "
                "metrics, flops, params, worker, attempts, proposed_at, started_at, finished_at, train_seconds) "
                "VALUES (:search_id, :number, :proposal_id, :architecture, :arch_hash, :status, :reward, :metrics, "
                ":flops, :params, :worker, :attempts, :proposed, :started, :finished, :train_seconds)"
            ).bindparams(
                sa.bindparam("architecture", type_=sa.JSON), sa.bindparam("metrics", type_=sa.JSON),
                sa.bindparam("proposed", type_=TIMESTAMP), sa.bindparam("started", type_=TIMESTAMP),
                sa.bindparam("finished", type_=TIMESTAMP),
            )
            cell = {"schema_version": 1, "levels": [3, 4, 5, 6, 7], "cells": []}
            connection.execute(episode, [
                {"search_id": search_id, "number": 0, "proposal_id": 0, "architecture": cell, "arch_hash": "a" * 64,
                 "status": "completed", "reward": 0.25, "metrics": {"AP": 0.25}, "flops": 12 * 10**9,
                 "params": 4 * 10**6, "worker": "node-1", "attempts": 1, "proposed": PROPOSED, "started": STARTED,
                 "finished": FINISHED, "train_seconds": 95.5},
                {"search_id": search_id, "number": 1, "proposal_id": 1, "architecture": cell, "arch_hash": "b" * 64,
                 "status": "proposed", "reward": None, "metrics": None, "flops": None, "params": None,
                 "worker": None, "attempts": 0, "proposed": PROPOSED, "started": None, "finished": None,
                 "train_seconds": None},
            ])
            connection.execute(
                sa.text(
                    "INSERT INTO controller_checkpoints (search_id, update_number, episodes_reported, state, entropy, "
                    "created_at) VALUES (:search_id, 1, 1, :state, 1.5, :created)"
                ).bindparams(sa.bindparam("state", type_=sa.LargeBinary), sa.bindparam("created", type_=TIMESTAMP)),
                {"search_id": search_id, "state": b"\x00controller\xff", "created": FINISHED},
            )
        return search_id
    finally:
        engine.dispose()


def test_revisions_form_one_line_from_the_first():
    assert SCRIPTS.get_bases() == [FIRST] and SCRIPTS.get_heads() == [REVISIONS[-1]]


def test_a_database_written_at_the_first_revision_keeps_its_data_up_to_head_and_back(url):
    migrate(url, FIRST)
    search_id = populate_first_revision(url)
    first_columns = {table: [c[0] for c in schema(url)[table]["columns"]] for table in TABLES_AT_FIRST}
    written = rows(url, first_columns)
    assert [len(written[table]) for table in TABLES_AT_FIRST] == [1, 2, 1]  # as populate_first_revision wrote

    upgrade_database(url)  # what opening a store does
    assert revision(url) == REVISIONS[-1]
    assert rows(url, first_columns) == written
    with EpisodeStore(url) as store:
        search = store.get_search(search_id)
        assert (search.name, search.status, search.config["seed"], search.budget_episodes) == (
            "written at 0001", "stopped", 3, 10
        )
        counted = (search.num_episodes, search.num_completed, search.best_reward, search.started_at)
        assert counted == (2, 1, 0.25, STARTED)
        done, proposed = store.list_episodes(search_id)
        assert (done.status, done.metrics, done.flops) == ("completed", {"AP": 0.25}, 12 * 10**9)
        assert (done.proposed_at, done.finished_at, done.train_seconds) == (PROPOSED, FINISHED, 95.5)
        assert (proposed.status, proposed.reward) == ("proposed", None)
        assert store.latest_checkpoint(search_id).state == b"\x00controller\xff"
        # The upgraded database takes new writes where the old ones left off.
        assert store.add_episode(search_id, 2, done.architecture, "c" * 64).number == 2
        store.save_checkpoint(search_id, 2, 2, b"next", entropy=1.25)
        assert [point.update_number for point in store.entropy_history(search_id)] == [2]

    at_head = rows(url, first_columns)
    assert [len(at_head[table]) for table in TABLES_AT_FIRST] == [1, 3, 2]  # with the episode and checkpoint above
    migrate(url, FIRST, down=True)  # every later revision's downgrade keeps the first revision's rows
    assert revision(url) == FIRST
    assert rows(url, first_columns) == at_head


def test_each_downgrade_restores_the_schema_its_upgrade_started_from(url):
    before = {}  # the schema each revision's upgrade started from
    for target in REVISIONS:
        before[target] = schema(url)
        migrate(url, target)
        assert revision(url) == target
    at_head = schema(url)
    for target, previous in reversed(list(zip(REVISIONS, ["base", *REVISIONS[:-1]]))):
        migrate(url, previous, down=True)
        assert revision(url) == (None if previous == "base" else previous)
        assert schema(url) == before[target], f"the downgrade of {target}"
    assert before[FIRST] == {}  # down to an empty database
    upgrade_database(url)  # and up again, to exactly the ORM's schema
    assert schema(url) == at_head

    def differences(connection: sa.Connection) -> list:
        context = MigrationContext.configure(connection, opts={"compare_server_default": True})
        return compare_metadata(context, Base.metadata)

    assert on_database(url, differences) == []


def test_the_store_knows_alembics_head():
    """The store skips Alembic for a database at HEAD, so HEAD must be the newest revision shipped."""
    from nas_service.store.migrate import HEAD

    assert HEAD == SCRIPTS.get_current_head() == REVISIONS[-1]


OLD_PROXY_TRAIN = {
    "iterations": 2, "batch_size": 2, "learning_rate": 0.02, "momentum": 0.9, "weight_decay": 1e-4,
    "warmup_iterations": 2, "warmup_factor": 0.001, "grad_clip": 10.0, "train_short_sides": [56, 72],
    "train_max_size": 96, "flip_probability": 0.5, "eval_short_side": 64, "eval_max_size": 96, "eval_batch_size": 3,
    "seed": 0, "device": "auto", "amp": True, "threads": 1, "log_every": 25, "inject_nonfinite_loss_at": None,
}
"""``proxy.train`` of tests.seeding's search as a search stored before 0004 holds it (the old names)."""


def test_a_search_stored_with_the_old_proxy_names_loads_at_head_and_goes_back(url, tmp_path):
    from nas_service.search_config import SearchConfig
    from tests.seeding import search_config

    current = search_config(tmp_path / "synthetic", episodes=2)
    old = current.model_dump(mode="json")
    del old["reward"]["noise"]  # came with 0004's code
    old["proxy"]["train"] = dict(OLD_PROXY_TRAIN)
    del old["proxy"]["test"]
    old["proxy"]["dataset"] = {
        key: old["proxy"]["dataset"][key]
        for key in ("train_annotations", "train_images", "val_annotations", "val_images", "synthetic", "max_val_images")
    }
    migrate(url, "0003")
    engine = create_store_engine(url)
    try:
        with writer(engine).begin() as connection:
            connection.execute(
                sa.text(
                    "INSERT INTO searches (name, config, status, created_at, updated_at, budget_episodes, archived, "
                    "num_episodes, num_completed, num_unique) VALUES ('old names', :config, 'stopped', :at, :at, 2, "
                    ":archived, 0, 0, 0)"
                ).bindparams(sa.bindparam("config", type_=sa.JSON), sa.bindparam("at", type_=TIMESTAMP),
                             sa.bindparam("archived", type_=sa.Boolean)),
                {"config": old, "at": PROPOSED, "archived": False},
            )
    finally:
        engine.dispose()

    upgrade_database(url)
    noisy = search_config(tmp_path / "synthetic", episodes=2, reward={"noise": {"paired": 0.01}})
    with EpisodeStore(url) as store:
        stored = store.list_searches()[0].config
        store.create_search("made at head", noisy.model_dump(mode="json"), budget_episodes=2)
    assert SearchConfig.model_validate(stored) == current
    assert stored["proxy"]["test"] == {"short_side": 64, "max_size": 96, "batch_size": 3}
    migrate(url, "0003", down=True)
    stored_rows = rows(url, {"searches": ["config"]})["searches"]
    restored, made_at_head = (config if isinstance(config, dict) else json.loads(config) for (config,) in stored_rows)
    del old["proxy"]["train"]["inject_nonfinite_loss_at"]  # test-only, not brought back (its default was None)
    assert restored == old
    # A search created at head goes back to what 0003's code reads: old names, no key it does not know.
    assert made_at_head["reward"] == {"metric": "AP", "flops_target": None, "flops_weight": -0.07}
    assert "test" not in made_at_head["proxy"] and made_at_head["proxy"]["train"]["train_short_sides"] == [56, 72]
