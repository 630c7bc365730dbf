"""Text tables for the command line: `status` and `poll` print one row per source, and a
thousand sources are common. rich's tables measure and wrap every cell (0.6 s for 1,000 rows
here, more than the rest of `status`); this draws the same kind of box in a few milliseconds.
Cells may hold several lines; East Asian wide characters count two columns."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence


def width(text: str) -> int:
    """The columns `text` takes in a terminal."""
    if text.isascii():
        return len(text)
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _pad(text: str, size: int, right: bool) -> str:
    gap = " " * (size - width(text))
    return gap + text if right else text + gap


def render(
    title: str,
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    right: frozenset[int] = frozenset(),
) -> str:
    """`rows` under `headers` in a box, each column as wide as its widest line; the columns
    whose index is in `right` are aligned right. Ends with a newline."""
    split = [[cell.split("\n") for cell in row] for row in rows]
    sizes = [width(h) for h in headers]
    for row in split:
        for i, lines in enumerate(row):
            sizes[i] = max(sizes[i], *(width(line) for line in lines))

    def line(cells: Sequence[str], bar: str = "│") -> str:
        padded = (_pad(c, sizes[i], i in right) for i, c in enumerate(cells))
        return f"{bar} " + f" {bar} ".join(padded) + f" {bar}"

    def rule(left: str, middle: str, end: str, dash: str = "─") -> str:
        return left + middle.join(dash * (s + 2) for s in sizes) + end

    # rich's "heavy head" box, as these tables were drawn before.
    out = [title.center(sum(sizes) + 3 * len(sizes) + 1).rstrip(), rule("┏", "┳", "┓", "━")]
    out.append(line(headers, "┃"))
    out.append(rule("┡", "╇", "┩", "━"))
    for row in split:
        height = max(len(lines) for lines in row)
        for k in range(height):
            out.append(line([lines[k] if k < len(lines) else "" for lines in row]))
    out.append(rule("└", "┴", "┘"))
    return "\n".join(out) + "\n"
