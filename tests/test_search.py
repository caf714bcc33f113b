"""The search end to end on a real local Ray (and a real 2-node Ray cluster), with a tiny proxy."""

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from ray.cluster_utils import Cluster

from controller.controller import Controller
from nas_service.lease import new_token
from nas_service.search_config import SearchConfig, load_search_config
from nas_service.search_run import CheckpointError
from nas_service.store import EpisodeStore
from nas_service.tune_adapter import run_search
from tests.seeding import search_config
from tests.test_proxy import DIVERGING

REPO = Path(__file__).resolve().parent.parent
LEASE_SECONDS = "4"
"""Runners of these tests are taken for dead 4 s after their last heartbeat (30 s by default)."""
RUNNER_ENV = {**os.environ, "NAS_LEASE_SECONDS": LEASE_SECONDS}


def create(store: EpisodeStore, config: SearchConfig, name: str) -> int:
    return store.create_search(name, config.model_dump(mode="json"), budget_episodes=config.budget.episodes).id


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("search-data") / "synthetic"


def test_search_runs_episodes_and_learns(tmp_path, data_root):
    store = EpisodeStore(f"sqlite:///{tmp_path / 'nas.db'}")
    config = search_config(data_root, episodes=6)
    search_id = create(store, config, "e2e")
    search = run_search(store, search_id, storage=tmp_path / "ray")
    assert search.status == "completed"
    episodes = store.list_episodes(search_id)
    assert [e.number for e in episodes] == list(range(6))
    assert all(e.status in ("completed", "cached") for e in episodes)
    assert search.num_completed + search.num_cached == 6 and search.num_failed == 0
    trained = [e for e in episodes if e.status == "completed"]
    assert all(e.metrics and "AP" in e.metrics and e.flops > 0 and e.train_seconds > 0 for e in trained)
    assert all(e.reward == e.metrics["AP"] for e in trained)
    assert all(" (1 CPU) node " in e.worker for e in trained)  # torch threads from resources.cpus_per_trial
    assert episodes[0].architecture["cells"][0] == {"input_a": 1, "input_b": 3, "output_level": 3, "op": "global_pool"}
    controller = Controller.from_bytes(store.latest_checkpoint(search_id).state)
    assert controller.num_proposed == 6 and not controller.pending
    assert controller.num_updates == 3  # batch_size 2
    assert search.last_entropy is not None
    assert search.lease_owner is None and search.lease_expires_at is None  # the runner let go of it


def test_failures_are_retried_then_penalised(tmp_path, data_root):
    store = EpisodeStore(f"sqlite:///{tmp_path / 'nas.db'}")
    config = search_config(
        data_root,
        episodes=2,
        train=DIVERGING,
        failures={"max_retries": 1, "penalty_reward": -0.5},
    )
    search_id = create(store, config, "failing")
    search = run_search(store, search_id, storage=tmp_path / "ray")
    assert search.status == "completed" and search.num_failed == 2
    for episode in store.list_episodes(search_id):
        assert episode.status == "failed" and episode.attempts == 2
        assert episode.reward == -0.5
        assert episode.error.startswith("non-finite loss nan at iteration 1")
    assert not Controller.from_bytes(store.latest_checkpoint(search_id).state).pending


def test_duplicate_architectures_come_from_the_cache(tmp_path, data_root):
    store = EpisodeStore(f"sqlite:///{tmp_path / 'nas.db'}")
    config = search_config(data_root, episodes=5, controller={"seed_target_probability": 0.95})
    search_id = create(store, config, "cached")
    search = run_search(store, search_id, storage=tmp_path / "ray")
    episodes = store.list_episodes(search_id)
    cached = [e for e in episodes if e.status == "cached"]
    assert search.num_cached == len(cached) >= 2
    for episode in cached:
        original = store.find_completed_by_hash(search_id, episode.arch_hash)
        assert original.number < episode.number and original.reward == episode.reward
    assert search.num_unique == len({e.arch_hash for e in episodes if e.status == "completed"})


