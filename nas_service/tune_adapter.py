"""Ray Tune trains a search's episodes: the trainable, the searcher and the callback that tie Tune to a
``SearchRun`` (``nas_service.search_run``, which knows nothing of Ray).

Tune flattens a nested result into one key per leaf, so a trial reports its proxy result as one JSON
string; ``trial_outcome`` turns the report into a ``TrialOutcome``, the only form the search sees.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import traceback
from dataclasses import fields
from functools import partial
from pathlib import Path
from typing import Any, Callable

import ray
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.search import Searcher

from nas_service.lease import RunnerLease
from nas_service.preflight import check_resources
from nas_service.search_run import NoEpisode, SearchRun, TrialOutcome, execute
from nas_service.store import EpisodeStore, LeaseLost, SearchRecord, StoreUnavailable
from proxy_trainer import ProxyConfig
from proxy_trainer.trainer import ProxyResult, train_proxy
from search_spaces.architecture import Architecture

WORKER_DIED = "the trial's worker died before reporting a result"
TUNE_ENVIRONMENT = {
    "TUNE_DISABLE_SIGINT_HANDLER": "1",  # SIGINT reaches StopSignals
    # Tune's newer console output prints its tables and a TensorBoard hint even at verbose=0; the older is silent.
    "RAY_AIR_NEW_OUTPUT": "0",
}
RAY_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


def proxy_trial(config: dict[str, Any]) -> None:
    """The Ray Tune trainable: train one proxy and report its result, or the error that stopped it.

    Torch gets one thread per CPU the trial was given (``resources.cpus_per_trial``, at least one):
    Ray narrows no CPU affinity, so torch's default would take every core of the node, however many
    trials share it."""
    context = ray.get_runtime_context()
    threads = max(1, int(context.get_assigned_resources().get("CPU", 1)))
    worker = f"{socket.gethostname()}:{os.getpid()} ({threads} CPU) node {context.get_node_id()[:12]}"
    try:
        architecture = Architecture.from_dict(config["architecture"])
        result = train_proxy(architecture, ProxyConfig.model_validate(config["proxy"]), threads)
        tune.report({"episode": config["episode"], "worker": worker, "proxy": json.dumps(result.to_dict())})
    except Exception:  # the driver records the trace and decides whether to retry
        tune.report({"episode": config["episode"], "worker": worker, "exception": traceback.format_exc()})


def trial_outcome(report: dict[str, Any] | None) -> TrialOutcome:
    """The outcome of a trial from its last report (None: it ended without one)."""
    if report is None:
        return TrialOutcome.failed(WORKER_DIED)
    worker = report.get("worker")
    if "exception" in report:
        return TrialOutcome.failed(str(report["exception"]), worker)
    data = json.loads(report["proxy"])
    result = ProxyResult(**{item.name: data[item.name] for item in fields(ProxyResult) if item.name in data})
    if result.status != "completed":
        return TrialOutcome.failed(str(result.error), worker)
    return TrialOutcome.completed(result, worker)


class ControllerSearcher(Searcher):
    """Ray Tune's view of a ``SearchRun``: suggestions are the controller's proposals.

    A lost lease or an unreachable store met here ends the run (``SearchRun.abort``) instead of
    raising into Tune's loop.
    """

    def __init__(self, run: SearchRun) -> None:
        super().__init__()
        self.run = run

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles its search algorithm for its own experiment checkpoints, which this project
        does not use (the store is the checkpoint); the live run with its database connection stays out."""
        return {key: value for key, value in self.__dict__.items() if key != "run"}

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save: the store holds the search and the controller's checkpoints, and a search
        is resumed from there, never from Tune's experiment folder."""

    def restore(self, checkpoint_path: str) -> None:
        """Nothing to restore (see ``save``)."""

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        try:
            number = self.run.next_episode(trial_id)
            if number is NoEpisode.FINISHED:
                return Searcher.FINISHED
            if number is NoEpisode.NOT_YET:
                return None
            episode = self.run.store.get_episode(self.run.search.id, number)
        except (LeaseLost, StoreUnavailable) as error:
            self.run.abort = error
            return Searcher.FINISHED
        return {
            "episode": number,
            "architecture": episode.architecture,
            "proxy": self.run.config.proxy.model_dump(mode="json"),
        }

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        try:
            self.run.finish_episode(trial_id, trial_outcome(None if error else result))
        except (LeaseLost, StoreUnavailable) as problem:
            self.run.abort = problem


class _RunWatch(tune.Callback, tune.Stopper):
    """Tells the run which trials Ray has started, and stops every trial when ``SearchRun.should_abort``."""

    def __init__(self, run: SearchRun) -> None:
        self.run = run

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles its run config too (see ``ControllerSearcher.__getstate__``)."""
        return {}

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self.run.trial_started(trial.trial_id)

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.run.should_abort()


def run_search(
    store: EpisodeStore,
    search_id: int,
    ray_address: str | None = None,
    storage: Path | None = None,
    trainable: Callable[[dict[str, Any]], None] = proxy_trial,
    lease: RunnerLease | None = None,
) -> SearchRecord:
    """Run (or continue) a search on Ray Tune until its budget is spent or it is asked to stop.

    ``ray_address`` (or ``RAY_ADDRESS``) joins an existing cluster; otherwise a new local Ray starts.
    ``storage`` is where Ray Tune keeps its trial folders (shared storage on a cluster). ``trainable``
    replaces the proxy training, e.g. to measure the search's own overhead. ``lease`` and what is
    raised: see ``nas_service.search_run.execute``.
    """
    trial_loop = partial(_tune, ray_address=ray_address, storage=storage, trainable=trainable)
    return execute(store, search_id, lease, trial_loop)


def _tune(
    run: SearchRun, ray_address: str | None, storage: Path | None, trainable: Callable[[dict[str, Any]], None]
) -> None:
    """The Tune loop on a local Ray or the cluster at ``ray_address``, until the run ends or aborts."""
    resources = run.config.resources
    os.environ.update(TUNE_ENVIRONMENT)
    # A new local Ray turns token authentication on, as it should, and warns that it did. (RAY_AUTH_MODE would
    # say it is wanted, but Ray reads it when imported, before the runner knows whether it joins a cluster.)
    logging.getLogger(RAY_AUTH_LOGGER).setLevel(logging.ERROR)
    try:
        ray.init(
            # "local": a new Ray, even where an earlier `ray start` left its address (Ray's default would join
            # that cluster, or wait for ever on it when it is gone).
            address=ray_address or os.environ.get("RAY_ADDRESS") or "local",
            ignore_reinit_error=True,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,  # Ray's start banner and Tune's bookkeeping are not the user's to read
        )
        run.signals.install()  # ray.init set its own SIGTERM handler (exit at once)
        run.signals.check()
        check_resources(resources, ray.nodes())
        watch = _RunWatch(run)
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": resources.cpus_per_trial, "gpu": resources.gpus_per_trial}),
            tune_config=tune.TuneConfig(
                search_alg=ControllerSearcher(run),
                num_samples=-1,
                max_concurrent_trials=resources.concurrency,
                reuse_actors=True,  # a new worker process per trial costs seconds (imports, CUDA init)
            ),
            run_config=tune.RunConfig(
                name=f"search-{run.search.id}",
                storage_path=str((storage or Path("data/ray")).resolve()),
                verbose=0,
                stop=watch,
                callbacks=[watch],
            ),
        )
        tuner.fit()
        run.signals.check()
    finally:
        ray.shutdown()  # after an interrupt too: the trials' actors die with the driver
