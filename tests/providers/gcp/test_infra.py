"""--provision-infra on gcp and `prefect-remote gcp teardown`, against the session's sandbox GCP
through the real google-cloud clients. The sandbox's IAM enforces nothing, so the grants are checked
as policy documents (and against the docs' copy of them).

Every test ends with everything torn down (the sandbox is the session's)."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from prefect_remote.providers.gcp import infra
from prefect_remote.providers.gcp.clients import GCPError
from prefect_remote.providers.gcp.infra import MACHINE_PERMISSIONS, MACHINE_ROLE_ID, TeardownRefused, machine_roles
from prefect_remote.providers.gcp.provider import GCPProvider

DOCS_PAGE = Path(__file__).parents[3] / "docs" / "providers" / "gcp.md"
CLI = str(Path(sys.executable).parent / "prefect-remote")
LAUNCHER_IP = "203.0.113.7"  # a documentation address: "me" without asking checkip
EMAIL = "prefect-remote-machines@sandbox-project.iam.gserviceaccount.com"
MEMBER = f"serviceAccount:{EMAIL}"
BUCKET = "prefect-remote-sandbox-project-us-central1"
# The values the docs' copy of the grants is written with.
README_VALUES = dict(
    project="<project>",
    project_number="<project number>",
    bucket="<bucket>",
    service_account="prefect-remote-machines@<project>.iam.gserviceaccount.com",
)


@pytest.fixture
def project(gcp_env, monkeypatch):
    """The sandbox's project, left with nothing provisioned in it."""
    monkeypatch.delenv("PREFECT_REMOTE_STORE", raising=False)  # the sandbox's: here provisioning chooses
    monkeypatch.delenv("PREFECT_REMOTE_GCP_SERVICE_ACCOUNT", raising=False)  # the sandbox's own account
    monkeypatch.setenv("PREFECT_REMOTE_GCP_PUBLIC_IP", LAUNCHER_IP)
    # Other tests' VMs leave the rules their launches made (as a project in use has them): start without.
    infra.teardown(GCPProvider(), force=True, delete_bucket=True, say=lambda _: None)
    yield gcp_env
    for service in list(gcp_env.api.disabled):
        gcp_env.api.enable_api(service)
    infra.teardown(GCPProvider(), force=True, delete_bucket=True, say=lambda _: None)


def provision(pool: str = "pool-a", store: str | None = None, **options) -> tuple[infra.GCPSetup, list[str]]:
    lines: list[str] = []
    return infra.provision(GCPProvider(**options), pool, store, say=lines.append), lines


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CLI, *args], capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"}, stdin=subprocess.DEVNULL, timeout=120
    )


def storage():
    from google.cloud import storage

    return storage.Client(project="sandbox-project")


def bucket_exists(name: str = BUCKET) -> bool:
    return storage().lookup_bucket(name) is not None


def firewalls(sandbox) -> set[str]:
    return {name for name in sandbox_firewalls(sandbox) if name.startswith(infra.FIREWALL_PREFIXES)}


def sandbox_firewalls(sandbox) -> list[str]:
    from google.cloud import compute_v1

    client = compute_v1.FirewallsClient(transport="rest", client_options={"api_endpoint": sandbox.url})
    return [rule.name for rule in client.list(project=sandbox.project)]


def readme_document(**values: str) -> dict:
    """What the docs quote: the grants, and the custom role's permissions."""
    return {"grants": machine_roles(**values), f"custom role {MACHINE_ROLE_ID}": list(MACHINE_PERMISSIONS)}


