"""What each REST method of the sandbox GCP's fakes needs, checked on what, and how Google refuses it.

:data:`METHODS` maps every method the fakes serve (the route names of
:class:`~prefect_remote.sandbox.gcp.api.GoogleAPI`: ``run.jobs.create``, ``compute.instances.insert``…)
to the :class:`Check` s it makes: a permission on a :class:`~prefect_remote.sandbox.gcp.policy.Resource`.
Sources: Google's per-method permission pages (Compute Engine's "required permissions" for creating a
VM, Cloud Storage's "IAM permissions for JSON methods", Cloud Logging's and Secret Manager's access
control pages; Cloud Quotas' REST reference: ``cloudquotas.quotas.get`` on the project for a
QuotaInfo's get and list) and the iam-dataset method map, as ``/work/research/gcp-roles.md`` §2 collects them.
Cloud Run checks ``iam.serviceAccounts.actAs`` on a job's service account when the job is created
(at once, 403); Compute Engine on an instance's when the insert operation runs (the operation fails
with ``SERVICE_ACCOUNT_ACCESS_DENIED``: a :class:`Check` marked ``deferred``). A firewall rule's
``compute.networks.updatePolicy`` is checked on the network the request names (``default`` when a
patch or delete names none): Google does not document it per method; practitioners' custom roles that
were verified on Google Cloud pair it with every firewall change.

Resources carry the condition attributes Google provides for them (IAM's "Resource attributes for
IAM Conditions"): Cloud Storage, Compute Engine (instances, disks, firewalls, images), Secret Manager
(secrets, versions) and Resource Manager (projects: type and service, no name) do; Cloud Run and
IAM's own resources provide none; a Compute Engine subnetwork, network, zone or operation only its
service.

:func:`refusal` words a denial as each API does (from Google's documentation and the error bodies
users report): Cloud Run, Secret Manager, Cloud Logging and IAM as ``Permission 'P' denied on/for
resource …`` with an ``IAM_PERMISSION_DENIED`` ErrorInfo; Compute Engine as ``Required 'P' permission
for 'R'``, one ``forbidden`` error per missing permission; Resource Manager as ``The caller does not
have permission`` (``Policy update access denied.`` for ``setIamPolicy``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.responses import JSONResponse

from prefect_remote.sandbox.gcp.api import GoogleError
from prefect_remote.sandbox.gcp.common import default_compute_account
from prefect_remote.sandbox.gcp.policy import Resource

ACT_AS = "iam.serviceAccounts.actAs"
# Google's public image projects grant roles/compute.imageUser to every authenticated caller.
PUBLIC_IMAGE_PROJECTS = frozenset({"debian-cloud", "ubuntu-os-cloud", "cos-cloud", "deeplearning-platform-release", "rocky-linux-cloud"})
PUBLIC_IMAGES = "publicImages"  # the policy key of their images
COMPUTE_TYPES = {"instances": "Instance", "disks": "Disk", "firewalls": "Firewall", "images": "Image"}  # the types with attributes


@dataclass(frozen=True)
class Check:
    """``permission`` on ``resource``; ``deferred``: checked by the long-running operation, not the call."""

    permission: str
    resource: Resource
    deferred: bool = False


@dataclass(frozen=True)
class Call:
    """One request, as the method map reads it: path parameters, JSON body, query."""

    params: Mapping[str, str]
    body: Mapping[str, Any] = field(default_factory=dict)
    query: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Scope:
    """The sandbox's one project, and how its resources are named and nested.

    ``account_email`` resolves a service account given by email or unique id (None: unknown)."""

    project: str
    number: str
    account_email: Callable[[str], str | None] = lambda account: account if "@" in account else None

    def owns(self, given: str) -> bool:
        return given in (self.project, self.number)

    def policy(self, given: str) -> str:
        """The key of project ``given``'s policy (another project's: none the sandbox holds)."""
        return "project" if self.owns(given) else f"project:{given}"

    @staticmethod
    def foreign(resource: Resource) -> bool:
        """Whether ``resource`` is in a project other than the sandbox's (which does not exist)."""
        return all(key.startswith("project:") for key in resource.policies)

    # -- resources ---------------------------------------------------------------------------------------
    def project_resource(self, given: str) -> Resource:
        service = "cloudresourcemanager.googleapis.com"
        return Resource(f"projects/{given}", (self.policy(given),), {"service": service, "type": f"{service}/Project"})

    def run(self, given: str, location: str, *rest: str) -> Resource:
        return Resource("/".join(("projects", given, "locations", location, *rest)), (self.policy(given),))

    def compute(self, given: str, path: str) -> Resource:
        """A Compute Engine resource ``projects/<given>/<path>`` (``zones/z/instances/vm``)."""
        name = f"projects/{given}/{path}"
        parts = path.split("/")
        kind = COMPUTE_TYPES.get(parts[-2]) if len(parts) >= 2 and parts[-2] != "family" else None
        if len(parts) >= 3 and parts[-2] == "family":  # an image family names an image
            kind = "Image"
        attributes = {"service": "compute.googleapis.com"}
        if kind:
            attributes |= {"type": f"compute.googleapis.com/{kind}", "name": name}
        policies = (PUBLIC_IMAGES,) if given in PUBLIC_IMAGE_PROJECTS else (self.policy(given),)
        return Resource(name, policies, attributes)

    def compute_url(self, url: str, given: str) -> Resource:
        """The resource a Compute Engine URL or partial path names (``projects/p/regions/r/subnetworks/s``,
        ``https://…/compute/v1/projects/p/global/networks/n``, ``global/networks/n``)."""
        path = re.sub(r"^.*?/compute/v1/", "", url).lstrip("/")
        found = re.match(r"projects/([^/]+)/(.+)$", path)
        return self.compute(found.group(1), found.group(2)) if found else self.compute(given, path)

    def secret(self, given: str, secret: str, version: str | None = None) -> Resource:
        """Secret Manager names secrets by project *number* in conditions; messages echo the request."""
        suffix = f"/secrets/{secret}" + (f"/versions/{version}" if version is not None else "")
        service = "secretmanager.googleapis.com"
        number = self.number if self.owns(given) else given
        attributes = {"service": service, "type": f"{service}/{'SecretVersion' if version is not None else 'Secret'}"}
        policies = (f"secret:{secret}", "project") if self.owns(given) else (self.policy(given),)
        return Resource(f"projects/{given}{suffix}", policies, attributes | {"name": f"projects/{number}{suffix}"})

    def service_account(self, given: str, account: str) -> Resource:
        """Service account ``account`` (email or unique id) of project ``given`` (``-``: the one its email names)."""
        email = self.account_email(account) or account
        if given == "-":  # <id>@<project>.iam.gserviceaccount.com, or <number>-compute@developer.gserviceaccount.com
            local, _, domain = email.partition("@")
            given = local.split("-", 1)[0] if domain == "developer.gserviceaccount.com" else domain.split(".", 1)[0]
        return Resource(f"projects/{given}/serviceAccounts/{account}", (f"serviceAccount:{email}", self.policy(given)))

    def role(self, given: str, role: str) -> Resource:
        return Resource(f"projects/{given}/roles/{role}", (self.policy(given),))

    def bucket(self, bucket: str) -> Resource:
        name = f"projects/_/buckets/{bucket}"
        attributes = {"service": "storage.googleapis.com", "type": "storage.googleapis.com/Bucket", "name": name}
        return Resource(name, (f"bucket:{bucket}", "project"), attributes)

    def object(self, bucket: str, name: str) -> Resource:
        full = f"projects/_/buckets/{bucket}/objects/{name}"
        attributes = {"service": "storage.googleapis.com", "type": "storage.googleapis.com/Object", "name": full}
        return Resource(full, (f"bucket:{bucket}", "project"), attributes)


