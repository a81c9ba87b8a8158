"""PackageSync: a deployment from Python with package sync, no prefect.yaml, as users write it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from prefect.runner.storage import RunnerStorage

from prefect_remote import PackageSync
from prefect_remote.deployments.steps import PACKAGE_SYNC_STEP, NotInSoftwareEnvironment, package_sync
from prefect_remote.software.store import LocalStore
from tests.conftest import SESSION_HOME
from tests.push_service import prefect_server_with_push_service  # noqa: F401 (this module's runs go through the push service)
from tests.workers.conftest import completed_run, run_logs

EXAMPLE_FLOW = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from prefect import flow, task

    @task
    def square(n: int) -> int:
        return n * n

    @flow(log_prints=True)
    def my_flow() -> int:
        print(f"flow code from {Path(__file__).resolve()}")
        print(f"python in {sys.prefix}")
        total = sum(square.map(range(10)).result())
        print(f"result: {total}")
        return total
    """
)

# The issue's shape as written (a size this host cannot give: it is deployed, not run), and the same for a run here.
DEPLOY = textwrap.dedent(
    """
    from example_flow import my_flow
    from prefect_remote import PackageSync

    if __name__ == "__main__":
        my_flow.from_source(PackageSync("."), "example_flow.py:my_flow").deploy(
            name="example-remote-deploy", work_pool_name="{pool}",
            job_variables={{"cpu": 16, "memory": "32GB"}},
        )
        my_flow.from_source(PackageSync("."), "example_flow.py:my_flow").deploy(
            name="example-remote-run", work_pool_name="{pool}",
            job_variables={{"cpu": 1, "memory": "1 GiB", "env": {{"PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
                                                                  "PREFECT_LOCAL_STORAGE_PATH": "{results}"}}}},
        )
    """
)


def project(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "example_flow.py").write_text(EXAMPLE_FLOW)
    return folder


def python_script(folder: Path, script: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """``python <script>`` in ``folder``, as a user types it in an 80-column terminal."""
    (folder / "deploy.py").write_text(script)
    return subprocess.run([sys.executable, "deploy.py"], cwd=folder, env=env, capture_output=True, text=True, timeout=300)


def test_package_sync_is_a_runner_storage_and_from_source_captures_nothing(tmp_path):
    folder = project(tmp_path / "project")
    storage = PackageSync(folder, store=str(tmp_path / "store"))
    assert isinstance(storage, RunnerStorage) and storage.destination == folder and storage.pull_interval is None
    assert storage == PackageSync(str(folder), store=str(tmp_path / "store")) and storage != PackageSync(folder, exclude="data/")
    from prefect import Flow

    loaded = Flow.from_source(storage, "example_flow.py:my_flow")  # as a flow's module may on a machine: cheap
    assert loaded.name == "my-flow" and loaded._storage is storage
    assert not (tmp_path / "store").exists() and storage.software is None  # the capture waits for a deployment


@pytest.mark.parametrize(
    ("path", "kwargs", "message"),
    [
        ("missing", {}, r"PackageSync\('missing'\): no such folder \(from .*\); give the project folder that holds the flow's code"),
        (
            "project/example_flow.py",
            {},
            r"PackageSync\('project/example_flow.py'\): that is a file, not a folder; give the folder that holds it, with the "
            r"entrypoint relative to that folder: from_source\(PackageSync\('project'\), 'example_flow.py:<flow function>'\)",
        ),
        ("project", {"exclude": ["data/", 3]}, r"PackageSync exclude=\['data/', 3\]: expected a pattern or a list of patterns"),
        ("project", {"arm": "yes"}, "PackageSync arm='yes': expected true or false"),
    ],
    ids=["missing-folder", "a-file", "bad-pattern", "bad-flag"],
)
def test_bad_arguments_fail_clearly_at_once(tmp_path, monkeypatch, path, kwargs, message):
    project(tmp_path / "project")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=message):
        PackageSync(path, **kwargs)


def test_the_pull_step_refuses_to_run_off_its_machine():
    with pytest.raises(NotInSoftwareEnvironment, match="deploy it to a remote:push or remote work pool"):
        package_sync("senv-0000000000000000")


def test_the_shape_deploys_from_a_plain_script_and_runs_on_the_captured_environment(prefect_server, push_pool, api, tmp_path):
    folder = project(tmp_path / "fresh")
    results = tmp_path / "results"
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "PREFECT_HOME": str(SESSION_HOME / "prefect-cli"), "COLUMNS": "80"}
    deployed = python_script(folder, DEPLOY.format(pool=push_pool, results=results), env)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    # Captured once per deployment, into the pool's store (a local pool records none: the configured one).
    captured = re.findall(r"^Software environment (senv-\w+) \(\S+\):\n(?:  .*\n)*?  stored in (\S+)$", deployed.stdout, re.M)
    summary = [line for line in deployed.stdout.splitlines() if line.startswith(("Software environment", "  Python"))]
    assert summary and all(len(line) <= 80 for line in summary), summary  # an 80-column terminal
    assert len(captured) == 2 and captured[0] == captured[1] == (captured[0][0], LocalStore(SESSION_HOME / "store").url), deployed.stdout
    name = captured[0][0]
    assert LocalStore(SESSION_HOME / "store").has_env(name)

    shaped = api.read_deployment_by_name("my-flow/example-remote-deploy")
    assert shaped.job_variables == {"cpu": 16, "memory": "32GB"} and shaped.entrypoint == "example_flow.py:my_flow"
    assert shaped.pull_steps == [{PACKAGE_SYNC_STEP: {"software": name}}] and shaped.path is None

    flow_run = completed_run(api, env, folder, "my-flow/example-remote-run")
    logs = "\n".join(run_logs(api, flow_run.id))
    work = SESSION_HOME / "machines" / flow_run.infrastructure_pid / "work"
    assert f"software environment {name}" in logs, logs  # the machine's boot rebuilt it
    assert f"Flow code: example_flow.py:my_flow from software environment {name}, in the machine's work folder" in logs, logs
    assert f"flow code from {work}/example_flow.py" in logs and f"/{name}/venv" in logs, logs  # its code, its interpreter
    assert "result: 285" in logs
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    with temporary_settings({PREFECT_LOCAL_STORAGE_PATH: results}):
        assert api.read_flow_run(flow_run.id).state.result() == 285  # the flow's return value, persisted by its machine


