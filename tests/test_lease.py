"""One runner per search: the lease in the store (SQLite and PostgreSQL), the lifecycle it moves in, the
idempotent writes a retrying runner relies on, and then for real: a runner stopped by SIGTERM or SIGINT,
two API resumes of a search whose runner died (exactly one runner starts), and a runner frozen past its
lease that wakes up to find its search taken over (it writes nothing more).
"""

import contextlib
import os
import secrets
import signal
import subprocess
import threading
import time
from datetime import UTC, datetime

import httpx
import pytest
import yaml
from alembic import command
from sqlalchemy import create_engine, inspect

from controller.controller import Controller
from nas_service.lifecycle import ACTIVE, EPISODE_MOVES, FINISHED, RESUMABLE, SEARCH_MOVES, SearchStatus
from nas_service.store import Conflict, EpisodeStore, LeaseLost, StoreError
from nas_service.store.migrate import MIGRATIONS
from tests.live_server import TOKEN, serving
from tests.seeding import search_config
from tests.test_search import RUNNER_ENV, _nas, create, data_root, finished, wait_for  # noqa: F401
from tests.test_search import wait_for_the_lease_to_expire
from tests.test_store import ARCH, _alembic_config, arch_hash, postgres_url, url  # noqa: F401

AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}


@pytest.fixture
def store(url):  # noqa: F811
    store = EpisodeStore(url)
    yield store
    for search in store.list_searches(include_archived=True):
        store.delete_search(search.id)
    store.close()


def expire(store: EpisodeStore, search_id: int) -> None:
    """Wait until the search's lease has expired (the database's clock is this machine's)."""
    deadline = time.monotonic() + 30
    while store.get_search(search_id).lease_expires_at >= datetime.now(UTC):
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_the_lifecycle_tables_cover_every_status():
    assert set(SEARCH_MOVES) == set(SearchStatus) and all(moves <= set(SearchStatus) for moves in SEARCH_MOVES.values())
    assert not SEARCH_MOVES[SearchStatus.COMPLETED]  # a completed search is final
    assert ACTIVE <= RESUMABLE and not ACTIVE & FINISHED
    assert all(EPISODE_MOVES[done] <= {"proposed"} for done in ("completed", "cached", "failed"))


def test_a_lease_is_taken_once_refused_while_live_and_taken_over_when_expired(store):
    search = store.create_search("s", {})
    held = store.acquire_lease(search.id, "host-a:11", "token-a", seconds=0.5)
    assert (held.status, held.lease_owner) == ("running", "host-a:11") and held.started_at is not None
    assert held.lease_expires_at > held.lease_heartbeat_at == held.lease_acquired_at
    assert store.acquire_lease(search.id, "host-a:11", "token-a", 0.5).lease_owner == "host-a:11"  # repeated
    with pytest.raises(Conflict, match=rf"search {search.id} is running: a runner holds it \(host-a:11, last heartbeat"):
        store.acquire_lease(search.id, "host-b:22", "token-b", 30)
    assert store.renew_lease(search.id, "token-a", 0.5).lease_heartbeat_at >= held.lease_heartbeat_at

    store.add_episode(search.id, 0, ARCH, arch_hash(0), lease="token-a")
    expire(store, search.id)  # runner A stopped beating: it is taken for dead
    taken = store.acquire_lease(search.id, "host-b:22", "token-b", 30)
    assert (taken.status, taken.lease_owner, taken.started_at) == ("running", "host-b:22", held.started_at)
    # A lives on: every one of its writes is refused, and its heartbeat says who took over.
    with pytest.raises(LeaseLost, match=f"search {search.id}: this runner's lease was taken over by host-b:22"):
        store.renew_lease(search.id, "token-a", 30)
    for write in (
        lambda: store.add_episode(search.id, 1, ARCH, arch_hash(1), lease="token-a"),
        lambda: store.start_episode(search.id, 0, "w", lease="token-a"),
        lambda: store.complete_episode(search.id, 0, 0.5, lease="token-a"),
        lambda: store.fail_episode(search.id, 0, "late", lease="token-a"),
        lambda: store.requeue_episode(search.id, 0, lease="token-a"),
        lambda: store.save_checkpoint(search.id, 0, 0, b"state", lease="token-a"),
        lambda: store.set_search_status(search.id, "completed", lease="token-a"),
    ):
        with pytest.raises(LeaseLost):
            write()
    assert store.get_search(search.id).num_episodes == 1 and store.latest_checkpoint(search.id) is None

    done = store.set_search_status(search.id, "completed", lease="token-b")  # B finishes: it lets go
    assert done.lease_owner is None and done.lease_expires_at is None and done.finished_at is not None
    with pytest.raises(Conflict, match=f"search {search.id} has completed its budget; nothing to resume"):
        store.acquire_lease(search.id, "host-c:33", "token-c", 30)


