"""Small Markdown building blocks shared by the reports: table heads and rows."""

from __future__ import annotations

from collections.abc import Sequence


def table_head(columns: Sequence[str]) -> list[str]:
    """A table's header line and its separator line."""
    return [table_row(columns), "|" + "---|" * len(columns)]


def table_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def ratio(value: float | None, missing: str = "–") -> str:
    """``×1.23``, or ``missing`` where there is no ratio."""
    return f"×{value:.2f}" if value else missing