# -- the roles ------------------------------------------------------------------------------------
def test_machine_roles_are_least_privilege():
    roles = machine_roles(project="p-1", project_number="42", bucket="b", service_account="sa@p-1.iam.gserviceaccount.com")
    granted = [grant["role"] for grants in roles.values() for grant in grants]
    assert not any(role in ("roles/owner", "roles/editor", "roles/viewer") or role.endswith(("admin", "Admin")) for role in granted), (
        granted
    )
    assert roles["bucket b"] == [{"role": "roles/storage.objectUser"}]  # the store's bucket only, never the project's buckets
    assert not any(role.startswith("roles/storage.") for role in (g["role"] for g in roles["project"]))
    by_role = {grant["role"]: grant for grant in roles["project"]}
    secrets_only = 'resource.name.startsWith("projects/42/secrets/prefect-remote-")'
    assert by_role["roles/secretmanager.secretAccessor"]["condition"]["expression"] == secrets_only
    assert by_role[f"projects/p-1/roles/{MACHINE_ROLE_ID}"]["condition"]["expression"].endswith(secrets_only)
    assert "condition" not in by_role["roles/logging.logWriter"]
    assert roles["service account sa@p-1.iam.gserviceaccount.com"] == [{"role": "roles/iam.serviceAccountUser"}]  # acting as itself only
    # The custom role: a VM ends itself, a scheduler launches its workers, a flow run its cluster (after
    # listing the provider's machines, Cloud Run jobs included: read only); nothing that grants more access.
    assert "compute.instances.delete" in MACHINE_PERMISSIONS and len(set(MACHINE_PERMISSIONS)) == len(MACHINE_PERMISSIONS)
    assert all(p.startswith(("compute.", "secretmanager.", "run.")) and "*" not in p for p in MACHINE_PERMISSIONS)
    assert [p for p in MACHINE_PERMISSIONS if p.startswith("run.")] == ["run.jobs.list", "run.executions.get", "run.tasks.list"]
    assert not any(p.endswith(("setIamPolicy", "firewalls.create", "firewalls.update", "versions.access")) for p in MACHINE_PERMISSIONS)


def test_readme_quotes_the_roles_exactly():
    found = re.search(r"<!-- gcp-machine-roles -->\n```json\n(.*?)\n```", DOCS_PAGE.read_text(), re.S)
    assert found, "docs/providers/gcp.md's setup section lost its roles block"
    assert found.group(1) == json.dumps(readme_document(**README_VALUES), indent=2)


# -- provisioning ---------------------------------------------------------------------------------
def test_provisioning_twice_is_harmless_and_grants_exactly_the_roles(project):
    setup, first = provision()
    assert setup.block_fields() == {
        "project": "sandbox-project",
        "region": "us-central1",
        "service_account": EMAIL,
        "store": f"gs://{BUCKET}/store",
    }
    created = [line for line in first if line.startswith(("created", "granted"))]
    # bucket, account, custom role, three firewall rules (VMs among themselves, the Dask ports from this
    # launcher and from the subnetwork, where a flow run that starts a cluster connects from); grants on
    # the project, bucket and account
    assert len(created) == 9, first
    assert set(setup.firewalls) == firewalls(project) and len(setup.firewalls) == 3
    again, second = provision()
    assert again == setup
    assert not any(line.startswith(("created", "granted", "updated", "undeleted")) for line in second), second
    assert sum(line.startswith("found") for line in second) == 9

    roles = machine_roles(project="sandbox-project", project_number=project.project_number, bucket=BUCKET, service_account=EMAIL)
    assert project.iam.grants_of(MEMBER) == roles["project"]  # exactly these, once each
    role = project.iam.roles[MACHINE_ROLE_ID]
    assert role["includedPermissions"] == list(MACHINE_PERMISSIONS) and not role.get("deleted")
    bucket = storage().get_bucket(BUCKET)
    policy = bucket.get_iam_policy(requested_policy_version=3)
    assert [{"role": b["role"]} for b in policy.bindings if MEMBER in b["members"]] == roles[f"bucket {BUCKET}"]
    account_policy = project.iam.account_policies[EMAIL]
    assert [{"role": b["role"]} for b in account_policy["bindings"] if MEMBER in b["members"]] == roles[f"service account {EMAIL}"]
    assert EMAIL in project.service_accounts  # Cloud Run and Compute Engine accept it now
    assert bucket.labels == {infra.MANAGED_LABEL: "true", infra.GRANTED_LABEL: "granted"}
    [rule] = [dict(r) for r in bucket.lifecycle_rules]
    assert rule == {"action": {"type": "Delete"}, "condition": {"age": 7, "matchesPrefix": ["store/machines/"]}}


