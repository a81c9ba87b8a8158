"""`prefect-remote doctor gcp` on the strict sandbox GCP (IAM enforced), as a user runs it: healthy,
then with each fault injected, each giving exit 1 and a row that names the fix; and the launcher's
permissions doctor tests, against the roles the docs grant (the sandbox's copies of Google's roles)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from prefect_remote.providers.gcp import grants
from prefect_remote.sandbox.gcp.policy import predefined_role
from prefect_remote.sandbox.gcp.sandbox import IAM_DELAY
from tests.conftest import use_gcp_sandbox
from tests.test_doctor import api, make_pool  # noqa: F401  (api: the session's Prefect server's client, a fixture)
from tests.workers.conftest import doctor_report, run_cli


@pytest.fixture(scope="module")
def strict_gcp(tmp_path_factory):
    """A sandbox GCP of this module's own that enforces IAM (the session's does not yet): doctor's
    permission checks are testIamPermissions and getIamPolicy answered as Google answers them."""
    from prefect_remote.sandbox.gcp.sandbox import SandboxGCP

    with SandboxGCP(home=tmp_path_factory.mktemp("strict-gcp"), enforce_iam=True) as sandbox:
        yield sandbox


@pytest.fixture
def gcp_env(strict_gcp, monkeypatch):
    """The strict sandbox GCP for one test, as the docs' launcher."""
    use_gcp_sandbox(monkeypatch, strict_gcp)
    yield strict_gcp


CHECKS = ("credentials", "APIs", "launcher permissions", "machine grants", "quota", "network", "store bucket")


def doctor(*args: str, **env: str | None) -> tuple[int, dict[str, dict]]:
    return doctor_report("gcp", *args, **env)


def failed(rows: dict[str, dict]) -> list[str]:
    return [check for check, row in rows.items() if not row["ok"]]


@contextmanager
def project_policy(sandbox: Any, change: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]) -> Iterator[None]:
    """The project's IAM policy with ``change`` made to its bindings, as an admin makes it (through
    Resource Manager), in force (after the sandbox's propagation delay) within the block; put back after."""
    from google.cloud import resourcemanager_v3

    projects = resourcemanager_v3.ProjectsClient(
        credentials=sandbox.enforcement.credentials(), transport="rest", client_options={"api_endpoint": sandbox.url}
    )
    resource = f"projects/{sandbox.project}"

    def put(bindings: list[dict[str, Any]]) -> None:
        projects.set_iam_policy(request={"resource": resource, "policy": {"version": 3, "bindings": bindings}})
        time.sleep(IAM_DELAY + 0.5)

    before = grants.policy_bindings(projects.get_iam_policy(request={"resource": resource, "options": {"requested_policy_version": 3}}))
    put(change(before))
    try:
        yield
    finally:
        put(before)


@contextmanager
def api_disabled(sandbox: Any, service: str) -> Iterator[None]:
    """``service`` (``secretmanager.googleapis.com``) not enabled in the sandbox's project within the block."""
    sandbox.api.disable_api(service, sandbox.project, sandbox.project_number)
    try:
        yield
    finally:
        sandbox.api.enable_api(service)


def without(member: str, role: str) -> Callable[[list[dict[str, Any]]], list[dict[str, Any]]]:
    def change(bindings: list[dict[str, Any]]) -> list[dict[str, Any]]:
        kept = [dict(b, members=[m for m in b["members"] if not (b["role"] == role and m == member)]) for b in bindings]
        return [b for b in kept if b["members"]]

    return change


