"""Request dependencies: the store, the server's settings and the bearer-token check."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Path, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from nas_service.api.schemas import Problem
from nas_service.store import INT32_MAX, EpisodeStore


@dataclass(frozen=True)
class Settings:
    store_url: str
    token: str | None
    """Bearer token required by every state-changing request; None: no authentication (loopback use)."""
    ray_address: str | None
    """Where runners launched by the API go (see ``nas_service.launcher``)."""


def get_store(request: Request) -> EpisodeStore:
    return request.app.state.store


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


_bearer = HTTPBearer(auto_error=False, description="Required for changes when the server has NAS_API_TOKEN set.")


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
Authorized = [Depends(require_token)]
"""Dependencies of every state-changing route; its responses include ``UNAUTHORIZED``."""
UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "The server has NAS_API_TOKEN set and the bearer token is missing or wrong."}
}
