"""The sandbox Compute Engine's instances, and the fake that serves them with its other resources
(:class:`ComputeFake`). Each instance's ``startup-script`` metadata boots as a local machine
(:mod:`prefect_remote.sandbox.instances`) with a metadata server of its own, and the two stay in step
both ways:

* ``instances.insert`` places the instance before answering, so the instance already has its
  machine's address; ``instances.bulkInsert`` (:mod:`~prefect_remote.sandbox.gcp.compute.bulk`)
  places each of ``count`` alike, all or nothing below ``minCount``, one operation for them all;
* deleting or stopping an instance whose machine runs leaves it ``STOPPING`` until the machine has
  ended; then it is gone (or ``TERMINATED``);
* a guest shutdown (the startup script exits, the agent halts) makes the instance ``TERMINATED``,
  as on Compute Engine: it is stopped, not deleted, whatever ``instanceTerminationAction`` says;
  that action applies when Google ends the VM: a preemption (:meth:`ComputeFake.preempt`) or its
  ``maxRunDuration``;
* a reboot runs the ``startup-script`` again, as Compute Engine does on every boot: ``instances.reset``,
  and a host error (:meth:`ComputeFake.host_error`) on an instance with ``automaticRestart``
  (without it, the instance is ``TERMINATED``);
* the region's quotas hold: an insert that would take ``CPUS``, ``PREEMPTIBLE_CPUS``, a GPU quota…
  over its limit (``catalog.set_quota``) fails in its operation with ``QUOTA_EXCEEDED``; a bulk
  insert that cannot have ``minCount`` is refused at once (403 ``quotaExceeded``: validated up front);
* instance names are unique in the project (Google: in the zone), so ids ``gce:<name>`` are too;
* faults on request: :meth:`ComputeFake.refuse` makes inserts in a zone (spot ones, standard ones,
  or both) fail as Compute Engine fails them, in the insert's operation: ``ZONE_RESOURCE_POOL_EXHAUSTED``
  (a stock-out) or ``QUOTA_EXCEEDED`` (a regional quota: ``CPUS``, ``PREEMPTIBLE_CPUS``…); a bulk
  insert meets one refusal for all its instances (a quota's at once); :meth:`ComputeFake.preempt` and
  :meth:`ComputeFake.delete` end an instance as Google or its owner would.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from prefect_remote.sandbox.gcp.api import GoogleAPI, GoogleError, body
from prefect_remote.sandbox.gcp.common import Sandbox
from prefect_remote.sandbox.gcp.compute.bulk import bulk_names, insert_body
from prefect_remote.sandbox.gcp.compute.catalog import Catalog
from prefect_remote.sandbox.gcp.compute.google import (
    ComputeProject,
    Route,
    aggregated,
    already_exists,
    check_labels,
    filter_items,
    fingerprint,
    last_segment,
    not_found,
    page,
    principal_email,
    timestamp,
)
from prefect_remote.sandbox.gcp.compute.insert import Inserts, check_metadata, metadata_resource
from prefect_remote.sandbox.gcp.compute.network import SUBNET, Network
from prefect_remote.sandbox.gcp.compute.operations import Operations
from prefect_remote.sandbox.instances import Instance
from prefect_remote.sandbox.vpc import Ingress

ID_PREFIX = "gce:"  # the instance runner's ids of this fake's instances
STOCK_OUT = "The zone '{zone}' does not have enough resources available to fulfill the request.  Try a different zone, or try again later."
QUOTA = "Quota '{quota}' exceeded.  Limit: {limit:.1f} in region {region}."
# How Compute Engine reports each injectable code: the operation's HTTP status and message.
REFUSALS = {
    "ZONE_RESOURCE_POOL_EXHAUSTED": (503, "SERVICE UNAVAILABLE"),
    "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS": (503, "SERVICE UNAVAILABLE"),
    "QUOTA_EXCEEDED": (403, "FORBIDDEN"),
}


@dataclass
class Refusal:
    """Inserts that fail with ``code``: in ``zone`` (None: any), of spot or standard VMs (None: either),
    ``times`` more times (None: until lifted)."""

    code: str
    zone: str | None
    spot: bool | None
    times: int | None

    def applies(self, zone: str, spot: bool) -> bool:
        return (self.zone in (None, zone)) and (self.spot in (None, spot)) and self.times != 0


@dataclass
class VM:
    """An instance as the fake holds it: its resource (JSON as Google returns it) and its life."""

    resource: dict[str, Any]
    zone: str
    started: float = field(default_factory=time.time)
    booting: bool = False  # being placed on a machine inside instances.insert
    deleting: bool = False  # deleted through the API: gone once its machine has ended
    stopping: bool = False  # stopped through the API: TERMINATED once its machine has ended
    action: str | None = None  # Google ends it (preemption, maxRunDuration): STOP or DELETE once its machine has ended

    @property
    def name(self) -> str:
        return self.resource["name"]

    @property
    def key(self) -> str:
        """Its metadata server's key (a path segment)."""
        return f"gce-{self.name}"

    def metadata(self) -> dict[str, str]:
        return {item["key"]: item.get("value", "") for item in self.resource["metadata"].get("items", [])}


