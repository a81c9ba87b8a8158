"""--provision-infra on gcp and `prefect-remote gcp teardown`: what only gcp has (what the infra
contract, tests/providers/test_infra.py, does not check on every cloud): the grants as policy documents
(and against the docs' copy of them, and the roles the sandbox enforces); a disabled API, a bucket of
the user's, a deleted custom role and a refused permission.

Every test ends with everything torn down (the sandbox is the session's)."""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path

import pytest

from prefect_remote.providers.gcp import infra
from prefect_remote.providers.gcp.clients import GCPError
from prefect_remote.providers.gcp.grants import (
    INSTANCE_PERMISSIONS,
    MACHINE_CUSTOM_ROLES,
    MACHINE_INSTANCES_ROLE_ID,
    MACHINE_PERMISSIONS,
    MACHINE_ROLE_ID,
    MACHINE_SECRET_PERMISSIONS,
    MACHINE_SECRETS_ROLE_ID,
    machine_roles,
    pool_account_email,
)
from prefect_remote.providers.gcp.provider import GCPProvider
from prefect_remote.providers.setup import pool_key
from tests.providers.infra_clouds import GCPInfra

DOCS_PAGE = Path(__file__).parents[3] / "docs" / "providers" / "gcp.md"
EMAIL, MEMBER = GCPInfra.EMAIL, GCPInfra.MEMBER
# The values the docs' copy of the grants is written with.
README_VALUES = dict(
    project="<project>",
    project_number="<project number>",
    bucket="<bucket>",
    service_account="pr-<pool key>@<project>.iam.gserviceaccount.com",
    pool="<pool>",
    folder="<store folder>/",
)


@pytest.fixture
def project(gcp_env, monkeypatch):
    """The sandbox's project, left with nothing provisioned in it."""
    with GCPInfra.prepared(gcp_env, monkeypatch) as sandbox:
        yield sandbox


@pytest.fixture
def gcp_infra(project) -> GCPInfra:
    """Provisioning and teardown in the sandbox's project (tests/providers/infra_clouds.py)."""
    return GCPInfra(project)


def readme_document(**values: str) -> dict:
    """What the docs quote: the grants, and the custom roles' permissions."""
    return {"grants": machine_roles(**values), **{f"custom role {name}": list(held) for name, held in MACHINE_CUSTOM_ROLES.items()}}


