"""``prefect-remote doctor gcp``: the project checked against what a first run needs, each check a
:class:`~prefect_remote.doctor.Finding` that names its fix.

- **credentials**: Google's default credentials and the project (the provider's options);
- **APIs**: every API the provider calls is enabled (:func:`~prefect_remote.providers.gcp.infra.missing_apis`);
- **launcher permissions**: ``testIamPermissions`` of the caller, on the project, the machines'
  service account and the store's bucket, against :data:`~prefect_remote.providers.gcp.grants.LAUNCHER_PERMISSIONS`;
- **machine grants**: the machines' service account's bindings in the project's IAM policy against
  :func:`~prefect_remote.providers.gcp.grants.machine_roles` (a custom role: any of the project's
  with the grant's condition and its :data:`~prefect_remote.providers.gcp.grants.MACHINE_CUSTOM_ROLES` permissions);
- **CPU and GPU quota**: the region's ``CPUS`` and ``NVIDIA_<type>_GPUS`` limits (``regions.get``)
  against the pool's largest machine;
- **network**: the VMs' subnetwork exists in the region (every VM gets an external IP, so it needs
  no NAT);
- **store bucket**: the store's bucket exists and the launcher may list it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prefect_remote.providers.doctor import Finding, Needs, guarded
from prefect_remote.providers.gcp import grants
from prefect_remote.providers.gcp.clients import role_for
from prefect_remote.providers.gcp.infra import REQUIRED_APIS, enable_command, missing_apis, project_number_of

if TYPE_CHECKING:
    from prefect_remote.providers.gcp.provider import GCPProvider

DOCS = "docs/providers/gcp.md"
PROVISION = "prefect work-pool create NAME --type remote:push --provision-infra"


def checks(provider: GCPProvider, needs: Needs) -> list[Finding]:
    """Every check of the project ``provider`` uses, for ``needs``; after failed credentials, none other."""
    found = guarded("credentials", lambda: _credentials(provider))
    if not found[0].ok:
        return found
    bucket, prefix = _store(needs.store)
    return [
        *found,
        *guarded("APIs", lambda: _apis(provider)),
        *guarded("launcher permissions", lambda: _launcher_permissions(provider, bucket)),
        *guarded("machine grants", lambda: _machine_grants(provider, bucket)),
        *guarded("quota", lambda: _quota(provider, needs)),
        *guarded("network", lambda: _network(provider)),
        *guarded("store bucket", lambda: _bucket(provider, needs.store, bucket, prefix)),
    ]


def _store(store: str | None) -> tuple[str, str]:
    """The bucket and prefix of a ``gs://`` store; ("", "") for anything else."""
    if not (store or "").startswith("gs://"):
        return "", ""
    bucket, _, prefix = store.removeprefix("gs://").partition("/")  # type: ignore[union-attr]
    return bucket, prefix.strip("/")


def _credentials(provider: GCPProvider) -> Finding:
    clients = provider.clients
    credentials, project = clients.credentials, clients.project  # each raises GCPError naming the fix
    who = getattr(credentials, "service_account_email", None) or "your user credentials"
    return Finding("credentials", True, f"{who}, project {project}, region {provider.options.region}")


def _apis(provider: GCPProvider) -> Finding:
    missing = missing_apis(provider, refused_is_enabled=True)
    if not missing:
        return Finding("APIs", True, f"all {len(REQUIRED_APIS)} enabled")
    names = ", ".join(REQUIRED_APIS[service] for service in missing)
    return Finding("APIs", False, f"not enabled: {names}", enable_command(provider.clients.project, missing))


