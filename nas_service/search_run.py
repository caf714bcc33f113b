"""A search's own logic: the controller proposes, trials train, the episode store records it all.

Nothing here knows Ray: whatever trains the episodes (Ray Tune, see ``nas_service.tune_adapter``)
asks ``SearchRun.next_episode`` for work and hands back each trial's ``TrialOutcome``.

The store, not the trainer, is the source of truth. The controller is checkpointed into the store after
every proposal and every reward, and every episode's state change is committed before the controller
hears of it, in this order:

- propose:  controller.propose -> checkpoint -> store.add_episode
- finish:   store.complete/cached/fail -> controller.report -> checkpoint

So after the runner dies at any point, ``resume`` restores the last checkpoint and repairs the one
step that may be half done: a pending proposal with no episode gets one; a finished episode whose
proposal is still pending is reported; episodes that were running are re-run. Nothing completed is
lost or reported twice.

One runner works on a search at a time: it holds the search's lease (``nas_service.lease``) and
passes the lease's token with every write, so a runner whose lease was taken over cannot write again;
it stops. A store that does not answer is retried for the store's patience (every write is idempotent,
see ``EpisodeStore``); after that the runner gives up and leaves the search resumable. SIGINT and
SIGTERM stop the search within seconds: the trials go down with the runner, their episodes are put
back to be trained again, and the search is left ``stopped``.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass
from enum import Enum
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, Callable

from controller.controller import Controller
from nas_errors import NasError, UserError
from nas_service.lease import RunnerLease
from nas_service.lifecycle import EpisodeStatus, SearchStatus
from nas_service.preflight import check_dataset
from nas_service.search_config import SearchConfig
from nas_service.store import EpisodeRecord, EpisodeStore, LeaseLost, SearchRecord, StoreUnavailable

if TYPE_CHECKING:
    from proxy_trainer.trainer import ProxyResult

CHECKPOINTS_KEPT = 3
STOP_POLL_SECONDS = 1.0
"""How often, at most, the trial loop reads whether a stop was asked for."""


class CheckpointError(UserError):
    """The search's stored controller checkpoint does not load (written by an incompatible version?)."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM: the search was stopped cleanly (a ``BaseException``, like ``KeyboardInterrupt``,
    so that no ``except Exception`` on the way swallows it)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")


class StopSignals:
    """SIGINT and SIGTERM (what docker, systemd and Kubernetes send) stop the search.

    The first signal is noted, and ``check`` raises ``Interrupted`` at the run's next safe point: the
    runner's own code or a step of the trial loop, never inside a call into the trainer (Ray), where an
    exception raised by a signal handler breaks its state. The run then skips the trainer's graceful
    stop, which waits seconds for each trial: the trials go down with the runner and the store is told.
    A second signal ends the process at once, as if there were no handler. A context manager that
    installs the handler (again with ``install``, after e.g. ``ray.init`` replaced it) and restores the
    previous ones; in a thread other than the main one, signals stay as they are.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                previous = signal.signal(signum, self._handle)
                self._previous.setdefault(signum, previous)

    def check(self) -> None:
        if self.received is not None:
            raise Interrupted(self.received)

    def __enter__(self) -> StopSignals:
        self.install()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum
            return
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


@dataclass(frozen=True)
class TrialOutcome:
    """How a trial ended: the proxy's result, or why there is none. ``worker`` says where it ran."""

    result: ProxyResult | None
    error: str | None
    worker: str | None = None

    @classmethod
    def completed(cls, result: ProxyResult, worker: str | None = None) -> TrialOutcome:
        return cls(result, None, worker)

    @classmethod
    def failed(cls, error: str, worker: str | None = None) -> TrialOutcome:
        return cls(None, error, worker)


class NoEpisode(Enum):
    """What ``SearchRun.next_episode`` answers when it has no episode to train."""

    NOT_YET = "not yet"
    """A trial in flight may still fail and queue a retry: ask again when one finishes."""
    FINISHED = "finished"
    """The budget is spent, or a stop was asked for: start no more trials."""


