"""The seed's flow path on the sandbox GCP, as a user would walk it: a remote:push pool provisioned
for gcp, `prefect deploy` with package sync storing to Cloud Storage, and `prefect deployment run`
completing on a Cloud Run execution (or, with ``gcp_service: compute``, a Compute Engine VM), its
boot and payload logs in the run's logs. Runs are submitted by `prefect-remote push serve`, started
in the sandbox's environment. Bad input fails before anything starts, with the fix named."""

from __future__ import annotations

import re
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.workers.conftest import (
    FLOWS,
    SCALE_OUT,
    assert_ran_synced_code,
    cancel_ends_machine,
    completed_run,
    completed_runs,
    deploy,
    deploy_project,
    logged,
    prefect_yaml,
    pull_deployments,
    run_logs,
    sandbox_shell,
    scaled_out,
    wait_final,
)

POOL = "test-push-gcp"
EXITING = textwrap.dedent(
    """
    import os
    from prefect import flow

    @flow
    def exiting(code: int = 3) -> None:
        print("about to exit", flush=True)  # to the machine's log: the engine has no time to send logs
        os._exit(code)  # the process ends at once: only its exit code says how (sys.exit is reported by the engine, which exits 0)
    """
)
PULLS = pull_deployments("on-cloud-run")
PREFECT_YAML = prefect_yaml(
    "gcp-project",
    POOL,
    {
        "on-cloud-run": ("flows.py:hello", {"cpu": 1}),
        "sleeping-on-cloud-run": ("flows.py:sleeper", {"cpu": 1}),
        "exiting-on-cloud-run": ("exiting.py:exiting", {"cpu": 1}),
        "on-compute": ("flows.py:hello", {"cpu": 2, "gcp_service": "compute"}),
        "scale-out-on-cloud-run": ("scale_out.py:my_flow", {"cpu": 1}),
        **PULLS,
    },
    pull=None,  # no pull section: Prefect's default, as users leave it
)


@pytest.fixture(scope="module")
def gcp_shell(prefect_server, gcp_sandbox, tmp_path_factory) -> dict[str, str]:
    """A shell's environment after `prefect-remote sandbox gcp`, with the session's Prefect server
    reached at the sandbox host (as machines reach it), and `prefect-remote push serve` running
    (picking runs up every second)."""
    settings = {"PREFECT_REMOTE_GCP_LEASE_INTERVAL": "5", "PREFECT_WORKER_QUERY_SECONDS": "1"}
    with sandbox_shell(gcp_sandbox, prefect_server, "gcp", POOL, tmp_path_factory.mktemp("push-serve-gcp"), **settings) as env:
        yield env


@pytest.fixture(scope="module")
def deployed(gcp_shell, tmp_path_factory) -> Path:
    files = {"flows.py": FLOWS, "exiting.py": EXITING, "scale_out.py": SCALE_OUT, "prefect.yaml": PREFECT_YAML}
    return deploy_project(gcp_shell, tmp_path_factory.mktemp("gcp-project"), files, "gs://")


def provider_block(api, pool: str = POOL):
    from prefect_remote.workers.config import RemoteProviderCredentials

    document = api.read_block_document_by_name(f"{pool}-provider", RemoteProviderCredentials.get_block_type_slug())
    return RemoteProviderCredentials.model_validate(document.data)


def job_state(gcp_sandbox, machine_id: str) -> str | None:
    """The Cloud Run job's latest execution's state as the sandbox has it: None once the job is gone."""
    from google.api_core.exceptions import NotFound
    from google.cloud import run_v2

    jobs = _run_client(gcp_sandbox, run_v2.JobsClient)
    try:
        job = jobs.get_job(name=f"projects/{gcp_sandbox.project}/locations/{gcp_sandbox.region}/jobs/{machine_id}")
    except NotFound:
        return None
    return run_v2.ExecutionReference.CompletionStatus(job.latest_created_execution.completion_status).name


def _run_client(gcp_sandbox, factory):
    from google.oauth2 import service_account

    credentials = service_account.Credentials.from_service_account_file(
        str(gcp_sandbox.key_file), scopes=["https://www.googleapis.com/auth/cloud-platform"]
    )
    return factory(transport="rest", credentials=credentials, client_options={"api_endpoint": gcp_sandbox.url})


def test_pool_records_the_project_and_service_account(gcp_shell, api, gcp_sandbox):
    block = provider_block(api)
    assert block.provider == "gcp" and block.project == gcp_sandbox.project
    assert block.service_account and block.service_account.endswith(f"@{gcp_sandbox.project}.iam.gserviceaccount.com")
    assert block.store and block.store.startswith("gs://")