Method = Callable[[Scope, Call], list[Check]]


def _on(permission: str, resource: Callable[[Scope, Mapping[str, str]], Resource]) -> Method:
    return lambda scope, call: [Check(permission, resource(scope, call.params))]


# -- Cloud Run Admin API v2 ------------------------------------------------------------------------------
def _job(s: Scope, p: Mapping[str, str]) -> Resource:
    return s.run(p["project"], p["location"], "jobs", p["job"])


def _execution(s: Scope, p: Mapping[str, str]) -> Resource:
    return s.run(p["project"], p["location"], "jobs", p["job"], "executions", p["execution"])


def _run_create(s: Scope, call: Call) -> list[Check]:
    p = call.params
    job = s.run(p["project"], p["location"], "jobs", call.query.get("jobId", ""))
    account = ((call.body.get("template") or {}).get("template") or {}).get("serviceAccount") or default_compute_account(s.number)
    return [Check("run.jobs.create", job), Check(ACT_AS, s.service_account("-", account))]


def _run_job(s: Scope, call: Call) -> list[Check]:
    checks = [Check("run.jobs.run", _job(s, call.params))]
    if call.body.get("overrides"):
        checks.append(Check("run.jobs.runWithOverrides", _job(s, call.params)))
    return checks


_OPERATION: Callable[[Scope, Mapping[str, str]], Resource] = lambda s, p: s.run(p["project"], p["location"], "operations", p["operation"])  # noqa: E731
_LOCATION: Callable[[Scope, Mapping[str, str]], Resource] = lambda s, p: s.run(p["project"], p["location"])  # noqa: E731
RUN: dict[str, Method] = {
    "run.jobs.create": _run_create,
    "run.jobs.get": _on("run.jobs.get", _job),
    "run.jobs.list": _on("run.jobs.list", _LOCATION),
    "run.jobs.delete": _on("run.jobs.delete", _job),
    "run.jobs.run": _run_job,
    "run.executions.get": _on("run.executions.get", _execution),
    "run.executions.list": _on("run.executions.list", _job),
    "run.executions.cancel": _on("run.executions.cancel", _execution),
    "run.executions.delete": _on("run.executions.delete", _execution),
    "run.tasks.get": _on(
        "run.tasks.get", lambda s, p: s.run(p["project"], p["location"], "jobs", p["job"], "executions", p["execution"], "tasks", p["task"])
    ),
    "run.tasks.list": _on("run.tasks.list", _execution),
    "run.operations.get": _on("run.operations.get", _OPERATION),
    "run.operations.wait": _on("run.operations.get", _OPERATION),
    "run.operations.delete": _on("run.operations.delete", _OPERATION),
    "run.operations.list": _on("run.operations.list", _LOCATION),
}


