"""What the gcp provider's machines need in the user's project, set up once and torn down again.

:func:`provision` (run by ``prefect work-pool create --type remote:push --provision-infra`` when the
provider is gcp) first checks, with one cheap call each, that the project has enabled every API the
provider uses (:data:`REQUIRED_APIS`); if any is not, it names them all with the one ``gcloud
services enable`` command and makes nothing (it enables nothing itself). Then it makes, or finds:

- the pool's own service account ``pr-<pool key>@<project>.iam.gserviceaccount.com``
  (:func:`~prefect_remote.providers.gcp.grants.pool_account_email`), which its machines run as;
- its least-privilege grants (:mod:`~prefect_remote.providers.gcp.grants`): the custom roles
  ``prefectRemoteMachine``, ``prefectRemoteMachineInstances`` and ``prefectRemoteMachineSecrets``,
  predefined roles on the project (VMs and secrets limited by IAM conditions to the pool's own, by
  the names its launches give them), the store's bucket (limited by conditions to the pool's folder:
  read there, write its machine records only; a grant of before on the whole bucket is taken away),
  and the account itself (and, to the
  identity that provisions, leave to launch machines as it); the account every pool shared before
  (``prefect-remote-machines``), if the project has it, keeps what its pools' machines need;
- the software store's bucket (``PREFECT_REMOTE_STORE`` if it is ``gs://…``, else the pool's own
  folder :func:`default_store`, ``gs://prefect-remote-<project>-<region>/store/<pool key>``), uniform
  access, public access prevented, with a lifecycle rule that deletes machine records (of every
  store in the bucket) whose lease (customTime) is :data:`RECORDS_KEPT_DAYS` days old; a bucket of
  the user's without uniform access is refused, naming the command that enables it (the grants'
  conditions need it);
- the Compute Engine firewall rules, the Compute Engine service's own
  (:meth:`~prefect_remote.providers.gcp.compute.ComputeService.network_tags`: VMs reach each other
  internally; the Dask ports from ``allow_ingress_from``, and from the subnetwork's range, where a
  flow run that starts a cluster connects from).

It returns the provider block's fields that record it (``project``, ``region``,
``service_account``, ``store``). :func:`teardown` (``prefect-remote gcp teardown``) removes it all
again, finding it from Google alone (labels on buckets, names of the rest).

What the identity that launches machines needs and what provisioning itself needs are documented
there too, never granted.

One cohesive thing over 500 lines: provisioning and its exact undoing, which must stay side by side
(what ``teardown`` removes is what ``provision`` makes); who may do what is :mod:`~prefect_remote.providers.gcp.grants`'s.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prefect_remote.providers.base import batches
from prefect_remote.providers.gcp.clients import GCPError, error_message, service_disabled
from prefect_remote.providers.gcp.grants import (
    LAUNCHER_ACCOUNT_GRANTS,
    MACHINE_CUSTOM_ROLES,
    MACHINE_INSTANCES_ROLE_ID,
    MACHINE_ROLE_ID,
    MACHINE_SECRETS_ROLE_ID,
    POOL_ACCOUNT_NAME,
    POOL_ACCOUNT_PREFIX,
    PROVISIONER_ROLES,
    binding_condition,
    machine_roles,
    policy_bindings,
    pool_account_email,
    service_account_email,
    with_grants,
    without_member,
)
from prefect_remote.providers.gcp.records import BATCH, MachineRecords
from prefect_remote.providers.gcp.secrets import LAUNCH_LABEL, secret_id
from prefect_remote.providers.setup import Say, owns_store, pool_store, removed

if TYPE_CHECKING:
    from prefect_remote.providers.gcp.clients import GoogleClients, RestApi
    from prefect_remote.providers.gcp.provider import GCPProvider
    from prefect_remote.software.gcsstore import GCSStore

RECORDS_KEPT_DAYS = 7
ACT_AS = "iam.serviceAccounts.actAs"
# How long provisioning waits for its grant to take effect: Google's access change propagation takes
# typically 2 minutes, "potentially 7 minutes or longer" (cloud.google.com/iam/docs/access-change-propagation).
PROPAGATION_TIMEOUT = 420.0
MANAGED_LABEL = "prefect-remote-managed"  # "true" on buckets provisioning created
GRANTED_LABEL = "prefect-remote-machines"  # "granted" on buckets whose objects the machines may use
FIREWALL_PREFIXES = ("prefect-remote-internal-", "prefect-remote-dask-")  # the Compute Engine service's rules

# Every API the provider calls, and the client call that checks it (cheapest read of each).
REQUIRED_APIS = {
    "run.googleapis.com": "Cloud Run",
    "compute.googleapis.com": "Compute Engine",
    "secretmanager.googleapis.com": "Secret Manager",
    "logging.googleapis.com": "Cloud Logging",
    "storage.googleapis.com": "Cloud Storage",
    "iam.googleapis.com": "IAM",
    "cloudresourcemanager.googleapis.com": "Resource Manager",
}

_LAUNCH_ID = re.compile(r"launch-[0-9a-f]{12}")  # as Provider.launch makes them


def default_bucket(project: str, region: str) -> str:
    """The bucket provisioning makes when ``PREFECT_REMOTE_STORE`` names no gs:// store (a bucket name
    has at most 63 characters: a long project's is cut and made unique by a hash).

    >>> default_bucket("my-project", "us-central1")
    'prefect-remote-my-project-us-central1'
    """
    name = f"prefect-remote-{project}-{region}"
    if len(name) > 63:
        name = f"{name[:54]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    return name


def default_store(project: str, region: str, pool: str) -> str:
    """The store provisioning gives ``pool`` when ``PREFECT_REMOTE_STORE`` names no gs:// store: a
    folder of its own (:func:`~prefect_remote.providers.setup.pool_store`) in the default bucket's ``store/``.

    >>> default_store("my-project", "us-central1", "ab")
    'gs://prefect-remote-my-project-us-central1/store/ab-fb8e20fc'
    """
    return pool_store(f"gs://{default_bucket(project, region)}/store", pool)


# -- errors ---------------------------------------------------------------------------------------
class TeardownRefused(GCPError):
    """prefect-remote machines still run (``--force`` ends them)."""


@contextmanager
def google_errors(clients: GoogleClients, action: str, purpose: str) -> Iterator[None]:
    """Google's refusals inside the block as :class:`GCPError`: a missing permission of provisioning
    names the role that grants it (:data:`PROVISIONER_ROLES`), the rest as the clients translate them."""
    from google.api_core import exceptions as api

    with clients.translated(action):
        try:
            yield
        except (api.PermissionDenied, api.Forbidden) as error:
            matches = [prefix for prefix in PROVISIONER_ROLES if action.startswith(prefix)]
            if service_disabled(error) or not matches:
                raise
            role = PROVISIONER_ROLES[max(matches, key=len)]
            raise GCPError(
                f"Google Cloud refused {action} in project {clients.project}: the identity in use needs {role} "
                f"to {purpose} (docs/providers/gcp.md lists what provisioning needs)"
            ) from None


# -- checking the APIs ---------------------------------------------------------------------------------
def missing_apis(provider: GCPProvider, *, refused_is_enabled: bool = False) -> list[str]:
    """The :data:`REQUIRED_APIS` the project has not enabled, each found by one cheap read that
    Google refuses with 403 SERVICE_DISABLED. Other errors are raised (translated); with
    ``refused_is_enabled``, a read refused for a missing permission shows the API enabled (Google
    answers SERVICE_DISABLED before it checks permissions: doctor checks those apart)."""
    from google.api_core.exceptions import Forbidden, PermissionDenied

    clients, project, region = provider.clients, provider.clients.project, provider.options.region
    checks: dict[str, Callable[[], Any]] = {
        "run.googleapis.com": lambda: clients.jobs().list_jobs(
            request={"parent": f"projects/{project}/locations/{region}", "page_size": 1}
        ),
        "compute.googleapis.com": lambda: clients.firewalls().list(request={"project": project, "max_results": 1}),
        "secretmanager.googleapis.com": lambda: clients.secret_manager().list_secrets(
            request={"parent": f"projects/{project}", "page_size": 1}
        ),
        "logging.googleapis.com": lambda: next(
            iter(
                clients.logging().list_entries(
                    resource_names=[f"projects/{project}"],
                    filter_=f'logName="projects/{project}/logs/{provider.options.log_name}"',
                    max_results=1,
                )
            ),
            None,
        ),
        "storage.googleapis.com": lambda: next(iter(clients.storage().list_buckets(max_results=1)), None),
        "iam.googleapis.com": lambda: clients.iam().call("GET", "serviceAccounts", pageSize="1"),
        "cloudresourcemanager.googleapis.com": lambda: clients.resource_manager().get_project(name=f"projects/{project}"),
    }
    missing = []
    for service, check in checks.items():
        with clients.translated(f"{service.split('.')[0]}.list"):  # any other refusal: translated
            try:
                check()
            except Exception as error:
                if service_disabled(error):
                    missing.append(service)
                elif not (refused_is_enabled and isinstance(error, (Forbidden, PermissionDenied))):
                    raise
    return missing


def enable_command(project: str, services: list[str]) -> str:
    """
    >>> enable_command("p-1", ["run.googleapis.com", "iam.googleapis.com"])
    'gcloud services enable run.googleapis.com iam.googleapis.com --project=p-1'
    """
    return f"gcloud services enable {' '.join(services)} --project={project}"


# -- provisioning ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class GCPSetup:
    """What :func:`provision` made or found."""

    project: str
    region: str
    service_account: str
    store: str
    firewalls: tuple[str, ...]

    def block_fields(self) -> dict[str, str | None]:
        """The provider block's fields that record this setup, so that later runs use it."""
        return {"project": self.project, "region": self.region, "service_account": self.service_account, "store": self.store}


