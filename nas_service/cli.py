"""The ``nas`` command line."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from controller import Controller, ControllerConfig
from nas_service.configs import load_config
from search_spaces import DEFAULT_LEVELS, KNOWN_ARCHITECTURES, ArchitectureError, neck_cost
from search_spaces.render import render_svg
from search_spaces.space import resolve_architecture

app = typer.Typer(help="Search NAS-FPN cells with reinforcement learning.", no_args_is_help=True)
arch_app = typer.Typer(help="Inspect and draw architectures.", no_args_is_help=True)
controller_app = typer.Typer(help="Sample from the controller.", no_args_is_help=True)
app.add_typer(arch_app, name="arch")
app.add_typer(controller_app, name="controller")


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
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
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
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    controller = Controller(config)
    if controller.seed_probability is not None:
        typer.echo(
            f"seeded with {config.seed_architecture}: p(seed) = {controller.seed_probability:.3f} "
            f"after {controller.seed_steps} maximum-likelihood steps"
        )
    for _ in range(num):
        proposal, arch = controller.propose()
        typer.echo(f"{proposal.id:4d}  {arch.canonical_hash()[:12]}  log p = {proposal.log_prob:7.2f}  {arch}")