# -- Compute Engine API v1 ------------------------------------------------------------------------------
def _compute(path: str) -> Callable[[Scope, Mapping[str, str]], Resource]:
    """A resource at ``path`` (``zones/{zone}/instances/{instance}``) with the request's parameters."""
    return lambda s, p: s.compute(p["project"], path.format(**p))


def _project(s: Scope, p: Mapping[str, str]) -> Resource:
    return s.project_resource(p["project"])


def _region_of(zone: str) -> str:
    return zone.rsplit("-", 1)[0]


def _instance_insert(s: Scope, call: Call) -> list[Check]:
    """Compute Engine's "required permissions" to create a VM: each property the request sets needs its own."""
    return _instance_create(s, call.params["project"], call.params["zone"], call.body.get("name", ""), call.body)


def _instance_bulk_insert(s: Scope, call: Call) -> list[Check]:
    """A bulk insert needs what an insert of each of its instances needs (their properties alike): on
    each name it gives (``perInstanceProperties``), and on its ``namePattern`` for the ones it numbers."""
    given, zone, spec = call.params["project"], call.params["zone"], call.body
    properties = spec.get("instanceProperties") or {}
    names = [*(spec.get("perInstanceProperties") or {}), *([spec["namePattern"]] if spec.get("namePattern") else [])]
    return [check for name in dict.fromkeys(names or [""]) for check in _instance_create(s, given, zone, name, properties)]


