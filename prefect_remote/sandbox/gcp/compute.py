"""The sandbox GCP's Compute Engine v1: a small stateful fake of the REST API as
``google.cloud.compute_v1`` calls it (``/compute/v1/projects/…``, camelCase JSON, ``kind``,
``selfLink``, ids as strings of digits), whose instances run: each instance's ``startup-script``
metadata boots as a local machine (:mod:`prefect_remote.sandbox.instances`) with a metadata server
of its own, and the two stay in step both ways.

What it serves: zones, regions, machine types (a realistic catalog: e2, n2, c3, n1 with attachable
T4s, t2a/c4a on arm, g2 with L4s, a2 with A100s; the GPU families are not offered in the region's
last zone), accelerator types, public images by family (Debian 12, Ubuntu 24.04, amd64 and arm64),
instances (insert, get, list and aggregatedList with Google's filters, delete, stop, setLabels,
setMetadata with fingerprints), firewalls, the default network and subnetwork, and zone and global
operations.

How it follows Google, and where it simplifies:

* every operation is answered ``DONE`` (the python client's ``operation.result()`` polls with a
  client of its own that ignores ``api_endpoint``, so an operation that is not done at once would
  be polled at the real Google); a failed one carries ``error.errors[{code, message}]`` and
  ``httpErrorStatusCode``, which ``result()`` raises;
* ``instances.insert`` validates what Compute Engine validates (name, machine type in the zone,
  labels, metadata sizes, service account (``default`` is the project's compute account), image,
  arm image on arm type, Hyperdisk on c4a, GPUs need ``onHostMaintenance=TERMINATE``,
  ``instanceTerminationAction`` needs spot or a run limit) and
  places the instance before answering, so the instance already has its machine's address;
* deleting or stopping an instance whose machine runs leaves it ``STOPPING`` until the machine has
  ended; then it is gone (or ``TERMINATED``);
* a guest shutdown (the startup script exits, the agent halts) makes the instance ``TERMINATED``,
  as on Compute Engine: it is stopped, not deleted, whatever ``instanceTerminationAction`` says;
  that action applies when Google ends the VM: a preemption (:meth:`ComputeFake.preempt`) or its
  ``maxRunDuration``;
* instance names are unique in the project (Google: in the zone), so ids ``gce:<name>`` are too;
* timestamps are printed as Compute Engine prints them, in Pacific time (``…-08:00``);
* faults on request: :meth:`ComputeFake.refuse_spot` makes the next spot inserts fail with
  ``ZONE_RESOURCE_POOL_EXHAUSTED``, as a stock-out does; :meth:`ComputeFake.preempt` and
  :meth:`ComputeFake.delete` end an instance as Google or its owner would.

>>> compute = ComputeFake(sandbox)                                              # doctest: +SKIP
>>> client = compute_v1.InstancesClient(client_options={"api_endpoint": sandbox.api.url})  # doctest: +SKIP
>>> client.insert(project=sandbox.project, zone=sandbox.zones[0], instance_resource=vm).result()  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from starlette.requests import Request

from prefect_remote.sandbox.gcp.api import GoogleAPI, GoogleError, body
from prefect_remote.sandbox.gcp.common import page as page_of
from prefect_remote.sandbox.gcp.filters import compile_filter
from prefect_remote.sandbox.instances import Instance, InstanceRunner

BASE = "https://www.googleapis.com/compute/v1/"  # Compute Engine's selfLinks use this host
ID_PREFIX = "gce:"  # the instance runner's ids of this fake's instances
NAME = re.compile(r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?")
NAME_PATTERN = "(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?|[1-9][0-9]{0,19})"
LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")
MAX_METADATA_VALUE = 256 * 1024  # bytes, per value
MAX_METADATA = 512 * 1024  # bytes, all keys and values
MAX_RUN_DURATION = (30, 120 * 24 * 3600)  # seconds: Compute Engine's bounds
OPERATIONS_KEPT = 2000
STOCK_OUT = "The zone '{zone}' does not have enough resources available to fulfill the request.  Try a different zone, or try again later."


class Sandbox(Protocol):
    """What the fake needs of the sandbox GCP (:class:`prefect_remote.sandbox.gcp.sandbox.SandboxGCP`)."""

    api: GoogleAPI
    project: str
    project_number: str
    region: str
    zones: list[str]
    metadata: Any  # register(key, facts, service_account) / forget(key) / env(key, url)
    service_accounts: Any  # the emails that exist (a set, list or dict)
    runner: InstanceRunner

    def image_env(self, key: str) -> dict[str, str]: ...


# -- the catalog --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MachineShape:
    name: str
    cpus: int
    memory_mb: int
    arm: bool = False
    shared: bool = False
    gpu: tuple[str, int] | None = None  # a bundled accelerator: (type, count)

    @property
    def family(self) -> str:
        return self.name.split("-")[0]


def _catalog() -> list[MachineShape]:
    shapes = [
        MachineShape("e2-micro", 2, 1024, shared=True),
        MachineShape("e2-small", 2, 2048, shared=True),
        MachineShape("e2-medium", 2, 4096, shared=True),
    ]
    shapes += [MachineShape(f"e2-standard-{n}", n, n * 4096) for n in (2, 4, 8, 16, 32)]
    shapes += [MachineShape(f"e2-highmem-{n}", n, n * 8192) for n in (2, 4, 8, 16)]
    shapes += [MachineShape(f"e2-highcpu-{n}", n, n * 1024) for n in (2, 4, 8, 16, 32)]
    n2 = (2, 4, 8, 16, 32, 48, 64, 80, 96, 128)
    shapes += [MachineShape(f"n2-standard-{n}", n, n * 4096) for n in n2]
    shapes += [MachineShape(f"n2-highmem-{n}", n, n * 8192) for n in n2]
    shapes += [MachineShape(f"c3-standard-{n}", n, n * 4096) for n in (4, 8, 22, 44, 88, 176)]
    shapes += [MachineShape(f"n1-standard-{n}", n, n * 3840) for n in (1, 2, 4, 8, 16, 32, 64, 96)]
    shapes += [MachineShape(f"t2a-standard-{n}", n, n * 4096, arm=True) for n in (1, 2, 4, 8, 16, 32, 48)]
    shapes += [MachineShape(f"c4a-standard-{n}", n, n * 4096, arm=True) for n in (1, 2, 4, 8, 16, 32, 48, 64, 72)]
    l4s = {4: 1, 8: 1, 12: 1, 16: 1, 24: 2, 32: 1, 48: 4, 96: 8}
    shapes += [MachineShape(f"g2-standard-{n}", n, n * 4096, gpu=("nvidia-l4", count)) for n, count in l4s.items()]
    shapes += [MachineShape(f"a2-highgpu-{count}g", 12 * count, 87040 * count, gpu=("nvidia-tesla-a100", count)) for count in (1, 2, 4, 8)]
    return shapes


MACHINE_TYPES = {shape.name: shape for shape in _catalog()}
GPU_FAMILIES = ("n1", "g2", "a2")  # where accelerators are offered: not in the region's last zone
# accelerator type -> (description, most cards per instance, the machine families it attaches to or comes with)
ACCELERATORS = {
    "nvidia-tesla-t4": ("NVIDIA T4", 4, ("n1",)),
    "nvidia-l4": ("NVIDIA L4", 8, ("g2",)),
    "nvidia-tesla-a100": ("NVIDIA A100 40GB", 16, ("a2",)),
}
GPU_QUOTAS = {
    "nvidia-tesla-t4": "NVIDIA_T4_GPUS",
    "nvidia-l4": "NVIDIA_L4_GPUS",
    "nvidia-tesla-a100": "NVIDIA_A100_GPUS",
}  # the region's quota metrics
# (image project, family) -> (image name, architecture)
IMAGES = {
    ("debian-cloud", "debian-12"): ("debian-12-bookworm-v20261110", "X86_64"),
    ("debian-cloud", "debian-12-arm64"): ("debian-12-bookworm-arm64-v20261110", "ARM64"),
    ("ubuntu-os-cloud", "ubuntu-2404-lts-amd64"): ("ubuntu-2404-noble-amd64-v20261105", "X86_64"),
    ("ubuntu-os-cloud", "ubuntu-2404-lts-arm64"): ("ubuntu-2404-noble-arm64-v20261105", "ARM64"),
}
DISK_TYPES = ("pd-standard", "pd-balanced", "pd-ssd", "hyperdisk-balanced")
HYPERDISK_ONLY = ("c4a",)  # families that boot only from Hyperdisk
CPU_PLATFORMS = {
    "e2": "Intel Broadwell",
    "n2": "Intel Cascade Lake",
    "c3": "Intel Sapphire Rapids",
    "n1": "Intel Skylake",
    "t2a": "Ampere Altra",
    "c4a": "Google Axion",
    "g2": "Intel Cascade Lake",
    "a2": "Intel Cascade Lake",
}


def timestamp(epoch: float | None = None) -> str:
    """A time as Compute Engine prints it, in Pacific time: ``2026-12-01T03:04:05.123-08:00``."""
    epoch = time.time() if epoch is None else epoch
    pacific = epoch - 8 * 3600  # Google's servers print -08:00 (-07:00 in summer: not modelled)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(pacific)) + f".{int(epoch % 1 * 1000):03d}-08:00"


def numeric_id(*parts: str) -> str:
    """A stable id of digits for a catalog resource (Compute Engine's ids are uint64 as strings)."""
    return str(int.from_bytes(hashlib.sha256("/".join(parts).encode()).digest()[:8], "big") >> 1)


def fingerprint(value: Any) -> str:
    """Compute Engine's optimistic-locking fingerprint of ``value``: 8 bytes, base64."""
    return base64.b64encode(hashlib.sha256(json.dumps(value, sort_keys=True).encode()).digest()[:8]).decode()


def last_segment(url: str) -> str:
    return url.rstrip("/").rpartition("/")[2]


# -- state ----------------------------------------------------------------------------------------------
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
    """Compute Engine v1 for one project, served on ``sandbox.api``; instances run on ``sandbox.runner``."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.project = sandbox.project
        self._lock = threading.RLock()
        self._vms: dict[str, VM] = {}  # name -> instance
        self._firewalls: dict[str, dict[str, Any]] = {}
        self._operations: dict[str, dict[str, Any]] = {}  # "zones/<zone>" or "global" + "/" + name -> operation
        self._refuse_spot: list[str] = []  # error codes for the next spot inserts
        self._addresses = ipaddress.ip_network("10.128.0.0/20").hosts()  # until a machine gives the real one
        next(self._addresses)  # .1 is the gateway
        self._register_routes(sandbox.api)

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
                self._operation(vm.zone, "compute.instances.guestTerminate", vm.resource["selfLink"], vm.resource["id"], user="system")
            vm.resource["status"] = "TERMINATED"
            vm.resource["lastStopTimestamp"] = timestamp()

    def booted(self, instance: Instance, machine: Any) -> None:
        """The instance's addresses are its machine's."""
        with self._lock:
            vm = self._vms.get(instance.id.removeprefix(ID_PREFIX))
            if vm is None:
                return
            nic = vm.resource["networkInterfaces"][0]
            if machine.private_address:
                nic["networkIP"] = machine.private_address
            for config in nic.get("accessConfigs", []):
                if machine.public_address:
                    config["natIP"] = machine.public_address

    def image_env(self, instance: Instance) -> dict[str, str]:
        """What the instance's image sets: the sandbox's (its endpoints, its metadata server)."""
        return self.sandbox.image_env(f"gce-{instance.id.removeprefix(ID_PREFIX)}")

    # -- fault injection ------------------------------------------------------------------------------------
    def refuse_spot(self, code: str = "ZONE_RESOURCE_POOL_EXHAUSTED", times: int = 1) -> None:
        """Makes the next ``times`` SPOT inserts fail as a stock-out does: the insert's operation ends
        with ``error.errors[{code}]`` and HTTP 503, which ``operation.result()`` raises."""
        with self._lock:
            self._refuse_spot.extend([code] * times)

    def preempt(self, name: str, action: str | None = None) -> None:
        """Google ends instance ``name`` (a preemption, a host failure): its machine ends, then the
        instance is deleted or ``TERMINATED`` as its ``instanceTerminationAction`` (or ``action``) says.
        ``preempt(name, "DELETE")`` is a VM deleted mid-work."""
        with self._lock:
            vm = self._vms.get(name)
            if vm is None:
                raise KeyError(f"no instance {name!r} in the sandbox Compute Engine")
        self._end_by_google(vm, "compute.instances.preempted", action)

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
            self._operation(vm.zone, operation_type, vm.resource["selfLink"], vm.resource["id"], user="system")
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
        )

    def _remove(self, vm: VM) -> None:
        self._vms.pop(vm.name, None)
        self.sandbox.metadata.forget(vm.key)

    def _link(self, *parts: str) -> str:
        return BASE + "projects/" + self.project + "/" + "/".join(parts)

    def _check_project(self, project: str) -> None:
        if project not in (self.project, self.sandbox.project_number):  # Google takes either
            raise GoogleError(404, f"The resource 'projects/{project}' was not found", reason="notFound")

    def _check_zone(self, project: str, zone: str) -> None:
        self._check_project(project)
        if zone not in self.sandbox.zones:
            raise GoogleError(404, f"The resource 'projects/{project}/zones/{zone}' was not found", reason="notFound")

    def _offered(self, zone: str, family: str) -> bool:
        zones = self.sandbox.zones
        return family not in GPU_FAMILIES or len(zones) == 1 or zone != zones[-1]

    def _operation(
        self,
        scope: str | None,
        operation_type: str,
        target: str,
        target_id: str,
        *,
        user: str,
        error: tuple[int, str, str, str] | None = None,
    ) -> dict[str, Any]:
        """A finished operation (``scope``: a zone, or None for global); ``error``: (HTTP status,
        HTTP message, code, message)."""
        now = time.time()
        name = f"operation-{int(now * 1000)}-{secrets.token_hex(6)}-{secrets.token_hex(4)}-{secrets.token_hex(4)}"
        path = f"zones/{scope}/operations/{name}" if scope else f"global/operations/{name}"
        operation: dict[str, Any] = {
            "kind": "compute#operation",
            "id": str(secrets.randbits(63)),
            "name": name,
            "operationType": operation_type,
            "targetLink": target,
            "targetId": target_id,
            "status": "DONE",
            "user": user,
            "progress": 100,
            "insertTime": timestamp(now),
            "startTime": timestamp(now),
            "endTime": timestamp(now),
            "selfLink": self._link(path),
        }
        if scope:
            operation["zone"] = self._link("zones", scope)
        if error is not None:
            status, http_message, code, message = error
            operation["error"] = {"errors": [{"code": code, "message": message}]}
            operation["httpErrorStatusCode"] = status
            operation["httpErrorMessage"] = http_message
        with self._lock:
            self._operations[path] = operation
            while len(self._operations) > OPERATIONS_KEPT:
                self._operations.pop(next(iter(self._operations)))
        return operation

    # -- routes -----------------------------------------------------------------------------------------------
    def _register_routes(self, api: GoogleAPI) -> None:
        p = "/compute/v1/projects/{project}"
        z = p + "/zones/{zone}"
        routes: list[tuple[str, list[str], str, Callable[..., Any]]] = [
            (p + "/zones", ["GET"], "compute.zones.list", self.list_zones),
            (z, ["GET"], "compute.zones.get", self.get_zone),
            (p + "/regions/{region}", ["GET"], "compute.regions.get", self.get_region),
            (p + "/aggregated/machineTypes", ["GET"], "compute.machineTypes.aggregatedList", self.aggregated_machine_types),
            (z + "/machineTypes", ["GET"], "compute.machineTypes.list", self.list_machine_types),
            (z + "/machineTypes/{machine_type}", ["GET"], "compute.machineTypes.get", self.get_machine_type),
            (z + "/acceleratorTypes", ["GET"], "compute.acceleratorTypes.list", self.list_accelerator_types),
            (z + "/acceleratorTypes/{accelerator_type}", ["GET"], "compute.acceleratorTypes.get", self.get_accelerator_type),
            (p + "/global/images/family/{family}", ["GET"], "compute.images.getFromFamily", self.image_from_family),
            (p + "/global/images/{image}", ["GET"], "compute.images.get", self.get_image),
            (p + "/aggregated/instances", ["GET"], "compute.instances.aggregatedList", self.aggregated_instances),
            (z + "/instances", ["GET"], "compute.instances.list", self.list_instances),
            (z + "/instances", ["POST"], "compute.instances.insert", self.insert_instance),
            (z + "/instances/{instance}/setLabels", ["POST"], "compute.instances.setLabels", self.set_labels),
            (z + "/instances/{instance}/setMetadata", ["POST"], "compute.instances.setMetadata", self.set_metadata),
            (z + "/instances/{instance}/stop", ["POST"], "compute.instances.stop", self.stop_instance),
            (z + "/instances/{instance}", ["GET"], "compute.instances.get", self.get_instance),
            (z + "/instances/{instance}", ["DELETE"], "compute.instances.delete", self.delete_instance),
            (z + "/operations/{operation}/wait", ["POST"], "compute.zoneOperations.wait", self.get_zone_operation),
            (z + "/operations/{operation}", ["GET"], "compute.zoneOperations.get", self.get_zone_operation),
            (z + "/operations", ["GET"], "compute.zoneOperations.list", self.list_zone_operations),
            (p + "/global/operations/{operation}/wait", ["POST"], "compute.globalOperations.wait", self.get_global_operation),
            (p + "/global/operations/{operation}", ["GET"], "compute.globalOperations.get", self.get_global_operation),
            (p + "/global/firewalls", ["GET"], "compute.firewalls.list", self.list_firewalls),
            (p + "/global/firewalls", ["POST"], "compute.firewalls.insert", self.insert_firewall),
            (p + "/global/firewalls/{firewall}", ["GET"], "compute.firewalls.get", self.get_firewall),
            (p + "/global/firewalls/{firewall}", ["PATCH"], "compute.firewalls.patch", self.patch_firewall),
            (p + "/global/firewalls/{firewall}", ["DELETE"], "compute.firewalls.delete", self.delete_firewall),
            (p + "/global/networks/{network}", ["GET"], "compute.networks.get", self.get_network),
            (p + "/regions/{region}/subnetworks/{subnetwork}", ["GET"], "compute.subnetworks.get", self.get_subnetwork),
        ]
        for path, methods, name, handler in routes:
            api.route(path, methods, name)(handler)

    # -- zones and regions ----------------------------------------------------------------------------------
    def _zone(self, zone: str) -> dict[str, Any]:
        return {
            "kind": "compute#zone",
            "id": numeric_id("zone", zone),
            "creationTimestamp": "1969-12-31T16:00:00.000-08:00",
            "name": zone,
            "description": zone,
            "status": "UP",
            "region": self._link("regions", self.sandbox.region),
            "selfLink": self._link("zones", zone),
            "availableCpuPlatforms": sorted(set(CPU_PLATFORMS.values())),
            "supportsPzs": False,
        }

    def list_zones(self, request: Request, project: str) -> dict[str, Any]:
        self._check_project(project)
        items = filter_items([self._zone(zone) for zone in self.sandbox.zones], request)
        return page(items, request, "compute#zoneList", self._link("zones"))

    def get_zone(self, request: Request, project: str, zone: str) -> dict[str, Any]:
        self._check_zone(project, zone)
        return self._zone(zone)

    def get_region(self, request: Request, project: str, region: str) -> dict[str, Any]:
        self._check_project(project)
        if region != self.sandbox.region:
            raise GoogleError(404, f"The resource 'projects/{project}/regions/{region}' was not found", reason="notFound")
        with self._lock:
            live = [vm for vm in self._vms.values() if vm.resource["status"] != "TERMINATED"]

        def cpus(vm: VM) -> int:
            return MACHINE_TYPES[last_segment(vm.resource["machineType"])].cpus

        def gpus(name: str) -> int:
            return sum(
                a["acceleratorCount"]
                for vm in live
                for a in vm.resource.get("guestAccelerators", [])
                if last_segment(a["acceleratorType"]) == name
            )

        quotas = [
            ("CPUS", 2400, sum(cpus(vm) for vm in live if not vm.resource["scheduling"]["preemptible"])),
            ("PREEMPTIBLE_CPUS", 2400, sum(cpus(vm) for vm in live if vm.resource["scheduling"]["preemptible"])),
            ("INSTANCES", 6000, len(live)),
            ("IN_USE_ADDRESSES", 600, sum(1 for vm in live if vm.resource["networkInterfaces"][0].get("accessConfigs"))),
            *((quota, 16, gpus(name)) for name, quota in GPU_QUOTAS.items()),
        ]
        return {
            "kind": "compute#region",
            "id": numeric_id("region", region),
            "creationTimestamp": "1969-12-31T16:00:00.000-08:00",
            "name": region,
            "description": region,
            "status": "UP",
            "zones": [self._link("zones", zone) for zone in self.sandbox.zones],
            "quotas": [{"metric": metric, "limit": limit, "usage": usage} for metric, limit, usage in quotas],
            "selfLink": self._link("regions", region),
            "supportsPzs": False,
        }

    # -- machine and accelerator types ------------------------------------------------------------------------
    def _machine_type(self, shape: MachineShape, zone: str) -> dict[str, Any]:
        gb = shape.memory_mb / 1024
        description = (
            f"{shape.cpus} vCPU{'s' if shape.cpus > 1 else ''}, {gb:g} GB RAM"
            if not shape.shared
            else f"Efficient Instance, {shape.cpus} vCPU (1/{8 // shape.cpus if shape.cpus < 8 else 1} shared physical core) "
            f"and {gb:g} GB RAM"
        )
        resource: dict[str, Any] = {
            "kind": "compute#machineType",
            "id": numeric_id("machineType", shape.name),
            "creationTimestamp": "1969-12-31T16:00:00.000-08:00",
            "name": shape.name,
            "description": description,
            "guestCpus": shape.cpus,
            "memoryMb": shape.memory_mb,
            "imageSpaceGb": 0,
            "maximumPersistentDisks": 16 if shape.shared else 128,
            "maximumPersistentDisksSizeGb": "3072" if shape.shared else "263168",
            "zone": zone,
            "selfLink": self._link("zones", zone, "machineTypes", shape.name),
            "isSharedCpu": shape.shared,
            "architecture": "ARM64" if shape.arm else "X86_64",
        }
        if shape.gpu:
            resource["accelerators"] = [{"guestAcceleratorType": shape.gpu[0], "guestAcceleratorCount": shape.gpu[1]}]
        return resource

    def _machine_types(self, zone: str) -> list[dict[str, Any]]:
        return [self._machine_type(shape, zone) for shape in MACHINE_TYPES.values() if self._offered(zone, shape.family)]

    def list_machine_types(self, request: Request, project: str, zone: str) -> dict[str, Any]:
        self._check_zone(project, zone)
        return page(
            filter_items(self._machine_types(zone), request), request, "compute#machineTypeList", self._link("zones", zone, "machineTypes")
        )

    def aggregated_machine_types(self, request: Request, project: str) -> dict[str, Any]:
        self._check_project(project)
        scoped = {zone: filter_items(self._machine_types(zone), request) for zone in self.sandbox.zones}
        return aggregated(scoped, "machineTypes", "compute#machineTypeAggregatedList", self._link("aggregated/machineTypes"))

    def get_machine_type(self, request: Request, project: str, zone: str, machine_type: str) -> dict[str, Any]:
        self._check_zone(project, zone)
        shape = MACHINE_TYPES.get(machine_type)
        if shape is None or not self._offered(zone, shape.family):
            raise GoogleError(
                404, f"The resource 'projects/{project}/zones/{zone}/machineTypes/{machine_type}' was not found", reason="notFound"
            )
        return self._machine_type(shape, zone)

    def _accelerator_type(self, name: str, zone: str) -> dict[str, Any]:
        description, most, _ = ACCELERATORS[name]
        return {
            "kind": "compute#acceleratorType",
            "id": numeric_id("acceleratorType", name),
            "creationTimestamp": "1969-12-31T16:00:00.000-08:00",
            "name": name,
            "description": description,
            "zone": self._link("zones", zone),
            "maximumCardsPerInstance": most,
            "selfLink": self._link("zones", zone, "acceleratorTypes", name),
        }

    def _accelerator_offered(self, name: str, zone: str) -> bool:
        return name in ACCELERATORS and all(self._offered(zone, family) for family in ACCELERATORS[name][2])

    def list_accelerator_types(self, request: Request, project: str, zone: str) -> dict[str, Any]:
        self._check_zone(project, zone)
        items = [self._accelerator_type(name, zone) for name in ACCELERATORS if self._accelerator_offered(name, zone)]
        return page(filter_items(items, request), request, "compute#acceleratorTypeList", self._link("zones", zone, "acceleratorTypes"))

    def get_accelerator_type(self, request: Request, project: str, zone: str, accelerator_type: str) -> dict[str, Any]:
        self._check_zone(project, zone)
        if not self._accelerator_offered(accelerator_type, zone):
            raise GoogleError(
                404, f"The resource 'projects/{project}/zones/{zone}/acceleratorTypes/{accelerator_type}' was not found", reason="notFound"
            )
        return self._accelerator_type(accelerator_type, zone)

    # -- images -----------------------------------------------------------------------------------------------
    @staticmethod
    def _image(project: str, family: str) -> dict[str, Any]:
        name, architecture = IMAGES[(project, family)]
        return {
            "kind": "compute#image",
            "id": numeric_id("image", project, name),
            "creationTimestamp": "2026-11-10T12:00:00.000-08:00",
            "name": name,
            "description": f"{family}, {architecture.lower()} built on {name.rpartition('-v')[2]}",
            "sourceType": "RAW",
            "status": "READY",
            "archiveSizeBytes": "1234567890",
            "diskSizeGb": "10",
            "licenses": [f"{BASE}projects/{project}/global/licenses/{family.rsplit('-', 1)[0]}"],
            "family": family,
            "selfLink": f"{BASE}projects/{project}/global/images/{name}",
            "labelFingerprint": fingerprint({}),
            "guestOsFeatures": [{"type": "UEFI_COMPATIBLE"}, {"type": "VIRTIO_SCSI_MULTIQUEUE"}, {"type": "GVNIC"}],
            "storageLocations": ["eu", "us", "asia"],
            "architecture": architecture,
        }

    def image_from_family(self, request: Request, project: str, family: str) -> dict[str, Any]:
        if (project, family) not in IMAGES:
            raise GoogleError(404, f"The resource 'projects/{project}/global/images/family/{family}' was not found", reason="notFound")
        return self._image(project, family)

    def get_image(self, request: Request, project: str, image: str) -> dict[str, Any]:
        for (owner, family), (name, _) in IMAGES.items():
            if owner == project and name == image:
                return self._image(owner, family)
        raise GoogleError(404, f"The resource 'projects/{project}/global/images/{image}' was not found", reason="notFound")

    def _resolve_image(self, source: str) -> dict[str, Any] | None:
        """The image ``source`` names (a URL or ``projects/P/global/images[/family]/N``), or None."""
        found = re.search(r"projects/([^/]+)/global/images/(family/)?([^/]+)$", source)
        if found is None:
            return None
        project, is_family, name = found.groups()
        if is_family:
            return self._image(project, name) if (project, name) in IMAGES else None
        return next(
            (self._image(owner, family) for (owner, family), (image, _) in IMAGES.items() if owner == project and image == name), None
        )

    # -- instances ---------------------------------------------------------------------------------------------
    def insert_instance(self, request: Request, project: str, zone: str) -> dict[str, Any]:
        self._check_zone(project, zone)
        spec = body(request)
        user = principal_email(request)
        resource, _shape = self._new_instance(project, zone, spec)
        name = resource["name"]
        link = resource["selfLink"]
        with self._lock:
            if name in self._vms:
                raise GoogleError(
                    409, f"The resource 'projects/{project}/zones/{zone}/instances/{name}' already exists", reason="alreadyExists"
                )
            if resource["scheduling"].get("provisioningModel") == "SPOT" and self._refuse_spot:
                code = self._refuse_spot.pop(0)
                error = (503, "SERVICE UNAVAILABLE", code, STOCK_OUT.format(zone=f"projects/{project}/zones/{zone}"))
                return self._operation(zone, "insert", link, resource["id"], user=user, error=error)
            vm = VM(resource, zone, booting=True)
            self._vms[name] = vm
            operation = self._operation(zone, "insert", link, resource["id"], user=user)
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
        return operation

    def _new_instance(self, project: str, zone: str, spec: dict[str, Any]) -> tuple[dict[str, Any], MachineShape]:
        """The instance ``spec`` asks for, as Compute Engine completes it; invalid requests raise as it does."""
        name = spec.get("name", "")
        if not re.fullmatch(NAME_PATTERN, name or ""):
            raise invalid("resource.name", name, f"Must be a match of regex '{NAME_PATTERN}'")
        machine_url = spec.get("machineType", "")
        found = re.search(r"(?:^|/)zones/([^/]+)/machineTypes/([^/]+)$", machine_url)
        if found is None:
            raise invalid("resource.machineType", machine_url, "Must be a URL to a valid Compute resource of the correct type.")
        if found.group(1) != zone:
            raise invalid(
                "resource.machineType", machine_url, f"Machine type is in zone '{found.group(1)}', not in the instance's zone '{zone}'."
            )
        shape = MACHINE_TYPES.get(found.group(2))
        if shape is None or not self._offered(zone, shape.family):
            raise invalid(
                "resource.machineType", machine_url, f"Machine type with name '{found.group(2)}' does not exist in zone '{zone}'."
            )
        labels = spec.get("labels") or {}
        check_labels(labels, "resource.labels")
        items = (spec.get("metadata") or {}).get("items") or []
        check_metadata(items, "resource.metadata")
        scheduling = self._scheduling(spec.get("scheduling") or {})
        accelerators = self._accelerators(spec.get("guestAccelerators") or [], shape, zone, scheduling)
        disks = self._disks(spec.get("disks") or [], name, zone, shape)
        accounts = []
        for index, account in enumerate(spec.get("serviceAccounts") or []):
            email = account.get("email", "")
            if email == "default":
                email = f"{self.sandbox.project_number}-compute@developer.gserviceaccount.com"
            if email not in self.sandbox.service_accounts:
                raise invalid(
                    f"resource.serviceAccounts[{index}].email",
                    email,
                    f"The user does not have access to service account '{email}'. User: '…'. Ask a project owner to grant you the "
                    "iam.serviceAccountUser role on the service account",
                )
            accounts.append({"email": email, "scopes": account.get("scopes") or ["https://www.googleapis.com/auth/cloud-platform"]})
        interfaces = self._interfaces(spec.get("networkInterfaces") or [{}])
        tags = (spec.get("tags") or {}).get("items") or []
        metadata = (
            {"kind": "compute#metadata", "fingerprint": fingerprint(items), "items": items}
            if items
            else {"kind": "compute#metadata", "fingerprint": fingerprint([])}
        )
        resource: dict[str, Any] = {
            "kind": "compute#instance",
            "id": str(secrets.randbits(63)),
            "creationTimestamp": timestamp(),
            "name": name,
            "description": spec.get("description", ""),
            "tags": {"items": tags, "fingerprint": fingerprint(tags)} if tags else {"fingerprint": fingerprint([])},
            "machineType": self._link("zones", zone, "machineTypes", shape.name),
            "status": "STAGING",
            "zone": self._link("zones", zone),
            "canIpForward": bool(spec.get("canIpForward", False)),
            "networkInterfaces": interfaces,
            "disks": disks,
            "metadata": metadata,
            "serviceAccounts": accounts,
            "selfLink": self._link("zones", zone, "instances", name),
            "scheduling": scheduling,
            "cpuPlatform": CPU_PLATFORMS[shape.family],
            "labels": dict(labels),
            "labelFingerprint": fingerprint(labels),
            "startRestricted": False,
            "deletionProtection": False,
            "fingerprint": fingerprint(name),
        }
        if accelerators:
            resource["guestAccelerators"] = accelerators
        if not labels:
            del resource["labels"]
        return resource, shape

    @staticmethod
    def _scheduling(spec: dict[str, Any]) -> dict[str, Any]:
        model = spec.get("provisioningModel") or ("SPOT" if spec.get("preemptible") else "STANDARD")
        if model not in ("SPOT", "STANDARD"):
            raise invalid("resource.scheduling.provisioningModel", model, "Must be one of [SPOT, STANDARD].")
        spot = model == "SPOT"
        limited = bool(spec.get("maxRunDuration") or spec.get("terminationTime"))
        action = spec.get("instanceTerminationAction")
        if action not in (None, "STOP", "DELETE"):
            raise invalid("resource.scheduling.instanceTerminationAction", action, "Must be one of [DELETE, STOP].")
        if action and not (spot or limited):
            raise invalid(
                "resource.scheduling.instanceTerminationAction",
                action,
                "Instance termination action can only be specified for Spot VMs, or for VMs with a max run duration or a termination time.",
            )
        if spot and spec.get("automaticRestart"):
            raise invalid("resource.scheduling.automaticRestart", "true", "Spot VMs cannot be restarted automatically.")
        # Spot VMs default to TERMINATE; a GPU VM must ask for it (checked with its accelerators).
        maintenance = spec.get("onHostMaintenance") or ("TERMINATE" if spot else "MIGRATE")
        if maintenance == "MIGRATE" and spot:
            raise invalid("resource.scheduling.onHostMaintenance", maintenance, "Spot VMs cannot be live migrated.")
        scheduling: dict[str, Any] = {
            "onHostMaintenance": maintenance,
            "automaticRestart": False if spot else spec.get("automaticRestart", True),
            "preemptible": spot,
            "provisioningModel": model,
        }
        if action or spot:
            scheduling["instanceTerminationAction"] = action or "STOP"
        if spec.get("maxRunDuration"):
            seconds = int(spec["maxRunDuration"].get("seconds", 0))
            if not MAX_RUN_DURATION[0] <= seconds <= MAX_RUN_DURATION[1]:
                raise invalid(
                    "resource.scheduling.maxRunDuration.seconds",
                    str(seconds),
                    f"Must be between {MAX_RUN_DURATION[0]} and {MAX_RUN_DURATION[1]} seconds.",
                )
            scheduling["maxRunDuration"] = {"seconds": str(seconds)}
        return scheduling

    def _accelerators(
        self, wanted: list[dict[str, Any]], shape: MachineShape, zone: str, scheduling: dict[str, Any]
    ) -> list[dict[str, Any]]:
        attached = []
        for index, accelerator in enumerate(wanted):
            url = accelerator.get("acceleratorType", "")
            name = last_segment(url)
            count = int(accelerator.get("acceleratorCount", 0))
            if not self._accelerator_offered(name, zone):
                raise invalid(
                    f"resource.guestAccelerators[{index}].acceleratorType",
                    url,
                    f"Accelerator type with name '{name}' does not exist in zone '{zone}'.",
                )
            description, most, families = ACCELERATORS[name]
            if shape.gpu is not None:
                if (name, count) != shape.gpu:
                    raise invalid(
                        f"resource.guestAccelerators[{index}]",
                        url,
                        f"Machine type '{shape.name}' comes with {shape.gpu[1]} {shape.gpu[0]}; it takes no other accelerators.",
                    )
            elif shape.family not in families:
                raise invalid(
                    f"resource.guestAccelerators[{index}].acceleratorType",
                    url,
                    f"{description} GPUs attach only to {', '.join(families)} machine types, not '{shape.name}'.",
                )
            if not 1 <= count <= most:
                raise invalid(f"resource.guestAccelerators[{index}].acceleratorCount", str(count), f"Must be between 1 and {most}.")
            attached.append({"acceleratorType": self._link("zones", zone, "acceleratorTypes", name), "acceleratorCount": count})
        if shape.gpu is not None and not attached:  # a2/g2: the GPUs come with the machine type
            attached = [{"acceleratorType": self._link("zones", zone, "acceleratorTypes", shape.gpu[0]), "acceleratorCount": shape.gpu[1]}]
        if attached and scheduling["onHostMaintenance"] != "TERMINATE":
            raise GoogleError(
                400,
                "Invalid resource usage: 'Instances with guest accelerators do not support live migration.'",
                reason="invalidResourceUsage",
            )
        return attached

    def _disks(self, wanted: list[dict[str, Any]], name: str, zone: str, shape: MachineShape) -> list[dict[str, Any]]:
        boot = [disk for disk in wanted if disk.get("boot")]
        if len(boot) != 1:
            raise invalid("resource.disks", "", "An instance must have exactly one boot disk.")
        disks = []
        for index, disk in enumerate(wanted):
            params = disk.get("initializeParams") or {}
            source = params.get("sourceImage", "")
            image = self._resolve_image(source) if source else None
            if disk.get("boot") and image is None:
                raise GoogleError(404, f"The resource '{source or 'sourceImage'}' was not found", reason="notFound")
            if disk.get("boot") and image is not None and image["architecture"] != ("ARM64" if shape.arm else "X86_64"):
                machine_arch = "ARM64" if shape.arm else "X86_64"
                raise GoogleError(
                    400,
                    f"Invalid resource usage: 'Requested boot disk architecture ({image['architecture']}) is not compatible with "
                    f"machine type architecture ({machine_arch}).'",
                    reason="invalidResourceUsage",
                )
            disk_type = last_segment(params.get("diskType") or "pd-standard")
            if disk_type not in DISK_TYPES:
                raise GoogleError(
                    404, f"The resource 'projects/{self.project}/zones/{zone}/diskTypes/{disk_type}' was not found", reason="notFound"
                )
            if (shape.family in HYPERDISK_ONLY) != disk_type.startswith("hyperdisk-"):
                raise GoogleError(
                    400,
                    f"Invalid resource usage: 'Machine type {shape.name} does not support disk type {disk_type}.'",
                    reason="invalidResourceUsage",
                )
            disk_name = params.get("diskName") or (name if disk.get("boot") else f"{name}-{index}")
            size = str(params.get("diskSizeGb") or (image or {}).get("diskSizeGb", "10"))
            disks.append(
                {
                    "kind": "compute#attachedDisk",
                    "type": "PERSISTENT",
                    "mode": "READ_WRITE",
                    "source": self._link("zones", zone, "disks", disk_name),
                    "deviceName": disk.get("deviceName") or disk_name,
                    "index": index,
                    "boot": bool(disk.get("boot")),
                    "autoDelete": bool(disk.get("autoDelete", False)),
                    "interface": "SCSI",
                    "diskSizeGb": size,
                    **({"licenses": image["licenses"], "architecture": image["architecture"]} if image else {}),
                }
            )
        return disks

    def _interfaces(self, wanted: list[dict[str, Any]]) -> list[dict[str, Any]]:
        interfaces = []
        for index, nic in enumerate(wanted):
            network = last_segment(nic.get("network") or "default")
            subnetwork = last_segment(nic.get("subnetwork") or "default")
            if network != "default":
                raise GoogleError(404, f"The resource 'projects/{self.project}/global/networks/{network}' was not found", reason="notFound")
            if subnetwork != "default":
                raise GoogleError(
                    404,
                    f"The resource 'projects/{self.project}/regions/{self.sandbox.region}/subnetworks/{subnetwork}' was not found",
                    reason="notFound",
                )
            with self._lock:
                address = str(next(self._addresses))
            interface: dict[str, Any] = {
                "kind": "compute#networkInterface",
                "network": self._link("global/networks/default"),
                "subnetwork": self._link("regions", self.sandbox.region, "subnetworks/default"),
                "networkIP": address,
                "name": f"nic{index}",
                "fingerprint": fingerprint(address),
                "stackType": "IPV4_ONLY",
            }
            configs = nic.get("accessConfigs") or []
            if configs:
                interface["accessConfigs"] = [
                    {
                        "kind": "compute#accessConfig",
                        "type": "ONE_TO_ONE_NAT",
                        "name": config.get("name", "External NAT"),
                        "natIP": f"34.{secrets.randbelow(256)}.{secrets.randbelow(256)}.{1 + secrets.randbelow(254)}",
                        "networkTier": config.get("networkTier", "PREMIUM"),
                    }
                    for config in configs
                ]
            interfaces.append(interface)
        return interfaces

    def _vm(self, project: str, zone: str, name: str) -> VM:
        self._check_zone(project, zone)
        with self._lock:
            vm = self._vms.get(name)
        if vm is None or vm.zone != zone:
            raise GoogleError(404, f"The resource 'projects/{project}/zones/{zone}/instances/{name}' was not found", reason="notFound")
        return vm

    def get_instance(self, request: Request, project: str, zone: str, instance: str) -> dict[str, Any]:
        vm = self._vm(project, zone, instance)
        with self._lock:
            return json.loads(json.dumps(vm.resource))

    def _zone_instances(self, zone: str, request: Request) -> list[dict[str, Any]]:
        with self._lock:
            resources = [json.loads(json.dumps(vm.resource)) for vm in self._vms.values() if vm.zone == zone]
        return filter_items(resources, request)

    def list_instances(self, request: Request, project: str, zone: str) -> dict[str, Any]:
        self._check_zone(project, zone)
        return page(self._zone_instances(zone, request), request, "compute#instanceList", self._link("zones", zone, "instances"))

    def aggregated_instances(self, request: Request, project: str) -> dict[str, Any]:
        self._check_project(project)
        scoped = {zone: self._zone_instances(zone, request) for zone in self.sandbox.zones}
        return aggregated(scoped, "instances", "compute#instanceAggregatedList", self._link("aggregated/instances"))

    def delete_instance(self, request: Request, project: str, zone: str, instance: str) -> dict[str, Any]:
        vm = self._vm(project, zone, instance)
        operation = self._operation(zone, "delete", vm.resource["selfLink"], vm.resource["id"], user=principal_email(request))
        self.delete(instance)
        return operation

    def stop_instance(self, request: Request, project: str, zone: str, instance: str) -> dict[str, Any]:
        vm = self._vm(project, zone, instance)
        with self._lock:
            operation = self._operation(zone, "stop", vm.resource["selfLink"], vm.resource["id"], user=principal_email(request))
            if vm.resource["status"] not in ("STOPPING", "TERMINATED"):
                vm.stopping = True
                self._shut_down(vm)
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
            return self._operation(zone, "setLabels", vm.resource["selfLink"], vm.resource["id"], user=principal_email(request))

    def set_metadata(self, request: Request, project: str, zone: str, instance: str) -> dict[str, Any]:
        vm = self._vm(project, zone, instance)
        spec = body(request)
        items = spec.get("items") or []
        check_metadata(items, "metadata")
        with self._lock:
            if spec.get("fingerprint") != vm.resource["metadata"]["fingerprint"]:
                raise GoogleError(412, "Supplied fingerprint does not match current metadata fingerprint.", reason="conditionNotMet")
            vm.resource["metadata"] = {"kind": "compute#metadata", "fingerprint": fingerprint(items), **({"items": items} if items else {})}
            return self._operation(zone, "setMetadata", vm.resource["selfLink"], vm.resource["id"], user=principal_email(request))

    def _facts(self, name: str) -> dict[str, Any] | None:
        """What the instance's metadata server answers, by metadata path, read per request (live
        attributes, addresses and preemption); the server adds the project and the service account."""
        with self._lock:
            vm = self._vms.get(name)
            if vm is None:
                return None
            resource = vm.resource
            nic = resource["networkInterfaces"][0]
            facts: dict[str, Any] = {
                "instance/id": resource["id"],
                "instance/name": name,
                "instance/hostname": f"{name}.{vm.zone}.c.{self.project}.internal",
                "instance/zone": f"projects/{self.sandbox.project_number}/zones/{vm.zone}",
                "instance/machine-type": f"projects/{self.sandbox.project_number}/machineTypes/{last_segment(resource['machineType'])}",
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

    # -- operations ---------------------------------------------------------------------------------------------
    def _get_operation(self, project: str, path: str) -> dict[str, Any]:
        return self._lookup(self._operations, project, path, path)

    def _lookup(self, store: dict[str, dict[str, Any]], project: str, key: str, path: str) -> dict[str, Any]:
        """``store[key]`` of this project, or Google's 404 for ``projects/<project>/<path>``."""
        self._check_project(project)
        with self._lock:
            found = store.get(key)
        if found is None:
            raise GoogleError(404, f"The resource 'projects/{project}/{path}' was not found", reason="notFound")
        return found

    def get_zone_operation(self, request: Request, project: str, zone: str, operation: str) -> dict[str, Any]:
        self._check_zone(project, zone)
        return self._get_operation(project, f"zones/{zone}/operations/{operation}")

    def list_zone_operations(self, request: Request, project: str, zone: str) -> dict[str, Any]:
        self._check_zone(project, zone)
        prefix = f"zones/{zone}/operations/"
        with self._lock:
            items = [operation for path, operation in self._operations.items() if path.startswith(prefix)]
        return page(filter_items(items, request), request, "compute#operationList", self._link("zones", zone, "operations"))

    def get_global_operation(self, request: Request, project: str, operation: str) -> dict[str, Any]:
        return self._get_operation(project, f"global/operations/{operation}")

    # -- firewalls ------------------------------------------------------------------------------------------------
    def _firewall(self, project: str, name: str) -> dict[str, Any]:
        return self._lookup(self._firewalls, project, name, f"global/firewalls/{name}")

    def _check_firewall(self, rule: dict[str, Any]) -> None:
        if not NAME.fullmatch(rule.get("name", "")):
            raise invalid("resource.name", rule.get("name", ""), f"Must be a match of regex '{NAME.pattern}'")
        if last_segment(rule.get("network", "default")) != "default":
            raise GoogleError(
                404,
                f"The resource 'projects/{self.project}/global/networks/{last_segment(rule['network'])}' was not found",
                reason="notFound",
            )
        if rule.get("direction", "INGRESS") not in ("INGRESS", "EGRESS"):
            raise invalid("resource.direction", rule["direction"], "Must be one of [EGRESS, INGRESS].")
        if bool(rule.get("allowed")) == bool(rule.get("denied")):
            raise invalid("resource", "", "Exactly one of 'allowed' or 'denied' must be specified.")
        for index, entry in enumerate(rule.get("allowed") or rule.get("denied") or []):
            protocol = entry.get("IPProtocol", "")
            if protocol not in ("tcp", "udp", "icmp", "esp", "ah", "sctp", "ipip", "all") and not protocol.isdigit():
                raise invalid(f"resource.allowed[{index}].IPProtocol", protocol, "Must be a protocol name or number.")
            for port in entry.get("ports") or []:
                if not re.fullmatch(r"\d{1,5}(-\d{1,5})?", str(port)) or any(int(part) > 65535 for part in str(port).split("-")):
                    raise invalid(
                        f"resource.allowed[{index}].ports", str(port), "Must be a port or a port range, e.g. '8786' or '8786-8787'."
                    )
        for index, source in enumerate(rule.get("sourceRanges") or []):
            try:
                ipaddress.ip_network(source, strict=False)
            except ValueError:
                raise invalid(f"resource.sourceRanges[{index}]", source, "Must be a valid IPV4 or IPV6 CIDR range.") from None
        for index, tag in enumerate(rule.get("targetTags") or []):
            if not NAME.fullmatch(tag):
                raise invalid(f"resource.targetTags[{index}]", tag, f"Must be a match of regex '{NAME.pattern}'")

    def _complete_firewall(self, rule: dict[str, Any], rule_id: str, created: str) -> dict[str, Any]:
        rule = {key: value for key, value in rule.items() if value not in (None, [], "")}
        rule.update(
            {
                "kind": "compute#firewall",
                "id": rule_id,
                "creationTimestamp": created,
                "network": self._link("global/networks", last_segment(rule.get("network", "default"))),
                "priority": int(rule.get("priority", 1000)),
                "direction": rule.get("direction", "INGRESS"),
                "disabled": bool(rule.get("disabled", False)),
                "logConfig": rule.get("logConfig") or {"enable": False},
                "selfLink": self._link("global/firewalls", rule["name"]),
            }
        )
        if rule["direction"] == "INGRESS" and not (rule.get("sourceRanges") or rule.get("sourceTags") or rule.get("sourceServiceAccounts")):
            rule["sourceRanges"] = ["0.0.0.0/0"]  # Google's default for an ingress rule with no source
        return rule

    def list_firewalls(self, request: Request, project: str) -> dict[str, Any]:
        self._check_project(project)
        with self._lock:
            items = [dict(rule) for rule in self._firewalls.values()]
        return page(filter_items(items, request), request, "compute#firewallList", self._link("global/firewalls"))

    def get_firewall(self, request: Request, project: str, firewall: str) -> dict[str, Any]:
        return dict(self._firewall(project, firewall))

    def insert_firewall(self, request: Request, project: str) -> dict[str, Any]:
        self._check_project(project)
        spec = body(request)
        self._check_firewall(spec)
        rule = self._complete_firewall(spec, str(secrets.randbits(63)), timestamp())
        with self._lock:
            if rule["name"] in self._firewalls:
                raise GoogleError(
                    409, f"The resource 'projects/{project}/global/firewalls/{rule['name']}' already exists", reason="alreadyExists"
                )
            self._firewalls[rule["name"]] = rule
        return self._operation(None, "insert", rule["selfLink"], rule["id"], user=principal_email(request))

    def patch_firewall(self, request: Request, project: str, firewall: str) -> dict[str, Any]:
        current = self._firewall(project, firewall)
        patch = body(request)
        if patch.get("name", firewall) != firewall:
            raise invalid("resource.name", patch["name"], "The name of a firewall rule cannot be changed.")
        merged = {**current, **patch}
        if patch.get("allowed"):
            merged.pop("denied", None)
        if patch.get("denied"):
            merged.pop("allowed", None)
        self._check_firewall(merged)
        rule = self._complete_firewall(merged, current["id"], current["creationTimestamp"])
        with self._lock:
            self._firewalls[firewall] = rule
        return self._operation(None, "patch", rule["selfLink"], rule["id"], user=principal_email(request))

    def delete_firewall(self, request: Request, project: str, firewall: str) -> dict[str, Any]:
        rule = self._firewall(project, firewall)
        with self._lock:
            self._firewalls.pop(firewall, None)
        return self._operation(None, "delete", rule["selfLink"], rule["id"], user=principal_email(request))

    # -- the network --------------------------------------------------------------------------------------------------
    def get_network(self, request: Request, project: str, network: str) -> dict[str, Any]:
        self._check_project(project)
        if network != "default":
            raise GoogleError(404, f"The resource 'projects/{project}/global/networks/{network}' was not found", reason="notFound")
        return {
            "kind": "compute#network",
            "id": numeric_id("network", project, network),
            "creationTimestamp": "2026-01-01T00:00:00.000-08:00",
            "name": network,
            "description": "Default network for the project",
            "selfLink": self._link("global/networks", network),
            "autoCreateSubnetworks": True,
            "subnetworks": [self._link("regions", self.sandbox.region, "subnetworks/default")],
            "routingConfig": {"routingMode": "REGIONAL"},
            "networkFirewallPolicyEnforcementOrder": "AFTER_CLASSIC_FIREWALL",
        }

    def get_subnetwork(self, request: Request, project: str, region: str, subnetwork: str) -> dict[str, Any]:
        self._check_project(project)
        if region != self.sandbox.region or subnetwork != "default":
            raise GoogleError(
                404, f"The resource 'projects/{project}/regions/{region}/subnetworks/{subnetwork}' was not found", reason="notFound"
            )
        return {
            "kind": "compute#subnetwork",
            "id": numeric_id("subnetwork", project, region, subnetwork),
            "creationTimestamp": "2026-01-01T00:00:00.000-08:00",
            "name": subnetwork,
            "network": self._link("global/networks/default"),
            "ipCidrRange": "10.128.0.0/20",
            "gatewayAddress": "10.128.0.1",
            "region": self._link("regions", region),
            "selfLink": self._link("regions", region, "subnetworks", subnetwork),
            "privateIpGoogleAccess": False,
            "stackType": "IPV4_ONLY",
            "purpose": "PRIVATE",
            "fingerprint": fingerprint(subnetwork),
        }


