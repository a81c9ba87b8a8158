"""The EC2 provider against the sandbox's strict EC2 (:mod:`prefect_remote.sandbox.ec2_strict`), through
the real boto3: what real EC2 does on a user's first day (an instance profile, a security group and
instance ids it does not see yet, instances pending without a public IP, throttling, capacity and
quota errors in one availability zone), and the provider's answers to each. Pure logic (the bounded
retry, placements, disk sizes) is tested with a fake clock.

Not modelled by the sandbox, so only unit-tested against the error's shape: EC2 dropping a new
instance from a filtered DescribeInstances (as opposed to by id), see docs/known-limits.md.
"""

from __future__ import annotations

import logging
import secrets
import time
from types import SimpleNamespace

import pytest
from botocore.exceptions import ClientError

from prefect_remote.errors import CapacityError
from prefect_remote.providers.aws.clients import eventually, not_yet_visible
from prefect_remote.providers.aws.provider import DEFAULT_DISK_GIB, AWSProvider
from prefect_remote.providers.base import BootPayload, Provider
from prefect_remote.providers.capacity import placements
from prefect_remote.spec import MachineSpec
from tests.conftest import wait_for


def launch(provider, **spec):
    return provider.launch(MachineSpec(**spec), BootPayload(["sleep", "600"]), tags={"test": "strict", "run": secrets.token_hex(4)})


def error(code: str, message: str = "") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}}, "RunInstances")


@pytest.fixture
def strict(aws_sandbox):
    """The session sandbox's strict EC2, as it was again after the test."""
    with aws_sandbox.ec2.as_it_was() as strict:
        yield strict


@pytest.fixture
def ec2(aws_sandbox):
    """EC2 as the account's owner sees it (a test's set-up: VPCs, subnets)."""
    return aws_sandbox.client("ec2")


# -- pure logic -----------------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now, self.slept = 0.0, []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_eventually_retries_what_aws_does_not_see_yet_with_backoff_then_gives_up():
    clock, answers = FakeClock(), iter([error("InvalidGroup.NotFound"), error("InvalidInstanceID.NotFound")])

    def call():
        answer = next(answers, "done")
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert eventually(call, sleep=clock.sleep, clock=lambda: clock.now) == "done"
    assert len(clock.slept) == 2 and clock.slept[1] > clock.slept[0]
    clock = FakeClock()
    profile = error(
        "InvalidParameterValue", "Value (p) for parameter iamInstanceProfile.name is invalid. Invalid IAM Instance Profile name"
    )
    with pytest.raises(ClientError):
        eventually(lambda: (_ for _ in ()).throw(profile), timeout=60, sleep=clock.sleep, clock=lambda: clock.now)
    assert 50 <= clock.now <= 60 and max(clock.slept) <= 8 * 1.2  # bounded: never a hang


def test_only_eventual_consistency_is_retried():
    assert not_yet_visible(error("InvalidParameterValue", "... Invalid IAM Instance Profile name"))
    assert not not_yet_visible(error("InvalidParameterValue", "Invalid value for instance type"))
    assert not_yet_visible(error("InvalidGroup.NotFound")) and not not_yet_visible(error("InvalidGroup.NotFound"), groups=False)
    assert not not_yet_visible(error("UnauthorizedOperation")) and not not_yet_visible(ValueError("x"))
    calls = []
    with pytest.raises(ClientError):
        eventually(lambda: calls.append(1) or (_ for _ in ()).throw(error("InsufficientInstanceCapacity")))
    assert len(calls) == 1


def test_placements_try_every_place_on_a_market_before_the_next_market():
    tried = [(p.market, p.zone) for p in placements("spot_with_fallback", ["subnet-a", "subnet-b"])]
    assert tried == [("spot", "subnet-a"), ("spot", "subnet-b"), ("on-demand", "subnet-a"), ("on-demand", "subnet-b")]


def test_root_disks_are_40_gib_by_default_and_never_below_the_image():
    assert AWSProvider._disk_gib(MachineSpec(), None) == DEFAULT_DISK_GIB == 40
    assert AWSProvider._disk_gib(MachineSpec(disk_size="100 GiB"), 8) == 100
    assert AWSProvider._disk_gib(MachineSpec(disk_size="4 GiB"), 8) == 8


def test_wait_polls_ec2_at_most_once_a_second(monkeypatch):
    slept, states = [], iter([True, True, False])
    monkeypatch.setattr(time, "sleep", slept.append)
    polled = SimpleNamespace(describe=lambda machine_id: SimpleNamespace(id=machine_id, alive=next(states)), min_poll=AWSProvider.min_poll)
    Provider.wait(polled, ["i-1"], poll=0.05)
    assert slept == [1.0, 1.0]


# -- through the strict EC2 -----------------------------------------------------------------------------------------