def test_a_disabled_api_fails_naming_the_command_and_nothing_is_created(project):
    project.api.disable_api("run.googleapis.com", project.project, project.project_number)
    project.api.disable_api("iam.googleapis.com", project.project, project.project_number)
    before = dict(project.calls)
    with pytest.raises(GCPError) as refused:
        provision()
    message = str(refused.value)
    assert "gcloud services enable run.googleapis.com iam.googleapis.com --project=sandbox-project" in message, message
    assert "Cloud Run (run.googleapis.com), IAM (iam.googleapis.com)" in message and "enables nothing" in message
    # One cheap read per API (Cloud Storage's, storage.GET, is the emulator's), and nothing else.
    made = {name for name, count in project.calls.items() if count > before.get(name, 0)} - {"oauth2.token"}
    assert made == {
        "run.jobs.list",
        "compute.firewalls.list",
        "secretmanager.secrets.list",
        "logging.entries.list",
        "iam.serviceAccounts.list",
        "cloudresourcemanager.projects.get",
        "storage.GET",
    }, made
    assert EMAIL not in project.iam.accounts and project.iam.grants_of(MEMBER) == [] and not bucket_exists() and firewalls(project) == set()
    # The CLI path: prefect work-pool create reports it (test_push_gcp); the error says the same through a pool's provider.
    project.api.enable_api("run.googleapis.com")
    with pytest.raises(GCPError, match=r"enable it with\n  gcloud services enable iam.googleapis.com --project=sandbox-project"):
        provision()


def test_a_store_of_the_users_is_used_and_kept(project):
    name = f"pr-users-{secrets.token_hex(4)}"
    storage().create_bucket(name)
    setup, lines = provision(store=f"gs://{name}/envs")
    assert setup.store == f"gs://{name}/envs" and f"found bucket gs://{name}" in lines
    bucket = storage().get_bucket(name)
    assert [dict(r)["condition"]["matchesPrefix"] for r in bucket.lifecycle_rules] == [["envs/machines/"]]
    assert infra.MANAGED_LABEL not in bucket.labels
    removed = infra.teardown(GCPProvider(), delete_bucket=True, say=lambda _: None)
    assert f"the grant of {EMAIL} on bucket {name}" in removed and f"bucket gs://{name}" not in removed
    bucket = storage().get_bucket(name)  # not provisioning's: kept, as it was
    labels = {key: value for key, value in bucket.labels.items() if value is not None}  # the emulator keeps a removed label as null
    assert labels == {} and list(bucket.lifecycle_rules) == []
    assert not any(MEMBER in b["members"] for b in bucket.get_iam_policy(requested_policy_version=3).bindings)


# -- teardown -------------------------------------------------------------------------------------
def test_teardown_removes_everything_and_is_idempotent(project):
    provision()
    said: list[str] = []
    removed = infra.teardown(GCPProvider(), say=said.append)
    assert set(removed) >= {
        f"the project grants of {EMAIL}",
        f"the grant of {EMAIL} on bucket {BUCKET}",
        f"custom role projects/sandbox-project/roles/{MACHINE_ROLE_ID}",
        f"service account {EMAIL}",
    }
    assert sum(item.startswith("firewall rule") for item in removed) == 3 and firewalls(project) == set()
    assert EMAIL not in project.iam.accounts and EMAIL not in project.service_accounts
    assert project.iam.roles[MACHINE_ROLE_ID]["deleted"]  # Google keeps a deleted role 7 days
    assert project.iam.grants_of(MEMBER) == []
    assert bucket_exists() and any("kept bucket" in line and "--delete-bucket" in line for line in said)  # it holds data
    assert infra.teardown(GCPProvider(), delete_bucket=True, say=said.append) == [f"bucket gs://{BUCKET}"]
    assert not bucket_exists()
    assert infra.teardown(GCPProvider(), delete_bucket=True, say=said.append) == []
    assert said[-1] == "nothing to remove in project sandbox-project"
    _, lines = provision()  # again after a teardown: the deleted custom role comes back
    assert f"undeleted custom role projects/sandbox-project/roles/{MACHINE_ROLE_ID}" in lines
    assert not project.iam.roles[MACHINE_ROLE_ID].get("deleted")


