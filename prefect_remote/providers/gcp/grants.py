"""Who may do what in the user's project, for the gcp provider: the machines' service account and its
least-privilege grants, which provisioning (:mod:`~prefect_remote.providers.gcp.infra`) makes and
teardown removes; what the identity that launches machines (:data:`LAUNCHER_ROLES`) and the one that
provisions (:data:`PROVISIONER_ROLES`) need, documented, never granted; and how a grant is added to
or removed from an IAM policy's bindings.

Each pool's machines run as an account of the pool's own (:func:`pool_account_email`). Their grants
(:data:`MACHINE_ROLES`, the docs quote :func:`machine_roles`): the custom roles
``prefectRemoteMachine`` (:data:`MACHINE_PERMISSIONS`), ``prefectRemoteMachineInstances``
(:data:`INSTANCE_PERMISSIONS`) and ``prefectRemoteMachineSecrets`` (:data:`MACHINE_SECRET_PERMISSIONS`),
predefined roles on the project (VMs and secrets limited by IAM conditions to the pool's own, by
name), the store's bucket (limited by conditions to the pool's folder: read there, write its machine
records only), and the account itself.
"""

from __future__ import annotations

import json
from typing import Any

SERVICE_ACCOUNT_ID = "prefect-remote-machines"  # before accounts were per pool: every pool's (kept working, never made)
POOL_ACCOUNT_PREFIX = "pr-"  # a pool's own account: pr-<pool key, cut>-<hash> (pool_account_id)
POOL_ACCOUNT_NAME = "prefect-remote pool "  # its display name begins so: what a teardown knows it by
MACHINE_ROLE_ID = "prefectRemoteMachine"  # Compute Engine and Cloud Run resources without names: no condition
MACHINE_INSTANCES_ROLE_ID = "prefectRemoteMachineInstances"  # VMs: granted on the pool's own only (by name)
MACHINE_SECRETS_ROLE_ID = "prefectRemoteMachineSecrets"  # launch secrets: granted on the pool's own only (by name)

# What a VM's holder does to VMs themselves: checked on the instance, whose name IAM conditions read.
INSTANCE_PERMISSIONS = (
    "compute.instances.delete",
    "compute.instances.create",
    "compute.instances.get",
    "compute.instances.setLabels",
    "compute.instances.setMetadata",
    "compute.instances.setServiceAccount",
    "compute.instances.setTags",
)
# Starting, tagging and ending Compute Engine VMs, which launchers and scheduler machines both do.
VM_LAUNCH_PERMISSIONS = (
    *INSTANCE_PERMISSIONS,
    "compute.instances.list",
    "compute.disks.create",
    "compute.subnetworks.get",
    "compute.subnetworks.use",
    "compute.subnetworks.useExternalIp",
    "compute.networks.get",
    "compute.firewalls.get",
    "compute.machineTypes.list",
    "compute.acceleratorTypes.list",
)
OPERATION_PERMISSIONS = (
    "compute.zoneOperations.get",
    "compute.globalOperations.get",
)

# The custom roles' permissions: a VM ends itself; a cluster's scheduler VM launches its workers
# (as this same account, with their launch secrets) and ends them; a flow run (a Cloud Run task or a
# VM) starts a cluster the same way, after looking for one among the provider's machines, which
# lists Cloud Run jobs too (read only: ending them is its launcher's). Three roles, since only the
# resources with names can be limited to the pool's: Cloud Run's resources and most of Compute
# Engine's (subnetworks, zones, operations, a listing) have no resource attributes, and "if part of a
# condition uses an attribute that isn't available for a resource, then that part of the condition is
# never interpreted as granting access" (IAM's attribute reference): one conditioned role would grant
# them nothing. So those are unconditioned (MACHINE_PERMISSIONS: nothing there changes a VM or reads a
# secret); what acts on a VM (INSTANCE_PERMISSIONS) holds on the pool's VMs by name (instance_condition),
# and the secrets' on its secrets (secret_condition).
MACHINE_PERMISSIONS = (
    *(p for p in VM_LAUNCH_PERMISSIONS if p not in INSTANCE_PERMISSIONS),
    "compute.images.getFromFamily",
    "compute.images.useReadOnly",
    *OPERATION_PERMISSIONS,
    "run.jobs.list",
    "run.executions.get",
    "run.tasks.list",
)
MACHINE_SECRET_PERMISSIONS = (
    "secretmanager.secrets.create",
    "secretmanager.secrets.delete",
    "secretmanager.versions.add",
)
# The custom roles provisioning makes, by id.
MACHINE_CUSTOM_ROLES: dict[str, tuple[str, ...]] = {
    MACHINE_ROLE_ID: MACHINE_PERMISSIONS,
    MACHINE_INSTANCES_ROLE_ID: INSTANCE_PERMISSIONS,
    MACHINE_SECRETS_ROLE_ID: MACHINE_SECRET_PERMISSIONS,
}

