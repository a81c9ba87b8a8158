"""The main job, end to end, on the local provider (`make demo`):

1. start a real Prefect server (SQLite under .demo/, bound to loopback);
2. `prefect work-pool create --type remote:push --provision-infra example-remote-pool`;
3. `prefect deploy --prefect-file prefect.yaml.example --all` (the build step syncs this environment);
4. `prefect deployment run 'my-flow/example-remote-deployment' --watch`: no worker started by hand,
   the push service inside the server gives the run a fresh machine;
5. show the result and where the logs are, then shut everything down.

Run it twice in a row if you like: everything it creates is reused or replaced.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

from prefect_remote.devserver import local_prefect_server
from prefect_remote.providers import get_provider

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / ".demo"
PREFECT = str(Path(sys.executable).parent / "prefect")
console = Console()


def step(title: str, *command: str, env: dict[str, str], check: bool = True) -> str:
    console.rule(f"[bold]{title}")
    console.print(f"$ {' '.join(command)}", style="dim")
    result = subprocess.run([PREFECT, *command], cwd=ROOT, env=env, capture_output=True, text=True)
    output = (result.stdout + result.stderr).strip()
    console.print(output, markup=False, highlight=False)
    if check and result.returncode != 0:
        raise SystemExit(f"step failed: prefect {' '.join(command)}")
    return output


def flow_run_logs(api_url: str, flow_run_id: str) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        time.sleep(2)  # the worker ships its last lines in a batch
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return [f"{log.timestamp:%H:%M:%S} {log.message}" for log in logs]


def main() -> None:
    started = time.monotonic()
    home = Path(os.environ.setdefault("PREFECT_REMOTE_HOME", str(DEMO / "home")))
    with console.status("Starting a Prefect server (SQLite, loopback)…"):
        server = local_prefect_server(DEMO / "prefect", env={"PREFECT_WORKER_QUERY_SECONDS": "2", "PREFECT_REMOTE_HOME": str(home)})
        api_url = server.__enter__()
    try:
        console.print(f"Prefect API: {api_url} (UI at {api_url.removesuffix('/api')})")
        env = {
            **os.environ,
            "PREFECT_API_URL": api_url,
            "PREFECT_HOME": str(DEMO / "prefect-cli"),
            "PREFECT_REMOTE_HOME": str(home),
            "COLUMNS": "100",
        }
        step(
            "1. A remote:push work pool, with the infrastructure it needs",
            "work-pool",
            "create",
            "--type",
            "remote:push",
            "--provision-infra",
            "example-remote-pool",
            "--overwrite",
            env=env,
        )
        step(
            "2. Deploy: the build step captures this environment and code (no Docker)",
            "--no-prompt",
            "deploy",
            "--prefect-file",
            "prefect.yaml.example",
            "--all",
            env=env,
        )
        # A run that fails still shows its logs below: they say why.
        output = step(
            "3. Run it: no worker started by hand",
            "deployment",
            "run",
            "my-flow/example-remote-deployment",
            "--watch",
            "--watch-timeout",
            "300",
            env=env,
            check=False,
        )
        console.rule("[bold]Result")
        provider = get_provider()
        [machine] = provider.list({"prefect.io/deployment-name": "example-remote-deployment"}, include_terminated=True)[:1]
        state = "Completed" if "Completed" in output else "did not complete"
        console.print(
            f"Flow run: [bold]{state}[/] on machine {machine.id} ({machine.instance_type}, {machine.spec}); it ended: {machine.reason}"
        )
        console.rule("[bold]The flow run's logs in Prefect (the machine's boot included)")
        for line in flow_run_logs(api_url, machine.tags["prefect.io/flow-run-id"]):
            console.print(line, markup=False, highlight=False)
        console.print(f"\nMachine log: `PREFECT_REMOTE_HOME={home} prefect-remote machines logs {machine.id}`")
        console.print(f"Took {time.monotonic() - started:.0f}s. Shutting down.")
        if state != "Completed":
            raise SystemExit(1)
    finally:
        server.__exit__(None, None, None)
        provider = get_provider()
        provider.wait([m.id for m in provider.list()], timeout=60)  # the run is Completed a moment before its machine ends
        cleanup = getattr(provider, "cleanup_host", None)
        if cleanup:
            cleanup()


if __name__ == "__main__":
    main()
