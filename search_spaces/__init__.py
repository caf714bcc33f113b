"""The NAS-FPN merging-cell search space: architectures as data, known cells, their cost, drawings.

Pure Python (no torch): the torch module built from an architecture is ``detector.modeling.nasfpn``.
"""

from search_spaces.architecture import (
    DEFAULT_LEVELS,
    OPS,
    SCHEMA_VERSION,
    Architecture,
    ArchitectureError,
    MergingCell,
)
from search_spaces.cost import NeckCost, neck_cost
from search_spaces.known import KNOWN_ARCHITECTURES, fpn, known_architecture, nasfpn

__all__ = [
    "DEFAULT_LEVELS",
    "KNOWN_ARCHITECTURES",
    "OPS",
    "SCHEMA_VERSION",
    "Architecture",
    "ArchitectureError",
    "MergingCell",
    "NeckCost",
    "fpn",
    "known_architecture",
    "nasfpn",
    "neck_cost",
]
