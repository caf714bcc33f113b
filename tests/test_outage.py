"""Database outages, played with a TCP forwarder between the runner and PostgreSQL that the test cuts
(every connection reset, new ones refused): the store waits for the database for its patience, a
search cut off for 15 s completes with nothing lost or repeated, and a runner that gives up leaves its
search resumable and says why."""

import subprocess
import sys
import threading
import time

import pytest
import yaml
from sqlalchemy.engine import make_url

from controller.controller import Controller
from nas_service.store import EpisodeStore, StoreUnavailable
from tests.forwarder import Forwarder
from tests.seeding import search_config
from tests.test_search import RUNNER_ENV, _nas, data_root, finished, wait_for  # noqa: F401
from tests.test_search import wait_for_the_lease_to_expire
from tests.test_store import postgres_url  # noqa: F401

OUTAGE_SECONDS = 15


def through(forwarder: Forwarder, url: str) -> str:
    """``url`` with its host and port replaced by the forwarder's."""
    return make_url(url).set(host="127.0.0.1", port=forwarder.port).render_as_string(hide_password=False)


def named(store: EpisodeStore, name: str) -> int | None:
    """The id of the search called ``name``, once there is one (the module's tests share a database)."""
    return next((search.id for search in store.list_searches() if search.name == name), None)


def test_the_store_waits_for_the_database_for_its_patience(postgres_url, caplog):  # noqa: F811
    with Forwarder(("127.0.0.1", 5432)) as forwarder:
        store = EpisodeStore(through(forwarder, postgres_url))
        search = store.create_search("s", {})
        forwarder.cut()
        with pytest.raises(StoreUnavailable, match=rf"the store at postgresql\+psycopg://postgres@127.0.0.1:"
                                                   rf"{forwarder.port}/\S+ did not answer for 0 s"):
            store.get_search(search.id)  # no patience: at once
        patient = store.with_patience(60)
        answer: list = []
        reader = threading.Thread(target=lambda: answer.append(patient.get_search(search.id)))
        reader.start()
        wait_for(lambda: "does not answer" in caplog.text, "the store did not retry", timeout=60)
        forwarder.restore()
        reader.join(timeout=60)
        assert answer and answer[0].name == "s"  # it waited, then read through a new connection
        forwarder.cut()
        with pytest.raises(StoreUnavailable, match="did not answer for 2 s"):
            store.with_patience(2).get_search(search.id)
        store.close()


def test_a_search_cut_off_from_postgres_for_15_s_completes(tmp_path, data_root, postgres_url):  # noqa: F811
    config_path = tmp_path / "search.yaml"
    # Episodes of a few seconds, so that the outage falls in the middle of the search.
    config = search_config(data_root, episodes=6, train={"iterations": 12})
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    store = EpisodeStore(postgres_url)  # the test's own view, not through the forwarder
    log = tmp_path / "runner.log"
    with Forwarder(("127.0.0.1", 5432)) as forwarder, log.open("w") as out:
        runner = _nas("search", "start", "-c", str(config_path), "--name", "cut", "--db",
                      through(forwarder, postgres_url), cwd=tmp_path, env=RUNNER_ENV, stdout=out,
                      stderr=subprocess.STDOUT)
        search_id = wait_for(lambda: named(store, "cut"), "no search", log=log)
        wait_for(lambda: finished(store, search_id) >= 1, "no episode finished", log=log)
        forwarder.cut()
        time.sleep(OUTAGE_SECONDS)  # the outage itself, not a wait for something to happen
        during = store.get_search(search_id)
        forwarder.restore()
        assert runner.wait(timeout=600) == 0, log.read_text()
    output = log.read_text()
    assert "does not answer" in output and "answers again after" in output  # it was cut off, and waited
    assert during.status == "running" and during.num_episodes < 6  # the outage fell mid-search
    search = store.get_search(search_id)
    episodes = store.list_episodes(search_id)
    assert search.status == "completed", search.error
    assert [e.number for e in episodes] == list(range(6)) and len({e.proposal_id for e in episodes}) == 6
    assert all(e.status in ("completed", "cached") and e.attempts == 1 for e in episodes)
    assert search.num_completed + search.num_cached == 6 and search.lease_owner is None
    controller = Controller.from_bytes(store.latest_checkpoint(search_id).state)
    assert controller.num_proposed == 6 and not controller.pending and not controller.rewarded
    store.close()


def test_a_runner_that_gives_up_leaves_its_search_resumable(tmp_path, data_root, postgres_url):  # noqa: F811
    config_path = tmp_path / "search.yaml"
    config_path.write_text(yaml.safe_dump(search_config(data_root, episodes=3).model_dump(mode="json")))
    store = EpisodeStore(postgres_url)
    log = tmp_path / "runner.log"
    with Forwarder(("127.0.0.1", 5432)) as forwarder, log.open("w") as out:
        runner = _nas("search", "start", "-c", str(config_path), "--name", "given-up", "--db",
                      through(forwarder, postgres_url), cwd=tmp_path, env={**RUNNER_ENV, "NAS_STORE_PATIENCE": "3"},
                      stdout=out, stderr=subprocess.STDOUT)
        search_id = wait_for(lambda: named(store, "given-up"), "no search", log=log)
        wait_for(lambda: store.get_search(search_id).num_episodes >= 1, "no episode proposed", log=log)
        forwarder.cut()  # for longer than the runner's patience
        assert runner.wait(timeout=300) == 2, log.read_text()
    output = log.read_text()
    assert "did not answer for 3 s" in output and f"Search {search_id} is left resumable" in output
    assert "Traceback" not in output
    wait_for_the_lease_to_expire(store, search_id)  # it could not say so in the store: its lease expires
    resumed = subprocess.run(
        [sys.executable, "-m", "nas_service.cli", "search", "resume", str(search_id), "--db", postgres_url],
        cwd=tmp_path, env=RUNNER_ENV, capture_output=True, text=True, timeout=300,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    episodes = store.list_episodes(search_id)
    assert store.get_search(search_id).status == "completed" and [e.number for e in episodes] == [0, 1, 2]
    assert all(e.attempts == 1 for e in episodes)
    store.close()