def provision(provider: GCPProvider, pool: str, store: str | None = None, say: Say = print) -> GCPSetup:
    """Checks the APIs, then makes (or finds) the machines' service account and its grants, the
    store's bucket and the firewall rules, printing each through ``say``. ``store`` is the software
    store to use (a ``gs://`` URL; anything else means ``pool``'s own folder in the default bucket,
    :func:`default_store`). Idempotent: a second run finds everything and changes nothing. Pools
    share the rest of what this makes."""
    from prefect_remote.software.gcsstore import GCSStore
    from prefect_remote.software.stores import open_store

    clients = provider.clients
    project, region = clients.project, provider.options.region
    say(f"Google Cloud project {project}, region {region} (for pool {pool})")
    missing = missing_apis(provider)
    if missing:
        names = ", ".join(f"{REQUIRED_APIS[s]} ({s})" for s in missing)
        raise GCPError(
            f"project {project} has not enabled {names}; prefect-remote enables nothing by itself: enable "
            f"{'them' if len(missing) > 1 else 'it'} with\n  {enable_command(project, missing)}\nand provision again"
        )
    say(f"APIs enabled: {', '.join(REQUIRED_APIS.values())}")
    if not (store or "").startswith("gs://"):
        chosen = default_store(project, region, pool)
        if store:
            say(f"PREFECT_REMOTE_STORE={store} is not in Cloud Storage, where machines read software environments: using {chosen}")
        store = chosen
    gcs = open_store(store)
    assert isinstance(gcs, GCSStore)
    email = pool_account_email(project, pool)
    chosen = provider.options.service_account
    users_account = bool(chosen) and chosen not in (email, service_account_email(project))  # the shared account of before: replaced
    _ensure_bucket(clients, gcs, region, say, conditioned=not users_account)
    if users_account:
        say(f"machines run as your service account {chosen} (none made, nothing granted; docs/providers/gcp.md lists the roles it needs)")
        email = chosen or email
    else:
        iam = clients.iam()
        number = project_number_of(clients)
        _ensure_service_account(clients, iam, email, pool, say)
        label = MachineRecords(gcs).label  # what the pool's secrets' and VMs' names carry
        roles = machine_roles(
            project=project, project_number=number, bucket=gcs.bucket, service_account=email, pool=label, folder=gcs.key("")
        )
        for role_id in MACHINE_CUSTOM_ROLES:
            _ensure_custom_role(clients, iam, role_id, say)
        _keep_shared_account_working(clients, iam, number, say)
        _ensure_project_grants(clients, f"serviceAccount:{email}", roles["project"], say)
        _ensure_bucket_grants(clients, gcs.bucket, f"serviceAccount:{email}", roles[f"bucket {gcs.bucket}"], say)
        granted = {f"serviceAccount:{email}": roles[f"service account {email}"]}
        launcher = clients.member()
        if launcher is not None:
            granted[launcher] = LAUNCHER_ACCOUNT_GRANTS
        if _ensure_account_grants(clients, iam, email, granted, say) and launcher is not None:
            _await_act_as(clients, iam, email, say)
        _say_other_launchers(email, launcher, say)
    say(f"software environments store: {gcs.url}")
    firewalls = _ensure_firewalls(provider, say)
    return GCPSetup(project, region, email, gcs.url, firewalls)