def pool_with_store(server: str, api, name: str, pool_type: str, store: Path) -> None:
    """A ``pool_type`` pool (remote or remote:push) of the local provider whose provider block records
    ``store``, as --provision-infra records a cloud pool's."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from prefect_remote.workers.config import RemoteProviderBlock
    from prefect_remote.workers.worker import RemotePushWorker

    with temporary_settings({PREFECT_API_URL: server}):
        block_id = RemoteProviderBlock(provider="local", store=str(store)).save(f"{name}-provider", overwrite=True)
    template = RemotePushWorker.get_default_base_job_template()
    template["variables"]["properties"]["credentials"]["default"] = {"$ref": {"block_document_id": str(block_id)}}
    api.create_work_pool(WorkPoolCreate(name=name, type=pool_type, base_job_template=template), overwrite=True)


def test_the_capture_goes_to_the_store_the_pool_records(prefect_server, api, tmp_path, capsys):
    """A pool whose provider block records a store (as --provision-infra does on a cloud) gets the
    environment there, on the deployment's creation and on its update, whatever PREFECT_REMOTE_STORE says."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    pool_store = tmp_path / "pool-store"
    pool_with_store(prefect_server, api, "package-sync-pool", "remote:push", pool_store)
    folder = project(tmp_path / "project")
    from prefect import Flow

    with temporary_settings({PREFECT_API_URL: prefect_server}):
        for _ in ("create", "update"):
            storage = PackageSync(folder, check=False)
            Flow.from_source(storage, "example_flow.py:my_flow").deploy(name="to-the-pools-store", work_pool_name="package-sync-pool")
            assert LocalStore(pool_store).has_env(storage.software)
            assert f"  stored in {LocalStore(pool_store).url}\n" in capsys.readouterr().out
    deployment = api.read_deployment_by_name("my-flow/to-the-pools-store")
    assert deployment.pull_steps == [{PACKAGE_SYNC_STEP: {"software": storage.software}}]


@pytest.mark.parametrize("pool_type", ["remote:push", "remote"])
def test_the_pools_worker_runs_it_from_the_pools_store_with_no_store_setting_of_its_own(prefect_server, api, tmp_path, pool_type):
    """The worker (a `prefect worker start` of a remote pool; the push service inside the Prefect
    server for remote:push) has no PREFECT_REMOTE_STORE: it finds the environment PackageSync put in
    the pool's store through the pool's provider block, as PackageSync found that store, and the run
    completes on it (before, its launch failed "not in the store")."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from prefect_remote.devserver import stop_process_group
    from tests.workers.test_worker import background

    pool = "test-push-guarded-store" if pool_type == "remote:push" else "test-hybrid-store"  # the server serves test-push-guarded-*
    pool_store = tmp_path / "pool-store"
    pool_with_store(prefect_server, api, pool, pool_type, pool_store)
    folder = project(tmp_path / "project")
    from prefect import Flow

    with temporary_settings({PREFECT_API_URL: prefect_server}):
        storage = PackageSync(folder, check=False)
        Flow.from_source(storage, "example_flow.py:my_flow").deploy(name=f"from-{pool}", work_pool_name=pool)
    assert LocalStore(pool_store).has_env(storage.software) and not LocalStore(SESSION_HOME / "store").has_env(storage.software)
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_REMOTE_STORE"}
    env.update(PREFECT_API_URL=prefect_server, PREFECT_HOME=str(SESSION_HOME / "prefect-cli"), COLUMNS="80")
    assert "PREFECT_REMOTE_STORE" not in os.environ  # nor in the server's, which started with the session's environment
    worker = None
    if pool_type == "remote":
        prefect = str(Path(sys.executable).parent / "prefect")
        worker = background(prefect_server, prefect, "worker", "start", "--pool", pool, "--type", "remote")
    try:
        flow_run = completed_run(api, env, folder, f"my-flow/from-{pool}")
    finally:
        if worker is not None:
            stop_process_group(worker)
    logs = "\n".join(run_logs(api, flow_run.id))
    assert f"software environment {storage.software}" in logs and "result: 285" in logs, logs


@pytest.mark.parametrize("count", [0, 1, 199, 200, 201, 450])
def test_every_page_reads_a_paged_list_whole_whatever_its_length(count):
    from prefect_remote.deployments.package_sync import _every_page

    items = list(range(count))
    reads: list[tuple[int, int]] = []

    def read(offset: int, limit: int) -> list[int]:
        reads.append((offset, limit))
        return items[offset : offset + limit]

    assert _every_page(read) == items
    assert reads == [(offset, 200) for offset in range(0, count + 1, 200)]  # one read past a full last page
