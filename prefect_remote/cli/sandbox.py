"""``prefect-remote sandbox aws|gcp``: a sandbox cloud on this computer for trying a setup offline."""

from __future__ import annotations

import shlex
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from prefect_remote.sandbox.instances import SandboxCloud

# Ports of this host's loopback the sandbox's instances reach (a Prefect server's).
Expose = Annotated[
    list[int] | None,
    typer.Option(
        help="A port of this host's loopback that instances reach at $PREFECT_REMOTE_SANDBOX_HOST:PORT "
        "(default: 4200, a Prefect server's); repeatable."
    ),
]
EnforceIAM = Annotated[
    bool,
    typer.Option(
        "--enforce-iam/--no-enforce-iam",
        help="Check every call against the caller's IAM permissions, as the cloud does; the exported credentials "
        "then hold exactly the docs' launcher and provisioning permissions.",
    ),
]
WarmCache = Annotated[
    bool,
    typer.Option(
        "--warm-cache/--stock",
        help="Boot instances from a warm image (this host's uv cache, uv and agent environments shared by every "
        "instance) instead of a stock one, which downloads uv and builds the agent on each boot, as a new VM does.",
    ),
]
app = typer.Typer(help="Emulated clouds on this computer: try prefect-remote offline, with the real cloud clients.", no_args_is_help=True)


@app.command("aws")
def aws(
    region: Annotated[str, typer.Option(help="The sandbox's AWS region.")] = "us-east-1",
    port: Annotated[int, typer.Option(help="Port of the emulated AWS endpoint on 127.0.0.1 (0: any free port).")] = 0,
    expose: Expose = None,
    enforce_iam: EnforceIAM = True,
    warm_cache: WarmCache = False,
) -> None:
    """Start a sandbox AWS (moto, plus instances that boot as local machines) and serve until Ctrl-C.

    It prints one `export NAME=VALUE` line per variable a shell needs to use it, then `sandbox ready`.
    In a shell (it serves in the background; `kill %1` stops it):

        prefect-remote sandbox aws > sandbox.env &
        until grep -q '^sandbox ready' sandbox.env; do sleep 0.2; done
        eval "$(grep '^export ' sandbox.env)"
    """
    from prefect_remote.sandbox.aws import SandboxAWS
    from prefect_remote.settings import get_settings

    home = get_settings().home / "sandbox" / "aws"
    exposed = tuple(expose or (4200,))
    _serve(home, SandboxAWS(port=port, region=region, home=home, expose=exposed, enforce_iam=enforce_iam, warm_cache=warm_cache))


@app.command("gcp")
def gcp(
    region: Annotated[str, typer.Option(help="The sandbox's GCP region.")] = "us-central1",
    port: Annotated[int, typer.Option(help="Port of the emulated Google APIs on 127.0.0.1 (0: any free port).")] = 0,
    expose: Expose = None,
    enforce_iam: EnforceIAM = True,
    warm_cache: WarmCache = False,
) -> None:
    """Start a sandbox GCP (Cloud Run, Compute Engine, Secret Manager, Cloud Logging, GCS) and serve until Ctrl-C.

    Its Cloud Run jobs and Compute Engine VMs run as local machines. It prints one `export NAME=VALUE`
    line per variable a shell needs to use it, then `sandbox ready`.
    In a shell (it serves in the background; `kill %1` stops it):

        prefect-remote sandbox gcp > sandbox.env &
        until grep -q '^sandbox ready' sandbox.env; do sleep 0.2; done
        eval "$(grep '^export ' sandbox.env)"
    """
    from prefect_remote.sandbox.gcp.sandbox import SandboxGCP
    from prefect_remote.settings import get_settings

    home = get_settings().home / "sandbox" / "gcp"
    exposed = tuple(expose or (4200,))
    _serve(home, SandboxGCP(region=region, port=port, home=home, expose=exposed, enforce_iam=enforce_iam, warm_cache=warm_cache))


def _serve(home: Path, sandbox: SandboxCloud) -> None:
    """Starts ``sandbox`` and its container images (a registry, an engine, a ready Python image:
    under ``home``, when this host can run them), prints its exports and `sandbox ready`, serves until
    SIGINT or SIGTERM, then ends every instance it ran and stops."""
    from prefect_remote.sandbox.images import SandboxImages, images_unavailable

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    sandbox.start()  # (a failure to start says why, and leaves nothing to end)
    images = None
    try:
        unavailable = images_unavailable()
        if unavailable:
            print(f"# {unavailable}", flush=True)
        else:
            images = SandboxImages(home / "images")
            if not images.warm:
                print("building the sandbox's Python image (once: cached for the next start)", file=sys.stderr, flush=True)
            images.start()
            sandbox.use_images(images)
        for name, value in sandbox.exports().items():
            print(f"export {name}={shlex.quote(value)}", flush=True)
        print(f"# instances reach this host at {sandbox.sandbox_host} (http://{sandbox.sandbox_host}:4200/api)", flush=True)
        print("sandbox ready", flush=True)
        stop.wait()
    finally:
        ended = sandbox.end_all_instances()
        sandbox.stop()
        if images is not None:
            images.stop()
        print(f"sandbox stopped; {len(ended)} instance(s) ended", file=sys.stderr, flush=True)
