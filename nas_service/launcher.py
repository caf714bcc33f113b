"""Create searches and launch their runners: the one path shared by ``nas search`` and the REST API.

A runner is ``nas search resume ID`` in a process of its own, so whoever launched it (a terminal, the
API server) can exit or restart without harming the search. Given the HTTP address of a Ray cluster's
job server (``http://head:8265``), the runner is submitted there as a Ray job instead. A stop is asked
of the runner through the store (``EpisodeStore.request_stop``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from nas_errors import LaunchError
from nas_service.lease import new_token, this_process
from nas_service.lifecycle import LEASE_SECONDS_VARIABLE, PATIENCE_VARIABLE, lease_seconds
from nas_service.search_config import SearchConfig
from nas_service.store import EpisodeStore, LeaseLost, SearchRecord

LOG_DIR = Path("data/logs")
TIMINGS = (LEASE_SECONDS_VARIABLE, PATIENCE_VARIABLE)


def create_search(store: EpisodeStore, config: SearchConfig, name: str | None, default_stem: str) -> SearchRecord:
    """Store a new search; without a name it is called ``<default_stem>-<time>-<6 hex digits>``, so
    unnamed searches created in the same second do not clash."""
    budget = config.budget
    return store.create_search(
        name or f"{default_stem}-{datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(3)}",
        config.model_dump(mode="json"),
        budget_episodes=budget.episodes,
        budget_unique=budget.unique,
        budget_seconds=budget.seconds,
    )


def runner_command(search_id: int, token: str, ray_address: str | None) -> list[str]:
    """The runner of a search whose lease was taken for it (``token``); the store URL goes in
    ``NAS_DB_URL``, not on the command line, where ``ps`` and the Ray dashboard would show its password."""
    command = ["-m", "nas_service.cli", "search", "resume", str(search_id), "--lease", token]
    return command + (["--ray-address", ray_address] if ray_address else [])


def launch_runner(search_id: int, token: str, db_url: str, ray_address: str | None = None) -> str:
    """Start the runner of a search held by ``token``, detached from the caller; returns where it runs."""
    # The runner keeps this process's lease timings (a test or a deployment may have set them).
    env = {"NAS_DB_URL": db_url} | {name: os.environ[name] for name in TIMINGS if name in os.environ}
    if ray_address and ray_address.startswith(("http://", "https://")):
        from ray.job_submission import JobSubmissionClient

        # The same interpreter path: the cluster runs the same image (or virtualenv) as this server.
        entrypoint = shlex.join([sys.executable, *runner_command(search_id, token, "auto")])
        job_id = JobSubmissionClient(ray_address).submit_job(entrypoint=entrypoint, runtime_env={"env_vars": env})
        return f"Ray job {job_id} on {ray_address}"
    log = LOG_DIR / f"search-{search_id}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, *runner_command(search_id, token, ray_address)],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return f"pid {process.pid}, log {log}"


def start_runner(store: EpisodeStore, search: SearchRecord, db_url: str, ray_address: str | None = None) -> str:
    """Take ``search`` for a new runner and launch it; returns where the runner runs.

    The lease is taken here, before anything is launched, in one compare-and-set: of any number of
    concurrent starts, one launches a runner and the others get ``Conflict`` naming the live runner.
    The launched runner takes the lease over (``--lease``) and renews it; a stop asked for meanwhile
    is honoured. If the launch fails, the search is given back as ``search`` was.
    """
    token = new_token()
    store.acquire_lease(search.id, f"{this_process()} launching a runner", token, lease_seconds())
    try:
        return launch_runner(search.id, token, db_url, ray_address)
    except Exception as error:  # whatever failed (OSError, the job server's errors), give the search back
        with contextlib.suppress(LeaseLost):  # unless it was taken over meanwhile
            store.release_lease(search, token)
        raise LaunchError(f"search {search.id}: the runner could not be started: {error}") from error
