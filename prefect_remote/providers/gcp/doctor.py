"""``prefect-remote doctor gcp``: the project checked against what a first run needs, each check a
:class:`~prefect_remote.doctor.Finding` that names its fix.

- **credentials**: Google's default credentials and the project (the provider's options);
- **APIs**: every API the provider calls is enabled (:func:`~prefect_remote.providers.gcp.infra.missing_apis`);
- **launcher permissions**: ``testIamPermissions`` of the caller, on the project, the machines'
  service account and the store's bucket, against :data:`~prefect_remote.providers.gcp.grants.LAUNCHER_PERMISSIONS`;
- **machine grants**: the machines' service account's bindings in the project's IAM policy against
  :func:`~prefect_remote.providers.gcp.grants.machine_roles` (a custom role: any of the project's
  with the grant's condition and its :data:`~prefect_remote.providers.gcp.grants.MACHINE_CUSTOM_ROLES` permissions);
- **quota**: for each service the pool's machines run on, the region's quotas against its largest
  machine there: Compute Engine's ``CPUS`` and ``NVIDIA_<type>_GPUS`` limits (``regions.get``);
  Cloud Run's CPU, memory and L4 GPU allocation (``CpuAllocPerProjectRegion``…, the Cloud Quotas
  API's QuotaInfo, which needs ``cloudquotas.quotas.get``: one of doctor's own reads);
- **network**: the VMs' subnetwork exists in the region (every VM gets an external IP, so it needs
  no NAT);
- **store bucket**: the store's bucket exists and the launcher may list it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prefect_remote.errors import RemoteError
from prefect_remote.providers.doctor import Finding, Needs, guarded, largest
from prefect_remote.providers.gcp import cloudrun_catalog, grants
from prefect_remote.providers.gcp.clients import GCPError, role_for
from prefect_remote.providers.gcp.infra import REQUIRED_APIS, enable_command, missing_apis, project_number_of
from prefect_remote.units import format_size

if TYPE_CHECKING:
    from prefect_remote.providers.base import InstanceType
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

    account = provider.options.service_account
    if not account:
        return Finding(
            "machine grants",
            False,
            "no service account for the machines",
            f"{PROVISION} makes one, or set PREFECT_REMOTE_GCP_SERVICE_ACCOUNT",
        )
    clients, project = provider.clients, provider.clients.project
    number = project_number_of(clients)
    try:
        pool: str | None = provider.records.label  # what the pool's secrets' and VMs' names carry
    except RemoteError:  # no gs:// store: the grants of an account every pool shares
        pool = None
    # Its pool's own (as provisioning grants its account), or every pool's (an account shared by pools).
    choices = [
        grants.machine_roles(project=project, project_number=number, bucket=bucket or "BUCKET", service_account=account, pool=held)[
            "project"
        ]
        for held in dict.fromkeys((pool, None))
    ]
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
    lacking = [[grant["role"] for grant in wanted if not _granted(clients, grant, held)] for wanted in choices]
    for wanted, missing in zip(choices, lacking, strict=True):
        if not missing:
            shared = (
                " (every pool's secrets and VMs: provision the pool again for an account of its own)" if wanted is not choices[0] else ""
            )
            return Finding("machine grants", True, f"{account}: all {len(wanted)} project grants{shared}")
    missing = min(lacking, key=len)  # what the grants it has come closest to lack
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
    """The region's quotas of each service the pool's machines run on, against its largest machine
    there: Compute Engine's (:func:`_compute_quota`), Cloud Run's (:func:`_cloud_run_quota`)."""
    region, project = provider.options.region, provider.clients.project
    machines = needs.instance_types or (needs.instance_type,)
    on_run = [machine for machine in machines if cloudrun_catalog.is_shape(machine)]
    on_vms = [machine for machine in machines if not cloudrun_catalog.is_shape(machine)]
    checks = {"compute": (_compute_quota, on_vms), "cloud-run": (_cloud_run_quota, on_run)}
    found = {service: check(provider, largest(types)) for service, (check, types) in checks.items() if types}
    detail = f"{region}: {'; '.join(text for text, _ in found.values())}; {needs.source}"
    asks = [ask for _, service_asks in found.values() for ask in service_asks]
    if not asks:
        return Finding("quota", True, detail)
    fix = f"raise {', '.join(asks)} in {region}: console.cloud.google.com/iam-admin/quotas?project={project}"
    if found.get("cloud-run", ("", []))[1]:  # Cloud Run's short: a VM takes Compute Engine's quotas instead
        fix += ", or run on Compute Engine (gcp_service='compute')"
    return Finding("quota", False, detail, fix)


def _compute_quota(provider: GCPProvider, machine: InstanceType) -> tuple[str, list[str]]:
    """The region's ``CPUS`` and ``NVIDIA_<type>_GPUS`` limits (``regions.get``) against ``machine``:
    what was found, and each quota to raise."""
    clients, region = provider.clients, provider.options.region
    with clients.translated("compute.regions.get"):
        found = clients.regions().get(project=clients.project, region=region)
    limits = {quota.metric: (int(quota.limit), int(quota.usage)) for quota in found.quotas}
    wanted = {"CPUS": machine.cpu}
    if machine.gpu:
        wanted[quota_metric(machine.gpu_type or "nvidia-tesla-t4")] = machine.gpu
    short = {metric: count for metric, count in wanted.items() if limits.get(metric, (0, 0))[0] < count}
    detail = ", ".join(f"{m} {limits.get(m, (0, 0))[0]} ({limits.get(m, (0, 0))[1]} used)" for m in wanted)
    return detail, [f"{metric} to {count}" for metric, count in short.items()]


# Cloud Run's regional quotas a task takes from (Cloud Quotas' quota ids): what a task of
# ``machine`` takes, in the quota's unit, and how the amount reads.
CLOUD_RUN_QUOTAS: dict[str, tuple[str, Callable[[InstanceType], int], Callable[[int], str]]] = {
    "CpuAllocPerProjectRegion": ("CPU", lambda machine: machine.cpu * 1000, lambda milli: f"{milli / 1000:g} vCPU"),
    "MemAllocPerProjectRegion": ("memory", lambda machine: machine.memory, format_size),
    "NvidiaL4GpuAllocNoZonalRedundancyPerProjectRegion": ("L4 GPUs", lambda machine: machine.gpu, str),
}
CLOUD_RUN_SERVICE = "run.googleapis.com"


def _cloud_run_quota(provider: GCPProvider, machine: InstanceType) -> tuple[str, list[str]]:
    """Cloud Run's regional CPU, memory and (for a GPU task) L4 allocation quotas, as the Cloud Quotas
    API gives them, against one task of ``machine`` (a task's own maxima, 8 vCPU and 32 GiB, are
    the machine spec's check): what was found, and each quota to raise."""
    wanted = {quota: need(machine) for quota, (_, need, _) in CLOUD_RUN_QUOTAS.items() if need(machine)}
    limits = {quota: _cloud_run_limit(provider, quota) for quota in wanted}
    parts, asks = [], []
    for quota, count in wanted.items():
        what, _, show = CLOUD_RUN_QUOTAS[quota]
        limit = limits[quota]
        parts.append(f"{what} {'unlimited' if limit is None else show(limit)}")
        if limit is not None and limit < count:
            asks.append(f"Cloud Run's {quota} to {show(count)}")
    return f"Cloud Run {', '.join(parts)}", asks


def _cloud_run_limit(provider: GCPProvider, quota: str) -> int | None:
    """Cloud Run quota ``quota``'s value in the provider's region (None: unlimited), from its QuotaInfo:
    the region's own value, else the project's default."""
    clients, region = provider.clients, provider.options.region
    with clients.translated("cloudquotas.quotas.get"):
        info = clients.cloud_quotas().call("GET", f"locations/global/services/{CLOUD_RUN_SERVICE}/quotaInfos/{quota}")
    entries = info.get("dimensionsInfos") or []
    chosen = next((e for e in entries if (e.get("dimensions") or {}).get("region") == region), None)
    chosen = chosen or next((e for e in entries if region in (e.get("applicableLocations") or ())), None)
    chosen = chosen or next((e for e in entries if not (e.get("dimensions") or {}).get("region")), None)
    if chosen is None:
        raise GCPError(f"Cloud Quotas gives no value of Cloud Run's {quota} for {region}")
    value = int((chosen.get("details") or {}).get("value", 0))
    return None if value < 0 else value


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