def _launcher_permissions(provider: GCPProvider, bucket: str) -> Finding:
    """The launcher's permissions, each tested where Google checks it."""
    from google.api_core.exceptions import NotFound

    clients, project = provider.clients, provider.clients.project
    wanted = grants.LAUNCHER_PERMISSIONS
    with clients.translated("resourcemanager.projects.testIamPermissions"):
        answer = clients.resource_manager().test_iam_permissions(
            request={"resource": f"projects/{project}", "permissions": list(wanted["project"])}
        )
    missing = [p for p in wanted["project"] if p not in set(answer.permissions)]
    total = len(wanted["project"])
    account = provider.options.service_account
    if account:  # none: the machine grants check says so
        with clients.translated("iam.serviceAccounts.testIamPermissions"):
            held = clients.iam().call(
                "POST", f"serviceAccounts/{account}:testIamPermissions", {"permissions": list(wanted["service account"])}
            )
        missing += [f"{p} on {account}" for p in wanted["service account"] if p not in held.get("permissions", [])]
        total += len(wanted["service account"])
    if bucket:  # none, or no such bucket: the store bucket check says so
        try:
            with clients.translated("storage.buckets.testIamPermissions"):
                held_objects = clients.storage().bucket(bucket).test_iam_permissions(list(wanted["bucket"]))
            missing += [f"{p} on gs://{bucket}" for p in wanted["bucket"] if p not in held_objects]
            total += len(wanted["bucket"])
        except NotFound:
            pass
    if not missing:
        return Finding("launcher permissions", True, f"all {total} granted")
    roles = sorted({role_for(p.split(" ")[0]) for p in missing})
    return Finding(
        "launcher permissions",
        False,
        f"lacks {len(missing)} of {total}: {', '.join(missing)}",
        f"grant {', '.join(roles)} ({DOCS}#the-identity-that-launches-machines)",
    )


def _machine_grants(provider: GCPProvider, bucket: str) -> Finding:
    """The machines' account's grants on the project, as provisioning makes them."""
    from google.api_core.exceptions import Forbidden, PermissionDenied

    from prefect_remote.providers.gcp.clients import GCPError

    account = provider.options.service_account
    if not account:
        return Finding(
            "machine grants",
            False,
            "no service account for the machines",
            f"{PROVISION} makes one, or set PREFECT_REMOTE_GCP_SERVICE_ACCOUNT",
        )
    clients, project = provider.clients, provider.clients.project
    wanted = grants.machine_roles(
        project=project, project_number=project_number_of(clients), bucket=bucket or "BUCKET", service_account=account
    )["project"]
    try:
        policy = clients.resource_manager().get_iam_policy(
            request={"resource": f"projects/{project}", "options": {"requested_policy_version": 3}}
        )
    except (Forbidden, PermissionDenied):
        raise GCPError(
            f"doctor may not read project {project}'s IAM policy: run it as an identity with "
            f"{' and '.join(grants.DOCTOR_PERMISSIONS)} (the provisioning identity has them)"
        ) from None
    member = f"serviceAccount:{account}"
    held = [b for b in grants.policy_bindings(policy) if member in b["members"]]
    missing = [grant["role"] for grant in wanted if not _granted(clients, grant, held)]
    if not missing:
        return Finding("machine grants", True, f"{account}: all {len(wanted)} project grants")
    return Finding(
        "machine grants",
        False,
        f"{account} lacks {', '.join(missing)}",
        f"{PROVISION} grants them ({DOCS}#what-the-machines-account-is-granted-and-why)",
    )


def _granted(clients: Any, grant: dict[str, Any], held: list[dict[str, Any]]) -> bool:
    """Whether a binding in ``held`` gives ``grant``: its role under its condition (a custom role:
    any of the project's that holds its :data:`~prefect_remote.providers.gcp.grants.MACHINE_CUSTOM_ROLES` permissions)."""
    condition = grants.binding_condition(grant)
    expression = condition[1] if condition else None

    def same_condition(binding: dict[str, Any]) -> bool:
        found = grants.binding_condition(binding)
        return (found[1] if found else None) == expression

    prefix, _, role_id = grant["role"].rpartition("/")
    if not prefix.endswith("/roles") or role_id not in grants.MACHINE_CUSTOM_ROLES:
        return any(b["role"] == grant["role"] and same_condition(b) for b in held)
    for binding in held:
        if binding["role"].startswith(prefix + "/") and same_condition(binding):
            with clients.translated("iam.roles.get"):
                role = clients.iam().call("GET", "roles/" + binding["role"].rsplit("/", 1)[-1])
            if set(grants.MACHINE_CUSTOM_ROLES[role_id]) <= set(role.get("includedPermissions", [])):
                return True
    return False


