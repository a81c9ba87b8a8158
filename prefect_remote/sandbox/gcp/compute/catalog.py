"""What the sandbox's Compute Engine offers: its zones and region (with quotas counted from the
instances in use), a realistic catalog of machine types (e2, n2, c3, n1 with attachable T4s, t2a/c4a
on arm, g2 with L4s, a2 with A100s; the GPU families are not offered in the region's last zone),
accelerator types, disk types, and public images by family (Debian 12, Ubuntu 24.04, amd64 and
arm64; the Deep Learning VM GPU family), served as Compute Engine serves them.

>>> MACHINE_TYPES["n1-standard-4"].cpus, MACHINE_TYPES["c4a-standard-4"].arm
(4, True)
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from prefect_remote.sandbox.gcp.compute.google import (
    BASE,
    ComputeProject,
    Route,
    aggregated,
    filter_items,
    fingerprint,
    last_segment,
    not_found,
    numeric_id,
    page,
)


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
# (image project, family) -> (image name, architecture, disk size in GB)
IMAGES = {
    ("debian-cloud", "debian-12"): ("debian-12-bookworm-v20261110", "X86_64", 10),
    ("debian-cloud", "debian-12-arm64"): ("debian-12-bookworm-arm64-v20261110", "ARM64", 10),
    ("ubuntu-os-cloud", "ubuntu-2404-lts-amd64"): ("ubuntu-2404-noble-amd64-v20261105", "X86_64", 10),
    ("ubuntu-os-cloud", "ubuntu-2404-lts-arm64"): ("ubuntu-2404-noble-arm64-v20261105", "ARM64", 10),
    # Google's Deep Learning VM base image with NVIDIA's driver and CUDA 12.8 (Ubuntu 22.04)
    ("deeplearning-platform-release", "common-cu128-ubuntu-2204-nvidia-570"): (
        "common-cu128-ubuntu-2204-nvidia-570-v20261120",
        "X86_64",
        50,
    ),
}
DISK_TYPES = ("pd-standard", "pd-balanced", "pd-ssd", "hyperdisk-balanced")
HYPERDISK_ONLY = ("c4", "c4a", "c4d", "n4", "x4", "a4")  # families that boot only from Hyperdisk (of those above: c4a)
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
CATALOG_CREATED = "1969-12-31T16:00:00.000-08:00"  # what Compute Engine prints for its built-in resources


# The region's quota limits of a new project (regions.get's ``quotas``); a test lowers one with set_quota.
QUOTA_LIMITS = {
    "CPUS": 2400,
    "PREEMPTIBLE_CPUS": 2400,
    "INSTANCES": 6000,
    "IN_USE_ADDRESSES": 600,
    **{metric: 16 for metric in GPU_QUOTAS.values()},
}


class Catalog:
    """Zones, the region, machine types, accelerator types and images of the project; ``in_use``
    gives the resources of the instances not ``TERMINATED`` (the region's quota usage), which an
    insert may not take over the region's quota limits (:meth:`set_quota` sets one)."""

    def __init__(self, project: ComputeProject, in_use: Callable[[], list[dict[str, Any]]]) -> None:
        self.project = project
        self._in_use = in_use
        self.quota_limits = dict(QUOTA_LIMITS)

    def set_quota(self, metric: str, limit: int | None) -> None:
        """The region's quota ``metric`` (``CPUS``, ``NVIDIA_T4_GPUS``…) is ``limit`` (None: a new
        project's, :data:`QUOTA_LIMITS`), as after a quota change in the console."""
        if metric not in QUOTA_LIMITS:
            raise ValueError(f"metric={metric!r}: the sandbox's region has quotas {sorted(QUOTA_LIMITS)}")
        self.quota_limits[metric] = QUOTA_LIMITS[metric] if limit is None else limit

    def quota_usage(self, instances: list[dict[str, Any]]) -> dict[str, int]:
        """What ``instances`` (resources) count against each of the region's quotas."""

        def cpus(vm: dict[str, Any]) -> int:
            return MACHINE_TYPES[last_segment(vm["machineType"])].cpus

        def gpus(name: str) -> int:
            return sum(
                a["acceleratorCount"]
                for vm in instances
                for a in vm.get("guestAccelerators", [])
                if last_segment(a["acceleratorType"]) == name
            )

        return {
            "CPUS": sum(cpus(vm) for vm in instances if not vm["scheduling"]["preemptible"]),
            "PREEMPTIBLE_CPUS": sum(cpus(vm) for vm in instances if vm["scheduling"]["preemptible"]),
            "INSTANCES": len(instances),
            "IN_USE_ADDRESSES": sum(1 for vm in instances if vm["networkInterfaces"][0].get("accessConfigs")),
            **{quota: gpus(name) for name, quota in GPU_QUOTAS.items()},
        }

    def over_quota(self, *resources: dict[str, Any]) -> tuple[str, int] | None:
        """The quota (metric, limit) that instances ``resources`` would exceed with the instances in
        use, if any: Compute Engine then fails their insert with ``QUOTA_EXCEEDED``."""
        usage = self.quota_usage([*self._in_use(), *resources])
        return next(((metric, limit) for metric, limit in self.quota_limits.items() if usage[metric] > limit), None)

    def fitting(self, resources: list[dict[str, Any]]) -> tuple[int, tuple[str, int] | None]:
        """How many of ``resources`` (the first ones) the region's quotas take beside the instances in
        use, and the quota the next one would exceed (None: all fit)."""
        in_use = self._in_use()
        for count in range(len(resources), -1, -1):  # a bulk request's instances are alike: the first misfit is the quota
            usage = self.quota_usage([*in_use, *resources[:count]])
            exceeded = next(((metric, limit) for metric, limit in self.quota_limits.items() if usage[metric] > limit), None)
            if exceeded is None:
                return count, None if count == len(resources) else self.over_quota(*resources[: count + 1])
        return 0, self.over_quota(*resources[:1])  # the instances in use are over a quota already

    def routes(self, p: str, z: str) -> list[Route]:
        """Its routes under the project's path ``p`` and a zone's path ``z``."""
        return [
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
        ]

    # -- what an instance may ask for -------------------------------------------------------------------
    def offered(self, zone: str, family: str) -> bool:
        """Whether machine family ``family`` is offered in ``zone`` (GPU families: not in the last zone)."""
        zones = self.project.sandbox.zones
        return family not in GPU_FAMILIES or len(zones) == 1 or zone != zones[-1]

    def shape(self, name: str, zone: str) -> MachineShape | None:
        """Machine type ``name`` where ``zone`` offers it."""
        shape = MACHINE_TYPES.get(name)
        return shape if shape is not None and self.offered(zone, shape.family) else None

    def accelerator_offered(self, name: str, zone: str) -> bool:
        return name in ACCELERATORS and all(self.offered(zone, family) for family in ACCELERATORS[name][2])

    def resolve_image(self, source: str) -> dict[str, Any] | None:
        """The image ``source`` names (a URL or ``projects/P/global/images[/family]/N``), or None."""
        found = re.search(r"projects/([^/]+)/global/images/(family/)?([^/]+)$", source)
        if found is None:
            return None
        project, is_family, name = found.groups()
        if is_family:
            return _image(project, name) if (project, name) in IMAGES else None
        return next((_image(owner, family) for (owner, family), (image, *_) in IMAGES.items() if owner == project and image == name), None)

    # -- zones and the region -----------------------------------------------------------------------------
    def _zone(self, zone: str) -> dict[str, Any]:
        return {
            "kind": "compute#zone",
            "id": numeric_id("zone", zone),
            "creationTimestamp": CATALOG_CREATED,
            "name": zone,
            "description": zone,
            "status": "UP",
            "region": self.project.link("regions", self.project.sandbox.region),
            "selfLink": self.project.link("zones", zone),
            "availableCpuPlatforms": sorted(set(CPU_PLATFORMS.values())),
            "supportsPzs": False,
        }

    def list_zones(self, request: Request, project: str) -> dict[str, Any]:
        self.project.check(project)
        items = filter_items([self._zone(zone) for zone in self.project.sandbox.zones], request)
        return page(items, request, "compute#zoneList", self.project.link("zones"))

    def get_zone(self, request: Request, project: str, zone: str) -> dict[str, Any]:
        self.project.check_zone(project, zone)
        return self._zone(zone)

    def get_region(self, request: Request, project: str, region: str) -> dict[str, Any]:
        self.project.check(project)
        if region != self.project.sandbox.region:
            raise not_found(f"projects/{project}/regions/{region}")
        usage = self.quota_usage(self._in_use())
        return {
            "kind": "compute#region",
            "id": numeric_id("region", region),
            "creationTimestamp": CATALOG_CREATED,
            "name": region,
            "description": region,
            "status": "UP",
            "zones": [self.project.link("zones", zone) for zone in self.project.sandbox.zones],
            "quotas": [
                {"metric": metric, "limit": float(limit), "usage": float(usage[metric])} for metric, limit in self.quota_limits.items()
            ],
            "selfLink": self.project.link("regions", region),
            "supportsPzs": False,
        }

    # -- machine and accelerator types --------------------------------------------------------------------
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
            "creationTimestamp": CATALOG_CREATED,
            "name": shape.name,
            "description": description,
            "guestCpus": shape.cpus,
            "memoryMb": shape.memory_mb,
            "imageSpaceGb": 0,
            "maximumPersistentDisks": 16 if shape.shared else 128,
            "maximumPersistentDisksSizeGb": "3072" if shape.shared else "263168",
            "zone": zone,
            "selfLink": self.project.link("zones", zone, "machineTypes", shape.name),
            "isSharedCpu": shape.shared,
            "architecture": "ARM64" if shape.arm else "X86_64",
        }
        if shape.gpu:
            resource["accelerators"] = [{"guestAcceleratorType": shape.gpu[0], "guestAcceleratorCount": shape.gpu[1]}]
        return resource

    def _machine_types(self, zone: str) -> list[dict[str, Any]]:
        return [self._machine_type(shape, zone) for shape in MACHINE_TYPES.values() if self.offered(zone, shape.family)]

    def list_machine_types(self, request: Request, project: str, zone: str) -> dict[str, Any]:
        self.project.check_zone(project, zone)
        items = filter_items(self._machine_types(zone), request)
        return page(items, request, "compute#machineTypeList", self.project.link("zones", zone, "machineTypes"))

    def aggregated_machine_types(self, request: Request, project: str) -> dict[str, Any]:
        self.project.check(project)
        scoped = {zone: filter_items(self._machine_types(zone), request) for zone in self.project.sandbox.zones}
        return aggregated(scoped, "machineTypes", "compute#machineTypeAggregatedList", self.project.link("aggregated/machineTypes"))

    def get_machine_type(self, request: Request, project: str, zone: str, machine_type: str) -> dict[str, Any]:
        self.project.check_zone(project, zone)
        shape = self.shape(machine_type, zone)
        if shape is None:
            raise not_found(f"projects/{project}/zones/{zone}/machineTypes/{machine_type}")
        return self._machine_type(shape, zone)

    def _accelerator_type(self, name: str, zone: str) -> dict[str, Any]:
        description, most, _ = ACCELERATORS[name]
        return {
            "kind": "compute#acceleratorType",
            "id": numeric_id("acceleratorType", name),
            "creationTimestamp": CATALOG_CREATED,
            "name": name,
            "description": description,
            "zone": self.project.link("zones", zone),
            "maximumCardsPerInstance": most,
            "selfLink": self.project.link("zones", zone, "acceleratorTypes", name),
        }

    def list_accelerator_types(self, request: Request, project: str, zone: str) -> dict[str, Any]:
        self.project.check_zone(project, zone)
        items = [self._accelerator_type(name, zone) for name in ACCELERATORS if self.accelerator_offered(name, zone)]
        link = self.project.link("zones", zone, "acceleratorTypes")
        return page(filter_items(items, request), request, "compute#acceleratorTypeList", link)

    def get_accelerator_type(self, request: Request, project: str, zone: str, accelerator_type: str) -> dict[str, Any]:
        self.project.check_zone(project, zone)
        if not self.accelerator_offered(accelerator_type, zone):
            raise not_found(f"projects/{project}/zones/{zone}/acceleratorTypes/{accelerator_type}")
        return self._accelerator_type(accelerator_type, zone)

    # -- images (public: they belong to their image project, not to this one) --------------------------------
    def image_from_family(self, request: Request, project: str, family: str) -> dict[str, Any]:
        if (project, family) not in IMAGES:
            raise not_found(f"projects/{project}/global/images/family/{family}")
        return _image(project, family)

    def get_image(self, request: Request, project: str, image: str) -> dict[str, Any]:
        for (owner, family), (name, *_) in IMAGES.items():
            if owner == project and name == image:
                return _image(owner, family)
        raise not_found(f"projects/{project}/global/images/{image}")


def _image(project: str, family: str) -> dict[str, Any]:
    name, architecture, size = IMAGES[(project, family)]
    return {
        "kind": "compute#image",
        "id": numeric_id("image", project, name),
        "creationTimestamp": "2026-11-10T12:00:00.000-08:00",
        "name": name,
        "description": f"{family}, {architecture.lower()} built on {name.rpartition('-v')[2]}",
        "sourceType": "RAW",
        "status": "READY",
        "archiveSizeBytes": "1234567890",
        "diskSizeGb": str(size),
        "licenses": [f"{BASE}projects/{project}/global/licenses/{family.rsplit('-', 1)[0]}"],
        "family": family,
        "selfLink": f"{BASE}projects/{project}/global/images/{name}",
        "labelFingerprint": fingerprint({}),
        "guestOsFeatures": [{"type": "UEFI_COMPATIBLE"}, {"type": "VIRTIO_SCSI_MULTIQUEUE"}, {"type": "GVNIC"}],
        "storageLocations": ["eu", "us", "asia"],
        "architecture": architecture,
    }
