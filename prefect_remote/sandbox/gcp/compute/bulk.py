"""What ``instances.bulkInsert`` takes: a ``BulkInsertInstanceResource`` read as Compute Engine reads
it, and turned into the ``instances.insert`` bodies of the instances it asks for (which
:class:`~prefect_remote.sandbox.gcp.compute.insert.Inserts` then validates one by one).

* ``count`` instances at most, ``minCount`` (default ``count``) at least, up to 5,000 in one call;
* names: the keys of ``perInstanceProperties`` first, then ``namePattern`` (one run of up to 18 ``#``,
  numbered after the highest existing instance of the zone that matches it); with neither enough
  names for ``count``, the request is invalid;
* ``instanceProperties`` is an instance template's: ``machineType``, a disk's ``diskType`` and an
  accelerator's ``acceleratorType`` are names (``e2-standard-2``), not URLs (Google answers a URL
  machine type with an error); ``sourceInstanceTemplate`` names a template, and the sandbox holds none.

Sources: Compute Engine's REST reference of ``instances.bulkInsert`` and ``BulkInsertInstanceResource``
(the google-cloud-compute types document each field), and "About bulk creation of VMs".
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any

from prefect_remote.sandbox.gcp.compute.google import invalid, not_found

MAX_COUNT = 5000  # instances one bulkInsert may create


def bulk_names(spec: dict[str, Any], existing: Collection[str]) -> tuple[list[str], int]:
    """The names of the instances ``spec`` (a ``BulkInsertInstanceResource``) asks for, ``count`` of
    them, and its ``minCount``; ``existing``: the zone's instance names (a pattern numbers after them)."""
    try:
        count = int(spec.get("count") or 0)
        min_count = int(spec.get("minCount") or count)
    except (TypeError, ValueError):
        raise invalid("resource.count", str(spec.get("count")), "Must be an integer.") from None
    if not 1 <= count <= MAX_COUNT:
        raise invalid("resource.count", str(count), f"Must be between 1 and {MAX_COUNT}.")
    if not 1 <= min_count <= count:
        raise invalid("resource.minCount", str(min_count), f"Must be between 1 and count ({count}).")
    names = list((spec.get("perInstanceProperties") or {}).keys())
    if len(names) > count:
        raise invalid("resource.perInstanceProperties", str(len(names)), f"Names more instances than count ({count}).")
    pattern = spec.get("namePattern") or ""
    if len(names) < count:
        if not pattern:
            why = "Either namePattern or a name in perInstanceProperties for each instance is required."
            raise invalid("resource.namePattern", "", why)
        names += _from_pattern(pattern, count - len(names), {*existing, *names})
    return names, min_count


def _from_pattern(pattern: str, wanted: int, existing: Collection[str]) -> list[str]:
    """``wanted`` names made by ``pattern``'s one run of ``#``, numbered after the highest taken."""
    runs = re.findall(r"#+", pattern)
    if len(runs) != 1 or len(runs[0]) > 18:
        raise invalid("resource.namePattern", pattern, "Must contain one continuous sequence of at most 18 '#' characters.")
    width = len(runs[0])
    head, tail = pattern.split(runs[0])
    matcher = re.compile(re.escape(head) + rf"(\d{{{width}}})" + re.escape(tail))
    highest = max((int(found.group(1)) for name in existing if (found := matcher.fullmatch(name))), default=0)
    if highest + wanted >= 10**width:
        raise invalid("resource.namePattern", pattern, f"Has too few '#' for {wanted} more instances.")
    return [f"{head}{number:0{width}d}{tail}" for number in range(highest + 1, highest + wanted + 1)]


def insert_body(spec: dict[str, Any], name: str, zone: str) -> dict[str, Any]:
    """The ``instances.insert`` body of instance ``name`` of a bulk request ``spec`` in ``zone``."""
    if spec.get("sourceInstanceTemplate"):
        raise not_found(str(spec["sourceInstanceTemplate"]))  # the sandbox has no instance templates
    properties = spec.get("instanceProperties")
    if not properties:
        raise invalid("resource.instanceProperties", "", "Required when sourceInstanceTemplate is not provided.")
    machine_type = str(properties.get("machineType") or "")
    _a_name("resource.instanceProperties.machineType", machine_type)
    disks = []
    for index, disk in enumerate(properties.get("disks") or ()):
        params = dict(disk.get("initializeParams") or {})
        if params.get("diskType"):
            _a_name(f"resource.instanceProperties.disks[{index}].initializeParams.diskType", params["diskType"])
            params["diskType"] = f"zones/{zone}/diskTypes/{params['diskType']}"
        disks.append({**disk, "initializeParams": params})
    accelerators = []
    for index, accelerator in enumerate(properties.get("guestAccelerators") or ()):
        kind = str(accelerator.get("acceleratorType") or "")
        _a_name(f"resource.instanceProperties.guestAccelerators[{index}].acceleratorType", kind)
        accelerators.append({**accelerator, "acceleratorType": f"zones/{zone}/acceleratorTypes/{kind}"})
    body = {**properties, "name": name, "machineType": f"zones/{zone}/machineTypes/{machine_type}", "disks": disks}
    if accelerators:
        body["guestAccelerators"] = accelerators
    return body


def _a_name(field_name: str, value: str) -> None:
    """Instance properties name their machine, disk and accelerator types; a URL is refused."""
    if not value or "/" in value:
        raise invalid(field_name, value, "Must be the name of a resource (such as 'e2-standard-2'), not a URL.")
