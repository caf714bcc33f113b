"""``nas arch``: list, print and draw architectures."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from detector.config import NeckConfig
from nas_service.cli.common import LEVELS_OPTION, config_option, parse_levels
from search_spaces import KNOWN_ARCHITECTURES, neck_cost
from search_spaces.render import render_svg
from search_spaces.space import resolve_architecture

arch_app = typer.Typer(help="Inspect and draw architectures.", no_args_is_help=True)


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
    width: int = config_option(NeckConfig, "width", help="Neck channels for the FLOPs figure."),
    repeats: int = config_option(NeckConfig, "repeats", help="Cell repeats for the FLOPs figure."),
) -> None:
    """Print an architecture (cells, hash, cost) and optionally draw it."""
    arch = resolve_architecture(spec, parse_levels(levels))
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
