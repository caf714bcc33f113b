"""``nas proxy``: one proxy episode outside any search."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from nas_service.cli.common import fail
from nas_service.configs import load_config
from proxy_trainer.config import ProxyConfig
from proxy_trainer.trainer import train_proxy
from search_spaces.space import resolve_architecture


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
        fail(error)
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
