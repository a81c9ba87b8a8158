"""End-to-end time of a trivial deployment run (created → Completed): remote:push vs Prefect's process pool.

Same server, same polling interval (PREFECT_WORKER_QUERY_SECONDS=1 for the in-server push worker and
the process worker alike), same flow, the software environment already rebuilt once. Goal <= 1.25x.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import bench_home, start_worker
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings

from prefect_remote.devserver import local_prefect_server, stop_process_group

FLOW = "from prefect import flow\n\n@flow\ndef trivial() -> int:\n    return 1\n"
PREFECT = str(Path(sys.executable).parent / "prefect")
ROUNDS = 4


def run_once(client, deployment_id, timeout: float = 300) -> float:
    started = time.perf_counter()
    run = client.create_flow_run_from_deployment(deployment_id)
    while time.perf_counter() - started < timeout:
        state = client.read_flow_run(run.id).state
        if state and state.is_final():
            if state.name != "Completed":
                raise RuntimeError(f"benchmark run ended {state.name}: {state.message}")
            return time.perf_counter() - started
        time.sleep(0.1)
    raise TimeoutError(f"benchmark run {run.id} did not finish in {timeout}s")


def main() -> list[str]:
    worker = None
    with bench_home("flows") as scratch:  # which ends the machines of the runs, whatever happens to them
        project = scratch / "project"
        project.mkdir()
        (project / "flows.py").write_text(FLOW)
        settings = {"PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_REMOTE_PUSH_INTERVAL": "1"}
        os.environ.update(settings)
        try:
            with local_prefect_server(scratch / "prefect", env=settings) as api_url:
                env = {**os.environ, "PREFECT_API_URL": api_url, "PREFECT_HOME": str(scratch / "cli")}
                for pool_type, pool in (("remote:push", "bench-push"), ("process", "bench-process")):
                    subprocess.run([PREFECT, "work-pool", "create", "--type", pool_type, pool], env=env, check=True, capture_output=True)
                worker = start_worker("bench-process", "process", env)
                from prefect_remote.software.capture import capture_environment

                senv = capture_environment(root=project).name
                with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
                    flow_id = client.create_flow_from_name("trivial")
                    pull = [{"prefect.deployments.steps.set_working_directory": {"directory": str(project)}}]
                    push = client.create_deployment(
                        flow_id=flow_id,
                        name="push",
                        work_pool_name="bench-push",
                        entrypoint="flows.py:trivial",
                        path=str(project),
                        pull_steps=pull,
                        job_variables={"software": senv},
                    )
                    process = client.create_deployment(
                        flow_id=flow_id,
                        name="process",
                        work_pool_name="bench-process",
                        entrypoint="flows.py:trivial",
                        path=str(project),
                        pull_steps=pull,
                    )
                    run_once(client, push)  # rebuilds the environment once
                    run_once(client, process)
                    ours, theirs = [], []
                    for _ in range(ROUNDS):  # interleaved
                        theirs.append(run_once(client, process))
                        ours.append(run_once(client, push))
        finally:
            if worker is not None:
                stop_process_group(worker)
    mine, baseline = statistics.median(ours), statistics.median(theirs)
    return [
        f"trivial deployment run, created -> Completed: remote:push {mine:.2f} s vs process pool {baseline:.2f} s "
        f"= {mine / baseline:.2f}x [goal <= 1.25x: {'meets' if mine / baseline <= 1.25 else 'MISSES'}]"
    ]


if __name__ == "__main__":
    for line in main():
        print(line)
