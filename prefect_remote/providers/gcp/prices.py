"""Compute Engine on-demand prices (USD per hour): the Cloud Billing Catalog API when it answers,
else a table shipped with the package (``prices.json``), so that choosing the cheapest machine type
never depends on an API the credentials may not reach.

A machine's price is its family's per-vCPU and per-GiB rates times its shape, plus its GPUs'
(how Google prices predefined types: the listed n1-standard-4 is 4 x $0.031611 + 15 x $0.004237).

>>> table = bundled_rates("us-central1")
>>> round(table.price("n1-standard-4", cpu=4, memory_gib=15), 6), table.source
(0.189999, 'table')
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from prefect_remote.providers.cache import save_cache

logger = logging.getLogger(__name__)

PriceSource = Literal["billing-api", "table"]
BILLING_API = "https://cloudbilling.googleapis.com"
COMPUTE_SERVICE = "6F81-5844-456A"  # Compute Engine's service id in the Cloud Billing Catalog
PRICES_TTL = 7 * 24 * 3600.0  # list prices change a few times a year
# "N2 Instance Core running in Americas", "N2D AMD Instance Ram running in Belgium",
# "N1 Predefined Instance Core running in Americas": a family's on-demand rate (not Custom, not sole-tenant).
_SKU_RATE = re.compile(r"(?P<family>E2|N1 Predefined|N2D|N2|C3|T2A|C4A|G2|A2)(?: AMD| Arm)? Instance (?P<kind>Core|Ram) running in ")
_SKU_GPU = {
    "Nvidia Tesla T4 GPU running in ": "nvidia-tesla-t4",
    "Nvidia L4 GPU running in ": "nvidia-l4",
    "Nvidia Tesla A100 GPU running in ": "nvidia-tesla-a100",
}


def family(machine_type: str) -> str:
    """A machine type's family: ``"n2d"`` for n2d-standard-8.

    >>> family("c4a-highmem-16")
    'c4a'
    """
    return machine_type.split("-", 1)[0]


@dataclass(frozen=True)
class Rates:
    """``region``'s rates: per family ``{"cpu": usd per vCPU-hour, "memory_gib": usd per GiB-hour}``,
    per GPU type, and whole prices of shared-core types; ``estimated`` when taken from us-central1."""

    region: str
    families: Mapping[str, Mapping[str, float]]
    gpus: Mapping[str, float]
    shared_core: Mapping[str, float] = field(default_factory=dict)
    source: PriceSource = "table"
    estimated: bool = False

    def price(self, machine_type: str, cpu: int, memory_gib: float, gpus: Mapping[str, int] | None = None) -> float | None:
        """USD/hour of ``machine_type`` (``cpu`` vCPUs, ``memory_gib``) with ``gpus`` attached or
        built in (type -> count); None when a rate is unknown."""
        if machine_type in self.shared_core:
            return self.shared_core[machine_type]
        rates = self.families.get(family(machine_type))
        if rates is None:
            return None
        total = cpu * rates["cpu"] + memory_gib * rates["memory_gib"]
        for gpu_type, count in (gpus or {}).items():
            if gpu_type not in self.gpus:
                return None
            total += count * self.gpus[gpu_type]
        return round(total, 6)


@cache
def _table() -> dict[str, Any]:
    return json.loads(resources.files(__package__).joinpath("prices.json").read_text())


def bundled_rates(region: str) -> Rates:
    """The shipped table's rates for ``region``: us-central1's times the region's ratio (a region the
    table does not know gets us-central1's, marked as estimated)."""
    table = _table()
    ratio = table["region_ratios"].get(region)
    factor = 1.0 if ratio is None else float(ratio)
    return Rates(
        region,
        {name: {kind: round(rate * factor, 7) for kind, rate in rates.items()} for name, rates in table["families"].items()},
        {name: round(rate * factor, 6) for name, rate in table["gpus"].items()},
        {name: round(rate * factor, 6) for name, rate in table["shared_core"].items()},
        "table",
        estimated=ratio is None,
    )


# -- the Cloud Billing Catalog API -----------------------------------------------------------------


