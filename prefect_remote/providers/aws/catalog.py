"""A region's EC2 instance types with their on-demand prices, and the choice among them.

The types come from ``describe_instance_types`` (about ten pages), so they are kept: in memory,
and on disk under ``$PREFECT_REMOTE_HOME/cache/aws/`` for ``CATALOG_TTL``, one file per region and
endpoint. Prices come from :mod:`.prices` (the Pricing API, else the bundled table).

>>> ec2 = boto3.client("ec2", region_name="us-east-2")                         # doctest: +SKIP
>>> catalog = instance_types(ec2)                                              # doctest: +SKIP
>>> choose_instance_type(catalog, MachineSpec(cpu=2, memory="4 GiB"), "us-east-2").name  # doctest: +SKIP
't3a.medium'
"""

from __future__ import annotations

import difflib
import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect_remote.errors import CapacityError
from prefect_remote.providers.aws.prices import on_demand_prices, table_regions
from prefect_remote.providers.base import InstanceType, pick_instance_type, refuse_beyond_largest
from prefect_remote.providers.cache import save_cache

if TYPE_CHECKING:
    from botocore.client import BaseClient

    from prefect_remote.spec import MachineSpec

# Instance types change a few times a year; a week-old catalog only misses the newest.
CATALOG_TTL = 7 * 24 * 3600.0
_CACHE_FORMAT = 1
# (cache file) -> (fetched at, types): the file's path already names the home, region and endpoint.
_MEMORY: dict[str, tuple[float, list[InstanceType]]] = {}


def parse_instance_type(info: Mapping[str, Any]) -> InstanceType | None:
    """One ``describe_instance_types`` entry as an :class:`InstanceType` (price unset), or ``None``
    for types a machine cannot be launched on here: Mac hosts (neither x86_64 nor arm64), and
    paravirtual-only or capacity-block-only types.

    >>> parse_instance_type({"InstanceType": "g4dn.xlarge", "VCpuInfo": {"DefaultVCpus": 4},
    ...     "MemoryInfo": {"SizeInMiB": 16384}, "ProcessorInfo": {"SupportedArchitectures": ["x86_64"]},
    ...     "GpuInfo": {"Gpus": [{"Name": "T4", "Manufacturer": "NVIDIA", "Count": 1}]}}).describe()
    'g4dn.xlarge (4 cpu, 16 GiB, 1x t4, x86_64)'
    """
    architectures = info.get("ProcessorInfo", {}).get("SupportedArchitectures", [])
    arch = "arm64" if "arm64" in architectures else "x86_64" if "x86_64" in architectures else None
    if arch is None:
        return None
    if "hvm" not in info.get("SupportedVirtualizationTypes", ["hvm"]):
        return None  # today's AMIs boot on HVM only
    if not {"on-demand", "spot"} & set(info.get("SupportedUsageClasses", ["on-demand"])):
        return None
    gpus = info.get("GpuInfo", {}).get("Gpus", [])
    return InstanceType(
        name=info["InstanceType"],
        cpu=int(info["VCpuInfo"]["DefaultVCpus"]),
        memory=int(info["MemoryInfo"]["SizeInMiB"]) * 2**20,
        gpu=sum(int(g.get("Count", 0)) for g in gpus),
        gpu_type=str(gpus[0]["Name"]).lower() if gpus else None,  # "T4" -> "t4", as gpu="t4" asks
        arch=arch,
    )


def cache_path(region: str, endpoint_url: str) -> Path:
    """Where ``region``'s catalog from ``endpoint_url`` is kept (another endpoint is another cloud)."""
    from prefect_remote.settings import get_settings

    endpoint = hashlib.sha256(endpoint_url.encode()).hexdigest()[:12]
    return get_settings().home / "cache" / "aws" / f"instance-types-{region}-{endpoint}.json"


def instance_types(
    ec2_client: BaseClient, region: str | None = None, *, pricing_client: BaseClient | None = None, ttl: float = CATALOG_TTL
) -> list[InstanceType]:
    """Every instance type ``ec2_client`` can launch in ``region`` (default: the client's), priced
    where the price is known, sorted by name. Answered from memory or the disk cache while younger
    than ``ttl`` seconds (``ttl=0`` asks EC2 again).

    ``pricing_client`` is a Pricing API client (``us-east-1``); by default one is made from
    boto3's usual chain, and the bundled prices are used if it cannot answer.
    """
    region = region or ec2_client.meta.region_name
    if region != ec2_client.meta.region_name:
        raise ValueError(f"region={region!r}, but the EC2 client is for {ec2_client.meta.region_name!r}: make the client for {region!r}")
    path = cache_path(region, ec2_client.meta.endpoint_url)
    now = time.time()
    cached = _MEMORY.get(str(path))
    if cached is None or now - cached[0] >= ttl:
        cached = _load(path)  # another process may have fetched it since
    if cached is None or now - cached[0] >= ttl:
        cached = (now, _fetch(ec2_client, region, pricing_client, path))
    _MEMORY[str(path)] = cached
    return list(cached[1])


def cache_clear() -> None:
    """Forgets the catalogs held in memory (the disk cache stays, and is read again)."""
    _MEMORY.clear()