def test_a_launch_right_after_its_instance_profile_is_made_waits_until_ec2_accepts_it(aws_sandbox, strict, caplog):
    strict.profile_seconds, strict.group_seconds = 3.0, 0
    name = f"prefect-remote-fresh-{secrets.token_hex(3)}"  # a name the launcher may pass to EC2
    provider = AWSProvider(instance_profile=name)
    provider.instance_types(), provider.networking.security_groups(None, runs_inside=provider.runs_inside)  # all but the profile ready
    aws_sandbox.make_instance_profile(name)  # as --provision-infra makes it, a moment before the first launch
    with caplog.at_level(logging.INFO, logger="prefect_remote.providers.aws"):
        [machine] = launch(provider, cpu=1)
    assert "AWS does not see it yet (InvalidParameterValue)" in caplog.text
    assert provider.describe(machine.id).alive  # known at once: the launch returned once EC2 showed it
    provider.terminate([machine.id])


def test_a_launch_into_a_fresh_vpc_makes_its_groups_and_asks_for_a_public_ip_the_subnet_does_not_give(aws_sandbox, ec2, strict, caplog):
    with aws_sandbox.enforcing(False):  # (the sandbox's IAM has no rule for CreateVpc: the account's owner's set-up)
        vpc = ec2.create_vpc(CidrBlock="10.78.0.0/16")["Vpc"]["VpcId"]
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.78.1.0/24")["Subnet"]["SubnetId"]  # maps no public IP
    provider = AWSProvider(vpc_id=vpc, allow_ingress_from="203.0.113.7/32")
    calls = []
    provider.client("ec2").meta.events.register("before-call.ec2.RunInstances", lambda params, **_: calls.append(params["body"]))
    with caplog.at_level(logging.INFO, logger="prefect_remote.providers.aws"):
        [machine] = launch(provider, cpu=1)  # its security groups are new: EC2 does not see them for a moment
    assert "InvalidGroup.NotFound" in caplog.text
    assert calls[-1]["NetworkInterface.1.AssociatePublicIpAddress"] == "true" and calls[-1]["NetworkInterface.1.SubnetId"] == subnet
    assert machine.public_address is None  # pending: no public IP yet
    running = wait_for(lambda: (m := provider.describe(machine.id)).state == "running" and m, timeout=10, message="running")
    assert running.public_address
    private = AWSProvider(vpc_id=vpc, allow_ingress_from="none")  # nobody outside dials it: no public IP asked
    [inside] = launch(private, cpu=1)
    assert wait_for(lambda: (m := private.describe(inside.id)).state == "running" and m, timeout=10).public_address is None
    provider.terminate([machine.id, inside.id])


def test_a_zone_without_capacity_is_passed_over_and_said(ec2, strict, caplog):
    provider = AWSProvider()
    first, second = provider.networking.subnets[:2]
    strict.refuse("InsufficientInstanceCapacity", zone=first.zone)
    with caplog.at_level(logging.WARNING, logger="prefect_remote.providers.aws"):
        [machine] = launch(provider, cpu=1)
    assert machine.details["availability_zone"] == second.zone
    assert f"on-demand capacity unavailable for t2.nano in {first.zone} ({first.id}, InsufficientInstanceCapacity); trying" in caplog.text
    provider.terminate([machine.id])


def test_a_vcpu_quota_everywhere_fails_clearly_and_starts_nothing(strict):
    provider, run = AWSProvider(), secrets.token_hex(4)
    strict.refuse("VcpuLimitExceeded")
    with pytest.raises(CapacityError, match=r"on-demand capacity unavailable for t2\.nano in us-east-1 \(VcpuLimitExceeded\)"):
        provider.launch(MachineSpec(cpu=1), BootPayload(["sleep", "600"]), tags={"run": run})
    assert provider.list({"run": run}, include_terminated=True) == []


def test_a_launch_rides_out_throttling(strict, aws_sandbox):
    provider = AWSProvider()
    strict.throttle = 0.2
    before = aws_sandbox.calls.copy()
    machines = [launch(provider, cpu=1)[0] for _ in range(3)]
    assert all(provider.describe(m.id).alive for m in machines)
    provider.terminate([m.id for m in machines])
    strict.throttle = 0.0
    assert sum((aws_sandbox.calls - before).values()) > 0


def test_default_root_disk_is_40_gib_and_a_small_one_is_raised_to_the_image(ec2, strict):
    provider = AWSProvider()
    [default] = launch(provider, cpu=1)
    [small] = launch(provider, cpu=1, disk_size="4 GiB")  # the sandbox's images have a 15 GiB snapshot
    sizes = {}
    for machine in (default, small):
        [volume] = ec2.describe_volumes(Filters=[{"Name": "attachment.instance-id", "Values": [machine.id]}])["Volumes"]
        sizes[machine.id] = volume["Size"]
    assert sizes == {default.id: 40, small.id: 15}
    provider.terminate([default.id, small.id])