# -- the roles ------------------------------------------------------------------------------------
def test_machine_roles_are_least_privilege():
    roles = machine_roles(
        project="p-1", project_number="42", bucket="b", service_account="sa@p-1.iam.gserviceaccount.com", pool="0a1b", folder="store/p/"
    )
    granted = [grant["role"] for grants in roles.values() for grant in grants]
    assert not any(role in ("roles/owner", "roles/editor", "roles/viewer") or role.endswith(("admin", "Admin")) for role in granted), (
        granted
    )
    # The store's bucket only, never the project's buckets; in it, the pool's folder: read there (and the
    # bucket's listing, which Cloud Storage checks on the bucket), write only its machine records.
    assert [(g["role"], g["condition"]["expression"]) for g in roles["bucket b"]] == [
        (
            "roles/storage.objectViewer",
            'resource.name == "projects/_/buckets/b" || resource.name.startsWith("projects/_/buckets/b/objects/store/p/")',
        ),
        ("roles/storage.objectUser", 'resource.name.startsWith("projects/_/buckets/b/objects/store/p/machines/")'),
    ]
    assert not any(role.startswith("roles/storage.") for role in (g["role"] for g in roles["project"]))
    by_role = {grant["role"]: grant for grant in roles["project"]}
    secrets_only = 'resource.name.startsWith("projects/42/secrets/prefect-remote-0a1b-")'  # the pool's own
    assert by_role["roles/secretmanager.secretAccessor"]["condition"]["expression"] == secrets_only
    assert by_role[f"projects/p-1/roles/{MACHINE_SECRETS_ROLE_ID}"]["condition"]["expression"].endswith(secrets_only)
    vms_only = by_role[f"projects/p-1/roles/{MACHINE_INSTANCES_ROLE_ID}"]["condition"]["expression"]
    assert vms_only.endswith('.extract("/instances/{name}").startsWith("vm-0a1b-")')  # the pool's own VMs, by name
    # No condition on the rest: Cloud Run's resources and most of Compute Engine's have no attributes, so one would grant nothing.
    assert "condition" not in by_role["roles/logging.logWriter"] and "condition" not in by_role[f"projects/p-1/roles/{MACHINE_ROLE_ID}"]
    # Nothing that acts on a VM, or a secret, without its condition.
    assert not set(MACHINE_PERMISSIONS) & set(INSTANCE_PERMISSIONS) and not any(p.startswith("secretmanager.") for p in MACHINE_PERMISSIONS)
    assert all(p.startswith("compute.instances.") and p != "compute.instances.list" for p in INSTANCE_PERMISSIONS)
    assert roles["service account sa@p-1.iam.gserviceaccount.com"] == [{"role": "roles/iam.serviceAccountUser"}]  # acting as itself only
    # The custom role: a VM ends itself, a scheduler launches its workers, a flow run its cluster (after
    # listing the provider's machines, Cloud Run jobs included: read only); nothing that grants more access.
    assert "compute.instances.delete" in INSTANCE_PERMISSIONS and len(set(MACHINE_PERMISSIONS)) == len(MACHINE_PERMISSIONS)
    assert all(p.startswith(("compute.", "run.")) and "*" not in p for p in MACHINE_PERMISSIONS)
    assert all(p.startswith("secretmanager.") for p in MACHINE_SECRET_PERMISSIONS)  # only these are under the condition
    assert [p for p in MACHINE_PERMISSIONS if p.startswith("run.")] == ["run.jobs.list", "run.executions.get", "run.tasks.list"]
    unsafe = ("setIamPolicy", "firewalls.create", "firewalls.update", "versions.access", "secrets.list")
    assert not any(p.endswith(unsafe) for p in (*MACHINE_PERMISSIONS, *INSTANCE_PERMISSIONS, *MACHINE_SECRET_PERMISSIONS))


def test_readme_quotes_the_roles_exactly():
    found = re.search(r"<!-- gcp-machine-roles -->\n```json\n(.*?)\n```", DOCS_PAGE.read_text(), re.S)
    assert found, "docs/providers/gcp.md's setup section lost its roles block"
    assert found.group(1) == json.dumps(readme_document(**README_VALUES), indent=2)


# -- provisioning ---------------------------------------------------------------------------------
def test_the_docs_list_exactly_the_roles_the_sandbox_grants():
    """The launcher's and the provisioner's roles in the docs are grants' data, which the sandbox's
    launcher account is granted (tests/sandbox/test_gcp_iam.py checks it holds them and no more)."""
    from prefect_remote.providers.gcp.grants import LAUNCHER_ROLES, PROVISIONER_ROLES

    text = DOCS_PAGE.read_text()

    def roles(section: str) -> list[str]:
        """The roles the section's first paragraph lists (what follows explains them)."""
        body = text.split(f"### {section}", 1)[1].strip().split("\n\n", 1)[0]
        return re.findall(r"`(roles/[A-Za-z0-9.]+)`", body)

    assert roles("The identity that launches machines") == [role for role, _, _ in LAUNCHER_ROLES]
    assert roles("The identity that provisions") == list(PROVISIONER_ROLES.values())


def test_the_sandbox_enforces_exactly_the_docs_roles_on_its_launcher_where_they_are_granted(gcp_sandbox):
    """What the session's sandbox enforces for its launcher (the policies in force, not what it was
    asked to grant) is the docs' roles: each launcher role where LAUNCHER_ROLES says, and provisioning's on the project."""
    import math

    from prefect_remote.providers.gcp.grants import LAUNCHER_ROLES, PROVISIONER_ROLES
    from prefect_remote.sandbox.gcp.sandbox import STORE_BUCKET

    launcher = f"serviceAccount:{gcp_sandbox.launcher_account}"

    def held(key: str) -> list[str]:
        return sorted(role for role, members, _ in gcp_sandbox.enforcement.store.as_of(key, math.inf) or () if launcher in members)

    def docs(where: str) -> list[str]:
        return sorted(role for role, place, _ in LAUNCHER_ROLES if place == where)

    assert held("project") == sorted({*docs("the project"), *PROVISIONER_ROLES.values()})
    assert held(f"serviceAccount:{gcp_sandbox.machine_account}") == docs("the machines' service account")
    assert held(f"bucket:{STORE_BUCKET}") == docs("the store's bucket")


