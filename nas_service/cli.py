"""The ``nas`` command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import NoReturn, Optional

import typer

from controller import Controller, ControllerConfig
from nas_service.configs import load_config
from nas_service.search_config import load_search_config
from nas_service.store import EpisodeStore, StoreError
from proxy_trainer.config import ProxyConfig, SyntheticDataConfig
from proxy_trainer.data import ensure_synthetic_dataset
from proxy_trainer.trainer import train_proxy
from search_spaces import DEFAULT_LEVELS, KNOWN_ARCHITECTURES, Architecture, ArchitectureError, neck_cost
from search_spaces.render import render_svg
from search_spaces.space import resolve_architecture

app = typer.Typer(help="Search NAS-FPN cells with reinforcement learning.", no_args_is_help=True)
arch_app = typer.Typer(help="Inspect and draw architectures.", no_args_is_help=True)
controller_app = typer.Typer(help="Sample from the controller.", no_args_is_help=True)
app.add_typer(arch_app, name="arch")
dataset_app = typer.Typer(help="Make and inspect datasets.", no_args_is_help=True)
search_app = typer.Typer(help="Run and inspect searches.", no_args_is_help=True)
app.add_typer(search_app, name="search")
app.add_typer(controller_app, name="controller")
app.add_typer(dataset_app, name="dataset")


def _fail(error: Exception) -> NoReturn:
    typer.echo(f"error: {error}", err=True)
    raise typer.Exit(2)


def _levels(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers such as 3,4,5,6,7, got {text!r}") from None


LEVELS_OPTION = typer.Option(
    ",".join(map(str, DEFAULT_LEVELS)), "--levels", help="Pyramid levels, comma-separated."
)


@arch_app.command("list")
def arch_list() -> None:
    """List the architectures known by name."""
    for name in sorted(KNOWN_ARCHITECTURES):
        arch = resolve_architecture(name)
        typer.echo(f"{name:8} {arch.canonical_hash()[:12]}  {arch}")


@arch_app.command("show")
def arch_show(
    spec: str = typer.Argument(..., help="A known name (nasfpn, fpn) or an architecture JSON file."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Write the graph as SVG here."),
    levels: str = LEVELS_OPTION,
    image_size: int = typer.Option(640, help="Square input size for the FLOPs figure."),
    width: int = typer.Option(256, help="Neck channels for the FLOPs figure."),
    repeats: int = typer.Option(7, help="Cell repeats for the FLOPs figure."),
) -> None:
    """Print an architecture (cells, hash, cost) and optionally draw it."""
    try:
        arch = resolve_architecture(spec, _levels(levels))
    except ArchitectureError as error:
        _fail(error)
    cost = neck_cost(arch, (image_size, image_size), width=width, repeats=repeats)
    typer.echo(f"architecture: {arch}")
    typer.echo(f"hash:         {arch.canonical_hash()}")
    typer.echo(
        f"neck cost:    {cost.flops / 1e9:.2f} GFLOPs, {cost.params / 1e6:.2f} M parameters "
        f"({image_size}x{image_size}, width {width}, {repeats} repeats)"
    )
    typer.echo(arch.to_json(indent=2))
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(render_svg(arch, title=spec if spec in KNOWN_ARCHITECTURES else output.stem))
        typer.echo(f"wrote {output}")


@controller_app.command("sample")
def controller_sample(
    num: int = typer.Option(8, "-n", "--num", min=1, help="How many architectures to sample."),
    config_path: Optional[Path] = typer.Option(
        None, "-c", "--config", help="Controller config YAML (see configs/controller/)."
    ),
    seed: Optional[int] = typer.Option(None, help="Random seed of the controller (overrides the config)."),
) -> None:
    """Sample architectures from a freshly seeded controller, without training any of them."""
    try:
        config = load_config(config_path, ControllerConfig) if config_path else ControllerConfig()
        if seed is not None:
            config = ControllerConfig.model_validate({**config.model_dump(), "seed": seed})
    except ValueError as error:
        _fail(error)
    controller = Controller(config)
    if controller.seed_probability is not None:
        typer.echo(
            f"seeded with {config.seed_architecture}: p(seed) = {controller.seed_probability:.3f} "
            f"after {controller.seed_steps} maximum-likelihood steps"
        )
    for _ in range(num):
        proposal, arch = controller.propose()
        typer.echo(f"{proposal.id:4d}  {arch.canonical_hash()[:12]}  log p = {proposal.log_prob:7.2f}  {arch}")


@dataset_app.command("synth")
def dataset_synth(
    out: Path = typer.Option(..., "--out", help="Folder to create (train/, val/, annotations/)."),
    train: int = typer.Option(400, "--train", min=1, help="Training images."),
    val: int = typer.Option(100, "--val", min=1, help="Held-out reward images."),
    size: int = typer.Option(128, "--size", min=32, help="Image side in pixels."),
    classes: int = typer.Option(8, "--classes", min=1, help="Number of classes."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same files."),
) -> None:
    """Generate the synthetic COCO-format proxy dataset (deterministic)."""
    config = SyntheticDataConfig(root=out, num_train=train, num_val=val, image_size=size, num_classes=classes, seed=seed)
    try:
        paths = ensure_synthetic_dataset(config)
    except ValueError as error:
        _fail(error)
    typer.echo(f"train: {paths.train_annotations} ({train} images in {paths.train_images})")
    typer.echo(f"val:   {paths.val_annotations} ({val} held-out images in {paths.val_images})")


@app.command("proxy")
def proxy(
    arch: str = typer.Option("nasfpn", "--arch", help="The cell to train: a known name or a JSON file."),
    config_path: Path = typer.Option(..., "-c", "--config", help="Proxy config YAML (see configs/proxy/)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the full result as JSON here."),
) -> None:
    """Run one proxy episode: train the proxy detector with the cell and print its reward metrics."""
    try:
        config = load_config(config_path, ProxyConfig)
        architecture = resolve_architecture(arch, config.detector.neck.levels)
    except ValueError as error:
        _fail(error)
    result = train_proxy(architecture, config)
    metrics = "  ".join(f"{name} {value:.4f}" for name, value in result.metrics.items())
    typer.echo(f"status:     {result.status}" + (f" ({result.error})" if result.error else ""))
    typer.echo(f"metrics:    {metrics}")
    typer.echo(
        f"neck:       {result.neck_flops / 1e9:.3f} GFLOPs, {result.neck_params / 1e6:.2f} M parameters; "
        f"detector {result.detector_params / 1e6:.2f} M parameters"
    )
    typer.echo(
        f"time:       {result.wall_time:.1f} s ({result.iterations} iterations, "
        f"{result.seconds_per_iteration:.2f} s each, eval {result.eval_time:.1f} s) on {result.device}"
    )
    if result.loss_curve:
        typer.echo(f"loss:       {result.loss_curve[0]:.3f} -> {result.loss_curve[-1]:.3f}")
    if json_out is not None:
        json_out.write_text(json.dumps(result.to_dict(), indent=2))
    if result.status != "completed":
        raise typer.Exit(1)


DEFAULT_DB = "sqlite:///data/nas.db"
DB_OPTION = typer.Option(
    None, "--db", help=f"Episode store URL (default: $NAS_DB_URL or {DEFAULT_DB}).", show_default=False
)
RAY_OPTION = typer.Option(None, "--ray-address", help="Join this Ray cluster (default: $RAY_ADDRESS or a local Ray).")
DETACH_OPTION = typer.Option(False, "--detach", help="Run in the background; the log goes to data/logs/.")


def _store(db: Optional[str]) -> EpisodeStore:
    url = db or os.environ.get("NAS_DB_URL") or DEFAULT_DB
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        return EpisodeStore(url)
    except StoreError as error:
        _fail(error)


def _run(store: EpisodeStore, search_id: int, db: Optional[str], ray_address: Optional[str], detach: bool) -> None:
    if detach:
        log = Path("data/logs") / f"search-{search_id}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "nas_service.cli", "search", "resume", str(search_id)]
        command += ["--db", db] if db else []
        command += ["--ray-address", ray_address] if ray_address else []
        with log.open("ab") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        typer.echo(f"search {search_id} running in the background (pid {process.pid}, log {log})")
        return
    # Imported here: Ray and the runner add a second to the start-up of every other command.
    from nas_service.progress import SearchProgress
    from nas_service.runner import run_search

    with SearchProgress(store, search_id):
        search = run_search(store, search_id, ray_address=ray_address)
    _print_summary(store, search.id, top=5)


@search_app.command("start")
def search_start(
    config_path: Path = typer.Option(..., "-c", "--config", help="Search config YAML (see configs/search/)."),
    name: Optional[str] = typer.Option(None, "--name", help="Unique name (default: config name + time)."),
    db: Optional[str] = DB_OPTION,
    ray_address: Optional[str] = RAY_OPTION,
    detach: bool = DETACH_OPTION,
) -> None:
    """Create a search from a config and run it, with a live progress display."""
    try:
        config = load_search_config(config_path)
    except ValueError as error:
        _fail(error)
    store = _store(db)
    budget = config.budget
    try:
        search = store.create_search(
            name or f"{config_path.stem}-{datetime.now():%Y%m%d-%H%M%S}",
            config.model_dump(mode="json"),
            budget_episodes=budget.episodes,
            budget_unique=budget.unique,
            budget_seconds=budget.seconds,
        )
    except StoreError as error:
        _fail(error)
    typer.echo(f"search {search.id} ({search.name}) created")
    _run(store, search.id, db, ray_address, detach)


@search_app.command("resume")
def search_resume(
    search_id: int = typer.Argument(..., help="Search id."),
    db: Optional[str] = DB_OPTION,
    ray_address: Optional[str] = RAY_OPTION,
    detach: bool = DETACH_OPTION,
    force: bool = typer.Option(
        False, "--force", help="Resume a search marked running or stopping, whose runner died."
    ),
) -> None:
    """Continue a stopped, failed or killed search from the store."""
    store = _store(db)
    try:
        search = store.get_search(search_id)
    except StoreError as error:
        _fail(error)
    if search.status == "completed":
        _fail(ValueError(f"search {search_id} has completed its budget; nothing to resume"))
    if search.status in ("running", "stopping") and not force:
        _fail(
            ValueError(
                f"search {search_id} is {search.status}: its runner may still be alive. If it died "
                f"(killed, machine lost), resume with --force; two runners on one search repeat work"
            )
        )
    _run(store, search_id, db, ray_address, detach)


@search_app.command("stop")
def search_stop(search_id: int = typer.Argument(..., help="Search id."), db: Optional[str] = DB_OPTION) -> None:
    """Ask a running search to stop: no new episodes; running ones finish and are recorded."""
    store = _store(db)
    try:
        search = store.get_search(search_id)
        if search.status != "running":
            _fail(ValueError(f"search {search_id} is {search.status}, not running"))
        store.set_search_status(search_id, "stopping")
    except StoreError as error:
        _fail(error)
    typer.echo(f"search {search_id} is stopping; resume it with `nas search resume {search_id}`")


@search_app.command("list")
def search_list(db: Optional[str] = DB_OPTION) -> None:
    """List searches with their progress and best reward."""
    store = _store(db)
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
    store = _store(db)
    try:
        _print_summary(store, search_id, top)
    except StoreError as error:
        _fail(error)


def _print_summary(store: EpisodeStore, search_id: int, top: int) -> None:
    search = store.get_search(search_id)
    typer.echo(f"search {search.id} ({search.name}): {search.status}")
    typer.echo(
        f"episodes {search.num_episodes}/{search.budget_episodes}: {search.num_completed} trained, "
        f"{search.num_cached} cached, {search.num_failed} failed, {search.num_unique} unique architectures"
    )
    if search.error:
        typer.echo(f"error: {search.error}")
    for rank, episode in enumerate(store.top_episodes(search_id, top), 1):
        arch = Architecture.from_dict(episode.architecture)
        typer.echo(f"#{rank} episode {episode.number:4d}  reward {episode.reward:.4f}  {episode.arch_hash[:12]}  {arch}")


if __name__ == "__main__":
    app()
