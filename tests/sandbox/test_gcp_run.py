"""The sandbox's Cloud Run v2 jobs, driven by google-cloud-run over REST: each task runs as a local
machine, and what it does shows as Cloud Run reports it."""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import pytest
from google.api import launch_stage_pb2
from google.api_core import exceptions
from google.auth.credentials import AnonymousCredentials, Credentials
from google.auth.exceptions import InvalidOperation
from google.cloud import run_v2

from tests.conftest import wait_for

SUCCEEDED, FAILED = 4, 3  # Condition.State


def _job(gcp_sandbox, script: str, *, env=(), limits=None, retries: int = 0, timeout: int = 120, node_selector=None) -> run_v2.Job:
    container = run_v2.Container(
        image="python:3.12-slim",  # recorded, not pulled: the sandbox's image is this host
        command=["bash", "-c"],
        args=[script],
        env=list(env),
        resources=run_v2.ResourceRequirements(limits=limits or {"cpu": "1", "memory": "512Mi"}),
    )
    template = run_v2.TaskTemplate(
        containers=[container], max_retries=retries, timeout=f"{timeout}s", service_account=gcp_sandbox.machine_account
    )
    if node_selector:
        template.node_selector = run_v2.NodeSelector(accelerator=node_selector)
    return run_v2.Job(labels={"prefect-remote-launch": "l-test"}, template=run_v2.ExecutionTemplate(task_count=1, template=template))


def _create(google, gcp_sandbox, job: run_v2.Job) -> run_v2.Job:
    parent = f"projects/{google.project}/locations/{gcp_sandbox.region}"
    return google.run("jobs").create_job(parent=parent, job=job, job_id=f"run-{secrets.token_hex(6)}").result()


def _finished(google, name: str, timeout: float = 30) -> run_v2.Execution:
    executions = google.run("executions")
    return wait_for(
        lambda: (e := executions.get_execution(name=name)).completion_time and e,
        timeout=timeout,
        interval=0.2,
        message=f"{name} to complete",
    )


def test_a_task_runs_its_command_with_cloud_runs_env_and_reports_its_exit_code(google, gcp_sandbox, tmp_path):
    out = tmp_path / "env"
    script = (
        'echo starting; echo "$CLOUD_RUN_JOB $CLOUD_RUN_EXECUTION $CLOUD_RUN_TASK_INDEX '
        f'$CLOUD_RUN_TASK_ATTEMPT $CLOUD_RUN_TASK_COUNT $GREETING $GCE_METADATA_HOST" > {out}; exit 3'
    )
    job = _create(google, gcp_sandbox, _job(gcp_sandbox, "exit 0", env=[run_v2.EnvVar(name="GREETING", value="hello")]))
    assert job.labels["prefect-remote-launch"] == "l-test" and job.template.template.max_retries == 0
    assert google.run("jobs").get_job(name=job.name).name == job.name

    override = run_v2.RunJobRequest.Overrides(
        container_overrides=[run_v2.RunJobRequest.Overrides.ContainerOverride(args=[script])], task_count=1
    )
    operation = google.run("jobs").run_job(request=run_v2.RunJobRequest(name=job.name, overrides=override))
    execution = _finished(google, operation.metadata.name)

    assert (execution.failed_count, execution.succeeded_count, execution.running_count) == (1, 0, 0)
    [completed] = [c for c in execution.conditions if c.type_ == "Completed"]
    assert completed.state == FAILED and "exited with an error" in completed.message
    [task] = google.run("tasks").list_tasks(parent=execution.name)
    assert task.last_attempt_result.exit_code == 3  # the machine's own exit code, not 0/1
    assert task.retried == 0 and task.completion_time
    job_id = job.name.rsplit("/", 1)[1]
    assert out.read_text().split() == [
        job_id,
        execution.name.rsplit("/", 1)[1],
        "0",
        "0",
        "1",
        "hello",
        f"{gcp_sandbox.runner.reachable_url(gcp_sandbox.url).split('://')[1]}/{execution.name.rsplit('/', 1)[1]}-task0",
    ]
    assert (
        google.run("jobs").get_job(name=job.name).latest_created_execution.completion_status
        == run_v2.ExecutionReference.CompletionStatus.EXECUTION_FAILED
    )
    # What it printed is in Cloud Logging, as Cloud Run puts it there.
    stdout = (
        f'logName="projects/{google.project}/logs/run.googleapis.com%2Fstdout" AND '
        f'labels."run.googleapis.com/execution_name"="{execution.name.rsplit("/", 1)[1]}"'
    )
    assert [entry.payload for entry in google.logging().list_entries(filter_=stdout)] == ["starting"]

    google.run("jobs").delete_job(name=job.name).result()
    with pytest.raises(exceptions.NotFound):
        google.run("jobs").get_job(name=job.name)