def _instance_create(s: Scope, given: str, zone: str, name: str, spec: Mapping[str, Any]) -> list[Check]:
    """What creating instance ``name`` in ``zone`` with the properties ``spec`` needs."""
    instance = s.compute(given, f"zones/{zone}/instances/{name}")
    checks = [Check("compute.instances.create", instance)]
    for disk in spec.get("disks") or ():
        init = disk.get("initializeParams") or {}
        if disk.get("source"):
            checks.append(Check("compute.disks.use", s.compute_url(disk["source"], given)))
            continue
        disk_name = init.get("diskName") or name
        checks.append(Check("compute.disks.create", s.compute(given, f"zones/{zone}/disks/{disk_name}")))
        if init.get("sourceImage"):
            checks.append(Check("compute.images.useReadOnly", s.compute_url(init["sourceImage"], given)))
    for interface in spec.get("networkInterfaces") or ():
        if interface.get("subnetwork"):
            subnetwork = s.compute_url(interface["subnetwork"], given)
        else:  # an auto-mode network: its subnetwork in the zone's region has the network's name
            network = s.compute_url(interface.get("network") or "global/networks/default", given)
            subnetwork = s.compute(given, f"regions/{_region_of(zone)}/subnetworks/{network.name.rsplit('/', 1)[-1]}")
        checks.append(Check("compute.subnetworks.use", subnetwork))
        if interface.get("accessConfigs"):
            checks.append(Check("compute.subnetworks.useExternalIp", subnetwork))
    if (spec.get("metadata") or {}).get("items"):
        checks.append(Check("compute.instances.setMetadata", instance))
    if spec.get("labels"):
        checks.append(Check("compute.instances.setLabels", instance))
    if (spec.get("tags") or {}).get("items"):
        checks.append(Check("compute.instances.setTags", instance))
    accounts = spec.get("serviceAccounts") or ()
    if accounts:
        checks.append(Check("compute.instances.setServiceAccount", instance))
    for account in accounts:
        email = account.get("email") or "default"
        email = default_compute_account(s.number) if email == "default" else email
        checks.append(Check(ACT_AS, s.service_account("-", email), deferred=True))
    return checks


def _firewall_change(permission: str) -> Method:
    def checks(s: Scope, call: Call) -> list[Check]:
        given = call.params["project"]
        name = call.params.get("firewall") or call.body.get("name", "")
        network = s.compute_url(call.body.get("network") or "global/networks/default", given)
        return [Check(permission, s.compute(given, f"global/firewalls/{name}")), Check("compute.networks.updatePolicy", network)]

    return checks


COMPUTE: dict[str, Method] = {
    "compute.zones.list": _on("compute.zones.list", _project),
    "compute.zones.get": _on("compute.zones.get", _compute("zones/{zone}")),
    "compute.regions.get": _on("compute.regions.get", _compute("regions/{region}")),
    "compute.machineTypes.aggregatedList": _on("compute.machineTypes.list", _project),
    "compute.machineTypes.list": _on("compute.machineTypes.list", _project),
    "compute.machineTypes.get": _on("compute.machineTypes.get", _compute("zones/{zone}/machineTypes/{machine_type}")),
    "compute.acceleratorTypes.list": _on("compute.acceleratorTypes.list", _project),
    "compute.acceleratorTypes.get": _on("compute.acceleratorTypes.get", _compute("zones/{zone}/acceleratorTypes/{accelerator_type}")),
    "compute.images.getFromFamily": _on("compute.images.getFromFamily", _compute("global/images/family/{family}")),
    "compute.images.get": _on("compute.images.get", _compute("global/images/{image}")),
    "compute.instances.aggregatedList": _on("compute.instances.list", _project),
    "compute.instances.list": _on("compute.instances.list", _project),
    "compute.instances.insert": _instance_insert,
    "compute.instances.bulkInsert": _instance_bulk_insert,
    "compute.instances.get": _on("compute.instances.get", _compute("zones/{zone}/instances/{instance}")),
    "compute.instances.delete": _on("compute.instances.delete", _compute("zones/{zone}/instances/{instance}")),
    "compute.instances.stop": _on("compute.instances.stop", _compute("zones/{zone}/instances/{instance}")),
    "compute.instances.reset": _on("compute.instances.reset", _compute("zones/{zone}/instances/{instance}")),
    "compute.instances.setLabels": _on("compute.instances.setLabels", _compute("zones/{zone}/instances/{instance}")),
    "compute.instances.setMetadata": _on("compute.instances.setMetadata", _compute("zones/{zone}/instances/{instance}")),
    "compute.zoneOperations.get": _on("compute.zoneOperations.get", _compute("zones/{zone}/operations/{operation}")),
    "compute.zoneOperations.wait": _on("compute.zoneOperations.get", _compute("zones/{zone}/operations/{operation}")),
    "compute.zoneOperations.list": _on("compute.zoneOperations.list", _project),
    "compute.globalOperations.get": _on("compute.globalOperations.get", _compute("global/operations/{operation}")),
    "compute.globalOperations.wait": _on("compute.globalOperations.get", _compute("global/operations/{operation}")),
    "compute.firewalls.list": _on("compute.firewalls.list", _project),
    "compute.firewalls.get": _on("compute.firewalls.get", _compute("global/firewalls/{firewall}")),
    "compute.firewalls.insert": _firewall_change("compute.firewalls.create"),
    "compute.firewalls.patch": _firewall_change("compute.firewalls.update"),
    "compute.firewalls.delete": _firewall_change("compute.firewalls.delete"),
    "compute.networks.get": _on("compute.networks.get", _compute("global/networks/{network}")),
    "compute.subnetworks.get": _on("compute.subnetworks.get", _compute("regions/{region}/subnetworks/{subnetwork}")),
}