def project_number_of(clients: GoogleClients) -> str:
    """The project's number (IAM conditions name secrets by it), read with one Resource Manager call."""
    with google_errors(clients, "resourcemanager.projects.get", "read the project's number"):
        return clients.resource_manager().get_project(name=f"projects/{clients.project}").name.rsplit("/", 1)[-1]


def _ensure_service_account(clients: GoogleClients, iam: RestApi, email: str, pool: str, say: Say) -> str:
    """Makes (or finds) ``pool``'s own service account ``email``."""
    from google.api_core.exceptions import Conflict, NotFound, ResourceExhausted, TooManyRequests

    with google_errors(clients, "iam.serviceAccounts.create", f"make the machines' service account {email}"):
        try:
            iam.call("GET", f"serviceAccounts/{email}")
            say(f"found service account {email}")
            return email
        except NotFound:
            pass
        try:
            iam.call(
                "POST",
                "serviceAccounts",
                {
                    "accountId": email.split("@", 1)[0],
                    "serviceAccount": {
                        "displayName": (POOL_ACCOUNT_NAME + pool)[:100],
                        "description": f"Made by prefect-remote --provision-infra: what the Cloud Run jobs and Compute Engine VMs of "
                        f"work pool {pool!r} run as",
                    },
                },
            )
        except Conflict:  # made a moment ago by another provisioning
            pass
        except (TooManyRequests, ResourceExhausted) as error:  # the project's quota, not a rate: IAM says retry in a day
            raise GCPError(
                f"project {clients.project} holds as many service accounts as its quota allows (100 by default), so "
                f"provisioning cannot make {email} (Google Cloud: {error_message(error)}); delete accounts nothing uses "
                f"(`gcloud iam service-accounts list --project={clients.project}`), ask for a higher quota "
                f"(https://cloud.google.com/iam/quotas), or give the machines an account you have: "
                "PREFECT_REMOTE_GCP_SERVICE_ACCOUNT (or service_account=), which provisioning then uses as it is"
            ) from None
    say(f"created service account {email}")
    return email


ROLE_DESCRIPTIONS = {
    MACHINE_ROLE_ID: "A prefect-remote VM ends itself; a cluster's scheduler launches and ends its workers",
    MACHINE_INSTANCES_ROLE_ID: "What a prefect-remote machine does to VMs (granted on its pool's only)",
    MACHINE_SECRETS_ROLE_ID: "A cluster's scheduler makes and removes its workers' launch secrets (granted on its pool's only)",
}
ROLE_TITLES = {
    MACHINE_ROLE_ID: "prefect-remote machine",
    MACHINE_INSTANCES_ROLE_ID: "prefect-remote machine VMs",
    MACHINE_SECRETS_ROLE_ID: "prefect-remote machine secrets",
}


def _ensure_custom_role(clients: GoogleClients, iam: RestApi, role_id: str, say: Say) -> None:
    from google.api_core.exceptions import NotFound

    name, permissions = f"projects/{clients.project}/roles/{role_id}", MACHINE_CUSTOM_ROLES[role_id]
    with google_errors(clients, "iam.roles.create", f"make the custom role {name}"):
        try:
            role = iam.call("GET", f"roles/{role_id}")
        except NotFound:
            iam.call(
                "POST",
                "roles",
                {
                    "roleId": role_id,
                    "role": {
                        "title": ROLE_TITLES[role_id],
                        "description": ROLE_DESCRIPTIONS[role_id],
                        "includedPermissions": list(permissions),
                        "stage": "GA",
                    },
                },
            )
            say(f"created custom role {name} ({len(permissions)} permissions)")
            return
        if role.get("deleted"):  # a teardown's: Google keeps it 7 days, and its id with it
            role = iam.call("POST", f"roles/{role_id}:undelete", {"etag": role.get("etag")})
            say(f"undeleted custom role {name}")
        if sorted(role.get("includedPermissions") or []) != sorted(permissions):
            iam.call(
                "PATCH",
                f"roles/{role_id}",
                {"includedPermissions": list(permissions), "etag": role.get("etag")},
                updateMask="includedPermissions",
            )
            say(f"updated custom role {name} to its {len(permissions)} permissions")
        else:
            say(f"found custom role {name}")


