"""Flow runs on machines through a remote:push pool on a self-hosted server: no worker to host."""

from __future__ import annotations

import os
import time

import pytest
from prefect.states import Cancelling

from prefect_remote.providers.local import LocalProvider
from tests.conftest import SESSION_HOME, wait_for
from tests.push_service import prefect_server_with_push_service  # noqa: F401 (this module's runs go through the push service)
from tests.workers.conftest import (
    FLOWS,
    SIZED,
    assert_ran_synced_code,
    completed_runs,
    deploy,
    deploy_project,
    logged,
    prefect_cli,
    prefect_yaml,
    pull_deployments,
    run_logs,
    wait_final,
)

PREFECT_YAML = prefect_yaml("test-project", "test-push", {"synced": ("flows.py:hello", {"cpu": 1, "memory": "2 GiB"})})


def test_cli_path_provision_deploy_run_with_no_worker(prefect_server, push_pool, project, api):
    again = prefect_cli(prefect_server, "work-pool", "create", "--type", "remote:push", "--provision-infra", push_pool, "--overwrite")
    assert again.returncode == 0 and "reusing provider block" in again.stdout  # provisioning twice is harmless
    (project / "prefect.yaml").write_text(PREFECT_YAML)
    deployed = prefect_cli(prefect_server, "--no-prompt", "deploy", "--all", cwd=project)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert "Software environment senv-" in deployed.stdout
    ran = prefect_cli(prefect_server, "deployment", "run", "hello/synced", "--watch", "--watch-timeout", "240", cwd=project)
    deployment = api.read_deployment_by_name("hello/synced")
    [flow_run] = [r for r in api.read_flow_runs() if r.deployment_id == deployment.id]
    logs = "\n".join(run_logs(api, flow_run.id))
    assert ran.returncode == 0 and "Completed" in ran.stdout, ran.stdout + ran.stderr + logs
    assert flow_run.state_name == "Completed"
    assert flow_run.labels["prefect.worker.name"].startswith("prefect-remote push (test-push)")  # the in-server service
    assert "hello from the flow" in logs  # printed by the flow
    assert (
        "on this host" in logs.split("booting machine", 1)[1].splitlines()[0] and "software environment senv-" in logs
    )  # the machine's boot, rebuilt env
    assert f"Machine {flow_run.infrastructure_pid} launched on local" in logs
    # The engine reports Completed moments before the payload exits and the agent ends the machine.
    ended = lambda: next((m for m in [LocalProvider().describe(flow_run.infrastructure_pid)] if not m.alive), None)  # noqa: E731
    machine = wait_for(ended, timeout=30, message="the machine to end")
    assert machine.reason == "payload finished"


def test_the_synced_code_runs_from_the_machine_not_the_project_folder(prefect_server, push_pool, api, tmp_path):
    """The project's folder exists on a local machine (it is this computer), but a run with package
    sync loads the code synced into its machine's work folder all the same, as on a cloud: whatever
    the pull step, and for a module-path entrypoint too."""
    deployments = pull_deployments("local")
    deployments["scratch-local"] = ("flows.located", SIZED, "/scratch/batch")  # a module path
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "PREFECT_HOME": str(SESSION_HOME / "prefect-cli"), "COLUMNS": "80"}
    files = {"flows.py": FLOWS, "prefect.yaml": prefect_yaml("local-project", push_pool, deployments, pull=None)}
    folder = deploy_project(env, tmp_path, files, str(SESSION_HOME / "store"))
    for flow_run in completed_runs(api, env, folder, [f"located/{name}" for name in deployments]):
        assert_ran_synced_code(api, flow_run, work_folder=str(SESSION_HOME / "machines" / flow_run.infrastructure_pid / "work"))


def test_cancelling_a_run_ends_its_machine(push_pool, project, api):
    run = api.create_flow_run_from_deployment(deploy(api, project, push_pool, "sleeper"))
    machine_id = wait_for(
        lambda: api.read_flow_run(run.id).state_name == "Running" and api.read_flow_run(run.id).infrastructure_pid, timeout=120
    )
    api.set_flow_run_state(run.id, Cancelling(), force=True)
    cancelled = time.monotonic()
    provider = LocalProvider()
    wait_for(lambda: not provider.describe(machine_id).alive, timeout=10, message="the machine to end")
    assert time.monotonic() - cancelled <= 10
    wait_for(lambda: api.read_flow_run(run.id).state_name == "Cancelled" and not provider.describe(machine_id).alive, timeout=15)
    time.sleep(2)
    assert api.read_flow_run(run.id).state_name == "Cancelled"  # and stays so


