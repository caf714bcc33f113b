"""``nas serve``: the REST API and dashboard under uvicorn."""

from __future__ import annotations

import os
from typing import Optional

import typer
import uvicorn

from nas_service.cli.common import DB_OPTION, open_store, store_url


def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind; loopback unless you mean otherwise."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="TCP port."),
    db: Optional[str] = DB_OPTION,
    ray_address: Optional[str] = typer.Option(
        None,
        "--ray-address",
        help="Where searches started from the API run: http://head:8265 submits a Ray job, another address "
        "joins that cluster from a local process (default: $NAS_RAY_ADDRESS, else a local Ray).",
    ),
) -> None:
    """Serve the REST API (/api, /docs) and the dashboard (/).

    Set NAS_API_TOKEN to require it as a bearer token for every change.
    """
    from nas_service.api import create_app

    url = store_url(db)
    open_store(db, create=True).close()  # creates the SQLite folder and checks the database before binding
    token = os.environ.get("NAS_API_TOKEN") or None
    if token is None and host not in ("127.0.0.1", "localhost", "::1"):
        typer.echo(
            f"warning: serving on {host} without NAS_API_TOKEN: anyone who reaches it can start searches", err=True
        )
    app = create_app(url, token=token, ray_address=ray_address or os.environ.get("NAS_RAY_ADDRESS") or None)
    typer.echo(f"dashboard: http://{host}:{port}/   API docs: http://{host}:{port}/docs")
    uvicorn.run(app, host=host, port=port, log_level="info")