# -- Google's conventions ------------------------------------------------------------------------------------------------
def invalid(field_name: str, value: str, why: str) -> GoogleError:
    """Compute Engine's 400 for a bad field: ``Invalid value for field 'resource.name': 'X'. Must …``."""
    return GoogleError(400, f"Invalid value for field '{field_name}': '{value}'. {why}", reason="invalid")


def check_labels(labels: dict[str, str], field_name: str) -> None:
    if len(labels) > 64:
        raise invalid(field_name, "", "A resource can have at most 64 labels.")
    for key, value in labels.items():
        if not LABEL_KEY.fullmatch(key):
            raise invalid(
                field_name,
                "",
                f"Label key '{key}' violates format constraints. The key must start with a lowercase character, can only contain "
                "lowercase letters, numeric characters, underscores and dashes. The key can be at most 63 characters long. "
                "International characters are allowed.",
            )
        if not LABEL_VALUE.fullmatch(str(value)):
            raise invalid(
                field_name,
                "",
                f"Label value '{value}' violates format constraints. The value can only contain lowercase letters, numeric "
                "characters, underscores and dashes. The value can be at most 63 characters long. International characters are allowed.",
            )


def check_metadata(items: list[dict[str, Any]], field_name: str) -> None:
    keys = [item.get("key", "") for item in items]
    if len(set(keys)) != len(keys):
        raise invalid(field_name, "", "Metadata has duplicate keys.")
    total = 0
    for index, item in enumerate(items):
        key, value = item.get("key", ""), item.get("value", "")
        if not re.fullmatch(r"[a-zA-Z0-9-_]{1,128}", key):
            raise invalid(f"{field_name}.items[{index}].key", key, "Must be a match of regex '[a-zA-Z0-9-_]{1,128}'")
        size = len(value.encode())
        if size > MAX_METADATA_VALUE:
            raise invalid(
                f"{field_name}.items[{index}].value",
                f"{value[:20]}…",
                f"Metadata values can be at most {MAX_METADATA_VALUE} bytes; this one has {size}.",
            )
        total += size + len(key)
    if total > MAX_METADATA:
        raise invalid(field_name, "", f"Metadata can be at most {MAX_METADATA} bytes in total; this has {total}.")