# The machines' grants, with placeholders filled by machine_roles(): on the project, the store's
# bucket, and the service account itself. Conditions limit secrets and VMs to the pool's, by name:
# {secrets} and {instances} are the pool's prefixes (secrets.pool_prefix, compute.instance_prefix).
#
# On the bucket, the pool's store folder ({folder}: "store/<pool key>/" in the default bucket) alone.
# A machine reads its software environments, code bundles and the agent's wheel there (objects.get),
# and writes only its pool's machine records under {folder}machines/ (a launch's records: create, copy,
# patch, delete; leases and ends: get, patch). Cloud Storage names an object in a condition
# "projects/_/buckets/BUCKET/objects/OBJECT" (IAM's "Resource attributes for IAM Conditions", resource
# name format; Google's own sample: resource.name.startsWith("projects/_/buckets/bucket-name/objects/prefix-a-")),
# and checks storage.objects.list on the bucket, "projects/_/buckets/BUCKET" (Cloud Storage's "IAM
# permissions for JSON methods"), which no object prefix matches: so the read grant also holds on the
# bucket itself (resource.name ==), for the listings machines make (their pool's records, with a
# prefix), which show every folder's object names (never their contents). Conditions on a bucket need
# uniform bucket-level access (cloud.google.com/storage/docs/uniform-bucket-level-access): provisioning
# refuses a bucket without it (infra.provision).
MACHINE_ROLES: dict[str, list[dict[str, Any]]] = {
    "project": [
        {"role": "roles/logging.logWriter"},
        {
            "role": "roles/secretmanager.secretAccessor",
            "condition": {
                "title": "{title} launch secrets",
                "expression": 'resource.name.startsWith("projects/{project_number}/secrets/{secrets}")',
            },
        },
        {"role": "projects/{project}/roles/" + MACHINE_ROLE_ID},
        {
            "role": "projects/{project}/roles/" + MACHINE_INSTANCES_ROLE_ID,
            "condition": {
                "title": "{title} VMs",
                "expression": 'resource.type == "compute.googleapis.com/Instance" && '
                'resource.name.extract("/instances/{name}").startsWith("{instances}")',
            },
        },
        {
            "role": "projects/{project}/roles/" + MACHINE_SECRETS_ROLE_ID,
            "condition": {
                "title": "{title} secrets only",
                "expression": '!resource.type.startsWith("secretmanager.googleapis.com/") || '
                'resource.name.startsWith("projects/{project_number}/secrets/{secrets}")',
            },
        },
    ],
    "bucket {bucket}": [
        {
            "role": "roles/storage.objectViewer",
            "condition": {
                "title": "{title} store, and listing",
                "expression": 'resource.name == "projects/_/buckets/{bucket}" || '
                'resource.name.startsWith("projects/_/buckets/{bucket}/objects/{folder}")',
            },
        },
        {
            "role": "roles/storage.objectUser",
            "condition": {
                "title": "{title} machine records",
                "expression": 'resource.name.startsWith("projects/_/buckets/{bucket}/objects/{folder}machines/")',
            },
        },
    ],
    "service account {service_account}": [{"role": "roles/iam.serviceAccountUser"}],
}

