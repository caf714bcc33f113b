"""``nas search``: start, resume, stop and inspect searches."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from nas_errors import UserError
from nas_service.cli.common import DB_OPTION, RAY_OPTION, open_store, store_url
from nas_service.comparison import compare_with_seed
from nas_service.launcher import create_search, start_runner
from nas_service.lease import RunnerLease
from nas_service.lifecycle import SearchStatus, store_patience
from nas_service.search_config import RewardNoise, SearchConfig, load_search_config
from nas_service.store import EpisodeStore, SearchRecord
from search_spaces import Architecture

search_app = typer.Typer(help="Run and inspect searches.", no_args_is_help=True)
DETACH_OPTION = typer.Option(False, "--detach", help="Run in the background; the log goes to data/logs/.")


def _run(
    store: EpisodeStore, search: SearchRecord, db: Optional[str], ray_address: Optional[str], detach: bool
) -> None:
    """Take ``search`` for a runner (refused while a live runner holds it), here or in the background."""
    if detach:
        where = start_runner(store, search, store_url(db), ray_address)
        typer.echo(f"search {search.id} running in the background ({where})")
        return
    _run_here(store, RunnerLease.acquire(store, search.id), ray_address)
    served = "nas serve" if db is None else "nas serve --db URL"  # a URL may hold a password: not echoed
    typer.echo(f"dashboard: run `{served}` and open http://127.0.0.1:8000/#/searches/{search.id}")


def _run_here(store: EpisodeStore, lease: RunnerLease, ray_address: Optional[str]) -> None:
    """Run the search held by ``lease`` in this process, showing its progress (see ``progress.search_progress``)."""
    # Imported here: Ray and the runner add a second to the start-up of every other command.
    from nas_service.progress import search_progress
    from nas_service.search_run import Interrupted
    from nas_service.tune_adapter import run_search

    try:
        with search_progress(store, lease.search_id):
            search = run_search(store, lease.search_id, ray_address=ray_address, lease=lease)
    except Interrupted as interrupt:
        typer.echo(
            f"search {lease.search_id} {interrupt}; resume it with `nas search resume {lease.search_id}`", err=True
        )
        raise typer.Exit(128 + interrupt.signum) from None
    _print_summary(store, search.id, top=5)


def _with_noise(config: SearchConfig, report_path: Path) -> SearchConfig:
    """``config`` carrying the paired noise of a saved fidelity report on its proxy (refused for another)."""
    from proxy_trainer.fidelity import measured_noise  # imports torch: only when asked

    try:
        report = json.loads(report_path.read_text())
    except OSError as error:
        raise UserError(f"{report_path}: cannot read ({error.strerror})") from None
    except json.JSONDecodeError as error:
        raise UserError(f"{report_path}: not JSON ({error.msg}, line {error.lineno})") from None
    if not isinstance(report, dict):
        raise UserError(f"{report_path}: not a report of `nas proxy fidelity --json` (not a JSON object)")
    noise = measured_noise(report, config.proxy, config.reward.reward, str(report_path))
    source = f"{report_path.name}: {len(noise.cells)} cells x {noise.seeds} seeds"
    carried = RewardNoise(paired=noise.paired_noise, cells=noise.cells, source=source)
    return config.model_copy(update={"reward": config.reward.model_copy(update={"noise": carried})})


def _runner_store(db: Optional[str], create: bool = False) -> EpisodeStore:
    """The store of a runner: it waits out a database outage of up to ``$NAS_STORE_PATIENCE`` seconds."""
    return open_store(db, create=create).with_patience(store_patience())


@search_app.command("start")
def search_start(
    config_path: Path = typer.Option(..., "-c", "--config", help="Search config YAML (see configs/search/)."),
    name: Optional[str] = typer.Option(None, "--name", help="Unique name (default: config name + time)."),
    fidelity: Optional[Path] = typer.Option(
        None, "--fidelity", help="A report of `nas proxy fidelity --json` on this proxy: the search carries its noise."
    ),
    db: Optional[str] = DB_OPTION,
    ray_address: Optional[str] = RAY_OPTION,
    detach: bool = DETACH_OPTION,
) -> None:
    """Create a search from a config and run it, showing its progress (a live table, or a line per episode in a log)."""
    config = load_search_config(config_path)
    if fidelity is not None:
        config = _with_noise(config, fidelity)
    store = _runner_store(db, create=True)
    search = create_search(store, config, name, default_stem=config_path.stem)
    typer.echo(f"search {search.id} ({search.name}) created")
    _run(store, search, db, ray_address, detach)


@search_app.command("resume")
def search_resume(
    search_id: int = typer.Argument(..., help="Search id."),
    db: Optional[str] = DB_OPTION,
    ray_address: Optional[str] = RAY_OPTION,
    detach: bool = DETACH_OPTION,
    lease: Optional[str] = typer.Option(None, "--lease", hidden=True, help="Internal: the lease taken for this runner."),
) -> None:
    """Continue a search that is stopped, failed, or whose runner died (its lease expired)."""
    store = _runner_store(db)
    if lease is not None:  # launched by start_runner, which took the lease for it; a stop since is honoured
        _run_here(store, RunnerLease.adopt(store, search_id, lease), ray_address)
        return
    _run(store, store.get_search(search_id), db, ray_address, detach)


@search_app.command("stop")
def search_stop(search_id: int = typer.Argument(..., help="Search id."), db: Optional[str] = DB_OPTION) -> None:
    """Ask a running search to stop: no new episodes; running ones finish and are recorded."""
    store = open_store(db)
    search = store.request_stop(search_id)
    if search.status == SearchStatus.STOPPED:
        typer.echo(f"search {search_id} stopped: {search.error}; resume it with `nas search resume {search_id}`")
    else:
        typer.echo(f"search {search_id} is stopping; resume it with `nas search resume {search_id}`")


@search_app.command("list")
def search_list(db: Optional[str] = DB_OPTION) -> None:
    """List searches with their progress and best reward."""
    store = open_store(db)
    typer.echo(f"{'id':>4}  {'name':28} {'status':9} {'episodes':>10} {'failed':>6} {'best':>8}")
    for search in store.list_searches():
        best = f"{search.best_reward:.4f}" if search.best_reward is not None else "-"
        budget = search.budget_episodes or 0
        typer.echo(
            f"{search.id:>4}  {search.name[:28]:28} {search.status:9} "
            f"{search.num_episodes:>4}/{budget:<5} {search.num_failed:>6} {best:>8}"
        )


@search_app.command("show")
def search_show(
    search_id: int = typer.Argument(..., help="Search id."),
    top: int = typer.Option(5, "--top", min=1, help="How many of the best architectures to list."),
    db: Optional[str] = DB_OPTION,
) -> None:
    """A search's summary and its best architectures."""
    store = open_store(db)
    _print_summary(store, search_id, top)


def _print_summary(store: EpisodeStore, search_id: int, top: int) -> None:
    search = store.get_search(search_id)
    typer.echo(f"search {search.id} ({search.name}): {search.status}")
    typer.echo(
        f"episodes {search.num_episodes}/{search.budget_episodes}: {search.num_completed} trained, "
        f"{search.num_cached} cached, {search.num_failed} failed, {search.num_unique} unique architectures"
    )
    if search.lease_owner is not None:
        typer.echo(
            f"runner: {search.lease_owner}, last heartbeat {search.lease_heartbeat_at:%Y-%m-%d %H:%M:%S} UTC; "
            f"taken for dead without one by {search.lease_expires_at:%H:%M:%S} UTC"
        )
    if search.error:
        typer.echo(f"error: {search.error}")
    for rank, episode in enumerate(store.top_episodes(search_id, top), 1):
        arch = Architecture.from_dict(episode.architecture)
        typer.echo(
            f"#{rank} episode {episode.number:4d}  reward {episode.reward:.4f}  {episode.arch_hash[:12]}  {arch}"
        )
    comparison = compare_with_seed(store, search)
    for line in comparison.lines() if comparison is not None else []:
        typer.echo(line)