def test_teardown_refuses_while_a_vm_runs(project):
    from prefect_remote.providers.base import Launch
    from prefect_remote.spec import MachineSpec

    setup, _ = provision()
    compute = GCPProvider(service="compute", service_account=setup.service_account).service("compute")
    spec = MachineSpec(cpu=2)
    launch = Launch(
        f"launch-{secrets.token_hex(6)}", "#!/bin/sh\nsleep 120\n", spec, compute.choose_instance_type(spec), 1, {}, "test-host:42", False
    )
    [machine] = compute.start(launch, [f"vm-{secrets.token_hex(6)}"])

    refused = cli("gcp", "teardown", "--yes")
    assert refused.returncode == 1 and machine.id in refused.stderr and "--force" in refused.stderr, refused.stderr
    assert EMAIL in project.iam.accounts and len(firewalls(project)) == 3  # nothing removed
    with pytest.raises(TeardownRefused, match=machine.id):
        infra.teardown(GCPProvider(), say=lambda _: None)
    forced = cli("gcp", "teardown", "--yes", "--force")
    assert forced.returncode == 0, forced.stderr
    assert f"ended {machine.id}" in forced.stdout and f"removed service account {EMAIL}" in forced.stdout
    assert compute.machines([machine.id]) == [] and firewalls(project) == set()
    assert "nothing to remove in project sandbox-project" in cli("gcp", "teardown", "--yes").stdout


def test_teardown_needs_yes_without_a_terminal(project):
    result = cli("gcp", "teardown")
    assert result.returncode == 2 and "--yes" in result.stderr


def test_work_pool_create_provisions_gcp_and_records_it(project, prefect_server, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from prefect_remote.workers.config import RemoteProviderCredentials
    from tests.workers.conftest import prefect_cli

    monkeypatch.setenv("PREFECT_REMOTE_PROVIDER", "gcp")
    created = prefect_cli(prefect_server, "work-pool", "create", "--type", "remote:push", "--provision-infra", "gcp-pool", "--overwrite")
    assert created.returncode == 0, created.stdout + created.stderr
    assert f"created service account {EMAIL}" in created.stdout and "created provider block 'gcp-pool-provider'" in created.stdout
    assert f"PREFECT_REMOTE_STORE=gs://{BUCKET}/store" in created.stdout.replace("\n", "")
    with temporary_settings({PREFECT_API_URL: prefect_server}), get_client(sync_client=True) as api:
        block = api.read_block_document_by_name("gcp-pool-provider", "prefect-remote-provider")
        pool = api.read_work_pool("gcp-pool")
    assert {k: v for k, v in block.data.items() if v} == {
        "provider": "gcp",
        "project": "sandbox-project",
        "region": "us-central1",
        "service_account": EMAIL,
        "store": f"gs://{BUCKET}/store",
    }
    defaults = {key: value.get("default") for key, value in pool.base_job_template["variables"]["properties"].items()}
    assert defaults["provider"] == "gcp" and defaults["region"] == "us-central1"
    provider = RemoteProviderCredentials.model_validate(block.data).get_provider()  # what runs of the pool launch with
    assert provider.options.service_account == EMAIL and provider.options.project == "sandbox-project"


def test_a_refused_permission_names_the_role_provisioning_needs(gcp_env):
    from google.api_core.exceptions import Forbidden

    clients = GCPProvider().clients
    with pytest.raises(
        GCPError,
        match=r"refused iam.roles.create in project sandbox-project: the identity in use needs roles/iam.roleAdmin to make the custom role",
    ):
        with infra.google_errors(clients, "iam.roles.create", "make the custom role"):
            raise Forbidden("Permission 'iam.roles.create' denied on resource (or it may not exist).")
    with pytest.raises(GCPError, match=r"gcloud services enable iam.googleapis.com"):  # a disabled API is not a missing role
        with infra.google_errors(clients, "iam.roles.create", "make the custom role"):
            raise Forbidden("Identity and Access Management (IAM) API has not been used in project 1 before or it is disabled.")
