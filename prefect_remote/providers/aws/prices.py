"""EC2 on-demand prices (USD per hour, Linux, shared tenancy): the AWS Pricing API when it answers,
else a table shipped with the package (``prices.json``), so that choosing the cheapest instance type
never depends on an API the credentials may not reach.

>>> table = bundled_prices("us-east-1")
>>> table.prices["m6i.large"], table.source
(0.096, 'table')
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from botocore.client import BaseClient

logger = logging.getLogger(__name__)

# The table's prices where a region has none of its own; the Pricing API answers in this region.
BASE_REGION = "us-east-1"
PriceSource = Literal["pricing-api", "table"]
# What the Pricing API calls a plain on-demand Linux machine (no SQL Server, no dedicated host,
# no unused capacity reservation, no Capacity Block: a p-type GPU's Capacity Block price would
# otherwise win the cheapest of its lines).
LINUX_ON_DEMAND = {
    "operatingSystem": "Linux",
    "tenancy": "Shared",
    "preInstalledSw": "NA",
    "capacitystatus": "Used",
    "licenseModel": "No License required",
    "marketoption": "OnDemand",
}


@dataclass(frozen=True)
class PriceList:
    """On-demand USD/hour by instance type in ``region``; ``estimated`` names the prices taken from
    us-east-1 because the region's own were not known.

    >>> PriceList("eu-west-1", {"m6i.large": 0.107}, "table").price("m6i.large")
    0.107
    """

    region: str
    prices: Mapping[str, float]
    source: PriceSource
    estimated: frozenset[str] = field(default_factory=frozenset)

    def price(self, instance_type: str) -> float | None:
        return self.prices.get(instance_type)


@cache
def _table() -> dict[str, Any]:
    return json.loads(resources.files(__package__).joinpath("prices.json").read_text())


def table_regions() -> dict[str, frozenset[str]]:
    """The regions the bundled table has prices for, each with the instance types it prices there."""
    return {region: frozenset(prices) for region, prices in sorted(_table()["regions"].items())}


def bundled_prices(region: str) -> PriceList:
    """The shipped table's prices for ``region``. A type the region's row lacks (or every type, in a
    region the table does not know) gets its us-east-1 price, marked as estimated."""
    regions = _table()["regions"]
    base, own = regions[BASE_REGION], regions.get(region, {})
    estimated = frozenset(name for name in base if name not in own)
    if region not in regions:
        logger.info("no bundled EC2 prices for %s: us-east-1 prices are used as estimates", region)
    return PriceList(region, {**base, **own}, "table", estimated)


def fetch_prices(pricing_client: BaseClient, region: str) -> dict[str, float]:
    """Every on-demand Linux price in ``region`` from the AWS Pricing API (about ten pages), by instance type.

    One query per region, not one per type: a cheapest-fit choice needs them all.
    """
    filters = [{"Type": "TERM_MATCH", "Field": name, "Value": value} for name, value in {"regionCode": region, **LINUX_ON_DEMAND}.items()]
    prices: dict[str, float] = {}
    pages = pricing_client.get_paginator("get_products").paginate(ServiceCode="AmazonEC2", Filters=filters, FormatVersion="aws_v1")
    for page in pages:
        for item in page.get("PriceList", []):
            product = json.loads(item) if isinstance(item, str) else item
            name = product.get("product", {}).get("attributes", {}).get("instanceType")
            for term in product.get("terms", {}).get("OnDemand", {}).values():
                for dimension in term.get("priceDimensions", {}).values():
                    usd = float(dimension.get("pricePerUnit", {}).get("USD", 0) or 0)
                    if name and dimension.get("unit") == "Hrs" and usd > 0:
                        prices[name] = min(usd, prices.get(name, usd))
    return prices


def default_pricing_client() -> BaseClient:
    """A Pricing API client from boto3's usual chain, quick to give up: a missing answer only means
    the table is used."""
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=5, read_timeout=30, retries={"mode": "standard", "max_attempts": 2})
    return boto3.session.Session().client("pricing", region_name=BASE_REGION, config=config)


def on_demand_prices(region: str, pricing_client: BaseClient | None = None) -> PriceList:
    """``region``'s prices from the Pricing API, or the bundled table when the API cannot be reached,
    refuses the credentials (``pricing:GetProducts``) or knows nothing of the region."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        fetched = fetch_prices(pricing_client or default_pricing_client(), region)
    except (BotoCoreError, ClientError, ValueError, KeyError, TypeError) as error:
        logger.debug("AWS Pricing API unavailable (%s): using the bundled prices for %s", error, region)
        return bundled_prices(region)
    if not fetched:
        return bundled_prices(region)
    return PriceList(region, fetched, "pricing-api")