def quota_metric(gpu_type: str) -> str:
    """The region's quota metric of a GPU type.

    >>> quota_metric("nvidia-tesla-t4"), quota_metric("nvidia-l4"), quota_metric("nvidia-a100-80gb")
    ('NVIDIA_T4_GPUS', 'NVIDIA_L4_GPUS', 'NVIDIA_A100_80GB_GPUS')
    """
    return gpu_type.replace("nvidia-", "").replace("tesla-", "").replace("-", "_").upper().join(("NVIDIA_", "_GPUS"))


def _quota(provider: GCPProvider, needs: Needs) -> Finding:
    clients, region = provider.clients, provider.options.region
    with clients.translated("compute.regions.get"):
        found = clients.regions().get(project=clients.project, region=region)
    limits = {quota.metric: (int(quota.limit), int(quota.usage)) for quota in found.quotas}
    wanted = {"CPUS": needs.cpu}
    if needs.gpu:
        wanted[quota_metric(needs.instance_type.gpu_type or "nvidia-tesla-t4")] = needs.gpu
    short = {metric: count for metric, count in wanted.items() if limits.get(metric, (0, 0))[0] < count}
    detail = ", ".join(f"{m} {limits.get(m, (0, 0))[0]} ({limits.get(m, (0, 0))[1]} used)" for m in wanted)
    detail = f"{region}: {detail}; {needs.source}"
    if not short:
        return Finding("quota", True, detail)
    asks = ", ".join(f"{metric} to {count}" for metric, count in short.items())
    fix = f"raise {asks} in {region}: console.cloud.google.com/iam-admin/quotas?project={clients.project}"
    return Finding("quota", False, detail, fix)


def _network(provider: GCPProvider) -> Finding:
    from google.api_core.exceptions import NotFound

    options, clients = provider.options, provider.clients
    name = (options.subnetwork or options.network).rsplit("/", 1)[-1]
    try:
        with clients.translated("compute.subnetworks.get"):
            found = clients.subnetworks().get(project=clients.project, region=options.region, subnetwork=name)
    except NotFound:
        return Finding(
            "network",
            False,
            f"no subnetwork {name!r} in {options.region}",
            f"gcloud compute networks subnets create {name} --network={options.network} --region={options.region} "
            "--range=CIDR, or set PREFECT_REMOTE_GCP_SUBNETWORK",
        )
    return Finding("network", True, f"subnetwork {name} ({found.ip_cidr_range}) in {options.region}; VMs get external IPs")


def _bucket(provider: GCPProvider, store: str | None, bucket: str, prefix: str) -> Finding:
    from google.api_core.exceptions import NotFound

    if not bucket:
        return Finding(
            "store bucket",
            False,
            f"the store is {store or 'not set'}, which gcp machines cannot read",
            "set PREFECT_REMOTE_STORE=gs://BUCKET/PREFIX (--provision-infra makes one)",
        )
    try:
        with provider.clients.translated("storage.objects.list"):
            next(iter(provider.clients.storage().bucket(bucket).list_blobs(prefix=prefix or None, max_results=1)), None)
    except NotFound:
        return Finding(
            "store bucket",
            False,
            f"no bucket {bucket!r}",
            f"gcloud storage buckets create gs://{bucket} --location={provider.options.region} (or --provision-infra)",
        )
    return Finding("store bucket", True, f"{store} reachable")