def principal_email(request: Request) -> str:
    principal = getattr(request.state, "principal", "") or ""
    return principal.partition(":")[2] or principal


def page(items: list[dict[str, Any]], request: Request, kind: str, link: str) -> dict[str, Any]:
    """One page of ``items`` (``maxResults``: at most and by default 500; ``pageToken``), as Compute Engine lists."""
    chunk, token = page_of(items, request.query_params, default=500, maximum=500, size_key="maxResults")
    answer: dict[str, Any] = {"kind": kind, "id": link.removeprefix(BASE), "selfLink": link}
    if chunk:  # Compute Engine leaves out an empty page's items
        answer["items"] = chunk
    if token:
        answer["nextPageToken"] = token
    return answer


def aggregated(scoped: dict[str, list[dict[str, Any]]], field_name: str, kind: str, link: str) -> dict[str, Any]:
    """An aggregatedList answer: one entry per zone, with Google's warning where a zone has none."""
    items: dict[str, Any] = {}
    for zone, found in scoped.items():
        scope = f"zones/{zone}"
        if found:
            items[scope] = {field_name: found}
        else:
            items[scope] = {
                "warning": {
                    "code": "NO_RESULTS_ON_PAGE",
                    "message": f"There are no results for scope '{scope}' on this page.",
                    "data": [{"key": "scope", "value": scope}],
                }
            }
    return {"kind": kind, "id": link.removeprefix(BASE), "items": items, "selfLink": link}