def test_a_secret_reaches_the_task_and_a_missing_one_fails_it(google, gcp_sandbox, tmp_path):
    client = google.secrets()
    secret = client.create_secret(
        parent=f"projects/{google.project}", secret_id=f"prefect-remote-{secrets.token_hex(4)}", secret={"replication": {"automatic": {}}}
    )
    client.add_secret_version(parent=secret.name, payload={"data": b'{"TOKEN": "s3cret"}'})
    out = tmp_path / "secret"
    reference = run_v2.EnvVarSource(secret_key_ref=run_v2.SecretKeySelector(secret=secret.name.rsplit("/", 1)[1], version="latest"))
    job = _create(
        google,
        gcp_sandbox,
        _job(
            gcp_sandbox,
            f'echo "$PREFECT_REMOTE_SECRETS_JSON" > {out}',
            env=[run_v2.EnvVar(name="PREFECT_REMOTE_SECRETS_JSON", value_source=reference)],
        ),
    )
    assert "s3cret" not in str(google.run("jobs").get_job(name=job.name))  # a reference, never the value
    execution = _finished(google, google.run("jobs").run_job(name=job.name).metadata.name)
    assert execution.succeeded_count == 1
    assert out.read_text().strip() == '{"TOKEN": "s3cret"}'

    missing = run_v2.EnvVarSource(secret_key_ref=run_v2.SecretKeySelector(secret="prefect-remote-none", version="latest"))
    job = _create(google, gcp_sandbox, _job(gcp_sandbox, "exit 0", env=[run_v2.EnvVar(name="S", value_source=missing)]))
    execution = _finished(google, google.run("jobs").run_job(name=job.name).metadata.name)
    [task] = google.run("tasks").list_tasks(parent=execution.name)
    assert execution.failed_count == 1 and "prefect-remote-none/versions/latest was not found" in task.last_attempt_result.status.message

    # Cloud Run reads the secret as the task's account: one it may not read (the machines' account is granted
    # prefect-remote's secrets only) fails the task, as Cloud Run fails it.
    other = client.create_secret(
        parent=f"projects/{google.project}", secret_id=f"other-{secrets.token_hex(4)}", secret={"replication": {"automatic": {}}}
    )
    client.add_secret_version(parent=other.name, payload={"data": b"x"})
    refused = run_v2.EnvVarSource(secret_key_ref=run_v2.SecretKeySelector(secret=other.name.rsplit("/", 1)[1], version="1"))
    job = _create(google, gcp_sandbox, _job(gcp_sandbox, "exit 0", env=[run_v2.EnvVar(name="S", value_source=refused)]))
    execution = _finished(google, google.run("jobs").run_job(name=job.name).metadata.name)
    [task] = google.run("tasks").list_tasks(parent=execution.name)
    message = task.last_attempt_result.status.message
    assert execution.failed_count == 1 and f"Permission denied on secret: {other.name}/versions/1 for service account" in message, message
    assert "roles/secretmanager.secretAccessor" in message
    client.delete_secret(name=other.name)


def test_cancel_ends_the_running_machine(google, gcp_sandbox, tmp_path):
    marker = tmp_path / "pid"
    job = _create(google, gcp_sandbox, _job(gcp_sandbox, f"echo $$ > {marker}.tmp && mv {marker}.tmp {marker}; exec sleep 600"))
    name = google.run("jobs").run_job(name=job.name).metadata.name
    wait_for(marker.exists, timeout=30, message="the task's command to run")
    pid = int(marker.read_text())
    assert google.run("executions").get_execution(name=name).running_count == 1

    google.run("executions").cancel_execution(name=name).result()
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), timeout=15, message="the task's machine to end")
    execution = _finished(google, name)
    assert execution.cancelled_count == 1 and execution.running_count == 0
    with pytest.raises(exceptions.BadRequest):  # as Cloud Run: a finished execution cannot be cancelled
        google.run("executions").cancel_execution(name=name)


def test_a_task_past_its_timeout_is_killed_and_failed(google, gcp_sandbox):
    job = _create(google, gcp_sandbox, _job(gcp_sandbox, "exec sleep 600", timeout=1))
    started = time.monotonic()
    execution = _finished(google, google.run("jobs").run_job(name=job.name).metadata.name)
    [task] = google.run("tasks").list_tasks(parent=execution.name)
    assert execution.failed_count == 1 and "timeout" in task.last_attempt_result.status.message
    assert time.monotonic() - started < 15


