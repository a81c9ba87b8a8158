"""What ``prefect-remote aws teardown`` and ``prefect-remote gcp teardown`` share: asking before
removing everything, and reporting what was removed or why not."""

from __future__ import annotations

import sys
from collections.abc import Callable

import typer


def confirm_everything(yes: bool, question: str, without_a_terminal: str) -> None:
    """Asks ``question`` before a teardown of everything, unless ``yes``; with no terminal to ask on,
    refuses with ``without_a_terminal`` (what to pass instead)."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise typer.BadParameter(without_a_terminal)
    typer.confirm(question, abort=True)


def report_removed(teardown: Callable[[], list[str]]) -> None:
    """Runs ``teardown`` (which prints each step) and says how much it removed; a refusal or error
    is printed as one line and exits 1."""
    from prefect_remote.errors import RemoteError

    try:
        removed = teardown()
    except RemoteError as error:
        typer.echo(f"Error: {error}", err=True)
        raise typer.Exit(1) from None
    if removed:
        typer.echo(f"Removed {len(removed)} resource(s).")