def test_of_many_concurrent_takeovers_exactly_one_wins(store, url):  # noqa: F811
    search = store.create_search("s", {})
    store.acquire_lease(search.id, "dead:1", "dead", seconds=0.2)
    expire(store, search.id)
    stores = [EpisodeStore(url) for _ in range(8)]  # a connection each, as separate runners have
    start = threading.Barrier(len(stores))
    won, refused = [], []

    def resume(index: int) -> None:
        start.wait()
        try:
            stores[index].acquire_lease(search.id, f"runner:{index}", f"token-{index}", 30)
            won.append(index)
        except Conflict as error:
            refused.append(str(error))

    threads = [threading.Thread(target=resume, args=(i,)) for i in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for other in stores:
        other.close()
    assert len(won) == 1 and len(refused) == len(stores) - 1
    assert all(f"a runner holds it (runner:{won[0]}, last heartbeat" in message for message in refused)
    assert store.get_search(search.id).lease_owner == f"runner:{won[0]}"


def test_stop_asks_a_live_runner_and_ends_a_search_whose_runner_is_gone(store):
    live = store.create_search("live", {})
    store.acquire_lease(live.id, "host:1", "live", seconds=30)
    assert store.request_stop(live.id).status == "stopping"
    assert store.request_stop(live.id).status == "stopping"  # asked twice: still the runner's to end
    gone = store.create_search("gone", {})
    store.acquire_lease(gone.id, "host:2", "gone", seconds=0.2)
    store.request_stop(gone.id)
    expire(store, gone.id)
    stopped = store.request_stop(gone.id)  # a stopping search whose runner is gone ends stopped
    assert stopped.status == "stopped" and stopped.lease_owner is None and stopped.finished_at is not None
    assert stopped.error.startswith("stopped without its runner, which was gone (host:2, last heartbeat")
    with pytest.raises(Conflict, match=f"search {gone.id} is stopped, not running"):
        store.request_stop(gone.id)
    # A search marked running by hand, with no lease: a resume is refused, a stop ends it.
    marked = store.create_search("marked", {})
    store.set_search_status(marked.id, "running")
    with pytest.raises(Conflict, match=f"search {marked.id} is running, not created, stopped or failed, and no"):
        store.acquire_lease(marked.id, "host:3", "t", 30)
    assert store.request_stop(marked.id).status == "stopped"
    assert store.acquire_lease(marked.id, "host:3", "t", 30).status == "running"


def test_a_failed_launch_gives_the_search_back(store):
    search = store.create_search("s", {})
    store.acquire_lease(search.id, "launcher:1", "t1", 30)
    back = store.release_lease(search, "t1")
    assert (back.status, back.started_at, back.lease_owner) == ("created", None, None)
    store.acquire_lease(search.id, "launcher:1", "t2", 30)
    store.request_stop(search.id)  # stopped while the launch was failing: it ends stopped
    assert store.release_lease(search, "t2").status == "stopped"
    with pytest.raises(LeaseLost):
        store.release_lease(search, "t2")


def test_the_lifecycle_refuses_other_moves(store):
    search = store.create_search("s", {})
    for status in ("stopping", "stopped", "completed", "failed"):
        with pytest.raises(Conflict, match=f"search {search.id} is created; it cannot become {status}"):
            store.set_search_status(search.id, status)
    store.acquire_lease(search.id, "host:1", "t", 30)
    store.set_search_status(search.id, "completed", lease="t")
    with pytest.raises(Conflict, match=f"search {search.id} is completed; it cannot become running"):
        store.set_search_status(search.id, "running")
    store.add_episode(search.id, 0, ARCH, arch_hash(0))
    store.fail_episode(search.id, 0, "boom")
    with pytest.raises(Conflict, match="episode 0 of search .* is already failed; it cannot be completed again"):
        store.complete_episode(search.id, 0, 0.5)


def test_repeated_writes_change_nothing(store):
    """A runner repeats a write whose answer was lost with its connection: the repeat finds it done."""
    search = store.create_search("s", {})
    store.acquire_lease(search.id, "host:1", "t", 30)
    first = store.add_episode(search.id, 7, ARCH, arch_hash(0), lease="t")
    assert store.add_episode(search.id, 7, ARCH, arch_hash(0), lease="t") == first
    with pytest.raises(Conflict, match=f"proposal 7 of search {search.id} already has episode 0 with another"):
        store.add_episode(search.id, 7, ARCH, arch_hash(1), lease="t")
    started = store.start_episode(search.id, 0, "ray-trial-a", lease="t")
    assert store.start_episode(search.id, 0, "ray-trial-a", lease="t") == started and started.attempts == 1
    done = store.complete_episode(search.id, 0, 0.5, {"AP": 0.5}, lease="t")
    assert store.complete_episode(search.id, 0, 0.5, {"AP": 0.5}, lease="t") == done
    saved = store.save_checkpoint(search.id, 0, 1, b"state", lease="t")
    assert store.save_checkpoint(search.id, 0, 1, b"state", lease="t") == saved
    with pytest.raises(StoreError, match="already has a checkpoint for update 0"):
        store.save_checkpoint(search.id, 0, 1, b"other state", lease="t")
    second = store.add_episode(search.id, 8, ARCH, arch_hash(1), lease="t")
    assert store.requeue_episode(search.id, second.number, refund_attempt=True, lease="t") == second  # proposed
    after = store.get_search(search.id)
    assert (after.num_episodes, after.num_completed, after.num_unique) == (2, 1, 1)
    stopped = store.set_search_status(search.id, "stopped", lease="t")
    assert store.set_search_status(search.id, "stopped", lease="t") == stopped  # the release, repeated


def test_migration_0003_keeps_the_data_and_goes_back(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    config = _alembic_config()
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "0002")
            connection.exec_driver_sql(
                "INSERT INTO searches (name, config, status, created_at, updated_at) "
                "VALUES ('old', '{}', 'running', '2026-01-01 00:00:00', '2026-01-01 00:00:00')"
            )
        with EpisodeStore(url) as store:  # opening upgrades to head
            old = store.get_search(1)
            assert (old.name, old.status, old.lease_owner) == ("old", "running", None)
            assert store.request_stop(1).status == "stopped"  # a runner of the old version has no lease
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, "0002")
        columns = {column["name"] for column in inspect(engine).get_columns("searches")}
        assert not {c for c in columns if c.startswith("lease_")} and "status" in columns
    finally:
        engine.dispose()
    assert MIGRATIONS.is_dir()


