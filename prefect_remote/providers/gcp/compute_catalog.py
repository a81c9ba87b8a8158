"""Compute Engine's catalog: a zone's machine types, priced, and the choice among them (Cloud Run's
shapes are :mod:`~prefect_remote.providers.gcp.cloudrun_catalog`'s).

The types come from ``machineTypes.list`` in the zone. GPUs are either built in (g2: NVIDIA L4,
a2: A100, listed in a type's ``accelerators``) or attached: an n1 type with 1, 2 or 4 T4s is offered
as ``n1-standard-4+1xnvidia-tesla-t4`` (the type, then what :func:`attached` reads back).

>>> from prefect_remote.providers.gcp.prices import bundled_rates
>>> catalog = machine_types([{"name": "n1-standard-4", "guestCpus": 4, "memoryMb": 15360}], bundled_rates("us-central1"), t4=True)
>>> [item.describe() for item in catalog][:2]
['n1-standard-4 (4 cpu, 15 GiB, x86_64)', 'n1-standard-4+1xnvidia-tesla-t4 (4 cpu, 15 GiB, 1x nvidia-tesla-t4, x86_64)']
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from prefect_remote.errors import CapacityError
from prefect_remote.providers.base import InstanceType, pick_instance_type, refuse_beyond_largest
from prefect_remote.providers.gcp.prices import Rates, family

if TYPE_CHECKING:
    from prefect_remote.spec import MachineSpec

ARM_FAMILIES = ("t2a", "c4a")  # Ampere Altra, Google Axion
# Families that boot only from Hyperdisk: Compute Engine refuses a Persistent Disk on them (and on A3 Ultra).
HYPERDISK_ONLY = ("c4", "c4a", "c4d", "n4", "x4", "a4")
T4 = "nvidia-tesla-t4"
# n1 with attached T4s: the counts Compute Engine allows, and the most vCPUs each allows.
T4_COUNTS = {1: 48, 2: 48, 4: 96}
# Shared-core types (a fraction of a vCPU, bursting): chosen only when named in vm_type.
SHARED_CORE = re.compile(r"e2-(micro|small|medium)|f1-micro|g1-small")
# Built-in GPUs when a type's listing lacks ``accelerators``: g2-standard-N has 1 L4 up to 32 vCPUs.
_G2_GPUS = {24: 2, 48: 4, 96: 8}
_A2 = re.compile(r"a2-(?:highgpu|megagpu|ultragpu)-(\d+)g")


def attached(name: str) -> tuple[str, int, str] | None:
    """``(machine type, count, accelerator)`` of a catalog name with attached GPUs, else None.

    >>> attached("n1-standard-8+2xnvidia-tesla-t4")
    ('n1-standard-8', 2, 'nvidia-tesla-t4')
    """
    found = re.fullmatch(r"([a-z0-9-]+)\+(\d+)x([a-z0-9-]+)", name)
    return (found[1], int(found[2]), found[3]) if found else None


def _field(entry: Any, camel: str, snake: str, default: Any = None) -> Any:
    """A field of a machine type given as the REST dict (camelCase) or compute_v1's message (snake_case)."""
    if isinstance(entry, Mapping):
        return entry.get(camel, entry.get(snake, default))
    return getattr(entry, snake, default)


def built_in_gpus(entry: Any) -> tuple[int, str | None]:
    """GPUs that come with a machine type (count, accelerator type)."""
    accelerators = list(_field(entry, "accelerators", "accelerators", []) or [])
    if accelerators:
        first = accelerators[0]
        count = sum(int(_field(a, "guestAcceleratorCount", "guest_accelerator_count", 0) or 0) for a in accelerators)
        return count, str(_field(first, "guestAcceleratorType", "guest_accelerator_type", "")) or None
    name = str(_field(entry, "name", "name"))
    if name.startswith("g2-"):
        return _G2_GPUS.get(int(_field(entry, "guestCpus", "guest_cpus", 0) or 0), 1), "nvidia-l4"
    if found := _A2.fullmatch(name):
        return int(found[1]), "nvidia-a100-80gb" if "ultragpu" in name else "nvidia-tesla-a100"
    return 0, None


def machine_types(entries: Iterable[Any], rates: Rates, *, t4: bool) -> list[InstanceType]:
    """The offered types, priced by ``rates``, sorted by name; ``t4``: the zone has T4s to attach to n1 types."""
    found: list[InstanceType] = []
    for entry in entries:
        name = str(_field(entry, "name", "name"))
        deprecated = _field(entry, "deprecated", "deprecated")
        if deprecated and str(_field(deprecated, "state", "state", "") or "") in ("DEPRECATED", "OBSOLETE", "DELETED"):
            continue
        cpu = int(_field(entry, "guestCpus", "guest_cpus", 0) or 0)
        memory_mb = int(_field(entry, "memoryMb", "memory_mb", 0) or 0)
        architecture = str(_field(entry, "architecture", "architecture", "") or "").upper()
        arch = "arm64" if architecture == "ARM64" or family(name) in ARM_FAMILIES else "x86_64"
        gpus, gpu_type = built_in_gpus(entry)
        memory_gib = memory_mb / 1024
        price = rates.price(name, cpu, memory_gib, {gpu_type: gpus} if gpus and gpu_type else None)
        found.append(InstanceType(name, cpu, memory_mb * 2**20, gpus, gpu_type, arch, price))  # type: ignore[arg-type]
        if t4 and family(name) == "n1" and not SHARED_CORE.fullmatch(name):
            for count, most_cpu in T4_COUNTS.items():
                if cpu <= most_cpu:
                    found.append(
                        InstanceType(
                            f"{name}+{count}x{T4}",
                            cpu,
                            memory_mb * 2**20,
                            count,
                            T4,
                            "x86_64",
                            rates.price(name, cpu, memory_gib, {T4: count}),
                        )
                    )
    return sorted(found, key=lambda item: item.name)