def test_deployment_runs_on_cloud_run(gcp_shell, deployed, api, gcp_sandbox):
    flow_run = completed_run(api, gcp_shell, deployed, "hello/on-cloud-run")
    machine_id = flow_run.infrastructure_pid
    assert machine_id.startswith("run-")
    logs = "\n".join(run_logs(api, flow_run.id))
    assert "hello from the flow" in logs  # the payload's own output
    assert (
        "booting machine on gcp Cloud Run (1 cpu / 2 GiB, us-central1)" in logs
        and "agent: ready" in logs
        and "software environment senv-" in logs
    )  # boot phases
    assert re.search(rf"Machine {machine_id} launched on gcp: cloud-run-1cpu-2gib in us-central1, on-demand, \$\d+\.\d{{4}}/hour", logs), (
        logs
    )
    assert f"Machine {machine_id} runs on Cloud Run, because the machine needs no inbound connections" in logs
    assert re.search(rf"Machine {machine_id} ended: payload finished; estimated cost \$\d+\.\d{{4}}", logs), logs


def test_the_synced_code_runs_wherever_the_pull_step_points(gcp_shell, deployed, api):
    # No pull section (the project's path on this computer), the guide's /scratch/batch, and "."; at once.
    for flow_run in completed_runs(api, gcp_shell, deployed, [f"located/{name}" for name in PULLS]):
        assert_ran_synced_code(api, flow_run)
        assert f"Machine {flow_run.infrastructure_pid} runs on Cloud Run" in "\n".join(run_logs(api, flow_run.id))


def test_a_failing_flow_reports_its_exit_code(gcp_shell, deployed, api):
    run_id = api.create_flow_run_from_deployment(api.read_deployment_by_name("exiting/exiting-on-cloud-run").id).id
    final = wait_final(api, run_id, timeout=300)
    assert final.state_name in ("Crashed", "Failed"), "\n".join(run_logs(api, run_id))
    try:
        logged(api, run_id, "(exit code 3)", timeout=30)  # the engine reports before its machine has ended
    except AssertionError:
        raise AssertionError("\n".join(run_logs(api, run_id))) from None
    logs = "\n".join(run_logs(api, run_id))
    assert "about to exit" in logs
    assert re.search(rf"Machine {final.infrastructure_pid} ended: payload exited with code 3 \(exit code 3\)", logs), logs
    assert final.state_name == "Crashed" and "non-zero status code 3" in (final.state.message or ""), final.state


def test_cancelling_a_run_cancels_its_execution(gcp_shell, deployed, api, gcp_sandbox):
    # The job is deleted once its execution is cancelled: either is the execution's end.
    cancel_ends_machine(
        api, "sleeper/sleeping-on-cloud-run", lambda machine_id: job_state(gcp_sandbox, machine_id) in (None, "EXECUTION_CANCELLED")
    )


def test_gcp_service_compute_runs_on_a_vm(gcp_shell, deployed, api, gcp_env):
    from prefect_remote.providers.gcp import GCPProvider

    flow_run = completed_run(api, gcp_shell, deployed, "hello/on-compute")
    logs = "\n".join(run_logs(api, flow_run.id))
    machine_id = flow_run.infrastructure_pid
    assert machine_id.startswith("vm-")
    assert "hello from the flow" in logs and re.search(r"booting machine on gcp Compute Engine e2-\S+ in us-central1-a", logs), logs
    assert re.search(rf"Machine {machine_id} launched on gcp: e2-\S+ in us-central1, on-demand, \$\d+\.\d{{4}}/hour", logs), logs
    assert f"Machine {machine_id} runs on Compute Engine, because gcp_service='compute'" in logs
    assert re.search(rf"Machine {machine_id} ended: payload finished; estimated cost \$\d+\.\d{{4}}", logs), logs
    wait_for(lambda: not GCPProvider().describe(machine_id).alive, timeout=30, message="the VM deleted")


def test_the_guides_scale_out_flow_launches_its_function_from_cloud_run(gcp_shell, deployed, api, gcp_sandbox, gcp_env):
    """The flow run's Cloud Run task launches the function's cluster on Compute Engine, with the
    pool's settings (project, service account, store reached it from its launcher) and its own
    software environment; the task joins the VPC network (Direct VPC egress) to reach the VMs."""
    from prefect_remote.providers.gcp import GCPProvider

    scaled_out(api, gcp_shell, deployed, "my-flow/scale-out-on-cloud-run", GCPProvider(), gcp_sandbox)


