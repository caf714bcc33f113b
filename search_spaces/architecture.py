"""NAS-FPN architectures as immutable, validated, hashable values.

A cell reads two entries of the feature *pool*, resamples both to its output level, merges them with a
parameter-free op and appends the result to the pool. The pool starts with the pyramid inputs, one per
level in ascending order (index 0 is the finest level). The last ``len(levels)`` cells are the output
cells and produce each pyramid level exactly once; the cells before them are intermediate.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Iterator

from nas_errors import UserError

SCHEMA_VERSION = 1
OPS: tuple[str, ...] = ("sum", "global_pool")
DEFAULT_LEVELS: tuple[int, ...] = (3, 4, 5, 6, 7)


class ArchitectureError(UserError):
    """An architecture that breaks a rule of the search space; the message names the cell and field."""


def check_levels(levels: tuple[int, ...]) -> None:
    """Pyramid levels must be ascending consecutive integers, e.g. (3, 4, 5, 6, 7)."""
    if not levels:
        raise ArchitectureError("levels: must name at least one pyramid level")
    if any(not isinstance(level, int) or isinstance(level, bool) for level in levels):
        raise ArchitectureError(f"levels: must be integers, got {list(levels)}")
    if list(levels) != list(range(levels[0], levels[0] + len(levels))):
        raise ArchitectureError(f"levels: must be ascending and consecutive, got {list(levels)}")


@dataclass(frozen=True)
class MergingCell:
    """One merging cell: ``op(pool[input_a], pool[input_b])`` resampled to ``output_level``."""

    input_a: int
    input_b: int
    output_level: int
    op: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_a": self.input_a,
            "input_b": self.input_b,
            "output_level": self.output_level,
            "op": self.op,
        }


@dataclass(frozen=True)
class Architecture:
    """An ordered list of merging cells over the pyramid ``levels`` (ascending, consecutive)."""

    cells: tuple[MergingCell, ...]
    levels: tuple[int, ...] = DEFAULT_LEVELS

    def __post_init__(self) -> None:
        object.__setattr__(self, "cells", tuple(self.cells))
        object.__setattr__(self, "levels", tuple(self.levels))
        self._validate()

    # -- structure ---------------------------------------------------------------------------------

    @property
    def num_outputs(self) -> int:
        return len(self.levels)

    @property
    def num_intermediate(self) -> int:
        return len(self.cells) - self.num_outputs

    def is_output(self, cell_index: int) -> bool:
        return cell_index >= self.num_intermediate

    def pool_levels(self) -> list[int]:
        """The pyramid level of every pool entry: the inputs, then one entry per cell."""
        return list(self.levels) + [cell.output_level for cell in self.cells]

    def cell_inputs(self) -> Iterator[tuple[int, MergingCell, tuple[int, ...]]]:
        """Yield ``(cell_index, cell, unused)`` where ``unused`` lists the pool entries that the cell adds.

        An output cell adds every earlier pool entry at its own level that no cell has read before it
        (NAS-FPN's rule that keeps intermediate results from being dropped). Intermediate cells add
        nothing.
        """
        pool_levels = self.pool_levels()
        read = [False] * len(pool_levels)
        for index, cell in enumerate(self.cells):
            read[cell.input_a] = read[cell.input_b] = True
            unused: tuple[int, ...] = ()
            if self.is_output(index):
                position = len(self.levels) + index
                unused = tuple(
                    entry
                    for entry in range(position)
                    if not read[entry] and pool_levels[entry] == cell.output_level
                )
                for entry in unused:
                    read[entry] = True
            yield index, cell, unused

    def attention_roles(self, cell: MergingCell) -> tuple[int, int]:
        """``(fine, coarse)`` pool indices of a ``global_pool`` cell.

        The coarse input is the one at the higher pyramid level; it is globally pooled to gate the fine
        one. At equal levels ``input_b`` plays the coarse role.
        """
        pool_levels = self.pool_levels()
        if pool_levels[cell.input_a] > pool_levels[cell.input_b]:
            return cell.input_b, cell.input_a
        return cell.input_a, cell.input_b

    def output_cells(self) -> dict[int, int]:
        """Map each pyramid level to the index of the cell that produces it."""
        return {self.cells[i].output_level: i for i in range(self.num_intermediate, len(self.cells))}

    # -- validation --------------------------------------------------------------------------------

    def _validate(self) -> None:
        levels = self.levels
        check_levels(levels)
        if len(self.cells) < len(levels):
            raise ArchitectureError(
                f"cells: need at least {len(levels)} cells (one output cell per level), "
                f"got {len(self.cells)}"
            )
        for index, cell in enumerate(self.cells):
            self._validate_cell(index, cell)
        produced = sorted(self.output_cells())
        if produced != list(levels) or len(produced) != self.num_outputs:
            seen = [self.cells[i].output_level for i in range(self.num_intermediate, len(self.cells))]
            raise ArchitectureError(
                f"cells[{self.num_intermediate}:]: the {self.num_outputs} output cells must cover levels "
                f"{list(levels)} exactly once, got output_level values {seen}"
            )

    def _validate_cell(self, index: int, cell: MergingCell) -> None:
        where = f"cells[{index}]"
        if not isinstance(cell, MergingCell):
            raise ArchitectureError(f"{where}: expected a MergingCell, got {type(cell).__name__}")
        pool_size = len(self.levels) + index
        for field in ("input_a", "input_b"):
            value = getattr(cell, field)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ArchitectureError(f"{where}.{field}: must be an integer, got {value!r}")
            if not 0 <= value < pool_size:
                raise ArchitectureError(
                    f"{where}.{field}: pool index {value} is out of range; this cell may read "
                    f"entries 0..{pool_size - 1} (the inputs and earlier cells)"
                )
        if cell.input_a == cell.input_b:
            raise ArchitectureError(
                f"{where}.input_b: both inputs are pool entry {cell.input_a}; they must differ"
            )
        if cell.output_level not in self.levels:
            raise ArchitectureError(
                f"{where}.output_level: {cell.output_level!r} is not one of the levels {list(self.levels)}"
            )
        if cell.op not in OPS:
            raise ArchitectureError(f"{where}.op: unknown op {cell.op!r}; expected one of {list(OPS)}")

    # -- serialisation -----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "levels": list(self.levels),
            "cells": [cell.to_dict() for cell in self.cells],
        }

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: Any) -> "Architecture":
        if not isinstance(data, dict):
            raise ArchitectureError(f"architecture: expected a JSON object, got {type(data).__name__}")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ArchitectureError(
                f"schema_version: expected {SCHEMA_VERSION}, got {version!r}"
            )
        unknown = set(data) - {"schema_version", "levels", "cells"}
        if unknown:
            raise ArchitectureError(f"architecture: unknown fields {sorted(unknown)}")
        levels = data.get("levels", list(DEFAULT_LEVELS))
        if not isinstance(levels, list):
            raise ArchitectureError(f"levels: expected a list of integers, got {levels!r}")
        cells_data = data.get("cells")
        if not isinstance(cells_data, list):
            raise ArchitectureError(f"cells: expected a list of cells, got {cells_data!r}")
        return cls(cells=tuple(_cell_from_dict(i, c) for i, c in enumerate(cells_data)), levels=levels)

    @classmethod
    def from_json(cls, text: str) -> "Architecture":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ArchitectureError(
                f"architecture JSON: {error.msg} at line {error.lineno}, column {error.colno}"
            ) from None
        return cls.from_dict(data)

    # -- identity ----------------------------------------------------------------------------------

    def canonical_hash(self) -> str:
        """A hex digest equal for architectures that compute the same function.

        The architecture is turned into an explicit graph (the unused-entry additions become ordinary
        inputs, operands of commutative merges are sorted, ``global_pool`` operands are named by role)
        and numbered in the lexicographically smallest topological order. So swapping the inputs of a
        ``sum`` cell, swapping ``global_pool`` inputs at different levels, and reordering independent
        cells all give the same hash.
        """
        payload = json.dumps({"levels": list(self.levels), "graph": _canonical_graph(self)})
        return hashlib.sha256(payload.encode()).hexdigest()

    def __str__(self) -> str:
        """Compact one-line form, e.g. ``gp(1,3)@4 sum(1,5)@4 | sum(0,6)@3 ...``."""
        parts = [f"{_SHORT_OPS[c.op]}({c.input_a},{c.input_b})@{c.output_level}" for c in self.cells]
        parts.insert(self.num_intermediate, "|")
        return " ".join(parts)


_SHORT_OPS = {"sum": "sum", "global_pool": "gp"}
_CELL_FIELDS = ("input_a", "input_b", "output_level", "op")


def _cell_from_dict(index: int, data: Any) -> MergingCell:
    where = f"cells[{index}]"
    if not isinstance(data, dict):
        raise ArchitectureError(f"{where}: expected an object with fields {list(_CELL_FIELDS)}")
    missing = [field for field in _CELL_FIELDS if field not in data]
    if missing:
        raise ArchitectureError(f"{where}.{missing[0]}: missing")
    unknown = set(data) - set(_CELL_FIELDS)
    if unknown:
        raise ArchitectureError(f"{where}: unknown fields {sorted(unknown)}")
    for field in ("input_a", "input_b", "output_level"):
        value = data[field]
        if not isinstance(value, int) or isinstance(value, bool):
            raise ArchitectureError(f"{where}.{field}: must be an integer, got {value!r}")
    if not isinstance(data["op"], str):
        raise ArchitectureError(f"{where}.op: must be a string, got {data['op']!r}")
    return MergingCell(**{field: data[field] for field in _CELL_FIELDS})


def _canonical_graph(arch: Architecture) -> list[list[Any]]:
    """Node keys of the explicit cell graph in the lexicographically smallest topological order."""
    num_inputs = len(arch.levels)
    nodes: dict[int, tuple[int, str, bool, tuple[int, ...], tuple[int, ...]]] = {}
    for index, cell, unused in arch.cell_inputs():
        if cell.op == "sum":
            operands: tuple[int, ...] = ()
            summed = (cell.input_a, cell.input_b) + unused
        else:
            operands = arch.attention_roles(cell)
            summed = unused
        nodes[num_inputs + index] = (cell.output_level, cell.op, arch.is_output(index), operands, summed)

    best: list[list[Any]] | None = None

    def search(numbering: dict[int, int], order: list[list[Any]]) -> None:
        nonlocal best
        ready = {}
        for node, (level, op, is_output, operands, summed) in nodes.items():
            if node in numbering or any(i not in numbering for i in operands + summed):
                continue
            ready[node] = [
                level,
                op,
                is_output,
                [numbering[i] for i in operands],
                sorted(numbering[i] for i in summed),
            ]
        if not ready:
            if best is None or order < best:
                best = order
            return
        smallest = min(ready.values())
        if best is not None and order + [smallest] > best[: len(order) + 1]:
            return
        for node, key in ready.items():
            if key == smallest:
                search({**numbering, node: len(numbering)}, order + [key])

    search({entry: entry for entry in range(num_inputs)}, [])
    assert best is not None
    return best
