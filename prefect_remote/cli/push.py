"""``prefect-remote push serve``: submit runs of remote:push pools from a process of your own.

Use it where the push service cannot run inside the server (a server without prefect-remote
installed, several server replicas with services off, Prefect Cloud's API with your own pools).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

import typer

app = typer.Typer(help="Submit runs of remote:push pools (fallback to the in-server push service).", no_args_is_help=True)


@app.command("serve")
def serve(
    pool: Annotated[list[str], typer.Option("--pool", "-p", help="Work pool to serve. Repeatable; default: every remote:push pool.")] = [],
    interval: Annotated[float, typer.Option(help="Seconds between looks for new or deleted pools.")] = 5.0,
) -> None:
    """Run the push executor until interrupted: one worker per remote:push pool, as the server would."""
    from prefect.settings import get_current_settings

    from prefect_remote.push.executor import PushExecutor

    if not get_current_settings().api.url:
        raise typer.BadParameter("PREFECT_API_URL is not set: point it at your Prefect API (e.g. http://127.0.0.1:4200/api)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    typer.echo(f"Submitting runs of {', '.join(pool) if pool else 'every remote:push pool'}; Ctrl-C to stop.")
    executor = PushExecutor(pool or None)

    async def run() -> None:
        served = await executor.sync()
        for name in set(pool) - set(served):
            typer.echo(
                f"warning: no remote:push work pool named {name!r} (yet); create it with "
                f"`prefect work-pool create --type remote:push {name}`",
                err=True,
            )
        await executor.serve_forever(interval)

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        typer.echo("Stopped.")
