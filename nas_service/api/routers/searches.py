"""``/api/searches``: create, list, inspect, stop, resume, archive and delete searches."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Response, status

from nas_errors import Conflict
from nas_service.api.admission import check_fits, confined
from nas_service.api.deps import CHANGE_CHECKS, CHANGE_REFUSED, SearchId, Settings, Store, get_settings
from nas_service.api.schemas import Problem, SearchCreate, SearchDetail, SearchLaunch, SearchSummary
from nas_service.comparison import compare_with_seed
from nas_service.launcher import create_search, start_runner
from nas_service.lifecycle import ACTIVE

router = APIRouter(prefix="/api/searches", tags=["searches"])
NOT_LAUNCHED: dict[int | str, dict[str, Any]] = {
    503: {"model": Problem, "description": "The runner could not be started; the search is left as it was."}
}


@router.get("", response_model=list[SearchSummary])
def list_searches(store: Store, include_archived: bool = False) -> list[SearchSummary]:
    return [SearchSummary.from_record(search) for search in store.list_searches(include_archived)]


@router.post(
    "",
    response_model=SearchLaunch,
    status_code=status.HTTP_201_CREATED,
    dependencies=CHANGE_CHECKS,
    responses={**CHANGE_REFUSED, 409: {"model": Problem, "description": "The name is taken."}, **NOT_LAUNCHED},
)
def start_search(
    body: SearchCreate, store: Store, settings: Annotated[Settings, Depends(get_settings)]
) -> SearchLaunch:
    """Store a search from its config and, unless ``start`` is false, launch its runner as the CLI does.

    Every file the config names must lie in the server's data roots, and a trial must fit one node.
    """
    config = confined(body.config, settings.data_roots)
    check_fits(config.resources, settings.ray_address)
    search = create_search(store, config, body.name, default_stem="api")
    runner = start_runner(store, search, settings.store_url, settings.ray_address) if body.start else None
    return SearchLaunch(search=SearchSummary.from_record(store.get_search(search.id)), runner=runner)


@router.get("/{search_id}", response_model=SearchDetail, responses={404: {"model": Problem}})
def get_search(search_id: SearchId, store: Store) -> SearchDetail:
    search = store.get_search(search_id)
    return SearchDetail.from_record(search, compare_with_seed(store, search))


@router.post(
    "/{search_id}/stop",
    response_model=SearchSummary,
    dependencies=CHANGE_CHECKS,
    responses={
        **CHANGE_REFUSED,
        404: {"model": Problem},
        409: {"model": Problem, "description": "The search is not running."},
    },
)
def stop_search(search_id: SearchId, store: Store) -> SearchSummary:
    """Ask the runner to stop: nothing new is proposed, running episodes finish and are recorded.

    A search whose runner is gone (its lease expired) is ``stopped`` at once.
    """
    return SearchSummary.from_record(store.request_stop(search_id))


@router.post(
    "/{search_id}/resume",
    response_model=SearchLaunch,
    dependencies=CHANGE_CHECKS,
    responses={
        **CHANGE_REFUSED,
        404: {"model": Problem},
        409: {"model": Problem, "description": "Completed, or a live runner holds it (named in the message)."},
        **NOT_LAUNCHED,
    },
)
def resume_search(
    search_id: SearchId,
    store: Store,
    settings: Annotated[Settings, Depends(get_settings)],
) -> SearchLaunch:
    """Launch a runner for the search, unless a live runner holds its lease; a runner whose lease
    expired (no heartbeat for its period) is taken for dead. Of concurrent resumes, one launches."""
    search = store.get_search(search_id)
    runner = start_runner(store, search, settings.store_url, settings.ray_address)
    return SearchLaunch(search=SearchSummary.from_record(store.get_search(search_id)), runner=runner)


@router.post(
    "/{search_id}/archive",
    response_model=SearchSummary,
    dependencies=CHANGE_CHECKS,
    responses={
        **CHANGE_REFUSED,
        404: {"model": Problem},
        409: {"model": Problem, "description": "A runner may be working on it."},
    },
)
def archive_search(search_id: SearchId, store: Store) -> SearchSummary:
    """Hide a finished search from the default list; nothing is deleted."""
    _require_idle(store.get_search(search_id).status, search_id, "archived")
    return SearchSummary.from_record(store.archive_search(search_id))


@router.delete(
    "/{search_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    dependencies=CHANGE_CHECKS,
    responses={
        **CHANGE_REFUSED,
        404: {"model": Problem},
        409: {"model": Problem, "description": "Running, or the confirmation does not match the name."},
    },
)
def delete_search(
    search_id: SearchId,
    store: Store,
    confirm: Annotated[str, Query(description="The search's name, to confirm the deletion.")],
) -> Response:
    """Delete a search with its episodes and checkpoints, for good."""
    search = store.get_search(search_id)
    _require_idle(search.status, search_id, "deleted")
    if confirm != search.name:
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"confirm: give the search's name {search.name!r} to delete it, got {confirm!r}"
        )
    store.delete_search(search_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _require_idle(search_status: str, search_id: int, action: str) -> None:
    if search_status in ACTIVE:
        raise Conflict(f"search {search_id} is {search_status}; stop it before it can be {action}")