def _update_project_policy(clients: GoogleClients, change: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]) -> bool:
    """Reads the project's policy (version 3), applies ``change`` to its bindings and writes it back
    if that changed them, retrying on a concurrent change (Google's etag). Returns whether it wrote."""
    from google.api_core.exceptions import Aborted, Conflict
    from google.iam.v1 import iam_policy_pb2, options_pb2, policy_pb2
    from google.protobuf import json_format

    projects = clients.resource_manager()
    resource = f"projects/{clients.project}"
    for attempt in range(5):
        with google_errors(clients, "resourcemanager.projects.setIamPolicy", "grant the machines' roles on the project"):
            policy = projects.get_iam_policy(
                request=iam_policy_pb2.GetIamPolicyRequest(
                    resource=resource, options=options_pb2.GetPolicyOptions(requested_policy_version=3)
                )
            )
            bindings = policy_bindings(policy)
            wanted = change(bindings)
            if wanted == bindings:
                return False
            updated = policy_pb2.Policy(version=3, etag=policy.etag)
            json_format.ParseDict({"bindings": wanted}, updated)
            try:
                projects.set_iam_policy(request=iam_policy_pb2.SetIamPolicyRequest(resource=resource, policy=updated))
                return True
            except (Aborted, Conflict):
                time.sleep(0.5 * (attempt + 1))
    raise GCPError(f"the IAM policy of project {clients.project} kept changing under provisioning; run it again")


def _ensure_project_grants(clients: GoogleClients, member: str, grants: list[dict[str, Any]], say: Say) -> None:
    changed = _update_project_policy(clients, lambda bindings: with_grants(bindings, member, grants))
    roles = ", ".join(g["role"].rsplit("/", 1)[-1] + (f" ({g['condition']['title']})" if "condition" in g else "") for g in grants)
    say(f"{'granted' if changed else 'found'} to {member.split(':', 1)[1]} on project {clients.project}: {roles}")


def _keep_shared_account_working(clients: GoogleClients, iam: RestApi, project_number: str, say: Say) -> None:
    """The account every pool shared before accounts were per pool, if the project has it: its
    pools' machines keep what they did (the custom role they were granted lost the instance
    permissions to ``prefectRemoteMachineInstances``, granted to it on prefect-remote's VMs). Each of
    those pools becomes isolated when its provisioning runs again, which moves it to its own account."""
    from google.api_core.exceptions import NotFound

    email = service_account_email(clients.project)
    try:
        with clients.translated("iam.serviceAccounts.get"):
            iam.call("GET", f"serviceAccounts/{email}")
    except NotFound:
        return
    roles = machine_roles(project=clients.project, project_number=project_number, bucket="", service_account=email, pool=None)
    _ensure_project_grants(clients, f"serviceAccount:{email}", roles["project"], say)
    say(
        f"the pools that still run as {email} (provisioned before each pool had its own account) can reach each other's "
        "secrets and VMs: provision each again to move it to an account of its own"
    )


def _require_uniform_access(bucket: Any, url: str) -> None:
    """Refuses a store whose bucket has no uniform bucket-level access: the machines' grants on it are
    limited to their pool's folder by IAM Conditions, which Cloud Storage takes only on such a bucket
    (cloud.google.com/storage/docs/uniform-bucket-level-access). Never enabled here: it turns off the
    bucket's object ACLs, which its owner may rely on; and a grant of the whole bucket instead would let
    every pool's machines read and overwrite each other's software (a warning is easily missed). A
    pool provisioned before keeps its grant until this succeeds."""
    if not bucket.iam_configuration.uniform_bucket_level_access_enabled:
        raise GCPError(
            f"the store {url} is in bucket {bucket.name}, which has uniform bucket-level access disabled: the machines' "
            "grants are limited to their pool's folder by IAM conditions, which Cloud Storage takes only with it enabled. "
            f"Enable it (object ACLs then stop applying: check nothing relies on them) with\n  gcloud storage buckets update "
            f"gs://{bucket.name} --uniform-bucket-level-access\nand provision again, or leave PREFECT_REMOTE_STORE unset for "
            "a folder of the bucket provisioning makes"
        )


def _ensure_bucket(clients: GoogleClients, store: GCSStore, region: str, say: Say, *, conditioned: bool) -> None:
    """Makes (or finds) the store's bucket, with the lifecycle rule for its records. ``conditioned``:
    the machines' grants on it will carry IAM conditions, so a bucket found without uniform access is
    refused before anything changes (:func:`_require_uniform_access`)."""
    from google.api_core.exceptions import Conflict, Forbidden, NotFound

    bucket, prefix = store.bucket, store.prefix
    storage = clients.storage()
    with google_errors(clients, "storage.buckets.create", f"make the store's bucket {bucket}"):
        try:
            found = storage.get_bucket(bucket)
            created = False
            if conditioned:
                _require_uniform_access(found, store.url)
        except Forbidden:
            raise GCPError(
                f"bucket {bucket} exists but the identity in use may not use it (it may belong to another project); "
                "set PREFECT_REMOTE_STORE=gs://<a bucket of yours>/<prefix> and provision again"
            ) from None
        except NotFound:
            found = storage.bucket(bucket)
            found.labels = {MANAGED_LABEL: "true", GRANTED_LABEL: "granted"}
            found.iam_configuration.uniform_bucket_level_access_enabled = True
            found.iam_configuration.public_access_prevention = "enforced"
            try:
                found = storage.create_bucket(found, location=region)
            except Conflict:  # made a moment ago by another provisioning
                found = storage.get_bucket(bucket)
            created = True
        records = f"{prefix}/machines/" if prefix else "machines/"
        rules = list(found.lifecycle_rules)
        # By the lease (customTime, renewed while the machine lives), not by age: a machine living
        # longer than the rule's days keeps its record. An older release's age rule is replaced.
        # One rule for every store in the bucket (each pool's folder has its records): its prefixes grow.
        wanted = _with_records_prefixes(rules, lambda found: found | {records})
        changed = False
        if [dict(rule) for rule in rules] != wanted:
            found.lifecycle_rules = wanted
            changed = True
        labels = {GRANTED_LABEL: "granted", **({MANAGED_LABEL: "true"} if created else {})}
        if any(found.labels.get(key) != value for key, value in labels.items()):  # not every emulator keeps a new bucket's labels
            found.labels = {**found.labels, **labels}
            changed = True
        if changed:
            found.patch()
    if created:
        say(f"created bucket gs://{bucket} in {region} (uniform access, public access prevented)")
    else:
        say(f"found bucket gs://{bucket}")
    if changed:
        say(f"machine records under gs://{bucket}/{records} are deleted after {RECORDS_KEPT_DAYS} days (lifecycle rule)")