# -- for real: runners, signals and the API ------------------------------------------------------------


def _start(tmp_path, data_root, episodes: int, name: str, **changes):  # noqa: F811
    """`nas search start` of a tiny search whose episodes take a few seconds; (process, store, id, log)."""
    config = search_config(data_root, episodes=episodes, train={"iterations": 12}, **changes)
    config_path = tmp_path / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    db = f"sqlite:///{tmp_path / 'nas.db'}"
    log = tmp_path / f"{name}.log"
    with log.open("w") as out:
        runner = _nas("search", "start", "-c", str(config_path), "--name", name, "--db", db, cwd=tmp_path,
                      env=RUNNER_ENV, stdout=out, stderr=subprocess.STDOUT)
    store = EpisodeStore(db)
    search_id = wait_for(lambda: [s.id for s in store.list_searches() if s.name == name], "no search", log=log)[0]
    return runner, store, search_id, log


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_search_cleanly_and_it_resumes(tmp_path, data_root, signum):  # noqa: F811
    runner, store, search_id, log = _start(tmp_path, data_root, 4, "signalled")
    wait_for(lambda: store.count_episodes(search_id, status="running"), "no episode started", log=log)
    runner.send_signal(signum)  # docker, systemd and Kubernetes send SIGTERM to the runner alone
    assert runner.wait(timeout=120) == 128 + signum, log.read_text()
    output = log.read_text()
    assert f"search {search_id} stopped by {signal.Signals(signum).name}; resume it" in output
    assert "Traceback" not in output
    stopped = store.get_search(search_id)
    assert stopped.status == "stopped" and stopped.lease_owner is None
    assert stopped.error == f"stopped by {signal.Signals(signum).name}; resume it to continue"
    # The trial cut short is put back, its attempt refunded: the store holds nothing half done.
    assert store.count_episodes(search_id, status="running") == 0
    if signum == signal.SIGINT:
        return
    resumed = _nas("search", "resume", str(search_id), "--db", f"sqlite:///{tmp_path / 'nas.db'}", cwd=tmp_path,
                   env=RUNNER_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    search = store.get_search(search_id)
    episodes = store.list_episodes(search_id)
    assert search.status == "completed" and [e.number for e in episodes] == [0, 1, 2, 3]
    assert all(e.status in ("completed", "cached") and e.attempts == 1 for e in episodes)
    assert len({e.proposal_id for e in episodes}) == 4 == Controller.from_bytes(
        store.latest_checkpoint(search_id).state
    ).num_proposed


def test_two_api_resumes_of_a_search_whose_runner_died_start_one_runner(tmp_path, data_root, monkeypatch):  # noqa: F811
    db = f"sqlite:///{tmp_path / 'nas.db'}"
    store = EpisodeStore(db)
    search_id = create(store, search_config(tmp_path / "data" / "synthetic", episodes=3), "orphan")
    store.acquire_lease(search_id, "lost-host:4242", secrets.token_hex(16), seconds=0.5)  # then it died
    expire(store, search_id)
    monkeypatch.setenv("NAS_LEASE_SECONDS", RUNNER_ENV["NAS_LEASE_SECONDS"])  # for the runner it launches
    with serving(db, tmp_path) as base:
        start = threading.Barrier(2)
        answers: list[httpx.Response] = []

        def resume() -> None:
            start.wait()
            answers.append(httpx.post(f"{base}/api/searches/{search_id}/resume", headers=AUTH, json={}, timeout=60))

        threads = [threading.Thread(target=resume) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(answer.status_code for answer in answers) == [200, 409], [a.text for a in answers]
        refused = next(answer for answer in answers if answer.status_code == 409).json()["detail"]
        assert f"search {search_id} is running: a runner holds it (" in refused and "last heartbeat" in refused
        launched = next(answer for answer in answers if answer.status_code == 200).json()
        assert launched["search"]["lease_owner"] is not None and "pid " in launched["runner"]
        log = tmp_path / "data" / "logs" / f"search-{search_id}.log"
        wait_for(lambda: store.get_search(search_id).status == "completed", "the runner did not finish", log=log)
    search = store.get_search(search_id)
    episodes = store.list_episodes(search_id)
    assert [e.number for e in episodes] == [0, 1, 2] and len({e.proposal_id for e in episodes}) == 3
    assert all(e.status in ("completed", "cached") and e.attempts == 1 for e in episodes)
    assert search.num_completed + search.num_cached == 3 and search.lease_owner is None
    assert log.read_text().count("episodes 3/3: ") == 1  # the summary of one runner


def test_a_runner_frozen_past_its_lease_finds_the_search_taken_over_and_writes_nothing(tmp_path, data_root):  # noqa: F811
    db = f"sqlite:///{tmp_path / 'nas.db'}"
    config_path = tmp_path / "search.yaml"
    config_path.write_text(yaml.safe_dump(search_config(data_root, episodes=4, train={"iterations": 12}).model_dump(
        mode="json")))
    log = tmp_path / "frozen.log"
    with log.open("w") as out:
        frozen = _nas("search", "start", "-c", str(config_path), "--name", "frozen", "--db", db, cwd=tmp_path,
                      env=RUNNER_ENV, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    store = EpisodeStore(db)
    try:
        search_id = wait_for(lambda: store.list_searches() and store.list_searches()[0].id, "no search", log=log)
        wait_for(lambda: finished(store, search_id) >= 1 and store.count_episodes(search_id, status="running"),
                 "no second episode running", log=log)
        os.killpg(frozen.pid, signal.SIGSTOP)  # the runner and its Ray stop dead, as on a hung machine
        wait_for_the_lease_to_expire(store, search_id)
        taker = _nas("search", "resume", str(search_id), "--db", db, cwd=tmp_path, env=RUNNER_ENV,
                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wait_for(lambda: store.get_search(search_id).lease_owner.endswith(f":{taker.pid}"), "no takeover")
        os.killpg(frozen.pid, signal.SIGCONT)  # it wakes up: its heartbeat and its writes are refused
        assert frozen.wait(timeout=300) == 2, log.read_text()
        output, _ = taker.communicate(timeout=300)
        assert taker.returncode == 0, output
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(frozen.pid, signal.SIGKILL)  # its Ray, if anything of it is left
    assert f"search {search_id}: this runner's lease was taken over by " in log.read_text()
    search = store.get_search(search_id)
    episodes = store.list_episodes(search_id)
    assert search.status == "completed" and [e.number for e in episodes] == [0, 1, 2, 3]
    assert len({e.proposal_id for e in episodes}) == 4 and search.num_completed + search.num_cached == 4
    assert all(e.status in ("completed", "cached") and e.attempts == 1 for e in episodes)
