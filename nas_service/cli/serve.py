"""``nas serve``: the REST API and dashboard under uvicorn."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from nas_service.cli.common import DB_OPTION, open_store, store_url

WILDCARD_ADDRESSES = ("0.0.0.0", "::", "")
"""Addresses that bind every interface: no name a client could use."""


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
    allowed_hosts: list[str] = typer.Option(
        [],
        "--allowed-host",
        envvar="NAS_ALLOWED_HOSTS",
        help="Another name clients reach the server by (repeatable; $NAS_ALLOWED_HOSTS: space-separated). "
        "Requests naming any other Host are refused; localhost, 127.0.0.1, ::1 and --host are always served.",
    ),
    data_roots: list[Path] = typer.Option(
        [Path("data")],
        "--data-root",
        envvar="NAS_DATA_ROOTS",
        help="A folder that every file named in an API request must lie in: datasets, weights, proxy bases "
        "(repeatable; $NAS_DATA_ROOTS: colon-separated; default: data/ of the working directory).",
    ),
) -> None:
    """Serve the REST API (/api, /docs) and the dashboard (/).

    Set NAS_API_TOKEN to require it as a bearer token for every change. Token or not, the server answers
    only requests that name it by an allowed Host and come from its own pages (or no page at all), and
    takes changes as JSON only.
    """
    import uvicorn

    from nas_service.api import create_app
    from nas_service.api.guard import LOOPBACK_NAMES

    url = store_url(db)
    open_store(db, create=True).close()  # creates the SQLite folder and checks the database before binding
    token = os.environ.get("NAS_API_TOKEN") or None
    if token is None and host not in LOOPBACK_NAMES:
        typer.echo(
            f"warning: serving on {host} without NAS_API_TOKEN: anyone who reaches it can start searches", err=True
        )
    if host in WILDCARD_ADDRESSES and not allowed_hosts:
        typer.echo(
            f"warning: serving on {host}, but only requests naming {', '.join(LOOPBACK_NAMES)} are answered; "
            "add --allowed-host NAME for each name clients use",
            err=True,
        )
    names = [*allowed_hosts, *([] if host in WILDCARD_ADDRESSES else [host])]
    app = create_app(
        url,
        token=token,
        ray_address=ray_address or os.environ.get("NAS_RAY_ADDRESS") or None,
        allowed_hosts=names,
        data_roots=data_roots,
    )
    typer.echo(f"dashboard: http://{host}:{port}/   API docs: http://{host}:{port}/docs")
    typer.echo(f"files named in requests must lie in: {', '.join(str(root.resolve()) for root in data_roots)}")
    uvicorn.run(app, host=host, port=port, log_level="info")
