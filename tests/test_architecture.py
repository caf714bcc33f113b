import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from search_spaces import Architecture, ArchitectureError, MergingCell, fpn, known_architecture, nasfpn
from search_spaces.space import SearchSpace, resolve_architecture
from tests.nasfpn_reference import NASFPN_DECODED, P4, P5_OUT, P6, P7_OUT

def test_nasfpn_is_the_published_graph():
    arch = nasfpn()
    decoded = [
        (5 + index, cell.op, {cell.input_a, cell.input_b}, cell.output_level, unused)
        for index, cell, unused in arch.cell_inputs()
    ]
    assert decoded == NASFPN_DECODED
    assert arch.output_cells() == {3: 2, 4: 3, 5: 4, 7: 5, 6: 6}
    assert arch.num_intermediate == 2


def test_attention_roles_put_the_higher_level_input_as_coarse():
    arch = nasfpn()
    # n5 = gp(P4, P6): P6 is coarser and gates P4.
    assert arch.attention_roles(arch.cells[0]) == (P4, P6)
    # P6' = gp(P7', P5'): P7' is coarser.
    assert arch.attention_roles(arch.cells[6]) == (P5_OUT, P7_OUT)


def test_fpn_is_top_down():
    arch = fpn()
    assert str(arch) == "| sum(4,3)@6 sum(5,2)@5 sum(6,1)@4 sum(7,0)@3 sum(4,5)@7"
    assert [unused for _, _, unused in arch.cell_inputs()] == [()] * 5


def test_known_architectures_on_other_levels():
    arch = known_architecture("nasfpn", levels=(2, 3, 4, 5, 6))
    assert arch.levels == (2, 3, 4, 5, 6)
    assert [c.output_level for c in arch.cells] == [3, 3, 2, 3, 4, 6, 5]
    assert fpn((2, 3, 4)).output_cells() == {3: 0, 2: 1, 4: 2}
    with pytest.raises(ArchitectureError, match="unknown name 'retina'"):
        known_architecture("retina")
    with pytest.raises(ArchitectureError, match="needs 5 levels"):
        nasfpn((3, 4, 5))


@pytest.mark.parametrize("arch", [nasfpn(), fpn(), fpn((2, 3, 4, 5, 6))])
def test_json_round_trip(arch):
    text = arch.to_json()
    again = Architecture.from_json(text)
    assert again == arch
    assert hash(again) == hash(arch)
    assert json.loads(text)["schema_version"] == 1


def _nasfpn_dict() -> dict:
    return nasfpn().to_dict()


def _with(path: tuple, value) -> dict:
    data = _nasfpn_dict()
    target = data
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


_DELETE = object()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_with(("cells", 2, "input_a"), 7), r"cells\[2\]\.input_a: pool index 7 is out of range.*0\.\.6"),
        (_with(("cells", 0, "input_b"), -1), r"cells\[0\]\.input_b: pool index -1 is out of range"),
        (_with(("cells", 1, "input_b"), 1), r"cells\[1\]\.input_b: both inputs are pool entry 1"),
        (_with(("cells", 3, "op"), "concat"), r"cells\[3\]\.op: unknown op 'concat'"),
        (_with(("cells", 3, "op"), 3), r"cells\[3\]\.op: must be a string"),
        (_with(("cells", 0, "output_level"), 9), r"cells\[0\]\.output_level: 9 is not one of the levels"),
        (_with(("cells", 4, "input_a"), "7"), r"cells\[4\]\.input_a: must be an integer, got '7'"),
        (_with(("cells", 5, "input_a"), _DELETE), r"cells\[5\]\.input_a: missing"),
        (_with(("cells", 6, "output_level"), 3), r"output cells must cover levels \[3, 4, 5, 6, 7\].*\[3, 4, 5, 7, 3\]"),
        (_with(("schema_version",), 2), r"schema_version: expected 1, got 2"),
        (_with(("schema_version",), _DELETE), r"schema_version: expected 1, got None"),
        (_with(("levels",), [3, 5, 6, 7, 8]), r"levels: must be ascending and consecutive"),
        (_with(("cells",), "none"), r"cells: expected a list"),
        ({**_nasfpn_dict(), "extra": 1}, r"unknown fields \['extra'\]"),
        (_with(("cells",), _nasfpn_dict()["cells"][:3]), r"cells: need at least 5 cells"),
    ],
)
def test_from_json_names_the_bad_field(data, message):
    with pytest.raises(ArchitectureError, match=message):
        Architecture.from_json(json.dumps(data))