# What the identity that launches machines (a worker, a `prefect-remote` user) needs: documented.
LAUNCHER_ROLES = (
    ("roles/run.developer", "the project", "Cloud Run jobs and executions"),
    ("roles/compute.instanceAdmin.v1", "the project", "Compute Engine VMs"),
    ("roles/iam.serviceAccountUser", "the machines' service account", "start machines as it"),
    ("roles/secretmanager.admin", "the project", "launch secrets"),
    ("roles/storage.objectAdmin", "the store's bucket", "software environments and machine records"),
    ("roles/logging.viewer", "the project", "machine logs"),
    ("roles/compute.securityAdmin", "the project", "a firewall rule admitting the Dask ports from a launcher's new address"),
)
# What provisioning grants the identity that provisions on the machines' service account, so that
# it may launch machines as the account it just made (another launcher is granted it by the user).
LAUNCHER_ACCOUNT_GRANTS = [{"role": role} for role, where, _why in LAUNCHER_ROLES if where == "the machines' service account"]
# What the launcher calls, by where Google checks it (LAUNCHER_ROLES grant them; `prefect-remote
# doctor gcp` tests them with testIamPermissions): Cloud Run jobs, their executions and tasks;
# Compute Engine VMs in any zone of the region, their types, images and operations, the subnetwork
# they use with an external IP, the firewall rules a cluster's launch looks for (and makes, for a new
# launcher address), the region's
# quotas (doctor); launch secrets; machine logs; machines start as the machines' account;
# the store's objects.
LAUNCHER_PERMISSIONS: dict[str, tuple[str, ...]] = {
    "project": (
        "run.jobs.create",
        "run.jobs.run",
        "run.jobs.get",
        "run.jobs.list",
        "run.jobs.delete",
        "run.executions.get",
        "run.executions.cancel",
        "run.tasks.list",
        *VM_LAUNCH_PERMISSIONS,
        *OPERATION_PERMISSIONS,
        "compute.regions.get",
        # A cluster's client outside the network reaches its scheduler through a rule for its own
        # address (allow_ingress_from="me"): a launcher whose public IP changed makes a new one.
        "compute.firewalls.create",
        "secretmanager.secrets.create",
        "secretmanager.secrets.delete",
        "secretmanager.versions.add",
        "logging.logEntries.list",
    ),
    "service account": ("iam.serviceAccounts.actAs",),
    "bucket": (
        "storage.objects.create",
        "storage.objects.get",
        "storage.objects.list",
        "storage.objects.update",
        "storage.objects.delete",
    ),
}
# What `prefect-remote doctor gcp` reads beyond launching: to check the machines' grants, the
# project's IAM policy and the custom role; to check Cloud Run's quotas, their QuotaInfo (Cloud
# Quotas API). Provisioning's roles have them all (roles/cloudquotas.viewer for doctor alone).
DOCTOR_PERMISSIONS = ("resourcemanager.projects.getIamPolicy", "iam.roles.get", "cloudquotas.quotas.get")
# What provisioning and teardown need, on the project (and doctor's reads): documented.
PROVISIONER_ROLES = {
    "iam.serviceAccounts.": "roles/iam.serviceAccountAdmin",
    "iam.roles.": "roles/iam.roleAdmin",
    "resourcemanager.projects.": "roles/resourcemanager.projectIamAdmin",
    "storage.": "roles/storage.admin",
    "compute.firewalls.": "roles/compute.securityAdmin",
    "serviceusage.": "roles/serviceusage.serviceUsageConsumer",
    "cloudquotas.": "roles/cloudquotas.viewer",
}


def machine_roles(
    *, project: str, project_number: str, bucket: str, service_account: str, pool: str | None, folder: str = ""
) -> dict[str, list[dict[str, Any]]]:
    """:data:`MACHINE_ROLES` for this project, bucket and account, limited to ``pool``'s secrets and
    VMs (its records label) and to its store's ``folder`` in the bucket (the store's prefix with its
    slash, ``store/<pool key>/``; "" for a store that is the whole bucket): what provisioning grants,
    exactly. ``pool`` None: every pool's (the account every pool shared before accounts were per pool,
    which keeps working).

    >>> account = "sa@p-1.iam.gserviceaccount.com"
    >>> roles = machine_roles(project="p-1", project_number="42", bucket="b", service_account=account, pool="0a1b", folder="store/p/")
    >>> [grant["condition"]["expression"] for grant in roles["bucket b"]][1]
    'resource.name.startsWith("projects/_/buckets/b/objects/store/p/machines/")'
    >>> roles["project"][1]["condition"]["expression"]
    'resource.name.startsWith("projects/42/secrets/prefect-remote-0a1b-")'
    """
    if (folder and not folder.endswith("/")) or any(c in folder for c in '"\\'):
        raise ValueError(f"store folder {folder!r}: give the store's prefix ending in '/', without quotes or backslashes")
    from prefect_remote.providers.gcp.compute import instance_prefix
    from prefect_remote.providers.gcp.secrets import SECRET_PREFIX, pool_prefix

    values = {
        "project": project,
        "project_number": project_number,
        "bucket": bucket,
        "service_account": service_account,
        "secrets": pool_prefix(pool) if pool else SECRET_PREFIX,
        "instances": instance_prefix(pool) if pool else "vm-",
        "title": "the pool's" if pool else "prefect-remote",
        "folder": folder,
    }
    text = json.dumps(MACHINE_ROLES)
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    return json.loads(text)