# -- Secret Manager v1 ------------------------------------------------------------------------------------
def _secret(s: Scope, p: Mapping[str, str]) -> Resource:
    return s.secret(p["project"], p["secret"])


def _version(s: Scope, p: Mapping[str, str]) -> Resource:
    return s.secret(p["project"], p["secret"], p["version"])


SECRETS: dict[str, Method] = {
    "secretmanager.secrets.create": _on("secretmanager.secrets.create", _project),
    "secretmanager.secrets.list": _on("secretmanager.secrets.list", _project),
    "secretmanager.secrets.get": _on("secretmanager.secrets.get", _secret),
    "secretmanager.secrets.delete": _on("secretmanager.secrets.delete", _secret),
    "secretmanager.versions.add": _on("secretmanager.versions.add", _secret),
    "secretmanager.versions.list": _on("secretmanager.versions.list", _secret),
    "secretmanager.versions.get": _on("secretmanager.versions.get", _version),
    "secretmanager.versions.access": _on("secretmanager.versions.access", _version),
    "secretmanager.secrets.getIamPolicy": _on("secretmanager.secrets.getIamPolicy", _secret),
    "secretmanager.secrets.setIamPolicy": _on("secretmanager.secrets.setIamPolicy", _secret),
    "secretmanager.secrets.testIamPermissions": lambda s, call: [],  # needs no permission
}


# -- Cloud Logging v2 -------------------------------------------------------------------------------------
def _log_projects(names: list[str]) -> list[str]:
    return list(dict.fromkeys(found.group(1) for name in names if (found := re.match(r"projects/([^/]+)", name or ""))))


def _entries_write(s: Scope, call: Call) -> list[Check]:
    names = [call.body.get("logName", "")] + [entry.get("logName", "") for entry in call.body.get("entries") or ()]
    return [Check("logging.logEntries.create", s.project_resource(project)) for project in _log_projects(names)]


def _entries_list(s: Scope, call: Call) -> list[Check]:
    names = list(call.body.get("resourceNames") or ()) + [f"projects/{p}" for p in call.body.get("projectIds") or ()]
    return [Check("logging.logEntries.list", s.project_resource(project)) for project in _log_projects(names)]


LOGGING: dict[str, Method] = {"logging.entries.write": _entries_write, "logging.entries.list": _entries_list}


# -- IAM v1 and Resource Manager v3 --------------------------------------------------------------------------
def _account(s: Scope, p: Mapping[str, str]) -> Resource:
    return s.service_account(p["project"], p["account"])


def _role(s: Scope, p: Mapping[str, str]) -> Resource:
    return s.role(p["project"], p["role"])


IAM: dict[str, Method] = {
    "iam.serviceAccounts.create": _on("iam.serviceAccounts.create", _project),
    "iam.serviceAccounts.list": _on("iam.serviceAccounts.list", _project),
    "iam.serviceAccounts.get": _on("iam.serviceAccounts.get", _account),
    "iam.serviceAccounts.delete": _on("iam.serviceAccounts.delete", _account),
    "iam.serviceAccounts.getIamPolicy": _on("iam.serviceAccounts.getIamPolicy", _account),
    "iam.serviceAccounts.setIamPolicy": _on("iam.serviceAccounts.setIamPolicy", _account),
    "iam.serviceAccounts.testIamPermissions": lambda s, call: [],
    "iam.roles.create": _on("iam.roles.create", _project),
    "iam.roles.list": _on("iam.roles.list", _project),
    "iam.roles.get": _on("iam.roles.get", _role),
    "iam.roles.patch": _on("iam.roles.update", _role),
    "iam.roles.delete": _on("iam.roles.delete", _role),
    "iam.roles.undelete": _on("iam.roles.undelete", _role),
    "cloudresourcemanager.projects.get": _on("resourcemanager.projects.get", _project),
    "cloudresourcemanager.projects.getIamPolicy": _on("resourcemanager.projects.getIamPolicy", _project),
    "cloudresourcemanager.projects.setIamPolicy": _on("resourcemanager.projects.setIamPolicy", _project),
    "cloudresourcemanager.projects.testIamPermissions": lambda s, call: [],
}