def _ensure_bucket_grants(clients: GoogleClients, bucket: str, member: str, grants: list[dict[str, Any]], say: Say) -> None:
    """Binds ``member`` (a pool's own account) to ``grants`` on ``bucket``, and to nothing else there: a
    grant of before (roles/storage.objectUser on the whole bucket, before grants were limited to the
    pool's folder) is taken away, so provisioning a pool again tightens it."""
    with google_errors(clients, "storage.buckets.setIamPolicy", f"grant the machines {grants[0]['role']} on bucket {bucket}"):
        found = clients.storage().bucket(bucket)
        policy = found.get_iam_policy(requested_policy_version=3)
        bindings = [
            {"role": b["role"], "members": sorted(b["members"]), **({"condition": b["condition"]} if b.get("condition") else {})}
            for b in policy.bindings
        ]
        kept = {(g["role"], binding_condition(g)) for g in grants}
        stale = [b for b in bindings if member in b["members"] and (b["role"], binding_condition(b)) not in kept]
        wanted = with_grants([b for b in bindings if b not in stale] + without_member(stale, member), member, grants)
        if wanted != bindings:
            policy.version = 3
            policy.bindings[:] = [{**b, "members": set(b["members"])} for b in wanted]
            found.set_iam_policy(policy)
    roles = ", ".join(g["role"] for g in grants)
    say(f"{'granted' if wanted != bindings else 'found'} on bucket {bucket}: {roles}, in the pool's folder")
    for binding in stale:
        say(f"took away {binding['role']} on bucket {bucket}{' (every folder)' if not binding.get('condition') else ''}: granted before")


def _ensure_account_grants(clients: GoogleClients, iam: RestApi, email: str, granted: dict[str, list[dict[str, Any]]], say: Say) -> bool:
    """Grants each member its roles on service account ``email`` (one read-modify-write); whether it changed anything."""
    with google_errors(clients, "iam.serviceAccounts.setIamPolicy", f"let the machines and you launch machines as {email}"):
        policy = iam.call("POST", f"serviceAccounts/{email}:getIamPolicy")
        bindings = [dict(b) for b in policy.get("bindings", [])]
        wanted = bindings
        for member, grants in granted.items():
            wanted = with_grants(wanted, member, grants)
        if wanted != bindings:
            iam.call(
                "POST", f"serviceAccounts/{email}:setIamPolicy", {"policy": {"version": 1, "etag": policy.get("etag"), "bindings": wanted}}
            )
    for member, grants in granted.items():
        who = "its own account (a cluster's scheduler launches its workers as it)" if member == f"serviceAccount:{email}" else member
        made = with_grants(bindings, member, grants) != bindings
        say(f"{'granted' if made else 'found'} on service account {email}: {', '.join(g['role'] for g in grants)} to {who}")
    return wanted != bindings


class _NotInForce(Exception):
    """A grant made is not in force yet (IAM's access change propagation)."""


def _await_act_as(clients: GoogleClients, iam: RestApi, email: str, say: Say) -> None:
    """Waits until the identity that provisions may act as ``email`` (its ``testIamPermissions``), so
    that a launch right after provisioning is not refused: Google applies a grant after a delay
    (typically 2 minutes, "potentially 7 minutes or longer"). Past that, it says so and returns."""
    from google.api_core.exceptions import RetryError
    from google.api_core.retry import Retry, if_exception_type

    def in_force() -> None:
        with clients.translated("iam.serviceAccounts.testIamPermissions"):
            held = iam.call("POST", f"serviceAccounts/{email}:testIamPermissions", {"permissions": [ACT_AS]})
        if ACT_AS not in held.get("permissions", []):
            raise _NotInForce(email)

    say(f"waiting for the grant on {email} to take effect (Google applies grants within about 2 minutes, sometimes 7 or more)")
    started = time.monotonic()
    retry = Retry(predicate=if_exception_type(_NotInForce), initial=1.0, maximum=15.0, multiplier=1.5, timeout=PROPAGATION_TIMEOUT)
    try:
        retry(in_force)()
    except RetryError:
        say(
            f"the grant on {email} is not in force after {PROPAGATION_TIMEOUT / 60:.0f} minutes: a launch refused with "
            "SERVICE_ACCOUNT_ACCESS_DENIED will succeed once Google applies it"
        )
        return
    say(f"the grant on {email} took effect after {time.monotonic() - started:.0f} s")


def _say_other_launchers(email: str, launcher: str | None, say: Say) -> None:
    """How another identity (a worker's, a CI job's; or the one provisioning, when its credentials do not name it) may launch."""
    command = f"gcloud iam service-accounts add-iam-policy-binding {email} --member=MEMBER --role=roles/iam.serviceAccountUser"
    if launcher is None:
        say(f"your credentials do not name you, so nobody may start machines as {email} yet; grant each launcher: {command}")
    else:
        say(f"another identity that launches machines (a worker's, a CI job's) needs the same grant: {command}")