def test_a_disabled_api_fails_naming_the_command_and_nothing_is_created(project, gcp_infra):
    project.api.disable_api("run.googleapis.com", project.project, project.project_number)
    project.api.disable_api("iam.googleapis.com", project.project, project.project_number)
    before = dict(project.calls)
    with pytest.raises(GCPError) as refused:
        gcp_infra.provision()
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
    assert EMAIL not in project.iam.accounts and project.iam.grants_of(MEMBER) == []
    assert not gcp_infra.bucket_exists() and gcp_infra.firewalls() == set()
    # The CLI path: prefect work-pool create reports it; the error says the same through a pool's provider.
    project.api.enable_api("run.googleapis.com")
    with pytest.raises(GCPError, match=r"enable it with\n  gcloud services enable iam.googleapis.com --project=sandbox-project"):
        gcp_infra.provision()


def users_bucket(gcp_infra: GCPInfra, uniform: bool, name: str = "pr-users", location: str | None = None):
    """A bucket of the user's, with or without uniform bucket-level access."""
    storage = gcp_infra.storage()
    bucket = storage.bucket(f"{name}-{secrets.token_hex(4)}")
    bucket.iam_configuration.uniform_bucket_level_access_enabled = uniform
    return storage.create_bucket(bucket, location=location)


def bucket_grants(bucket, member: str) -> list[tuple[str, str | None]]:
    """``member``'s bindings on ``bucket``: each role and its condition's expression."""
    bindings = bucket.get_iam_policy(requested_policy_version=3).bindings
    return sorted((b["role"], (b.get("condition") or {}).get("expression")) for b in bindings if member in b["members"])


def test_a_store_of_the_users_is_used_and_kept(gcp_infra):
    name = users_bucket(gcp_infra, uniform=True).name
    setup, lines = gcp_infra.provision(store=f"gs://{name}/envs")
    assert setup.store == f"gs://{name}/envs" and f"found bucket gs://{name}" in lines
    bucket = gcp_infra.storage().get_bucket(name)
    assert [dict(r)["condition"]["matchesPrefix"] for r in bucket.lifecycle_rules] == [["envs/machines/"]]
    assert infra.MANAGED_LABEL not in bucket.labels
    removed = infra.teardown(GCPProvider(), delete_bucket=True, say=lambda _: None)
    assert f"the grant of {EMAIL} on bucket {name}" in removed and f"bucket gs://{name}" not in removed
    bucket = gcp_infra.storage().get_bucket(name)  # not provisioning's: kept, as it was
    labels = {key: value for key, value in bucket.labels.items() if value is not None}  # the emulator keeps a removed label as null
    assert labels == {} and list(bucket.lifecycle_rules) == []
    assert not any(MEMBER in b["members"] for b in bucket.get_iam_policy(requested_policy_version=3).bindings)


def test_a_users_bucket_without_uniform_access_is_refused_naming_the_fix(project, gcp_infra):
    """The machines' grants are limited to the pool's folder by IAM conditions, which Cloud Storage takes
    only on a bucket with uniform bucket-level access: without it provisioning stops before making or
    granting anything, naming the command; with it enabled, provisioning goes through, and the bucket
    can no longer go back while the conditions hold it (Google refuses that too)."""
    from google.api_core.exceptions import BadRequest

    bucket = users_bucket(gcp_infra, uniform=False)
    with pytest.raises(GCPError, match=rf"gcloud storage buckets update gs://{bucket.name} --uniform-bucket-level-access\n"):
        gcp_infra.provision(store=f"gs://{bucket.name}/envs")
    assert EMAIL not in project.iam.accounts and bucket_grants(bucket, MEMBER) == []
    bucket.iam_configuration.uniform_bucket_level_access_enabled = True
    bucket.patch()
    setup, _ = gcp_infra.provision(store=f"gs://{bucket.name}/envs")
    assert setup.store == f"gs://{bucket.name}/envs"
    assert [role for role, _ in bucket_grants(bucket, MEMBER)] == ["roles/storage.objectUser", "roles/storage.objectViewer"]
    bucket.iam_configuration.uniform_bucket_level_access_enabled = False
    with pytest.raises(BadRequest, match="bucket-level access cannot be disabled"):
        bucket.patch()
    infra.teardown(GCPProvider(), say=lambda _: None)
    assert bucket_grants(bucket, MEMBER) == []


