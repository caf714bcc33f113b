"""``/api/architectures``: the architectures known by name (the published NAS-FPN cell, FPN) and their graphs."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Response

from nas_service.api.schemas import ArchitectureInfo, Problem
from search_spaces import DEFAULT_LEVELS, KNOWN_ARCHITECTURES, ArchitectureError
from search_spaces.render import render_svg
from search_spaces.space import resolve_architecture

router = APIRouter(prefix="/api/architectures", tags=["architectures"], responses={404: {"model": Problem}})
KnownName = Literal[tuple(sorted(KNOWN_ARCHITECTURES))]  # type: ignore[valid-type]


@router.get("", response_model=list[ArchitectureInfo])
def list_known() -> list[ArchitectureInfo]:
    return [_info(name) for name in sorted(KNOWN_ARCHITECTURES)]


@router.get("/{name}/graph.svg", response_class=Response, responses={200: {"content": {"image/svg+xml": {}}}})
def known_graph(
    name: KnownName,
    levels: Annotated[
        str | None,
        Query(pattern=r"^[0-9]{1,2}(,[0-9]{1,2}){0,15}$", description="Pyramid levels, e.g. 2,3,4,5,6 (default 3..7)."),
    ] = None,
) -> Response:
    """The cell drawn on the given levels, e.g. those of a search, to set beside its best cell."""
    try:
        arch = resolve_architecture(name, DEFAULT_LEVELS if levels is None else tuple(map(int, levels.split(","))))
    except ArchitectureError as error:
        raise HTTPException(422, f"levels: {error}") from None
    return Response(render_svg(arch, title=name), media_type="image/svg+xml")


def _info(name: str) -> ArchitectureInfo:
    arch = resolve_architecture(name)
    return ArchitectureInfo(
        name=name, arch_hash=arch.canonical_hash(), description=str(arch), architecture=arch.to_dict()
    )
