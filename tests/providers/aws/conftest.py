"""Fixtures for the EC2 provider's tests: the provider (as the docs' launcher) and plain boto3 clients
of the account's owner (a test's look at the account, and its set-up), both pointed at the session's
moto server by ``aws_env`` (the provider does not know it is not AWS)."""

from __future__ import annotations

import json
import uuid

import pytest

from prefect_remote.providers.aws import permissions
from prefect_remote.providers.aws.provider import AWSProvider
from prefect_remote.sandbox.aws import ACCOUNT_ID, STORE_BUCKET

# A documentation address (TEST-NET-3): "me" without asking checkip.amazonaws.com.
LAUNCHER_IP = "203.0.113.7"


def start_instance(ec2, profile: str, tags: dict[str, str], *, watcher=None) -> str:
    """An instance as prefect-remote launches them (its tags, e.g. its launch's, and instance profile
    ``profile``, which EC2 refuses for a few seconds after it was made: retried, as launches do),
    started by ``ec2``, and listed by EC2 when this returns (seen through ``watcher``, default
    ``ec2``): a listing leaves out what was launched a moment ago (docs/known-limits.md)."""
    from prefect_remote.providers.aws.clients import eventually

    watcher = watcher or ec2
    image = watcher.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    [instance] = eventually(
        lambda: ec2.run_instances(
            ImageId=image,
            InstanceType="t3.micro",
            MinCount=1,
            MaxCount=1,
            IamInstanceProfile={"Name": profile},
            TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}],
        )["Instances"]
    )
    listed = [{"Name": "instance-id", "Values": [instance["InstanceId"]]}]
    watcher.get_waiter("instance_exists").wait(Filters=listed, WaiterConfig={"Delay": 1})
    return instance["InstanceId"]


@pytest.fixture(autouse=True)
def launcher_ip(aws_env, monkeypatch) -> str:
    monkeypatch.setenv("PREFECT_REMOTE_AWS_PUBLIC_IP", LAUNCHER_IP)
    return LAUNCHER_IP


@pytest.fixture
def provider(aws_env) -> AWSProvider:
    return AWSProvider()


@pytest.fixture
def ec2(aws_env):
    return aws_env.client("ec2")


@pytest.fixture
def ssm(aws_env):
    return aws_env.client("ssm")


@pytest.fixture
def machine_profile_without(aws_env):
    """Makes machines' instance profiles whose role (of the same name) has the machines' policy without
    the statements named by their Sid: ``machine_profile_without("ReadLaunchSecrets")`` gives the
    profile's name. All are removed after the test."""
    iam, made = aws_env.client("iam"), []

    def make(*sids: str) -> str:
        name = f"prefect-remote-weak-{uuid.uuid4().hex[:6]}"
        policy = permissions.machine_policy(
            account=ACCOUNT_ID, region=aws_env.region, role=name, bucket=STORE_BUCKET, prefix="store", log_group="/prefect-remote/machines"
        )
        assert set(sids) <= {statement["Sid"] for statement in policy["Statement"]}, f"machine_policy() has no statement {sids}"
        policy["Statement"] = [statement for statement in policy["Statement"] if statement["Sid"] not in sids]
        iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(permissions.trust_policy()))
        iam.put_role_policy(RoleName=name, PolicyName=permissions.POLICY_NAME, PolicyDocument=json.dumps(policy))
        iam.create_instance_profile(InstanceProfileName=name)
        iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
        made.append(name)
        return name

    yield make
    for name in made:
        iam.remove_role_from_instance_profile(InstanceProfileName=name, RoleName=name)
        iam.delete_instance_profile(InstanceProfileName=name)
        iam.delete_role_policy(RoleName=name, PolicyName=permissions.POLICY_NAME)
        iam.delete_role(RoleName=name)
