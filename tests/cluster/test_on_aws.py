"""Fan-out on the sandbox AWS, end to end: ``@prefect_remote.function``, ``RemoteCluster`` and
``RemoteTaskRunner`` with ``provider="aws"`` on EC2 instances of moto (booted from their user data
by the sandbox's instance runner: stock-image path, automatic package sync through S3), with real
Dask, uv and Prefect; then the faults a cloud brings (a killed client, an instance ended under a
map, a scheduler lost while starting, no spot capacity) and bad input, each said clearly with
nothing started.

The functions ``double`` and ``nap`` share one cluster (module-scoped), which the closing test ends;
every other test ends what it started, and checks it in moto."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from urllib.parse import urlsplit

import boto3
import pytest
from prefect import flow, task
from prefect.settings import PREFECT_API_URL, temporary_settings

import prefect_remote
from prefect_remote.cluster.plan import CLUSTER_TAG, ROLE_TAG, WORKER_LEASE
from prefect_remote.cluster.remote import KEEPALIVE_BACKSTOP, RemoteCluster
from prefect_remote.errors import CapacityError
from prefect_remote.providers.aws import catalog
from prefect_remote.providers.aws.provider import LAUNCH_TAG, AWSError, AWSProvider
from prefect_remote.sandbox.aws import refuse_spot
from prefect_remote.sandbox.instances import INSTANCE_TAG
from prefect_remote.software.store import StoreError
from tests.conftest import SESSION_HOME, end_all_machines, use_aws_sandbox, wait_for

LEASE_INTERVAL = 5.0  # PREFECT_REMOTE_AWS_LEASE_INTERVAL, as use_aws_sandbox sets it
ALIVE = ("pending", "running")
SHARED: set[str] = set()  # clusters that serve several tests of this module (ended by their fixture)


@pytest.fixture(scope="module")
def aws(aws_sandbox):
    """The session's sandbox AWS, as a shell after `prefect-remote sandbox aws` sees it, for this
    module (so that its clusters outlive one test)."""
    with pytest.MonkeyPatch.context() as patch:
        use_aws_sandbox(patch, aws_sandbox)
        yield aws_sandbox
    aws_sandbox.end_all_instances()


@pytest.fixture(scope="module")
def ec2(aws):
    """A plain boto3 client of the sandbox's EC2, with its own credentials (tests take the environment's away)."""
    environ = aws.environ()
    session = boto3.session.Session(
        region_name=environ["AWS_DEFAULT_REGION"],
        aws_access_key_id=environ["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=environ["AWS_SECRET_ACCESS_KEY"],
    )
    return session.client("ec2", endpoint_url=environ["AWS_ENDPOINT_URL"])


@pytest.fixture(autouse=True)
def no_machine_outlives_its_test(aws, ec2):
    """Overrides the per-test clean-up: the shared clusters' instances stay; any other instance a
    test started is ended with it."""
    yield
    end_all_machines()
    leftover = [i["InstanceId"] for i in instances(ec2) if tags(i).get(CLUSTER_TAG) not in SHARED]
    if leftover:
        ec2.terminate_instances(InstanceIds=leftover)
        aws.runner.wait_idle()


def instances(ec2, cluster: str | None = None, *, alive: bool = True) -> list[dict]:
    """prefect-remote's instances in moto (of ``cluster``), pending or running unless ``alive=False``."""
    filters = [{"Name": "tag-key", "Values": [LAUNCH_TAG]}]
    if cluster:
        filters.append({"Name": f"tag:{CLUSTER_TAG}", "Values": [cluster]})
    if alive:
        filters.append({"Name": "instance-state-name", "Values": list(ALIVE)})
    pages = ec2.get_paginator("describe_instances").paginate(Filters=filters)
    return [instance for page in pages for reservation in page["Reservations"] for instance in reservation["Instances"]]


def tags(instance: dict) -> dict[str, str]:
    return {tag["Key"]: tag["Value"] for tag in instance.get("Tags", [])}


def state(ec2, instance_id: str) -> str:
    return ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]["State"]["Name"]


def role(ec2, cluster: str, name: str) -> list[dict]:
    return [i for i in instances(ec2, cluster) if tags(i)[ROLE_TAG] == name]


