"""What ``instances.insert`` takes: the request validated as Compute Engine validates it (name, machine
type in the zone, labels, metadata sizes, service account (``default`` is the project's compute
account), image, arm image on arm type, Hyperdisk on c4a, GPUs need ``onHostMaintenance=TERMINATE``,
``instanceTerminationAction`` needs spot or a run limit), and completed into the instance resource
it returns (camelCase JSON, ``kind``, ``selfLink``, ids as strings of digits, fingerprints).
"""

from __future__ import annotations

import re
import secrets
from typing import Any

from prefect_remote.sandbox.gcp.common import default_compute_account
from prefect_remote.sandbox.gcp.compute.catalog import ACCELERATORS, CPU_PLATFORMS, DISK_TYPES, HYPERDISK_ONLY, Catalog, MachineShape
from prefect_remote.sandbox.gcp.compute.google import (
    ComputeProject,
    check_labels,
    fingerprint,
    invalid,
    invalid_usage,
    last_segment,
    not_found,
    timestamp,
)
from prefect_remote.sandbox.gcp.compute.network import Network

NAME_PATTERN = "(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?|[1-9][0-9]{0,19})"
MAX_METADATA_VALUE = 256 * 1024  # bytes, per value
MAX_METADATA = 512 * 1024  # bytes, all keys and values
MAX_RUN_DURATION = (30, 120 * 24 * 3600)  # seconds: Compute Engine's bounds


