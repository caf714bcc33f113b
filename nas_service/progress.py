"""What a running search shows of itself, read from the episode store: a live table on a terminal, a line
per finished episode otherwise (a log file, a pipe), where the table would show only its last state.

A database that does not answer is tried once per refresh (the runner's own calls do the waiting and
the logging): the view says so, or waits, and tries again at its next refresh, instead of ending.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType

from rich.console import Console
from rich.live import Live
from rich.table import Table

from nas_service.lifecycle import EpisodeStatus
from nas_service.periodic import Periodic
from nas_service.search_config import SearchConfig
from nas_service.store import EpisodeRecord, EpisodeStore, SearchRecord, StoreUnavailable

REFRESH_SECONDS = 2.0


def search_progress(store: EpisodeStore, search_id: int) -> SearchProgress | EpisodeLines:
    """The live table when its stream (stderr) is a terminal; a line per finished episode otherwise."""
    return SearchProgress(store, search_id) if sys.stderr.isatty() else EpisodeLines(store, search_id)


class SearchProgress:
    """Context manager that redraws episodes done / budget, running, failed, best reward and ETA."""

    def __init__(self, store: EpisodeStore, search_id: int) -> None:
        self.store = store.with_patience(0)
        self.search_id = search_id
        self.started = time.monotonic()
        self.done_at_start = store.get_search(search_id).num_episodes  # the runner's patience
        self._live = Live(self._render(), console=Console(stderr=True), auto_refresh=False)
        self._refresh = Periodic(REFRESH_SECONDS, self._redraw)

    def __enter__(self) -> "SearchProgress":
        self._live.__enter__()
        self._refresh.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._refresh.stop()
        self._redraw()
        self._live.__exit__(kind, error, trace)

    def _redraw(self) -> None:
        self._live.update(self._render(), refresh=True)

    def _render(self) -> Table:
        try:
            return self._table()
        except StoreUnavailable as error:
            table = Table(title=f"search {self.search_id}: the store does not answer")
            table.add_column("retrying")
            table.add_row(str(error))
            return table

    def _table(self) -> Table:
        search = self.store.get_search(self.search_id)
        table = Table(title=f"search {search.id} ({search.name}): {search.status}", show_header=True)
        for column in ("episodes", "running", "cached", "failed", "best reward", "ETA"):
            table.add_column(column, justify="right")
        running = self.store.count_episodes(self.search_id, status=EpisodeStatus.RUNNING)
        best = f"{search.best_reward:.4f}" if search.best_reward is not None else "-"
        table.add_row(
            f"{search.num_episodes}/{search.budget_episodes}",
            str(running),
            str(search.num_cached),
            str(search.num_failed),
            best,
            self._eta(search),
        )
        return table

    def _eta(self, search: SearchRecord) -> str:
        done = search.num_episodes - self.done_at_start
        if done <= 0 or not search.budget_episodes:
            return "-"
        rate = (time.monotonic() - self.started) / done
        seconds = max(search.budget_episodes - search.num_episodes, 0) * rate
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


class EpisodeLines:
    """Context manager that prints a line on stdout for each episode that finishes while it is open:
    its number, its cell's hash, how it ended, its reward and the seconds it trained."""

    def __init__(self, store: EpisodeStore, search_id: int) -> None:
        self.store = store.with_patience(0)
        self.search_id = search_id
        config = SearchConfig.model_validate(store.get_search(search_id).config)
        self.max_retries = config.failures.max_retries
        self.shown = {e.number for e in store.list_episodes(search_id, limit=10**9) if self._finished(e)}
        self._first_unshown = 0
        self._refresh = Periodic(REFRESH_SECONDS, self._print_finished)

    def __enter__(self) -> "EpisodeLines":
        self._refresh.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._refresh.stop()
        self._print_finished()

    def _finished(self, episode: EpisodeRecord) -> bool:
        """Done for good: a failure is not, while it has a retry left."""
        if episode.status == EpisodeStatus.FAILED:
            return episode.attempts > self.max_retries
        return episode.status in (EpisodeStatus.COMPLETED, EpisodeStatus.CACHED)

    def _print_finished(self) -> None:
        try:
            episodes = self.store.list_episodes(self.search_id, after=self._first_unshown - 1, limit=10**9)
        except StoreUnavailable:
            return  # the next refresh tries again
        finished = [e for e in episodes if e.number not in self.shown and self._finished(e)]
        for episode in sorted(finished, key=lambda e: e.finished_at or e.proposed_at):
            print(episode_line(episode), flush=True)
            self.shown.add(episode.number)
        while self._first_unshown in self.shown:
            self._first_unshown += 1


def episode_line(episode: EpisodeRecord) -> str:
    reward = "-" if episode.reward is None else f"{episode.reward:.4f}"
    seconds = "-" if episode.train_seconds is None else f"{episode.train_seconds:.1f} s"
    line = f"episode {episode.number:4d}  cell {episode.arch_hash[:12]}  {episode.status:9s}  reward {reward}"
    line += f"  {seconds}"
    if episode.status == EpisodeStatus.FAILED and episode.error:
        line += f"  ({episode.error.strip().splitlines()[-1][:160]})"  # a trace's last line names the error
    return line