class ComputeFake:
    """Compute Engine v1 for one project, served on ``sandbox.api``; instances run on ``sandbox.runner``.
    Its parts: ``catalog`` (zones, the region, machine and accelerator types, images), ``network``
    (the default network, firewalls) and ``operations``; the instances are its own."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.project = ComputeProject(sandbox)
        self.operations = Operations(self.project)
        self.catalog = Catalog(self.project, self._in_use)
        self.network = Network(self.project, self.operations)
        self._inserts = Inserts(self.project, self.catalog, self.network)
        self._lock = threading.RLock()
        self._vms: dict[str, VM] = {}  # name -> instance
        self._refusals: list[Refusal] = []  # injected capacity and quota errors
        self._register_routes(sandbox.api)

    def _register_routes(self, api: GoogleAPI) -> None:
        p = "/compute/v1/projects/{project}"
        z = p + "/zones/{zone}"
        routes: list[Route] = [
            *self.catalog.routes(p, z),
            (p + "/aggregated/instances", ["GET"], "compute.instances.aggregatedList", self.aggregated_instances),
            (z + "/instances", ["GET"], "compute.instances.list", self.list_instances),
            (z + "/instances", ["POST"], "compute.instances.insert", self.insert_instance),
            (z + "/instances/bulkInsert", ["POST"], "compute.instances.bulkInsert", self.bulk_insert_instances),
            (z + "/instances/{instance}/setLabels", ["POST"], "compute.instances.setLabels", self.set_labels),
            (z + "/instances/{instance}/setMetadata", ["POST"], "compute.instances.setMetadata", self.set_metadata),
            (z + "/instances/{instance}/stop", ["POST"], "compute.instances.stop", self.stop_instance),
            (z + "/instances/{instance}/reset", ["POST"], "compute.instances.reset", self.reset_instance),
            (z + "/instances/{instance}", ["GET"], "compute.instances.get", self.get_instance),
            (z + "/instances/{instance}", ["DELETE"], "compute.instances.delete", self.delete_instance),
            *self.operations.routes(p, z),
            *self.network.routes(p),
        ]
        for path, methods, name, handler in routes:
            api.route(path, methods, name)(handler)

    # -- the instance runner's side ----------------------------------------------------------------------
    def instances(self) -> Iterator[Instance]:
        """Every instance as the runner sees it (``gce:<name>``), straight from the fake's state; ends
        the instances whose ``maxRunDuration`` has passed, as Google does."""
        now = time.time()
        with self._lock:
            vms = list(self._vms.values())
        for vm in vms:
            limit = vm.resource["scheduling"].get("maxRunDuration")
            if limit and vm.resource["status"] == "RUNNING" and now > vm.started + int(limit.get("seconds", 0)):
                self._end_by_google(vm, "compute.instances.terminateOnMaxRunDuration")
            yield self._as_instance(vm)

    def terminate(self, instance_id: str, reason: str, exit_code: int | None = None) -> None:
        """The instance's machine has ended (or never booted): what happens to the instance is what
        Compute Engine does then. Deleted or preempted-with-DELETE: gone; stopped, preempted-with-STOP
        or shut down from the guest: ``TERMINATED`` (``exit_code`` is the machine's; Google keeps none)."""
        name = instance_id.removeprefix(ID_PREFIX)
        with self._lock:
            vm = self._vms.get(name)
            if vm is None:
                return
            if vm.deleting or vm.action == "DELETE":
                self._remove(vm)
                return
            if not (vm.stopping or vm.action):  # the guest shut itself down
                self._record(vm, "compute.instances.guestTerminate", user="system")
            vm.resource["status"] = "TERMINATED"
            vm.resource["lastStopTimestamp"] = timestamp()

    def booted(self, instance: Instance, machine: Any) -> None:
        """The instance's external address is its machine's on this host's bridge; its internal one
        stays on the VPC's bridge (with no VPC, process isolation, the machine's one address is both)."""
        with self._lock:
            vm = self._vms.get(instance.id.removeprefix(ID_PREFIX))
            if vm is None:
                return
            nic = vm.resource["networkInterfaces"][0]
            if machine.private_address and self.sandbox.runner.vpc is None:
                nic["networkIP"] = machine.private_address
            for config in nic.get("accessConfigs", []):
                if machine.public_address:
                    config["natIP"] = machine.public_address

    def ingress(self, instance: Instance) -> list[Ingress]:
        """What the firewall rules admit to the instance (:meth:`Network.ingress`)."""
        with self._lock:
            vms = list(self._vms.values())
        tags_of = {vm.name: set(vm.resource["tags"].get("items", [])) for vm in vms}
        running = [vm for vm in vms if vm.resource["status"] in ("PROVISIONING", "STAGING", "RUNNING")]

        def members(source_tags: list[str]) -> list[str]:
            return [vm.resource["networkInterfaces"][0]["networkIP"] for vm in running if tags_of[vm.name] & set(source_tags)]

        return self.network.ingress(tags_of.get(instance.id.removeprefix(ID_PREFIX), set()), members)

    def image_env(self, instance: Instance) -> dict[str, str]:
        """What the instance's image sets: the sandbox's (its endpoints, its metadata server)."""
        env = self.sandbox.image_env(f"gce-{instance.id.removeprefix(ID_PREFIX)}")
        return env if instance.egress else {**env, **self.sandbox.no_egress_env()}

    # -- fault injection ------------------------------------------------------------------------------------
    def refuse(
        self, code: str = "ZONE_RESOURCE_POOL_EXHAUSTED", *, zone: str | None = None, spot: bool | None = None, times: int | None = 1
    ) -> None:
        """Makes inserts in ``zone`` (None: every zone) of spot (``spot=True``) or standard
        (``False``) VMs (None: both) fail as Compute Engine fails them: the insert's operation ends
        with ``error.errors[{code}]`` and its HTTP status (503 for a stock-out, 403 for a quota), which
        ``operation.result()`` raises; for the next ``times`` such inserts (None: until
        :meth:`lift_refusals`)."""
        if code not in REFUSALS:
            raise ValueError(f"code={code!r}: the sandbox injects {sorted(REFUSALS)}")
        with self._lock:
            self._refusals.append(Refusal(code, zone, spot, times))

    def lift_refusals(self) -> None:
        """Every zone has capacity and quota again."""
        with self._lock:
            self._refusals.clear()

    def _refusal(self, project: str, zone: str, spot: bool) -> tuple[int, str, str, str] | None:
        """The error an insert in ``zone`` meets, if one was injected (its count taken)."""
        found = next((refusal for refusal in self._refusals if refusal.applies(zone, spot)), None)
        if found is None:
            return None
        if found.times is not None:
            found.times -= 1
        status, phrase = REFUSALS[found.code]
        if found.code == "QUOTA_EXCEEDED":
            message = QUOTA.format(quota="PREEMPTIBLE_CPUS" if spot else "CPUS", limit=0, region=self.sandbox.region)
        else:
            message = STOCK_OUT.format(zone=f"projects/{project}/zones/{zone}")
        return (status, phrase, found.code, message)

    def _over_quota(self, resource: dict[str, Any]) -> tuple[int, str, str, str] | None:
        """The error an insert of ``resource`` meets when it would take the region over a quota."""
        exceeded = self.catalog.over_quota(resource)
        if exceeded is None:
            return None
        status, phrase = REFUSALS["QUOTA_EXCEEDED"]
        return (status, phrase, "QUOTA_EXCEEDED", QUOTA.format(quota=exceeded[0], limit=exceeded[1], region=self.sandbox.region))

    def preempt(self, name: str, action: str | None = None) -> None:
        """Google ends instance ``name`` (a preemption, a host failure): its machine ends, then the
        instance is deleted or ``TERMINATED`` as its ``instanceTerminationAction`` (or ``action``) says.
        ``preempt(name, "DELETE")`` is a VM deleted mid-work."""
        with self._lock:
            vm = self._vms.get(name)
            if vm is None:
                raise KeyError(f"no instance {name!r} in the sandbox Compute Engine")
        self._end_by_google(vm, "compute.instances.preempted", action)

    def host_error(self, name: str) -> str:
        """The host of instance ``name`` fails, as Compute Engine reports ``compute.instances.hostError``:
        with ``scheduling.automaticRestart`` the instance restarts (its startup script runs again);
        without, it is ``TERMINATED``. Returns what became of it (``"restarted"``, ``"terminated"``)."""
        with self._lock:
            vm = self._vms.get(name)
            if vm is None:
                raise KeyError(f"no instance {name!r} in the sandbox Compute Engine")
            if vm.resource["scheduling"].get("automaticRestart"):
                self._record(vm, "compute.instances.hostError", user="system")
                self._reboot(vm)
                return "restarted"
        self._end_by_google(vm, "compute.instances.hostError", "STOP")
        return "terminated"

    def _reboot(self, vm: VM) -> None:
        vm.started = time.time()
        vm.resource["lastStartTimestamp"] = timestamp(vm.started)
        self.sandbox.runner.reboot(ID_PREFIX + vm.name)

    def delete(self, name: str) -> None:
        """Deletes instance ``name`` (or ``gce:<name>``) as ``instances.delete`` does (a sandbox's clean-up, a VM deleted
        mid-work): ``STOPPING`` until its machine has ended, then gone. Unknown names are fine."""
        with self._lock:
            vm = self._vms.get(name.removeprefix(ID_PREFIX))
            if vm is None:
                return
            vm.deleting = True
            if vm.resource["status"] == "TERMINATED":
                self._remove(vm)
            elif vm.resource["status"] != "STOPPING":
                self._shut_down(vm)

    def _end_by_google(self, vm: VM, operation_type: str, action: str | None = None) -> None:
        with self._lock:
            if vm.resource["status"] in ("STOPPING", "TERMINATED"):
                return
            vm.action = action or vm.resource["scheduling"].get("instanceTerminationAction") or "STOP"
            self._record(vm, operation_type, user="system")
            self._shut_down(vm)

    def _shut_down(self, vm: VM) -> None:
        """Ends ``vm``'s machine: STOPPING until it has ended (the runner then calls :meth:`terminate`)."""
        instance_id = ID_PREFIX + vm.name
        if vm.booting or self.sandbox.runner.machine_of(instance_id):
            vm.resource["status"] = "STOPPING"
        else:
            self.terminate(instance_id, "no machine")

    # -- helpers --------------------------------------------------------------------------------------------
    def _as_instance(self, vm: VM) -> Instance:
        resource = vm.resource
        return Instance(
            id=ID_PREFIX + vm.name,
            state=resource["status"],
            script=vm.metadata().get("startup-script"),
            instance_type=last_segment(resource["machineType"]),
            region=self.sandbox.region,
            tags=dict(resource.get("labels", {})),
            # Cloud NAT is not modelled: a VM without an external IP reaches nothing beyond the network
            egress=bool(resource["networkInterfaces"][0].get("accessConfigs")),
            private_address=f"{resource['networkInterfaces'][0]['networkIP']}/{ipaddress.ip_network(SUBNET).prefixlen}",
            # The public images the sandbox serves (Debian 12, Ubuntu 24.04, the Deep Learning VM's Ubuntu)
            # carry no container engine: a boot for image= installs Docker with apt-get, as on Google.
            engine_installer="apt-get",
        )

    def _remove(self, vm: VM) -> None:
        self._vms.pop(vm.name, None)
        self.sandbox.metadata.forget(vm.key)

    def _record(self, vm: VM, operation_type: str, *, user: str, error: tuple[int, str, str, str] | None = None) -> dict[str, Any]:
        """The operation of ``operation_type`` on ``vm``, done."""
        return self.operations.record(vm.zone, operation_type, vm.resource["selfLink"], vm.resource["id"], user=user, error=error)

    def _in_use(self) -> list[dict[str, Any]]:
        """The resources of the instances not ``TERMINATED`` (the region's quota usage)."""
        with self._lock:
            return [vm.resource for vm in self._vms.values() if vm.resource["status"] != "TERMINATED"]

    def _vm(self, project: str, zone: str, name: str) -> VM:
        self.project.check_zone(project, zone)
        with self._lock:
            vm = self._vms.get(name)
        if vm is None or vm.zone != zone:
            raise not_found(f"projects/{project}/zones/{zone}/instances/{name}")
        return vm

    # -- the API ----------------------------------------------------------------------------------------------
    def insert_instance(self, request: Request, project: str, zone: str) -> dict[str, Any]:
        self.project.check_zone(project, zone)
        spec = body(request)
        user = principal_email(request)
        resource, _shape = self._inserts.resource(zone, spec)
        name = resource["name"]
        with self._lock:
            if name in self._vms:
                raise already_exists(f"projects/{project}/zones/{zone}/instances/{name}")
            vm = VM(resource, zone, booting=True)
            error = self._refusal(project, zone, resource["scheduling"].get("provisioningModel") == "SPOT") or self._over_quota(resource)
            if error is not None:
                return self._record(vm, "insert", user=user, error=error)
            self._vms[name] = vm
            operation = self._record(vm, "insert", user=user)
        self._place(vm)
        return operation

    def bulk_insert_instances(self, request: Request, project: str, zone: str) -> dict[str, Any]:
        """``instances.bulkInsert``: ``count`` instances alike but for their names, all or nothing
        below ``minCount``. As Compute Engine validates a bulk request up front, with capacity and
        quota: an invalid one, a name taken, and a quota the region lacks for ``minCount`` more are
        refused at once (a quota as 403 ``quotaExceeded``); a stock-out fails the operation, which
        leaves no instance (rolled back)."""
        self.project.check_zone(project, zone)
        spec = body(request)
        user = principal_email(request)
        with self._lock:
            existing = [vm.name for vm in self._vms.values() if vm.zone == zone]
        names, min_count = bulk_names(spec, existing)
        resources = [self._inserts.resource(zone, insert_body(spec, name, zone))[0] for name in names]
        spot = resources[0]["scheduling"].get("provisioningModel") == "SPOT"
        target = self.project.link("zones", zone, "instances", "bulkInsert")

        def operation(created: int, error: tuple[int, str, str, str] | None = None) -> dict[str, Any]:
            status = {"targetVmCount": len(names), "createdVmCount": created, "status": "DONE"}
            if error is not None:
                status.update(failedToCreateVmCount=len(names), rolledBackVmCount=0, deletedVmCount=0)
            extra = {"instancesBulkInsertOperationMetadata": {"perLocationStatus": {f"zones/{zone}": status}}}
            return self.operations.record(zone, "bulkInsert", target, str(secrets.randbits(63)), user=user, error=error, extra=extra)

        with self._lock:
            taken = next((name for name in names if name in self._vms), None)
            if taken is not None:
                raise already_exists(f"projects/{project}/zones/{zone}/instances/{taken}")
            refusal = self._refusal(project, zone, spot)
            if refusal is not None and refusal[2] == "QUOTA_EXCEEDED":
                raise GoogleError(403, refusal[3], reason="quotaExceeded")
            if refusal is not None:
                return operation(0, refusal)
            fits, exceeded = self.catalog.fitting(resources)
            if fits < min_count and exceeded is not None:
                message = QUOTA.format(quota=exceeded[0], limit=exceeded[1], region=self.sandbox.region)
                raise GoogleError(403, message, reason="quotaExceeded")
            vms = [VM(resource, zone, booting=True) for resource in resources[:fits]]
            self._vms.update((vm.name, vm) for vm in vms)
            done = operation(len(vms))
        for vm in vms:
            self._place(vm)
        return done

    def _place(self, vm: VM) -> None:
        """Boots a new instance's machine, before the insert answers (as Compute Engine places it)."""
        name, resource = vm.name, vm.resource
        accounts = resource.get("serviceAccounts") or [{}]
        self.sandbox.metadata.register(vm.key, lambda: self._facts(name), accounts[0].get("email", ""))
        # Placed before answering, as Compute Engine does: the answer's instance has its address.
        try:
            self.sandbox.runner.boot(self._as_instance(vm))
        finally:
            with self._lock:
                vm.booting = False
                if vm.resource["status"] == "STAGING":
                    vm.resource["status"] = "RUNNING"
                    vm.started = time.time()
                    vm.resource["lastStartTimestamp"] = timestamp(vm.started)
                elif vm.resource["status"] == "STOPPING" and not self.sandbox.runner.machine_of(ID_PREFIX + name):
                    self.terminate(ID_PREFIX + name, "deleted while it booted")

    def get_instance(self, request: Request, project: str, zone: str, instance: str) -> dict[str, Any]:
        vm = self._vm(project, zone, instance)
        with self._lock:
            return json.loads(json.dumps(vm.resource))

    def _zone_instances(self, zone: str, request: Request) -> list[dict[str, Any]]:
        with self._lock:
            resources = [json.loads(json.dumps(vm.resource)) for vm in self._vms.values() if vm.zone == zone]
        return filter_items(resources, request)

    def list_instances(self, request: Request, project: str, zone: str) -> dict[str, Any]:
        self.project.check_zone(project, zone)
        return page(self._zone_instances(zone, request), request, "compute#instanceList", self.project.link("zones", zone, "instances"))

    def aggregated_instances(self, request: Request, project: str) -> dict[str, Any]:
        self.project.check(project)
        scoped = {zone: self._zone_instances(zone, request) for zone in self.sandbox.zones}
        return aggregated(scoped, "instances", "compute#instanceAggregatedList", self.project.link("aggregated/instances"))

    def delete_instance(self, request: Request, project: str, zone: str, instance: str) -> dict[str, Any]:
        vm = self._vm(project, zone, instance)
        operation = self._record(vm, "delete", user=principal_email(request))
        self.delete(instance)
        return operation

    def stop_instance(self, request: Request, project: str, zone: str, instance: str) -> dict[str, Any]:
        vm = self._vm(project, zone, instance)
        with self._lock:
            operation = self._record(vm, "stop", user=principal_email(request))
            if vm.resource["status"] not in ("STOPPING", "TERMINATED"):
                vm.stopping = True
                self._shut_down(vm)
        return operation

    def reset_instance(self, request: Request, project: str, zone: str, instance: str) -> dict[str, Any]:
        vm = self._vm(project, zone, instance)
        with self._lock:
            if vm.resource["status"] != "RUNNING":
                raise GoogleError(400, f"The resource '{vm.resource['selfLink']}' is not ready", reason="resourceNotReady")
            operation = self._record(vm, "reset", user=principal_email(request))
            self._reboot(vm)
        return operation

    def set_labels(self, request: Request, project: str, zone: str, instance: str) -> dict[str, Any]:
        vm = self._vm(project, zone, instance)
        spec = body(request)
        labels = spec.get("labels") or {}
        check_labels(labels, "labels")
        with self._lock:
            if spec.get("labelFingerprint") != vm.resource["labelFingerprint"]:
                raise GoogleError(412, "Labels fingerprint either invalid or resource labels have changed", reason="conditionNotMet")
            vm.resource.pop("labels", None)
            if labels:
                vm.resource["labels"] = dict(labels)
            vm.resource["labelFingerprint"] = fingerprint(labels)
            return self._record(vm, "setLabels", user=principal_email(request))

    def set_metadata(self, request: Request, project: str, zone: str, instance: str) -> dict[str, Any]:
        vm = self._vm(project, zone, instance)
        spec = body(request)
        items = spec.get("items") or []
        check_metadata(items, "metadata")
        with self._lock:
            if spec.get("fingerprint") != vm.resource["metadata"]["fingerprint"]:
                raise GoogleError(412, "Supplied fingerprint does not match current metadata fingerprint.", reason="conditionNotMet")
            vm.resource["metadata"] = metadata_resource(items)
            return self._record(vm, "setMetadata", user=principal_email(request))

    def _facts(self, name: str) -> dict[str, Any] | None:
        """What the instance's metadata server answers, by metadata path, read per request (live
        attributes, addresses and preemption); the server adds the project and the service account."""
        number = self.sandbox.project_number
        with self._lock:
            vm = self._vms.get(name)
            if vm is None:
                return None
            resource = vm.resource
            nic = resource["networkInterfaces"][0]
            facts: dict[str, Any] = {
                "instance/id": resource["id"],
                "instance/name": name,
                "instance/hostname": f"{name}.{vm.zone}.c.{self.project.id}.internal",
                "instance/zone": f"projects/{number}/zones/{vm.zone}",
                "instance/machine-type": f"projects/{number}/machineTypes/{last_segment(resource['machineType'])}",
                "instance/attributes": vm.metadata(),
                "instance/tags": list(resource["tags"].get("items", [])),
                "instance/network-interfaces/0/ip": nic["networkIP"],
                "instance/scheduling/preemptible": "TRUE" if resource["scheduling"]["preemptible"] else "FALSE",
                "instance/scheduling/on-host-maintenance": resource["scheduling"]["onHostMaintenance"],
                "instance/preempted": "TRUE" if vm.action and resource["status"] == "STOPPING" else "FALSE",
            }
            for index, config in enumerate(nic.get("accessConfigs", [])):
                facts[f"instance/network-interfaces/0/access-configs/{index}/external-ip"] = config.get("natIP", "")
            return facts