class SearchRun:
    """The driver's state of one search: its controller, retry queue, trials in flight and budgets.

    Trials are named by the trainer's own ids (any string); ``trial_started`` tells the run which of
    them hold their resources, the others wait for them.
    """

    def __init__(self, store: EpisodeStore, search_id: int, lease: RunnerLease, signals: StopSignals) -> None:
        self.store = store
        self.lease = lease
        self.signals = signals
        self.search = store.get_search(search_id)
        self.config = SearchConfig.model_validate(self.search.config)
        self.queue: deque[int] = deque()
        self.trials: dict[str, int] = {}
        """Trial id -> episode number, for trials whose outcome is not recorded yet."""
        self.started: set[str] = set()
        self.abort: LeaseLost | StoreUnavailable | None = None
        """Met by the trainer's callbacks: the runner stops working on the search."""
        self._stop_asked = (0.0, False)
        checkpoint = store.latest_checkpoint(search_id)
        if checkpoint is None:
            self.controller = Controller(self.config.controller)
            self.checkpoint_number = -1
        else:
            self.controller = _restore(checkpoint.state, search_id, checkpoint.update_number)
            self.checkpoint_number = checkpoint.update_number
        self._repair()

    @property
    def token(self) -> str:
        return self.lease.token

    # -- recovery ----------------------------------------------------------------------------------

    def _repair(self) -> None:
        """Bring the store and the restored controller back in step (see the module docstring)."""
        search_id = self.search.id
        by_proposal = {e.proposal_id: e for e in self.store.list_episodes(search_id, limit=10**9)}
        for proposal in sorted(self.controller.pending.values(), key=lambda p: p.id):
            episode = by_proposal.get(proposal.id)
            if episode is None:
                arch = self.controller.space.architecture(proposal.decisions)
                self.store.add_episode(search_id, proposal.id, arch.to_dict(), arch.canonical_hash(), lease=self.token)
            elif episode.status in (EpisodeStatus.COMPLETED, EpisodeStatus.CACHED):
                self._report(proposal.id, episode.reward)
            elif episode.status == EpisodeStatus.FAILED and episode.attempts > self.config.failures.max_retries:
                self._report(proposal.id, self.config.failures.penalty_reward)
            elif episode.status == EpisodeStatus.FAILED:
                self.store.requeue_episode(search_id, episode.number, lease=self.token)  # died between fail and retry
        for episode in self.store.unfinished_episodes(search_id):
            if episode.status == EpisodeStatus.RUNNING:  # the runner died, not the trial: no attempt used
                self.store.requeue_episode(search_id, episode.number, refund_attempt=True, lease=self.token)
            self.queue.append(episode.number)

    def cancel_unfinished(self) -> None:
        """Put the episodes of trials stopped before their outcome back to ``proposed``, attempt refunded
        (every running episode of the search: this runner holds it)."""
        for episode in self.store.unfinished_episodes(self.search.id):
            if episode.status == EpisodeStatus.RUNNING:
                self.store.requeue_episode(self.search.id, episode.number, refund_attempt=True, lease=self.token)
        self.trials.clear()

    # -- proposing -------------------------------------------------------------------------------

    def next_episode(self, trial_id: str) -> int | NoEpisode:
        """The number of the episode for ``trial_id`` to train, now marked ``running``.

        Retries and episodes left over from a crash come first; then new proposals. Either is served
        from the cache instead when its architecture already has a reward in this search.
        """
        while True:
            if self._should_stop():
                return NoEpisode.FINISHED
            number = self.queue.popleft() if self.queue else self._propose()
            if number is None:
                return NoEpisode.NOT_YET if self.trials else NoEpisode.FINISHED
            if not self._answer_from_cache(number):
                break
        self.store.start_episode(self.search.id, number, f"trial-{trial_id}", lease=self.token)
        self.trials[trial_id] = number
        return number

    def _propose(self) -> int | None:
        """A new episode from the controller, or None when the budget allows no more."""
        if self.budget_spent():
            return None
        proposal, arch = self.controller.propose()
        self._checkpoint()
        episode = self.store.add_episode(
            self.search.id, proposal.id, arch.to_dict(), arch.canonical_hash(), lease=self.token
        )
        return episode.number

    def _answer_from_cache(self, number: int) -> bool:
        """Record the episode as ``cached`` if its architecture was trained before in this search."""
        episode = self.store.get_episode(self.search.id, number)
        cached = self.store.find_completed_by_hash(self.search.id, episode.arch_hash)
        if cached is None:
            return False
        self.store.record_cached(
            self.search.id, number, cached.reward, cached.metrics, cached.flops, cached.params, lease=self.token
        )
        self._report(episode.proposal_id, cached.reward)
        return True

    def budget_spent(self) -> bool:
        search = self.store.get_search(self.search.id)
        budget = self.config.budget
        if search.num_episodes >= budget.episodes:
            return True
        if budget.unique is not None and search.num_unique + len(self.trials) >= budget.unique:
            return True
        if budget.seconds is not None and search.started_at is not None:
            return time.time() - search.started_at.timestamp() >= budget.seconds
        return False

    def _should_stop(self) -> bool:
        return self.store.get_search(self.search.id).status == SearchStatus.STOPPING

    def trial_started(self, trial_id: str) -> None:
        """The trainer gave ``trial_id`` its resources (until then a stop cancels it at once)."""
        self.started.add(trial_id)

    def should_abort(self) -> bool:
        """Whether every trial must stop now: when the lease or the store is lost, or when a stop was
        asked for and no trial is running (trials waiting for resources that may never come are
        cancelled; running ones finish first). After a signal, ``Interrupted`` ends the loop at once."""
        self.signals.check()
        if self.abort is not None or self.lease.lost is not None:
            return True
        if not self.trials or self.started & self.trials.keys():
            return False
        checked_at, asked = self._stop_asked
        if time.monotonic() - checked_at >= STOP_POLL_SECONDS:
            try:
                asked = self._should_stop()
            except StoreUnavailable as error:
                self.abort = error
                return True
            self._stop_asked = (time.monotonic(), asked)
        return asked

    # -- outcomes --------------------------------------------------------------------------------

    def finish_episode(self, trial_id: str, outcome: TrialOutcome) -> None:
        """Record a trial's outcome; retry failures up to the configured number of times."""
        number = self.trials.pop(trial_id, None)
        self.started.discard(trial_id)
        if number is None:
            return
        episode = self.store.get_episode(self.search.id, number)
        result = outcome.result
        if result is None:
            self._fail(episode, str(outcome.error))
            return
        try:
            reward = self.config.reward.reward(result.metrics, result.neck_flops)
        except ValueError as error:  # e.g. AP is NaN when the reward split has no boxes
            self._fail(episode, str(error))
            return
        self.store.complete_episode(
            self.search.id,
            number,
            reward,
            metrics=_finite(result.metrics),
            flops=result.neck_flops,
            params=result.neck_params,
            train_seconds=result.wall_time,
            worker=outcome.worker,
            lease=self.token,
        )
        self._report(episode.proposal_id, reward)

    def _fail(self, episode: EpisodeRecord, error: str) -> None:
        failures = self.config.failures
        if episode.attempts <= failures.max_retries:
            self.store.fail_episode(self.search.id, episode.number, error, lease=self.token)
            self.store.requeue_episode(self.search.id, episode.number, lease=self.token)
            self.queue.append(episode.number)
            return
        self.store.fail_episode(
            self.search.id, episode.number, error, reward=failures.penalty_reward, lease=self.token
        )
        self._report(episode.proposal_id, failures.penalty_reward)

    def _report(self, proposal_id: int, reward: float | None) -> None:
        stats = self.controller.report(proposal_id, reward)
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
            lease=self.token,
        )


