"""``prefect-remote sandbox aws``: a sandbox AWS on this computer for trying a setup offline."""

from __future__ import annotations

import shlex
import signal
import sys
import threading
from typing import Annotated

import typer

app = typer.Typer(help="Emulated clouds on this computer: try prefect-remote offline, with the real cloud clients.", no_args_is_help=True)


@app.command("aws")
def aws(
    region: Annotated[str, typer.Option(help="The sandbox's AWS region.")] = "us-east-1",
    port: Annotated[int, typer.Option(help="Port of the emulated AWS endpoint on 127.0.0.1 (0: any free port).")] = 0,
    expose: Annotated[
        list[int] | None,
        typer.Option(help="A port of this host's loopback that instances reach at $PREFECT_REMOTE_SANDBOX_HOST:PORT (default: 4200, a Prefect server's); repeatable."),
    ] = None,
) -> None:
    """Start a sandbox AWS (moto, plus instances that boot as local machines) and serve until Ctrl-C.

    It prints one `export NAME=VALUE` line per variable a shell needs to use it, then `sandbox ready`.
    In another shell:

        prefect-remote sandbox aws > sandbox.env &
        until grep -q '^sandbox ready' sandbox.env; do sleep 0.2; done
        eval "$(grep '^export ' sandbox.env)"
    """
    from prefect_remote.settings import get_settings
    from prefect_remote.testing.aws import SandboxAWS

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    sandbox = SandboxAWS(port=port, region=region, home=get_settings().home / "sandbox" / "aws", expose=tuple(expose or (4200,)))
    sandbox.start()  # (a failure to start says why, and leaves nothing to end)
    try:
        for name, value in sandbox.exports().items():
            print(f"export {name}={shlex.quote(value)}", flush=True)
        print(f"# instances reach this host at {sandbox.sandbox_host} (http://{sandbox.sandbox_host}:4200/api)", flush=True)
        print("sandbox ready", flush=True)
        stop.wait()
    finally:
        ended = sandbox.end_all_instances()
        sandbox.stop()
        print(f"sandbox stopped; {len(ended)} instance(s) ended", file=sys.stderr, flush=True)