def test_from_json_reports_syntax_errors_with_position():
    with pytest.raises(ArchitectureError, match="line 1, column"):
        Architecture.from_json('{"cells": [')


def test_resolve_architecture_from_file(tmp_path):
    good = tmp_path / "cell.json"
    good.write_text(fpn().to_json())
    assert resolve_architecture(str(good)) == fpn()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_with(("cells", 1, "op"), "mul")))
    with pytest.raises(ArchitectureError, match=r"bad\.json: cells\[1\]\.op: unknown op 'mul'"):
        resolve_architecture(str(bad))
    with pytest.raises(ArchitectureError, match="cannot read architecture file"):
        resolve_architecture(str(tmp_path / "missing.json"))
    with pytest.raises(ArchitectureError, match="neither a known name"):
        resolve_architecture("bifpn")


# -- canonical hash ------------------------------------------------------------------------------


def _replace_cell(arch: Architecture, index: int, **changes) -> Architecture:
    cells = list(arch.cells)
    old = cells[index]
    cells[index] = MergingCell(**{**old.to_dict(), **changes})
    return Architecture(tuple(cells), arch.levels)


def test_hash_ignores_the_order_of_sum_inputs():
    arch = nasfpn()
    swapped = _replace_cell(arch, 1, input_a=5, input_b=1)
    assert swapped != arch
    assert swapped.canonical_hash() == arch.canonical_hash()


def test_hash_ignores_the_order_of_attention_inputs_at_different_levels():
    arch = nasfpn()
    assert _replace_cell(arch, 0, input_a=3, input_b=1).canonical_hash() == arch.canonical_hash()


def test_hash_keeps_attention_roles_at_equal_levels():
    # The output cell gp(n5, n6)@3 reads two level-4 entries, so which one gates the other matters.
    base = Architecture(
        (
            MergingCell(0, 1, 4, "sum"),
            MergingCell(1, 2, 4, "sum"),
            MergingCell(5, 6, 3, "global_pool"),
            MergingCell(7, 1, 4, "sum"),
            MergingCell(8, 2, 5, "sum"),
            MergingCell(9, 3, 6, "sum"),
            MergingCell(10, 4, 7, "sum"),
        )
    )
    swapped = _replace_cell(base, 2, input_a=6, input_b=5)
    # n5 = sum(P3, P4), n6 = sum(P4, P5): different functions, so fine/coarse roles matter.
    assert swapped.canonical_hash() != base.canonical_hash()


def test_hash_ignores_the_order_of_independent_intermediate_cells():
    arch = Architecture(
        (
            MergingCell(0, 1, 4, "sum"),
            MergingCell(2, 3, 6, "global_pool"),
            MergingCell(5, 6, 3, "sum"),
            MergingCell(7, 6, 4, "sum"),
            MergingCell(8, 2, 5, "global_pool"),
            MergingCell(9, 5, 6, "sum"),
            MergingCell(10, 4, 7, "sum"),
        )
    )
    reordered = Architecture(
        (
            MergingCell(2, 3, 6, "global_pool"),
            MergingCell(0, 1, 4, "sum"),
            MergingCell(6, 5, 3, "sum"),
            MergingCell(7, 5, 4, "sum"),
            MergingCell(8, 2, 5, "global_pool"),
            MergingCell(9, 6, 6, "sum"),
            MergingCell(10, 4, 7, "sum"),
        )
    )
    assert reordered.canonical_hash() == arch.canonical_hash()


