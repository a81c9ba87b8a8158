"""Clusters on the sandbox AWS: what has no counterpart in the cluster contract (contract.py),
which runs the rest on every cloud. Faults (spot refused with spot_policy="spot", no capacity at
all, a scheduler lost while starting) and bad input, each said clearly with nothing started.

Every test ends what it started, and checks it in moto."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

import prefect_remote
from prefect_remote.cluster.controller import ClusterController
from prefect_remote.cluster.plan import CLUSTER_TAG, ROLE_TAG, ClusterPlan, WorkerPlan
from prefect_remote.cluster.remote import ClusterStartError, RemoteCluster
from prefect_remote.errors import CapacityError
from prefect_remote.providers.aws import catalog
from prefect_remote.providers.aws.provider import AWSError, AWSProvider
from prefect_remote.providers.base import BootPayload
from prefect_remote.software.store import StoreError
from prefect_remote.spec import MachineSpec
from tests.cluster.clouds import no_ec2_capacity
from tests.conftest import SESSION_HOME, end_all_machines, needs_firewalls, wait_for

pytestmark = pytest.mark.parametrize("cloud", ["aws"], indirect=True)


@pytest.fixture(autouse=True)
def no_machine_outlives_its_test(cloud):
    """Overrides the per-test clean-up: any instance a test started is ended with it."""
    yield
    end_all_machines()
    cloud.end_all_but(set())


# -- faults ---------------------------------------------------------------------------------------------
def test_the_controller_keeps_a_worker_ec2_does_not_list_yet(cloud):
    """EC2 lists a new instance only a while after its launch: the controller's next look at its
    workers must not take a worker it launched a moment ago for one that ended before joining (and
    launch another in its place)."""
    provider = AWSProvider()
    worker = WorkerPlan(spec={}, secrets={}, command=["python"], env={}, nthreads=1, memory_limit=2**30)
    plan = ClusterPlan(
        name="aws-unlisted-worker",
        provider="aws",
        provider_options=provider.client_options(),
        credentials="{}",
        keepalive=30.0,
        idle_timeout=None,
        minimum=1,
        maximum=1,
        adaptive=False,
        worker=worker,
    )
    with cloud.sandbox.ec2.as_it_was() as strict:
        strict.unlisted_seconds = 60
        controller = ClusterController(plan, "i-0123456789abcdef0")  # (the scheduler's machine: not looked at here)
        tags = {CLUSTER_TAG: plan.name, ROLE_TAG: "worker"}
        [launched] = controller.provider.launch(MachineSpec(cpu=1), BootPayload(["sleep", "600"]), tags=tags)
        controller.pool.machines[launched.id] = launched  # as scale_up keeps what it launched
        asyncio.run(controller.pool.refresh())
        assert list(controller.pool.machines) == [launched.id]
        assert not [message for _, message in controller.events if "ended before joining" in message]
        controller.provider.terminate([launched.id])
        controller.provider.wait([launched.id], timeout=30)
        asyncio.run(controller.pool.refresh())  # ended (EC2 says so by id): a boot failure
        assert controller.pool.machines == {}
        assert [message for _, message in controller.events if f"worker machine {launched.id} ended before joining" in message]


def test_spot_without_capacity_fails_the_first_call_and_leaves_no_instance(cloud):
    provider = AWSProvider()

    @prefect_remote.function(provider=provider, cpu=2, spot_policy="spot", n_workers=1, keepalive="10 seconds")
    def never(x: int) -> int:
        return x

    with pytest.raises(
        CapacityError,
        match=(
            r"spot capacity unavailable for t3a\.nano in us-east-1 \(InsufficientInstanceCapacity\); try "
            r"spot_policy='spot_with_fallback'"
        ),
    ):
        with no_ec2_capacity(cloud.sandbox, spot=True):
            never(1)
    # The scheduler's instance, launched before the workers were refused, is gone with its credentials.
    assert cloud.machines(never.cluster_name) == []
    assert not (SESSION_HOME / "clusters" / f"{never.cluster_name}.json").exists()


def test_a_scheduler_with_only_a_private_address_is_said_so_and_never_dialed(cloud):
    """A client outside the VPC dials a scheduler's public IP only (EC2 shows it once the instance
    runs). A scheduler in a subnet that maps no public IP, launched admitting nobody from outside,
    gets none: the start fails at once saying so, rather than dialing its private address for 10
    minutes, and its machine ends."""
    name = "aws-private-scheduler"
    with cloud.sandbox.enforcing(False):  # (the sandbox's IAM has no rule for CreateVpc: the account's owner's set-up)
        vpc = cloud.ec2.create_vpc(CidrBlock="10.79.0.0/16")["Vpc"]["VpcId"]
        cloud.ec2.create_subnet(VpcId=vpc, CidrBlock="10.79.1.0/24")  # maps no public IP on launch
    provider = AWSProvider(vpc_id=vpc)
    started = time.monotonic()
    with pytest.raises(
        RuntimeError, match=r"has no public address, only the private \S+ in aws:us-east-1:vpc-\w+, and this process"
    ) as raised:
        RemoteCluster(name=name, provider=provider, cpu=2, n_workers=0, allow_ingress_from="none", keepalive="10 seconds")
    assert isinstance(raised.value.__cause__, ClusterStartError)  # (distributed wraps what a cluster's start raises)
    assert time.monotonic() - started < 60  # not START_TIMEOUT (600 s)
    wait_for(lambda: cloud.machines(name) == [], timeout=30, message="the scheduler's instance ended")


@needs_firewalls
def test_a_scheduler_whose_group_does_not_admit_this_host_is_said_so(cloud, monkeypatch):
    """The scheduler gets a public IP, but its security group admits the Dask ports from another
    address only (the sandbox enforces it, as EC2 does): once the scheduler says it listens and
    still cannot be reached for UNREACHABLE_GRACE (30 s; 5 s here, to keep the suite short), the
    start fails saying what to pass, not after 10 minutes, and its machine ends."""
    monkeypatch.setattr("prefect_remote.cluster.remote.UNREACHABLE_GRACE", 5.0)
    name = "aws-not-admitted"
    started = time.monotonic()
    with pytest.raises(
        RuntimeError,
        match=r"(?s)listening at tls://[\d.]+:8786, unreachable from this host: .*\n\(gave up after 5s\)\n"
        r"Its security group or firewall rule admits the Dask ports from outside its network only from "
        r"allow_ingress_from='203\.0\.113\.7/32': if this computer connects from elsewhere, pass allow_ingress_from='me'",
    ) as raised:
        RemoteCluster(name=name, provider="aws", cpu=2, n_workers=0, allow_ingress_from="203.0.113.7/32", keepalive="2 minutes")
    assert isinstance(raised.value.__cause__, ClusterStartError)
    assert time.monotonic() - started < 240  # not START_TIMEOUT (600 s)
    wait_for(lambda: cloud.machines(name) == [], timeout=30, message="the scheduler's instance ended")


def test_no_capacity_at_all_backs_off_until_there_is(cloud, caplog):
    """spot_with_fallback where EC2 has neither spot nor on-demand capacity for a worker the
    controller launches from the scheduler's instance: it says why, here, and tries again, backing
    off, until there is capacity. (A spot stock-out alone is the contract's.)"""
    name = "aws-no-capacity"
    caplog.set_level(logging.WARNING, logger="prefect_remote")
    refused = "could not launch 1 worker machine(s): no spot or on-demand capacity for t3a.nano in us-east-1 (InsufficientInstanceCapacity)"

    def told() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "prefect_remote.cluster" and refused in r.getMessage()]

    with (
        cloud.sandbox.ec2.as_it_was() as no_capacity,  # (no refusal left behind, whatever happens)
        RemoteCluster(name=name, provider="aws", cpu=2, spot_policy="spot_with_fallback", n_workers=1, keepalive="10 seconds") as cluster,
    ):
        assert len(cloud.role(name, "worker")) == 1
        no_capacity.refuse("InsufficientInstanceCapacity")  # in every zone, on both markets
        cluster.scale(2)
        first, second = wait_for(lambda: told()[:2] if len(told()) >= 2 else None, timeout=30, message="the refusal, told twice")
        # Backing off, not trying at every decision of the controller (each half second).
        assert first.getMessage().endswith("trying again in 2s") and second.getMessage().endswith("trying again in 4s")
        assert second.created - first.created >= 2.0
        assert len(cloud.role(name, "worker")) == 1
        no_capacity.clear()
        wait_for(lambda: len(cloud.role(name, "worker")) == 2, timeout=20, message="the second worker, once there is capacity")
    wait_for(lambda: cloud.left(name) == [], timeout=30, message="every instance terminated")


