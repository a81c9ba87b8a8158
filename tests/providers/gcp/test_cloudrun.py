"""Cloud Run jobs as machines: the shapes Cloud Run allows and the reasons it cannot serve a spec
(pure, no network), and jobs run on the sandbox GCP's Cloud Run fake: exit codes, cancelling,
secrets only by reference, and cleanup."""

from __future__ import annotations

import hashlib
import json
import secrets
import time

import pytest

from prefect_remote.errors import CapacityError
from prefect_remote.providers.base import Launch
from prefect_remote.providers.gcp import GCPProvider
from prefect_remote.providers.gcp.cloudrun import CloudRunService
from prefect_remote.providers.gcp.cloudrun_catalog import GIB, L4, MIB, SHAPES, catalog, fit, nearest_shape, task_timeout
from prefect_remote.spec import MachineSpec


@pytest.fixture
def service(monkeypatch) -> CloudRunService:
    monkeypatch.setenv("PREFECT_REMOTE_STORE", "gs://unit-bucket/envs")  # its records' label is on every job
    return CloudRunService(GCPProvider(project="my-project", region="us-central1"))


def launch_of(spec: MachineSpec, boot_script: str, service: CloudRunService, *, tags=None, owner="tester", has_secrets=False) -> Launch:
    return Launch(
        id=f"launch-{secrets.token_hex(6)}",
        boot_script=boot_script,
        spec=spec,
        instance_type=service.choose_instance_type(spec),
        count=1,
        tags=tags or {},
        owner=owner,
        has_secrets=has_secrets,
    )


# -- shapes ---------------------------------------------------------------------------------------
def test_catalog_lists_only_shapes_cloud_run_allows_priced_from_its_list_prices():
    shapes = catalog()
    assert {item.cpu for item in shapes} == set(SHAPES)
    for item in shapes:
        low, high = SHAPES[item.cpu]
        assert low <= item.memory <= high, item
        assert item.arch == "x86_64"
        if item.gpu:
            assert (item.gpu, item.gpu_type) == (1, L4) and item.cpu >= 4 and item.memory >= 16 * GIB
    by_name = {item.name: item for item in shapes}
    # $0.000018 per vCPU-second and $0.000002 per GiB-second: 2 vCPU, 8 GiB = $0.1296 + $0.0576 an hour.
    assert by_name["cloud-run-2cpu-8gib"].price == pytest.approx(0.1872)
    # An L4 adds $0.0001867 a second.
    assert by_name["cloud-run-4cpu-16gib-l4"].price == pytest.approx(4 * 0.0648 + 16 * 0.0072 + 0.67212)
    assert "cloud-run-1cpu-8gib" not in by_name and "cloud-run-4cpu-1gib" not in by_name


@pytest.mark.parametrize(
    ("spec", "name"),
    [
        ({}, "cloud-run-1cpu-2gib"),  # a task's files live in memory: 2 GiB unless asked
        ({"memory": "512 MiB"}, "cloud-run-1cpu-512mib"),
        ({"memory": "3 GiB"}, "cloud-run-1cpu-3gib"),  # exactly what was asked: Cloud Run bills what is set
        ({"memory": "1.5 GiB"}, "cloud-run-1cpu-1536mib"),
        ({"cpu": 4}, "cloud-run-4cpu-2gib"),
        ({"cpu": [3, 8], "memory": "20 GiB"}, "cloud-run-6cpu-20gib"),  # the fewest vCPUs that take the memory
        ({"memory": "30 GiB"}, "cloud-run-8cpu-30gib"),
        ({"gpu": "l4", "timeout": "30 minutes"}, "cloud-run-4cpu-16gib-l4"),
        ({"gpu": "nvidia-l4", "cpu": 8, "timeout": "1 hour"}, "cloud-run-8cpu-16gib-l4"),
    ],
)
def test_the_cheapest_allowed_shape_is_chosen(service, spec, name):
    chosen = service.choose_instance_type(MachineSpec(**spec))
    assert chosen.name == name
    assert fit(MachineSpec(**spec)) == chosen


