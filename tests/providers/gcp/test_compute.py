"""Compute Engine VMs: prices and the choice of machine type (no network), what a VM is inserted
with, and, against the sandbox GCP's Compute Engine fake, VMs launched, listed and deleted for real."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest

from prefect_remote.errors import CapacityError
from prefect_remote.providers.base import InstanceType, Launch
from prefect_remote.providers.gcp import compute_catalog
from prefect_remote.providers.gcp import prices as gce_prices
from prefect_remote.providers.gcp.compute import ComputeService
from prefect_remote.providers.gcp.compute_catalog import attached, choose_machine_type, machine_types
from prefect_remote.providers.gcp.prices import bundled_rates, on_demand_rates, parse_skus
from prefect_remote.providers.gcp.provider import GCPProvider
from prefect_remote.providers.gcp.service import label_key, label_value, labels_for
from prefect_remote.spec import MachineSpec

GiB = 2**30
ZONE = "us-central1-a"


def entry(name: str, cpu: int, memory_gib: float, **extra) -> dict:
    """A machineTypes.list item as the REST API returns it."""
    return {"name": name, "guestCpus": cpu, "memoryMb": int(memory_gib * 1024), **extra}


ENTRIES = [
    entry("e2-micro", 2, 1, isSharedCpu=True),
    entry("e2-medium", 2, 4, isSharedCpu=True),
    entry("e2-standard-2", 2, 8),
    entry("e2-standard-4", 4, 16),
    entry("e2-highcpu-4", 4, 4),
    entry("n2-standard-4", 4, 16),
    entry("n2d-standard-4", 4, 16),
    entry("c3-standard-4", 4, 16),
    entry("n1-standard-4", 4, 15),
    entry("n1-standard-96", 96, 360),
    entry("t2a-standard-4", 4, 16, architecture="ARM64"),
    entry("c4a-standard-4", 4, 16),  # no architecture field: known by its family
    entry("g2-standard-4", 4, 16, accelerators=[{"guestAcceleratorType": "nvidia-l4", "guestAcceleratorCount": 1}]),
    entry("a2-highgpu-1g", 12, 85, accelerators=[{"guestAcceleratorType": "nvidia-tesla-a100", "guestAcceleratorCount": 1}]),
    entry("n1-standard-8", 8, 30, deprecated={"state": "DEPRECATED"}),
]


@pytest.fixture(scope="module")
def types() -> list[InstanceType]:
    return machine_types(ENTRIES, bundled_rates("us-central1"), t4=True)


def choose(types, **spec) -> InstanceType:
    return choose_machine_type(types, MachineSpec(**spec), ZONE)


# -- prices --------------------------------------------------------------------------------------


def test_bundled_rates_reproduce_listed_prices():
    rates = bundled_rates("us-central1")
    assert rates.price("n1-standard-4", 4, 15) == pytest.approx(0.189999)
    assert rates.price("c3-standard-4", 4, 16) == pytest.approx(0.201608)
    assert rates.price("a2-highgpu-1g", 12, 85, {"nvidia-tesla-a100": 1}) == pytest.approx(3.673385)
    assert rates.price("n1-standard-4", 4, 15, {"nvidia-tesla-t4": 2}) == pytest.approx(0.889999)
    assert rates.price("e2-micro", 2, 1) == 0.008376  # shared-core: a whole-machine price
    assert rates.price("m3-ultramem-32", 32, 976) is None  # a family the table does not price
    assert rates.price("n1-standard-4", 4, 15, {"nvidia-h100-80gb": 1}) is None
    assert not rates.estimated


def test_other_regions_scale_and_unknown_ones_are_estimates():
    base, belgium, unknown = bundled_rates("us-central1"), bundled_rates("europe-west1"), bundled_rates("me-central2")
    assert belgium.price("e2-standard-4", 4, 16) == pytest.approx(base.price("e2-standard-4", 4, 16) * 1.101, rel=1e-4)
    assert unknown.estimated and unknown.price("e2-standard-4", 4, 16) == base.price("e2-standard-4", 4, 16)


def test_billing_catalog_skus_are_parsed():
    def sku(description, nanos, usage="OnDemand", regions=("us-central1",)):
        price = {"units": "0", "nanos": nanos}
        return {
            "description": description,
            "serviceRegions": list(regions),
            "category": {"usageType": usage},
            "pricingInfo": [{"pricingExpression": {"tieredRates": [{"unitPrice": {"units": "0", "nanos": 0}}, {"unitPrice": price}]}}],
        }

    skus = [
        sku("N2D AMD Instance Core running in Americas", 27502000),
        sku("N2D AMD Instance Ram running in Americas", 3686000),
        sku("N1 Predefined Instance Core running in Americas", 31611000),
        sku("N2 Custom Instance Core running in Americas", 99000000),  # custom: not a predefined rate
        sku("Spot Preemptible N2D AMD Instance Core running in Americas", 6000000, usage="Preemptible"),
        sku("E2 Instance Core running in Belgium", 24000000, regions=("europe-west1",)),
        sku("Nvidia Tesla T4 GPU running in Americas", 350000000),
    ]
    families, gpus = parse_skus(skus, "us-central1")
    assert families == {"n2d": {"cpu": 0.027502, "memory_gib": 0.003686}, "n1": {"cpu": 0.031611}}
    assert gpus == {"nvidia-tesla-t4": 0.35}


def test_rates_fall_back_to_the_table_and_remember_it(monkeypatch, tmp_path):
    monkeypatch.setenv("PREFECT_REMOTE_HOME", str(tmp_path))
    calls = []
    monkeypatch.setattr(gce_prices, "fetch_rates", lambda *args, **kwargs: calls.append(args))
    first = on_demand_rates(object(), "us-central1", "http://127.0.0.1:9")
    again = on_demand_rates(object(), "us-central1", "http://127.0.0.1:9")
    assert first.source == again.source == "table" and len(calls) == 1  # asked once, not once a launch


# -- the catalog and the choice -----------------------------------------------------------------------


def test_machine_types_are_parsed_with_arch_and_gpus(types):
    by_name = {item.name: item for item in types}
    assert by_name["e2-standard-4"] == InstanceType("e2-standard-4", 4, 16 * GiB, price=pytest.approx(0.134012))
    assert by_name["t2a-standard-4"].arch == by_name["c4a-standard-4"].arch == "arm64"
    assert (by_name["g2-standard-4"].gpu, by_name["g2-standard-4"].gpu_type) == (1, "nvidia-l4")
    assert (by_name["a2-highgpu-1g"].gpu, by_name["a2-highgpu-1g"].gpu_type) == (1, "nvidia-tesla-a100")
    assert by_name["a2-highgpu-1g"].price == pytest.approx(3.673385)
    t4 = by_name["n1-standard-4+1xnvidia-tesla-t4"]
    assert (t4.cpu, t4.memory, t4.gpu, t4.gpu_type, t4.price) == (4, 15 * GiB, 1, "nvidia-tesla-t4", pytest.approx(0.539999))
    assert "n1-standard-96+4xnvidia-tesla-t4" in by_name and "n1-standard-96+1xnvidia-tesla-t4" not in by_name  # 1 T4: 48 vCPU at most
    assert "n1-standard-8" not in by_name  # deprecated
    assert attached("n1-standard-4+1xnvidia-tesla-t4") == ("n1-standard-4", 1, "nvidia-tesla-t4") and attached("e2-standard-4") is None


def test_gpus_are_inferred_when_a_listing_lacks_accelerators():
    types = machine_types([entry("g2-standard-24", 24, 96), entry("a2-ultragpu-2g", 24, 340)], bundled_rates("us-central1"), t4=False)
    assert [(item.gpu, item.gpu_type) for item in types] == [(4 // 2, "nvidia-a100-80gb"), (2, "nvidia-l4")]


def test_cheapest_fit(types):
    assert choose(types, cpu=4, memory="16 GiB").name == "e2-standard-4"
    assert choose(types, cpu=2).name == "e2-standard-2"  # shared-core types only when named
    assert choose(types, vm_type="e2-micro").name == "e2-micro"
    assert choose(types, cpu=4, arm=True).name == "t2a-standard-4"
    assert choose(types, gpu=True).name == "n1-standard-4+1xnvidia-tesla-t4"  # T4 on n1: the cheapest GPU
    assert choose(types, gpu="l4").name == "g2-standard-4"
    assert choose(types, gpu="a100").name == "a2-highgpu-1g"
    assert choose(types, gpu={"count": 2, "type": "t4"}).name == "n1-standard-4+2xnvidia-tesla-t4"
    assert choose(types, vm_type="n1-standard-4", gpu="t4").name == "n1-standard-4+1xnvidia-tesla-t4"
    assert choose(types, vm_type=["nope-1", "c3-standard-4"]).name == "c3-standard-4"


def test_bad_requests_say_what_to_do(types):
    with pytest.raises(
        CapacityError, match=r"vm_type=\['n2-standrd-4'\]: not a machine type in zone us-central1-a; did you mean n2-standard-4, "
    ):
        choose(types, vm_type="n2-standrd-4")
    with pytest.raises(
        CapacityError,
        match=r"vm_type=\['m6i.large'\]: not a machine type in zone us-central1-a; some that are: e2-standard-4, n2-standard-4",
    ):
        choose(types, vm_type="m6i.large")
    with pytest.raises(CapacityError, match="arm=True with a GPU: Compute Engine's arm machines"):
        choose(types, arm=True, gpu=True)
    with pytest.raises(
        CapacityError, match=r"gpu='h100': no such GPU in zone us-central1-a; GPUs there: nvidia-l4, nvidia-tesla-a100, nvidia-tesla-t4"
    ):
        choose(types, gpu="h100")
    no_gpus = [item for item in types if not item.gpu]
    with pytest.raises(CapacityError, match="no GPU in zone us-central1-a; use a zone with GPUs"):
        choose(no_gpus, gpu=True)
    with pytest.raises(CapacityError, match="cpu=200: the largest x86_64 machine type in zone us-central1-a has 96"):
        choose(types, cpu=200)
    with pytest.raises(
        CapacityError, match=r"vm_type=\['t2a-standard-4'\] is arm64 \(t2a, c4a\), but arm=False; name a x86_64 type or set arm=True"
    ):
        choose(types, vm_type="t2a-standard-4")


# -- labels and what a VM is inserted with ---------------------------------------------------------------


def test_tags_become_labels_where_they_can():
    assert label_key("prefect.io/flow-run-id") == "prefect_io_flow-run-id"
    assert label_key("9lives") == "t_9lives" and len(label_key("k" * 80)) == 63
    assert label_value("scheduler") == "scheduler" and label_value("My Cluster") is None and label_value("x" * 64) is None
    assert labels_for({"dask-role": "worker", "dask-cluster": "Big Run", "Team": "ml"}) == {"dask-role": "worker", "team": "ml"}


def test_more_labels_than_a_machine_takes_are_refused_with_what_to_do(service, types):
    launch = launch_of(types, cpu=2)
    many = dataclasses.replace(launch, tags={f"k{n}": "v" for n in range(61)})
    with pytest.raises(ValueError, match="61 tags with label values: Compute Engine takes 64 labels on a machine, 60 of them"):
        service.bulk_body(many, ["vm-0123456789ab"], ["prefect-remote"], spot=False)
    sixty = dataclasses.replace(launch, tags={**{f"k{n}": "v" for n in range(60)}, "Team": "Data Science"})  # no label value
    assert len(body_of(service, sixty)["labels"]) == 64  # each listed by its label, beside prefect-remote's four


@pytest.fixture
def service(monkeypatch) -> ComputeService:
    monkeypatch.setenv("PREFECT_REMOTE_STORE", "gs://unit-bucket/envs")  # its records' label is on every VM
    provider = GCPProvider(project="unit-project", region="us-central1", service_account="runner@unit-project.iam.gserviceaccount.com")
    return ComputeService(provider)


def launch_of(types, boot_script="#!/bin/sh\necho hi\n", **spec) -> Launch:
    machine_spec = MachineSpec(**spec)
    return Launch(
        "launch-0a1b2c3d4e5f",
        boot_script,
        machine_spec,
        choose(types, **spec),
        1,
        {"dask-role": "scheduler", "dask-cluster": "My Run"},
        "host:123",
        False,
    )


def bulk_of(service, launch, spot=False, names=("vm-0123456789ab",)) -> dict:
    from google.cloud import compute_v1

    return json.loads(compute_v1.BulkInsertInstanceResource.to_json(service.bulk_body(launch, list(names), ["prefect-remote"], spot=spot)))


def body_of(service, launch, spot=False) -> dict:
    """The properties every VM of ``launch`` is inserted with."""
    return bulk_of(service, launch, spot)["instanceProperties"]


def test_a_launch_is_one_bulk_insert_all_or_nothing_with_only_the_names_per_machine(service, types):
    bulk = bulk_of(service, launch_of(types, cpu=4), names=("vm-000000000001", "vm-000000000002", "vm-000000000003"))
    assert (bulk["count"], bulk["minCount"]) == ("3", "3")  # none of them unless all of them
    assert bulk["perInstanceProperties"] == {"vm-000000000001": {}, "vm-000000000002": {}, "vm-000000000003": {}}
    assert "namePattern" not in bulk and "name" not in bulk["instanceProperties"]  # each reads its id from its name


def test_a_launchs_vms_are_named_in_messages_all_of_a_few_or_the_first_of_many():
    from prefect_remote.providers.gcp.compute import _named

    assert _named(["vm-1", "vm-2"]) == "vm-1, vm-2"
    assert _named([f"vm-{n}" for n in range(500)]) == "vm-0, vm-1, vm-2 and 497 more"


def test_instance_body(service, types):
    body = body_of(service, launch_of(types, cpu=4, memory="16 GiB", disk_size=50))
    assert body["machineType"] == "e2-standard-4"  # an instance template's properties name their types
    metadata = {item["key"]: item["value"] for item in body["metadata"]["items"]}
    assert metadata["startup-script"] == "#!/bin/sh\necho hi\n"
    assert json.loads(metadata["prefect-remote-tags"]) == {"dask-role": "scheduler", "dask-cluster": "My Run"}  # raw, as given
    assert metadata["prefect-remote-owner"] == "host:123"
    assert body["labels"] == {
        "dask-role": "scheduler",
        "prefect-remote-service": "compute",
        "prefect-remote-launch": "launch-0a1b2c3d4e5f",
        "prefect-remote-owner": "host_123",
        "prefect-remote-records": service.provider.records.label,  # the pool's: another pool's provider leaves it alone
    }
    [disk] = body["disks"]
    assert disk["boot"] and disk["autoDelete"]
    assert disk["initializeParams"]["sourceImage"] == "projects/debian-cloud/global/images/family/debian-12"
    assert disk["initializeParams"]["diskSizeGb"] == "50" and disk["initializeParams"]["diskType"] == "pd-balanced"
    assert body["serviceAccounts"] == [
        {"email": "runner@unit-project.iam.gserviceaccount.com", "scopes": ["https://www.googleapis.com/auth/cloud-platform"]}
    ]
    assert body["tags"] == {"items": ["prefect-remote"]}
    assert body["networkInterfaces"][0]["network"] == "global/networks/default"
    assert body["scheduling"] == {"provisioningModel": "STANDARD", "automaticRestart": False, "nodeAffinities": []}  # never rerun by Google


def test_the_root_disk_holds_real_environments_and_is_the_type_its_family_boots_from(service, types):
    [disk] = body_of(service, launch_of(types, cpu=4))["disks"]
    assert disk["initializeParams"]["diskSizeGb"] == "40"  # not the image's 10 GB
    assert disk["initializeParams"]["diskType"] == "pd-balanced"
    for machine_type in ("n4-standard-4", "c4-standard-8", "c4a-standard-4", "c4d-standard-8", "x4-megamem-960-metal", "a3-ultragpu-8g"):
        assert compute_catalog.boot_disk_type(machine_type) == "hyperdisk-balanced", machine_type
    for machine_type in ("e2-standard-2", "n2-standard-4", "c3-standard-4", "n1-standard-4", "g2-standard-4", "t2a-standard-4"):
        assert compute_catalog.boot_disk_type(machine_type) == "pd-balanced", machine_type


def test_spot_timeout_gpu_and_arm(service, types):
    spot = body_of(service, launch_of(types, cpu=4, spot_policy="spot", timeout="1 hour"), spot=True)["scheduling"]
    assert spot["provisioningModel"] == "SPOT" and spot["instanceTerminationAction"] == "DELETE"
    assert spot["maxRunDuration"] == {"seconds": str(3600 + 300)}  # the agent ends it first
    gpu = body_of(service, launch_of(types, gpu="t4"))
    assert gpu["machineType"] == "n1-standard-4"
    assert gpu["guestAccelerators"] == [{"acceleratorType": "nvidia-tesla-t4", "acceleratorCount": 1}]
    assert gpu["scheduling"]["onHostMaintenance"] == "TERMINATE" and gpu["scheduling"]["automaticRestart"] is False  # no live migration
    disk = gpu["disks"][0]["initializeParams"]  # Google's Deep Learning VM image, with NVIDIA's driver, and its 50 GB
    assert disk["sourceImage"] == "projects/deeplearning-platform-release/global/images/family/common-cu128-ubuntu-2204-nvidia-570"
    assert disk["diskSizeGb"] == "50" and {"key": "install-nvidia-driver", "value": "True"} in gpu["metadata"]["items"]
    mine = ComputeService(GCPProvider(project="unit-project", region="us-central1", vm_image="projects/p/global/images/family/f"))
    assert body_of(mine, launch_of(types, gpu="t4"))["disks"][0]["initializeParams"]["sourceImage"] == "projects/p/global/images/family/f"
    arm = body_of(service, launch_of(types, cpu=4, arm=True))
    assert arm["disks"][0]["initializeParams"]["sourceImage"].endswith("/family/debian-12-arm64")
    c4a = body_of(service, launch_of(types, vm_type="c4a-standard-4", arm=True))
    assert c4a["disks"][0]["initializeParams"]["diskType"] == "hyperdisk-balanced"


def test_compute_runs_an_image_but_not_with_a_software_environment_too(service):
    assert service.capabilities.containers
    problem = service.unfit(MachineSpec(image="python:3.12", software="senv-0123456789abcdef"))
    assert problem is not None and "a machine runs the image as it is" in problem


# -- on the sandbox GCP's Compute Engine ---------------------------------------------------------------

LAUNCHER_IP = "203.0.113.7"  # a documentation address (TEST-NET-3): "me" without asking checkip


@pytest.fixture
def gce(gcp_env, monkeypatch) -> ComputeService:
    """The Compute Engine service of a gcp provider pointed at the sandbox; every VM it made is
    deleted (and gone) after the test."""
    monkeypatch.setenv("PREFECT_REMOTE_GCP_PUBLIC_IP", LAUNCHER_IP)
    service = GCPProvider(service="compute").service("compute")
    yield service
    ids = [machine.id for machine in service.machines()]
    if ids:
        service.terminate(ids, "test cleanup")
    wait_for(lambda: not service.machines(), timeout=30, what=f"VMs {ids} deleted")


def wait_for(check, timeout: float, what: str):
    import time

    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)
    return result


def start(service: ComputeService, script: str, count: int = 1, tags=None, **spec) -> list:
    import secrets

    machine_spec = MachineSpec(**spec)
    launch = Launch(
        f"launch-{secrets.token_hex(6)}",
        script,
        machine_spec,
        service.choose_instance_type(machine_spec),
        count,
        tags if tags is not None else {"dask-cluster": "My Run", "dask-role": "scheduler"},
        "test-host:42",
        False,
    )
    ids = [f"vm-{secrets.token_hex(6)}" for _ in range(count)]
    return service.start(launch, ids)


SLEEPER = "#!/bin/sh\nsleep 60\n"


def test_a_vm_runs_its_startup_script_and_is_listed_described_and_deleted(gce, tmp_path):
    out = tmp_path / "booted"
    script = (
        "#!/bin/sh\n"
        "python3 -c \"import os, urllib.request; r = urllib.request.Request('http://' + os.environ['GCE_METADATA_HOST'] + "
        "'/computeMetadata/v1/instance/name', headers={'Metadata-Flavor': 'Google'}); "
        f"open('{out}', 'w').write(urllib.request.urlopen(r).read().decode())\"\n"
        "sleep 60\n"
    )
    [machine] = start(gce, script, cpu=2, memory="8 GiB")
    assert machine.id.startswith("vm-") and machine.state in ("pending", "running")
    assert machine.instance_type == "e2-standard-2" and machine.details["price_per_hour"] == pytest.approx(0.067006)
    assert machine.private_address and machine.public_address and not machine.spot and machine.owner == "test-host:42"
    assert machine.tags == {"dask-cluster": "My Run", "dask-role": "scheduler"} and machine.region == "us-central1"
    # The startup script ran as the VM, asking its own metadata server who it is.
    assert wait_for(lambda: out.exists() and out.read_text(), timeout=30, what="the startup script") == machine.id

    assert [m.id for m in gce.machines(labels={"dask-cluster": "My Run"})] == [machine.id]  # no label value: matched here
    assert [m.id for m in gce.machines(labels={"dask-role": "scheduler"})] == [machine.id]
    assert gce.machines(labels={"dask-role": "worker"}) == [] and gce.machines(["vm-000000000000", "run-0123"]) == []
    assert gce.machines([machine.id])[0].state == "running"

    gce.terminate([machine.id, "vm-000000000000"], "done")  # an unknown one is fine
    wait_for(lambda: not gce.machines([machine.id]), timeout=30, what="the VM deleted")


def test_vms_are_reachable_from_the_launcher_only(gce, gcp_sandbox):
    [machine] = start(gce, SLEEPER, cpu=2)
    firewalls = gce.clients.firewalls()
    instance = gce.clients.instances().get(project=gce.project, zone=gce.zone, instance=machine.id)
    internal, dask = instance.tags.items
    assert internal == "prefect-remote" and dask.startswith("prefect-remote-dask-")
    rule = firewalls.get(project=gce.project, firewall=dask)
    assert list(rule.source_ranges) == [f"{LAUNCHER_IP}/32"] and list(rule.target_tags) == [dask]
    assert [(a.I_p_protocol, list(a.ports)) for a in rule.allowed] == [("tcp", ["8786-8787"])]
    [internal_rule] = [r for r in firewalls.list(project=gce.project) if r.name.startswith("prefect-remote-internal-")]
    assert list(internal_rule.source_tags) == list(internal_rule.target_tags) == ["prefect-remote"]
    rules = {r.name for r in firewalls.list(project=gce.project)}  # (other tests' launchers may have theirs)

    [worker] = start(gce, SLEEPER, cpu=2, allow_ingress_from="none")  # a cluster's worker: reached from its cluster only
    worker_instance = gce.clients.instances().get(project=gce.project, zone=gce.zone, instance=worker.id)
    assert list(worker_instance.tags.items) == ["prefect-remote"]
    assert {r.name for r in firewalls.list(project=gce.project)} == rules  # made once, reused


def test_me_is_the_subnetwork_from_a_machine_in_the_network(gce, monkeypatch):
    """A launcher inside the VPC network (a flow run's Cloud Run task or VM) reaches VMs on their
    internal addresses, from the subnetwork's range: "me" admits that range, nobody outside;
    elsewhere it is the launcher's public IP."""
    from prefect_remote.providers.base import MACHINE_NETWORK_ENV

    assert gce.ingress_cidr(MachineSpec()) == f"{LAUNCHER_IP}/32"
    monkeypatch.setenv(MACHINE_NETWORK_ENV, gce.provider.network())
    assert gce.provider.network() == f"gcp:{gce.project}:default"
    assert gce.ingress_cidr(MachineSpec()) == gce.subnetwork_range() == "10.128.0.0/20"  # the sandbox's default subnetwork
    assert gce.ingress_cidr(MachineSpec(allow_ingress_from="10.8.0.0/16")) == "10.8.0.0/16"  # what is asked, as asked
    monkeypatch.setenv(MACHINE_NETWORK_ENV, f"gcp:{gce.project}:other")
    assert gce.ingress_cidr(MachineSpec()) == f"{LAUNCHER_IP}/32"


@pytest.fixture
def compute_fake(gcp_sandbox):
    """The sandbox's Compute Engine, its injected refusals lifted after the test."""
    yield gcp_sandbox.compute
    gcp_sandbox.compute.lift_refusals()


def test_a_stock_out_moves_the_whole_launch_on_to_the_next_zone_and_says_so(gce, compute_fake, gcp_sandbox, caplog):
    compute_fake.refuse(zone="us-central1-a", spot=True, times=1)  # refused in its operation
    gcp_sandbox.calls.clear()
    with caplog.at_level("WARNING", logger="prefect_remote.providers.gcp.compute"):
        first, second = start(gce, SLEEPER, count=2, cpu=2, spot_policy="spot")
    assert (first.spot, first.details["zone"], second.details["zone"]) == (True, "us-central1-b", "us-central1-b")
    assert gcp_sandbox.calls["compute.instances.bulkInsert"] == 2 and not gcp_sandbox.calls["compute.instances.insert"]  # one a zone
    assert (
        f"no spot capacity for {first.instance_type} in us-central1-a (ZONE_RESOURCE_POOL_EXHAUSTED): starting {first.id}, "
        f"{second.id} in us-central1-b as spot VMs" in caplog.text
    )
    gce.terminate([first.id], "done")  # deleted in its own zone
    wait_for(lambda: not gce.machines([first.id]), timeout=30, what="the VM in us-central1-b deleted")


def test_spot_stock_out_in_every_zone_falls_back_to_standard_and_says_so(gce, compute_fake, caplog):
    compute_fake.refuse(spot=True, times=None)
    with caplog.at_level("WARNING", logger="prefect_remote.providers.gcp.compute"):
        first, second = start(gce, SLEEPER, count=2, cpu=2, spot_policy="spot_with_fallback")
    assert (first.spot, second.spot) == (False, False) and first.details["zone"] == "us-central1-a"
    assert (
        f"no spot capacity for {first.instance_type} in us-central1-c (ZONE_RESOURCE_POOL_EXHAUSTED): starting {first.id}, "
        f"{second.id} in us-central1-a as standard VMs (spot_with_fallback)" in caplog.text
    )


def test_a_quota_error_tries_the_other_zones_then_names_the_quota(gce, compute_fake):
    compute_fake.refuse("QUOTA_EXCEEDED", times=None)  # a bulk insert's quota is refused at once (checked up front)
    with pytest.raises(CapacityError) as refused:
        start(gce, SLEEPER, count=3, cpu=2)
    message = str(refused.value)
    assert "no capacity for 3 e2-highcpu-2 in zones us-central1-a, us-central1-b, us-central1-c (QUOTA_EXCEEDED: Quota 'CPUS'" in message
    assert "raise the quota (https://console.cloud.google.com/iam-admin/quotas)" in message


def test_a_launch_the_regions_quota_cannot_hold_whole_starts_none(gce, gcp_sandbox):
    gcp_sandbox.compute.catalog.set_quota("CPUS", 5)  # two e2-highcpu-2 of three
    try:
        with pytest.raises(CapacityError, match=r"no capacity for 3 e2-highcpu-2 in zones .* \(QUOTA_EXCEEDED: Quota 'CPUS' exceeded"):
            start(gce, SLEEPER, count=3, cpu=2)
        assert gce.machines() == []  # all or nothing
    finally:
        gcp_sandbox.compute.catalog.set_quota("CPUS", None)


def test_a_pinned_zone_is_the_only_one_tried(gcp_env, compute_fake, monkeypatch):
    monkeypatch.setenv("PREFECT_REMOTE_GCP_PUBLIC_IP", LAUNCHER_IP)
    service = GCPProvider(service="compute", zone="us-central1-b").service("compute")
    compute_fake.refuse(zone="us-central1-b", times=1)
    with pytest.raises(CapacityError, match=r"no capacity for e2-highcpu-2 in zone us-central1-b \(ZONE_RESOURCE_POOL_EXHAUSTED\)"):
        start(service, SLEEPER, cpu=2)


def test_a_launch_that_finds_no_zone_leaves_nothing_behind(gce, compute_fake):
    compute_fake.refuse(spot=True, times=None)
    with pytest.raises(
        CapacityError,
        match=r"no spot capacity for 2 e2-highcpu-2 in zones us-central1-a, us-central1-b, us-central1-c .*"
        r"try spot_policy='spot_with_fallback'",
    ):
        start(gce, SLEEPER, count=2, cpu=2, spot_policy="spot")
    assert gce.machines() == []


def test_machine_types_come_from_the_zone(gce):
    assert gce.choose_instance_type(MachineSpec(cpu=4, memory="16 GiB")).name == "e2-standard-4"
    assert gce.choose_instance_type(MachineSpec(gpu="l4")).name == "g2-standard-4"
    with pytest.raises(
        CapacityError, match=r"vm_type=\['n2-standrd-4'\]: not a machine type in zone us-central1-a; did you mean n2-standard-4"
    ):
        gce.choose_instance_type(MachineSpec(vm_type="n2-standrd-4"))
    assert "did you mean" in gce.unfit(MachineSpec(vm_type="n2-standrd-4"))


def test_a_vm_that_stopped_itself_is_deleted(gce, gcp_sandbox, monkeypatch, tmp_path):
    [machine] = start(gce, "#!/bin/sh\nshutdown -h now\n", cpu=2)  # a guest shutdown: Compute Engine keeps it TERMINATED
    wait_for(lambda: (instance_of(gcp_sandbox, machine.id) or {}).get("status") == "TERMINATED", timeout=90, what="the VM stopped")
    # A listing from a shell whose store its machines cannot read (a bare `teardown`) cannot tell whose
    # the VM is: it neither fails nor deletes it.
    monkeypatch.setenv("PREFECT_REMOTE_STORE", str(tmp_path / "store"))
    assert [m.id for m in GCPProvider(service="compute").service("compute").machines([machine.id])] == [machine.id]
    monkeypatch.undo()
    seen: list[str] = []

    def gone() -> bool:
        found = gce.machines([machine.id])
        seen.extend(m.state for m in found)
        return not found

    # Seen ended, then deleted (a stopped VM's disk still costs): listing tidies it away.
    wait_for(gone, timeout=30, what="the stopped VM deleted")
    assert seen[-1] == "terminated"


def test_a_gpu_vm_boots_the_deep_learning_vm_image(gce):
    [machine] = start(gce, SLEEPER, gpu="t4")
    vm = gce.clients.instances().get(project=gce.project, zone=machine.details["zone"], instance=machine.id)
    [disk] = vm.disks
    assert any("/projects/deeplearning-platform-release/global/licenses/" in license for license in disk.licenses)
    assert disk.disk_size_gb == 50 and {item.key: item.value for item in vm.metadata.items}["install-nvidia-driver"] == "True"
    [cpu] = start(gce, SLEEPER, cpu=2)
    [cpu_disk] = gce.clients.instances().get(project=gce.project, zone=cpu.details["zone"], instance=cpu.id).disks
    assert any("/projects/debian-cloud/global/licenses/" in license for license in cpu_disk.licenses)


def test_gpus_and_projects_that_are_not_there(gcp_env, monkeypatch):
    last_zone = gcp_env.zones[-1]  # the sandbox offers no GPU families there
    service = GCPProvider(service="compute", zone=last_zone).service("compute")
    with pytest.raises(CapacityError, match=f"no GPU in zone {last_zone}; use a zone with GPUs"):
        service.choose_instance_type(MachineSpec(gpu="t4"))
    assert service.choose_instance_type(MachineSpec(cpu=2, memory="8 GiB")).name == "e2-standard-2"
    from prefect_remote.providers.gcp.clients import GCPError

    with pytest.raises(GCPError, match="Google Cloud project 'nope-project' not found"):
        GCPProvider(service="compute", project="nope-project").service("compute").instance_types()


# -- halts and reboots (B8, B9): a halted VM is deleted, and a reboot never runs a payload twice ----------------------


@pytest.fixture
def vm_provider(gcp_env, monkeypatch):
    monkeypatch.setenv("PREFECT_REMOTE_GCP_PUBLIC_IP", LAUNCHER_IP)
    provider = GCPProvider(service="compute")
    yield provider
    ids = [m.id for m in provider.list()]
    if ids:
        provider.terminate(ids, reason="test cleanup")


def instance_of(gcp_sandbox, machine_id: str):
    vm = gcp_sandbox.compute._vms.get(machine_id)
    return None if vm is None else vm.resource


def test_vms_are_never_restarted_by_google(gcp_sandbox, vm_provider, tmp_path):
    """automaticRestart is off: a host error ends the VM (it does not boot its startup script again)."""
    from prefect_remote.providers.base import BootPayload

    runs = tmp_path / "runs"
    [machine] = vm_provider.launch(MachineSpec(cpu=2), BootPayload(["sh", "-c", f"echo run >> {runs}; sleep 120"]), tags={"t": "b9"})
    assert instance_of(gcp_sandbox, machine.id)["scheduling"]["automaticRestart"] is False
    wait_for(lambda: runs.exists(), timeout=60, what="the payload started")
    assert gcp_sandbox.compute.host_error(machine.id) == "terminated"
    wait_for(lambda: not vm_provider.describe(machine.id).alive, timeout=60, what="the VM ended")
    assert runs.read_text() == "run\n"


def test_a_rebooted_vm_ends_itself_instead_of_running_its_payload_again(gcp_sandbox, vm_provider, tmp_path):
    """Compute Engine runs the startup script on every boot: after a reset the boot runs again, and its
    agent ends the VM (deleted, with the reason in its record) rather than start the payload twice.
    From a stock (cold) image: the agent's mark that it started is on the VM's own disk, which the
    reboot keeps."""
    from prefect_remote.providers.base import BootPayload

    runs = tmp_path / "runs"
    with gcp_sandbox.warm(False):
        [machine] = vm_provider.launch(MachineSpec(cpu=2), BootPayload(["sh", "-c", f"echo run >> {runs}; sleep 120"]), tags={"t": "b9"})
        wait_for(lambda: runs.exists(), timeout=240, what="the payload started")
    vm_provider.clients.instances().reset(project=gcp_sandbox.project, zone="us-central1-a", instance=machine.id).result()
    ended = vm_provider.wait([machine.id], timeout=120)[0]
    assert ended.reason.startswith("rebooted") and runs.read_text() == "run\n"
    wait_for(lambda: instance_of(gcp_sandbox, machine.id) is None, timeout=30, what="the VM deleted")


def test_a_failed_boot_deletes_its_vm_not_only_stops_it(gcp_sandbox, gce):
    """A boot that fails before the agent runs halts the VM with the provider's halt command (the boot
    script's EXIT trap): deleted through the API with the VM's own token, not just shut down (a
    stopped VM's disk bills on), with no listing by its owner to tidy it."""
    script = f"#!/bin/bash\nset -euo pipefail\nended() {{\n  {GCPProvider.halt_command}\n}}\ntrap ended EXIT\nfalse\n"
    [machine] = start(gce, script, cpu=2)
    wait_for(lambda: instance_of(gcp_sandbox, machine.id) is None, timeout=60, what="the VM deleted")
    assert any(
        op["operationType"] == "delete" for op in gcp_sandbox.compute.operations._operations.values() if machine.id in op["targetLink"]
    )


def test_a_failed_boot_whose_delete_fails_still_shuts_its_vm_down(gcp_sandbox, gce):
    """The failed boot's delete does not go through (here the API is out of its reach): the halt
    command shuts the VM down all the same, which stops it (``TERMINATED``). A VM outlives its startup
    script: without that shutdown it would run on, billing, with nothing on it."""
    script = (
        "#!/bin/bash\nset -euo pipefail\nexport PREFECT_REMOTE_GCP_API_ENDPOINT=http://127.0.0.1:9\n"
        f"ended() {{\n  {GCPProvider.halt_command}\n}}\ntrap ended EXIT\nfalse\n"
    )
    [machine] = start(gce, script, cpu=2)
    wait_for(lambda: (instance_of(gcp_sandbox, machine.id) or {}).get("status") == "TERMINATED", timeout=90, what="the VM stopped")
    operations = [op["operationType"] for op in gcp_sandbox.compute.operations._operations.values() if machine.id in op["targetLink"]]
    assert "compute.instances.guestTerminate" in operations and "delete" not in operations


# -- orphans: an agent that fails before its main loop, or dies, never leaves its VM running ------------------------


def vm_log(gcp_sandbox, machine_id: str) -> str:
    """The whole serial output of the sandbox VM ``machine_id`` (boot, agent, payload)."""
    from prefect_remote.sandbox.gcp.compute.instances import ID_PREFIX

    [local] = gcp_sandbox.runner.machines.list({"sandbox-instance": ID_PREFIX + machine_id}, include_terminated=True)
    return gcp_sandbox.runner.machines.logs(local.id).text


def test_an_agent_that_cannot_start_its_runtime_deletes_its_vm(gcp_sandbox, gcp_env, monkeypatch):
    """The VM's agent fails before its main loop (here its runtime cannot be made): the boot's trap
    deletes the VM with its own token, though the VM would outlive its startup script, and its log
    says why."""
    from prefect_remote.providers.base import BootPayload

    monkeypatch.setenv("PREFECT_REMOTE_GCP_PUBLIC_IP", LAUNCHER_IP)
    monkeypatch.setattr(GCPProvider, "runtime", "prefect_remote.providers.gcp.runtime:NoSuchRuntime")
    provider = GCPProvider(service="compute")
    [machine] = provider.launch(MachineSpec(cpu=2), BootPayload(["sleep", "600"]), tags={"t": "orphans"})
    wait_for(lambda: instance_of(gcp_sandbox, machine.id) is None, timeout=120, what="the VM deleted")
    log = vm_log(gcp_sandbox, machine.id)
    assert "has no attribute 'NoSuchRuntime'" in log
    assert "boot failed during 'agent start (the agent exited before its main loop)' (exit 1); ending this machine" in log


def test_a_killed_agent_ends_its_vm_within_keepalive_plus_one_lease_interval(gcp_sandbox, gcp_env, monkeypatch, tmp_path):
    """``kill -9`` of the agent alone (its payload runs on, its owner renews the lease): the VM shuts
    itself down on the schedule the agent last pushed, within keepalive plus one lease interval (10 s +
    5 s: a minute of the sandbox's 15-second clock), with no agent and no API call. Three VMs, each
    measured; the owner's next listing deletes a stopped VM."""
    from prefect_remote.providers.base import BootPayload
    from prefect_remote.sandbox.gcp.compute.instances import ID_PREFIX
    from tests.providers.orphans import renewing, seconds_until_each_ends

    monkeypatch.setenv("PREFECT_REMOTE_GCP_PUBLIC_IP", LAUNCHER_IP)
    provider = GCPProvider(service="compute", lease_interval=5)
    started = [tmp_path / f"started-{n}" for n in range(3)]
    with gcp_sandbox.vms(minute=15):
        machines = [
            provider.launch(MachineSpec(cpu=2, keepalive=10), BootPayload(["sh", "-c", f"touch {marker}; sleep 600"]))[0]
            for marker in started
        ]
    ids = [machine.id for machine in machines]
    try:
        with renewing(lambda: provider.renew_leases(ids), every=2):
            wait_for(lambda: all(marker.exists() for marker in started), timeout=180, what="the payloads started")
            time.sleep(6)  # past the agents' first pushes of the backstop
            agents = {ID_PREFIX + machine.id: gcp_sandbox.runner.machine_of(ID_PREFIX + machine.id) for machine in machines}
            figures = seconds_until_each_ends(agents, lambda instance_id: gcp_sandbox.runner.machine_of(instance_id) is None, timeout=60)
        print(f"\nGCE sandbox: killed agent -> ended VM: {', '.join(f'{s:.1f} s' for s in figures)} (bound 15 s)")
        for machine, seconds in zip(machines, figures, strict=True):
            log = vm_log(gcp_sandbox, machine.id)
            assert seconds <= 15 + 2, (seconds, log)
            assert "shut itself down (/sbin/shutdown -h +1)" in log or "shut itself down" in log
            assert instance_of(gcp_sandbox, machine.id)["status"] == "TERMINATED"
    finally:
        provider.terminate(ids, reason="test cleanup")


def test_a_vm_whose_owner_is_gone_takes_its_launch_secret_with_it(gcp_sandbox, gcp_env, monkeypatch):
    """Nobody renews (its owner died): the VM ends itself after keepalive, and its launch's secret
    goes with it, through the VM's own service account, with no call of an owner's (before, only
    another launch's sweep removed it, an hour later)."""
    from prefect_remote.providers.base import BootPayload
    from prefect_remote.providers.gcp.secrets import secret_id
    from prefect_remote.providers.gcp.service import LAUNCH_LABEL
    from prefect_remote.sandbox.gcp.common import GoogleError

    monkeypatch.setenv("PREFECT_REMOTE_GCP_PUBLIC_IP", LAUNCHER_IP)
    provider = GCPProvider(service="compute", lease_interval=5)
    payload = BootPayload(["sleep", "600"], secrets={"TOKEN": "s3cret"})
    [machine] = provider.launch(MachineSpec(cpu=2, keepalive=10), payload, tags={"t": "orphans"})
    name = secret_id(instance_of(gcp_sandbox, machine.id)["labels"][LAUNCH_LABEL], provider.records.label)
    assert gcp_env.secrets.value(name)
    [ended] = provider.wait([machine.id], timeout=180, poll=1)  # describe only: no owner's renewal, nor terminate
    assert (ended.reason or "").startswith("owner gone"), vm_log(gcp_sandbox, machine.id)
    with pytest.raises(GoogleError, match="404|not found|NOT_FOUND"):
        gcp_env.secrets.value(name)


def test_a_vm_that_shut_itself_down_is_seen_ended_and_its_launch_secret_goes(gcp_sandbox, gcp_env, monkeypatch, tmp_path):
    """Its agent killed (``kill -9``), the VM shuts itself down on its backstop with no end recorded;
    the owner's listing deletes it and records its end, so that the owner's renewal reports it ended
    (and renews it no more) and its launch's secret goes. Before, the renewal renewed its record on,
    never reporting it, and the secret stayed, even past the sweep's hour (a renewed lease is live)."""
    from prefect_remote.providers.base import BootPayload
    from prefect_remote.providers.gcp.secrets import secret_id
    from prefect_remote.providers.gcp.service import LAUNCH_LABEL
    from prefect_remote.sandbox.gcp.common import GoogleError
    from prefect_remote.sandbox.gcp.compute.instances import ID_PREFIX
    from tests.providers.orphans import kill_agent, renewing

    monkeypatch.setenv("PREFECT_REMOTE_GCP_PUBLIC_IP", LAUNCHER_IP)
    provider = GCPProvider(service="compute", lease_interval=5)
    marker = tmp_path / "started"
    payload = BootPayload(["sh", "-c", f"touch {marker}; sleep 600"], secrets={"TOKEN": "s3cret"})
    with gcp_sandbox.vms(minute=15):
        [machine] = provider.launch(MachineSpec(cpu=2, keepalive=10), payload, tags={"t": "orphans"})
    name = secret_id(instance_of(gcp_sandbox, machine.id)["labels"][LAUNCH_LABEL], provider.records.label)
    try:
        with renewing(lambda: provider.renew_leases([machine.id]), every=2):
            wait_for(marker.exists, timeout=180, what="the payload started")
            time.sleep(6)  # past the agent's first push of the backstop
            kill_agent(gcp_sandbox.runner.machine_of(ID_PREFIX + machine.id))
            wait_for(lambda: (instance_of(gcp_sandbox, machine.id) or {}).get("status") == "TERMINATED", timeout=60, what="the VM stopped")
        [ended] = [m for m in provider.list(include_terminated=True) if m.id == machine.id]  # deletes it, recording its end
        assert ended.state == "terminated" and "shut itself down" in (ended.reason or ""), ended
        assert provider.renew_leases([machine.id]) == [machine.id]  # reported ended: renewed no more
        with pytest.raises(GoogleError, match="404|not found|NOT_FOUND"):
            gcp_env.secrets.value(name)
    finally:
        provider.terminate([machine.id], reason="test cleanup")


def test_a_vm_its_failed_boot_deleted_is_seen_ended_and_its_launch_secret_goes(gcp_sandbox, gcp_env, monkeypatch):
    """The VM's agent cannot start (here its runtime cannot be made, as a boot whose package index
    times out under load cannot install it): the boot's trap deletes the VM, with no end recorded.
    A listing of ended machines records one, so that the owner's renewal reports it ended (and renews
    it no more) and its launch's secret goes. Before, the renewal renewed its record on, and the
    secret stayed, even past the sweep's hour (a renewed lease is live)."""
    from prefect_remote.providers.base import BootPayload
    from prefect_remote.providers.gcp.records import UNRECORDED_END
    from prefect_remote.providers.gcp.secrets import secret_id
    from prefect_remote.providers.gcp.service import LAUNCH_LABEL
    from prefect_remote.sandbox.gcp.common import GoogleError

    monkeypatch.setenv("PREFECT_REMOTE_GCP_PUBLIC_IP", LAUNCHER_IP)
    monkeypatch.setattr(GCPProvider, "runtime", "prefect_remote.providers.gcp.runtime:NoSuchRuntime")
    provider = GCPProvider(service="compute")
    payload = BootPayload(["sleep", "600"], secrets={"TOKEN": "s3cret"})
    [machine] = provider.launch(MachineSpec(cpu=2), payload, tags={"t": "orphans"})
    name = secret_id(instance_of(gcp_sandbox, machine.id)["labels"][LAUNCH_LABEL], provider.records.label)
    wait_for(lambda: instance_of(gcp_sandbox, machine.id) is None, timeout=120, what="the VM deleted by its boot")
    assert provider.renew_leases([machine.id]) == []  # no end recorded: its record renewed on
    # Listed as ended once its record is past the launch's settling (a minute), its end recorded.
    wait_for(lambda: machine.id in {m.id for m in provider.list(include_terminated=True)}, timeout=120, what="the VM listed ended")
    assert provider.describe(machine.id).reason == UNRECORDED_END
    assert provider.renew_leases([machine.id]) == [machine.id]  # reported ended: renewed no more
    with pytest.raises(GoogleError, match="404|not found|NOT_FOUND"):
        gcp_env.secrets.value(name)


@pytest.fixture
def vms_may_not_delete(gcp_sandbox):
    """The machines' custom role on VMs without ``compute.instances.delete`` for the test (in force after the
    sandbox's IAM delay), as it was again after."""
    from prefect_remote.providers.gcp.grants import MACHINE_INSTANCES_ROLE_ID
    from prefect_remote.sandbox.gcp.enforcement import SANDBOX_ROLE_SUFFIX

    store, role_id = gcp_sandbox.enforcement.store, MACHINE_INSTANCES_ROLE_ID + SANDBOX_ROLE_SUFFIX
    role = gcp_sandbox.iam.roles[role_id]
    store.set_role(role_id, {**role, "includedPermissions": [p for p in role["includedPermissions"] if p != "compute.instances.delete"]})
    time.sleep(store.delay)
    yield
    store.set_role(role_id, role)
    time.sleep(store.delay)


def test_an_agent_refused_its_delete_shuts_its_vm_down(gcp_sandbox, gcp_env, monkeypatch, vms_may_not_delete):
    """The agent ends its VM, but its delete is refused: ``halt()`` tries again (about a minute), then
    runs the OS's ``shutdown -h now``, which stops the VM (``TERMINATED``, not deleted: its disk would
    bill on); its owner's next listing deletes it. Without that shutdown the VM would outlive its
    startup script, running with nothing on it until the backstop."""
    from prefect_remote.providers.base import BootPayload

    monkeypatch.setenv("PREFECT_REMOTE_GCP_PUBLIC_IP", LAUNCHER_IP)
    provider = GCPProvider(service="compute")
    [machine] = provider.launch(MachineSpec(cpu=2), BootPayload(["true"]), tags={"t": "halt"})
    wait_for(lambda: (instance_of(gcp_sandbox, machine.id) or {}).get("status") == "TERMINATED", timeout=240, what="the VM stopped")
    log = vm_log(gcp_sandbox, machine.id)
    assert "could not reach the provider to end this machine" in log and "halting it" in log, log
    assert "the machine shut itself down" in log
    [ended] = provider.wait([machine.id], timeout=60)  # its record says why; the listing deletes the stopped VM
    assert ended.reason == "payload finished"
    wait_for(lambda: instance_of(gcp_sandbox, machine.id) is None, timeout=60, what="the stopped VM deleted")


def test_an_agent_whose_secret_is_gone_ends_its_vm_saying_why(gcp_sandbox, gcp_env, monkeypatch):
    """The launch's secret deleted before the VM's agent reads it (as a teardown would): the VM is
    deleted, and its record and log say the secrets could not be read."""
    from prefect_remote.providers.base import BootPayload
    from prefect_remote.providers.gcp.secrets import forget_secrets
    from prefect_remote.providers.gcp.service import LAUNCH_LABEL

    monkeypatch.setenv("PREFECT_REMOTE_GCP_PUBLIC_IP", LAUNCHER_IP)
    provider = GCPProvider(service="compute")
    [machine] = provider.launch(MachineSpec(cpu=2), BootPayload(["sleep", "600"], secrets={"TOKEN": "s3cret"}), tags={"t": "orphans"})
    forget_secrets(provider.clients, instance_of(gcp_sandbox, machine.id)["labels"][LAUNCH_LABEL], provider.records.label)
    [ended] = provider.wait([machine.id], timeout=120)
    wait_for(lambda: instance_of(gcp_sandbox, machine.id) is None, timeout=60, what="the VM deleted")
    assert "this launch's secrets could not be read" in (ended.reason or "")
    assert "this launch's secrets could not be read" in vm_log(gcp_sandbox, machine.id)
