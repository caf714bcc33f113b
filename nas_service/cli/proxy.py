"""``nas proxy``: one proxy episode outside any search, the proxy base, and the proxy fidelity report."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional

import typer

from nas_service.cli.common import config_option
from nas_service.search_config import RewardConfig
from nas_service.yaml_config import load_config
from proxy_trainer.config import ProxyConfig
from search_spaces.space import resolve_architecture

if TYPE_CHECKING:  # training (torch) loads in the commands that train, not for `nas --help`
    from proxy_trainer.fidelity import Episode

proxy_app = typer.Typer(
    help="Run one proxy episode (nas proxy -c PROXY.yaml [--arch CELL]), make the proxy base, "
    "or measure the proxy's fidelity.",
    invoke_without_command=True,
)
CONFIG_OPTION = typer.Option(..., "-c", "--config", help="Proxy config YAML (see configs/proxy/).")
THREADS_OPTION = typer.Option(
    None, "--threads", min=1, help="torch CPU threads (default: train.threads, else the CPUs this process may use)."
)


@contextlib.contextmanager
def _progress_on_stderr() -> Iterator[None]:
    """Show the trainer's progress log (iteration, loss, ETA) on stderr while a command runs."""
    logger = logging.getLogger("proxy_trainer")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("  %(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@proxy_app.callback()
def proxy(
    ctx: typer.Context,
    arch: Optional[str] = typer.Option(
        None, "--arch", help="The cell to train: a known name or a JSON file (default: detector.neck.architecture)."
    ),
    config_path: Optional[Path] = typer.Option(None, "-c", "--config", help="Proxy config YAML (see configs/proxy/)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the full result as JSON here."),
    threads: Optional[int] = THREADS_OPTION,
) -> None:
    """Run one proxy episode: train the proxy detector with the cell and print its reward metrics."""
    if ctx.invoked_subcommand is not None:
        return
    if config_path is None:
        raise typer.BadParameter("a proxy config is required", param_hint="'-c' / '--config'")
    from proxy_trainer.trainer import train_proxy

    config = load_config(config_path, ProxyConfig)
    architecture = resolve_architecture(arch or config.detector.neck.architecture, config.detector.neck.levels)
    with _progress_on_stderr():
        result = train_proxy(architecture, config, threads)
    metrics = "  ".join(f"{name} {value:.4f}" for name, value in result.metrics.items())
    typer.echo(f"status:     {result.status}" + (f" ({result.error})" if result.error else ""))
    typer.echo(f"metrics:    {metrics}")
    typer.echo(
        f"neck:       {result.neck_flops / 1e9:.3f} GFLOPs, {result.neck_params / 1e6:.2f} M parameters; "
        f"detector {result.detector_params / 1e6:.2f} M parameters, {result.trainable_params / 1e6:.2f} M trained"
    )
    typer.echo(
        f"time:       {result.wall_time:.1f} s ({result.iterations} iterations, "
        f"{result.seconds_per_iteration:.2f} s each, eval {result.eval_time:.1f} s) on {result.device}, "
        f"{result.threads} threads"
    )
    typer.echo(f"base:       {result.base or 'none (trained from scratch)'}")
    if result.loss_curve:
        typer.echo(f"loss:       {result.loss_curve[0]:.3f} -> {result.loss_curve[-1]:.3f}")
    if json_out is not None:
        json_out.write_text(json.dumps(result.to_dict(), indent=2))
    if result.status != "completed":
        raise typer.Exit(1)


@proxy_app.command("base")
def proxy_base(
    config_path: Path = CONFIG_OPTION,
    output: Optional[Path] = typer.Option(
        None, "-o", "--output", help="Base file to write (default: base.path, else the cache file episodes look for)."
    ),
    threads: Optional[int] = THREADS_OPTION,
) -> None:
    """Train the proxy base (backbone, FPN, RPN and heads with the base's cell) on the proxy's training
    split, score it on the held-out split and save it, for every episode to start from."""
    from proxy_trainer.base import make_base

    config = load_config(config_path, ProxyConfig)
    with _progress_on_stderr():
        base = make_base(config, output, threads)
    assert config.base is not None
    typer.echo(f"base:       {base.path}")
    typer.echo("metrics:    " + "  ".join(f"{name} {value:.4f}" for name, value in base.metrics.items()))
    typer.echo(f"trained:    {config.base.iterations} iterations with cell {config.base.architecture} in {base.train_time:.0f} s")
    typer.echo(f"episodes:   load {', '.join(config.base.load)}; freeze {', '.join(config.base.freeze) or 'nothing'}")
    typer.echo(f"hash:       {base.key}")


@proxy_app.command("fidelity")
def proxy_fidelity(
    config_path: Path = CONFIG_OPTION,
    cells: str = typer.Option("fpn,nasfpn", "--cells", help="Comma-separated known names or architecture JSON files."),
    random_cells: int = typer.Option(0, "--random", min=0, help="Also this many cells drawn at random from the space."),
    random_seed: int = typer.Option(0, "--random-seed", help="Seed of the random cells."),
    seeds: int = typer.Option(3, "--seeds", min=1, help="Episodes per cell, seeds train.seed onwards."),
    reference_factor: Optional[float] = typer.Option(
        None, "--reference-factor", help="Also train each cell this many times longer (first seed) and compare orderings."
    ),
    metric: str = config_option(RewardConfig, "metric", "--metric", help="The reward metric: AP or AP50."),
    threads: Optional[int] = THREADS_OPTION,
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the full report as JSON here."),
) -> None:
    """Measure whether the proxy can rank cells: each cell's reward over seeds, same-seed differences
    against their spread, rank agreement between seeds and with a longer training, a verdict, the cost."""
    if metric not in ("AP", "AP50"):
        raise typer.BadParameter(f"expected AP or AP50, got {metric!r}", param_hint="'--metric'")
    from proxy_trainer.fidelity import fidelity_cells, format_report, run_fidelity

    config = load_config(config_path, ProxyConfig)
    names = [name.strip() for name in cells.split(",") if name.strip()]
    chosen = fidelity_cells(names, random_cells, config.detector.neck.levels, random_seed)

    def report_episode(episode: Episode) -> None:
        result = episode.result
        reward = f"{metric} {result.metrics[metric]:.4f}" if result.status == "completed" else result.error
        typer.echo(
            f"{episode.cell:12} seed {episode.seed} {episode.iterations:5d} it: {reward}, {result.wall_time:.1f} s"
        )

    with _progress_on_stderr():
        report = run_fidelity(config, chosen, seeds, metric, reference_factor, threads, report_episode)
    typer.echo("")
    for line in format_report(report):
        typer.echo(line)
    if json_out is not None:
        json_out.write_text(json.dumps(report.to_dict(), indent=2))