def all_ids(ec2) -> set[str]:
    """Every instance moto holds, in any state, launched by prefect-remote or not."""
    pages = ec2.get_paginator("describe_instances").paginate()
    return {i["InstanceId"] for page in pages for reservation in page["Reservations"] for i in reservation["Instances"]}


def connected_workers(cluster) -> set[str]:
    """The names of the workers connected to ``cluster``'s scheduler: their instance ids."""
    return {worker["name"] for worker in cluster.scheduler_info.get("workers", {}).values()}


# -- @prefect_remote.function on EC2 ----------------------------------------------------------------
def aws_function(func):
    """``func`` on aws machines with 2 CPUs, and no ``software=``: automatic package sync captures this environment."""
    return prefect_remote.function(provider="aws", cpu=2, n_workers=2, keepalive="10 seconds")(func)


@pytest.fixture(scope="module")
def double(aws):
    @aws_function
    def double(x: int) -> int:
        return 2 * x

    SHARED.add(double.cluster_name)
    yield double
    double.close()
    SHARED.discard(double.cluster_name)


@pytest.fixture(scope="module")
def nap(double):
    @aws_function
    def nap(x: int, seconds: float = 0.0) -> int:
        time.sleep(seconds)
        return x

    assert nap.cluster_name == double.cluster_name  # the same spec shares one cluster
    return nap


def test_a_function_calls_submits_and_maps_on_ec2_instances(aws, ec2, double):
    assert double(21) == 42
    assert double.submit(4).result() == 8
    assert list(double.map(range(200))) == [2 * x for x in range(200)]
    cluster = double.cluster
    wait_for(lambda: len(connected_workers(cluster)) == 2, timeout=120, message="two workers")
    [scheduler] = role(ec2, double.cluster_name, "scheduler")
    workers = role(ec2, double.cluster_name, "worker")
    assert {w["InstanceId"] for w in workers} == connected_workers(cluster)  # Dask's workers are these instances
    for worker in workers:
        assert worker["InstanceType"] == "t3a.nano" and worker["State"]["Name"] == "running"  # the cheapest 2-vCPU type
        worker_tags = tags(worker)
        assert worker_tags[CLUSTER_TAG] == double.cluster_name and worker_tags["prefect-remote:spec"] == "2 cpu"
        assert worker_tags[LAUNCH_TAG].startswith("launch-") and float(worker_tags["prefect-remote:keepalive"]) == WORKER_LEASE
    assert scheduler["State"]["Name"] == "running" and tags(scheduler)["dask-port"]
    assert cluster.scheduler_machine.id == scheduler["InstanceId"] and cluster.scheduler_address.startswith("tls://")
    for instance in [scheduler, *workers]:  # each instance runs as a machine of the sandbox's instance runner
        [machine] = aws.runner.machines.list({INSTANCE_TAG: instance["InstanceId"]})
        assert machine.alive


def test_every_result_arrives_when_a_worker_instance_is_terminated_mid_map(aws, ec2, nap):
    cluster = nap.cluster
    nap(0)
    wait_for(lambda: len(connected_workers(cluster)) == 2, timeout=120, message="two workers")
    before = connected_workers(cluster)
    results = nap.map(range(80), seconds=0.25)  # 10 s of work for two workers
    received = [next(results) for _ in range(10)]

    def busy_worker() -> str | None:
        busy = {address for address, keys in nap.client.processing().items() if keys}
        return next((w["name"] for address, w in nap.client.scheduler_info()["workers"].items() if address in busy), None)

    victim = wait_for(busy_worker, message="a worker running part of the map")
    ec2.terminate_instances(InstanceIds=[victim])  # as a spot interruption does, mid-map
    received += list(results)
    assert received == list(range(80))  # Dask ran again what the lost worker held
    wait_for(lambda: state(ec2, victim) == "terminated", timeout=10, message="the victim terminated")
    # The controller replaces it with a new instance.
    wait_for(
        lambda: {w["InstanceId"] for w in role(ec2, nap.cluster_name, "worker")} - before,
        timeout=30,
        message="a replacement worker instance",
    )


def test_closing_a_functions_cluster_terminates_its_instances(aws, ec2, double):
    assert double(1) == 2
    ids = [i["InstanceId"] for i in instances(ec2, double.cluster_name)]
    assert len(ids) >= 3  # the scheduler and two workers (a replacement may still be booting)
    double.cluster.close()
    wait_for(lambda: all(state(ec2, i) == "terminated" for i in ids), timeout=30, message="every instance terminated")
    assert instances(ec2, double.cluster_name) == []


