"""Run a search: the controller proposes, Ray Tune trains proxies, the episode store records it all.

The store, not Ray, is the source of truth. The controller is checkpointed into the store after every
proposal and every reward, and every episode's state change is committed before the controller hears
of it, in this order:

- propose:  controller.propose -> checkpoint -> store.add_episode
- finish:   store.complete/cached/fail -> controller.report -> checkpoint

So after the runner dies at any point, ``resume`` restores the last checkpoint and repairs the one
step that may be half done: a pending proposal with no episode gets one; a finished episode whose
proposal is still pending is reported; episodes that were running are re-run. Nothing completed is
lost or reported twice.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
import traceback
from collections import deque
from pathlib import Path
from typing import Any, Callable

import ray
from ray import tune
from ray.tune.search import Searcher

from controller import Controller
from nas_service.search_config import SearchConfig
from nas_service.store import Conflict, EpisodeStore, SearchRecord
from proxy_trainer import ProxyConfig, train_proxy
from search_spaces.architecture import Architecture

CHECKPOINTS_KEPT = 3
RUNNABLE = ("created", "running", "stopped", "failed", "completed")
"""A runner starts from any status but stopping: a stop asked for before it started is honoured."""
FINISHED = Searcher.FINISHED


def proxy_trial(config: dict[str, Any]) -> None:
    """The Ray Tune trainable: train one proxy and report its result, or the error that stopped it."""
    worker = f"{socket.gethostname()}:{os.getpid()} node {ray.get_runtime_context().get_node_id()[:12]}"
    try:
        result = train_proxy(Architecture.from_dict(config["architecture"]), ProxyConfig.model_validate(config["proxy"]))
        tune.report({"episode": config["episode"], "worker": worker, "proxy": json.dumps(result.to_dict())})
    except Exception:  # the driver records the trace and decides whether to retry
        tune.report({"episode": config["episode"], "worker": worker, "exception": traceback.format_exc()})


class SearchRun:
    """The driver's state of one search: its controller, retry queue and budgets."""

    def __init__(self, store: EpisodeStore, search_id: int) -> None:
        self.store = store
        self.search = store.get_search(search_id)
        self.config = SearchConfig.model_validate(self.search.config)
        self.queue: deque[int] = deque()
        self.in_flight = 0
        self.entropy: float | None = self.search.last_entropy
        checkpoint = store.latest_checkpoint(search_id)
        if checkpoint is None:
            self.controller = Controller(self.config.controller)
            self.checkpoint_number = -1
        else:
            self.controller = Controller.from_bytes(checkpoint.state)
            self.checkpoint_number = checkpoint.update_number
        self._repair()

    # -- recovery ----------------------------------------------------------------------------------

    def _repair(self) -> None:
        """Bring the store and the restored controller back in step (see the module docstring)."""
        search_id = self.search.id
        by_proposal = {e.proposal_id: e for e in self.store.list_episodes(search_id, limit=10**9)}
        for proposal in sorted(self.controller.pending.values(), key=lambda p: p.id):
            episode = by_proposal.get(proposal.id)
            if episode is None:
                arch = self.controller.space.architecture(proposal.decisions)
                self.store.add_episode(search_id, proposal.id, arch.to_dict(), arch.canonical_hash())
            elif episode.status in ("completed", "cached"):
                self._report(proposal.id, episode.reward)
            elif episode.status == "failed" and episode.attempts > self.config.failures.max_retries:
                self._report(proposal.id, self.config.failures.penalty_reward)
            elif episode.status == "failed":
                self.store.requeue_episode(search_id, episode.number)  # died between fail and retry
        for episode in self.store.unfinished_episodes(search_id):
            if episode.status == "running":  # the runner died, not the trial: no attempt used
                self.store.requeue_episode(search_id, episode.number, refund_attempt=True)
            self.queue.append(episode.number)

    # -- proposing -------------------------------------------------------------------------------

    def next_episode(self, worker: str) -> int | str | None:
        """The episode number to train next, ``None`` for "not yet", or ``FINISHED``.

        Retries and episodes left over from a crash come first; then new proposals. Either is served
        from the cache instead when its architecture already has a reward in this search.
        """
        while True:
            if self._should_stop():
                return FINISHED
            number = self.queue.popleft() if self.queue else self._propose()
            if number is None:
                # A running trial may still fail and queue a retry: finish only when none is running.
                return FINISHED if self.in_flight == 0 else None
            if not self._answer_from_cache(number):
                break
        self.store.start_episode(self.search.id, number, worker)
        self.in_flight += 1
        return number

    def _propose(self) -> int | None:
        """A new episode from the controller, or None when the budget allows no more."""
        if self.budget_spent():
            return None
        proposal, arch = self.controller.propose()
        self._checkpoint()
        return self.store.add_episode(self.search.id, proposal.id, arch.to_dict(), arch.canonical_hash()).number

    def _answer_from_cache(self, number: int) -> bool:
        """Record the episode as ``cached`` if its architecture was trained before in this search."""
        episode = self.store.get_episode(self.search.id, number)
        cached = self.store.find_completed_by_hash(self.search.id, episode.arch_hash)
        if cached is None:
            return False
        self.store.record_cached(
            self.search.id, number, cached.reward, cached.metrics, cached.flops, cached.params
        )
        self._report(episode.proposal_id, cached.reward)
        return True

    def budget_spent(self) -> bool:
        search = self.store.get_search(self.search.id)
        budget = self.config.budget
        if search.num_episodes >= budget.episodes:
            return True
        if budget.unique is not None and search.num_unique + self.in_flight >= budget.unique:
            return True
        if budget.seconds is not None and search.started_at is not None:
            return time.time() - search.started_at.timestamp() >= budget.seconds
        return False

    def _should_stop(self) -> bool:
        return self.store.get_search(self.search.id).status == "stopping"

    # -- results ---------------------------------------------------------------------------------

    def finish_episode(self, number: int, result: dict[str, Any] | None) -> None:
        """Record a trial's outcome; retry failures up to the configured number of times."""
        self.in_flight -= 1
        search_id = self.search.id
        episode = self.store.get_episode(search_id, number)
        outcome = _outcome(result)
        if isinstance(outcome, str):
            self._fail(episode.number, episode.proposal_id, episode.attempts, outcome)
            return
        try:
            reward = self.config.reward.reward(outcome["metrics"], outcome["neck_flops"])
        except ValueError as error:  # e.g. AP is NaN when the reward split has no boxes
            self._fail(episode.number, episode.proposal_id, episode.attempts, str(error))
            return
        self.store.complete_episode(
            search_id,
            number,
            reward,
            metrics=_finite(outcome["metrics"]),
            flops=outcome["neck_flops"],
            params=outcome["neck_params"],
            train_seconds=outcome["wall_time"],
            worker=result["worker"],
        )
        self._report(episode.proposal_id, reward)

    def _fail(self, number: int, proposal_id: int, attempts: int, error: str) -> None:
        failures = self.config.failures
        if attempts <= failures.max_retries:
            self.store.fail_episode(self.search.id, number, error)
            self.store.requeue_episode(self.search.id, number)
            self.queue.append(number)
            return
        self.store.fail_episode(self.search.id, number, error, reward=failures.penalty_reward)
        self._report(proposal_id, failures.penalty_reward)

    def _report(self, proposal_id: int, reward: float | None) -> None:
        stats = self.controller.report(proposal_id, reward)
        if stats is not None:
            self.entropy = stats.entropy
        self._checkpoint(entropy=stats.entropy if stats is not None else None)

    def _checkpoint(self, entropy: float | None = None) -> None:
        self.checkpoint_number += 1
        self.store.save_checkpoint(
            self.search.id,
            self.checkpoint_number,
            self.controller.num_proposed - len(self.controller.pending),
            self.controller.to_bytes(),
            entropy=entropy,
            keep_last=CHECKPOINTS_KEPT,
        )


