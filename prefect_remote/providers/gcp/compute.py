"""Compute Engine VMs: the gcp machines that accept connections (a Dask cluster's scheduler and
workers), or that Cloud Run cannot shape. A machine is an instance whose name is its id (``vm-…``).

A launch inserts its machines with one ``instances.bulkInsert`` (one request and one operation
however many), booting a stock image family that runs the boot script as its ``startup-script``;
``spot`` is the SPOT provisioning model (deleted when preempted), and ``spot_with_fallback`` inserts
standard VMs where spot capacity is out. A launch that meets a stock-out or a quota error in one
zone is inserted whole in the region's next zone that offers its machine type (unless ``zone`` pins
one), each move logged (:mod:`prefect_remote.providers.capacity`); VMs are listed across the
region's zones. Every VM carries the
network tag ``prefect-remote`` (a firewall rule lets those reach each other on internal IPs) and,
unless ``allow_ingress_from="none"``, the tag of a rule admitting the Dask ports from that source
only. Labels say which launch a VM is of; the raw tags (labels allow only ``[a-z0-9_-]``) are kept
in its metadata.

>>> service = provider.service("compute")                                            # doctest: +SKIP
>>> service.choose_instance_type(MachineSpec(cpu=4, memory="16 GiB")).name           # doctest: +SKIP
'e2-standard-4'
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from prefect_remote.errors import CapacityError, RemoteError
from prefect_remote.machine.container import image_with_software
from prefect_remote.providers.base import DEFAULT_DISK_GIB, Capabilities, InstanceType, Launch, Machine, MachineState
from prefect_remote.providers.capacity import Placement, first_with_capacity, placements
from prefect_remote.providers.gcp import compute_catalog
from prefect_remote.providers.gcp.options import DEFAULT_VM_IMAGE, GPU_VM_IMAGE, GPU_VM_IMAGE_GIB
from prefect_remote.providers.gcp.prices import on_demand_rates
from prefect_remote.providers.gcp.service import (
    LABEL_PREFIX,
    LAUNCH_LABEL,
    RECORDS_LABEL,
    SERVICE_LABEL,
    GCPService,
    ServiceHost,
    labels_for,
)
from prefect_remote.providers.network import DASK_PORTS, ingress_cidr

if TYPE_CHECKING:
    from prefect_remote.spec import MachineSpec

logger = logging.getLogger(__name__)

TAGS_KEY = LABEL_PREFIX + "tags"  # metadata: the launch's tags as given (JSON)
OWNER_KEY = LABEL_PREFIX + "owner"  # metadata: the owner as given ("host:pid" is no label value)
SPEC_KEY = LABEL_PREFIX + "spec"
INTERNAL_TAG = "prefect-remote"  # network tag of every VM: the internal rule's source and target
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
# Compute Engine's statuses as a machine's (the rest have ended). A STOPPING VM is being deleted.
STATES: dict[str, MachineState] = {"PROVISIONING": "pending", "STAGING": "pending", "REPAIRING": "pending", "RUNNING": "running"}
# What Compute Engine answers when a zone has no capacity for the request, or a quota is spent (the
# capacity policy's shortage): the next zone, then (spot_with_fallback) a standard VM, is tried.
# UNSUPPORTED_OPERATION: a spot VM preempted while it is created (SkyPilot sees it so).
STOCK_OUT = ("ZONE_RESOURCE_POOL_EXHAUSTED", "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS", "REGION_RESOURCE_POOL_EXHAUSTED", "STOCKOUT")
SHORTAGE = (*STOCK_OUT, "QUOTA_EXCEEDED", "UNSUPPORTED_OPERATION")
# A bulk insert's capacity and quota are checked up front: refused at once with these reasons, as the codes they mean.
AT_ONCE = {"quotaExceeded": "QUOTA_EXCEEDED", "insufficientCapacity": "ZONE_RESOURCE_POOL_EXHAUSTED"}
QUOTAS_PAGE = "https://console.cloud.google.com/iam-admin/quotas"
# A VM outlives its timeout by this much before Compute Engine deletes it: the agent ends it first
# and records why; maxRunDuration is the backstop for an agent that could not.
MAX_RUN_GRACE = 300
MAX_RUN_DURATION = 120 * 24 * 3600  # Compute Engine's longest maxRunDuration; the agent enforces longer timeouts alone
OPERATION_TIMEOUT = 300.0  # seconds a VM's insert may take


def instance_prefix(pool: str) -> str:
    """What the name of every VM of ``pool`` (its records label) begins with: its machines' grants on
    instances hold for these names only (IAM conditions on ``resource.name``; labels are no condition
    attribute), so that no pool's machines change, end or make another's.

    >>> instance_prefix("0123456789abcdef")
    'vm-0123456789abcdef-'
    """
    return f"{ComputeService.id_prefix}{pool}-"


class ComputeService(GCPService):
    """Compute Engine VMs in the provider's zone (``zone``, else the region's first)."""

    name = "Compute Engine"
    key = "compute"
    id_prefix = "vm-"
    capabilities = Capabilities(inbound_connections=True, terminate_one=True, containers=True, gpus=True, max_lifetime=None)

    def __init__(self, provider: ServiceHost) -> None:
        super().__init__(provider)
        self._catalogs: dict[str, list[InstanceType]] = {}  # zone -> its types, priced
        self._firewalls: set[str] = set()  # rules known to exist
        self._subnetwork_range: str | None = None
        self._deleting: set[str] = set()  # halted VMs already asked to be deleted
        self._zones: dict[str, list[str]] = {}  # machine type -> the region's zones offering it, in the order to try
        self._zone_of: dict[str, str] = {}  # VM -> its zone (from its insert or a listing)
        self._labels_of: dict[str, dict[str, str]] = {}  # VM -> its labels (from a listing)

    @property
    def zone(self) -> str:
        return self.options.zone_or_default

    def new_ids(self, count: int) -> list[str]:
        """``vm-<pool>-`` and 12 random hex digits (:func:`instance_prefix`): 32 characters, of the 63 a VM's name takes."""
        prefix = instance_prefix(self.provider.records.label)
        return [prefix + machine_id.removeprefix(self.id_prefix) for machine_id in super().new_ids(count)]

    @property
    def project(self) -> str:
        return self.clients.project

    # -- sizing -----------------------------------------------------------------------------------
    def unfit(self, spec: MachineSpec) -> str | None:
        if spec.image and spec.software:
            return image_with_software(spec.image, spec.software)
        try:
            self.choose_instance_type(spec)
        except CapacityError as error:
            return str(error)
        return None

    def instance_types(self) -> Sequence[InstanceType]:
        """The zone's machine types (listed once per zone and process), priced."""
        zone = self.zone
        if zone not in self._catalogs:
            with self.clients.translated("compute.machineTypes.list"):
                entries = list(self.clients.machine_types().list(project=self.project, zone=zone))
            rates = on_demand_rates(self.clients.credentials, self.options.region, self.options.api_endpoint)
            # Most n1 zones have T4s to attach, not all: the zone's accelerator types say.
            self._catalogs[zone] = compute_catalog.machine_types(entries, rates, t4=self._has_t4(zone))
        return self._catalogs[zone]

    def _has_t4(self, zone: str) -> bool:
        with self.clients.translated("compute.acceleratorTypes.list"):
            return any(item.name == compute_catalog.T4 for item in self.clients.accelerator_types().list(project=self.project, zone=zone))

    def choose_instance_type(self, spec: MachineSpec) -> InstanceType:
        return compute_catalog.choose_machine_type(self.instance_types(), spec, self.zone)

    def placement(self, instance_type: InstanceType) -> str:
        return f"Compute Engine {instance_type.name} in {self.zone}"

    def zones_for(self, instance_type: InstanceType) -> list[str]:
        """Where a VM of ``instance_type`` may start, in the order to try them on capacity and quota
        errors: the ``zone`` option alone when set (and a GPU type's zone: not every zone has its
        accelerator), else every zone of the region that offers the machine type (one aggregated
        listing per type and process), the default zone first."""
        attached = compute_catalog.attached(instance_type.name)
        if self.options.zone or attached:
            return [self.zone]
        name = instance_type.name
        if name not in self._zones:
            request = {"project": self.project, "filter": f'name = "{name}"'}
            with self.clients.translated("compute.machineTypes.list"):
                listing = self.clients.machine_types().aggregated_list(request=request)
                offered = {scope.rsplit("/", 1)[-1] for scope, found in listing if found.machine_types}
            in_region = sorted(zone for zone in offered if zone.rsplit("-", 1)[0] == self.options.region)
            self._zones[name] = sorted(in_region, key=lambda zone: zone != self.zone) or [self.zone]
        return self._zones[name]

    # -- starting ---------------------------------------------------------------------------------
    def start(self, launch: Launch, machine_ids: Sequence[str]) -> list[Machine]:
        """Inserts every VM with one ``instances.bulkInsert`` on the first placement the spot policy
        allows, all or nothing (``minCount`` is the count: a cluster's workers share a zone and a
        market); where that zone has no capacity or quota for them all, the next placement is tried
        with all of them (:mod:`prefect_remote.providers.capacity`). Only a VM's name differs from its
        siblings': it reads its id from the metadata server, and its launch's secrets by the launch id."""
        tried = placements(launch.spec.spot_policy, self.zones_for(launch.instance_type))
        with self.clients.translated("compute.firewalls.create"):
            network_tags = self.network_tags(self.ingress_cidr(launch.spec))

        def falling_back(placement: Placement, then: Placement, code: str) -> None:
            kind = "spot" if then.spot else "standard"
            logger.warning(
                "gcp: no %s capacity for %s in %s (%s): starting %s in %s as %s%s",
                placement.market,
                launch.instance_type.name,
                placement.zone or self.zone,
                code,
                _named(machine_ids),
                then.zone or self.zone,
                f"a {kind} VM" if len(machine_ids) == 1 else f"{kind} VMs",
                " (spot_with_fallback)" if placement.spot and not then.spot else "",
            )

        with self.clients.translated("compute.instances.create"):
            try:
                first_with_capacity(
                    tried,
                    lambda placement: self._bulk_insert(launch, machine_ids, network_tags, placement),
                    shortage=_shortage,
                    refused=lambda placement, code, tried: self._no_capacity(launch, placement, code, tried),
                    falling_back=falling_back,
                )
                machines = {m.id: m for m in self.machines(machine_ids)}
                return [machines[machine_id] for machine_id in machine_ids if machine_id in machines]
            except BaseException:
                try:
                    self.terminate(machine_ids, "its launch failed")
                except Exception:
                    logger.exception("gcp: could not delete the VMs of a failed launch: %s", ", ".join(machine_ids))
                raise

    def _bulk_insert(self, launch: Launch, machine_ids: Sequence[str], network_tags: list[str], placement: Placement) -> None:
        """Inserts the VMs on ``placement`` with one bulk insert and waits for its operation; a refusal
        for want of capacity or quota (at once, or in the operation) raises :class:`_OperationError`."""
        from google.api_core.exceptions import GoogleAPICallError

        zone = placement.zone or self.zone
        body = self.bulk_body(launch, machine_ids, network_tags, spot=placement.spot, zone=zone)
        self._zone_of.update((machine_id, zone) for machine_id in machine_ids)
        what = _named(machine_ids)
        try:
            operation = self.clients.instances().bulk_insert(project=self.project, zone=zone, bulk_insert_instance_resource_resource=body)
        except GoogleAPICallError as error:  # a bulk insert's capacity and quota are checked up front too
            shortage = _shortage_at_once(error, what)
            if shortage is None:
                raise
            raise shortage from None
        self._wait(operation, what, zone)

    def _wait(self, operation: Any, what: str, zone: str) -> None:
        """Waits for a zone operation (an insert) to be done; raises :class:`_OperationError` if it failed."""
        from google.cloud import compute_v1

        name = operation.name
        deadline = time.monotonic() + OPERATION_TIMEOUT
        while True:
            done = self.clients.zone_operations().wait(project=self.project, zone=zone, operation=name)
            if done.status == compute_v1.Operation.Status.DONE:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"Compute Engine operation {name} not done after {OPERATION_TIMEOUT:.0f}s")
        errors = list(done.error.errors) if done.error else []
        if errors:
            raise _OperationError(errors[0].code, errors[0].message or done.http_error_message, what)

    def _no_capacity(self, launch: Launch, placement: Placement, code: str, tried: Sequence[Placement]) -> CapacityError:
        """What to do when every placement failed (``code``: the last one's)."""
        name = launch.instance_type.name
        count = f"{launch.count} " if launch.count > 1 else ""
        zones = list(dict.fromkeys(p.zone or self.zone for p in tried if p.spot == placement.spot))
        where = f"zone {zones[0]}" if len(zones) == 1 else f"zones {', '.join(zones)}"
        quota = f"raise the quota ({QUOTAS_PAGE}), " if code.startswith("QUOTA_EXCEEDED") else ""
        if placement.spot:
            return CapacityError(
                f"no spot capacity for {count}{name} in {where} ({code}); {quota}try spot_policy='spot_with_fallback', another "
                "vm_type or zone, or later"
            )
        return CapacityError(f"no capacity for {count}{name} in {where} ({code}); {quota}try another vm_type or zone, or later")

    def bulk_body(
        self, launch: Launch, machine_ids: Sequence[str], network_tags: Sequence[str], *, spot: bool, zone: str | None = None
    ) -> Any:
        """The ``BulkInsertInstanceResource`` that makes ``machine_ids`` in ``zone`` (default: the
        provider's): all of them or none (``minCount``), each named, alike in all else: an instance
        template's properties, which name their machine, disk and accelerator types."""
        from google.cloud import compute_v1

        spec, instance_type, zone = launch.spec, launch.instance_type, zone or self.zone
        machine_type, gpus, accelerator = compute_catalog.attached(instance_type.name) or (instance_type.name, 0, None)
        raw_tags = dict(launch.tags)
        labels = self.labels(launch)
        metadata = {
            "startup-script": launch.boot_script,  # no secrets: the machine reads those from Secret Manager
            TAGS_KEY: json.dumps(raw_tags),
            SPEC_KEY: spec.summary(),
            **({OWNER_KEY: launch.owner} if launch.owner else {}),
        }
        image = self._image(instance_type)
        if image == GPU_VM_IMAGE:
            # The Deep Learning VM image ships the driver; this asks it to install one where it does not.
            metadata["install-nvidia-driver"] = "True"
        disk: dict[str, Any] = {
            "source_image": image,
            "disk_type": compute_catalog.boot_disk_type(machine_type),
            "labels": {LAUNCH_LABEL: launch.id},
            # the image's 10 GB holds no real environment; Compute Engine refuses one smaller than the image
            "disk_size_gb": self._disk_gib(spec, GPU_VM_IMAGE_GIB if image == GPU_VM_IMAGE else None),
        }
        interface: dict[str, Any] = {
            "network": self._network_url(),
            # Every VM gets an external address: the stock-image boot downloads uv and packages,
            # and a VM without one reaches nothing outside without Cloud NAT. Ingress stays the
            # firewall's to allow (only the Dask ports, only from allow_ingress_from).
            "access_configs": [{"name": "External NAT", "type_": "ONE_TO_ONE_NAT"}],
        }
        if self.options.subnetwork:
            subnetwork = self.options.subnetwork
            interface["subnetwork"] = subnetwork if "/" in subnetwork else f"regions/{self.options.region}/subnetworks/{subnetwork}"
        # Never restarted by Google: a restart runs the startup script again, and with it the payload
        # (a flow run twice). A host error ends the VM instead (TERMINATED, then deleted by the next
        # listing); live migration (MIGRATE, the default) reboots nothing. GPUs and spot VMs cannot migrate.
        scheduling: dict[str, Any] = {"provisioning_model": "SPOT" if spot else "STANDARD", "automatic_restart": False}
        if spot:
            scheduling.update(instance_termination_action="DELETE", on_host_maintenance="TERMINATE")
        elif instance_type.gpu:
            scheduling.update(on_host_maintenance="TERMINATE")
        if spec.timeout:
            seconds = min(math.ceil(spec.timeout) + MAX_RUN_GRACE, MAX_RUN_DURATION)
            scheduling.update(max_run_duration={"seconds": seconds}, instance_termination_action="DELETE")
        properties: dict[str, Any] = {
            "machine_type": machine_type,
            "labels": labels,
            "metadata": {"items": [{"key": key, "value": value} for key, value in metadata.items()]},
            "tags": {"items": list(network_tags)},
            "disks": [{"boot": True, "auto_delete": True, "initialize_params": disk}],
            "network_interfaces": [interface],
            "service_accounts": [{"email": self.options.service_account or "default", "scopes": [CLOUD_PLATFORM]}],
            "scheduling": scheduling,
        }
        if gpus and accelerator:
            properties["guest_accelerators"] = [{"accelerator_type": accelerator, "accelerator_count": gpus}]
        return compute_v1.BulkInsertInstanceResource(
            count=len(machine_ids),
            min_count=len(machine_ids),
            per_instance_properties={machine_id: {} for machine_id in machine_ids},
            instance_properties=properties,
        )

    def _image(self, instance_type: InstanceType) -> str:
        """The boot image: ``vm_image``, its arm64 family for an arm type (``debian-12`` →
        ``debian-12-arm64``, ``ubuntu-2404-lts-amd64`` → ``ubuntu-2404-lts-arm64``); for a GPU type,
        unless ``vm_image`` was chosen, Google's Deep Learning VM image with NVIDIA's driver
        (:data:`~prefect_remote.providers.gcp.options.GPU_VM_IMAGE`)."""
        image = self.options.vm_image
        if instance_type.gpu and image == DEFAULT_VM_IMAGE and instance_type.arch == "x86_64":
            return GPU_VM_IMAGE
        if instance_type.arch == "arm64" and "/family/" in image and not image.endswith("-arm64"):
            return image.removesuffix("-amd64") + "-arm64"
        return image

    @staticmethod
    def _disk_gib(spec: MachineSpec, image_gib: int | None) -> int:
        """The boot disk's size: ``disk_size`` (default 40 GiB), never below the image's (known for
        the GPU image), which Compute Engine refuses."""
        wanted = math.ceil(spec.disk_size / 2**30) if spec.disk_size else DEFAULT_DISK_GIB
        if image_gib and wanted < image_gib:
            if spec.disk_size:
                logger.warning("disk_size of %d GiB is below the image's %d GB: the boot disk takes %d", wanted, image_gib, image_gib)
            return image_gib
        return wanted

    def _network_url(self) -> str:
        network = self.options.network
        return network if "/" in network else f"global/networks/{network}"

    # -- the firewall -------------------------------------------------------------------------------
    def ingress_cidr(self, spec: MachineSpec) -> str | None:
        """Where the Dask ports are reached from (:func:`prefect_remote.providers.network.ingress_cidr`):
        ``"me"`` is this launcher's public IP (``PREFECT_REMOTE_GCP_PUBLIC_IP``, else asked of checkip)
        or, from inside the network, the subnetwork's range: a launcher there (a flow run: a Cloud Run
        task by Direct VPC egress, or a VM) reaches the VMs on their internal addresses, and a Cloud
        Run task's network tags count for no firewall source."""
        return ingress_cidr(
            spec.allow_ingress_from or self.options.allow_ingress_from,
            runs_inside=self.provider.runs_inside,
            known_ip=self.options.public_ip,
            known_ip_setting="PREFECT_REMOTE_GCP_PUBLIC_IP",
            inside_range=self.subnetwork_range,
        )

    def subnetwork_range(self) -> str:
        """The IP range of the subnetwork machines get addresses from in the region (``subnetwork``,
        else the network's of the same name, as Compute Engine and Cloud Run both take it)."""
        if self._subnetwork_range is None:
            name = (self.options.subnetwork or self._network_url()).rsplit("/", 1)[-1]
            with self.clients.translated("compute.subnetworks.get"):
                found = self.clients.subnetworks().get(project=self.project, region=self.options.region, subnetwork=name)
            self._subnetwork_range = str(found.ip_cidr_range)
        return self._subnetwork_range

    def network_tags(self, cidr: str | None) -> list[str]:
        """The VM's network tags, after making sure their firewall rules exist: the internal rule
        (prefect-remote VMs reach each other on any port) and, with ``cidr``, one admitting the Dask
        ports from ``cidr`` only. One rule per source, so that asking for "everyone" once never
        opens other VMs."""
        network = self._network_url()
        self._firewall(
            f"prefect-remote-internal-{_digest(network)}",
            "prefect-remote: VMs reach each other on their internal addresses",
            network,
            allowed=[{"I_p_protocol": protocol} for protocol in ("tcp", "udp", "icmp")],
            source_tags=[INTERNAL_TAG],
            target_tags=[INTERNAL_TAG],
        )
        if cidr is None:
            return [INTERNAL_TAG]
        name = f"prefect-remote-dask-{_digest(network + ' ' + cidr)}"
        low, high = DASK_PORTS
        self._firewall(
            name,
            f"prefect-remote: Dask scheduler and dashboard ports from {cidr}",
            network,
            allowed=[{"I_p_protocol": "tcp", "ports": [f"{low}-{high}"]}],
            source_ranges=[cidr],
            target_tags=[name],
        )
        return [INTERNAL_TAG, name]

    def _firewall(self, name: str, description: str, network: str, **rule: Any) -> None:
        """Makes firewall rule ``name`` unless it exists (once per process)."""
        from google.api_core.exceptions import Conflict, NotFound
        from google.cloud import compute_v1

        if name in self._firewalls:
            return
        firewalls = self.clients.firewalls()
        try:
            firewalls.get(project=self.project, firewall=name)
        except NotFound:
            body = compute_v1.Firewall(name=name, description=description, network=network, direction="INGRESS", priority=1000, **rule)
            try:
                operation = firewalls.insert(project=self.project, firewall_resource=body)
                self.clients.global_operations().wait(project=self.project, operation=operation.name)
            except Conflict:
                pass  # another launcher made it just now
            logger.info("gcp: made firewall rule %s (%s)", name, description)
        self._firewalls.add(name)

    # -- reading back ----------------------------------------------------------------------------------
    def machines(self, machine_ids: Sequence[str] | None = None, labels: Mapping[str, str] | None = None) -> list[Machine]:
        """One ``instances.aggregatedList`` call (VMs may be in any of the region's zones), filtered by
        label; ids and tags whose values are no label values are matched here."""
        if machine_ids is not None:
            wanted = {machine_id for machine_id in machine_ids if machine_id.startswith(self.id_prefix)}
            if not wanted:
                return []
        terms = [f'labels.{SERVICE_LABEL} = "compute"', *(f'labels.{key} = "{value}"' for key, value in labels_for(labels or {}).items())]
        request = {"project": self.project, "filter": " AND ".join(f"({term})" for term in terms)}
        instances = []
        with self.clients.translated("compute.instances.list"):
            for scope, scoped in self.clients.instances().aggregated_list(request=request):
                zone = scope.rsplit("/", 1)[-1]
                if zone.rsplit("-", 1)[0] == self.options.region:
                    instances += scoped.instances
                    self._zone_of.update((instance.name, zone) for instance in scoped.instances)
                    self._labels_of.update((instance.name, dict(instance.labels)) for instance in scoped.instances)
        found = []
        for instance in instances:
            if machine_ids is not None and instance.name not in wanted:
                continue
            machine = self._machine(instance)
            if all(machine.tags.get(key) == value for key, value in (labels or {}).items()):
                found.append(machine)
        self._delete_halted(instances)
        return found

    def _machine(self, instance: Any) -> Machine:
        metadata = {item.key: item.value for item in instance.metadata.items}
        try:
            tags = dict(json.loads(metadata.get(TAGS_KEY, "{}")))
        except (ValueError, TypeError):
            tags = {}
        machine_type = instance.machine_type.rsplit("/", 1)[-1]
        name = machine_type
        for accelerator in instance.guest_accelerators:
            name = f"{machine_type}+{accelerator.accelerator_count}x{accelerator.accelerator_type.rsplit('/', 1)[-1]}"
        interface = instance.network_interfaces[0] if instance.network_interfaces else None
        private = interface.network_i_p if interface and interface.network_i_p else None
        public = next((config.nat_i_p for config in interface.access_configs if config.nat_i_p), None) if interface else None
        spot = instance.scheduling.provisioning_model == "SPOT"
        prices = {item.name: item.price for item in self.instance_types()}  # listed once per process
        return Machine(
            id=instance.name,
            provider=self.provider.name,
            state=STATES.get(instance.status, "terminated"),
            instance_type=name,
            created=_timestamp(instance.creation_timestamp),
            tags=tags,
            spec=metadata.get(SPEC_KEY, "default"),
            region=self.options.region,
            spot=spot,
            owner=metadata.get(OWNER_KEY),
            private_address=private,
            public_address=public,  # none without an access config: a client outside the network cannot dial it
            details={
                "price_per_hour": prices.get(name),
                "market": "spot" if spot else "on-demand",
                "gce_status": instance.status,
                "zone": instance.zone.rsplit("/", 1)[-1] or self.zone,
                "launch": instance.labels.get(LAUNCH_LABEL),
                "records": instance.labels.get(RECORDS_LABEL),  # whose pool it is
            },
        )

    def _delete_halted(self, instances: Sequence[Any]) -> None:
        """Deletes VMs that stopped themselves (a failed boot's ``shutdown -h now``, a killed agent's
        backstop): a stopped VM keeps its disk and address, which cost money, until deleted. Their
        ends are recorded where none was (:meth:`~prefect_remote.providers.gcp.provider.GCPProvider.seen_ended`)."""
        halted = [i.name for i in instances if i.status == "TERMINATED" and i.name not in self._deleting]
        if halted:
            logger.info("gcp: deleting stopped VMs %s", ", ".join(halted))
            self.terminate(halted, "stopped")
            self.provider.seen_ended(halted, STOPPED_REASON)

    # -- ending -----------------------------------------------------------------------------------------
    def terminate(self, machine_ids: Sequence[str], reason: str, *, any_pool: bool = False) -> None:
        """Deletes each VM (not waiting for the deletions); unknown ones are fine. Only prefect-remote's
        own: a VM is found by its service label (a listing filtered on it), and unless ``any_pool``
        (a project's teardown), another pool's (:meth:`foreign`) is left alone."""
        from google.api_core.exceptions import NotFound

        if any(machine_id not in self._zone_of for machine_id in machine_ids):
            self.machines()  # where they are: one listing of the region
        instances = self.clients.instances()
        with self.clients.translated("compute.instances.delete"):
            for machine_id in machine_ids:
                if machine_id not in self._zone_of:
                    continue  # in no zone of the region with prefect-remote's label: gone already, or not ours
                if not any_pool and self.foreign(machine_id, self._labels_of.get(machine_id, {})):
                    continue
                try:
                    instances.delete(project=self.project, zone=self._zone_of[machine_id], instance=machine_id)
                except NotFound:
                    pass
                self._deleting.add(machine_id)
        logger.debug("gcp: deleting %s (%s)", ", ".join(machine_ids), reason)