@pytest.mark.parametrize(
    ("spec", "pair"),
    [
        ({"cpu": 12}, (8, 4 * GIB)),
        ({"cpu": 1, "memory": "8 GiB"}, (2, 8 * GIB)),
        ({"cpu": 3}, (4, 2 * GIB)),
        ({"cpu": 8, "memory": "64 GiB"}, (8, 32 * GIB)),
        ({"memory": ["100 MiB", "200 MiB"]}, (1, 512 * MIB)),
        ({"cpu": 4, "memory": ["1 GiB", "1 GiB"]}, (4, 2 * GIB)),
        ({"gpu": "l4", "cpu": 2}, (4, 16 * GIB)),
    ],
)
def test_nearest_allowed_pair(spec, pair):
    assert nearest_shape(MachineSpec(**spec)) == pair


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ({"inbound": True}, "the machine must accept connections, which Cloud Run jobs do not"),
        ({"cpu": 12}, "cpu=12 is more than Cloud Run's 8 vCPU; the nearest it allows is 8 vCPU with 4 GiB"),
        (
            {"cpu": 1, "memory": "8 GiB"},
            "cpu=1, memory=8 GiB is not a shape Cloud Run allows (1 vCPU takes 512 MiB to 4 GiB); the nearest it allows is 2 "
            "vCPU with 8 GiB",
        ),
        ({"cpu": 3}, "cpu=3 is not a shape Cloud Run allows (it offers 1, 2, 4, 6 or 8 vCPU); the nearest it allows is 4 vCPU with 2 GiB"),
        ({"memory": "64 GiB"}, "memory=64 GiB is more than Cloud Run's 32 GiB; the nearest it allows is 8 vCPU with 32 GiB"),
        ({"memory": ["100 MiB", "200 MiB"]}, "the nearest it allows is 1 vCPU with 512 MiB"),
        ({"gpu": "t4", "timeout": "30m"}, "gpu=1x t4: Cloud Run offers one nvidia-l4 GPU per task, nothing else"),
        ({"gpu": 2, "timeout": "30m"}, "gpu=2x gpu: Cloud Run offers one nvidia-l4 GPU per task"),
        (
            {"gpu": "l4", "cpu": 2, "timeout": "30m"},
            "Cloud Run's L4 needs at least 4 vCPU and 16 GiB; the nearest it allows is 4 vCPU with 16 GiB",
        ),
        ({"gpu": "l4", "memory": ["8 GiB", "12 GiB"], "timeout": "30m"}, "Cloud Run's L4 needs at least 4 vCPU and 16 GiB"),
        ({"gpu": "l4"}, "no timeout: a Cloud Run task with a GPU runs at most 1h"),
        ({"gpu": "l4", "timeout": "2 hours"}, "timeout=2h: a Cloud Run task with a GPU runs at most 1h"),
        ({"timeout": "8 days"}, "timeout=8d: a Cloud Run task runs at most 7d"),
        ({"arm": True}, "arm=True: Cloud Run runs x86_64 only"),
        ({"spot_policy": "spot"}, "spot_policy='spot': Cloud Run has no spot capacity"),
        ({"spot_policy": "spot_with_fallback"}, "spot_policy='spot_with_fallback'"),
        ({"vm_type": "n2-standard-4"}, "vm_type=['n2-standard-4']: Cloud Run has no machine types"),
        ({"disk_size": 100}, "disk_size=100 GiB: Cloud Run tasks have no disk"),
    ],
)
def test_what_cloud_run_cannot_serve_is_said_with_the_fix(service, spec, words):
    problem = service.unfit(MachineSpec(**spec))
    assert problem is not None and words in problem, problem
    with pytest.raises(CapacityError, match="Cloud Run"):
        service.choose_instance_type(MachineSpec(**spec))


def test_an_l4_only_where_cloud_run_has_them():
    elsewhere = CloudRunService(GCPProvider(project="my-project", region="europe-west2"))
    problem = elsewhere.unfit(MachineSpec(gpu="l4", timeout="30m"))
    assert problem is not None and "Cloud Run has no L4 GPUs in europe-west2" in problem and "us-central1" in problem


@pytest.mark.parametrize(
    "spec",
    [
        {},
        {"cpu": 8, "memory": "32 GiB"},
        {"cpu": [1, 2]},
        {"timeout": "7 days"},
        {"container": "us-docker.pkg.dev/p/r/img:1"},
        {"gpu": "l4", "timeout": "1 hour"},
    ],
)
def test_what_cloud_run_serves(service, spec):
    assert service.unfit(MachineSpec(**spec)) is None


