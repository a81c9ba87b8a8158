"""The sandbox AWS's strict EC2 (:mod:`prefect_remote.sandbox.ec2_strict`) through the real boto3, with
no retries, so that every answer is EC2's own: addresses that show once an instance runs, ids,
groups and instance profiles EC2 does not see yet, throttling, and capacity errors per zone or
subnet; each switched off by its knob. The instances here have no user data: none boots.

Anchors: "Eventual consistency in the Amazon EC2 API" and "Amazon EC2 instance IP addressing"
(EC2 user guide), the RunInstances API reference (its error codes), SkyPilot's 15 s wait after it
makes an instance profile.
"""

from __future__ import annotations

import secrets
import time

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from prefect_remote.sandbox.ec2_strict import Refusal
from tests.conftest import wait_for

IMAGE = "ami-12c6146b"
NO_RETRIES = Config(retries={"total_max_attempts": 1, "mode": "standard"})  # (max_attempts counts retries)


@pytest.fixture
def ec2(aws_env, strict):
    return boto3.session.Session().client("ec2", config=NO_RETRIES)


@pytest.fixture
def strict(aws_sandbox):
    """The session sandbox's strict EC2, as it was again after the test; IAM not enforced meanwhile
    (what each identity may do is tests/sandbox/test_aws_iam.py's)."""
    with aws_sandbox.ec2.as_it_was() as strict, aws_sandbox.enforcing(False):
        yield strict


def run(ec2, **params) -> dict:
    return ec2.run_instances(ImageId=IMAGE, InstanceType="t3.micro", MinCount=1, MaxCount=1, **params)["Instances"][0]


def described(ec2, instance_id: str) -> dict:
    return ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]


def code_of(call) -> str:
    with pytest.raises(ClientError) as raised:
        call()
    return raised.value.response["Error"]["Code"]


def subnet_in_new_vpc(ec2, *, public: bool) -> str:
    vpc = ec2.create_vpc(CidrBlock="10.77.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.77.1.0/24")["Subnet"]["SubnetId"]
    if public:
        ec2.modify_subnet_attribute(SubnetId=subnet, MapPublicIpOnLaunch={"Value": True})
    return subnet


# -- addresses and the first moments of an instance --------------------------------------------------------


def test_a_new_instance_is_unknown_then_pending_then_running_with_its_public_ip(ec2, strict):
    strict.unknown_seconds, strict.pending_seconds = 1.0, 2.0
    launched = run(ec2)
    assert launched["State"]["Name"] == "pending" and "PublicIpAddress" not in launched and launched["PrivateIpAddress"]
    instance_id = launched["InstanceId"]
    assert code_of(lambda: described(ec2, instance_id)) == "InvalidInstanceID.NotFound"
    assert code_of(lambda: ec2.create_tags(Resources=[instance_id], Tags=[{"Key": "k", "Value": "v"}])) == "InvalidInstanceID.NotFound"
    seen = wait_for(lambda: _visible(ec2, instance_id), timeout=5, message="the instance, once EC2 shows it")
    assert seen["State"]["Name"] == "pending" and "PublicIpAddress" not in seen
    running = wait_for(lambda: (i := described(ec2, instance_id))["State"]["Name"] == "running" and i, timeout=5, message="running")
    assert running["PublicIpAddress"]  # the default VPC's subnets map public IPs on launch
    ec2.terminate_instances(InstanceIds=[instance_id])


def test_a_listing_leaves_a_new_instance_out_for_longer_than_its_id_is_unknown(ec2, strict):
    assert strict.unlisted_seconds > strict.unknown_seconds > 0  # on by default, as on EC2
    strict.unknown_seconds, strict.unlisted_seconds = 0.5, 3.0
    tag = secrets.token_hex(4)
    instance_id = run(ec2, TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "unlisted", "Value": tag}]}])["InstanceId"]

    def listed() -> list[str]:
        pages = ec2.get_paginator("describe_instances").paginate(Filters=[{"Name": "tag:unlisted", "Values": [tag]}])
        return [i["InstanceId"] for page in pages for r in page["Reservations"] for i in r["Instances"]]

    assert listed() == []
    wait_for(lambda: _visible(ec2, instance_id), timeout=5, message="the instance, by id")
    assert listed() == []  # known by id, not listed yet
    wait_for(lambda: listed() == [instance_id], timeout=6, message="the instance, listed")
    ec2.terminate_instances(InstanceIds=[instance_id])