# The end recorded for a VM that stopped with none recorded: its agent could not say why.
STOPPED_REASON = "the VM shut itself down with no end recorded (its agent gone: the boot's backstop; or a shutdown on the machine)"


class _OperationError(RemoteError):
    """Compute Engine could not do what ``what`` (an operation, a VM) was for: ``code``
    (``ZONE_RESOURCE_POOL_EXHAUSTED``, ``QUOTA_EXCEEDED``…) says why."""

    def __init__(self, code: str, message: str, what: str) -> None:
        super().__init__(f"Compute Engine could not start a VM ({what}): {code}: {message}")
        self.code, self.message = code, message


def _shortage(error: Exception) -> str | None:
    """The code of an error that says the zone has no capacity or a quota is spent (:data:`SHORTAGE`),
    else None; a quota's code with its message, which names the quota."""
    if not isinstance(error, _OperationError) or error.code not in SHORTAGE:
        return None
    return f"{error.code}: {error.message}" if error.code == "QUOTA_EXCEEDED" else error.code


def _shortage_at_once(error: Exception, what: str) -> _OperationError | None:
    """The shortage a request was refused with at once (its errors' reason, :data:`AT_ONCE`, or a
    code in its text), as a failed operation would report it; None for any other error."""
    for detail in getattr(error, "errors", None) or ():
        if isinstance(detail, Mapping):
            reason = str(detail.get("reason", ""))
            code = AT_ONCE.get(reason, reason)
            if code in SHORTAGE:
                return _OperationError(code, str(detail.get("message") or getattr(error, "message", error)), what)
    code = next((c for c in SHORTAGE if c in str(error)), None)
    return None if code is None else _OperationError(code, str(getattr(error, "message", error)), what)


def _named(machine_ids: Sequence[str], shown: int = 4) -> str:
    """``machine_ids`` for a message: all of a few, the first of many and how many more."""
    if len(machine_ids) <= shown:
        return ", ".join(machine_ids)
    return f"{', '.join(machine_ids[: shown - 1])} and {len(machine_ids) - shown + 1} more"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def _timestamp(text: str) -> float:
    """Compute Engine's creationTimestamp (``2026-12-01T03:04:05.123-08:00``) as epoch seconds."""
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0
