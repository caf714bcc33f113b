"""``/api/searches/{id}/...``: episodes, chart series, best and top architectures, graphs and exports."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Response, status

from nas_service.api.deps import EpisodeNumber, SearchId, Store
from nas_service.api.schemas import (
    EpisodeDetail,
    EpisodePage,
    EpisodeStatus,
    EpisodeSummary,
    Problem,
    RankedArchitecture,
    Series,
)
from nas_service.export import bundle, export_architectures
from nas_service.lifecycle import UNFINISHED_EPISODE
from nas_service.store import INT32_MAX, EpisodeRecord, SeriesPoint
from search_spaces import Architecture
from search_spaces.render import render_svg

router = APIRouter(prefix="/api/searches/{search_id}", tags=["episodes"], responses={404: {"model": Problem}})
MAX_PAGE = 1000
SVG = "image/svg+xml"


@router.get("/episodes", response_model=EpisodePage)
def list_episodes(
    search_id: SearchId,
    store: Store,
    after: Annotated[
        int | None, Query(ge=-1, le=INT32_MAX, description="Only episodes numbered above this, ascending.")
    ] = None,
    status_filter: Annotated[EpisodeStatus | None, Query(alias="status")] = None,
    sort: Literal["number", "reward", "finished_at", "flops"] = "number",
    order: Literal["asc", "desc"] = "asc",
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    offset: Annotated[int, Query(ge=0, le=INT32_MAX)] = 0,
) -> EpisodePage:
    """A page of episodes; with ``after`` only those newer than episode ``after`` (for cheap polling)."""
    if after is not None and (sort != "number" or order != "asc"):
        raise HTTPException(422, "after: lists new episodes by ascending number; drop sort and order")
    episodes = store.list_episodes(
        search_id, after=after, status=status_filter, sort=sort, descending=order == "desc", limit=limit, offset=offset
    )
    return EpisodePage(
        items=[EpisodeSummary.from_record(episode) for episode in episodes],
        total=store.count_episodes(search_id, status=status_filter),
        limit=limit,
        offset=offset,
        last_number=max((episode.number for episode in episodes), default=None),
        poll_after=poll_cursor(after, episodes) if sort == "number" and order == "asc" and offset == 0 else None,
    )


@router.get("/episodes/{number}", response_model=EpisodeDetail)
def get_episode(search_id: SearchId, number: EpisodeNumber, store: Store) -> EpisodeDetail:
    return _detail(store.get_episode(search_id, number))


@router.get("/episodes/{number}/graph.svg", response_class=Response, responses={200: {"content": {SVG: {}}}})
def episode_graph(search_id: SearchId, number: EpisodeNumber, store: Store) -> Response:
    episode = store.get_episode(search_id, number)
    arch = Architecture.from_dict(episode.architecture)
    return Response(render_svg(arch, title=f"episode {number}  reward {_reward(episode)}"), media_type=SVG)


@router.get("/series", response_model=Series)
def series(
    search_id: SearchId,
    store: Store,
    after: Annotated[int | None, Query(ge=-1, le=INT32_MAX, description="Only episodes above this number.")] = None,
    after_update: Annotated[
        int | None, Query(ge=-1, le=INT32_MAX, description="Only controller updates above this number.")
    ] = None,
) -> Series:
    """Everything the progress charts draw, as columns; poll with ``after`` and ``after_update``."""
    points = store.episode_series(search_id, after=after)
    entropy = store.entropy_history(search_id, after_update=after_update)
    return Series(
        numbers=[point.number for point in points],
        statuses=[point.status for point in points],
        rewards=[point.reward for point in points],
        first_of_architecture=[point.first_of_architecture for point in points],
        entropy_episodes=[point.episodes_reported for point in entropy],
        entropy=[point.entropy for point in entropy],
        last_number=points[-1].number if points else after,
        poll_after=poll_cursor(after, points),
        last_update=entropy[-1].update_number if entropy else after_update,
    )


@router.get("/top", response_model=list[RankedArchitecture])
def top_architectures(
    search_id: SearchId, store: Store, k: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 10
) -> list[RankedArchitecture]:
    """The ``k`` best distinct architectures (completed or cached episodes), best first."""
    return [
        RankedArchitecture(rank=rank, episode=_detail(episode))
        for rank, episode in enumerate(store.top_episodes(search_id, k), 1)
    ]


@router.get("/best", response_model=EpisodeDetail, responses={404: {"model": Problem}})
def best_architecture(search_id: SearchId, store: Store) -> EpisodeDetail:
    best = store.top_episodes(search_id, 1)
    if not best:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"search {search_id} has no scored episode yet")
    return _detail(best[0])


@router.get(
    "/export",
    response_class=Response,
    responses={200: {"content": {"application/yaml": {}, "application/json": {}}}, 404: {"model": Problem}},
)
def export(
    search_id: SearchId,
    store: Store,
    to: Literal["detector-config", "json"] = "detector-config",
    top: Annotated[int, Query(ge=1, le=100, description="Export the best this many architectures.")] = 1,
) -> Response:
    """The best architecture(s) as a commented detector config for ``nas train``, or as bare JSON."""
    exported = export_architectures(store, search_id, to=to, top=top)
    media_type = "application/json" if to == "json" else "application/yaml"
    extension = "json" if to == "json" else "yaml"
    filename = exported[0].filename if len(exported) == 1 else f"search-{search_id}-top{len(exported)}.{extension}"
    headers = {"Content-Disposition": f'attachment; filename="{filename}"'}
    return Response(bundle(exported, to), media_type=media_type, headers=headers)


def poll_cursor(after: int | None, rows: Sequence[EpisodeRecord | SeriesPoint]) -> int:
    """The ``after`` of the next poll: the last of ``rows`` (ascending, read in one query) before
    the first unfinished one, so an episode still running is read again until its result is in."""
    cursor = -1 if after is None else after
    for row in rows:
        if row.status in UNFINISHED_EPISODE:
            break
        cursor = row.number
    return cursor


def _detail(episode: EpisodeRecord) -> EpisodeDetail:
    return EpisodeDetail.from_record(episode, description=str(Architecture.from_dict(episode.architecture)))


def _reward(episode: EpisodeRecord) -> str:
    return "-" if episode.reward is None else f"{episode.reward:.4f}"
