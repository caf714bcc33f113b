"""A runner's hold on its search: a lease in the store, renewed by a heartbeat thread.

The model is Optuna's heartbeat for trials: a runner that stops beating (killed, machine lost, cut off
from the database for longer than the lease) is taken for dead once its lease expires, and the next
resume takes the search over without asking the user whether the runner died. The token that holds
the lease fences every write of the runner (``lease=`` in the store), so a runner that was taken for
dead but lives on cannot add, start or finish another episode: it finds out and stops.
"""

from __future__ import annotations

import os
import secrets
import socket
from types import TracebackType

from nas_service.lifecycle import BEATS_PER_LEASE, lease_seconds
from nas_service.periodic import Periodic
from nas_service.store import EpisodeStore, LeaseLost, StoreUnavailable


def this_process() -> str:
    """The lease owner's name: where to look for the runner (``host:pid``)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def new_token() -> str:
    return secrets.token_hex(16)


class RunnerLease:
    """The lease this process holds on ``search_id``; a context manager that keeps it alive.

    ``lost`` is set (to ``LeaseLost`` or ``StoreUnavailable``) when a heartbeat finds the lease taken
    over or cannot reach the store for its whole patience; the runner then stops working.
    """

    def __init__(self, store: EpisodeStore, search_id: int, token: str, seconds: float) -> None:
        self.store = store
        self.search_id = search_id
        self.token = token
        self.seconds = seconds
        self.lost: LeaseLost | StoreUnavailable | None = None
        self._heartbeat = Periodic(seconds / BEATS_PER_LEASE, self._beat, name=f"lease-search-{search_id}")

    @classmethod
    def acquire(cls, store: EpisodeStore, search_id: int) -> RunnerLease:
        """Take the search for this process (``Conflict`` names the live runner that holds it)."""
        lease = cls(store, search_id, new_token(), lease_seconds())
        store.acquire_lease(search_id, this_process(), lease.token, lease.seconds)
        return lease

    @classmethod
    def adopt(cls, store: EpisodeStore, search_id: int, token: str) -> RunnerLease:
        """Take over the lease that a launcher took for this runner (``LeaseLost`` if it is gone)."""
        lease = cls(store, search_id, token, lease_seconds())
        store.renew_lease(search_id, token, lease.seconds, owner=this_process())
        return lease

    def __enter__(self) -> RunnerLease:
        self._heartbeat.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._heartbeat.stop()

    def _beat(self) -> bool:
        """Renew the lease; False (no more beats) once it is lost or the store stays away."""
        try:
            self.store.renew_lease(self.search_id, self.token, self.seconds)
        except (LeaseLost, StoreUnavailable) as error:
            self.lost = error
            return False
        return True