def test_a_pool_provisioned_before_store_folders_keeps_its_grant_until_provisioned_again(gcp_infra):
    """An earlier release granted a pool's account roles/storage.objectUser on the whole bucket: its
    machines keep it (nothing else takes it away), and provisioning the pool again replaces it with
    the pool's folder grants, saying so; a third run changes nothing."""
    gcp_infra.provision()
    bucket = gcp_infra.storage().bucket(gcp_infra.bucket)
    folder = f"store/{pool_key('pool-a')}/"
    assert bucket_grants(bucket, MEMBER) == [
        ("roles/storage.objectUser", f'resource.name.startsWith("projects/_/buckets/{gcp_infra.bucket}/objects/{folder}machines/")'),
        (
            "roles/storage.objectViewer",
            f'resource.name == "projects/_/buckets/{gcp_infra.bucket}" || '
            f'resource.name.startsWith("projects/_/buckets/{gcp_infra.bucket}/objects/{folder}")',
        ),
    ]
    policy = bucket.get_iam_policy(requested_policy_version=3)  # as the earlier release left it
    policy.bindings[:] = [{**b, "members": b["members"] - {MEMBER}} for b in policy.bindings if b["members"] - {MEMBER}]
    policy.bindings.append({"role": "roles/storage.objectUser", "members": {MEMBER}})
    bucket.set_iam_policy(policy)
    _, lines = gcp_infra.provision()
    assert f"took away roles/storage.objectUser on bucket {gcp_infra.bucket} (every folder): granted before" in lines, lines
    assert [role for role, condition in bucket_grants(bucket, MEMBER) if condition] == [
        "roles/storage.objectUser",
        "roles/storage.objectViewer",
    ]
    assert all(condition for _, condition in bucket_grants(bucket, MEMBER))
    _, again = gcp_infra.provision()
    assert f"found on bucket {gcp_infra.bucket}: roles/storage.objectViewer, roles/storage.objectUser, in the pool's folder" in again
    assert not any(line.startswith("took away") for line in again)


# -- teardown -------------------------------------------------------------------------------------
def test_provisioning_after_a_teardown_undeletes_the_custom_role(project, gcp_infra):
    gcp_infra.provision()
    gcp_infra.teardown()
    assert project.iam.roles[MACHINE_ROLE_ID]["deleted"]  # Google keeps a deleted role 7 days
    _, lines = gcp_infra.provision()  # again after a teardown: the deleted custom role comes back
    assert f"undeleted custom role projects/sandbox-project/roles/{MACHINE_ROLE_ID}" in lines
    assert not project.iam.roles[MACHINE_ROLE_ID].get("deleted")


# -- errors ---------------------------------------------------------------------------------------
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


def test_a_project_at_its_service_account_quota_names_the_quota_and_the_ways_out(project, gcp_infra, monkeypatch):
    """IAM refuses the account past the project's quota (429 RESOURCE_EXHAUSTED, retry in a day):
    provisioning says so, and how to go on, instead of a raw 429 or a retry."""
    monkeypatch.setattr(project.iam, "max_accounts", len(project.iam.accounts))  # the project is full
    before = project.calls["iam.serviceAccounts.create"]
    with pytest.raises(GCPError) as refused:
        gcp_infra.provision()
    message = str(refused.value)
    assert f"cannot make {EMAIL} (Google Cloud: Maximum number of service accounts on project reached.)" in message, message
    assert "quota allows (100 by default)" in message and "gcloud iam service-accounts list --project=sandbox-project" in message
    assert "https://cloud.google.com/iam/quotas" in message and "PREFECT_REMOTE_GCP_SERVICE_ACCOUNT" in message
    assert project.calls["iam.serviceAccounts.create"] == before + 1  # once: not retried
    assert EMAIL not in project.iam.accounts and project.iam.grants_of(MEMBER) == []