def boot_disk_type(machine_type: str) -> str:
    """The disk type ``machine_type`` boots from: Hyperdisk Balanced where the family takes only
    Hyperdisk, else Persistent Disk Balanced (which the other families take, and Hyperdisk-only ones refuse).

    >>> boot_disk_type("n4-standard-4"), boot_disk_type("e2-standard-2")
    ('hyperdisk-balanced', 'pd-balanced')
    """
    only_hyperdisk = family(machine_type) in HYPERDISK_ONLY or machine_type.startswith("a3-ultragpu-")
    return "hyperdisk-balanced" if only_hyperdisk else "pd-balanced"


# -- choosing ---------------------------------------------------------------------------------------


def check_request(catalog: Sequence[InstanceType], spec: MachineSpec, zone: str) -> None:
    """Refuses, saying what to do instead, a spec ``zone`` can never serve: no ``vm_type`` offered
    there, arm with a GPU, a GPU (of that type) the zone lacks, more CPUs or memory than any type has."""
    by_name = {item.name: item for item in catalog}
    arch = "arm64" if spec.arm else "x86_64"
    if spec.arm and spec.gpu:
        raise CapacityError("arm=True with a GPU: Compute Engine's arm machines (t2a, c4a) take no GPUs; drop arm=True or the gpu")
    if spec.vm_type:
        names = list(spec.vm_type)
        if not [name for name in names if name in by_name]:
            plain = sorted(name for name in by_name if "+" not in name)
            close = list(
                dict.fromkeys(match for name in names for match in difflib.get_close_matches(name, plain, n=3, cutoff=0.75))
            )  # closest first
            some = close or [name for name in ("e2-standard-4", "n2-standard-4", "c3-standard-4", "t2a-standard-4") if name in by_name]
            raise CapacityError(
                f"vm_type={names!r}: not a machine type in zone {zone}; "
                f"{'did you mean' if close else 'some that are:'} {', '.join(some or plain[:6])}{'?' if close else ''} "
                f"(`gcloud compute machine-types list --zones {zone}` lists them all)"
            )
    elif not spec.gpu:
        same_arch = [item for item in catalog if item.arch == arch and not item.gpu]
        if not same_arch:
            raise CapacityError(f"no {arch} machine type in zone {zone}; {'drop arm=True or ' if spec.arm else ''}choose another zone")
        refuse_beyond_largest(spec, same_arch, f"{arch} machine type in zone {zone}")
    if spec.gpu:
        with_gpus = [item for item in catalog if item.gpu]
        offered = sorted({item.gpu_type for item in with_gpus if item.gpu_type})
        if not with_gpus:
            raise CapacityError(
                f"no GPU in zone {zone}; use a zone with GPUs (the gcp provider's zone option, e.g. us-central1-a has "
                "T4, L4 and A100): `gcloud compute accelerator-types list` shows where each is"
            )
        if spec.gpu.type and not any(spec.gpu.type in (item.gpu_type or "") for item in with_gpus):
            raise CapacityError(f"gpu={spec.gpu.type!r}: no such GPU in zone {zone}; GPUs there: {', '.join(offered)}")


def choose_machine_type(catalog: Sequence[InstanceType], spec: MachineSpec, zone: str) -> InstanceType:
    """The cheapest type in ``catalog`` that meets ``spec`` (``vm_type``: the first named that fits;
    ``n1-standard-4`` with a T4 asked for is that type with T4s attached); :class:`CapacityError`
    saying what to change if none."""
    check_request(catalog, spec, zone)
    arch = "arm64" if spec.arm else "x86_64"
    if spec.vm_type:
        # A named n1 type with a gpu asked for: the same type with GPUs attached, fewest first.
        named = [
            with_gpu for name in spec.vm_type for with_gpu in [name, *sorted(i.name for i in catalog if i.name.startswith(name + "+"))]
        ]
        spec = spec.model_copy(update={"vm_type": tuple(named)})
        candidates = [item for item in catalog if item.arch == arch]  # the environment is built for this arch
        if not any(item.name in spec.vm_type for item in candidates):
            other = "x86_64" if spec.arm else "arm64 (t2a, c4a)"
            raise CapacityError(
                f"vm_type={list(spec.vm_type)[:3]!r} is {other}, but arm={spec.arm}; name a {arch} type or "
                f"{'drop' if spec.arm else 'set'} arm=True"
            )
    else:
        candidates = [item for item in catalog if not SHARED_CORE.fullmatch(item.name)]
    return pick_instance_type(f"gcp (Compute Engine, {zone})", candidates, spec)