def parse_skus(
    skus: Iterator[Mapping[str, Any]] | list[Mapping[str, Any]], region: str
) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Family rates and GPU prices in ``region`` from Compute Engine's catalog SKUs (on-demand only).

    >>> sku = {"description": "N2 Instance Core running in Americas", "serviceRegions": ["us-central1"],
    ...        "category": {"usageType": "OnDemand"},
    ...        "pricingInfo": [{"pricingExpression": {"tieredRates": [{"unitPrice": {"units": "0", "nanos": 31611000}}]}}]}
    >>> parse_skus([sku], "us-central1")
    ({'n2': {'cpu': 0.031611}}, {})
    """
    families: dict[str, dict[str, float]] = {}
    gpus: dict[str, float] = {}
    for sku in skus:
        if sku.get("category", {}).get("usageType") != "OnDemand" or region not in sku.get("serviceRegions", []):
            continue
        description = str(sku.get("description", ""))
        price = _unit_price(sku)
        if price is None:
            continue
        rate = _SKU_RATE.match(description)
        if rate:
            name = rate["family"].split()[0].lower()  # "N1 Predefined" -> n1
            families.setdefault(name, {})["cpu" if rate["kind"] == "Core" else "memory_gib"] = price
            continue
        for prefix, gpu_type in _SKU_GPU.items():
            if description.startswith(prefix):
                gpus[gpu_type] = price
    return {name: rates for name, rates in families.items()}, gpus


def _unit_price(sku: Mapping[str, Any]) -> float | None:
    try:
        rates = sku["pricingInfo"][0]["pricingExpression"]["tieredRates"]
        unit = rates[-1]["unitPrice"]  # the last tier: past any free usage
        return int(unit.get("units", 0) or 0) + int(unit.get("nanos", 0) or 0) / 1e9
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def fetch_rates(credentials: Any, region: str, api_endpoint: str | None = None, timeout: float = 10.0) -> Rates | None:
    """``region``'s rates from the Cloud Billing Catalog API (a few pages of Compute Engine SKUs),
    filled in from the table where the catalog lacks a family; None if it cannot be read."""
    from google.auth.transport.requests import AuthorizedSession

    base = (api_endpoint or BILLING_API).rstrip("/")
    session = AuthorizedSession(credentials)
    skus: list[Mapping[str, Any]] = []
    token = ""
    try:
        for _ in range(50):  # about ten pages today; a bound, not a limit
            params = {"currencyCode": "USD", "pageSize": 5000, **({"pageToken": token} if token else {})}
            response = session.get(f"{base}/v1/services/{COMPUTE_SERVICE}/skus", params=params, timeout=timeout)
            if response.status_code != 200:
                logger.debug("Cloud Billing Catalog API answered %s: using the bundled prices", response.status_code)
                return None
            page = response.json()
            skus += page.get("skus", [])
            token = page.get("nextPageToken", "")
            if not token:
                break
    except Exception as error:
        logger.debug("Cloud Billing Catalog API unavailable (%s): using the bundled prices", error)
        return None
    families, gpus = parse_skus(skus, region)
    complete = {name: rates for name, rates in families.items() if {"cpu", "memory_gib"} <= set(rates)}
    if not complete:
        return None
    table = bundled_rates(region)
    return Rates(region, {**table.families, **complete}, {**table.gpus, **gpus}, table.shared_core, "billing-api")


def cache_path(region: str, api_endpoint: str | None) -> Path:
    """Where ``region``'s fetched rates are kept (another endpoint is another cloud)."""
    from prefect_remote.settings import get_settings

    endpoint = hashlib.sha256((api_endpoint or BILLING_API).encode()).hexdigest()[:12]
    return get_settings().home / "cache" / "gcp" / f"rates-{region}-{endpoint}.json"


def on_demand_rates(credentials: Any, region: str, api_endpoint: str | None = None, ttl: float = PRICES_TTL) -> Rates:
    """``region``'s rates: from the disk cache while younger than ``ttl``, else the Cloud Billing
    Catalog API, else the bundled table (and the failure is remembered for ``ttl`` too: a
    launcher without ``billing`` access asks once a week, not once a launch)."""
    path = cache_path(region, api_endpoint)
    try:
        document = json.loads(path.read_text())
        if time.time() - float(document["fetched_at"]) < ttl:
            if document["source"] == "table":
                return bundled_rates(region)
            return Rates(region, document["families"], document["gpus"], document["shared_core"], "billing-api")
    except (OSError, ValueError, KeyError, TypeError):
        pass
    rates = fetch_rates(credentials, region, api_endpoint) if credentials is not None else None
    document = {"fetched_at": time.time(), "source": "table"}
    if rates is not None:
        document.update(source=rates.source, families=rates.families, gpus=rates.gpus, shared_core=rates.shared_core)
    save_cache(path, document)
    return rates or bundled_rates(region)