# -- RemoteCluster and RemoteTaskRunner on EC2 ------------------------------------------------------------
def test_a_remote_cluster_scales_zero_two_zero(aws, ec2):
    keepalive = LEASE_INTERVAL  # the shortest the sandbox keeps
    with RemoteCluster(name="aws-scaling", provider="aws", n_workers=0, keepalive=keepalive) as cluster:
        up = time.monotonic()
        assert role(ec2, "aws-scaling", "worker") == []
        cluster.scale(2)
        wait_for(lambda: len(role(ec2, "aws-scaling", "worker")) == 2, timeout=30, message="two worker instances")
        workers = {i["InstanceId"] for i in role(ec2, "aws-scaling", "worker")}
        wait_for(lambda: connected_workers(cluster) == workers, timeout=120, message="both workers connected")
        assert all(state(ec2, i) == "running" for i in workers)
        cluster.scale(0)
        wait_for(lambda: all(state(ec2, i) == "terminated" for i in workers), timeout=30, message="the workers terminated")
        # Held by this process, with no Client, the cluster outlives its keepalive.
        time.sleep(max(0.0, up + keepalive + 2.0 - time.monotonic()))
        assert cluster.status_info()["maximum"] == 0 and len(role(ec2, "aws-scaling", "scheduler")) == 1
        assert connected_workers(cluster) == set()
    wait_for(lambda: instances(ec2, "aws-scaling") == [], timeout=30, message="the scheduler terminated")


def test_a_flow_with_a_remote_task_runner_on_aws(aws, ec2, prefect_server):
    api_url = aws.expose_port(urlsplit(prefect_server).port) + "/api"  # as the instances reach the server

    @task
    def square(n: int) -> tuple[int, str]:
        return n * n, os.environ["PREFECT_REMOTE_MACHINE_ID"]

    runner = prefect_remote.RemoteTaskRunner(name="aws-task-runner", provider="aws", n_workers=2, keepalive="10 seconds")

    @flow(task_runner=runner)
    def fan_out() -> list[tuple[int, str]]:
        return square.map(range(40)).result()

    with temporary_settings({PREFECT_API_URL: api_url}):
        final = fan_out(return_state=True)
    assert final.is_completed(), final
    results = final.result()
    assert [value for value, _ in results] == [n * n for n in range(40)]
    ran_on = {machine for _, machine in results}
    launched = {i["InstanceId"]: tags(i) for i in instances(ec2, "aws-task-runner", alive=False)}
    assert ran_on <= {i for i, t in launched.items() if t[ROLE_TAG] == "worker"}  # the tasks ran on its EC2 workers
    # The run created its cluster, so it shut it down.
    wait_for(lambda: instances(ec2, "aws-task-runner") == [], timeout=30, message="the runner's instances terminated")


# -- faults ---------------------------------------------------------------------------------------------
KILLED_CLIENT = textwrap.dedent(
    """
    import sys, time
    from prefect_remote.cluster.remote import RemoteCluster

    cluster = RemoteCluster(name=sys.argv[1], provider="aws", n_workers=1, keepalive=float(sys.argv[2]))
    cluster.get_client().wait_for_workers(1, timeout=300)
    print("ready", flush=True)
    time.sleep(600)
    """
)