def test_a_scheduler_lost_while_starting_takes_the_first_workers_along(cloud):
    name = "aws-lost-scheduler"

    def end_the_scheduler() -> None:  # as an operator (or EC2) may, while the cluster starts
        [scheduler] = wait_for(lambda: cloud.role(name, "scheduler"), timeout=120, interval=0.1, message="the scheduler's instance")
        cloud.ec2.get_waiter("instance_exists").wait(InstanceIds=[scheduler.id], WaiterConfig={"Delay": 1})  # EC2 knows the id by then
        cloud.ec2.terminate_instances(InstanceIds=[scheduler.id])

    ending = threading.Thread(target=end_the_scheduler)
    ending.start()
    try:
        ended = "scheduler machine i-[0-9a-f]+ ended (before accepting connections|while the cluster was starting)"
        with pytest.raises(RuntimeError, match=ended):
            RemoteCluster(name=name, provider="aws", n_workers=1, keepalive="10 seconds")
    finally:
        ending.join()
    # The first worker, launched (and leased) by this process, does not live on as long as it does.
    wait_for(lambda: cloud.machines(name) == [], timeout=10, message="the first worker terminated too")
    assert not (SESSION_HOME / "clusters" / f"{name}.json").exists()


# -- bad input: a clear error naming the fix, and nothing started ------------------------------------------
BAD_SPECS = [
    ({"vm_type": "m9z.huge"}, r"vm_type=\['m9z.huge'\]: not an instance type offered in us-east-1; `aws ec2 describe-instance-types"),
    ({"cpu": 1, "memory": "512 GiB"}, r"no instance type meets 1 cpu, 512 GiB \(x86_64\); loosen cpu/memory or name a vm_type"),
    (
        {"vm_type": "m6i.large", "arm": True},
        r"arm=True, but vm_type=\['m6i.large'\] is x86_64; name a Graviton \(arm64\) type instead such as \S+",
    ),
]


