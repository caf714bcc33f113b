"""``nas export``: a search's best architectures as a detector config for ``nas train``, or as JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, cast

import typer

from nas_errors import UserError
from nas_service.cli.common import DB_OPTION, open_store
from nas_service.export import EXPORT_FORMATS, ExportFormat, bundle, export_architectures

export_app = typer.Typer(help="Export searched architectures.", no_args_is_help=True)


@export_app.command("best")
def export_best(
    search_id: int = typer.Option(..., "--search", help="Search id."),
    to: str = typer.Option("detector-config", "--to", help="detector-config (YAML for nas train) or json."),
    output: Optional[Path] = typer.Option(
        None, "-o", "--output", help="File to write (default: stdout). With --top K > 1: FILE-1.ext ... FILE-K.ext."
    ),
    top: int = typer.Option(1, "--top", min=1, help="Export the best K distinct architectures."),
    db: Optional[str] = DB_OPTION,
) -> None:
    """Export the best architecture(s) of a search: a commented, complete detector config or the bare JSON."""
    if to not in EXPORT_FORMATS:
        raise UserError(f"--to: expected one of {', '.join(EXPORT_FORMATS)}, got {to!r}")
    export_format = cast(ExportFormat, to)
    store = open_store(db)
    exported = export_architectures(store, search_id, to=export_format, top=top)
    for line in exported[0].notes:
        typer.echo(line, err=True)
    if output is None:
        typer.echo(bundle(exported, export_format), nl=False)
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    for item in exported:
        path = output if len(exported) == 1 else output.with_name(f"{output.stem}-{item.rank}{output.suffix}")
        path.write_text(item.text)
        typer.echo(f"#{item.rank} episode {item.episode.number} reward {item.episode.reward:.4f} -> {path}", err=True)