def _restore(state: bytes, search_id: int, update_number: int) -> Controller:
    try:
        return Controller.from_bytes(state)
    except Exception as error:  # torch.load and the state dict raise many kinds; the first line says which
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise CheckpointError(
            f"search {search_id}: controller checkpoint {update_number} does not load ({type(error).__name__}: "
            f"{reason})"
        ) from error


def _finite(metrics: dict[str, float]) -> dict[str, float | None]:
    """JSON has no NaN: a size bucket without ground truth is stored as null."""
    return {k: (v if math.isfinite(v) else None) for k, v in metrics.items()}


TrialLoop = Callable[[SearchRun], None]
"""Trains the run's episodes until ``next_episode`` says ``FINISHED`` or ``should_abort`` says stop
(Ray Tune: ``nas_service.tune_adapter``)."""


def execute(store: EpisodeStore, search_id: int, lease: RunnerLease | None, trial_loop: TrialLoop) -> SearchRecord:
    """Run (or continue) a search with ``trial_loop`` until its budget is spent or it is asked to stop.

    ``lease`` is this process's hold on the search; without one it is taken here (``Conflict`` while
    a live runner holds the search).

    Raises ``LeaseLost`` when another runner took the search over (nothing more is written),
    ``StoreUnavailable`` when the store did not answer for its patience (the search is left
    resumable), ``Interrupted`` after SIGINT or SIGTERM (the search is left ``stopped``), and any
    error that failed the search (checks before the first episode included).
    """
    lease = lease or RunnerLease.acquire(store, search_id)
    with lease, StopSignals() as signals:
        try:
            if store.get_search(search_id).status == SearchStatus.STOPPING:
                # Asked to stop between the runner's launch and now: nothing to run or finish.
                return store.set_search_status(search_id, SearchStatus.STOPPED, lease=lease.token)
            return _run(store, search_id, lease, signals, trial_loop)
        except LeaseLost:
            raise
        except StoreUnavailable as error:
            raise _left_resumable(store, search_id, lease, error) from error
        except Interrupted as interrupt:
            store.set_search_status(
                search_id, SearchStatus.STOPPED, error=f"{interrupt}; resume it to continue", lease=lease.token
            )
            raise
        except BaseException as error:
            why = str(error) if isinstance(error, NasError) else f"{type(error).__name__}: {error}"
            store.set_search_status(search_id, SearchStatus.FAILED, error=why, lease=lease.token)
            raise