def _nas(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nas_service.cli", *args], cwd=kwargs.pop("cwd"), **kwargs)


def wait_for(condition, what: str, timeout: float = 240, log: Path | None = None):
    """Poll ``condition()`` until it returns something truthy, which is returned; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout} s" + (f"\n{log.read_text()}" if log and log.exists() else ""))
        time.sleep(0.2)
    return value


def wait_for_the_lease_to_expire(store: EpisodeStore, search_id: int) -> None:
    """Until a resume may take the search over (the store's clock is this machine's, SQLite or local PostgreSQL)."""
    def expired() -> bool:
        search = store.get_search(search_id)
        return search.lease_expires_at is not None and search.lease_expires_at < datetime.now(UTC)
    wait_for(expired, "the killed runner's lease did not expire", timeout=120)


def finished(store: EpisodeStore, search_id: int) -> int:
    search = store.get_search(search_id)
    return search.num_completed + search.num_cached


def test_kill_9_then_resume_needs_no_flag_and_one_of_two_resumes_runs(tmp_path, data_root):
    config_path = tmp_path / "search.yaml"
    # Episodes of a few seconds: the search is still busy when the test has seen two of them finish.
    config = search_config(data_root, episodes=6, train={"iterations": 12})
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    db = f"sqlite:///{tmp_path / 'nas.db'}"
    log = tmp_path / "runner.log"
    with log.open("w") as out:
        runner = _nas("search", "start", "-c", str(config_path), "--name", "killed", "--db", db, cwd=tmp_path,
                      env=RUNNER_ENV, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    store = EpisodeStore(db)
    search_id = wait_for(lambda: store.list_searches() and store.list_searches()[0].id, "no search", log=log)
    wait_for(lambda: finished(store, search_id) >= 1, "no episode finished", log=log)

    # While the runner lives (it renews its lease), a resume is refused and says who holds the search.
    refused = subprocess.run(
        [sys.executable, "-m", "nas_service.cli", "search", "resume", str(search_id), "--db", db],
        cwd=tmp_path, env=RUNNER_ENV, capture_output=True, text=True,
    )
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert f"search {search_id} is running: a runner holds it (" in refused.stderr
    assert f":{runner.pid}, last heartbeat" in refused.stderr and "Traceback" not in refused.stderr

    wait_for(lambda: finished(store, search_id) >= 2 and store.count_episodes(search_id, status="running"),
             "no third episode running", log=log)
    os.killpg(runner.pid, signal.SIGKILL)  # the runner and the local Ray it started
    runner.wait()
    killed = store.get_search(search_id)
    assert killed.status == "running" and killed.lease_owner.endswith(f":{runner.pid}")  # nobody marked it
    before = {e.number: e for e in store.list_episodes(search_id) if e.status in ("completed", "cached")}

    # Once the lease has expired the runner is taken for dead: no flag. Of two resumes at once, one runs.
    wait_for_the_lease_to_expire(store, search_id)
    resumes = [
        _nas("search", "resume", str(search_id), "--db", db, cwd=tmp_path, env=RUNNER_ENV,
             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [resume.communicate(timeout=300) for resume in resumes]
    codes = [resume.returncode for resume in resumes]
    assert sorted(codes) == [0, 2], outputs
    loser = outputs[codes.index(2)][1]
    # Refused while the winner holds the lease, or (if it started after the winner finished) as completed.
    assert "a runner holds it" in loser or "has completed its budget" in loser, loser

    search = store.get_search(search_id)
    episodes = store.list_episodes(search_id)
    assert search.status == "completed"
    assert [e.number for e in episodes] == list(range(6))
    assert all(e.status in ("completed", "cached") for e in episodes)
    assert len({e.proposal_id for e in episodes}) == 6
    assert all(e.attempts == 1 for e in episodes)  # the run cut short by the kill is not counted
    assert search.num_completed + search.num_cached == 6  # no episode counted twice
    for number, episode in before.items():  # nothing finished before the kill was redone or lost
        assert store.get_episode(search_id, number).reward == episode.reward
        assert store.get_episode(search_id, number).finished_at == episode.finished_at
    controller = Controller.from_bytes(store.latest_checkpoint(search_id).state)
    assert controller.num_proposed == 6 and not controller.pending and not controller.rewarded
    assert controller.num_updates == 3


def test_trials_run_on_the_nodes_of_a_ray_cluster(tmp_path, data_root):
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        store = EpisodeStore(f"sqlite:///{tmp_path / 'nas.db'}")
        config = search_config(data_root, episodes=4, resources={"concurrency": 2, "cpus_per_trial": 1})
        search_id = create(store, config, "cluster")
        search = run_search(store, search_id, ray_address=cluster.address, storage=tmp_path / "ray")
        assert search.status == "completed"
        # What the system promises: every trial ran on a node of this cluster. (Which node each one
        # got is Ray's choice: with actor reuse, one node's actor may take every trial.)
        cluster_nodes = {node.node_id[:12] for node in cluster.list_all_nodes()}
        trained = [e for e in store.list_episodes(search_id) if e.status == "completed"]
        assert trained and {e.worker.split(" node ")[1] for e in trained} <= cluster_nodes
    finally:
        cluster.shutdown()


def test_a_stop_asked_before_the_launched_runner_starts_is_honoured(tmp_path, data_root):
    db = f"sqlite:///{tmp_path / 'nas.db'}"
    store = EpisodeStore(db)
    search = store.get_search(create(store, search_config(data_root, episodes=3), "stopped-early"))
    token = new_token()
    store.acquire_lease(search.id, "launcher:1", token, 60)  # what `--detach` and the API do before launching
    assert store.request_stop(search.id).status == "stopping"  # `nas search stop` before the runner got going
    runner = subprocess.run(
        [sys.executable, "-m", "nas_service.cli", "search", "resume", str(search.id), "--lease", token, "--db", db],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert runner.returncode == 0, runner.stdout + runner.stderr
    stopped = store.get_search(search.id)
    assert stopped.status == "stopped" and stopped.num_episodes == 0 and stopped.lease_owner is None


def test_a_checkpoint_that_does_not_load_fails_the_search_instead_of_leaving_it_running(tmp_path, data_root):
    store = EpisodeStore(f"sqlite:///{tmp_path / 'nas.db'}")
    search_id = create(store, search_config(data_root, episodes=3), "corrupt")
    store.save_checkpoint(search_id, 1, 2, b"not a controller")
    with pytest.raises(CheckpointError, match=f"search {search_id}: controller checkpoint 1 does not load"):
        run_search(store, search_id, storage=tmp_path / "ray")
    failed = store.get_search(search_id)
    assert failed.status == "failed" and failed.error.startswith(f"search {search_id}: controller checkpoint 1")
    assert failed.lease_owner is None


def test_shipped_search_configs_load():
    for path in sorted((REPO / "configs" / "search").glob("*.yaml")):
        cwd = os.getcwd()
        os.chdir(REPO)
        try:
            config = load_search_config(path)
        finally:
            os.chdir(cwd)
        assert config.budget.episodes >= 1


def test_search_config_errors_name_the_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("proxy: configs/proxy/cpu.yaml\ncontroller: {levels: [3, 4, 5, 6, 7]}\n")
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        with pytest.raises(ValueError, match=r"controller.levels: \[3, 4, 5, 6, 7\] must equal the proxy neck"):
            load_search_config(path)
        path.write_text("proxy: configs/proxy/cpu.yaml\nbudget: {episodes: 0}\n")
        with pytest.raises(ValueError, match="budget.episodes: Input should be greater than or equal to 1"):
            load_search_config(path)
    finally:
        os.chdir(cwd)


def test_unique_budget_stops_the_search(tmp_path, data_root):
    store = EpisodeStore(f"sqlite:///{tmp_path / 'nas.db'}")
    config = search_config(
        data_root, episodes=50, controller={"seed_target_probability": 0.5}, budget={"episodes": 50, "unique": 2}
    )
    search_id = create(store, config, "unique")
    search = run_search(store, search_id, storage=tmp_path / "ray")
    assert search.status == "completed"
    assert search.num_unique == 2 and search.num_completed == 2
    assert search.num_episodes < 50


def test_time_budget_stops_the_search(tmp_path, data_root):
    store = EpisodeStore(f"sqlite:///{tmp_path / 'nas.db'}")
    config = search_config(data_root, episodes=10_000, budget={"episodes": 10_000, "seconds": 1})
    search_id = create(store, config, "timed")
    search = run_search(store, search_id, storage=tmp_path / "ray")
    # Ended by the clock (counted from the search's start), not by the episode budget, and not earlier.
    assert search.status == "completed" and search.num_episodes < 10_000
    assert (search.finished_at - search.started_at).total_seconds() >= 1
    assert all(e.status in ("completed", "cached") for e in store.list_episodes(search_id, limit=10_000))


def test_stop_is_clean_and_resumable(tmp_path, data_root):
    config_path = tmp_path / "search.yaml"
    config = search_config(data_root, episodes=5, train={"iterations": 12})
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    db = f"sqlite:///{tmp_path / 'nas.db'}"
    started = subprocess.run(
        [sys.executable, "-m", "nas_service.cli", "search", "start", "-c", str(config_path), "--db", db, "--detach"],
        cwd=tmp_path, capture_output=True, text=True, check=True,
    )
    assert "running in the background" in started.stdout
    store = EpisodeStore(db)
    search_id = store.list_searches()[0].id
    log = tmp_path / "data" / "logs" / f"search-{search_id}.log"
    wait_for(lambda: store.count_episodes(search_id, status="running"), "the first episode did not start", log=log)
    assert store.request_stop(search_id).status == "stopping"  # what `nas search stop` does, without its start-up
    stopped = wait_for(lambda: (s := store.get_search(search_id)).status != "stopping" and s, "no stop", log=log)
    # The promise: nothing new after the stop, and nothing left half done: a trial that was running
    # finished and was recorded; one still waiting for Ray to start it was put back, no attempt used.
    assert stopped.status == "stopped" and stopped.num_episodes < 5, stopped
    assert store.count_episodes(search_id, status="running") == 0 and stopped.lease_owner is None
    assert all(e.status == "proposed" and e.attempts == 0 for e in store.unfinished_episodes(search_id))
    resumed = subprocess.run(
        [sys.executable, "-m", "nas_service.cli", "search", "resume", str(search_id), "--db", db],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    search = store.get_search(search_id)
    assert search.status == "completed" and search.num_episodes == 5
    assert [e.number for e in store.list_episodes(search_id)] == list(range(5))