def test_the_facade_sends_what_cloud_run_cannot_serve_to_compute_engine_or_refuses_it():
    from prefect_remote.errors import CapabilityError

    spec = MachineSpec(cpu=2, inbound=True)
    chosen, reason = GCPProvider(project="my-project").service_for(spec)
    assert chosen.name == "Compute Engine" and "accept connections" in reason
    with pytest.raises(CapabilityError, match="gcp_service='cloud-run': cpu=12 is more than Cloud Run's 8 vCPU; the nearest"):
        GCPProvider(project="my-project", service="cloud-run").service_for(MachineSpec(cpu=12))


def test_task_timeout_leaves_the_agent_time_to_end_the_machine_itself():
    assert task_timeout(MachineSpec()) == 24 * 3600  # the longest outside Preview
    assert task_timeout(MachineSpec(timeout="1 hour")) == 3600 + 300
    assert task_timeout(MachineSpec(timeout="7 days")) == 7 * 24 * 3600  # at Cloud Run's limit, no grace left
    assert task_timeout(MachineSpec(gpu="l4", timeout="1 hour")) == 3600


def test_labels_use_gcp_syntax_and_tags_keep_theirs(service):
    tags = {"prefect.io/flow-run-id": "4f1d-ab", "team": "Data"}
    launch = launch_of(MachineSpec(), "true", service, tags=tags, owner="prefect-worker:w 1")
    assert service.labels(launch) == {
        "prefect_io_flow-run-id": "4f1d-ab",  # "Data" is no label value: it is only in the annotation
        "prefect-remote-service": "cloud-run",
        "prefect-remote-launch": launch.id,
        "prefect-remote-owner": "prefect-worker_w_1",
        "prefect-remote-records": service.provider.records.label,  # the pool's: another pool's provider leaves it alone
    }
    job = service.job(launch)
    assert json.loads(job.annotations["prefect-remote/tags"]) == tags
    assert job.annotations["prefect-remote/owner"] == "prefect-worker:w 1"


