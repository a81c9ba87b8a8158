"""The sandbox AWS's VPC (:mod:`prefect_remote.sandbox.vpc`) as EC2's: instances reach each other at
their private IPs; this host (a launcher outside the cloud) reaches only their public IPs; and each
instance admits only what its security groups allow (a CIDR on either address, a group reference
from its members' private IPs only). Checked with real connections: two instances serve a token on
two ports, and this host, or the other instance (from its namespace), asks for it (:mod:`tests.sandbox.reach`).

Anchors: "Security group rules" and "Security group referencing" (Amazon VPC user guide: a rule
that references a group admits traffic from the private IPs of the members' network interfaces).
"""

from __future__ import annotations

import time

import pytest

from tests.conftest import needs_firewalls, needs_namespace, wait_for
from tests.sandbox.reach import ADMITTED, MEMBERS_ONLY, SERVE, TOKEN, token_from_host, token_from_instance

IMAGE = "ami-12c6146b"
pytestmark = needs_namespace


@pytest.fixture
def pair(aws_sandbox):
    """Two running instances serving the token, in a group admitting its members on every port and
    this host on ADMITTED only; ended after the test."""
    ec2 = aws_sandbox.client("ec2")
    with aws_sandbox.enforcing(False), aws_sandbox.ec2.as_it_was() as strict:
        strict.on = False  # (EC2's eventual consistency is test_aws_strict_ec2's)
        vpc = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
        group = ec2.create_security_group(GroupName=f"vpc-test-{time.monotonic_ns()}", Description="vpc test", VpcId=vpc)["GroupId"]
        ec2.authorize_security_group_ingress(
            GroupId=group,
            IpPermissions=[
                {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": group}]},
                {"IpProtocol": "tcp", "FromPort": ADMITTED, "ToPort": ADMITTED, "IpRanges": [{"CidrIp": f"{aws_sandbox.sandbox_host}/32"}]},
            ],
        )
        launched = ec2.run_instances(
            ImageId=IMAGE, InstanceType="t3.micro", MinCount=2, MaxCount=2, SecurityGroupIds=[group], UserData=SERVE
        )["Instances"]
        ids = [instance["InstanceId"] for instance in launched]
        try:

            def running() -> list[dict]:
                found = [i for r in ec2.describe_instances(InstanceIds=ids)["Reservations"] for i in r["Instances"]]
                return found if all(i["State"]["Name"] == "running" and i.get("PublicIpAddress") for i in found) else []

            instances = wait_for(running, timeout=30, message="both instances running with a public IP")
            wait_for(lambda: token_from_host(instances[0]["PublicIpAddress"], ADMITTED) == TOKEN, timeout=30, message="serving")
            yield aws_sandbox, instances
        finally:
            ec2.terminate_instances(InstanceIds=ids)
            aws_sandbox.runner.wait_idle()
            ec2.delete_security_group(GroupId=group)


def test_the_host_reaches_public_addresses_only(pair):
    _, (first, _) = pair
    private, public = first["PrivateIpAddress"], first["PublicIpAddress"]
    assert private != public and private.startswith("172.31.")  # the default VPC's, as EC2's
    assert token_from_host(public, ADMITTED) == TOKEN
    assert token_from_host(private, ADMITTED) != TOKEN


@needs_firewalls
def test_instances_reach_each_other_at_private_addresses_as_their_groups_allow(pair):
    sandbox, (first, second) = pair
    other = sandbox.runner.machine_of(second["InstanceId"])
    assert token_from_instance(other, first["PrivateIpAddress"], MEMBERS_ONLY) == TOKEN  # a member, on its private IP
    # The group reference matches private addresses only: the same member, over the public IP, is refused.
    assert token_from_instance(other, first["PublicIpAddress"], MEMBERS_ONLY) != TOKEN
    assert token_from_host(first["PublicIpAddress"], MEMBERS_ONLY) != TOKEN  # this host is admitted on ADMITTED only


@needs_firewalls
def test_security_groups_can_be_left_unenforced_for_one_test(pair):
    sandbox, (first, _) = pair
    with sandbox.vpc.enforcing(False):
        wait_for(lambda: token_from_host(first["PublicIpAddress"], MEMBERS_ONLY) == TOKEN, timeout=10, message="every port admitted")
        assert token_from_host(first["PrivateIpAddress"], MEMBERS_ONLY) != TOKEN  # still outside the VPC
    wait_for(lambda: token_from_host(first["PublicIpAddress"], MEMBERS_ONLY) != TOKEN, timeout=10, message="enforced again")


@needs_firewalls
def test_a_rule_added_applies_to_running_instances(pair):
    sandbox, (first, _) = pair
    ec2 = sandbox.client("ec2")
    group = first["SecurityGroups"][0]["GroupId"]
    with sandbox.enforcing(False):
        ec2.authorize_security_group_ingress(
            GroupId=group,
            IpPermissions=[{"IpProtocol": "tcp", "FromPort": MEMBERS_ONLY, "ToPort": MEMBERS_ONLY, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}],
        )
    wait_for(lambda: token_from_host(first["PublicIpAddress"], MEMBERS_ONLY) == TOKEN, timeout=10, message="the new rule applied")


@needs_namespace
def test_a_vpc_removes_the_bridges_that_dead_processes_left():
    """A sandbox killed before it closed leaves its VPC's bridge; the next VPC made removes it, and
    leaves a live process's alone."""
    import subprocess
    import sys

    from prefect_remote.sandbox.vpc import VPC

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left, alive = f"prvpc{dead.pid:07x}0", VPC()  # (this process's: alive)
    for bridge in (left, alive.bridge):
        subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
    fresh = VPC()
    try:
        fresh.create()
        links = subprocess.run(["ip", "-o", "link", "show", "type", "bridge"], capture_output=True, text=True, check=True).stdout
        assert f" {left}:" not in links and f" {alive.bridge}:" in links and f" {fresh.bridge}:" in links
    finally:
        fresh.remove()
        alive.remove()
        subprocess.run(["ip", "link", "del", left], capture_output=True)
