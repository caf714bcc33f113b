"""``nas controller``: sample from a freshly seeded controller."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from controller import ControllerConfig
from nas_service.yaml_config import load_config

controller_app = typer.Typer(help="Sample from the controller.", no_args_is_help=True)


@controller_app.command("sample")
def controller_sample(
    num: int = typer.Option(8, "-n", "--num", min=1, help="How many architectures to sample."),
    config_path: Optional[Path] = typer.Option(
        None, "-c", "--config", help="Controller config YAML (see configs/controller/)."
    ),
    seed: Optional[int] = typer.Option(None, help="Random seed of the controller (overrides the config)."),
) -> None:
    """Sample architectures from a freshly seeded controller, without training any of them."""
    from controller.controller import Controller

    config = load_config(config_path, ControllerConfig) if config_path else ControllerConfig()
    if seed is not None:
        config = config.model_copy(update={"seed": seed})
    controller = Controller(config)
    if controller.seed_probability is not None:
        typer.echo(
            f"seeded with {config.seed_architecture}: p(seed) = {controller.seed_probability:.3f} "
            f"after {controller.seed_steps} maximum-likelihood steps"
        )
    for _ in range(num):
        proposal, arch = controller.propose()
        typer.echo(f"{proposal.id:4d}  {arch.canonical_hash()[:12]}  log p = {proposal.log_prob:7.2f}  {arch}")
