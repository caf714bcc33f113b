"""A call repeated on a daemon thread: the runner's heartbeat and the progress views share it."""

from __future__ import annotations

import threading
from typing import Callable


class Periodic:
    """Calls ``tick`` every ``seconds`` from ``start()`` until ``stop()`` (which waits for a tick under
    way to end) or until ``tick`` returns False."""

    def __init__(self, seconds: float, tick: Callable[[], bool | None], name: str | None = None) -> None:
        self.seconds = seconds
        self._tick = tick
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.seconds):
            if self._tick() is False:
                return