# -- bad input: a clear error naming the fix, before anything starts ------------------------------
@pytest.mark.parametrize(
    ("job_variables", "fragment"),
    [
        (
            {"cpu": 1, "memory": "8 GiB", "gcp_service": "cloud-run"},
            "is not a shape Cloud Run allows (1 vCPU takes 512 MiB to 4 GiB); the nearest it allows is 2 vCPU with 8 GiB",
        ),
        ({"gpu": "a100", "gcp_service": "cloud-run"}, "Cloud Run offers one nvidia-l4 GPU per task"),
        ({"vm_type": "n2-standard-3"}, "vm_type=['n2-standard-3']: not a machine type in zone us-central1-a; did you mean n2-standard-"),
        ({"container": "python:3.12", "gcp_service": "compute"}, "Compute Engine VMs boot a stock image and run no container"),
        ({"region": "europe-west1"}, "this gcp provider launches in us-central1"),
    ],
    ids=["cloud-run-shape", "cloud-run-gpu", "unknown-vm-type", "container-on-compute", "other-region"],
)
def test_bad_job_variables_fail_the_run_clearly_and_start_nothing(gcp_shell, project, api, gcp_env, job_variables, fragment):
    from prefect_remote.providers.gcp import GCPProvider

    run = api.create_flow_run_from_deployment(deploy(api, project, POOL, **job_variables))
    final = wait_final(api, run.id, timeout=60)
    assert final.state_name in ("Crashed", "Failed")
    assert fragment in (final.state.message or ""), final.state.message
    assert GCPProvider().list({"prefect.io/flow-run-id": str(run.id)}, include_terminated=True) == []


def launch_one(**options):
    from prefect_remote.providers.base import BootPayload
    from prefect_remote.providers.gcp import GCPProvider
    from prefect_remote.spec import MachineSpec

    return GCPProvider(**options).launch(MachineSpec(), BootPayload(["true"]), tags={"test": "bad-input"})


def no_machines_tagged() -> bool:
    from prefect_remote.providers.gcp import GCPProvider

    return GCPProvider().list({"test": "bad-input"}, include_terminated=True) == []


def test_a_gpu_in_a_zone_without_gpus_names_zones_with_them(gcp_env):
    from prefect_remote.errors import CapabilityError
    from prefect_remote.providers.gcp import GCPProvider
    from prefect_remote.spec import MachineSpec

    with pytest.raises(CapabilityError, match=r"no GPU in zone us-central1-c; use a zone with GPUs .*us-central1-a has T4"):
        GCPProvider(zone="us-central1-c").check_spec(MachineSpec(gpu="t4"))


def test_no_project_names_the_setting(gcp_env, monkeypatch, tmp_path):
    import json

    from prefect_remote.providers.gcp.clients import GCPError

    key = json.loads(gcp_env.key_file.read_text())
    key.pop("project_id", None)  # credentials that name no project
    (tmp_path / "key.json").write_text(json.dumps(key))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "key.json"))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))  # no gcloud configuration either
    for name in ("GOOGLE_CLOUD_PROJECT", "GCLOUD_PROJECT", "PREFECT_REMOTE_GCP_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(GCPError, match="no Google Cloud project for the gcp provider: set PREFECT_REMOTE_GCP_PROJECT"):
        launch_one()


def test_no_credentials_fail_within_seconds(gcp_env, monkeypatch, tmp_path):
    from prefect_remote.providers.gcp.clients import GCPError

    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS")
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))  # no `gcloud auth application-default login`
    for name in ("GCE_METADATA_HOST", "GCE_METADATA_IP", "GCE_METADATA_ROOT"):
        monkeypatch.delenv(name, raising=False)  # no metadata server: google-auth pings the real one's address
    started = time.monotonic()
    with pytest.raises(
        GCPError, match=r"no Google Cloud credentials found .*`gcloud auth application-default login`.*GOOGLE_APPLICATION_CREDENTIALS"
    ):
        launch_one()
    assert time.monotonic() - started < 10


def test_a_missing_bucket_names_how_to_make_it(gcp_env, monkeypatch):
    from prefect_remote.software.store import StoreError

    monkeypatch.setenv("PREFECT_REMOTE_STORE", "gs://no-such-bucket/x")
    with pytest.raises(StoreError, match=r"bucket no-such-bucket does not exist .*gcloud storage buckets create gs://no-such-bucket"):
        launch_one()
    monkeypatch.setenv("PREFECT_REMOTE_STORE", gcp_env.store)
    assert no_machines_tagged()