def test_the_job_runs_the_boot_script_once_in_the_chosen_shape(service):
    import sys

    from google.cloud import run_v2

    launch = launch_of(MachineSpec(cpu=2, memory="6 GiB", timeout="2 hours"), "echo booting", service)
    job = service.job(launch)
    body = json.loads(run_v2.Job.to_json(job))
    task = body["template"]["template"]
    [container] = task["containers"]
    assert container["image"] == f"docker.io/library/python:{sys.version_info.major}.{sys.version_info.minor}-slim"
    assert container["command"] == ["/bin/bash", "-c"] and container["args"] == ["echo booting"]
    assert container["resources"]["limits"] == {"cpu": "2", "memory": "6Gi"}
    assert task["maxRetries"] == 0 and task["timeout"] == "7500s"
    assert body["template"]["taskCount"] == 1
    assert "nodeSelector" not in task and not container.get("env")

    from google.api import launch_stage_pb2

    gpu = service.job(launch_of(MachineSpec(gpu="l4", timeout="1 hour"), "nvidia-smi", service))
    gpu_task = json.loads(run_v2.Job.to_json(gpu))["template"]["template"]
    assert gpu_task["nodeSelector"] == {"accelerator": "nvidia-l4"} and gpu_task["gpuZonalRedundancyDisabled"] is True
    assert gpu_task["containers"][0]["resources"]["limits"] == {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"}
    assert (
        gpu.launch_stage == launch_stage_pb2.LaunchStage.BETA != job.launch_stage
    )  # BETA (google.api.LaunchStage): GPU jobs, a Preview feature in 2025

    own = service.job(launch_of(MachineSpec(container="us-docker.pkg.dev/p/r/img:1"), "true", service))
    assert own.template.template.containers[0].image == "us-docker.pkg.dev/p/r/img:1"


def test_a_task_joins_the_vpc_network_for_private_addresses_only(service):
    """Direct VPC egress: a flow run reaches the VMs of a cluster it starts on their internal
    addresses (from the subnetwork's range, which their firewall rule admits); the rest leaves as before."""
    from google.cloud import run_v2

    def as_sent(job) -> dict:  # as the REST transport sends it: no default values
        return json.loads(run_v2.Job.to_json(job, always_print_fields_with_no_presence=False))

    body = as_sent(service.job(launch_of(MachineSpec(), "true", service)))
    assert body["template"]["template"]["vpcAccess"] == {"networkInterfaces": [{"network": "default"}], "egress": 2}  # PRIVATE_RANGES_ONLY
    lab = GCPProvider(
        project="my-project", region="us-central1", network="global/networks/lab", subnetwork="regions/us-central1/subnetworks/lab-a"
    )
    other = CloudRunService(lab)
    body = as_sent(other.job(launch_of(MachineSpec(), "true", other)))
    assert body["template"]["template"]["vpcAccess"]["networkInterfaces"] == [{"network": "lab", "subnetwork": "lab-a"}]


def test_secrets_are_a_reference_in_the_job_never_a_value(service):
    from google.cloud import run_v2

    launch = launch_of(MachineSpec(environ={}), "true", service, has_secrets=True)
    body = json.loads(run_v2.Job.to_json(service.job(launch)))
    [env] = body["template"]["template"]["containers"][0]["env"]
    assert env == {
        "name": "PREFECT_REMOTE_SECRETS_JSON",
        "valueSource": {"secretKeyRef": {"secret": f"prefect-remote-{service.provider.records.label}-{launch.id}", "version": "1"}},
    }  # the pool's secret, its one version: never `latest`, which a version added later would change


# -- on the sandbox's Cloud Run ---------------------------------------------------------------------
@pytest.fixture
def sandboxed(gcp_env):
    """A Cloud Run service of a provider that reaches the sandbox GCP as it would reach Google; every
    job it made is gone afterwards."""
    provider = GCPProvider()
    service = provider.service("cloud-run")
    made: list[str] = []
    service.made = made  # type: ignore[attr-defined]
    yield service
    service.terminate(made, "test cleanup")
    assert not service.machines(made), "jobs left behind"


def start(service: CloudRunService, spec: MachineSpec, boot_script: str, **kwargs) -> str:
    machine_id = f"run-{secrets.token_hex(6)}"
    service.made.append(machine_id)  # type: ignore[attr-defined]
    [machine] = service.start(launch_of(spec, boot_script, service, **kwargs), [machine_id])
    assert machine.id == machine_id and machine.state in ("pending", "running")
    return machine_id


def wait_ended(service: CloudRunService, machine_id: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        [machine] = service.machines([machine_id])
        if not machine.alive:
            return machine
        time.sleep(0.2)
    raise AssertionError(f"{machine_id} still {machine.state} after {timeout}s")


def test_a_job_ends_with_its_tasks_own_exit_code(sandboxed):
    machine_id = start(sandboxed, MachineSpec(cpu=1, memory="1 GiB"), "echo working; exit 3", tags={"prefect.io/flow-run-id": "Abc-1"})
    machine = wait_ended(sandboxed, machine_id)
    assert (machine.state, machine.exit_code) == ("terminated", 3)
    assert machine.reason
    assert machine.instance_type == "cloud-run-1cpu-1gib" and machine.price_per_hour == pytest.approx(0.0648 + 0.0072)
    assert machine.tags == {"prefect.io/flow-run-id": "Abc-1"} and machine.owner == "tester"
    assert machine.private_address is None and machine.public_address is None
    assert [m.id for m in sandboxed.machines(labels={"prefect.io/flow-run-id": "Abc-1"})] == [machine_id]
    assert sandboxed.machines(labels={"prefect.io/flow-run-id": "other"}) == []

    ok = start(sandboxed, MachineSpec(), "exit 0")
    assert wait_ended(sandboxed, ok).exit_code == 0


def test_terminate_cancels_the_execution_and_deletes_the_job(sandboxed):
    machine_id = start(sandboxed, MachineSpec(), "sleep 600")
    deadline = time.monotonic() + 30
    while sandboxed.machines([machine_id])[0].state != "running":
        assert time.monotonic() < deadline, "never running"
        time.sleep(0.2)
    execution = sandboxed.machines([machine_id])[0].details["execution"]
    sandboxed.terminate([machine_id], "cancelled by test")
    assert sandboxed.machines([machine_id]) == []
    from google.api_core import exceptions

    with pytest.raises(exceptions.NotFound):
        sandboxed.clients.executions().get_execution(name=execution)
    sandboxed.terminate([machine_id, "run-000000000000"], "again")  # ended and unknown ids are fine


def test_secrets_reach_the_task_only_through_secret_manager(sandboxed):
    from google.cloud import run_v2

    from prefect_remote.providers.gcp.secrets import forget_secrets, store_secrets

    value = "s3cr3t-" + secrets.token_hex(8)
    digest = hashlib.sha256(value.encode()).hexdigest()  # the task checks it has the value; the job holds only this
    check = (
        "import hashlib, json, os, sys; token = json.loads(os.environ['PREFECT_REMOTE_SECRETS_JSON'])['TOKEN']; "
        f"sys.exit(hashlib.sha256(token.encode()).hexdigest() != '{digest}' and 7)"
    )
    launch = launch_of(MachineSpec(), f'exec python3 -c "{check}"', sandboxed, has_secrets=True)
    store_secrets(sandboxed.clients, launch.id, {"TOKEN": value}, sandboxed.provider.records)
    try:
        machine_id = f"run-{secrets.token_hex(6)}"
        sandboxed.made.append(machine_id)  # type: ignore[attr-defined]
        sandboxed.start(launch, [machine_id])
        assert wait_ended(sandboxed, machine_id).exit_code == 0  # the task had it
        job = sandboxed.clients.jobs().get_job(name=sandboxed.job_name(machine_id))
        text = run_v2.Job.to_json(job)
        assert value not in text and "secretKeyRef" in text
    finally:
        forget_secrets(sandboxed.clients, launch.id, sandboxed.provider.records.label)


def test_a_task_whose_owner_is_gone_takes_its_launch_secret_with_it(gcp_env):
    """Nobody renews (its owner died): the task ends itself after keepalive, and its launch's secret
    goes with it, through the task's own service account (Cloud Run resolved it at the task's start,
    and never retries the task), with no call of an owner's."""
    from prefect_remote.providers.base import BootPayload
    from prefect_remote.providers.gcp.secrets import secret_id
    from prefect_remote.sandbox.gcp.common import GoogleError

    provider = GCPProvider(service="cloud-run", lease_interval=5)
    payload = BootPayload(["sleep", "600"], secrets={"TOKEN": "s3cret"})
    [machine] = provider.launch(MachineSpec(keepalive=10), payload, tags={"test": "owner-gone"})
    name = secret_id(provider.describe(machine.id).details["launch"], provider.records.label)
    assert gcp_env.secrets.value(name)
    [ended] = provider.wait([machine.id], timeout=180, poll=1)  # describe only: no owner's renewal, nor terminate
    assert (ended.reason or "").startswith("owner gone"), ended.reason
    with pytest.raises(GoogleError, match="404|not found|NOT_FOUND"):
        gcp_env.secrets.value(name)


def test_a_failed_launch_leaves_no_job(sandboxed):
    from google.api_core import exceptions

    launch = launch_of(MachineSpec(), "sleep 600", sandboxed)
    machine_id = f"run-{secrets.token_hex(6)}"
    sandboxed.made.append(machine_id)  # type: ignore[attr-defined]
    with pytest.raises(exceptions.Conflict):  # the second job of the launch cannot be made
        sandboxed.start(launch, [machine_id, machine_id])
    assert sandboxed.machines([machine_id]) == []


def test_sweep_deletes_ended_jobs_after_recording_their_end(sandboxed):
    records = sandboxed.provider.records
    launch = launch_of(MachineSpec(), "exit 5", sandboxed)
    machine_id = f"run-{secrets.token_hex(6)}"
    sandboxed.made.append(machine_id)  # type: ignore[attr-defined]
    records.create([machine_id], launch, service="Cloud Run")
    sandboxed.start(launch, [machine_id])
    running = start(sandboxed, MachineSpec(), "sleep 600")
    wait_ended(sandboxed, machine_id)
    assert sandboxed.sweep(older_than=3600) == []
    assert machine_id in sandboxed.sweep(older_than=0)
    assert sandboxed.machines([machine_id]) == [] and sandboxed.machines([running])  # only the ended one
    ended = records.ended_machine(machine_id)  # its end outlives its job
    assert ended is not None and ended.exit_code == 5 and ended.reason
    records.delete([machine_id])


def test_a_cloud_run_task_boots_in_the_image_and_a_vm_runs_it_with_its_engine():
    """Cloud Run's task is the image's container: its agent is told of no image to pull and run; a
    Compute Engine VM's agent is (prefect_remote.machine.container)."""
    from prefect_remote.providers.base import InstanceType, Plan

    provider = GCPProvider(project="my-project")
    shape = InstanceType(name="x", cpu=2, memory=2**33)
    assert provider.boots_in_image(Plan(shape, "gcp Cloud Run", service="cloud-run"))
    assert not provider.boots_in_image(Plan(shape, "gcp Compute Engine", service="compute"))