def test_healthy_project_passes_in_a_table_that_fits_80_columns(gcp_env):
    result = run_cli({**os.environ, "COLUMNS": "80"}, "prefect-remote", "doctor", "gcp", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, result.stdout
    for check in ("credentials", "APIs", "launcher", "machine grants", "quota", "network", "store bucket"):
        assert any(line.startswith(check) and " ok " in line for line in lines), result.stdout
    assert lines[-1] == "all checks passed"
    code, rows = doctor()
    assert code == 0 and list(rows) == list(CHECKS)
    assert rows["credentials"]["detail"].startswith(gcp_env.launcher_account)
    # No pool: a 4-CPU machine, which the default service ("auto") runs on Cloud Run.
    assert rows["quota"]["detail"].startswith("us-central1: Cloud Run CPU 20 vCPU, memory 40 GiB; no --pool: a 4-CPU machine")
    code, rows = doctor(PREFECT_REMOTE_GCP_SERVICE="compute")
    assert code == 0 and rows["quota"]["detail"].startswith("us-central1: CPUS 2400 (0 used); no --pool")


def test_no_credentials_fail_and_say_how_to_get_them(gcp_env, tmp_path):
    code, rows = doctor(GOOGLE_APPLICATION_CREDENTIALS=str(tmp_path / "no-key.json"))
    assert code == 1 and list(rows) == ["credentials"] and failed(rows) == ["credentials"]
    assert "gcloud auth application-default login" in rows["credentials"]["fix"]


def test_a_missing_launcher_role_is_named(gcp_env):
    with project_policy(gcp_env, without(f"serviceAccount:{gcp_env.launcher_account}", "roles/logging.viewer")):
        code, rows = doctor()
    assert code == 1 and failed(rows) == ["launcher permissions"]
    assert "logging.logEntries.list" in rows["launcher permissions"]["detail"]
    assert rows["launcher permissions"]["fix"].startswith("grant roles/logging.viewer (docs/providers/gcp.md#the-identity-that-")


def test_a_machine_grant_removed_is_named(gcp_env):
    with project_policy(gcp_env, without(f"serviceAccount:{gcp_env.machine_account}", "roles/logging.logWriter")):
        code, rows = doctor()
    assert code == 1 and failed(rows) == ["machine grants"]
    assert rows["machine grants"]["detail"] == f"{gcp_env.machine_account} lacks roles/logging.logWriter"
    assert "--provision-infra grants them" in rows["machine grants"]["fix"]


def test_no_machine_service_account_is_named(gcp_env):
    code, rows = doctor(PREFECT_REMOTE_GCP_SERVICE_ACCOUNT=None)
    assert code == 1 and failed(rows) == ["machine grants"]
    assert "PREFECT_REMOTE_GCP_SERVICE_ACCOUNT" in rows["machine grants"]["fix"]


def test_a_disabled_api_is_named_with_the_command_that_enables_it(gcp_env):
    with api_disabled(gcp_env, "secretmanager.googleapis.com"):
        code, rows = doctor()
    assert code == 1 and failed(rows) == ["APIs"]
    assert rows["APIs"]["detail"] == "not enabled: Secret Manager"
    assert rows["APIs"]["fix"] == f"gcloud services enable secretmanager.googleapis.com --project={gcp_env.project}"


def test_a_quota_below_the_machine_is_named(gcp_env):
    gcp_env.compute.catalog.set_quota("CPUS", 2)
    try:
        code, rows = doctor(PREFECT_REMOTE_GCP_SERVICE="compute")
    finally:
        gcp_env.compute.catalog.set_quota("CPUS", None)
    assert code == 1 and failed(rows) == ["quota"]
    assert rows["quota"]["detail"].startswith("us-central1: CPUS 2 (0 used)")
    assert rows["quota"]["fix"].startswith("raise CPUS to 4 in us-central1: console.cloud.google.com/iam-admin/quotas")


def test_a_missing_subnetwork_is_named(gcp_env):
    code, rows = doctor(PREFECT_REMOTE_GCP_SUBNETWORK="nowhere")
    assert code == 1 and failed(rows) == ["network"]
    assert rows["network"]["detail"] == "no subnetwork 'nowhere' in us-central1"
    assert "gcloud compute networks subnets create nowhere --network=default --region=us-central1" in rows["network"]["fix"]


def test_a_missing_bucket_is_named(gcp_env):
    code, rows = doctor(PREFECT_REMOTE_STORE="gs://prefect-remote-doctor-missing/store")
    assert code == 1 and failed(rows) == ["store bucket"]
    assert rows["store bucket"]["fix"].startswith("gcloud storage buckets create gs://prefect-remote-doctor-missing --location=us-central1")


def test_the_launcher_roles_the_docs_grant_cover_what_the_launcher_calls():
    """LAUNCHER_PERMISSIONS against Google's permission lists of LAUNCHER_ROLES (the sandbox's copies),
    each where it is granted; doctor's own reads against the provisioning roles."""
    places = {"the project": "project", "the machines' service account": "service account", "the store's bucket": "bucket"}
    held: dict[str, set[str]] = {place: set() for place in places.values()}
    for role, where, _why in grants.LAUNCHER_ROLES:
        permissions = predefined_role(role)
        assert permissions is not None, f"the sandbox has no copy of {role}"
        held[places[where]] |= permissions
    held["service account"] |= held["project"]  # a project grant holds on its accounts and buckets
    held["bucket"] |= held["project"]
    for place, wanted in grants.LAUNCHER_PERMISSIONS.items():
        assert set(wanted) <= held[place], f"{place}: {sorted(set(wanted) - held[place])} granted by no launcher role"
    provisioning = set().union(*(predefined_role(role) or set() for role in grants.PROVISIONER_ROLES.values()))
    assert set(grants.DOCTOR_PERMISSIONS) <= provisioning


def test_a_gpu_quota_below_the_machine_is_named(gcp_env):
    """The GPU quota of the machine's GPU type (here a T4 VM's, whose region's T4 quota is 0)."""
    from prefect_remote.providers import get_provider
    from prefect_remote.providers.base import InstanceType
    from prefect_remote.providers.doctor import Needs
    from prefect_remote.providers.gcp.doctor import _quota

    t4 = InstanceType("n1-standard-4", 4, 15 * 2**30, gpu=1, gpu_type="nvidia-tesla-t4")
    gcp_env.compute.catalog.set_quota("NVIDIA_T4_GPUS", 0)
    try:
        finding = _quota(get_provider("gcp"), Needs(t4, "a T4 machine", gcp_env.store))
    finally:
        gcp_env.compute.catalog.set_quota("NVIDIA_T4_GPUS", None)
    assert not finding.ok
    assert finding.detail == "us-central1: CPUS 2400 (0 used), NVIDIA_T4_GPUS 0 (0 used); a T4 machine"
    assert finding.fix.startswith("raise NVIDIA_T4_GPUS to 1 in us-central1:")


def test_a_cloud_run_quota_below_the_task_is_named_and_cloud_run_refuses_the_job(gcp_env):
    """Cloud Run's regional CPU allocation (Cloud Quotas' CpuAllocPerProjectRegion) lowered below
    one 4-vCPU task: doctor names the quota and the other service; Cloud Run refuses the launch."""
    from prefect_remote.errors import CapacityError
    from prefect_remote.providers.base import BootPayload
    from prefect_remote.providers.gcp import GCPProvider
    from prefect_remote.spec import MachineSpec

    gcp_env.quotas.set_quota("CpuAllocPerProjectRegion", 2000, region=gcp_env.region)
    try:
        code, rows = doctor()
        with pytest.raises(
            CapacityError,
            match=r"Cloud Run quotas in us-central1 do not allow this task \(CpuAllocPerProjectRegion requested: 4000 allowed: 2000\)",
        ):
            GCPProvider(service="cloud-run").launch(MachineSpec(cpu=4), BootPayload(["true"]), tags={"test": "doctor"})
    finally:
        gcp_env.quotas.set_quota("CpuAllocPerProjectRegion", None, region=gcp_env.region)
    assert code == 1 and failed(rows) == ["quota"]
    assert rows["quota"]["detail"].startswith("us-central1: Cloud Run CPU 2 vCPU, memory 40 GiB; no --pool: a 4-CPU machine")
    fix = rows["quota"]["fix"]
    assert fix.startswith("raise Cloud Run's CpuAllocPerProjectRegion to 4 vCPU in us-central1: console.cloud.google.com/iam-admin/quotas")
    assert fix.endswith("or run on Compute Engine (gcp_service='compute')")


def test_a_cloud_run_gpu_quota_below_the_task_is_named(gcp_env):
    """An L4 task takes Cloud Run's L4 quota (without zonal redundancy, which jobs use)."""
    from prefect_remote.providers import get_provider
    from prefect_remote.providers.doctor import Needs
    from prefect_remote.providers.gcp.cloudrun_catalog import GIB, shape
    from prefect_remote.providers.gcp.doctor import _quota

    l4 = shape(4, 16 * GIB, gpu=True)
    gcp_env.quotas.set_quota("NvidiaL4GpuAllocNoZonalRedundancyPerProjectRegion", 0, region=gcp_env.region)
    try:
        finding = _quota(get_provider("gcp"), Needs(l4, "an L4 task", gcp_env.store))
    finally:
        gcp_env.quotas.set_quota("NvidiaL4GpuAllocNoZonalRedundancyPerProjectRegion", None, region=gcp_env.region)
    assert not finding.ok
    assert finding.detail == "us-central1: Cloud Run CPU 20 vCPU, memory 40 GiB, L4 GPUs 0; an L4 task"
    assert finding.fix.startswith("raise Cloud Run's NvidiaL4GpuAllocNoZonalRedundancyPerProjectRegion to 1 in us-central1:")


def test_cloud_run_quotas_unreadable_say_what_doctor_needs(gcp_env):
    """Without roles/cloudquotas.viewer, or with the Cloud Quotas API off, the quota row fails and
    says how to let doctor read them."""
    with project_policy(gcp_env, without(f"serviceAccount:{gcp_env.launcher_account}", "roles/cloudquotas.viewer")):
        code, rows = doctor()
    assert code == 1 and failed(rows) == ["quota"]
    assert "cloudquotas.quotas.get" in rows["quota"]["fix"] and "roles/cloudquotas.viewer" in rows["quota"]["fix"]
    with api_disabled(gcp_env, "cloudquotas.googleapis.com"):
        code, rows = doctor()
    assert code == 1 and failed(rows) == ["quota"]
    assert f"gcloud services enable cloudquotas.googleapis.com --project={gcp_env.project}" in rows["quota"]["fix"]


def test_a_pool_checks_each_services_quota_and_a_task_over_cloud_runs_maxima_is_named(gcp_env, api):
    """A pool whose runs land on both services ("auto": a 2-CPU machine on Cloud Run, a deployment's
    16-CPU one on Compute Engine) is checked against each service's quotas; on Cloud Run alone, the
    16-CPU machine is over a task's 8 vCPU, and the machine spec row says what to change."""
    pool = make_pool(api, "gcp", cpu=2)
    flow_id = api.create_flow_from_name("doctor-gcp-flow")
    api.create_deployment(flow_id=flow_id, name="big", work_pool_name=pool, entrypoint="flows.py:f", job_variables={"cpu": 16})
    code, rows = doctor("--pool", pool)
    assert code == 0, rows
    detail = rows["quota"]["detail"]
    assert detail.startswith("us-central1: CPUS 2400 (0 used); Cloud Run CPU 20 vCPU, memory 40 GiB; pool"), detail
    code, rows = doctor("--pool", pool, PREFECT_REMOTE_GCP_SERVICE="cloud-run")
    assert code == 1 and failed(rows) == ["machine spec"]
    assert rows["machine spec"]["detail"] == "{'cpu': 16}: no gcp machine fits"
    fix = rows["machine spec"]["fix"]
    assert "cpu=16 is more than Cloud Run's 8 vCPU" in fix and "use gcp_service='compute'" in fix, fix