def test_teardown_removes_only_launch_secrets_and_checks_every_region(project, gcp_infra, monkeypatch):
    """A user's `prefect-remote-…` secret, and one named like a launch's that no launch made, survive
    teardown; a machine in another region than the provider's (where the pool's store bucket is)
    stops it, as one in its own would."""
    from prefect_remote.providers.base import BootPayload
    from prefect_remote.spec import MachineSpec

    name = users_bucket(gcp_infra, uniform=True, name="pr-eu", location="europe-west1").name
    setup, _ = gcp_infra.provision(store=f"gs://{name}/envs")
    monkeypatch.setenv("PREFECT_REMOTE_STORE", setup.store)
    manager = GCPProvider().clients.secret_manager()
    parent = "projects/sandbox-project"

    def make(secret: str, labels: dict[str, str]) -> None:
        manager.create_secret(
            request={"parent": parent, "secret_id": secret, "secret": {"replication": {"automatic": {}}, "labels": labels}}
        )

    leftover = f"launch-{secrets.token_hex(6)}"
    kept = ["prefect-remote-api-key", f"prefect-remote-launch-{secrets.token_hex(6)}"]
    make(kept[0], {})
    make(kept[1], {})  # a launch's name, without the label a launch puts on its secret
    make(f"prefect-remote-{leftover}", {"prefect-remote-launch": leftover})
    try:
        far = GCPProvider(service="cloud-run", region="europe-west1", service_account=setup.service_account)
        [job] = far.launch(MachineSpec(cpu=1), BootPayload(["sleep", "300"]))
        with pytest.raises(infra.TeardownRefused, match=rf"still run in project sandbox-project \(europe-west1\):\n  {job.id}"):
            gcp_infra.teardown()
        removed = gcp_infra.teardown(force=True)
        assert not far.describe(job.id).alive
        assert f"secret prefect-remote-{leftover}" in removed and not any(name in line for line in removed for name in kept)
        left = {secret.name.rsplit("/", 1)[-1] for secret in manager.list_secrets(request={"parent": parent})}
        assert set(kept) <= left and f"prefect-remote-{leftover}" not in left
    finally:
        for secret in kept:
            manager.delete_secret(request={"name": f"{parent}/secrets/{secret}"})


