"""Create searches and launch their runners: the one path shared by ``nas search`` and the REST API.

A runner is ``nas search resume ID`` in a process of its own, so whoever launched it (a terminal, the
API server) can exit or restart without harming the search. Given the HTTP address of a Ray cluster's
job server (``http://head:8265``), the runner is submitted there as a Ray job instead.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from nas_errors import Conflict, LaunchError
from nas_service.search_config import SearchConfig
from nas_service.store import EpisodeStore, SearchRecord

LOG_DIR = Path("data/logs")


def create_search(store: EpisodeStore, config: SearchConfig, name: str | None, default_stem: str) -> SearchRecord:
    """Store a new search; without a name it is called ``<default_stem>-<time>``."""
    budget = config.budget
    return store.create_search(
        name or f"{default_stem}-{datetime.now():%Y%m%d-%H%M%S}",
        config.model_dump(mode="json"),
        budget_episodes=budget.episodes,
        budget_unique=budget.unique,
        budget_seconds=budget.seconds,
    )


def runner_command(search_id: int, ray_address: str | None) -> list[str]:
    """The runner of a search already claimed; the store URL goes in ``NAS_DB_URL``, not on the
    command line, where ``ps`` and the Ray dashboard would show its password."""
    command = ["-m", "nas_service.cli", "search", "resume", str(search_id), "--claimed"]
    return command + (["--ray-address", ray_address] if ray_address else [])


def launch_runner(search_id: int, db_url: str, ray_address: str | None = None) -> str:
    """Start the runner of a claimed search detached from the caller; returns where it runs."""
    if ray_address and ray_address.startswith(("http://", "https://")):
        from ray.job_submission import JobSubmissionClient

        # The same interpreter path: the cluster runs the same image (or virtualenv) as this server.
        entrypoint = shlex.join([sys.executable, *runner_command(search_id, "auto")])
        job_id = JobSubmissionClient(ray_address).submit_job(
            entrypoint=entrypoint, runtime_env={"env_vars": {"NAS_DB_URL": db_url}}
        )
        return f"Ray job {job_id} on {ray_address}"
    log = LOG_DIR / f"search-{search_id}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, *runner_command(search_id, ray_address)],
            env={**os.environ, "NAS_DB_URL": db_url},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return f"pid {process.pid}, log {log}"


ACTIVE_STATUSES = ("running", "stopping")
"""A runner may be working on a search in these states."""


def check_resumable(search: SearchRecord, force: bool = False) -> None:
    """Refuse a completed search, and a running or stopping one (its runner may live) unless forced."""
    if search.status == "completed":
        raise Conflict(f"search {search.id} has completed its budget; nothing to resume")
    if search.status in ACTIVE_STATUSES and not force:
        raise Conflict(
            f"search {search.id} is {search.status}: its runner may still be alive. If it died "
            f"(killed, machine lost), resume with --force; two runners on one search repeat work"
        )


def claim(store: EpisodeStore, search: SearchRecord) -> None:
    """Move ``search`` from the status its caller checked to ``running``, or raise ``Conflict``."""
    store.set_search_status(search.id, "running", expected=(search.status,))


def start_runner(store: EpisodeStore, search: SearchRecord, db_url: str, ray_address: str | None = None) -> str:
    """Claim ``search`` for a new runner and launch it; returns where the runner runs.

    The claim is a compare-and-set, so of two concurrent starts one gets ``Conflict`` instead of
    a second runner. The runner (``--claimed``) skips the checks and runs; a stop since is honoured.
    """
    claim(store, search)
    try:
        return launch_runner(search.id, db_url, ray_address)
    except Exception as error:  # whatever failed (OSError, the job server's errors), release the claim
        with contextlib.suppress(Conflict):  # unless the search has moved on since (a stop)
            store.restore_search_state(search)
        raise LaunchError(f"search {search.id}: the runner could not be started: {error}") from error


def request_stop(store: EpisodeStore, search_id: int) -> SearchRecord:
    """Ask a running search's runner to stop: it proposes nothing more and records what is running."""
    return store.set_search_status(search_id, "stopping", expected=("running",))
