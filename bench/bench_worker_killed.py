"""A killed worker's flow runs: seconds from ``kill -9`` of a Prefect worker (a hybrid ``remote`` pool,
the local provider) to each run's machine ended, and to the run Crashed with the machine's reason, for
three runs in flight at once. Nobody is left to renew their leases: each machine notices within its
``keepalive`` (20 s here) plus one lease interval of the last renewal (which came up to a third of the
keepalive before the kill), stops its payload (SIGTERM; its machine log says how long that took), has
Prefect told why (a Python process with Prefect's client: a few seconds on a busy host, tens of
seconds on a loaded one; each machine's log says how long, shown with the load average at the kill),
then ends. Baseline: the bound the issue sets, keepalive plus one lease interval, as the ratio figure / bound."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from common import bench_home, start_worker
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings

from prefect_remote.devserver import local_prefect_server, stop_process_group

FLOW = "import time\nfrom prefect import flow\n\n@flow\ndef sleeper() -> None:\n    time.sleep(900)\n"
PREFECT = str(Path(sys.executable).parent / "prefect")
RUNS = 3
KEEPALIVE = 20.0
TOLD = re.compile(r"the payload's on_stop command finished in (\d+\.\d)s")


def main() -> list[str]:
    from prefect_remote.providers.local import LocalProvider

    with bench_home("worker-killed") as scratch:  # which ends the runs' machines, whatever happens
        project = scratch / "project"
        project.mkdir()
        (project / "flows.py").write_text(FLOW)
        with local_prefect_server(scratch / "prefect") as api_url:
            env = {**os.environ, "PREFECT_API_URL": api_url, "PREFECT_HOME": str(scratch / "cli"), "PREFECT_WORKER_QUERY_SECONDS": "1"}
            subprocess.run(
                [PREFECT, "work-pool", "create", "--type", "remote", "bench-keepalive"], env=env, check=True, capture_output=True
            )
            worker = start_worker("bench-keepalive", "remote", env)
            try:
                from prefect_remote.software.capture import capture_environment

                senv = capture_environment(root=project).name
                with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
                    deployment = client.create_deployment(
                        flow_id=client.create_flow_from_name("sleeper"),
                        name="sleeper",
                        work_pool_name="bench-keepalive",
                        entrypoint="flows.py:sleeper",
                        path=str(project),
                        job_variables={"software": senv, "keepalive": f"{KEEPALIVE:.0f} seconds"},
                    )
                    runs = [client.create_flow_run_from_deployment(deployment).id for _ in range(RUNS)]
                    machines = {}
                    deadline = time.monotonic() + 300
                    while len(machines) < RUNS:
                        for run_id in runs:
                            run = client.read_flow_run(run_id)
                            if run.state_name == "Running" and run.infrastructure_pid:
                                machines[run_id] = run.infrastructure_pid
                        if time.monotonic() > deadline:
                            raise TimeoutError(f"only {len(machines)} of {RUNS} runs were Running within 300 s")
                        time.sleep(0.5)
                    time.sleep(2 * KEEPALIVE)  # renewed all along: the runs outlive their keepalive while the worker lives
                    provider = LocalProvider()
                    alive = [provider.describe(machine_id).alive for machine_id in machines.values()]
                    if not all(alive):
                        raise RuntimeError(f"a machine ended while its worker lived: {dict(zip(machines.values(), alive, strict=True))}")
                    os.killpg(worker.pid, signal.SIGKILL)
                    killed, load = time.monotonic(), os.getloadavg()[0]
                    worker.wait()
                    ended: dict[str, float] = {}
                    crashed: dict[str, float] = {}
                    while (len(ended) < RUNS or len(crashed) < RUNS) and time.monotonic() < killed + 10 * KEEPALIVE:
                        for run_id, machine_id in machines.items():
                            if machine_id not in ended and not provider.describe(machine_id).alive:
                                ended[machine_id] = time.monotonic() - killed
                            if run_id not in crashed:
                                state = client.read_flow_run(run_id).state  # (the flow's own engine may say Crashed first)
                                if state is not None and state.name == "Crashed" and "Machine ended" in (state.message or ""):
                                    crashed[run_id] = time.monotonic() - killed
                        time.sleep(0.2)
                    interval = provider.lease_interval
                    # How long each machine took to tell Prefect why, as its agent logged it (what a loaded host slows most).
                    told = [float(m) for machine_id in machines.values() for m in TOLD.findall(provider.logs(machine_id).text)]
            finally:
                stop_process_group(worker)
    bound = KEEPALIVE + interval

    def shown(figures: dict[str, float]) -> str:
        seconds = sorted(figures.values()) + [float("inf")] * (RUNS - len(figures))  # inf: not within 10 keepalives
        return ", ".join(f"{value:.1f} s ({value / bound:.2f}x)" for value in seconds)

    return [
        f"killed worker -> machine ended, {RUNS} runs: {shown(ended)} (bound {bound:.0f} s: keepalive + lease interval)",
        f"killed worker -> run Crashed with the reason, {RUNS} runs: {shown(crashed)} (bound {bound:.0f} s)",
        f"of which Prefect told why (the machine's on_stop command): {', '.join(f'{value:.1f} s' for value in sorted(told)) or 'none'}"
        f" (load average {load:.1f} at the kill)",
    ]


if __name__ == "__main__":
    print("\n".join(main()))
