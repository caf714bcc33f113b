"""What the ``nas`` commands share: the store option and argument parsers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
from pydantic import BaseModel

from nas_errors import NotFound
from search_spaces import DEFAULT_LEVELS

if TYPE_CHECKING:  # the store (SQLAlchemy) loads when a command opens it, not for `nas --help`
    from nas_service.store import EpisodeStore

DEFAULT_DB = "sqlite:///data/nas.db"
DB_OPTION = typer.Option(
    None, "--db", help=f"Episode store URL (default: $NAS_DB_URL or {DEFAULT_DB}).", show_default=False
)
RAY_OPTION = typer.Option(None, "--ray-address", help="Join this Ray cluster (default: $RAY_ADDRESS or a local Ray).")
LEVELS_OPTION = typer.Option(",".join(map(str, DEFAULT_LEVELS)), "--levels", help="Pyramid levels, comma-separated.")


def config_option(model: type[BaseModel], field: str, *names: str, **options: Any) -> Any:
    """A ``typer.Option`` whose default is ``model``'s for ``field``, so a command and a config file never differ."""
    return typer.Option(model.model_fields[field].default, *names, **options)


def store_url(db: Optional[str]) -> str:
    """``--db``, else ``$NAS_DB_URL``, else the SQLite file under ``data/``."""
    return db or os.environ.get("NAS_DB_URL") or DEFAULT_DB


def open_store(db: Optional[str], create: bool = False) -> EpisodeStore:
    """The store at ``db``; a SQLite file that does not exist is made only when ``create`` is set,
    so a mistyped ``--db`` of a reading command is an error rather than a new, empty store."""
    from nas_service.store import EpisodeStore

    url = store_url(db)
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if not create and not path.exists():
            raise NotFound(f"--db {url}: no episode store at {path}; start a search first, or check the path")
        path.parent.mkdir(parents=True, exist_ok=True)
    return EpisodeStore(url)


def parse_levels(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers such as 3,4,5,6,7, got {text!r}") from None
