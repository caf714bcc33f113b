"""A live terminal view of a running search, read from the episode store.

A database that does not answer is tried once per refresh (the runner's own calls do the waiting and
the logging): the view says so and tries again at its next refresh, instead of ending.
"""

from __future__ import annotations

import threading
import time
from types import TracebackType

from rich.console import Console
from rich.live import Live
from rich.table import Table

from nas_service.lifecycle import EpisodeStatus
from nas_service.store import EpisodeStore, SearchRecord, StoreUnavailable

REFRESH_SECONDS = 2.0


class SearchProgress:
    """Context manager that redraws episodes done / budget, running, failed, best reward and ETA."""

    def __init__(self, store: EpisodeStore, search_id: int) -> None:
        self.store = store.with_patience(0)
        self.search_id = search_id
        self.started = time.monotonic()
        self.done_at_start = store.get_search(search_id).num_episodes  # the runner's patience
        self._stop = threading.Event()
        self._live = Live(self._render(), console=Console(stderr=True), auto_refresh=False)
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "SearchProgress":
        self._live.__enter__()
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()
        self._live.update(self._render(), refresh=True)
        self._live.__exit__(kind, error, trace)

    def _loop(self) -> None:
        while not self._stop.wait(REFRESH_SECONDS):
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
