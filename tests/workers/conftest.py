"""A project with flows, deployed to real work pools on the session's Prefect server."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings

from tests.conftest import SESSION_HOME, wait_for

pytest.register_assert_rewrite("tests.workers.push_contract")  # the contract's tests, run from test_push_contract_<cloud>.py

FLOWS = textwrap.dedent(
    """
    import time
    from pathlib import Path
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

    @flow(log_prints=True)
    def located() -> None:
        print(f"flow code from {Path(__file__).resolve()}")
    """
)
# Job variables as the guide's deployments set them: package sync, a size, and an idle timeout.
SIZED = {"cpu": 1, "memory": "1 GiB", "idle_timeout": "10 minutes"}
# Where users point the pull step: nowhere (Prefect's default, the project's absolute path on the
# deploying machine), the Prefect guide's folder, and the machine's working folder.
PULL_DIRECTORIES = {"no-pull": None, "scratch": "/scratch/batch", "dot": "."}

# The Prefect-on-VMs guide's "scale out" flow: a task that is also a prefect_remote.function launches
# machines of its own from the flow run's machine. It says where it ran (a machine of its own).
SCALE_OUT = textwrap.dedent(
    """
    import os
    from prefect import flow, task
    import prefect_remote

    @task
    def f(n):
        return n**2

    @task
    @prefect_remote.function(memory="2 GiB")
    def do_something(x):
        print(f"summing {x} on machine {os.environ['PREFECT_REMOTE_MACHINE_ID']}")
        return sum(x)

    @flow(log_prints=True)
    def my_flow():
        print(f"Hello from your Prefect flow on machine {os.environ['PREFECT_REMOTE_MACHINE_ID']}!")
        X = f.map(list(range(10)))
        total = do_something(X)
        print(f"total: {total}")
        return total
    """
)


def scaled_out(client, env: dict[str, str], folder: Path, deployment: str, provider, sandbox) -> None:
    """Runs ``deployment`` of :data:`SCALE_OUT` as a user would: it completes, the function ran on
    a machine other than the flow run's, on the flow run's own software environment (none was
    captured there), with its print and result in the run's logs; then every machine its cluster
    had (a scheduler and a worker at least, from ``provider.list()``) ends, and so does the
    sandbox's instance of each."""
    from prefect_remote.cluster.plan import CLUSTER_TAG, ROLE_TAG
    from prefect_remote.sandbox.instances import INSTANCE_TAG
    from prefect_remote.software.stores import open_store

    store = open_store(env["PREFECT_REMOTE_STORE"])
    environments = store.envs()
    started = time.time()
    flow_run = completed_run(client, env, folder, deployment, ended_within=60)  # its exit ends the function's cluster first
    assert store.envs() == environments
    logs = "\n".join(run_logs(client, flow_run.id))
    flow_machine = flow_run.infrastructure_pid
    assert f"Hello from your Prefect flow on machine {flow_machine}!" in logs, logs
    summed = re.search(r"summing \[0, 1, 4, 9, 16, 25, 36, 49, 64, 81\] on machine (\S+)", logs)
    assert summed and summed.group(1) != flow_machine, logs  # the function's own machine
    assert "total: 285" in logs, logs
    cluster = [m for m in provider.list(include_terminated=True) if CLUSTER_TAG in m.tags and m.created >= started - 5]
    roles = sorted(m.tags[ROLE_TAG] for m in cluster)
    assert "scheduler" in roles and "worker" in roles and summed.group(1) in {m.id for m in cluster}, cluster
    wait_for(lambda: not any(provider.describe(m.id).alive for m in cluster), timeout=60, message="the function's machines to end")
    ids = tuple(m.id for m in cluster)
    running = lambda: [m.id for m in sandbox.runner.machines.list() if m.tags.get(INSTANCE_TAG, "").endswith(ids)]  # noqa: E731
    wait_for(lambda: not running(), timeout=30, message="the sandbox's instances of the function's machines to end")


def prefect_yaml(project: str, pool: str, deployments: dict[str, tuple], pull: str | None = ".") -> str:
    """A prefect.yaml as users write it: the package-sync build step, ``pull`` as the working directory
    (None: no pull section, so Prefect's default), and ``deployments`` (name -> (entrypoint, job
    variables[, their own pull step's directory])) on ``pool``, on the synced software."""
    import yaml

    def working_directory(directory: str) -> list[dict]:
        return [{"prefect.deployments.steps.set_working_directory": {"directory": directory}}]

    def deployment(name: str, entrypoint: str, variables: dict, directory: str | None = None) -> dict:
        own_pull = {"pull": working_directory(directory)} if directory else {}
        job_variables = {"software": "{{ senv.name }}", **variables}
        return {"name": name, "entrypoint": entrypoint, **own_pull, "work_pool": {"name": pool, "job_variables": job_variables}}

    return yaml.safe_dump(
        {
            "name": project,
            "prefect-version": "3.8.8",
            "build": [{"prefect_remote.deployments.steps.build_package_sync_senv": {"id": "senv", "check": False}}],
            "push": None,
            **({"pull": working_directory(pull)} if pull else {}),
            "deployments": [deployment(name, *details) for name, details in deployments.items()],
        },
        sort_keys=False,
    )