class Inserts:
    """Turns an ``instances.insert`` body into the new instance's resource, or raises Google's error."""

    def __init__(self, project: ComputeProject, catalog: Catalog, network: Network) -> None:
        self.project = project
        self.catalog = catalog
        self.network = network

    def resource(self, zone: str, spec: dict[str, Any]) -> tuple[dict[str, Any], MachineShape]:
        """The instance ``spec`` asks for in ``zone``, as Compute Engine completes it (``STAGING``),
        and its machine type."""
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
        shape = self.catalog.shape(found.group(2), zone)
        if shape is None:
            raise invalid(
                "resource.machineType", machine_url, f"Machine type with name '{found.group(2)}' does not exist in zone '{zone}'."
            )
        labels = spec.get("labels") or {}
        check_labels(labels, "resource.labels")
        items = (spec.get("metadata") or {}).get("items") or []
        check_metadata(items, "resource.metadata")
        scheduling = scheduling_of(spec.get("scheduling") or {})
        accelerators = self._accelerators(spec.get("guestAccelerators") or [], shape, zone, scheduling)
        disks = self._disks(spec.get("disks") or [], name, zone, shape)
        accounts = self._service_accounts(spec.get("serviceAccounts") or [])
        interfaces = self.network.interfaces(spec.get("networkInterfaces") or [{}])
        tags = (spec.get("tags") or {}).get("items") or []
        link = self.project.link
        resource: dict[str, Any] = {
            "kind": "compute#instance",
            "id": str(secrets.randbits(63)),
            "creationTimestamp": timestamp(),
            "name": name,
            "description": spec.get("description", ""),
            "tags": {"items": tags, "fingerprint": fingerprint(tags)} if tags else {"fingerprint": fingerprint([])},
            "machineType": link("zones", zone, "machineTypes", shape.name),
            "status": "STAGING",
            "zone": link("zones", zone),
            "canIpForward": bool(spec.get("canIpForward", False)),
            "networkInterfaces": interfaces,
            "disks": disks,
            "metadata": metadata_resource(items),
            "serviceAccounts": accounts,
            "selfLink": link("zones", zone, "instances", name),
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

    def _service_accounts(self, wanted: list[dict[str, Any]]) -> list[dict[str, Any]]:
        accounts = []
        for index, account in enumerate(wanted):
            email = account.get("email", "")
            if email == "default":
                email = default_compute_account(self.project.sandbox.project_number)
            if email not in self.project.sandbox.service_accounts:
                raise invalid(
                    f"resource.serviceAccounts[{index}].email",
                    email,
                    f"The user does not have access to service account '{email}'. User: '…'. Ask a project owner to grant you the "
                    "iam.serviceAccountUser role on the service account",
                )
            accounts.append({"email": email, "scopes": account.get("scopes") or ["https://www.googleapis.com/auth/cloud-platform"]})
        return accounts

    def _accelerators(
        self, wanted: list[dict[str, Any]], shape: MachineShape, zone: str, scheduling: dict[str, Any]
    ) -> list[dict[str, Any]]:
        attached = []
        for index, accelerator in enumerate(wanted):
            url = accelerator.get("acceleratorType", "")
            name = last_segment(url)
            count = int(accelerator.get("acceleratorCount", 0))
            if not self.catalog.accelerator_offered(name, zone):
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
            attached.append({"acceleratorType": self.project.link("zones", zone, "acceleratorTypes", name), "acceleratorCount": count})
        if shape.gpu is not None and not attached:  # a2/g2: the GPUs come with the machine type
            type_link = self.project.link("zones", zone, "acceleratorTypes", shape.gpu[0])
            attached = [{"acceleratorType": type_link, "acceleratorCount": shape.gpu[1]}]
        if attached and scheduling["onHostMaintenance"] != "TERMINATE":
            raise invalid_usage("Instances with guest accelerators do not support live migration.")
        return attached

    def _disks(self, wanted: list[dict[str, Any]], name: str, zone: str, shape: MachineShape) -> list[dict[str, Any]]:
        boot = [disk for disk in wanted if disk.get("boot")]
        if len(boot) != 1:
            raise invalid("resource.disks", "", "An instance must have exactly one boot disk.")
        machine_arch = "ARM64" if shape.arm else "X86_64"
        disks = []
        for index, disk in enumerate(wanted):
            params = disk.get("initializeParams") or {}
            source = params.get("sourceImage", "")
            image = self.catalog.resolve_image(source) if source else None
            if disk.get("boot") and image is None:
                raise not_found(source or "sourceImage")
            if disk.get("boot") and image is not None and image["architecture"] != machine_arch:
                raise invalid_usage(
                    f"Requested boot disk architecture ({image['architecture']}) is not compatible with "
                    f"machine type architecture ({machine_arch})."
                )
            disk_type = last_segment(params.get("diskType") or "pd-standard")
            if disk_type not in DISK_TYPES:
                raise not_found(f"projects/{self.project.id}/zones/{zone}/diskTypes/{disk_type}")
            if (shape.family in HYPERDISK_ONLY) != disk_type.startswith("hyperdisk-"):
                raise invalid_usage(f"Machine type {shape.name} does not support disk type {disk_type}.")
            disk_name = params.get("diskName") or (name if disk.get("boot") else f"{name}-{index}")
            image_size = int((image or {}).get("diskSizeGb", "10"))
            size = str(params.get("diskSizeGb") or image_size)
            if int(size) < image_size:
                raise invalid_usage(f"Requested disk size cannot be smaller than the image size ({image_size} GB)")
            disks.append(
                {
                    "kind": "compute#attachedDisk",
                    "type": "PERSISTENT",
                    "mode": "READ_WRITE",
                    "source": self.project.link("zones", zone, "disks", disk_name),
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


def scheduling_of(spec: dict[str, Any]) -> dict[str, Any]:
    """An instance's ``scheduling`` as Compute Engine completes it (spot or standard, what ends it)."""
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


def check_metadata(items: list[dict[str, Any]], field_name: str) -> None:
    """Compute Engine's metadata rules: unique keys of at most 128 of ``[a-zA-Z0-9-_]``, values of at
    most 256 KiB, 512 KiB in all."""
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


def metadata_resource(items: list[dict[str, Any]]) -> dict[str, Any]:
    """An instance's ``metadata`` holding ``items``, with its fingerprint (``items`` left out when none)."""
    return {"kind": "compute#metadata", "fingerprint": fingerprint(items), **({"items": items} if items else {})}