def test_a_killed_machine_crashes_its_run(push_pool, project, api):
    run = api.create_flow_run_from_deployment(deploy(api, project, push_pool, "sleeper"))
    machine_id = wait_for(
        lambda: api.read_flow_run(run.id).state_name == "Running" and api.read_flow_run(run.id).infrastructure_pid, timeout=120
    )
    LocalProvider().terminate([machine_id], reason="killed by the test")
    killed = time.monotonic()
    final = wait_final(api, run.id, timeout=30)
    assert time.monotonic() - killed <= 30 and final.state_name == "Crashed"
    logged(api, run.id, "killed by the test")


def test_a_run_past_its_timeout_crashes_and_its_machine_ends(push_pool, project, api):
    run = api.create_flow_run_from_deployment(deploy(api, project, push_pool, "sleeper", timeout="8s"))
    final = wait_final(api, run.id, timeout=120)
    assert final.state_name == "Crashed"
    [machine] = LocalProvider().wait([final.infrastructure_pid], timeout=15)  # the engine reports before its machine is gone
    assert machine.reason.startswith("timeout: ran longer than 8s")
    logged(api, run.id, "timeout: ran longer than 8s")


@pytest.mark.parametrize(
    ("job_variables", "fragment"),
    [
        ({"memory": "lots"}, "memory='lots': expected a size"),
        ({"cpu": -1}, "cpu=-1: expected a whole number of CPUs"),
        (
            {"provider": "nope"},
            "job variable provider='nope': this run would use the nope provider; work pool 'test-push' allows only local",
        ),
        ({"software": "senv-0000000000000000"}, "'senv-0000000000000000' is not in the store"),
        ({"image": "app:1", "container": "app:2"}, "image='app:1' and container='app:2' disagree: container is the older name of image"),
        ({"gpu": True}, "provider 'local' does not offer GPUs"),
    ],
)
def test_bad_job_variables_fail_the_run_clearly_and_start_nothing(push_pool, project, api, job_variables, fragment):
    run = api.create_flow_run_from_deployment(deploy(api, project, push_pool, **job_variables))
    final = wait_final(api, run.id, timeout=60)
    assert final.state_name in ("Crashed", "Failed")
    assert fragment in (final.state.message or "")
    assert LocalProvider().list({"prefect.io/flow-run-id": str(run.id)}, include_terminated=True) == []


def cloud_pool(api, name: str, **provider_variable) -> str:
    """A remote:push pool the server's push service serves (its name starts test-push-guarded-), whose
    template names its provider as ``provider_variable`` says (``default``, ``enum``), as a pool
    provisioned for a cloud has it; nothing of the cloud is needed to refuse a run."""
    from prefect.client.schemas.actions import WorkPoolCreate

    from prefect_remote.workers.worker import RemotePushWorker

    template = RemotePushWorker.get_default_base_job_template()
    template["variables"]["properties"]["provider"].update(provider_variable)
    api.create_work_pool(WorkPoolCreate(name=name, type="remote:push", base_job_template=template), overwrite=True)
    return name


def test_a_deployment_cannot_move_a_cloud_pools_runs_onto_the_servers_host(push_pool, project, api, tmp_path):
    pool = cloud_pool(api, "test-push-guarded-aws", default="aws")
    marker = tmp_path / "ran-on-the-server-host"
    command = f"touch {marker}"
    run = api.create_flow_run_from_deployment(deploy(api, project, pool, provider="local", command=command))
    final = wait_final(api, run.id, timeout=60)
    assert final.state_name in ("Crashed", "Failed")
    assert "job variable provider='local': this run would use the local provider; work pool 'test-push-guarded-aws' allows only aws" in (
        final.state.message or ""
    )
    assert LocalProvider().list({"prefect.io/flow-run-id": str(run.id)}, include_terminated=True) == []
    assert not marker.exists()


def test_a_deployment_cannot_swap_the_pools_provider_block(push_pool, project, api):
    other_block = {"provider": "local", "options": {"isolation": "process"}}
    run = api.create_flow_run_from_deployment(deploy(api, project, push_pool, credentials=other_block))
    final = wait_final(api, run.id, timeout=60)
    assert final.state_name in ("Crashed", "Failed")
    assert "work pool 'test-push' takes its provider block from its template; a deployment cannot swap it" in (final.state.message or "")
    assert LocalProvider().list({"prefect.io/flow-run-id": str(run.id)}, include_terminated=True) == []


def test_a_pool_that_lists_local_among_its_providers_runs_there(push_pool, project, api):
    pool = cloud_pool(api, "test-push-guarded-aws-or-local", default="aws", enum=["aws", "local"])
    run = api.create_flow_run_from_deployment(deploy(api, project, pool, provider="local"))
    final = wait_final(api, run.id, timeout=120)
    assert final.state_name == "Completed", final.state.message
