"""SVG drawings of architectures, laid out like the NAS-FPN paper's figures.

One row per pyramid level (the coarsest on top), the inputs in the first column and every cell in a
column of its own in pool order, so information flows left to right. Output cells are filled, the
additions of unused same-level entries are dashed.
"""

from __future__ import annotations

from xml.sax.saxutils import escape

from search_spaces.architecture import Architecture

_COLUMN = 96
_ROW = 64
_MARGIN_X = 56
_MARGIN_TOP = 48
_RADIUS = 18
_COLORS = {
    "input": ("#e8e8e8", "#555555"),
    "intermediate": ("#dbe9f6", "#2f6ea8"),
    "output": ("#f7c873", "#a86a00"),
}
_EDGE = "#6b6b6b"


def render_svg(architecture: Architecture, title: str | None = None) -> str:
    """Return a standalone SVG document drawing ``architecture``."""
    levels = architecture.levels
    pool_levels = architecture.pool_levels()
    num_inputs = len(levels)
    width = max(720, 2 * _MARGIN_X + _COLUMN * len(architecture.cells))
    height = _MARGIN_TOP + _ROW * len(levels) + 40

    def position(entry: int) -> tuple[float, float]:
        column = 0 if entry < num_inputs else entry - num_inputs + 1
        row = levels[-1] - pool_levels[entry]
        return _MARGIN_X + column * _COLUMN, _MARGIN_TOP + _ROW * row + _ROW / 2

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif" font-size="12">',
        "<defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"7\" "
        f'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{_EDGE}"/>'
        "</marker></defs>",
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]
    if title:
        parts.append(f'<text x="{_MARGIN_X - 40}" y="24" font-size="15" font-weight="bold">{escape(title)}</text>')
    for level in levels:
        _, y = position(levels.index(level))
        parts.append(
            f'<line x1="{_MARGIN_X - 40}" y1="{y}" x2="{width - 16}" y2="{y}" stroke="#f0f0f0"/>'
            f'<text x="{_MARGIN_X - 44}" y="{y + 4}" fill="#999999" font-size="11">P{level}</text>'
        )
    for index, cell, unused in architecture.cell_inputs():
        target = num_inputs + index
        for entry in (cell.input_a, cell.input_b):
            parts.append(_edge(position(entry), position(target), dashed=False))
        for entry in unused:
            parts.append(_edge(position(entry), position(target), dashed=True))
    for entry in range(num_inputs):
        parts.append(_node(position(entry), f"P{levels[entry]}", "input", f"input P{levels[entry]}"))
    for index, cell in enumerate(architecture.cells):
        kind = "output" if architecture.is_output(index) else "intermediate"
        label = "+" if cell.op == "sum" else "GP"
        tooltip = f"#{num_inputs + index}: {cell.op}({cell.input_a}, {cell.input_b}) at P{cell.output_level}"
        x, y = position(num_inputs + index)
        parts.append(_node((x, y), label, kind, tooltip))
        if kind == "output":
            parts.append(
                f'<text x="{x}" y="{y - _RADIUS - 6}" text-anchor="middle" font-weight="bold" '
                f'fill="{_COLORS["output"][1]}">P{cell.output_level}\'</text>'
            )
    parts.append(_legend(height - 16))
    parts.append("</svg>")
    return "\n".join(parts)


def _node(center: tuple[float, float], label: str, kind: str, tooltip: str) -> str:
    fill, stroke = _COLORS[kind]
    x, y = center
    return (
        f'<g class="node {kind}"><title>{escape(tooltip)}</title>'
        f'<circle cx="{x}" cy="{y}" r="{_RADIUS}" fill="{fill}" stroke="{stroke}" stroke-width="1.5"/>'
        f'<text x="{x}" y="{y + 4}" text-anchor="middle">{escape(label)}</text></g>'
    )


def _edge(source: tuple[float, float], target: tuple[float, float], dashed: bool) -> str:
    """A curve from the right of ``source`` to the left of ``target``."""
    (x1, y1), (x2, y2) = source, target
    x1 += _RADIUS
    x2 -= _RADIUS
    bend = max(24.0, (x2 - x1) / 2)
    # A straight edge along a row would run through the nodes it skips: lift it into an arc.
    lift = 0.7 * _ROW if y1 == y2 and x2 - x1 > _COLUMN else 0.0
    dash = ' stroke-dasharray="4 3"' if dashed else ""
    return (
        f'<path class="edge" d="M{x1},{y1} C{x1 + bend},{y1 - lift} {x2 - bend},{y2 - lift} {x2},{y2}" '
        'fill="none" '
        f'stroke="{_EDGE}" stroke-width="1.2"{dash} marker-end="url(#arrow)"/>'
    )


def _legend(y: float) -> str:
    items = [
        ("input", "input"),
        ("intermediate", "intermediate cell"),
        ("output", "output cell"),
        (None, "+ sum"),
        (None, "GP global-pooling attention"),
        (None, "dashed: unused entry added"),
    ]
    parts = []
    x = _MARGIN_X - 40
    for kind, text in items:
        if kind is not None:
            fill, stroke = _COLORS[kind]
            parts.append(f'<circle cx="{x + 6}" cy="{y - 4}" r="6" fill="{fill}" stroke="{stroke}"/>')
            x += 16
        parts.append(f'<text x="{x}" y="{y}" fill="#555555" font-size="11">{escape(text)}</text>')
        x += 20 + 6 * len(text)
    return "".join(parts)
