"""A hostile tenant on the sandbox AWS, IAM enforced: code on a machine of pool A, calling with that
machine's own instance-role session (what IMDS serves it, so ``ec2:SourceInstanceARN`` names it),
tries to reach pool B's launch secrets. Each attempt is refused as AWS refuses it, and the victim's
secret is unchanged. The pools' roles carry :func:`machine_policy` exactly as provisioning puts it,
each with its own secrets path (:func:`pool_secrets_prefix`).
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from prefect_remote.providers.aws import permissions
from prefect_remote.providers.aws.clients import eventually
from prefect_remote.providers.aws.infra import pool_secrets_prefix
from prefect_remote.sandbox.aws import ACCOUNT_ID, STORE_BUCKET

NO_RETRIES = Config(retries={"max_attempts": 1, "mode": "standard"})
LAUNCH_TAG = "prefect-remote:launch"


@dataclass
class Pool:
    """One pool as provisioning leaves it: its role and profile (same name), its secrets path, and
    machines that run with its profile."""

    sandbox: Any
    name: str
    role: str
    prefix: str

    def launch(self) -> str:
        """An instance of this pool as prefect-remote launches one (its launch tag, the pool's profile),
        started by the account's administrator; EC2 accepts a fresh profile after a few seconds."""
        ec2 = self.sandbox.client("ec2")
        image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        tags = [{"Key": LAUNCH_TAG, "Value": f"launch-{secrets.token_hex(6)}"}]
        [instance] = eventually(
            lambda: ec2.run_instances(
                ImageId=image,
                InstanceType="t3.micro",
                MinCount=1,
                MaxCount=1,
                IamInstanceProfile={"Name": self.role},
                TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
            )["Instances"],
            retry_if=lambda error: "Invalid IAM Instance Profile" in str(error) or "InvalidParameterValue" in str(error),
        )
        ec2.get_waiter("instance_exists").wait(InstanceIds=[instance["InstanceId"]], WaiterConfig={"Delay": 1})
        return instance["InstanceId"]

    def machine(self, instance_id: str, service: str) -> Any:
        """A client of ``service`` with the session IMDS serves instance ``instance_id``."""
        keys = self.sandbox.keys("machine", instance_id=instance_id)
        return boto3.client(
            service,
            endpoint_url=self.sandbox.url,
            region_name=self.sandbox.region,
            aws_access_key_id=keys["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=keys["AWS_SECRET_ACCESS_KEY"],
            aws_session_token=keys["AWS_SESSION_TOKEN"],
            config=NO_RETRIES,
        )


@pytest.fixture
def pools(aws_env) -> Iterator[tuple[Pool, Pool]]:
    """Pools A and B, each with its role, profile and policy; their instances end after the test."""
    iam, ec2 = aws_env.client("iam"), aws_env.client("ec2")
    made: list[Pool] = []
    for label in ("a", "b"):
        name = f"tenant-{label}-{uuid.uuid4().hex[:6]}"
        role = f"prefect-remote-{aws_env.region}-{name}"
        prefix = pool_secrets_prefix(name)
        aws_env.make_instance_profile(role)
        policy = permissions.machine_policy(
            account=ACCOUNT_ID,
            region=aws_env.region,
            role=role,
            bucket=STORE_BUCKET,
            prefix="store",
            log_group="/prefect-remote/machines",
            secrets_prefix=prefix,
        )
        iam.put_role_policy(RoleName=role, PolicyName=permissions.POLICY_NAME, PolicyDocument=json.dumps(policy))
        made.append(Pool(aws_env, name, role, prefix))
    try:
        yield made[0], made[1]
    finally:
        profiles = {f"arn:aws:iam::{ACCOUNT_ID}:instance-profile/{pool.role}" for pool in made}
        found = [
            i["InstanceId"]
            for r in ec2.describe_instances()["Reservations"]
            for i in r["Instances"]
            if i.get("IamInstanceProfile", {}).get("Arn") in profiles and i["State"]["Name"] != "terminated"
        ]
        if found:
            ec2.terminate_instances(InstanceIds=found)
        for pool in made:
            iam.remove_role_from_instance_profile(InstanceProfileName=pool.role, RoleName=pool.role)
            iam.delete_instance_profile(InstanceProfileName=pool.role)
            iam.delete_role_policy(RoleName=pool.role, PolicyName=permissions.POLICY_NAME)
            iam.delete_role(RoleName=pool.role)


def refusal(call: Any, **params: Any) -> str:
    """The error code AWS answers ``call(**params)`` with (it must refuse)."""
    with pytest.raises(ClientError) as caught:
        call(**params)
    return caught.value.response["Error"]["Code"]


def test_a_pools_machine_cannot_read_overwrite_delete_or_list_another_pools_secrets(aws_env, pools):
    a, b = pools
    admin = aws_env.client("ssm")
    own, theirs = f"{a.prefix}launch-{secrets.token_hex(6)}", f"{b.prefix}launch-{secrets.token_hex(6)}"
    for name in (own, theirs):
        admin.put_parameter(Name=name, Value='{"PREFECT_API_KEY": "secret"}', Type="SecureString")
    try:
        ssm = a.machine(a.launch(), "ssm")
        assert ssm.get_parameter(Name=own, WithDecryption=True)["Parameter"]["Value"] == '{"PREFECT_API_KEY": "secret"}'
        assert refusal(ssm.get_parameter, Name=theirs, WithDecryption=True) == "AccessDeniedException"
        assert refusal(ssm.put_parameter, Name=theirs, Value="{}", Type="SecureString", Overwrite=True) == "AccessDeniedException"
        assert refusal(ssm.delete_parameter, Name=theirs) == "AccessDeniedException"
        assert refusal(ssm.get_parameters_by_path, Path=b.prefix.rstrip("/"), WithDecryption=True) == "AccessDeniedException"
        assert refusal(ssm.get_parameters_by_path, Path="/prefect-remote", Recursive=True) == "AccessDeniedException"
        # Nor a secret of its own name in B's path (a launch's, which B's machines would then read).
        assert refusal(ssm.put_parameter, Name=f"{b.prefix}launch-{secrets.token_hex(6)}", Value="{}", Type="SecureString") == (
            "AccessDeniedException"
        )
        assert admin.get_parameter(Name=theirs, WithDecryption=True)["Parameter"]["Value"] == '{"PREFECT_API_KEY": "secret"}'
    finally:
        admin.delete_parameters(Names=[own, theirs])