def test_shapes_cloud_run_refuses(google, gcp_sandbox):
    with pytest.raises(exceptions.BadRequest, match="For 1.0 CPU, memory must be between 512Mi and 4Gi"):
        _create(google, gcp_sandbox, _job(gcp_sandbox, "exit 0", limits={"cpu": "1", "memory": "8Gi"}))
    with pytest.raises(exceptions.BadRequest, match="at least 4 CPU and 16Gi"):
        _create(
            google,
            gcp_sandbox,
            _job(gcp_sandbox, "exit 0", limits={"cpu": "2", "memory": "8Gi", "nvidia.com/gpu": "1"}, node_selector="nvidia-l4"),
        )
    with pytest.raises(exceptions.BadRequest, match="timeout"):
        _create(google, gcp_sandbox, _job(gcp_sandbox, "exit 0", timeout=169 * 3600))
    long = _job(gcp_sandbox, "exit 0", timeout=48 * 3600)
    with pytest.raises(exceptions.BadRequest, match="Preview"):
        _create(google, gcp_sandbox, long)
    long.launch_stage = launch_stage_pb2.LaunchStage.BETA
    assert _create(google, gcp_sandbox, long).template.template.timeout.total_seconds() == 48 * 3600
    fine = _create(
        google,
        gcp_sandbox,
        _job(gcp_sandbox, "exit 0", limits={"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"}, node_selector="nvidia-l4", timeout=3600),
    )
    assert fine.template.template.node_selector.accelerator == "nvidia-l4"
    job = _job(gcp_sandbox, "exit 0")
    job.template.template.service_account = f"nobody@{google.project}.iam.gserviceaccount.com"
    with pytest.raises(exceptions.Forbidden, match=r"iam.serviceaccounts.actAs' denied .*\(or it may not exist\)"):
        _create(google, gcp_sandbox, job)  # the launcher may act as the machines' account only, so IAM answers first
    with gcp_sandbox.enforcing(False), pytest.raises(exceptions.BadRequest, match="does not exist"):
        _create(google, gcp_sandbox, job)  # as an owner, who may act as any account


def test_direct_vpc_egress_into_what_the_project_has_only(google, gcp_sandbox):
    def with_vpc(**interface) -> run_v2.Job:
        job = _job(gcp_sandbox, "exit 0")
        job.template.template.vpc_access = run_v2.VpcAccess(
            network_interfaces=[run_v2.VpcAccess.NetworkInterface(**interface)], egress=run_v2.VpcAccess.VpcEgress.PRIVATE_RANGES_ONLY
        )
        return job

    made = _create(google, gcp_sandbox, with_vpc(network="default", tags=["prefect-remote"]))
    assert list(made.template.template.vpc_access.network_interfaces[0].tags) == ["prefect-remote"]
    with pytest.raises(exceptions.BadRequest, match="network 'lab' not found"):
        _create(google, gcp_sandbox, with_vpc(network="lab"))
    with pytest.raises(exceptions.BadRequest, match="subnetwork 'lab-a' not found"):
        _create(google, gcp_sandbox, with_vpc(network="default", subnetwork="lab-a"))
    with pytest.raises(exceptions.BadRequest, match="are not network tags"):
        _create(google, gcp_sandbox, with_vpc(network="default", tags=["Not A Tag"]))
    with pytest.raises(exceptions.BadRequest, match="at least one of network or subnetwork"):
        _create(google, gcp_sandbox, with_vpc(tags=["prefect-remote"]))


def test_an_unauthenticated_call_is_refused(gcp_sandbox, google):
    name = f"projects/{google.project}/locations/{gcp_sandbox.region}/jobs/run-000000000000"

    class Revoked(Credentials):
        """A token the sandbox never issued (refreshing gives the same)."""

        def refresh(self, request):
            self.token = "ya29.revoked"

    client = run_v2.JobsClient(transport="rest", credentials=Revoked(), client_options={"api_endpoint": gcp_sandbox.url})
    with pytest.raises(exceptions.Unauthorized, match="invalid authentication credentials"):
        client.get_job(name=name)
    anonymous = run_v2.JobsClient(transport="rest", credentials=AnonymousCredentials(), client_options={"api_endpoint": gcp_sandbox.url})
    with pytest.raises(InvalidOperation):  # google-auth's answer to a 401 for anonymous credentials
        anonymous.get_job(name=name)


def test_a_failed_attempt_is_retried_with_the_next_attempt_number(google, gcp_sandbox):
    job = _create(google, gcp_sandbox, _job(gcp_sandbox, '[ "$CLOUD_RUN_TASK_ATTEMPT" = 1 ]', retries=1))
    execution = _finished(google, google.run("jobs").run_job(name=job.name).metadata.name)
    [task] = google.run("tasks").list_tasks(parent=execution.name)
    assert (execution.succeeded_count, execution.retried_count, task.retried) == (1, 1, 1)
    [completed] = [c for c in execution.conditions if c.type_ == "Completed"]
    assert completed.state == SUCCEEDED


