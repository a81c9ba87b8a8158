"""The hybrid worker (`prefect worker start --type remote`), the push fallbacks, and exactly-once submission."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prefect_remote.devserver import stop_process_group
from prefect_remote.providers.local import LocalProvider
from tests.conftest import SESSION_HOME, wait_for
from tests.push_service import prefect_server_with_push_service  # noqa: F401 (this module's runs go through the push service)
from tests.workers.conftest import deploy, logged, prefect_cli, wait_final


def background(api_url: str, *command: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "PREFECT_API_URL": api_url,
        "PREFECT_HOME": str(SESSION_HOME / "prefect-cli"),
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_HEARTBEAT_SECONDS": "2",
    }
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


@pytest.fixture
def hybrid_worker(prefect_server):
    created = prefect_cli(prefect_server, "work-pool", "create", "--type", "remote", "test-hybrid", "--overwrite")
    assert created.returncode == 0, created.stdout + created.stderr
    prefect = str(Path(sys.executable).parent / "prefect")
    worker = background(prefect_server, prefect, "worker", "start", "--pool", "test-hybrid", "--type", "remote")
    yield "test-hybrid"
    stop_process_group(worker)


def test_hybrid_worker_runs_concurrent_flow_runs_on_their_own_machines(hybrid_worker, project, api):
    deployment = deploy(api, project, hybrid_worker, cpu=1)
    runs = [api.create_flow_run_from_deployment(deployment) for _ in range(2)]
    finals = [wait_final(api, run.id, timeout=180) for run in runs]
    assert [f.state_name for f in finals] == ["Completed", "Completed"]
    machines = {f.infrastructure_pid for f in finals}
    assert len(machines) == 2
    for final in finals:
        logged(api, final.id, "hello from the flow")
        logged(api, final.id, "booting machine")
    assert all(m.reason == "payload finished" for m in LocalProvider().wait(machines, timeout=30))


def test_push_serve_fallback_runs_a_pool_the_server_leaves_alone(prefect_server, project, api):
    assert prefect_cli(prefect_server, "work-pool", "create", "--type", "remote:push", "test-fallback", "--overwrite").returncode == 0
    cli = str(Path(sys.executable).parent / "prefect-remote")
    fallback = background(prefect_server, cli, "push", "serve", "--pool", "test-fallback", "--interval", "1")
    try:
        run = api.create_flow_run_from_deployment(deploy(api, project, "test-fallback"))
        final = wait_final(api, run.id, timeout=180)
        assert fallback.poll() is None
    finally:
        stop_process_group(fallback)
    assert final.state_name == "Completed"
    assert final.labels["prefect.worker.name"].startswith("prefect-remote push (test-fallback)")


def test_each_run_is_submitted_once_with_two_submitters(prefect_server, push_pool, project, api):
    """The in-server service and `prefect-remote push serve` both serve the pool: each run gets one machine."""
    cli = str(Path(sys.executable).parent / "prefect-remote")
    fallback = background(prefect_server, cli, "push", "serve", "--pool", push_pool, "--interval", "1")
    try:
        deployment = deploy(api, project, push_pool)
        runs = [api.create_flow_run_from_deployment(deployment) for _ in range(3)]
        finals = [wait_final(api, run.id, timeout=180) for run in runs]
        assert fallback.poll() is None
    finally:
        stop_process_group(fallback)
    assert [f.state_name for f in finals] == ["Completed"] * 3
    for final in finals:
        assert len(LocalProvider().list({"prefect.io/flow-run-id": str(final.id)}, include_terminated=True)) == 1


def test_explicit_push_worker_fallback(prefect_server, project, api):
    created = prefect_cli(prefect_server, "work-pool", "create", "--type", "remote:push", "test-explicit", "--overwrite")
    assert created.returncode == 0
    prefect = str(Path(sys.executable).parent / "prefect")
    worker = background(
        prefect_server, prefect, "worker", "start", "--pool", "test-explicit", "--type", "remote:push", "--name", "explicit"
    )
    try:
        run = api.create_flow_run_from_deployment(deploy(api, project, "test-explicit"))
        final = wait_final(api, run.id, timeout=180)
    finally:
        stop_process_group(worker)
    assert final.state_name == "Completed" and final.labels["prefect.worker.name"] == "explicit"


def test_a_restarted_worker_adopts_runs_in_flight(prefect_server, project, api):
    """The worker that submitted a run is killed; the next one follows its machine (without submitting
    the run again), so the machine's death still crashes the run."""
    assert prefect_cli(prefect_server, "work-pool", "create", "--type", "remote", "test-adopt", "--overwrite").returncode == 0
    prefect = str(Path(sys.executable).parent / "prefect")
    first = background(prefect_server, prefect, "worker", "start", "--pool", "test-adopt", "--type", "remote", "--name", "first")
    second = None
    try:
        run = api.create_flow_run_from_deployment(deploy(api, project, "test-adopt", "sleeper"))
        machine_id = wait_for(
            lambda: api.read_flow_run(run.id).state_name == "Running" and api.read_flow_run(run.id).infrastructure_pid, timeout=120
        )
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        second = background(prefect_server, prefect, "worker", "start", "--pool", "test-adopt", "--type", "remote", "--name", "second")
        logged(api, run.id, "follows this run's machine", timeout=60)
        LocalProvider().terminate([machine_id], reason="killed after the restart")
        assert wait_final(api, run.id, timeout=30).state_name == "Crashed"
        logged(api, run.id, "killed after the restart")
        assert len(LocalProvider().list({"prefect.io/flow-run-id": str(run.id)}, include_terminated=True)) == 1
    finally:
        if second is not None:
            stop_process_group(second)


def test_a_run_whose_worker_is_gone_past_its_keepalive_ends_and_crashes_saying_why(prefect_server, project, api):
    """The worker renews its runs' machines' leases: a run outlives its ``keepalive`` while the worker
    lives. Killed, it renews no more: the machine ends after the keepalive (not at the run's timeout,
    or never), and the run is Crashed with the machine's reason, with no worker to say it."""
    assert prefect_cli(prefect_server, "work-pool", "create", "--type", "remote", "test-keepalive", "--overwrite").returncode == 0
    prefect = str(Path(sys.executable).parent / "prefect")
    first = background(prefect_server, prefect, "worker", "start", "--pool", "test-keepalive", "--type", "remote", "--name", "first")
    try:
        run = api.create_flow_run_from_deployment(deploy(api, project, "test-keepalive", "sleeper", keepalive="4 seconds"))
        machine_id = wait_for(
            lambda: api.read_flow_run(run.id).state_name == "Running" and api.read_flow_run(run.id).infrastructure_pid, timeout=120
        )
        time.sleep(8)  # twice the keepalive: renewed all along
        assert LocalProvider().describe(machine_id).alive
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        [ended] = LocalProvider().wait([machine_id], timeout=30)
        assert ended.reason.startswith("owner gone: lease not renewed"), ended.reason
        final = wait_final(api, run.id, timeout=60)
        assert final.state_name == "Crashed" and "Machine ended: owner gone: lease not renewed" in final.state.message, (
            final.state,
            LocalProvider().logs(machine_id).text[-3000:],
        )
    finally:
        stop_process_group(first)
