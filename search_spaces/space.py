"""The search space as a sequence of decisions, four per cell: input a, input b, output level, op.

This is the contract between architectures and the controller: ``decisions`` encodes an architecture
as integers, ``architecture`` decodes them, and ``choices`` says which integers are legal at each step
given the earlier ones (so that every decoded sequence is a valid architecture).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from search_spaces.architecture import (
    DEFAULT_LEVELS,
    OPS,
    Architecture,
    ArchitectureError,
    MergingCell,
    check_levels,
)
from search_spaces.known import KNOWN_ARCHITECTURES, known_architecture

DECISION_KINDS: tuple[str, ...] = ("input_a", "input_b", "output_level", "op")
ARCHITECTURE_FOLDER = "architecture_folder"
"""Validation context key of the config-file loaders: the folder an architecture file named in the file
is relative to. Without it (an API request, a Python caller) a config's architecture is a known name or
inline JSON, and no file is opened while validating."""


@dataclass(frozen=True)
class SearchSpace:
    """Architectures with ``num_cells`` cells over ``levels``; the last ``len(levels)`` are outputs."""

    levels: tuple[int, ...] = DEFAULT_LEVELS
    num_cells: int = 7

    def __post_init__(self) -> None:
        object.__setattr__(self, "levels", tuple(self.levels))
        check_levels(self.levels)
        if self.num_cells < len(self.levels):
            raise ArchitectureError(
                f"num_cells: must be at least the number of levels ({len(self.levels)}), got {self.num_cells}"
            )

    @property
    def num_decisions(self) -> int:
        return len(DECISION_KINDS) * self.num_cells

    @property
    def max_pool_size(self) -> int:
        """Number of pool entries the last cell may read."""
        return len(self.levels) + self.num_cells - 1

    @property
    def num_intermediate(self) -> int:
        return self.num_cells - len(self.levels)

    def contains(self, architecture: Architecture) -> bool:
        return architecture.levels == self.levels and len(architecture.cells) == self.num_cells

    def decisions(self, architecture: Architecture) -> list[int]:
        """Encode ``architecture`` (levels as indices into ``levels``, ops as indices into ``OPS``)."""
        if not self.contains(architecture):
            raise ArchitectureError(
                f"architecture: has {len(architecture.cells)} cells on levels {list(architecture.levels)}; "
                f"this search space has {self.num_cells} cells on levels {list(self.levels)}"
            )
        out: list[int] = []
        for cell in architecture.cells:
            out += [cell.input_a, cell.input_b, self.levels.index(cell.output_level), OPS.index(cell.op)]
        return out

    def architecture(self, decisions: Sequence[int]) -> Architecture:
        """Decode a decision sequence; raises ``ArchitectureError`` if it breaks a rule."""
        if len(decisions) != self.num_decisions:
            raise ArchitectureError(
                f"decisions: expected {self.num_decisions} decisions, got {len(decisions)}"
            )
        cells = []
        for start in range(0, self.num_decisions, len(DECISION_KINDS)):
            a, b, level, op = (int(d) for d in decisions[start : start + len(DECISION_KINDS)])
            if not 0 <= level < len(self.levels) or not 0 <= op < len(OPS):
                raise ArchitectureError(
                    f"cells[{start // 4}]: level index {level} or op index {op} is out of range"
                )
            cells.append(MergingCell(a, b, self.levels[level], OPS[op]))
        return Architecture(cells=tuple(cells), levels=self.levels)

    def choices(self, step: int, previous: Sequence[int]) -> list[int]:
        """The legal values of decision ``step`` after the decisions ``previous`` (one per earlier step)."""
        cell, kind = divmod(step, len(DECISION_KINDS))
        pool_size = len(self.levels) + cell
        if DECISION_KINDS[kind] == "input_a":
            return list(range(pool_size))
        if DECISION_KINDS[kind] == "input_b":
            return [i for i in range(pool_size) if i != previous[step - 1]]
        if DECISION_KINDS[kind] == "output_level":
            if cell < self.num_intermediate:
                return list(range(len(self.levels)))
            used = {previous[4 * c + 2] for c in range(self.num_intermediate, cell)}
            return [i for i in range(len(self.levels)) if i not in used]
        return list(range(len(OPS)))

    def random_architecture(self, rng: random.Random) -> Architecture:
        """Draw every decision uniformly among its legal values (the random-search baseline)."""
        decisions: list[int] = []
        for step in range(self.num_decisions):
            decisions.append(rng.choice(self.choices(step, decisions)))
        return self.architecture(decisions)


def resolve_architecture(
    spec: str | dict[str, Any] | Architecture, levels: Sequence[int] = DEFAULT_LEVELS
) -> Architecture:
    """An architecture from a known name (``nasfpn``, ``fpn``), a JSON file path, or a JSON dict."""
    if isinstance(spec, Architecture):
        return spec
    if isinstance(spec, dict):
        return Architecture.from_dict(spec)
    if spec in KNOWN_ARCHITECTURES:
        return known_architecture(spec, levels)
    path = Path(spec)
    if path.suffix == ".json" or path.exists():
        try:
            text = path.read_text()
        except OSError as error:
            raise ArchitectureError(f"{spec}: cannot read architecture file ({error.strerror})") from None
        try:
            return Architecture.from_json(text)
        except ArchitectureError as error:
            raise ArchitectureError(f"{spec}: {error}") from None
    raise ArchitectureError(
        f"architecture: {spec!r} is neither a known name {sorted(KNOWN_ARCHITECTURES)} nor a JSON file"
    )



def inline_architecture_file(spec: Any, context: dict[str, Any] | None) -> Any:
    """A config's architecture field (before validation): a file name is replaced by the file's JSON
    when a config loader gave ``ARCHITECTURE_FOLDER`` in ``context``, and refused unopened otherwise."""
    if not isinstance(spec, str) or spec in KNOWN_ARCHITECTURES:
        return spec
    folder = (context or {}).get(ARCHITECTURE_FOLDER)
    if folder is None:
        raise ArchitectureError(
            f"{spec!r} is not a known architecture {sorted(KNOWN_ARCHITECTURES)}; give the cell as inline "
            "JSON (only a config file may name a JSON file)"
        )
    return resolve_architecture(str(Path(folder) / spec)).to_dict()
