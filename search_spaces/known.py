"""Architectures known by name: the published NAS-FPN cell and FPN written as merging cells."""

from __future__ import annotations

from typing import Callable, Sequence

from search_spaces.architecture import DEFAULT_LEVELS, Architecture, ArchitectureError, MergingCell

# The published cell exactly as the TensorFlow reference's block spec:
# (output_level, combine_fn, (input_index_a, input_index_b), is_output), over the pool P3..P7 = 0..4.
NASFPN_BLOCK_SPEC: tuple[tuple[int, str, tuple[int, int], bool], ...] = (
    (4, "attention", (1, 3), False),
    (4, "sum", (1, 5), False),
    (3, "sum", (0, 6), True),
    (4, "sum", (6, 7), True),
    (5, "attention", (7, 8), True),
    (7, "attention", (6, 9), True),
    (6, "attention", (9, 10), True),
)
_TF_OPS = {"attention": "global_pool", "sum": "sum"}
_TF_MIN_LEVEL = 3


def from_block_spec(
    block_spec: Sequence[tuple[int, str, tuple[int, int], bool]],
    levels: Sequence[int] = DEFAULT_LEVELS,
) -> Architecture:
    """Convert a TF-style block spec (levels relative to P3) to an ``Architecture`` on ``levels``."""
    flags = [is_output for *_, is_output in block_spec]
    first_output = flags.index(True) if True in flags else len(flags)
    if any(not flag for flag in flags[first_output:]):
        raise ArchitectureError("block_spec: output blocks must come after every intermediate block")
    shift = levels[0] - _TF_MIN_LEVEL
    cells = tuple(
        MergingCell(input_a=a, input_b=b, output_level=level + shift, op=_TF_OPS[op])
        for level, op, (a, b), _ in block_spec
    )
    return Architecture(cells=cells, levels=tuple(levels))


def nasfpn(levels: Sequence[int] = DEFAULT_LEVELS) -> Architecture:
    """The cell published with NAS-FPN (Ghiasi et al. 2019), the one mmdetection hard-codes.

    On levels other than P3..P7 the same graph is shifted: input ``i`` is the ``i``-th finest level.
    """
    if len(levels) != 5:
        raise ArchitectureError(f"levels: the published NAS-FPN cell needs 5 levels, got {list(levels)}")
    return from_block_spec(NASFPN_BLOCK_SPEC, levels)


def fpn(levels: Sequence[int] = DEFAULT_LEVELS) -> Architecture:
    """A top-down FPN written as merging cells (one output cell per level, no intermediate cells).

    Going from the coarsest level down, each output merges the finer lateral input with the output
    just above it, upsampled: ``P6' = sum(P7, P6)``, ``P5' = sum(P6', P5)``, ..., ``P3' = sum(P4', P3)``.
    A cell always has two inputs, so the coarsest output is ``sum(P7, P6')`` with ``P6'`` pooled down;
    that is the only place where information flows bottom-up.
    """
    levels = tuple(levels)
    if len(levels) < 2:
        raise ArchitectureError(f"levels: FPN needs at least 2 levels, got {list(levels)}")
    num_inputs = len(levels)
    cells = []
    upper = num_inputs - 1  # pool index of the coarsest input
    for lateral in range(num_inputs - 2, -1, -1):
        cells.append(MergingCell(input_a=upper, input_b=lateral, output_level=levels[lateral], op="sum"))
        upper = num_inputs + len(cells) - 1
    cells.append(MergingCell(num_inputs - 1, num_inputs, output_level=levels[-1], op="sum"))
    return Architecture(cells=tuple(cells), levels=levels)


KNOWN_ARCHITECTURES: dict[str, Callable[[Sequence[int]], Architecture]] = {
    "nasfpn": nasfpn,
    "fpn": fpn,
}


def known_architecture(name: str, levels: Sequence[int] = DEFAULT_LEVELS) -> Architecture:
    """Look up an architecture by name (``nasfpn`` or ``fpn``) on the given levels."""
    try:
        build = KNOWN_ARCHITECTURES[name]
    except KeyError:
        raise ArchitectureError(
            f"architecture: unknown name {name!r}; known names are {sorted(KNOWN_ARCHITECTURES)}"
        ) from None
    return build(levels)