# -- filters -------------------------------------------------------------------------------------------------------------
REGEX_TERM = re.compile(r"""\s*\(?\s*(?P<field>[\w.-]+)\s+(?P<op>eq|ne)\s+(?P<value>"[^"]*"|'[^']*'|[^\s()]+)\s*\)?\s*""")


def filter_items(items: list[dict[str, Any]], request: Request) -> list[dict[str, Any]]:
    """``items`` that match the request's ``filter``, in Compute Engine's syntax: comparisons
    (``labels.k = "v"``, ``status != TERMINATED``, ``labels.k:*``) joined by spaces, parentheses,
    ``AND``, ``OR``; or regular expressions matching a whole field (``name eq 'vm-.*'``,
    ``(name ne vm-1) (status eq RUNNING)``), which Compute Engine takes instead of comparisons."""
    text = (request.query_params.get("filter") or "").strip()
    if re.search(r"\s(eq|ne)\s", text):
        terms = list(REGEX_TERM.finditer(text))
        if "".join(term.group(0) for term in terms) != text:
            raise invalid("filter", text, "Invalid list filter expression.")
        return [item for item in items if all(regex_matches(item, term) for term in terms)]
    match = compile_filter(text)
    return [item for item in items if match(lambda path, item=item: field_value(item, path))]


def field_value(item: dict[str, Any], path: Sequence[str]) -> Any:
    """A resource's field for a filter: ``labels.k``; booleans as Compute Engine prints them."""
    value: Any = item
    for part in path:
        value = value.get(part) if isinstance(value, dict) else None
    return str(value).lower() if isinstance(value, bool) else value


def regex_matches(item: dict[str, Any], term: re.Match[str]) -> bool:
    value = field_value(item, term.group("field").split("."))
    literal = term.group("value").strip("\"'")
    hit = value is not None and re.fullmatch(literal, str(value)) is not None
    return hit if term.group("op") == "eq" else not hit
