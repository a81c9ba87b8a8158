"""``prefect-remote machines``: list machines, read their logs, end them."""

from __future__ import annotations

import time
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from prefect_remote.errors import RemoteError
from prefect_remote.providers import get_provider
from prefect_remote.units import format_duration

app = typer.Typer(help="List machines, read their logs, end them.", no_args_is_help=True)
console = Console()

ProviderOption = Annotated[
    Optional[str], typer.Option("--provider", "-p", help="Provider name (default: PREFECT_REMOTE_PROVIDER, else local).")
]
TagOption = Annotated[list[str], typer.Option("--tag", "-t", help="Only machines with this tag, as key=value. Repeatable.")]


def _tags(pairs: list[str]) -> dict[str, str]:
    tags = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"--tag {pair!r}: expected key=value, e.g. --tag team=data")
        tags[key] = value
    return tags


def _provider(name: str | None):
    try:
        return get_provider(name)
    except RemoteError as error:
        raise typer.BadParameter(str(error), param_hint="--provider") from None


@app.command("ls")
def list_machines(
    provider: ProviderOption = None,
    tag: TagOption = [],
    all_: Annotated[bool, typer.Option("--all", "-a", help="Include machines that have ended (kept for a day).")] = False,
) -> None:
    """List machines: id, state, size, age, tags, owner."""
    machines = _provider(provider).list(_tags(tag), include_terminated=all_)
    table = Table(box=None, header_style="bold")
    for column in ("ID", "PROVIDER", "STATE", "TYPE", "SPEC", "REGION", "AGE", "TAGS", "OWNER", "ENDED BECAUSE"):
        table.add_column(column, overflow="fold")
    for m in machines:
        state = {"running": "[green]running[/]", "pending": "[yellow]pending[/]"}.get(m.state, "[dim]terminated[/]")
        table.add_row(
            m.id,
            m.provider,
            state,
            m.instance_type + (" (spot)" if m.spot else ""),
            m.spec,
            m.region or "",
            format_duration(m.age),
            ",".join(f"{k}={v}" for k, v in m.tags.items()),
            m.owner or "",
            m.reason or "",
        )
    if machines:
        console.print(table)
    else:
        console.print("No machines." + ("" if all_ else " (--all includes ended ones)"))


@app.command("logs")
def logs(
    machine_id: Annotated[str, typer.Argument(help="Machine id, from `prefect-remote machines ls`.")],
    provider: ProviderOption = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the machine ends.")] = False,
) -> None:
    """Print a machine's boot, agent and payload output."""
    chosen = _provider(provider)
    offset = 0
    try:
        while True:
            chunk = chosen.logs(machine_id, offset=offset)
            if chunk.text:
                typer.echo(chunk.text, nl=False)
            offset = chunk.next_offset
            if not follow or (not chunk.text and not chosen.describe(machine_id).alive):
                break
            time.sleep(0.5)
    except RemoteError as error:
        raise typer.BadParameter(str(error), param_hint="MACHINE_ID") from None


@app.command("rm")
def remove(
    machine_ids: Annotated[Optional[list[str]], typer.Argument(help="Machine ids to end.")] = None,
    provider: ProviderOption = None,
    all_: Annotated[bool, typer.Option("--all", help="End every running machine of the provider.")] = False,
    tag: TagOption = [],
    wait: Annotated[float, typer.Option(help="Seconds to wait for them to end (0: don't wait).")] = 30.0,
) -> None:
    """End machines by id, by tag, or all of them."""
    if not (machine_ids or all_ or tag):
        raise typer.BadParameter("name machine ids, or use --all or --tag key=value")
    chosen = _provider(provider)
    ids = list(machine_ids or [])
    if all_ or tag:
        ids += [m.id for m in chosen.list(_tags(tag))]
    try:
        chosen.terminate(ids, reason="terminated with `prefect-remote machines rm`")
    except RemoteError as error:
        raise typer.BadParameter(str(error), param_hint="MACHINE_IDS") from None
    try:
        chosen.wait(ids, timeout=wait, poll=0.1)
    except TimeoutError as error:
        console.print(f"Ending {len(ids)} machine(s); {error}")
        return
    console.print(f"Ended {len(ids)} machine(s).")