def _run(
    store: EpisodeStore, search_id: int, lease: RunnerLease, signals: StopSignals, trial_loop: TrialLoop
) -> SearchRecord:
    """Check, then run the trial loop; returns the search ``completed`` or ``stopped``."""
    # A checkpoint that does not load or a dataset that cannot serve fails the search before any trial.
    run = SearchRun(store, search_id, lease, signals)
    check_dataset(run.config.proxy.dataset)
    signals.check()
    try:
        trial_loop(run)
    except Interrupted:
        run.cancel_unfinished()  # their trials went down with the runner
        raise
    problem = lease.lost or run.abort
    if problem is not None:
        raise problem
    run.cancel_unfinished()
    finished = run.budget_spent() and not store.unfinished_episodes(search_id)
    status = SearchStatus.COMPLETED if finished else SearchStatus.STOPPED
    return store.set_search_status(search_id, status, lease=lease.token)


def _left_resumable(
    store: EpisodeStore, search_id: int, lease: RunnerLease, error: StoreUnavailable
) -> StoreUnavailable:
    """The store did not answer for its whole patience: record why if it answers now (one try), and
    say how to go on. Either way the search stays resumable: stopped, or held by an expiring lease."""
    try:
        store.with_patience(0).set_search_status(
            search_id, SearchStatus.STOPPED, error=f"{error}; resume it to continue", lease=lease.token
        )
    except (LeaseLost, StoreUnavailable):
        pass
    return StoreUnavailable(
        f"{error}. Search {search_id} is left resumable: `nas search resume {search_id}` once the store "
        f"answers (this runner's lease expires {lease.seconds:g} s after its last heartbeat)"
    )
