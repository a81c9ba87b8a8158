"""EC2 instance types and prices against moto's EC2 (server mode), through the real boto3 client.
moto has no Pricing API, so these exercise the fallback to the bundled prices."""

from __future__ import annotations

import json

import boto3
import pytest
from botocore.awsrequest import AWSResponse

from prefect_remote.errors import CapacityError
from prefect_remote.providers.aws import catalog as ec2_catalog
from prefect_remote.providers.aws.catalog import cache_path, check_request, choose_instance_type, instance_types
from prefect_remote.providers.aws.prices import bundled_prices, on_demand_prices
from prefect_remote.providers.base import InstanceType, pick_instance_type
from prefect_remote.spec import MachineSpec

GiB = 2**30


@pytest.fixture(scope="module")
def catalog(aws_sandbox) -> list[InstanceType]:
    """moto's us-east-1 catalog, fetched once for the module (a full describe takes seconds there)."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in aws_sandbox.environ().items():
            patch.setenv(name, value)
        return instance_types(boto3.session.Session().client("ec2"), ttl=0)


def choose(catalog, region="us-east-1", **spec) -> InstanceType:
    return choose_instance_type(catalog, MachineSpec(**spec), region)


def test_moto_catalog_is_parsed(catalog):
    by_name = {item.name: item for item in catalog}
    assert len(catalog) > 1300
    assert by_name["t3.micro"] == InstanceType("t3.micro", cpu=2, memory=1 * GiB, arch="x86_64", price=0.0104)
    assert by_name["m7g.large"].arch == "arm64" and by_name["m7g.large"].memory == 8 * GiB
    assert (by_name["g4dn.xlarge"].gpu, by_name["g4dn.xlarge"].gpu_type) == (1, "t4")
    assert (by_name["g5.12xlarge"].gpu, by_name["g5.12xlarge"].gpu_type) == (4, "a10g")
    assert by_name["t2.micro"].arch == "x86_64"  # i386 and x86_64
    assert not [name for name in by_name if name.startswith("mac")]  # Mac hosts: neither arch
    assert {item.arch for item in catalog} == {"x86_64", "arm64"}
    priced = [item for item in catalog if item.price is not None]
    assert 150 < len(priced) < len(catalog)  # the table's families; the rest unpriced


def test_cheapest_fit_is_a_priced_type(catalog):
    chosen = choose(catalog, cpu=2, memory="4 GiB")
    fitting = [i for i in catalog if i.cpu == 2 and i.memory >= 4 * GiB and i.arch == "x86_64" and not i.gpu]
    assert any(i.price is None for i in fitting)  # unpriced types fit too, and are not taken first
    assert chosen.price == min(i.price for i in fitting if i.price is not None)
    assert chosen.name == "t3a.medium"


def test_arm_picks_graviton(catalog):
    chosen = choose(catalog, cpu=2, memory="4 GiB", arm=True)
    assert chosen.arch == "arm64" and chosen.name == "t4g.medium"


def test_gpus(catalog):
    assert choose(catalog, gpu=1).name == "g4dn.xlarge"
    assert choose(catalog, gpu="a10g").name == "g5.xlarge"
    assert choose(catalog, gpu={"count": 4, "type": "l4"}).name == "g6.12xlarge"
    with pytest.raises(CapacityError, match=r"gpu='mi300x': no such GPU in region us-east-1; GPUs there: .*a10g.*t4"):
        choose(catalog, gpu="mi300x")


def test_vm_types_are_tried_in_order(catalog):
    assert choose(catalog, vm_type=["m6i.xlarge", "m5.xlarge"]).name == "m6i.xlarge"
    assert choose(catalog, vm_type=["m5.xlarge", "m6i.xlarge"]).name == "m5.xlarge"
    # Named types that do not exist or do not fit are passed over.
    assert choose(catalog, cpu=4, vm_type=["nope.large", "m5.large", "c6i.xlarge", "m6i.xlarge"]).name == "c6i.xlarge"
    # Of a mixed list, the type of the architecture arm says.
    assert choose(catalog, vm_type=["m7g.large", "m6i.large"]).name == "m6i.large"
    assert choose(catalog, vm_type=["m6i.large", "m7g.large"], arm=True).name == "m7g.large"


def test_unknown_vm_type(catalog):
    with pytest.raises(
        CapacityError, match=r"vm_type=\['m6i.xlarg'\]: not an instance type offered in us-east-1; did you mean .*m6i.xlarge"
    ):
        choose(catalog, vm_type="m6i.xlarg")
    with pytest.raises(CapacityError, match="describe-instance-types --region us-east-1"):
        choose(catalog, vm_type="zz9.huge")


def test_architecture_and_vm_type_must_agree(catalog):
    with pytest.raises(
        CapacityError, match=r"arm=True, but vm_type=\['m6i.large'\] is x86_64; name a Graviton \(arm64\) type instead such as m7g.large"
    ):
        choose(catalog, vm_type="m6i.large", arm=True)
    with pytest.raises(
        CapacityError, match=r"vm_type=\['m7g.large'\] is arm64 \(Graviton\); set arm=True .* such as m6a.large, m5.large, m6i.large"
    ):
        choose(catalog, vm_type="m7g.large")


def test_gpu_in_a_region_without_gpus(catalog):
    cpu_only = [item for item in catalog if not item.gpu]
    regions = "ap-southeast-1, eu-central-1, eu-west-1, us-east-1, us-east-2, us-west-2"
    fix = r"launch in one of them \(set AWS_DEFAULT_REGION, or the aws provider's region option\)"
    with pytest.raises(CapacityError, match=rf"no GPU instance type in region eu-south-2; GPU regions include {regions}: {fix}$"):
        check_request(cpu_only, MachineSpec(gpu=1), "eu-south-2")
    check_request(cpu_only, MachineSpec(cpu=2), "eu-south-2")  # CPU-only requests are fine there


def test_unpriced_types_come_after_priced_ones():
    catalog = [
        InstanceType("unpriced", cpu=2, memory=4 * GiB),
        InstanceType("dear", cpu=2, memory=8 * GiB, price=0.5),
        InstanceType("cheap", cpu=2, memory=4 * GiB, price=0.1),
    ]
    assert pick_instance_type("aws", catalog, MachineSpec(cpu=2)).name == "cheap"
    assert pick_instance_type("aws", catalog, MachineSpec(memory="8 GiB")).name == "dear"
    assert pick_instance_type("aws", catalog[:1], MachineSpec(cpu=2)).name == "unpriced"  # still chosen when alone


def test_catalog_is_cached_in_memory_and_on_disk(aws_sandbox, aws_env, monkeypatch, tmp_path):
    monkeypatch.setenv("PREFECT_REMOTE_HOME", str(tmp_path))
    ec2 = boto3.session.Session().client("ec2")
    calls = []
    ec2.meta.events.register("before-call.ec2.DescribeInstanceTypes", lambda **_: calls.append(1))
    first = instance_types(ec2)
    assert len(calls) == 1
    assert instance_types(ec2) == first and len(calls) == 1  # memory
    path = cache_path("us-east-1", aws_sandbox.url)
    assert path.parent == tmp_path / "cache" / "aws"
    document = json.loads(path.read_text())
    assert document["prices"]["source"] == "table" and len(document["types"]) == len(first)  # no Pricing API here
    ec2_catalog.cache_clear()
    assert instance_types(ec2) == first and len(calls) == 1  # disk
    document["fetched_at"] -= ec2_catalog.CATALOG_TTL + 1
    path.write_text(json.dumps(document))
    ec2_catalog.cache_clear()
    assert instance_types(ec2) == first and len(calls) == 2  # stale: asked again
    with pytest.raises(ValueError, match="the EC2 client is for 'us-east-1'"):
        instance_types(ec2, "eu-west-1")


def test_bundled_prices_and_estimates():
    ireland = bundled_prices("eu-west-1")
    assert ireland.price("m6i.large") == 0.107 and "m6i.large" not in ireland.estimated
    assert ireland.price("p5.48xlarge") == bundled_prices("us-east-1").price("p5.48xlarge") and "p5.48xlarge" in ireland.estimated
    unknown = bundled_prices("xx-nowhere-1")
    assert unknown.prices == bundled_prices("us-east-1").prices and unknown.estimated == set(unknown.prices)


def pricing_answer(pages):
    """Makes GetProducts answer with ``pages`` in turn (the Pricing API's JSON strings), as AWS would:
    only the products whose attributes match every TERM_MATCH filter (a product without the
    attribute matches none)."""

    def matches(item: str, filters: list[dict]) -> bool:
        attributes = json.loads(item)["product"]["attributes"]
        return all(attributes.get(f["Field"]) == f["Value"] for f in filters if f["Type"] == "TERM_MATCH")

    def answer(params, **_):
        body = json.loads(params["body"]) if params.get("body") else {}
        index = int(body.get("NextToken", "0"))
        page = {"PriceList": [item for item in pages[index] if matches(item, body.get("Filters", []))], "FormatVersion": "aws_v1"}
        if index + 1 < len(pages):
            page["NextToken"] = str(index + 1)
        return AWSResponse("https://api.pricing.us-east-1.amazonaws.com", 200, {}, None), page

    return answer


def product(instance_type: str, usd: str, unit: str = "Hrs", market: str = "OnDemand") -> str:
    """A Compute Instance product as the Pricing API lists it: a plain on-demand Linux line, or (``market``)
    a Capacity Block's."""
    dimension = {"unit": unit, "pricePerUnit": {"USD": usd}, "description": f"${usd} per On Demand Linux {instance_type} Instance Hour"}
    attributes = {
        "instanceType": instance_type,
        "regionCode": "eu-west-1",
        "operatingSystem": "Linux",
        "tenancy": "Shared",
        "preInstalledSw": "NA",
        "capacitystatus": "Used",
        "licenseModel": "No License required",
        "marketoption": market,
    }
    return json.dumps(
        {
            "product": {"productFamily": "Compute Instance", "attributes": attributes},
            "terms": {
                "OnDemand": {"SKU.JRTCKXETXF": {"priceDimensions": {"SKU.JRTCKXETXF.6YS6EN2CT7": dimension}}},
                "Reserved": {"SKU.X": {"priceDimensions": {"SKU.X.Y": {"unit": "Hrs", "pricePerUnit": {"USD": "0.01"}}}}},
            },
        }
    )


def test_prices_from_the_pricing_api(aws_env):
    pricing = boto3.session.Session().client("pricing", region_name="us-east-1")
    sent = []
    pricing.meta.events.register("before-call.pricing.GetProducts", lambda params, **_: sent.append(json.loads(params["body"])))
    pages = [
        [product("m6i.large", "0.1070000000"), product("m6i.large", "0.0000000000")],  # a free line is not a price
        [product("zz1.large", "1.5"), product("zz1.large", "9", unit="Quantity")],  # nor a per-quantity one
        # A Capacity Block's line (p-type GPUs) is not an on-demand price, however cheap.
        [product("p5.48xlarge", "98.32"), product("p5.48xlarge", "31.46", market="CapacityBlock")],
    ]
    pricing.meta.events.register("before-call.pricing.GetProducts", pricing_answer(pages))
    prices = on_demand_prices("eu-west-1", pricing)
    assert prices.source == "pricing-api" and dict(prices.prices) == {"m6i.large": 0.107, "zz1.large": 1.5, "p5.48xlarge": 98.32}
    filters = {f["Field"]: f["Value"] for f in sent[0]["Filters"]}
    assert filters == {
        "regionCode": "eu-west-1",
        "operatingSystem": "Linux",
        "tenancy": "Shared",
        "preInstalledSw": "NA",
        "capacitystatus": "Used",
        "licenseModel": "No License required",
        "marketoption": "OnDemand",
    }


def test_prices_fall_back_to_the_table_when_the_api_cannot_answer(aws_env):
    # moto has no Pricing API: the request fails, silently, and the table answers.
    prices = on_demand_prices("eu-west-1")
    assert prices.source == "table" and prices.price("m6i.large") == 0.107