def _fetch(ec2_client: BaseClient, region: str, pricing_client: BaseClient | None, path: Path) -> list[InstanceType]:
    pages = ec2_client.get_paginator("describe_instance_types").paginate(PaginationConfig={"PageSize": 100})
    found = [parsed for page in pages for info in page.get("InstanceTypes", []) if (parsed := parse_instance_type(info))]
    prices = on_demand_prices(region, pricing_client)
    types = sorted((replace(item, price=prices.price(item.name)) for item in found), key=lambda item: item.name)
    document = {
        "format": _CACHE_FORMAT,
        "region": region,
        "endpoint": ec2_client.meta.endpoint_url,
        "fetched_at": time.time(),
        "prices": {"source": prices.source, "estimated": sorted(prices.estimated & {t.name for t in types})},
        "types": [asdict(item) for item in types],
    }
    save_cache(path, document)
    return types


def _load(path: Path) -> tuple[float, list[InstanceType]] | None:
    try:
        document = json.loads(path.read_text())
        if document.get("format") != _CACHE_FORMAT:
            return None
        return float(document["fetched_at"]), [InstanceType(**item) for item in document["types"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing or unreadable: asked again, and rewritten


# -- choosing ---------------------------------------------------------------------------------------


def gpu_regions() -> list[str]:
    """Regions known to offer GPU instance types (those the bundled price table prices some in)."""
    # EC2's GPU families are the g* and p* ones (g4dn, g5, g6, p3, p4d, p5…).
    return [region for region, names in table_regions().items() if any(name[0] in "gp" for name in names)]


def check_request(catalog: Sequence[InstanceType], spec: MachineSpec, region: str) -> None:
    """Refuses, saying what to do instead, a spec that ``region``'s catalog can never serve: no
    ``vm_type`` offered there, a ``vm_type`` of the other architecture than ``arm`` says, or a GPU
    where there is none (of that type)."""
    by_name = {item.name: item for item in catalog}
    arch = "arm64" if spec.arm else "x86_64"
    if spec.vm_type:
        names = list(spec.vm_type)
        known = [by_name[name] for name in names if name in by_name]
        if not known:
            close = sorted({match for name in names for match in difflib.get_close_matches(name, by_name, n=3, cutoff=0.75)})
            hint = f"; did you mean {', '.join(close)}?" if close else f"; `aws ec2 describe-instance-types --region {region}` lists them"
            raise CapacityError(f"vm_type={names!r}: not an instance type offered in {region}{hint}")
        if not any(item.arch == arch for item in known):
            others = _same_shape(catalog, known[0], arch)
            if spec.arm:
                raise CapacityError(
                    f"arm=True, but vm_type={names!r} is x86_64; name a Graviton (arm64) type instead"
                    f"{' such as ' + ', '.join(others) if others else ''}, or drop arm=True"
                )
            raise CapacityError(
                f"vm_type={names!r} is arm64 (Graviton); set arm=True so the software environment is built for "
                f"linux-aarch64, or name an x86_64 type{' such as ' + ', '.join(others) if others else ''}"
            )
    if not spec.vm_type:
        refuse_beyond_largest(spec, [item for item in catalog if item.arch == arch], f"{arch} instance type in {region}")
    if spec.gpu:
        with_gpus = [item for item in catalog if item.gpu]
        if not with_gpus:
            raise CapacityError(
                f"no GPU instance type in region {region}; GPU regions include {', '.join(gpu_regions())}: launch in one of them "
                "(set AWS_DEFAULT_REGION, or the aws provider's region option)"
            )
        if spec.gpu.type and not any(spec.gpu.type in (item.gpu_type or "") for item in with_gpus):
            offered = sorted({item.gpu_type for item in with_gpus if item.gpu_type})
            raise CapacityError(f"gpu={spec.gpu.type!r}: no such GPU in region {region}; GPUs there: {', '.join(offered)}")


def choose_instance_type(catalog: Sequence[InstanceType], spec: MachineSpec, region: str) -> InstanceType:
    """The cheapest type in ``catalog`` that meets ``spec`` (``vm_type``: the first of those named
    that fits, of the architecture ``arm`` says); :class:`CapacityError` saying what to change if none."""
    check_request(catalog, spec, region)
    arch = "arm64" if spec.arm else "x86_64"
    # pick_instance_type leaves a named vm_type's architecture alone; here it must match what the
    # software environment is built for.
    candidates = [item for item in catalog if item.arch == arch] if spec.vm_type else list(catalog)
    return pick_instance_type("aws", candidates, spec)


def _same_shape(catalog: Sequence[InstanceType], like: InstanceType, arch: str, count: int = 3) -> list[str]:
    """Up to ``count`` types of ``arch`` with ``like``'s CPUs and memory: its own family's kind first
    (m6i -> m7g), then the cheapest."""
    matches = [item for item in catalog if item.arch == arch and (item.cpu, item.memory) == (like.cpu, like.memory) and not item.gpu]
    matches.sort(key=lambda item: (_kind(item.name) != _kind(like.name), item.price is None, item.price or 0.0, item.name))
    return [item.name for item in matches[:count]]


def _kind(name: str) -> str:
    """An instance type's family letters: ``"m"`` for m6i.large, ``"inf"`` for inf2.xlarge."""
    return name[: len(name) - len(name.lstrip("abcdefghijklmnopqrstuvwxyz"))]
