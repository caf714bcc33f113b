"""Request dependencies: the store, the server's settings and the checks of every change (JSON, the token)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path as FilePath
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Path, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from nas_service.api.schemas import Problem
from nas_service.store import INT32_MAX, EpisodeStore

JSON = "application/json"


@dataclass(frozen=True)
class Settings:
    store_url: str
    token: str | None
    """Bearer token required by every state-changing request; None: no authentication (loopback use)."""
    ray_address: str | None
    """Where runners launched by the API go (see ``nas_service.launcher``)."""
    data_roots: tuple[FilePath, ...]
    """Absolute folders (symlinks resolved) that every file a request names must lie in."""


def get_store(request: Request) -> EpisodeStore:
    return request.app.state.store


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


_bearer = HTTPBearer(auto_error=False, description="Required for changes when the server has NAS_API_TOKEN set.")


def require_json(request: Request) -> None:
    """Refuse a change that does not declare a JSON body (only a DELETE without a body may leave it out).

    A page may send a form, or a bodiless POST, to any site without the browser asking that site first;
    a request declared JSON needs the browser's CORS preflight, which this server never grants.
    """
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    bodiless = request.headers.get("content-length", "0") == "0" and "transfer-encoding" not in request.headers
    if media_type != JSON and (request.method != "DELETE" or media_type or not bodiless):
        shown = repr(media_type) if media_type else "none"
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            f"Content-Type: changes take {JSON} only (got {shown}), even with an empty body",
        )


def require_token(
    settings: Annotated[Settings, Depends(get_settings)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Refuse a state-changing request without the server's token (when one is configured)."""
    if settings.token is None:
        return
    if credentials is None or not secrets.compare_digest(credentials.credentials.encode(), settings.token.encode()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "this server needs its NAS_API_TOKEN as a bearer token for changes",
            headers={"WWW-Authenticate": "Bearer"},
        )


Store = Annotated[EpisodeStore, Depends(get_store)]
SearchId = Annotated[int, Path(ge=1, le=INT32_MAX, description="Search id.")]
EpisodeNumber = Annotated[int, Path(ge=0, le=INT32_MAX, description="Episode number within the search.")]
CHANGE_CHECKS = [Depends(require_json), Depends(require_token)]
"""Dependencies of every state-changing route; its responses include ``CHANGE_REFUSED``."""
CHANGE_REFUSED: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "The server has NAS_API_TOKEN set; the bearer token is missing or wrong."},
    411: {"model": Problem, "description": "A body without a Content-Length."},
    413: {"model": Problem, "description": "The body is larger than a megabyte."},
    415: {"model": Problem, "description": "The request does not declare Content-Type: application/json."},
}
"""Refusals of a change: ``CHANGE_CHECKS`` and the body size (``nas_service.api.guard``)."""
