"""The search's own logic without Ray: a real SQLite store, a real controller, and the proxy training
replaced by a plain function of the architecture (``nas_service.search_run``)."""

import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Callable

import pytest

from controller.controller import Controller
from nas_service.lease import RunnerLease
from nas_service.progress import EpisodeLines
from nas_service.search_run import NoEpisode, SearchRun, StopSignals, TrialLoop, TrialOutcome, execute
from nas_service.store import EpisodeStore
from proxy_trainer.trainer import ProxyResult
from search_spaces import Architecture
from tests.seeding import search_config

REPO = Path(__file__).resolve().parent.parent
Training = Callable[[Architecture], TrialOutcome]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("search-run-data") / "synthetic"


@pytest.fixture
def store(tmp_path):
    store = EpisodeStore(f"sqlite:///{tmp_path / 'nas.db'}")
    yield store
    store.close()


def create(store: EpisodeStore, data_root: Path, episodes: int, **changes) -> int:
    config = search_config(data_root, episodes, **changes)
    name = f"run-{len(store.list_searches())}"
    return store.create_search(name, config.model_dump(mode="json"), budget_episodes=episodes).id


def reward_of(arch: Architecture) -> float:
    """A reward that depends on the architecture only, as a noiseless proxy would give."""
    return int(arch.canonical_hash()[:8], 16) / 2**32


def scored(arch: Architecture) -> TrialOutcome:
    metrics = {"AP": reward_of(arch), "AP50": 1.0}
    result = ProxyResult(status="completed", metrics=metrics, neck_flops=1000, neck_params=10, wall_time=0.5)
    return TrialOutcome.completed(result, worker="here")


def one_at_a_time(training: Training) -> TrialLoop:
    """Trains the run's episodes in this process, one after another (Ray Tune with concurrency 1)."""

    def loop(run: SearchRun) -> None:
        for trial in (f"trial-{i}" for i in range(10**6)):
            if run.should_abort():
                return
            number = run.next_episode(trial)
            if number is NoEpisode.FINISHED:
                return
            run.trial_started(trial)
            episode = run.store.get_episode(run.search.id, number)
            run.finish_episode(trial, training(Architecture.from_dict(episode.architecture)))

    return loop


def latest_controller(store: EpisodeStore, search_id: int) -> Controller:
    return Controller.from_bytes(store.latest_checkpoint(search_id).state)


def test_proposals_become_episodes_and_rewards_reach_the_controller_and_store(store, data_root):
    search_id = create(store, data_root, episodes=6)
    trained: list[Architecture] = []

    def training(arch: Architecture) -> TrialOutcome:
        trained.append(arch)
        return scored(arch)

    search = execute(store, search_id, None, one_at_a_time(training))
    assert search.status == "completed" and search.num_episodes == 6
    episodes = store.list_episodes(search_id)
    assert [e.number for e in episodes] == list(range(6))
    assert all(e.status in ("completed", "cached") for e in episodes)
    for episode in episodes:
        arch = Architecture.from_dict(episode.architecture)
        assert episode.reward == reward_of(arch) and episode.flops == 1000
    assert len(trained) == search.num_completed == search.num_unique  # a repeat is answered from the store
    controller = latest_controller(store, search_id)
    assert controller.num_proposed == 6 and not controller.pending
    assert controller.num_updates == 3  # batch_size 2: every reward reached the controller
    assert search.lease_owner is None


def test_a_repeated_architecture_is_answered_from_the_cache(store, data_root):
    search_id = create(store, data_root, episodes=5, controller={"seed_target_probability": 0.95})
    trained = Counter()

    def training(arch: Architecture) -> TrialOutcome:
        trained[arch.canonical_hash()] += 1
        return scored(arch)

    search = execute(store, search_id, None, one_at_a_time(training))
    assert search.num_cached >= 2 and set(trained.values()) == {1}
    for episode in store.list_episodes(search_id, status="cached"):
        assert episode.reward == store.find_completed_by_hash(search_id, episode.arch_hash).reward


