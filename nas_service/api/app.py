"""The FastAPI application: REST API under ``/api``, the dashboard at ``/``.

Errors of the project's tree (``nas_errors``) become JSON problems by branch (404 not found, 409
conflict, 422 bad input, 503 launch or service failure), so bad input never reaches the client as a 500.
Before any route, ``guard.RequestGuard`` refuses other names for the server, other sites' pages and
oversized bodies; every change must be JSON (``deps.require_json``); ``admission`` keeps the files a
request names in the data roots.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from nas_errors import Conflict, LaunchError, NasError, NotFound, TrainingError, Unavailable, UserError
from nas_service.api.admission import local_capacity
from nas_service.api.deps import Settings, Store
from nas_service.api.guard import LOOPBACK_NAMES, RequestGuard
from nas_service.api.routers import architectures, episodes, searches
from nas_service.api.schemas import ConfigPreset, FieldProblem, Health, Problem
from nas_service.search_config import load_search_config
from nas_service.store import EpisodeStore

STATIC = Path(__file__).resolve().parent / "static"
PRESETS = Path("configs/search")
"""Search configs offered by the dashboard's form, relative to the server's working directory."""


def create_app(
    store_url: str,
    token: str | None = None,
    ray_address: str | None = None,
    allowed_hosts: Sequence[str] = (),
    data_roots: Sequence[Path] = (Path("data"),),
) -> FastAPI:
    """The app; ``allowed_hosts`` are served besides the loopback names, ``data_roots`` are the folders
    (relative to the working directory, or absolute) that every file a request names must lie in."""
    app = FastAPI(
        title="nas-fpn",
        version=version("nas-fpn"),
        summary="Search NAS-FPN cells with reinforcement learning; inspect searches and export the winners.",
        responses={
            400: {"model": Problem, "description": "The body is not valid JSON."},
            403: {"model": Problem, "description": "The Host is not a name of this server, or Origin another site."},
            422: {"model": Problem, "description": "A parameter or the body does not validate."},
        },
    )
    roots = tuple(root.resolve() for root in data_roots)
    app.state.settings = Settings(store_url=store_url, token=token, ray_address=ray_address, data_roots=roots)
    app.add_middleware(RequestGuard, allowed_hosts=(*LOOPBACK_NAMES, *allowed_hosts))
    app.state.store = EpisodeStore(store_url)
    if ray_address is None:
        local_capacity()  # torch's CUDA count, once, before any request waits for it
    app.router.add_event_handler("shutdown", app.state.store.close)
    for router in (searches.router, episodes.router, architectures.router):
        app.include_router(router)
    _add_error_handlers(app)
    _add_service_routes(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _problem(status_code: int):
    def handler(request: Request, error: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=status_code)

    return handler


def _invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
    """``{"detail": "field: problem; ...", "errors": [...]}``, without echoing the (maybe huge) input."""
    errors = [
        FieldProblem(loc=list(item["loc"]), msg=item["msg"].removeprefix("Value error, ")) for item in error.errors()
    ]
    detail = "; ".join(".".join(map(str, problem.loc)) + ": " + problem.msg for problem in errors)
    body = Problem(detail=detail or "invalid request", errors=errors)
    return JSONResponse(body.model_dump(), status_code=422)


def _method_not_allowed(request: Request, error: StarletteHTTPException) -> JSONResponse:
    """A 405's ``Allow`` lists the methods of every route on the path, not only the first route's."""
    headers = dict(error.headers or {})
    if error.status_code == status.HTTP_405_METHOD_NOT_ALLOWED:
        for template, operations in request.app.openapi()["paths"].items():
            if re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", template), request.url.path):
                headers["Allow"] = ", ".join(sorted(method.upper() for method in operations))
    return JSONResponse({"detail": error.detail}, status_code=error.status_code, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(StarletteHTTPException, _method_not_allowed)
    # Starlette picks the handler of the first class in the error's MRO that has one, so a store's
    # NotFound (also a StoreError, which is a UserError) is a 404, not a 422.
    for branch, code in (
        (NotFound, status.HTTP_404_NOT_FOUND),
        (Conflict, status.HTTP_409_CONFLICT),
        (UserError, status.HTTP_422_UNPROCESSABLE_CONTENT),
        (TrainingError, status.HTTP_422_UNPROCESSABLE_CONTENT),
        (LaunchError, status.HTTP_503_SERVICE_UNAVAILABLE),
        (Unavailable, status.HTTP_503_SERVICE_UNAVAILABLE),
        (NasError, status.HTTP_400_BAD_REQUEST),
    ):
        app.add_exception_handler(branch, _problem(code))


def _add_service_routes(app: FastAPI) -> None:
    @app.get("/api/health", response_model=Health, tags=["service"])
    def health(store: Store) -> Health:
        """200 when the store answers (used by container health checks)."""
        store.list_searches()
        return Health(
            status="ok", database=app.state.settings.store_url.split(":", 1)[0].split("+")[0], version=app.version
        )

    @app.get("/api/config-presets", response_model=list[ConfigPreset], tags=["service"])
    def config_presets() -> list[ConfigPreset]:
        """The search configs in the server's ``configs/search/``, resolved, to start a search from."""
        presets = []
        for path in sorted(PRESETS.glob("*.yaml")):
            try:
                config, error = load_search_config(path).model_dump(mode="json"), None
            except UserError as problem:
                config, error = None, str(problem)
            presets.append(ConfigPreset(name=path.stem, path=str(path), config=config, error=error))
        return presets

    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(STATIC / "index.html")