def _firewall_names(clients: GoogleClients) -> set[str]:
    with google_errors(clients, "compute.firewalls.list", "find the provider's firewall rules"):
        return {rule.name for rule in clients.firewalls().list(project=clients.project) if rule.name.startswith(FIREWALL_PREFIXES)}


def _ensure_firewalls(provider: GCPProvider, say: Say) -> tuple[str, ...]:
    """The Compute Engine service's own rules (the same its launches make when missing)."""
    from prefect_remote.spec import MachineSpec

    clients = provider.clients
    before = _firewall_names(clients)
    compute = provider.service("compute")
    with google_errors(clients, "compute.firewalls.create", "make the VMs' firewall rules"):
        compute.network_tags(compute.ingress_cidr(MachineSpec()))
        # What a flow run that starts a cluster uses: machines may not make rules themselves.
        compute.network_tags(compute.subnetwork_range())
    after = sorted(_firewall_names(clients))
    for name in after:
        say(f"{'found' if name in before else 'created'} firewall rule {name}")
    return tuple(after)


# -- teardown -------------------------------------------------------------------------------------
def teardown(
    provider: GCPProvider | None = None,
    *,
    store: str | None = None,
    pool: str | None = None,
    force: bool = False,
    delete_bucket: bool = False,
    say: Say = print,
) -> list[str]:
    """Removes what :func:`provision` made in ``provider``'s project (default: ``GCPProvider()``) and
    returns what it removed: every pool's service account (and the one pools shared before) and
    their grants, the custom roles, the firewall rules,
    launch secrets left behind and, with ``delete_bucket``, the buckets provisioning created (they
    hold software environments; without it they are kept, the machines' grant and records rule
    removed). Refuses with :class:`TeardownRefused` while prefect-remote machines run, unless
    ``force``, which ends them first. Idempotent.

    With ``store`` (a pool's, as its provider block records it; ``pool`` names it), only that pool's:
    see :func:`_teardown_pool`."""
    from google.api_core.exceptions import NotFound

    from prefect_remote.providers.gcp.provider import GCPProvider

    provider = provider or GCPProvider()
    if store is not None:
        return _teardown_pool(provider, store, pool, force, say)
    clients = provider.clients
    project = clients.project
    iam = clients.iam()
    emails = [service_account_email(project), *_pool_accounts(clients, iam)]  # the shared one of before, every pool's
    for region in _regions_in_use(provider):  # every region whose machines lose their identity, store or secrets
        _end_machines(provider if region == provider.options.region else provider.in_region(region), force, say)
    done: list[str] = []
    for email in emails:
        if _update_project_policy(clients, lambda bindings, email=email: without_member(bindings, f"serviceAccount:{email}")):
            removed(done, f"the project grants of {email}", say)
    done += _clean_buckets(clients, {f"serviceAccount:{email}" for email in emails}, delete_bucket, say)
    done += _remove_firewalls(clients, say)
    done += _remove_leftover_secrets(clients, say)
    for role_id in MACHINE_CUSTOM_ROLES:
        with google_errors(clients, "iam.roles.delete", f"remove the custom role {role_id}"):
            try:
                if not iam.call("GET", f"roles/{role_id}").get("deleted"):
                    iam.call("DELETE", f"roles/{role_id}")
                    removed(done, f"custom role projects/{project}/roles/{role_id}", say)
            except NotFound:
                pass
    for email in emails:
        done += _remove_account(clients, iam, email, say)
    if not done:
        say(f"nothing to remove in project {project}")
    return done


def _pool_accounts(clients: GoogleClients, iam: RestApi) -> list[str]:
    """The emails of the pools' own service accounts in the project, as provisioning made them (id
    and display name): never an account of the user's."""
    with google_errors(clients, "iam.serviceAccounts.list", "find the pools' service accounts"):
        return sorted(
            account["email"]
            for account in iam.list_all("serviceAccounts", "accounts", pageSize="100")
            if account.get("email", "").startswith(POOL_ACCOUNT_PREFIX) and (account.get("displayName") or "").startswith(POOL_ACCOUNT_NAME)
        )


def _remove_account(clients: GoogleClients, iam: RestApi, email: str, say: Say) -> list[str]:
    """Deletes service account ``email`` (a missing one is fine)."""
    from google.api_core.exceptions import NotFound

    done: list[str] = []
    with google_errors(clients, "iam.serviceAccounts.delete", f"remove the service account {email}"):
        try:
            iam.call("DELETE", f"serviceAccounts/{email}")
            removed(done, f"service account {email}", say)
        except NotFound:
            pass
    return done


def _teardown_pool(provider: GCPProvider, store: str, pool: str | None, force: bool, say: Say) -> list[str]:
    """Removes one pool's, the pool whose machines keep their records in ``store``: its machines
    (refused while they run, unless ``force``) in every region and zone where it has any, its launch
    secrets left behind and its machines' records, each found by the records label its launches put
    on them (never another pool's, whatever its name); and when ``store`` is ``pool``'s own default
    folder (:func:`default_store`), every object in it; and, with ``pool``, its own service account
    and that account's grants. What every pool of the project shares (the custom roles, the firewall
    rules, the bucket) is kept."""
    provider.store_url = store
    label = provider.records.label
    for region in _regions_in_use(provider, label):
        _end_machines(provider if region == provider.options.region else provider.in_region(region), force, say, pool=label)
    done = _remove_leftover_secrets(provider.clients, say, pool=label)
    forgotten = provider.records.forget_all()
    if forgotten:
        removed(done, f"{forgotten} machine record(s) in {provider.records.url}", say)
    if pool is not None and owns_store(store, pool):
        done += _remove_pool_folder(provider.clients, provider.records.store, say)
    else:
        say(f"kept the store {store}: it was given to the pool, not made for it")
    if pool is not None:
        done += _remove_pool_account(provider, pool, say)
    say(
        f"kept the custom roles, firewall rules and bucket: every pool of project {provider.clients.project} "
        "shares them (`prefect-remote gcp teardown --yes` removes them for all)"
    )
    return done