def test_a_killed_client_leaves_no_instance_behind(aws, ec2, tmp_path):
    """kill -9 of the process that made the cluster (and held it, with a Client). The bound, from
    prefect_remote/cluster: the killed process's connections close at once, so the controller on the
    scheduler closes the cluster ``keepalive`` (+ one 0.5 s tick) after the kill, ending the workers'
    instances as it closes; the scheduler's node then exits and its agent ends its instance. Should
    the scheduler's loop be wedged instead, nothing renews its lease (only that loop does): its agent
    ends it once the lease is ``keepalive + KEEPALIVE_BACKSTOP`` old, read every lease interval, and
    its workers' scheduler connections break with it. Either way every instance is gone within
    keepalive + KEEPALIVE_BACKSTOP + lease interval = 20 s of the kill, plus a few seconds for the
    sandbox to end machines (an instance is shutting-down until its machine has stopped)."""
    keepalive, name = 10.0, "aws-killed-client"
    (tmp_path / "client.py").write_text(KILLED_CLIENT)
    client = subprocess.Popen(
        [sys.executable, "client.py", name, str(keepalive)], cwd=tmp_path, stdout=subprocess.PIPE, text=True, env=os.environ
    )
    try:
        assert client.stdout.readline().strip() == "ready"
        launched = {i["InstanceId"] for i in instances(ec2, name)}
        assert {tags(i)[ROLE_TAG] for i in instances(ec2, name)} == {"scheduler", "worker"} and len(launched) == 2
    finally:
        client.send_signal(signal.SIGKILL)
        client.wait()
    killed = time.monotonic()
    bound = keepalive + KEEPALIVE_BACKSTOP + LEASE_INTERVAL + 5.0
    wait_for(
        lambda: all(state(ec2, i) == "terminated" for i in launched),
        timeout=bound,
        interval=0.2,
        message=f"every instance terminated within {bound:.0f}s",
    )
    print(f"every instance of the killed client's cluster terminated {time.monotonic() - killed:.1f}s after the kill (bound {bound:.0f}s)")
    assert time.monotonic() - killed > keepalive - 1  # not before keepalive: another client may attach in the meantime
    assert instances(ec2, name) == []


def test_spot_without_capacity_fails_the_first_call_and_leaves_no_instance(aws, ec2):
    provider = AWSProvider()
    refuse_spot(provider.client("ec2"), "InsufficientInstanceCapacity")

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
        never(1)
    # The scheduler's instance, launched before the workers were refused, is gone with its credentials.
    assert instances(ec2, never.cluster_name) == []
    assert not (SESSION_HOME / "clusters" / f"{never.cluster_name}.json").exists()


def test_a_scheduler_lost_while_starting_takes_the_first_workers_along(aws, ec2):
    name = "aws-lost-scheduler"

    def end_the_scheduler() -> None:  # as an operator (or EC2) may, while the cluster starts
        [scheduler] = wait_for(lambda: role(ec2, name, "scheduler"), timeout=120, interval=0.1, message="the scheduler's instance")
        ec2.terminate_instances(InstanceIds=[scheduler["InstanceId"]])

    ending = threading.Thread(target=end_the_scheduler)
    ending.start()
    try:
        with pytest.raises(RuntimeError, match="scheduler machine i-[0-9a-f]+ ended before accepting connections"):
            RemoteCluster(name=name, provider="aws", n_workers=1, keepalive="10 seconds")
    finally:
        ending.join()
    # The first worker, launched (and leased) by this process, does not live on as long as it does.
    wait_for(lambda: instances(ec2, name) == [], timeout=10, message="the first worker terminated too")
    assert not (SESSION_HOME / "clusters" / f"{name}.json").exists()


@pytest.fixture
def no_capacity(monkeypatch) -> set[str]:
    """The markets ("spot", "on-demand") EC2 has no capacity for, as the sandbox's server answers
    every client: this process's and the instances' (a cluster's scheduler launches its workers)."""
    from moto.ec2.exceptions import EC2ClientError
    from moto.ec2.models.instances import InstanceBackend

    short: set[str] = set()
    run_instances = InstanceBackend.run_instances

    def refusing(backend, *args, **kwargs):
        market = "spot" if kwargs.get("instance_market_options") == "spot" else "on-demand"
        if market in short:
            raise EC2ClientError("InsufficientInstanceCapacity", f"There is no {market} capacity available that matches your request.")
        return run_instances(backend, *args, **kwargs)

    monkeypatch.setattr(InstanceBackend, "run_instances", refusing)
    return short


