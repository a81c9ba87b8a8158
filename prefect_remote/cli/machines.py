"""``prefect-remote machines``: list machines, read their logs, end them."""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from prefect_remote.cli.output import JsonOption, key, print_json, print_table, table, text
from prefect_remote.errors import RemoteError
from prefect_remote.lease import default_user
from prefect_remote.providers import get_provider
from prefect_remote.providers.base import Machine
from prefect_remote.units import format_duration

app = typer.Typer(help="List machines, read their logs, end them.", no_args_is_help=True)
console = Console()

ProviderOption = Annotated[
    str | None, typer.Option("--provider", "-p", help="Provider name (default: PREFECT_REMOTE_PROVIDER, else local).")
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
    wide: Annotated[
        bool,
        typer.Option("--wide", "-w", help="Also show provider, spec, region, tags, owner and addresses (the exit code is in the reason)."),
    ] = False,
    json_: JsonOption = False,
) -> None:
    """List machines: id, state, type, age and why it ended; --wide for the rest, --json for scripts."""
    machines = _provider(provider).list(_tags(tag), include_terminated=all_)
    if json_:
        print_json([dataclasses.asdict(m) for m in machines])
    elif machines:
        print_table(console, _machine_table(machines, wide))
    else:
        console.print("No machines." + ("" if all_ else " (--all includes ended ones)"))


# (header, column kind, shown without --wide), in display order. The essentials fit 80 columns; all
# of them need about 160, and in a narrower terminal print_table shows one block per machine.
MACHINE_COLUMNS = [
    ("ID", key, True),
    ("PROVIDER", key, False),
    ("STATE", key, True),
    ("TYPE", key, True),
    ("SPEC", text, False),
    ("REGION", key, False),
    ("AGE", key, True),
    ("TAGS", text, False),
    ("OWNER", text, False),
    ("ADDRESS", key, False),
    ("PUBLIC ADDRESS", key, False),
    ("ENDED BECAUSE", text, True),
]


def _machine_table(machines: list[Machine], wide: bool) -> Table:
    """The essential columns, or all of them with ``wide``."""
    shown = [(header, kind) for header, kind, essential in MACHINE_COLUMNS if essential or wide]
    result = table(*(kind(header) for header, kind in shown))
    for m in machines:
        cells = _machine_cells(m)
        result.add_row(*(cells[header] for header, _ in shown))
    return result


def _machine_cells(m: Machine) -> dict[str, str]:
    """Every column's text for one machine; tags are joined with spaces so they wrap between tags."""
    return {
        "ID": m.id,
        "PROVIDER": m.provider,
        "STATE": {"running": "[green]running[/]", "pending": "[yellow]pending[/]"}.get(m.state, "[dim]terminated[/]"),
        "TYPE": m.instance_type + (" (spot)" if m.spot else ""),
        "SPEC": m.spec,
        "REGION": m.region or "",
        "AGE": format_duration(m.age),
        "TAGS": " ".join(f"{k}={v}" for k, v in m.tags.items()),
        "OWNER": m.owner or "",
        "ADDRESS": m.private_address or "",
        "PUBLIC ADDRESS": m.public_address or "",
        "ENDED BECAUSE": m.reason or "",
    }


@app.command("logs")
def logs(
    machine_id: Annotated[str, typer.Argument(help="Machine id, from `prefect-remote machines ls`.")],
    provider: ProviderOption = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the machine ends.")] = False,
) -> None:
    """Print a machine's boot, agent and payload output."""
    chosen = _provider(provider)
    cursor = None  # opaque: whatever the provider reads on from
    try:
        while True:
            chunk = chosen.logs(machine_id, cursor=cursor)
            if chunk.text:
                typer.echo(chunk.text, nl=False)
            cursor = chunk.cursor
            if not follow or (not chunk.text and not chosen.describe(machine_id).alive):
                break
            time.sleep(0.5)
    except RemoteError as error:
        raise typer.BadParameter(str(error), param_hint="MACHINE_ID") from None


@app.command("rm")
def remove(
    machine_ids: Annotated[list[str] | None, typer.Argument(help="Machine ids to end (anyone's).")] = None,
    provider: ProviderOption = None,
    all_: Annotated[bool, typer.Option("--all", help="End every running machine of yours (this user on this host).")] = False,
    tag: TagOption = [],
    everyone: Annotated[
        bool, typer.Option("--everyone", help="With --all or --tag: other users', flow runs' and clusters' machines too (listed first).")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="With --everyone: do not ask before ending them.")] = False,
    wait: Annotated[float, typer.Option(help="Seconds to wait for them to end (0: don't wait).")] = 30.0,
) -> None:
    """End machines by id, or yours by tag or all of them; --everyone for other owners' too."""
    if not (machine_ids or all_ or tag):
        raise typer.BadParameter("name machine ids, or use --all or --tag key=value")
    if everyone and not (all_ or tag):
        raise typer.BadParameter("--everyone widens --all or --tag; add one of them (ids are ended whoever owns them)")
    chosen = _provider(provider)
    ids = list(machine_ids or [])
    if all_ or tag:
        matching = chosen.list(_tags(tag))
        user = default_user()
        others = [m for m in matching if m.user != user]
        if everyone and others:
            _confirm_everyone(others, yes)
        elif others:
            console.print(
                f"Leaving {len(others)} machine(s) of other owners running (`machines ls --wide` shows them; --everyone ends them too)."
            )
        ids += [m.id for m in matching if everyone or m.user == user]
    if not ids:
        console.print(f"No running machines of yours ({default_user()}) to end.")
        return
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


def _confirm_everyone(others: list[Machine], yes: bool) -> None:
    """Lists the other owners' machines --everyone would end, then asks (unless ``yes``); refuses
    to guess without a terminal to ask on."""
    console.print(f"--everyone also ends {len(others)} machine(s) that are not yours ({default_user()}):")
    shown = table(key("ID"), text("OWNER"), key("AGE"), text("TAGS"))
    for m in others:
        cells = _machine_cells(m)
        shown.add_row(cells["ID"], cells["OWNER"] or "(none)", cells["AGE"], cells["TAGS"])
    print_table(console, shown)
    if yes:
        return
    if not sys.stdin.isatty():
        raise typer.BadParameter(
            "not ending other owners' machines without a terminal to confirm on; pass --yes to end them", param_hint="--everyone"
        )
    if not typer.confirm(f"End these {len(others)} machine(s) too?", default=False):
        raise typer.Exit(1)