def pull_deployments(suffix: str, entrypoint: str = "flows.py:located", **variables) -> dict[str, tuple]:
    """One deployment of ``entrypoint`` per pull step of PULL_DIRECTORIES, sized by SIZED and ``variables``,
    for a prefect.yaml with no pull section of its own."""
    return {f"{name}-{suffix}": (entrypoint, {**SIZED, **variables}, directory) for name, directory in PULL_DIRECTORIES.items()}


def prefect_cli(api_url: str, *args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_API_URL": api_url, "PREFECT_HOME": str(SESSION_HOME / "prefect-cli"), "COLUMNS": "200"}
    return run_cli(env, "prefect", *args, cwd=cwd, timeout=timeout)


def run_cli(env: dict[str, str], command: str, *args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``command`` (prefect, prefect-remote) of this environment, run with ``env``."""
    return subprocess.run(
        [str(Path(sys.executable).parent / command), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def doctor_report(cloud: str, *args: str, **env: str | None) -> tuple[int, dict[str, dict]]:
    """`prefect-remote doctor <cloud> --json` in this test's environment (``env`` over it; None:
    unset): its exit code, and its rows by check."""
    import json

    environ = {name: value for name, value in {**os.environ, **env}.items() if value is not None}
    result = run_cli(environ, "prefect-remote", "doctor", cloud, "--json", *args, timeout=120)
    assert result.stdout.startswith("{"), result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] == (result.returncode == 0)
    return result.returncode, {row["check"]: row for row in report["checks"]}


@contextlib.contextmanager
def sandbox_shell(sandbox, prefect_server: str, cloud: str, pool: str, log_folder: Path, **settings: str) -> Iterator[dict[str, str]]:
    """A shell's environment after `prefect-remote sandbox <cloud>`, with the session's Prefect
    server reached at the sandbox host (as machines reach it) and ``settings``; ``pool``, a
    remote:push pool made with --provision-infra, and `prefect-remote push serve` running for it
    (its output in ``log_folder``) until the block ends."""
    api_url = sandbox.expose_port(urlsplit(prefect_server).port) + "/api"
    env = {
        **os.environ,
        **sandbox.exports(),
        "PREFECT_API_URL": api_url,
        "PREFECT_HOME": str(SESSION_HOME / f"prefect-cli-{cloud}"),
        "COLUMNS": "80",  # a user's terminal
        **settings,
    }
    created = run_cli(env, "prefect", "work-pool", "create", "--type", "remote:push", "--provision-infra", pool)
    assert created.returncode == 0, created.stdout + created.stderr
    assert f"on {cloud} machines" in created.stdout, created.stdout
    with push_serving(env, pool, log_folder):
        yield env


@contextlib.contextmanager
def push_serving(env: dict[str, str], pool: str, log_folder: Path) -> Iterator[None]:
    """`prefect-remote push serve --pool <pool>` running in ``env`` (its output in ``log_folder``) until
    the block ends. It picks runs up every second (Prefect's workers look every 10 s by default)."""
    with open(log_folder / "serve.log", "w+") as log:
        serve = subprocess.Popen(
            [str(Path(sys.executable).parent / "prefect-remote"), "push", "serve", "--pool", pool],
            env={**env, "PREFECT_WORKER_QUERY_SECONDS": "1"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield
        finally:
            serve.send_signal(signal.SIGINT)
            try:
                serve.wait(timeout=20)
            except subprocess.TimeoutExpired:
                serve.kill()
                serve.wait()


def deploy_project(env: dict[str, str], folder: Path, files: dict[str, str], store: str) -> Path:
    """``files`` (a prefect.yaml among them) written in ``folder`` and deployed with `prefect deploy
    --all` in ``env``: the package-sync step stores the software environment at a ``store`` URL (s3://…)."""
    for name, text in files.items():
        (folder / name).write_text(text)
    result = run_cli(env, "prefect", "--no-prompt", "deploy", "--all", cwd=folder)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Software environment senv-" in result.stdout and store in result.stdout + result.stderr
    return folder


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


def deploy(client, project: Path, pool: str, flow: str = "hello", **job_variables) -> str:
    """A deployment of ``flows.py:<flow>`` from the project folder (no build step: the launcher's Python)."""
    flow_id = client.create_flow_from_name(flow)
    return client.create_deployment(
        flow_id=flow_id,
        name=f"{flow}-{pool}-{abs(hash(repr(sorted(job_variables.items()))))}",  # pools of other tests' own
        work_pool_name=pool,
        entrypoint=f"flows.py:{flow}",
        path=str(project),
        pull_steps=[{"prefect.deployments.steps.set_working_directory": {"directory": str(project)}}],
        job_variables=job_variables,
    )


def completed_run(client, env: dict[str, str], folder: Path, deployment: str, *, ended_within: float = 15):
    """`prefect deployment run <deployment> --watch` from ``folder`` in ``env``, asserted Completed;
    the flow run, once its machine's end is in its logs (within ``ended_within`` seconds)."""
    [flow_run] = completed_runs(client, env, folder, [deployment], ended_within=ended_within)
    return flow_run


def completed_runs(client, env: dict[str, str], folder: Path, deployments: list[str], *, ended_within: float = 15) -> list:
    """`prefect deployment run <deployment> --watch` for each of ``deployments`` at once (each run on
    its own machine), as in completed_run; their flow runs, in order."""
    from concurrent.futures import ThreadPoolExecutor

    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    def run(deployment: str) -> subprocess.CompletedProcess:
        return run_cli(env, "prefect", "deployment", "run", deployment, "--watch", "--watch-timeout", "300", cwd=folder, timeout=360)

    with ThreadPoolExecutor(len(deployments)) as pool:
        results = list(pool.map(run, deployments))
    flow_runs = []
    for deployment, ran in zip(deployments, results, strict=True):
        deployment_id = client.read_deployment_by_name(deployment).id
        flow_runs_of_it = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))
        assert len(flow_runs_of_it) == 1, f"{len(flow_runs_of_it)} runs of {deployment}; its CLI printed:\n{ran.stdout}{ran.stderr}"
        [flow_run] = flow_runs_of_it
        assert ran.returncode == 0 and "Completed" in ran.stdout, ran.stdout + ran.stderr + "\n".join(run_logs(client, flow_run.id))
        # The engine reports before its machine has ended.
        logged(client, flow_run.id, f"Machine {flow_run.infrastructure_pid} ended: ", timeout=ended_within)
        flow_runs.append(flow_run)
    return flow_runs


def assert_ran_synced_code(client, flow_run, work_folder: str | None = None) -> None:
    """The run of FLOWS' ``located`` loaded the project's code as synced into its machine's work folder
    (``work_folder``; None: the one the machine's boot names), whatever the deployment's pull steps."""
    logs = "\n".join(run_logs(client, flow_run.id))
    if work_folder is None:
        found = re.search(r"work folder: (\S+)", logs)
        assert found, logs
        work_folder = found[1]
    assert f"local code unpacked into {work_folder}" in logs, logs
    assert f"flow code from {work_folder}/flows.py" in logs, logs  # the flow's own output
    assert re.search(r"Flow code: flows(\.py:|\.)located from software environment senv-\w+, in the machine's work folder", logs), logs


def running_machine(client, deployment: str) -> tuple:
    """A new run of ``deployment`` (``flow/name``) once Running: its id and its machine's."""
    run_id = client.create_flow_run_from_deployment(client.read_deployment_by_name(deployment).id).id
    machine_id = wait_for(
        lambda: client.read_flow_run(run_id).state_name == "Running" and client.read_flow_run(run_id).infrastructure_pid,
        timeout=240,
        interval=0.5,
    )
    return run_id, machine_id


def cancel_ends_machine(client, deployment: str, ended: Callable[[str], bool], within: float = 10) -> None:
    """Cancels a running run of ``deployment``: ``ended(machine id)`` holds within ``within`` seconds
    of the cancel, and the run is Cancelled soon after."""
    from prefect.states import Cancelling

    run_id, machine_id = running_machine(client, deployment)
    client.set_flow_run_state(run_id, Cancelling(), force=True)
    cancelled = time.monotonic()
    wait_for(lambda: ended(machine_id), timeout=within, interval=0.2, message=f"machine {machine_id} to end")
    assert time.monotonic() - cancelled <= within
    try:
        wait_for(lambda: client.read_flow_run(run_id).state_name == "Cancelled", timeout=30, interval=0.5)
    except AssertionError:
        raise AssertionError(f"run is {client.read_flow_run(run_id).state_name}: " + "\n".join(run_logs(client, run_id))) from None


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
