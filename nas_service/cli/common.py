"""What the ``nas`` commands share: the store option, error exits and argument parsers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn, Optional

import typer

from nas_service.store import EpisodeStore, StoreError
from search_spaces import DEFAULT_LEVELS

DEFAULT_DB = "sqlite:///data/nas.db"
DB_OPTION = typer.Option(
    None, "--db", help=f"Episode store URL (default: $NAS_DB_URL or {DEFAULT_DB}).", show_default=False
)
RAY_OPTION = typer.Option(None, "--ray-address", help="Join this Ray cluster (default: $RAY_ADDRESS or a local Ray).")
LEVELS_OPTION = typer.Option(",".join(map(str, DEFAULT_LEVELS)), "--levels", help="Pyramid levels, comma-separated.")


def fail(error: Exception) -> NoReturn:
    """Print ``error`` and exit with status 2, the exit status of every bad-input error."""
    typer.echo(f"error: {error}", err=True)
    raise typer.Exit(2)


def store_url(db: Optional[str]) -> str:
    """``--db``, else ``$NAS_DB_URL``, else the SQLite file under ``data/``."""
    return db or os.environ.get("NAS_DB_URL") or DEFAULT_DB


def open_store(db: Optional[str]) -> EpisodeStore:
    url = store_url(db)
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        return EpisodeStore(url)
    except StoreError as error:
        fail(error)


def parse_levels(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers such as 3,4,5,6,7, got {text!r}") from None