@pytest.mark.parametrize(("spec", "message"), BAD_SPECS, ids=["unknown-vm-type", "no-type-meets", "arm-with-x86-type"])
def test_a_spec_no_instance_type_meets_is_refused_where_it_is_written(cloud, spec, message):
    time.sleep(cloud.sandbox.ec2.unlisted_seconds + 0.5)  # EC2 lists what the previous test launched only by now
    before = cloud.all_ids()
    with pytest.raises(CapacityError, match=message):
        prefect_remote.function(provider="aws", **spec)(abs)
    with pytest.raises(CapacityError, match=message):
        RemoteCluster(provider="aws", **spec)
    with pytest.raises(CapacityError, match=message):
        prefect_remote.RemoteTaskRunner(provider="aws", **spec)
    assert cloud.all_ids() == before


@pytest.fixture
def region_without_gpus(cloud, monkeypatch):
    """A region whose EC2 lists no GPU instance type (moto lists every type in every region)."""
    from moto.ec2.models.instance_types import InstanceTypeBackend

    region = "eu-south-2"
    listed = InstanceTypeBackend.describe_instance_types

    def describe_instance_types(backend, *args, **kwargs):
        found = listed(backend, *args, **kwargs)
        return [t for t in found if not t.get("GpuInfo")] if backend.region_name == region else found

    monkeypatch.setattr(InstanceTypeBackend, "describe_instance_types", describe_instance_types)
    yield region
    catalog.cache_clear()
    catalog.cache_path(region, cloud.sandbox.url).unlink(missing_ok=True)


def test_a_gpu_in_a_region_without_one(cloud, region_without_gpus, monkeypatch):
    before = cloud.all_ids()
    monkeypatch.setenv("AWS_DEFAULT_REGION", region_without_gpus)
    message = (
        rf"no GPU instance type in region {region_without_gpus}; GPU regions include .*us-east-1.*: launch in "
        r"one of them \(set AWS_DEFAULT_REGION, or the aws provider's region option\)"
    )
    with pytest.raises(CapacityError, match=message):
        prefect_remote.function(provider="aws", gpu=1)(abs)
    with pytest.raises(CapacityError, match=message):
        RemoteCluster(provider="aws", gpu="t4")
    assert cloud.all_ids() == before


def test_no_credentials(cloud, monkeypatch, tmp_path):
    before = cloud.all_ids()
    AWSProvider().instance_types()  # the region's catalog, as an earlier run leaves it cached
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    for name in ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):
        (tmp_path / name).write_text("")
        monkeypatch.setenv(name, str(tmp_path / name))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance profile to fall back on here
    message = (
        r"no AWS credentials found .*; set AWS_PROFILE \(after `aws configure` or `aws sso login`\) or "
        r"AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    )
    never = prefect_remote.function(name="aws-no-credentials", provider="aws", cpu=2, keepalive="10 seconds")(abs)
    with pytest.raises((AWSError, StoreError), match=message):
        never(1)
    with pytest.raises((AWSError, StoreError), match=message):
        RemoteCluster(name="aws-no-credentials", provider="aws", n_workers=1)
    # With no catalog cached, decorating is what asks AWS first.
    catalog.cache_clear()
    catalog.cache_path("us-east-1", cloud.sandbox.url).unlink()
    with pytest.raises(AWSError, match=message):
        prefect_remote.function(provider="aws", cpu=2)(abs)
    assert cloud.all_ids() == before


def test_a_missing_bucket(cloud, monkeypatch):
    before = cloud.all_ids()
    bucket = "prefect-remote-no-such-bucket"  # one the launcher may use: another's would be refused (403), not missing
    monkeypatch.setenv("PREFECT_REMOTE_STORE", f"s3://{bucket}/x")
    message = (
        rf"bucket {bucket} does not exist in region us-east-1 \(store s3://{bucket}/x\); create it "
        rf"\(`aws s3 mb s3://{bucket} --region us-east-1`\) or run `prefect work-pool create --type remote:push --provision-infra"
    )

    @prefect_remote.function(name="aws-no-bucket", provider="aws", cpu=2, keepalive="10 seconds")
    def never(x: int) -> int:
        return x

    with pytest.raises(StoreError, match=message):
        never(1)
    with pytest.raises(StoreError, match=message):
        RemoteCluster(name="aws-no-bucket", provider="aws", n_workers=1)
    assert cloud.all_ids() == before