TASK_USES_GOOGLE = """
import os, google.auth
from google.cloud import secretmanager, storage
credentials, project = google.auth.default()  # the metadata server, as on Cloud Run
endpoint = {"api_endpoint": os.environ["PREFECT_REMOTE_GCP_API_ENDPOINT"]}
client = secretmanager.SecretManagerServiceClient(transport="rest", credentials=credentials, client_options=endpoint)
payload = client.access_secret_version(name=f"projects/{project}/secrets/%s/versions/latest").payload.data.decode()
store = storage.Client(project=project).bucket("prefect-remote-sandbox")  # the sandbox's endpoint from the environment
list(store.list_blobs(max_results=1))  # the store's objects: the machines' account may list them
print(project, payload, store.name)
"""


def test_a_task_reaches_the_apis_with_its_service_accounts_token(google, gcp_sandbox):
    import sys

    secret_id = f"prefect-remote-{secrets.token_hex(4)}"
    client = google.secrets()
    secret = client.create_secret(parent=f"projects/{google.project}", secret_id=secret_id, secret={"replication": {"automatic": {}}})
    client.add_secret_version(parent=secret.name, payload={"data": b"from-secret-manager"})
    job = _job(gcp_sandbox, "")
    job.template.template.containers[0].command = [sys.executable, "-c", TASK_USES_GOOGLE % secret_id]
    job.template.template.containers[0].args = []
    execution = _finished(google, google.run("jobs").run_job(name=_create(google, gcp_sandbox, job).name).metadata.name, timeout=60)
    [task] = google.run("tasks").list_tasks(parent=execution.name)
    stdout = (
        f'logName="projects/{google.project}/logs/run.googleapis.com%2Fstdout" AND '
        f'labels."run.googleapis.com/execution_name"="{task.execution}"'
    )
    printed = [entry.payload for entry in google.logging().list_entries(filter_=stdout)]
    assert execution.succeeded_count == 1, printed
    [line] = printed
    project, payload, *buckets = line.split()
    assert (project, payload, *buckets) == (google.project, "from-secret-manager", "prefect-remote-sandbox"), line
    assert gcp_sandbox.calls["storage.GET"] >= 1  # GCS requests are counted with the APIs'


def test_cloud_runs_quotas_are_served_by_cloud_quotas_and_a_job_over_them_is_refused(google, gcp_sandbox):
    """QuotaInfo as the Cloud Quotas API lists it (the region's own value, then the project's
    default), read with cloudquotas.quotas.get; a job whose task takes more than a quota is refused
    at creation, naming each quota it violates."""
    import requests

    base = f"{gcp_sandbox.url}/v1/projects/{google.project}/locations/global/services/run.googleapis.com/quotaInfos"

    def get(path: str, account: str = gcp_sandbox.launcher_account) -> requests.Response:
        token = gcp_sandbox.api.issue_token(f"serviceAccount:{account}")["access_token"]
        return requests.get(base + path, headers={"Authorization": f"Bearer {token}"}, timeout=10)

    gcp_sandbox.quotas.set_quota("CpuAllocPerProjectRegion", 2000, region=gcp_sandbox.region)
    try:
        info = get("/CpuAllocPerProjectRegion").json()
        assert info["metric"] == "run.googleapis.com/cpu_allocation" and info["metricUnit"] == "milli-vCPU"
        assert info["dimensionsInfos"][0] == {
            "dimensions": {"region": gcp_sandbox.region},
            "details": {"value": "2000"},
            "applicableLocations": [gcp_sandbox.region],
        }
        assert info["dimensionsInfos"][-1]["details"] == {"value": "20000"}  # every other region: the default
        assert {q["quotaId"] for q in get("").json()["quotaInfos"]} >= {"CpuAllocPerProjectRegion", "MemAllocPerProjectRegion"}
        with pytest.raises(exceptions.BadRequest, match="Quota violated:\nCpuAllocPerProjectRegion requested: 4000 allowed: 2000"):
            _create(google, gcp_sandbox, _job(gcp_sandbox, "exit 0", limits={"cpu": "4", "memory": "2Gi"}))
        assert _create(google, gcp_sandbox, _job(gcp_sandbox, "exit 0", limits={"cpu": "2", "memory": "2Gi"})).name
    finally:
        gcp_sandbox.quotas.set_quota("CpuAllocPerProjectRegion", None, region=gcp_sandbox.region)
    assert get("/NoSuchQuota").status_code == 404
    # The machines' account holds no cloudquotas.quotas.get: refused as Google refuses it.
    refused = get("/CpuAllocPerProjectRegion", gcp_sandbox.machine_account)
    assert refused.status_code == 403 and "cloudquotas.quotas.get" in refused.json()["error"]["message"]
