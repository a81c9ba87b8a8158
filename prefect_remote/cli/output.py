"""What every command prints: tables that fit the terminal, and JSON for scripts.

Rich fits a table to the console's width by wrapping the columns it is allowed to wrap. Left to
itself it wraps every column, ids included, into fragments; so each column says what it holds:
``key`` (ids, states, types: never wrapped, so what is shown can be copied), ``number`` (short
values whose header may wrap) or ``text`` (free text: wrapped at spaces, long words folded, and it
takes whatever width the others leave). ``print_table`` prints a table only where its key columns
fit whole, and each row as its own block otherwise (``machines ls --wide`` in 80 columns).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.measure import Measurement
from rich.table import Column, Table

# Below this, a text column is more line breaks than text (and folds instance types, sizes, tags):
# a table that cannot leave its text columns this much beside its key columns is printed as one
# block per row instead.
TEXT_MIN_WIDTH = 12

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of a table.")]


def key(header: str) -> Column:
    """A column of ids and short tokens: never wrapped, never squeezed while a text column can give way."""
    return Column(header, no_wrap=True)


def number(header: str) -> Column:
    """A column of short values: right-aligned, and only its header wraps when space is short."""
    return Column(header, justify="right")


def text(header: str) -> Column:
    """A column of free text (reasons, tags, URLs): wrapped at spaces, words longer than the column
    folded, so nothing is cut off however narrow the terminal."""
    return Column(header, overflow="fold")


def table(*columns: Column, **options: Any) -> Table:
    """A borderless table (borders cost width the text columns need) with the house header style."""
    return Table(*columns, box=None, header_style="bold", pad_edge=False, **options)


def print_json(data: Any) -> None:
    """``data`` as indented JSON with sorted keys: plain text (no colour, no wrapping) a script can parse."""
    typer.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def print_table(console: Console, rows: Table) -> None:
    """``rows`` as a table if it fits the console with its key columns whole, else one block per row
    (field, value): a narrow terminal then gets longer output rather than cut ids."""
    console.print(rows if _fits(console, rows) else _blocks(rows))


def _fits(console: Console, rows: Table) -> bool:
    """Whether the key columns at full width, the others at ``TEXT_MIN_WIDTH``, and the gaps fit."""
    needed = 2 * (len(rows.columns) - 1)  # one space of padding either side of each gap
    for column in rows.columns:
        widest = max(Measurement.get(console, console.options, cell).maximum for cell in [column.header, *column.cells])
        needed += widest if column.no_wrap else min(widest, TEXT_MIN_WIDTH)
    return needed <= console.width


def _blocks(rows: Table) -> Table:
    """Each row of ``rows`` as lines of (header, cell), empty cells left out, a blank line between rows."""
    blocks = table(key(""), text(""), show_header=False)
    columns = [(column.header, list(column.cells)) for column in rows.columns]
    for index in range(rows.row_count):
        if index:
            blocks.add_row()
        for header, cells in columns:
            if cells[index] != "":
                blocks.add_row(f"[bold]{header}[/]", cells[index])
    return blocks
