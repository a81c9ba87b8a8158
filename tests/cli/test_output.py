"""The table helpers on their own: what fits is a table, what does not is one block per row."""

from __future__ import annotations

import io

from rich.console import Console

from prefect_remote.cli.output import key, print_table, table, text


def render(width: int) -> str:
    console = Console(file=io.StringIO(), width=width)
    rows = table(key("ID"), key("STATE"), text("REASON"))
    rows.add_row("m-0123456789ab", "terminated", "payload exited with code 3 after a very long while")
    rows.add_row("m-ba9876543210", "running", "")
    print_table(console, rows)
    return console.file.getvalue()


def test_a_table_that_fits_wraps_only_its_text_columns():
    lines = render(50).splitlines()
    assert lines[0].split() == ["ID", "STATE", "REASON"]
    assert lines[1].startswith("m-0123456789ab  terminated  payload")
    assert len(lines) > 3 and all(len(line) <= 50 for line in lines)  # the reason wrapped


def test_a_table_too_narrow_for_its_ids_becomes_one_block_per_row():
    lines = render(30).splitlines()
    assert all(len(line) <= 30 for line in lines)
    assert [line.split() for line in lines[:2]] == [["ID", "m-0123456789ab"], ["STATE", "terminated"]]
    assert ["ID", "m-ba9876543210"] in [line.split() for line in lines]
    assert sum(line.startswith("REASON") for line in lines) == 1  # empty cells are left out