def test_a_pools_teardown_leaves_another_pools_machines_secrets_and_records(project, gcp_infra, prefect_server, monkeypatch, tmp_path):
    """As a user runs it: two pools made with `prefect work-pool create --type remote:push --provision-infra`
    and no PREFECT_REMOTE_STORE, so each gets a folder of its own in the default bucket, each with a live
    machine, a launch secret left behind and an object in its store. `prefect-remote gcp teardown --pool A`
    finds A's store through the Prefect API, refuses while A's VM runs in another zone than the provider's
    (and only for it), then (--force) ends it and removes A's secrets, records and store folder, and
    nothing of B's: B's machine runs on, with its secret, its record and its store. A pool made from B's
    job template (so with B's store) makes `--pool B` refuse, naming it: their records cannot be told apart."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from prefect_remote.deployments.package_sync import work_pool_store
    from prefect_remote.providers.base import BootPayload
    from prefect_remote.providers.gcp.secrets import secret_id
    from prefect_remote.providers.gcp.service import LAUNCH_LABEL, RECORDS_LABEL
    from prefect_remote.spec import MachineSpec
    from tests.workers.conftest import prefect_cli

    token = secrets.token_hex(3)
    pool_a, pool_b, pool_c = (f"gcp-teardown-{name}-{token}" for name in "abc")
    monkeypatch.setenv("PREFECT_REMOTE_PROVIDER", "gcp")
    monkeypatch.setenv("PREFECT_API_URL", prefect_server)

    def create(pool: str) -> None:
        made = prefect_cli(prefect_server, "work-pool", "create", "--type", "remote:push", "--provision-infra", pool)
        assert made.returncode == 0, made.stdout + made.stderr

    def provider(pool: str, **options) -> GCPProvider:
        made = GCPProvider(service_account=pool_account_email(GCPInfra.PROJECT, pool), **options)
        made.store_url = stores[pool]
        return made

    b_machine = None
    try:
        monkeypatch.delenv("PREFECT_REMOTE_STORE", raising=False)  # provisioning chooses
        create(pool_a)
        create(pool_b)
        with temporary_settings({PREFECT_API_URL: prefect_server}):
            stores = {pool: work_pool_store(pool) for pool in (pool_a, pool_b)}  # what teardown --pool finds
        assert stores == {pool: f"gs://{gcp_infra.bucket}/store/{pool_key(pool)}" for pool in (pool_a, pool_b)}
        bucket = gcp_infra.storage().bucket(gcp_infra.bucket)
        envs = {pool: f"store/{pool_key(pool)}/envs/e.json" for pool in (pool_a, pool_b)}  # as package sync writes them
        for name in envs.values():
            bucket.blob(name).upload_from_string("{}")
        [rule] = [dict(r) for r in gcp_infra.storage().get_bucket(gcp_infra.bucket).lifecycle_rules]
        assert rule["condition"]["matchesPrefix"] == sorted(f"store/{pool_key(pool)}/machines/" for pool in (pool_a, pool_b))
        a = provider(pool_a, service="compute", zone="us-central1-c")  # not the region's first zone
        b = provider(pool_b, service="cloud-run")
        [a_machine] = a.launch(MachineSpec(cpu=2), BootPayload(["sleep", "600"], secrets={"TOKEN": "a"}))
        [b_machine] = b.launch(MachineSpec(cpu=1), BootPayload(["sleep", "600"], secrets={"TOKEN": "b"}))
        manager = b.clients.secret_manager()
        parent = "projects/sandbox-project"
        leftovers = {}
        for pool, made in ((pool_a, a), (pool_b, b)):  # as a launch whose owner died leaves its secret
            launch = secrets.token_hex(6)
            leftovers[pool] = secret_id(f"launch-{launch}", made.records.label)
            labels = {LAUNCH_LABEL: f"launch-{launch}", RECORDS_LABEL: made.records.label}
            manager.create_secret(
                request={"parent": parent, "secret_id": leftovers[pool], "secret": {"replication": {"automatic": {}}, "labels": labels}}
            )

        def pool_secrets(made: GCPProvider) -> set[str]:
            listed = manager.list_secrets(request={"parent": parent, "filter": f"labels.{RECORDS_LABEL}={made.records.label}"})
            return {secret.name.rsplit("/", 1)[-1] for secret in listed}

        b_secrets = pool_secrets(b)
        assert len(b_secrets) == 2 and leftovers[pool_b] in b_secrets and len(pool_secrets(a)) == 2
        # The provider's zone is us-central1-a: pool A's VM is in us-central1-c, B's job runs too.
        refused = gcp_infra.cli("teardown", "--pool", pool_a)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert f"1 prefect-remote machine(s) still run in project sandbox-project (us-central1):\n  {a_machine.id}" in refused.stderr
        assert b_machine.id not in refused.stderr and a.describe(a_machine.id).alive
        forced = gcp_infra.cli("teardown", "--pool", pool_a, "--force")
        assert forced.returncode == 0, forced.stdout + forced.stderr
        assert not any(m.alive for m in a.service("compute").machines([a_machine.id])) and pool_secrets(a) == set()
        [secrets_line] = [line for line in forced.stdout.splitlines() if "launch secret(s) left behind" in line]
        assert leftovers[pool_a] in secrets_line and "removed 1 machine record(s)" in forced.stdout, forced.stdout
        assert "kept the custom roles, firewall rules and bucket" in forced.stdout.replace("\n", " ")
        a_email, b_email = (pool_account_email(GCPInfra.PROJECT, pool) for pool in (pool_a, pool_b))
        assert f"removed service account {a_email}" in forced.stdout and a_email not in project.iam.accounts
        assert project.iam.grants_of(f"serviceAccount:{a_email}") == []  # and its grants
        assert b.describe(b_machine.id).alive and pool_secrets(b) == b_secrets  # B's machine, its launch's secret, B's leftover
        assert b_machine.id in b.records.read([b_machine.id]) and not a.records.read([a_machine.id])
        assert project.iam.roles and b_email in project.iam.accounts  # nothing shared, nor B's, removed
        assert project.iam.grants_of(f"serviceAccount:{b_email}")
        held = bucket.get_iam_policy(requested_policy_version=3).bindings  # on the bucket: A's grants gone, B's kept
        assert not any(f"serviceAccount:{a_email}" in b["members"] for b in held)
        assert sorted(b["role"] for b in held if f"serviceAccount:{b_email}" in b["members"]) == [
            "roles/storage.objectUser",
            "roles/storage.objectViewer",
        ]
        assert f"removed the pool's store {stores[pool_a]}" in forced.stdout
        left = {blob.name for blob in gcp_infra.storage().list_blobs(gcp_infra.bucket, prefix="store/")}
        assert envs[pool_b] in left and not any(name.startswith(f"store/{pool_key(pool_a)}/") for name in left), left
        [rule] = [dict(r) for r in gcp_infra.storage().get_bucket(gcp_infra.bucket).lifecycle_rules]
        assert rule["condition"]["matchesPrefix"] == [f"store/{pool_key(pool_b)}/machines/"]
        template = tmp_path / "template.json"  # a third pool made with B's job template, so with B's provider block and store
        with temporary_settings({PREFECT_API_URL: prefect_server}), get_client(sync_client=True) as api:
            template.write_text(json.dumps(api.read_work_pool(pool_b).base_job_template))
        made = prefect_cli(prefect_server, "work-pool", "create", "--type", "remote:push", "--base-job-template", str(template), pool_c)
        assert made.returncode == 0, made.stdout + made.stderr
        shared = gcp_infra.cli("teardown", "--pool", pool_b, "--force")
        assert shared.returncode == 2 and f"shares its store {stores[pool_b]} with '{pool_c}'" in " ".join(shared.stderr.split())
        assert b.describe(b_machine.id).alive and pool_secrets(b) == b_secrets  # nothing of B's removed either
    finally:
        if b_machine is not None:
            provider(pool_b).terminate([b_machine.id], reason="test over")
        with temporary_settings({PREFECT_API_URL: prefect_server}), get_client(sync_client=True) as api:
            for pool in (pool_a, pool_b, pool_c):
                try:
                    api.delete_work_pool(pool)
                except Exception:  # not made: its creation failed
                    pass


def test_the_account_pools_shared_before_keeps_working_and_its_launches_warn(project, gcp_infra, caplog):
    """A project provisioned by an older release has the account every pool shared: provisioning a pool
    grants it every pool's secrets and VMs by name (its custom role lost the VM permissions to the
    new conditioned one), says how to isolate its pools, and a launch as it warns naming the fix."""
    import logging

    from prefect_remote.providers.gcp.grants import service_account_email

    shared = service_account_email("sandbox-project")
    GCPProvider().clients.iam().call("POST", "serviceAccounts", {"accountId": "prefect-remote-machines", "serviceAccount": {}})
    _, lines = gcp_infra.provision()
    roles = machine_roles(project="sandbox-project", project_number=project.project_number, bucket="", service_account=shared, pool=None)
    assert project.iam.grants_of(f"serviceAccount:{shared}") == roles["project"]
    assert any(f"the pools that still run as {shared}" in line and "provision each again" in line for line in lines), lines
    with caplog.at_level(logging.WARNING, logger="prefect_remote.providers.gcp"):
        provider = GCPProvider(service_account=shared)
        provider._warn_if_shared()
        provider._warn_if_shared()  # once
    [warning] = [r.getMessage() for r in caplog.records if shared in r.getMessage()]
    assert "--provision-infra --overwrite POOL" in warning and "another pool's flow runs can read this pool's secrets" in warning
    removed = gcp_infra.teardown()
    assert f"service account {shared}" in removed and shared not in project.iam.accounts