def test_a_private_subnet_gives_a_public_ip_only_when_the_launch_asks(ec2, strict):
    strict.unknown_seconds = strict.pending_seconds = 0.2
    subnet = subnet_in_new_vpc(ec2, public=False)
    private = run(ec2, SubnetId=subnet)["InstanceId"]
    asked = run(ec2, NetworkInterfaces=[{"DeviceIndex": 0, "SubnetId": subnet, "AssociatePublicIpAddress": True}])["InstanceId"]
    time.sleep(0.3)
    assert "PublicIpAddress" not in described(ec2, private) and described(ec2, private)["State"]["Name"] == "running"
    assert described(ec2, asked)["PublicIpAddress"]
    ec2.terminate_instances(InstanceIds=[private, asked])


def test_switched_off_an_instance_runs_and_is_known_at_once(ec2, strict):
    strict.unknown_seconds = strict.pending_seconds = 0
    launched = run(ec2)
    found = described(ec2, launched["InstanceId"])
    assert found["State"]["Name"] == "running" and found["PublicIpAddress"]
    ec2.terminate_instances(InstanceIds=[launched["InstanceId"]])


def _visible(ec2, instance_id: str) -> dict | None:
    try:
        return described(ec2, instance_id)
    except ClientError as error:
        assert error.response["Error"]["Code"] == "InvalidInstanceID.NotFound"
        return None


# -- what was made a moment ago ---------------------------------------------------------------------------------


def test_a_new_instance_profile_is_refused_for_a_while(aws_env, aws_sandbox, ec2, strict):
    strict.profile_seconds, strict.unknown_seconds = 1.5, 0
    name = f"strict-{secrets.token_hex(3)}"
    aws_sandbox.make_instance_profile(name)  # with the sandbox's own keys, as provisioning makes it
    with pytest.raises(ClientError) as refused:
        run(ec2, IamInstanceProfile={"Name": name})
    assert refused.value.response["Error"]["Code"] == "InvalidParameterValue"
    assert "Invalid IAM Instance Profile name" in refused.value.response["Error"]["Message"]
    time.sleep(1.6)
    ec2.terminate_instances(InstanceIds=[run(ec2, IamInstanceProfile={"Name": name})["InstanceId"]])


def test_a_new_security_group_is_not_found_for_a_moment(ec2, strict):
    strict.group_seconds = 0.5
    vpc = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    group = ec2.create_security_group(GroupName=f"strict-{secrets.token_hex(3)}", Description="strict", VpcId=vpc)["GroupId"]
    rule = [{"IpProtocol": "tcp", "FromPort": 8786, "ToPort": 8786, "IpRanges": [{"CidrIp": "203.0.113.7/32"}]}]
    assert code_of(lambda: ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=rule)) == "InvalidGroup.NotFound"
    assert code_of(lambda: run(ec2, SecurityGroupIds=[group])) == "InvalidGroup.NotFound"
    time.sleep(0.6)
    ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=rule)
    ec2.delete_security_group(GroupId=group)


# -- limits -------------------------------------------------------------------------------------------------------


def test_throttling_at_the_rate_a_test_sets(ec2, strict):
    strict.throttle = 1.0
    assert code_of(lambda: ec2.describe_vpcs()) == "RequestLimitExceeded"
    strict.throttle = 0.5
    answers = []
    for _ in range(60):
        try:
            ec2.describe_vpcs()
            answers.append("ok")
        except ClientError as error:
            answers.append(error.response["Error"]["Code"])
    assert set(answers) == {"ok", "RequestLimitExceeded"} and 15 <= answers.count("ok") <= 45
    strict.throttle = 0.0
    retrying = boto3.session.Session().client("ec2", config=Config(retries={"max_attempts": 8, "mode": "standard"}))
    strict.throttle = 0.3
    for _ in range(10):  # botocore's standard retry mode rides it out
        retrying.describe_vpcs()