# -- Cloud Quotas v1 (Cloud Run's quotas) ----------------------------------------------------------------------
QUOTAS: dict[str, Method] = {
    "cloudquotas.quotaInfos.get": _on("cloudquotas.quotas.get", _project),
    "cloudquotas.quotaInfos.list": _on("cloudquotas.quotas.get", _project),
}

# Every method the fakes serve behind authentication; one missing here is refused (fail closed).
METHODS: dict[str, Method] = {**RUN, **COMPUTE, **SECRETS, **LOGGING, **IAM, **QUOTAS}


# -- refusals -------------------------------------------------------------------------------------------------
class Refusal(GoogleError):
    """A denial with the exact JSON body the API answers."""

    def __init__(self, code: int, error: dict[str, Any]) -> None:
        super().__init__(code, error["message"], error.get("status"))
        self.error = error

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.error}, status_code=self.code)


def _error_info(domain: str, permission: str, resource: str | None = None) -> dict[str, Any]:
    metadata = {"permission": permission, **({"resource": resource} if resource else {})}
    return {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "IAM_PERMISSION_DENIED", "domain": domain, "metadata": metadata}


def _forbidden(message: str) -> list[dict[str, str]]:
    return [{"message": message, "domain": "global", "reason": "forbidden"}]


def unmapped(method: str) -> Refusal:
    """The refusal of a method the sandbox maps no permission for."""
    message = (
        f"The sandbox GCP maps no IAM permission for method {method}, so it refuses it (fail closed): "
        "map it in prefect_remote/sandbox/gcp/permissions.py"
    )
    return Refusal(403, {"code": 403, "message": message, "status": "PERMISSION_DENIED"})


def refusal(method: str, missing: list[Check]) -> Refusal:
    """How the API of ``method`` refuses a call that lacks ``missing`` (at least one)."""
    first = missing[0]
    permission, resource = first.permission, first.resource.name
    api = method.split(".", 1)[0]
    if api == "compute":
        errors = [
            {"message": f"Required '{c.permission}' permission for '{c.resource.name}'", "domain": "global", "reason": "forbidden"}
            for c in missing
        ]
        return Refusal(403, {"code": 403, "message": errors[0]["message"], "errors": errors})
    if permission == ACT_AS:  # Cloud Run checks it when a job is deployed
        email = resource.rsplit("/", 1)[-1]
        message = f"Permission 'iam.serviceaccounts.actAs' denied on service account {email} (or it may not exist)."
        return Refusal(403, {"code": 403, "message": message, "errors": _forbidden(message), "status": "PERMISSION_DENIED"})
    if api == "run":
        message = f"Permission '{permission}' denied on resource '{resource}' (or resource may not exist)."
        details = [_error_info("run.googleapis.com", permission, resource)]
    elif api == "secretmanager":
        message = f"Permission '{permission}' denied for resource '{resource}' (or it may not exist)."
        details = [_error_info("secretmanager.googleapis.com", permission, resource)]
    elif api == "cloudresourcemanager":
        message = "Policy update access denied." if method.endswith("setIamPolicy") else "The caller does not have permission"
        return Refusal(403, {"code": 403, "message": message, "status": "PERMISSION_DENIED"})
    else:  # Cloud Logging, IAM
        message = f"Permission '{permission}' denied on resource (or it may not exist)."
        details = [_error_info("iam.googleapis.com", permission)]
    return Refusal(403, {"code": 403, "message": message, "status": "PERMISSION_DENIED", "details": details})


def service_account_access_denied(email: str, user: str) -> str:
    """The error of a Compute Engine operation whose caller may not act as ``email``."""
    return (
        f"The user does not have access to service account '{email}'.  User: '{user}'.  "
        "Ask a project owner to grant you the iam.serviceAccountUser role on the service account"
    )