def _remove_pool_account(provider: GCPProvider, pool: str, say: Say) -> list[str]:
    """``pool``'s own service account and its grants (on the project, the pool's store's bucket):
    never another pool's, nor the account every pool shared before, nor one of the user's."""
    clients = provider.clients
    email = pool_account_email(clients.project, pool)
    member = f"serviceAccount:{email}"
    done: list[str] = []
    if _update_project_policy(clients, lambda bindings: without_member(bindings, member)):
        removed(done, f"the project grants of {email}", say)
    bucket = provider.records.store.bucket
    with google_errors(clients, "storage.buckets.setIamPolicy", f"remove the grant of {email} on bucket {bucket}"):
        if _without_bucket_member(clients.storage().bucket(bucket), {member}):
            removed(done, f"the grant of {email} on bucket {bucket}", say)
    return done + _remove_account(clients, clients.iam(), email, say)


def _without_bucket_member(bucket: Any, members: set[str]) -> bool:
    """Takes ``members`` out of ``bucket``'s IAM policy; whether any was in it."""
    policy = bucket.get_iam_policy(requested_policy_version=3)
    bindings = [{**b, "members": set(b["members"])} for b in policy.bindings]
    if not any(members & b["members"] for b in bindings):
        return False
    policy.version = 3
    policy.bindings[:] = [{**b, "members": b["members"] - members} for b in bindings if b["members"] - members]
    bucket.set_iam_policy(policy)
    return True


def _remove_pool_folder(clients: GoogleClients, store: GCSStore, say: Say) -> list[str]:
    """Deletes every object of a pool's own store folder (its software environments, code bundles and
    records) and takes its records off the bucket's lifecycle rule, in a bucket provisioning made;
    the bucket and the rest stay."""
    folder = store.key("")  # "<prefix>/": never another folder that begins with the same name
    with google_errors(clients, "storage.objects.delete", f"remove the pool's store {store.url}"):
        bucket = clients.storage().get_bucket(store.bucket)
        if (bucket.labels or {}).get(MANAGED_LABEL) != "true":
            say(f"kept the store {store.url}: provisioning did not make its bucket")
            return []
        blobs = list(clients.storage().list_blobs(store.bucket, prefix=folder))
        _delete_objects(clients.storage(), blobs)
        rules = list(bucket.lifecycle_rules)
        wanted = _with_records_prefixes(rules, lambda found: {prefix for prefix in found if not prefix.startswith(folder)})
        if [dict(rule) for rule in rules] != wanted:
            bucket.lifecycle_rules = wanted
            bucket.patch()
    done: list[str] = []
    if blobs:
        removed(done, f"the pool's store {store.url}", say, f" ({len(blobs)} object(s))")
    return done


def _regions_in_use(provider: GCPProvider, pool: str | None = None) -> list[str]:
    """The regions whose prefect-remote machines (only ``pool``'s: those with its records label, if
    given) teardown would strand: the provider's, each with such a VM in any of its zones (one
    aggregated listing of the project), and each where a bucket provisioning labelled is (``pool``'s
    store's bucket alone, if given): its store's launches run there. Cloud Run jobs are read per region."""
    from prefect_remote.providers.gcp.service import RECORDS_LABEL, SERVICE_LABEL

    clients = provider.clients
    regions = {provider.options.region}
    with google_errors(clients, "compute.instances.list", "find prefect-remote's VMs in every zone"):
        terms = [f'(labels.{SERVICE_LABEL} = "compute")', *([f'(labels.{RECORDS_LABEL} = "{pool}")'] if pool else [])]
        request = {"project": clients.project, "filter": " AND ".join(terms)}
        for scope, scoped in clients.instances().aggregated_list(request=request):
            if scoped.instances:
                regions.add(scope.rsplit("/", 1)[-1].rsplit("-", 1)[0])
    with google_errors(clients, "storage.buckets.list", "find the buckets provisioning used"):
        if pool:
            buckets = [clients.storage().get_bucket(provider.records.store.bucket)]
        else:
            buckets = [
                bucket
                for bucket in clients.storage().list_buckets(project=clients.project)
                if (bucket.labels or {}).get(GRANTED_LABEL) or (bucket.labels or {}).get(MANAGED_LABEL)
            ]
        regions |= {bucket.location.lower() for bucket in buckets if "-" in (bucket.location or "")}  # a region, not "US"
    return sorted(regions)


def _end_machines(provider: GCPProvider, force: bool, say: Say, pool: str | None = None) -> None:
    """Refuses (or, with ``force``, ends and waits for) live prefect-remote machines (only ``pool``'s,
    by their records label, if given): Cloud Run executions of the provider's region and Compute
    Engine VMs of all its zones."""

    def alive() -> list[Any]:
        found = [m for name in ("cloud-run", "compute") for m in provider.service(name).machines() if m.alive]
        return [m for m in found if pool is None or m.details.get("records") == pool]

    machines = alive()
    if not machines:
        return
    lines = [f"  {m.id}  {m.state:<8} {m.instance_type}" for m in machines]
    where = f"project {provider.clients.project} ({provider.options.region})"
    if not force:
        raise TeardownRefused(
            f"{len(machines)} prefect-remote machine(s) still run in {where}:\n"
            + "\n".join(lines)
            + "\nend them first (`prefect-remote machines rm --all --everyone --provider gcp`), or pass --force to end them"
        )
    say(f"ending {len(machines)} machine(s):\n" + "\n".join(lines))
    for name in ("cloud-run", "compute"):
        service = provider.service(name)
        ids = [m.id for m in machines if m.id.startswith(service.id_prefix)]
        if ids:
            service.terminate(ids, "prefect-remote gcp teardown --force", any_pool=pool is None)  # without a pool: every pool's
    deadline = time.monotonic() + 600
    while alive():
        if time.monotonic() > deadline:
            raise GCPError(f"machines in {where} did not end within 10 minutes; run teardown again later")
        time.sleep(2)
    say(f"ended {', '.join(m.id for m in machines)}")


