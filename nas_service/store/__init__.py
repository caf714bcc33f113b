"""The episode store of the search service: searches, episodes and controller checkpoints.

``EpisodeStore(url)`` works on an embedded SQLite file (``sqlite:///path.db``) or on PostgreSQL
(``postgresql+psycopg://...``), upgrading the schema with the Alembic revisions shipped here.
"""

from nas_service.store.errors import (
    Conflict,
    EpisodeNotFound,
    LeaseLost,
    NotFound,
    SearchNotFound,
    StoreError,
    StoreUnavailable,
)
from nas_service.store.migrate import upgrade_database
from nas_service.store.schema import EPISODE_STATUSES, SEARCH_STATUSES
from nas_service.store.storage import (
    EPISODE_SORTS,
    INT32_MAX,
    CheckpointRecord,
    EntropyPoint,
    EpisodeRecord,
    EpisodeStore,
    SearchRecord,
    SeriesPoint,
)

__all__ = [
    "Conflict",
    "EPISODE_SORTS",
    "EPISODE_STATUSES",
    "INT32_MAX",
    "SEARCH_STATUSES",
    "CheckpointRecord",
    "EntropyPoint",
    "EpisodeNotFound",
    "EpisodeRecord",
    "EpisodeStore",
    "LeaseLost",
    "NotFound",
    "SearchNotFound",
    "SearchRecord",
    "SeriesPoint",
    "StoreError",
    "StoreUnavailable",
    "upgrade_database",
]