def test_hash_treats_unused_additions_as_summed_inputs():
    # Output sum(P3, n5)@3 with P3-level entry n6 unused == output sum(P3, n6)@3 with n5 unused.
    def build(read: int) -> Architecture:
        return Architecture(
            (
                MergingCell(1, 2, 3, "sum"),
                MergingCell(2, 4, 3, "global_pool"),
                MergingCell(0, read, 3, "sum"),
                MergingCell(7, 1, 4, "sum"),
                MergingCell(8, 2, 5, "sum"),
                MergingCell(9, 3, 6, "sum"),
                MergingCell(10, 4, 7, "sum"),
            )
        )

    assert build(5) != build(6)
    assert build(5).canonical_hash() == build(6).canonical_hash()


@pytest.mark.parametrize(
    "changes",
    [
        (0, {"op": "sum"}),
        (1, {"output_level": 5}),
        (2, {"input_a": 1}),
        (4, {"op": "sum"}),
        (6, {"input_b": 8}),
    ],
)
def test_hash_differs_when_the_function_differs(changes):
    index, change = changes
    assert _replace_cell(nasfpn(), index, **change).canonical_hash() != nasfpn().canonical_hash()


def test_hash_depends_on_levels():
    assert nasfpn().canonical_hash() != nasfpn((2, 3, 4, 5, 6)).canonical_hash()
    assert nasfpn().canonical_hash() != fpn().canonical_hash()


def _symmetric_variant(arch: Architecture, rng: random.Random) -> Architecture:
    """Apply random function-preserving edits: input swaps and swaps of independent intermediate cells."""
    cells = list(arch.cells)
    pool_levels = arch.pool_levels()
    num_inputs = len(arch.levels)
    for index, cell in enumerate(cells):
        different_levels = pool_levels[cell.input_a] != pool_levels[cell.input_b]
        if (cell.op == "sum" or different_levels) and rng.random() < 0.5:
            cells[index] = MergingCell(cell.input_b, cell.input_a, cell.output_level, cell.op)
    for index in range(arch.num_intermediate - 1):
        first, second = num_inputs + index, num_inputs + index + 1
        if first in (cells[index + 1].input_a, cells[index + 1].input_b) or rng.random() < 0.5:
            continue
        rename = {first: second, second: first}
        cells[index], cells[index + 1] = cells[index + 1], cells[index]
        cells = [
            MergingCell(rename.get(c.input_a, c.input_a), rename.get(c.input_b, c.input_b), c.output_level, c.op)
            for c in cells
        ]
    return Architecture(tuple(cells), arch.levels)


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), num_cells=st.integers(5, 9))
def test_hash_is_invariant_under_symmetries(seed, num_cells):
    rng = random.Random(seed)
    arch = SearchSpace(num_cells=num_cells).random_architecture(rng)
    assert _symmetric_variant(arch, rng).canonical_hash() == arch.canonical_hash()


def test_random_architectures_hash_apart():
    # Equivalent cell lists are vanishingly rare among random draws from this large space, so every
    # distinct draw must get its own hash (no false collisions from a too-coarse canonical form).
    rng = random.Random(0)
    space = SearchSpace()
    archs = {space.random_architecture(rng) for _ in range(2000)}
    assert len({arch.canonical_hash() for arch in archs}) == len(archs)


def test_search_space_round_trip_and_rules():
    space = SearchSpace()
    assert space.architecture(space.decisions(nasfpn())) == nasfpn()
    with pytest.raises(ArchitectureError, match="has 5 cells"):
        space.decisions(fpn())
    with pytest.raises(ArchitectureError, match="num_cells: must be at least"):
        SearchSpace(num_cells=3)
    with pytest.raises(ArchitectureError, match="levels: must be ascending"):
        SearchSpace(levels=(3, 5))