def _clean_buckets(clients: GoogleClients, members: set[str], delete: bool, say: Say) -> list[str]:
    """Buckets labelled by provisioning: the machines' grants (of ``members``) and records rule
    removed; the ones it created deleted, emptied, with ``delete``."""
    done: list[str] = []
    storage = clients.storage()
    with google_errors(clients, "storage.buckets.list", "find the buckets provisioning used"):
        buckets = [
            b
            for b in storage.list_buckets(project=clients.project)
            if (b.labels or {}).get(GRANTED_LABEL) or (b.labels or {}).get(MANAGED_LABEL)
        ]
    for bucket in buckets:
        name = bucket.name
        managed = bucket.labels.get(MANAGED_LABEL) == "true"
        with google_errors(clients, "storage.buckets.delete", f"remove the store's bucket {name}"):
            if managed and delete:
                _delete_objects(storage, list(storage.list_blobs(name)))
                bucket.delete()
                removed(done, f"bucket gs://{name}", say, " and everything in it")
                continue
            held = {m for b in bucket.get_iam_policy(requested_policy_version=3).bindings for m in b["members"]} & members
            if _without_bucket_member(bucket, members):
                for member in sorted(held):
                    removed(done, f"the grant of {member.split(':', 1)[1]} on bucket {name}", say)
            rules = [r for r in bucket.lifecycle_rules if not _records_rule(r)]
            if len(rules) != len(list(bucket.lifecycle_rules)) or GRANTED_LABEL in bucket.labels:
                bucket.lifecycle_rules = rules
                bucket.labels = {k: v for k, v in bucket.labels.items() if k != GRANTED_LABEL}
                bucket.patch()
            if managed:
                say(f"kept bucket gs://{name}: it holds software environments (--delete-bucket removes it)")
    return done


def _delete_objects(storage: Any, blobs: list[Any]) -> None:
    """Deletes ``blobs`` in JSON API batch requests of :data:`BATCH` (a pool's folder may hold thousands
    of records and bundles: one request each took minutes)."""
    for chunk in batches(blobs, BATCH):
        with storage.batch():
            for blob in chunk:
                blob.delete()


def _with_records_prefixes(rules: list[Any], change: Callable[[set[str]], set[str]]) -> list[Any]:
    """The bucket's lifecycle ``rules`` with their one records rule's prefixes (every store's records in
    the bucket) passed through ``change``; the rule is dropped when no prefix is left."""
    found = {prefix for rule in rules if _records_rule(rule) for prefix in dict(rule)["condition"].get("matchesPrefix", [])}
    prefixes = change(found)
    return [*(rule for rule in rules if not _records_rule(rule)), *([_records_rule_for(prefixes)] if prefixes else [])]


def _records_rule_for(prefixes: set[str]) -> dict[str, Any]:
    """The lifecycle rule that deletes the machine records under ``prefixes`` once their lease is :data:`RECORDS_KEPT_DAYS` days old."""
    return {"action": {"type": "Delete"}, "condition": {"daysSinceCustomTime": RECORDS_KEPT_DAYS, "matchesPrefix": sorted(prefixes)}}


def _records_rule(rule: Any) -> bool:
    condition = dict(rule).get("condition", {})
    return (
        dict(rule).get("action", {}).get("type") == "Delete"
        and RECORDS_KEPT_DAYS in (condition.get("daysSinceCustomTime"), condition.get("age"))  # age: an older release's
        and all(prefix.endswith("machines/") for prefix in condition.get("matchesPrefix", [""]))
    )


def _remove_firewalls(clients: GoogleClients, say: Say) -> list[str]:
    from google.api_core.exceptions import NotFound

    done: list[str] = []
    firewalls = clients.firewalls()
    for name in sorted(_firewall_names(clients)):
        with google_errors(clients, "compute.firewalls.delete", f"remove firewall rule {name}"):
            try:
                operation = firewalls.delete(project=clients.project, firewall=name)
                clients.global_operations().wait(project=clients.project, operation=operation.name)
            except NotFound:
                continue
        removed(done, f"firewall rule {name}", say)
    return done


def _remove_leftover_secrets(clients: GoogleClients, say: Say, pool: str | None = None) -> list[str]:
    """Launch secrets no machine will read any more: named ``prefect-remote-<records label>-launch-<12
    hex digits>`` (or, before secrets were per pool, without the label) and labelled with that launch
    and those records, as a launch makes them (and with ``pool``'s records label, if
    given). A user's own ``prefect-remote-…`` secret (an API key kept under that name) is never one."""
    from google.api_core.exceptions import NotFound

    from prefect_remote.providers.gcp.service import RECORDS_LABEL

    manager = clients.secret_manager()
    names = []
    request = {"parent": f"projects/{clients.project}", **({"filter": f"labels.{RECORDS_LABEL}={pool}"} if pool else {})}
    with google_errors(clients, "secretmanager.secrets.delete", "remove launch secrets left behind"):
        for secret in manager.list_secrets(request=request):
            launch = secret.labels.get(LAUNCH_LABEL, "")
            named = {secret_id(launch, None), secret_id(launch, secret.labels.get(RECORDS_LABEL))}  # before and since per pool
            if _LAUNCH_ID.fullmatch(launch) and secret.name.rsplit("/", 1)[-1] in named:
                try:
                    manager.delete_secret(request={"name": secret.name})
                except NotFound:
                    continue
                names.append(secret.name.rsplit("/", 1)[-1])
    if names:
        say(f"removed {len(names)} launch secret(s) left behind ({', '.join(names)})")
    return [f"secret {name}" for name in names]