def _outcome(result: dict[str, Any] | None) -> dict[str, Any] | str:
    """The proxy result of a trial, or the error message of a failed one."""
    if result is None:
        return "the trial's worker died before reporting a result"
    if "exception" in result:
        return str(result["exception"])
    proxy = json.loads(result["proxy"])
    if proxy["status"] != "completed":
        return str(proxy["error"])
    return proxy


def _finite(metrics: dict[str, float]) -> dict[str, float | None]:
    """JSON has no NaN: a size bucket without ground truth is stored as null."""
    return {k: (v if math.isfinite(v) else None) for k, v in metrics.items()}


class ControllerSearcher(Searcher):
    """Ray Tune's view of a ``SearchRun``: suggestions are the controller's proposals."""

    def __init__(self, run: SearchRun) -> None:
        super().__init__()
        self.run = run
        self.trials: dict[str, int] = {}

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles its search algorithm for its own experiment checkpoints, which this project
        does not use (the store is the checkpoint); the live run with its database connection stays out."""
        return {key: value for key, value in self.__dict__.items() if key != "run"}

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        number = self.run.next_episode(worker=f"ray-trial-{trial_id}")
        if number is None or number == FINISHED:
            return number
        episode = self.run.store.get_episode(self.run.search.id, number)
        self.trials[trial_id] = number
        return {
            "episode": number,
            "architecture": episode.architecture,
            "proxy": self.run.config.proxy.model_dump(mode="json"),
        }

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        number = self.trials.pop(trial_id, None)
        if number is not None:
            self.run.finish_episode(number, None if error else result)


def run_search(
    store: EpisodeStore,
    search_id: int,
    ray_address: str | None = None,
    storage: Path | None = None,
    trainable: Callable[[dict[str, Any]], None] = proxy_trial,
) -> SearchRecord:
    """Run (or continue) a search until its budget is spent or it is asked to stop.

    ``ray_address`` (or ``RAY_ADDRESS``) joins an existing cluster; otherwise a local Ray starts.
    ``storage`` is where Ray Tune keeps its trial folders (shared storage on a cluster).
    ``trainable`` replaces the proxy training, e.g. to measure the search's own overhead.
    """
    try:
        store.set_search_status(search_id, "running", expected=RUNNABLE)
    except Conflict:  # asked to stop between the runner's launch and now: nothing to run or finish
        return store.set_search_status(search_id, "stopped")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # Ctrl-C reaches us, and the search is marked stopped
    try:
        # Inside the try: a checkpoint that does not load or a cluster that does not answer marks the
        # search failed instead of leaving it running with no runner.
        run = SearchRun(store, search_id)
        resources = run.config.resources
        ray.init(
            address=ray_address or os.environ.get("RAY_ADDRESS"),
            ignore_reinit_error=True,
            include_dashboard=False,
            log_to_driver=False,
        )
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": resources.cpus_per_trial, "gpu": resources.gpus_per_trial}),
            tune_config=tune.TuneConfig(
                search_alg=ControllerSearcher(run),
                num_samples=-1,
                max_concurrent_trials=resources.concurrency,
                reuse_actors=True,  # a new worker process per trial costs seconds (imports, CUDA init)
            ),
            run_config=tune.RunConfig(
                name=f"search-{search_id}",
                storage_path=str((storage or Path("data/ray")).resolve()),
                verbose=0,
            ),
        )
        tuner.fit()
    except KeyboardInterrupt:
        store.set_search_status(search_id, "stopped", error="interrupted; resume it to continue")
        raise
    except BaseException as error:
        store.set_search_status(search_id, "failed", error=f"{type(error).__name__}: {error}")
        raise
    finally:
        ray.shutdown()
    finished = run.budget_spent() and not store.unfinished_episodes(search_id)
    return store.set_search_status(search_id, "completed" if finished else "stopped")