def test_capacity_refused_in_one_zone_or_subnet_on_one_market(ec2, strict):
    strict.unknown_seconds = strict.pending_seconds = 0
    subnets = ec2.describe_subnets(Filters=[{"Name": "default-for-az", "Values": ["true"]}])["Subnets"]
    zone_a, zone_b = sorted(subnets, key=lambda s: s["AvailabilityZone"])[:2]
    strict.refuse("InsufficientInstanceCapacity", zone=zone_a["AvailabilityZone"], spot=True)
    strict.refuse("VcpuLimitExceeded", subnet=zone_b["SubnetId"], times=1)
    spot = {"InstanceMarketOptions": {"MarketType": "spot"}}
    with pytest.raises(ClientError) as refused:
        run(ec2, SubnetId=zone_a["SubnetId"], **spot)
    assert refused.value.response["Error"]["Code"] == "InsufficientInstanceCapacity"
    assert f"({zone_a['AvailabilityZone']})" in refused.value.response["Error"]["Message"]
    started = [run(ec2, SubnetId=zone_a["SubnetId"])["InstanceId"]]  # on-demand has capacity there
    assert code_of(lambda: run(ec2, SubnetId=zone_b["SubnetId"])) == "VcpuLimitExceeded"
    started.append(run(ec2, SubnetId=zone_b["SubnetId"], **spot)["InstanceId"])  # refused once only
    strict.clear()
    started.append(run(ec2, SubnetId=zone_a["SubnetId"], **spot)["InstanceId"])
    ec2.terminate_instances(InstanceIds=started)


def test_a_refusal_matches_its_place_and_market():
    refusal = Refusal("InsufficientInstanceCapacity", zone="us-east-1a", spot=True, times=1)
    assert refusal.matches("us-east-1a", "subnet-1", spot=True)
    assert not refusal.matches("us-east-1b", "subnet-1", spot=True) and not refusal.matches("us-east-1a", "subnet-1", spot=False)
    refusal.times = 0
    assert not refusal.matches("us-east-1a", "subnet-1", spot=True)


@pytest.mark.parametrize("name", [".", "..", "_index"])
def test_a_tag_name_the_metadata_service_reserves_is_refused_with_metadata_tags_on(ec2, strict, name):
    tags = [{"ResourceType": "instance", "Tags": [{"Key": name, "Value": "x"}]}]
    metadata = {"HttpTokens": "required", "InstanceMetadataTags": "enabled"}
    with pytest.raises(ClientError, match="reserved name") as refused:
        run(ec2, TagSpecifications=tags, MetadataOptions=metadata)
    assert refused.value.response["Error"]["Code"] == "InvalidParameterValue"
    strict.unknown_seconds = 0
    ec2.terminate_instances(InstanceIds=[run(ec2, TagSpecifications=tags)["InstanceId"]])  # metadata tags off: any name


def test_every_instance_of_a_launch_has_the_profile_until_it_ends_itself(aws_env, aws_sandbox, ec2, strict):
    """RunInstances' instance profile is associated with every instance it launches, as on EC2 (moto
    associates the first only), and the first one's end leaves its siblings theirs: a scheduler that
    renews its workers' leases (``ec2:InstanceProfile`` in the machines' policy) is not refused once
    its launch's first worker is gone."""
    strict.profile_seconds = strict.unknown_seconds = 0
    name = f"strict-{secrets.token_hex(3)}"
    aws_sandbox.make_instance_profile(name)
    launched = ec2.run_instances(ImageId=IMAGE, InstanceType="t3.micro", MinCount=3, MaxCount=3, IamInstanceProfile={"Name": name})
    first, *siblings = [instance["InstanceId"] for instance in launched["Instances"]]
    try:

        def associated() -> dict[str, str]:
            found = ec2.describe_iam_instance_profile_associations()["IamInstanceProfileAssociations"]
            return {a["InstanceId"]: a["IamInstanceProfile"]["Arn"] for a in found if a["InstanceId"] in (first, *siblings)}

        assert sorted(associated()) == sorted([first, *siblings]) and {arn.rsplit("/", 1)[-1] for arn in associated().values()} == {name}
        ec2.terminate_instances(InstanceIds=[first])
        assert sorted(associated()) == sorted(siblings)
    finally:
        ec2.terminate_instances(InstanceIds=[first, *siblings])
