"""A project with flows, deployed to real work pools on the session's Prefect server."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings

from tests.conftest import SESSION_HOME, wait_for

FLOWS = textwrap.dedent(
    """
    import time
    from prefect import flow, task

    @task
    def square(n: int) -> int:
        return n * n

    @flow(log_prints=True)
    def hello(n: int = 3) -> int:
        print("hello from the flow")
        return sum(square.map(range(n)).result())

    @flow(log_prints=True)
    def sleeper(seconds: float = 120) -> None:
        print("sleeping")
        time.sleep(seconds)
    """
)


def prefect_yaml(project: str, pool: str, deployments: dict[str, tuple[str, dict]]) -> str:
    """A prefect.yaml as users write it: the package-sync build step, the project folder as the working
    directory, and ``deployments`` (name -> (entrypoint, job variables)) on ``pool``, on the synced software."""
    import yaml

    return yaml.safe_dump(
        {
            "name": project,
            "prefect-version": "3.8.8",
            "build": [{"prefect_remote.deployments.steps.build_package_sync_senv": {"id": "senv", "check": False}}],
            "push": None,
            "pull": [{"prefect.deployments.steps.set_working_directory": {"directory": "."}}],
            "deployments": [
                {"name": name, "entrypoint": entrypoint, "work_pool": {"name": pool, "job_variables": {"software": "{{ senv.name }}", **variables}}}
                for name, (entrypoint, variables) in deployments.items()
            ],
        },
        sort_keys=False,
    )


def prefect_cli(api_url: str, *args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_API_URL": api_url, "PREFECT_HOME": str(SESSION_HOME / "prefect-cli"), "COLUMNS": "200"}
    return subprocess.run(
        [str(Path(sys.executable).parent / "prefect"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="session")
def project(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("project")
    (folder / "flows.py").write_text(FLOWS)
    return folder


@pytest.fixture
def api(prefect_server):
    with temporary_settings({PREFECT_API_URL: prefect_server}):
        with get_client(sync_client=True) as client:
            yield client


@pytest.fixture(scope="session")
def push_pool(prefect_server) -> str:
    """A remote:push pool created as users create it."""
    result = prefect_cli(prefect_server, "work-pool", "create", "--type", "remote:push", "--provision-infra", "test-push")
    assert result.returncode == 0, result.stdout + result.stderr
    return "test-push"


def deploy(client, project: Path, pool: str, flow: str = "hello", **job_variables) -> str:
    """A deployment of ``flows.py:<flow>`` from the project folder (no build step: the launcher's Python)."""
    flow_id = client.create_flow_from_name(flow)
    return client.create_deployment(
        flow_id=flow_id,
        name=f"{flow}-{abs(hash(repr(sorted(job_variables.items()))))}",
        work_pool_name=pool,
        entrypoint=f"flows.py:{flow}",
        path=str(project),
        pull_steps=[{"prefect.deployments.steps.set_working_directory": {"directory": str(project)}}],
        job_variables=job_variables,
    )


def wait_final(client, flow_run_id, timeout: float = 120):
    return wait_for(
        lambda: (run := client.read_flow_run(flow_run_id)).state and run.state.is_final() and run,
        timeout=timeout,
        interval=0.5,
        message=f"flow run {flow_run_id} to finish",
    )


def logged(client, flow_run_id, fragment: str, timeout: float = 15) -> None:
    """Waits until a line of the run's logs holds ``fragment`` (logs reach the API in batches)."""
    wait_for(lambda: any(fragment in line for line in run_logs(client, flow_run_id)), timeout=timeout, message=repr(fragment))


def run_logs(client, flow_run_id) -> list[str]:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    return [log.message for log in client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))]