def test_no_spot_capacity_for_a_cluster(aws, ec2, no_capacity, caplog):
    """spot_with_fallback where EC2 has no spot capacity: the first worker (launched here) and those
    the controller launches from the scheduler's instance go on-demand, and this process hears of
    each; with no capacity at all, the controller says why and tries again, backing off."""
    name = "aws-no-spot"
    caplog.set_level(logging.WARNING, logger="prefect_remote")
    fallback = "spot capacity unavailable for t3a.nano in us-east-1 (InsufficientInstanceCapacity); launching on-demand"

    def told(fragment: str, logger: str) -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == logger and fragment in r.getMessage()]

    no_capacity.add("spot")
    with RemoteCluster(name=name, provider="aws", cpu=2, spot_policy="spot_with_fallback", n_workers=1, keepalive="10 seconds") as cluster:
        assert told(fallback, "prefect_remote.providers.aws")  # the first worker, launched by this process
        cluster.scale(2)
        wait_for(lambda: len(role(ec2, name, "worker")) == 2, timeout=30, message="a second worker instance")
        assert not [w for w in role(ec2, name, "worker") if w.get("InstanceLifecycle") == "spot"]
        wait_for(lambda: told(fallback, "prefect_remote.cluster"), timeout=10, message="the controller's fallback, told here")
        no_capacity.add("on-demand")
        cluster.scale(3)
        refused = (
            "could not launch 1 worker machine(s): no spot or on-demand capacity for t3a.nano in us-east-1 (InsufficientInstanceCapacity)"
        )
        wait_for(lambda: told(refused, "prefect_remote.cluster"), timeout=10, message="the refusal, told here")
        time.sleep(5)
        tries = told(refused, "prefect_remote.cluster")
        assert 2 <= len(tries) <= 3 and tries[-1].endswith(("trying again in 4s", "trying again in 8s")), (
            tries
        )  # not at every scaling decision
        assert len(role(ec2, name, "worker")) == 2
        no_capacity.clear()
        wait_for(lambda: len(role(ec2, name, "worker")) == 3, timeout=20, message="the third worker, once there is capacity")
    wait_for(lambda: instances(ec2, name) == [], timeout=30, message="every instance terminated")


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
def test_a_spec_no_instance_type_meets_is_refused_where_it_is_written(aws, ec2, spec, message):
    before = all_ids(ec2)
    with pytest.raises(CapacityError, match=message):
        prefect_remote.function(provider="aws", **spec)(abs)
    with pytest.raises(CapacityError, match=message):
        RemoteCluster(provider="aws", **spec)
    with pytest.raises(CapacityError, match=message):
        prefect_remote.RemoteTaskRunner(provider="aws", **spec)
    assert all_ids(ec2) == before


@pytest.fixture
def region_without_gpus(aws, monkeypatch):
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
    catalog.cache_path(region, aws.url).unlink(missing_ok=True)


def test_a_gpu_in_a_region_without_one(aws, ec2, region_without_gpus, monkeypatch):
    before = all_ids(ec2)
    monkeypatch.setenv("AWS_DEFAULT_REGION", region_without_gpus)
    message = (
        rf"no GPU instance type in region {region_without_gpus}; GPU regions include .*us-east-1.*: launch in "
        r"one of them \(set AWS_DEFAULT_REGION, or the aws provider's region option\)"
    )
    with pytest.raises(CapacityError, match=message):
        prefect_remote.function(provider="aws", gpu=1)(abs)
    with pytest.raises(CapacityError, match=message):
        RemoteCluster(provider="aws", gpu="t4")
    assert all_ids(ec2) == before


def test_no_credentials(aws, ec2, monkeypatch, tmp_path):
    before = all_ids(ec2)
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
    catalog.cache_path("us-east-1", aws.url).unlink()
    with pytest.raises(AWSError, match=message):
        prefect_remote.function(provider="aws", cpu=2)(abs)
    assert all_ids(ec2) == before


def test_a_missing_bucket(aws, ec2, monkeypatch):
    before = all_ids(ec2)
    monkeypatch.setenv("PREFECT_REMOTE_STORE", "s3://no-such-bucket/x")
    message = (
        r"bucket no-such-bucket does not exist in region us-east-1 \(store s3://no-such-bucket/x\); create it "
        r"\(`aws s3 mb s3://no-such-bucket --region us-east-1`\) or run `prefect work-pool create --type remote:push --provision-infra"
    )

    @prefect_remote.function(name="aws-no-bucket", provider="aws", cpu=2, keepalive="10 seconds")
    def never(x: int) -> int:
        return x

    with pytest.raises(StoreError, match=message):
        never(1)
    with pytest.raises(StoreError, match=message):
        RemoteCluster(name="aws-no-bucket", provider="aws", n_workers=1)
    assert all_ids(ec2) == before