def test_a_failure_is_retried_then_takes_the_penalty(store, data_root):
    search_id = create(store, data_root, episodes=2, failures={"max_retries": 1, "penalty_reward": -0.5})
    search = execute(store, search_id, None, one_at_a_time(lambda arch: TrialOutcome.failed("boom", "here")))
    assert search.status == "completed" and search.num_failed == 2
    for episode in store.list_episodes(search_id):
        assert (episode.status, episode.attempts, episode.reward, episode.error) == ("failed", 2, -0.5, "boom")
    controller = latest_controller(store, search_id)
    assert controller.num_proposed == 2 and not controller.pending  # the penalty was learnt

    flaky = create(store, data_root, episodes=2, failures={"max_retries": 1})
    failed_once: set[str] = set()

    def training(arch: Architecture) -> TrialOutcome:
        if arch.canonical_hash() in failed_once:
            return scored(arch)
        failed_once.add(arch.canonical_hash())
        return TrialOutcome.failed("worker lost")

    execute(store, flaky, None, one_at_a_time(training))
    assert [(e.status, e.attempts) for e in store.list_episodes(flaky, status="completed")] == [("completed", 2)] * 2


def test_the_budget_stops_proposals_but_waits_for_a_trial_that_may_be_retried(store, data_root):
    search_id = create(store, data_root, episodes=1, failures={"max_retries": 1})
    lease = RunnerLease.acquire(store, search_id)
    run = SearchRun(store, search_id, lease, StopSignals())
    assert run.next_episode("a") == 0
    assert run.next_episode("b") is NoEpisode.NOT_YET  # the budget is spent, but "a" may still fail
    run.finish_episode("a", TrialOutcome.failed("boom"))
    assert run.next_episode("b") == 0  # the retry
    episode = store.get_episode(search_id, 0)
    run.finish_episode("b", scored(Architecture.from_dict(episode.architecture)))
    assert run.next_episode("c") is NoEpisode.FINISHED
    assert store.get_search(search_id).num_episodes == 1 and run.budget_spent()


def test_resume_repairs_the_step_a_dead_runner_left_half_done(store, data_root):
    search_id = create(store, data_root, episodes=4)
    lease = RunnerLease.acquire(store, search_id)
    config = search_config(data_root, 4)

    # Died after checkpointing a proposal, before recording its episode: the episode is added.
    controller = Controller(config.controller)
    controller.propose()
    store.save_checkpoint(search_id, 0, 0, controller.to_bytes(), lease=lease.token)
    run = SearchRun(store, search_id, lease, StopSignals())
    assert [e.status for e in store.list_episodes(search_id)] == ["proposed"]

    # Died while episode 0 trained: it is trained again, the attempt refunded.
    assert run.next_episode("a") == 0
    assert store.get_episode(search_id, 0).status == "running"
    run = SearchRun(store, search_id, lease, StopSignals())
    assert store.get_episode(search_id, 0).attempts == 0
    assert run.next_episode("b") == 0

    # Died after recording the reward, before the controller heard of it: it is reported once.
    store.complete_episode(search_id, 0, 0.25, metrics={"AP": 0.25}, flops=1, params=1, train_seconds=1.0,
                           worker="here", lease=lease.token)
    assert latest_controller(store, search_id).pending
    run = SearchRun(store, search_id, lease, StopSignals())
    assert not run.controller.pending and not latest_controller(store, search_id).pending
    assert run.controller.num_proposed == 1
    assert run.next_episode("c") == 1  # a new proposal: nothing was lost or repeated


def test_a_line_per_finished_episode_when_the_output_is_not_a_terminal(store, data_root, capsys):
    search_id = create(store, data_root, episodes=3, failures={"max_retries": 1, "penalty_reward": 0.0})
    calls = Counter()

    def training(arch: Architecture) -> TrialOutcome:
        calls[arch.canonical_hash()] += 1
        return TrialOutcome.failed("Traceback ...\nRuntimeError: boom") if len(calls) == 1 else scored(arch)

    with EpisodeLines(store, search_id):
        execute(store, search_id, None, one_at_a_time(training))
    lines = capsys.readouterr().out.splitlines()
    episodes = {e.number: e for e in store.list_episodes(search_id)}
    assert len(lines) == 3  # a failure with a retry left is not the end of its episode
    for line in lines:
        episode = episodes[int(line.split()[1])]
        assert f"cell {episode.arch_hash[:12]}" in line and episode.status in line
        if episode.status == "failed":
            assert line.endswith("reward 0.0000  -  (RuntimeError: boom)")
        else:
            assert f"reward {episode.reward:.4f}" in line


def test_the_search_logic_imports_no_ray():
    code = "import nas_service.search_run, sys; assert 'ray' not in sys.modules, 'ray was imported'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