def service_account_email(project: str) -> str:
    """The account every pool's machines shared before accounts were per pool (:func:`pool_account_email`).

    >>> service_account_email("my-project")
    'prefect-remote-machines@my-project.iam.gserviceaccount.com'
    """
    return f"{SERVICE_ACCOUNT_ID}@{project}.iam.gserviceaccount.com"


def pool_account_id(pool: str) -> str:
    """The id of ``pool``'s own service account: its :func:`~prefect_remote.providers.setup.pool_key`
    cut to IAM's 6-30 characters (``[a-z][-a-z0-9]*[a-z0-9]``), with the key's hash kept whole, so
    that pools whose names begin alike differ.

    >>> pool_account_id("My Pool"), pool_account_id("a very long pool name for the nightly jobs")
    ('pr-my-pool-4b953553', 'pr-a-very-long-pool-n-0293b58a')
    """
    from prefect_remote.providers.setup import pool_key

    slug, _, digest = pool_key(pool).rpartition("-")
    room = 30 - len(POOL_ACCOUNT_PREFIX) - 1 - len(digest)
    return f"{POOL_ACCOUNT_PREFIX}{slug[:room].strip('-')}-{digest}"


def pool_account_email(project: str, pool: str) -> str:
    """
    >>> pool_account_email("my-project", "My Pool")
    'pr-my-pool-4b953553@my-project.iam.gserviceaccount.com'
    """
    return f"{pool_account_id(pool)}@{project}.iam.gserviceaccount.com"


# -- IAM policy bindings ------------------------------------------------------------------------
def with_grants(bindings: list[dict[str, Any]], member: str, grants: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``bindings`` (as Google returns them) with ``member`` bound to each of ``grants`` (role and,
    maybe, a condition), exactly once.

    >>> with_grants([{"role": "roles/viewer", "members": ["user:a"]}], "user:b", [{"role": "roles/viewer"}])
    [{'role': 'roles/viewer', 'members': ['user:a', 'user:b']}]
    """
    result = [dict(b, members=list(b.get("members", []))) for b in bindings]
    for grant in grants:
        same = [b for b in result if b["role"] == grant["role"] and binding_condition(b) == binding_condition(grant)]
        if same:
            if member not in same[0]["members"]:
                same[0]["members"].append(member)
        else:
            result.append({**grant, "members": [member]})
    return result


def without_member(bindings: list[dict[str, Any]], member: str) -> list[dict[str, Any]]:
    """``bindings`` without ``member``; a binding left with no member is dropped.

    >>> without_member([{"role": "roles/viewer", "members": ["user:a"]}], "user:a")
    []
    """
    kept = [dict(b, members=[m for m in b.get("members", []) if m != member]) for b in bindings]
    return [b for b in kept if b["members"]]


def binding_condition(binding: dict[str, Any]) -> tuple[str, str] | None:
    """A binding's (or grant's) condition as (title, expression), which tells bindings of one role apart."""
    condition = binding.get("condition")
    return (condition.get("title", ""), condition.get("expression", "")) if condition else None


def policy_bindings(policy: Any) -> list[dict[str, Any]]:
    """A ``google.iam.v1.Policy`` message's bindings as plain dicts."""
    found = []
    for binding in policy.bindings:
        item: dict[str, Any] = {"role": binding.role, "members": list(binding.members)}
        if binding.HasField("condition"):
            item["condition"] = {"title": binding.condition.title, "expression": binding.condition.expression}
            if binding.condition.description:
                item["condition"]["description"] = binding.condition.description
        found.append(item)
    return found
