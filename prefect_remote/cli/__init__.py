"""The ``prefect-remote`` command line."""

from __future__ import annotations

import typer

from prefect_remote.cli.aws import app as aws_app
from prefect_remote.cli.doctor import doctor
from prefect_remote.cli.env import app as env_app
from prefect_remote.cli.gcp import app as gcp_app
from prefect_remote.cli.machines import app as machines_app
from prefect_remote.cli.push import app as push_app
from prefect_remote.cli.sandbox import app as sandbox_app

app = typer.Typer(
    name="prefect-remote",
    help="Run Prefect flows and Dask work on machines you choose. With no cloud configured, machines are "
    "isolated process trees on this computer (the local provider).",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
app.add_typer(machines_app, name="machines")
app.add_typer(env_app, name="env")
app.add_typer(push_app, name="push")
app.add_typer(aws_app, name="aws")
app.add_typer(gcp_app, name="gcp")
app.add_typer(sandbox_app, name="sandbox")
app.command("doctor")(doctor)


@app.command()
def info() -> None:
    """Show the settings in force, the providers available, and local isolation on this host."""
    from rich.console import Console

    from prefect_remote import __version__
    from prefect_remote.cli.output import key, print_table, table, text
    from prefect_remote.errors import RemoteError
    from prefect_remote.providers import available_providers, provider_variables
    from prefect_remote.providers.local.isolation import namespace_unavailable
    from prefect_remote.settings import get_settings

    try:
        settings = get_settings()
    except RemoteError as error:
        raise typer.BadParameter(str(error)) from None
    facts = table(key(""), text(""), title=f"prefect-remote {__version__}", show_header=False)
    for name, value in settings.model_dump().items():
        facts.add_row(f"PREFECT_REMOTE_{name.upper()}", str(value))
    for variable, value in sorted(provider_variables().items()):
        facts.add_row(variable, value)
    facts.add_row("providers", ", ".join(sorted(available_providers())))
    facts.add_row("local namespace isolation", namespace_unavailable() or "available")
    print_table(Console(), facts)


def main() -> None:
    app()
