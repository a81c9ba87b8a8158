"""--provision-infra on aws and `prefect-remote aws teardown`, against the session's moto server
through the real boto3 client. moto's IAM does not enforce policies, so the machines' policy is
checked as a document (and against the docs' copy of it).

Every test works in a region no other test uses (EC2 state there is this module's alone) and ends
with everything torn down."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError

from prefect_remote.providers.aws import infra
from prefect_remote.providers.aws.infra import POLICY_NAME, TeardownRefused, machine_policy, role_name
from prefect_remote.providers.aws.provider import LAUNCH_TAG, AWSError, AWSProvider

REGION = "eu-west-3"
ACCOUNT = "123456789012"  # moto's
BUCKET = f"prefect-remote-{ACCOUNT}-{REGION}"
DOCS_PAGE = Path(__file__).parents[3] / "docs" / "providers" / "aws.md"
CLI = str(Path(sys.executable).parent / "prefect-remote")
# The values the docs' copy of the policy is written with.
README_VALUES = dict(
    account="<account>",
    region="<region>",
    role="prefect-remote-<region>-<pool>",
    bucket="<bucket>",
    prefix="<prefix>",
    log_group="/prefect-remote/machines",
)


@pytest.fixture
def region(aws_env, monkeypatch):
    """This module's region, left with nothing provisioned in it."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.delenv("PREFECT_REMOTE_STORE", raising=False)  # the sandbox's: here provisioning chooses
    monkeypatch.delenv("PREFECT_REMOTE_AWS_INSTANCE_PROFILE", raising=False)
    yield REGION
    infra.teardown(REGION, force=True, delete_bucket=True, say=lambda _: None)


def client(service: str):
    return boto3.session.Session().client(service, region_name=REGION)


def provision(pool: str = "pool-a") -> tuple[infra.AWSSetup, list[str]]:
    lines: list[str] = []
    return infra.provision(AWSProvider(), pool, say=lines.append), lines


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CLI, *args], capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"}, stdin=subprocess.DEVNULL, timeout=120
    )


def launch_instance(profile: str) -> str:
    """An instance as prefect-remote launches them: its launch tag, the pool's instance profile."""
    ec2 = client("ec2")
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    [instance] = ec2.run_instances(
        ImageId=image,
        InstanceType="t3.micro",
        MinCount=1,
        MaxCount=1,
        IamInstanceProfile={"Name": profile},
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": LAUNCH_TAG, "Value": "launch-0123456789ab"}]}],
    )["Instances"]
    return instance["InstanceId"]


def roles() -> set[str]:
    return {r["RoleName"] for r in client("iam").list_roles()["Roles"] if r["RoleName"].startswith(f"prefect-remote-{REGION}-")}


def groups() -> set[str]:
    found = client("ec2").describe_security_groups(Filters=[{"Name": "tag-key", "Values": ["prefect-remote:managed"]}])["SecurityGroups"]
    return {g["GroupName"] for g in found}


def log_groups() -> list[dict]:
    return client("logs").describe_log_groups(logGroupNamePrefix="/prefect-remote/machines")["logGroups"]


def bucket_exists() -> bool:
    try:
        client("s3").head_bucket(Bucket=BUCKET)
    except ClientError:
        return False
    return True


# -- the policy -----------------------------------------------------------------------------------
def test_machine_policy_is_least_privilege():
    policy = machine_policy(account=ACCOUNT, region=REGION, role="prefect-remote-r", bucket="b", prefix="store", log_group="/lg")
    statements = {s["Sid"]: s for s in policy["Statement"]}
    assert all(s["Effect"] == "Allow" and "*" not in json.dumps(s["Action"]) for s in statements.values())  # no wildcard actions
    # Only the Describe calls, which EC2 cannot scope to resources, apply to every resource.
    assert [sid for sid, s in statements.items() if s["Resource"] == "*"] == ["FindInstancesImagesNetwork"]
    assert all(a.startswith("ec2:Describe") for a in statements["FindInstancesImagesNetwork"]["Action"])
    secrets = f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/prefect-remote/*"
    assert statements["ReadLaunchSecrets"] == {
        "Sid": "ReadLaunchSecrets",
        "Effect": "Allow",
        "Action": "ssm:GetParameter",
        "Resource": secrets,
    }
    assert statements["KeepWorkerLaunchSecrets"]["Resource"] == secrets
    assert not any("kms:" in json.dumps(s["Action"]) for s in statements.values())  # the aws/ssm key needs no grant
    assert statements["ReadSoftwareStore"]["Resource"] == "arn:aws:s3:::b/store/*"
    assert statements["ListSoftwareStore"]["Condition"] == {"StringLike": {"s3:prefix": ["store", "store/*"]}}
    assert not any(
        a.startswith("s3:") and a not in ("s3:GetObject", "s3:ListBucket")
        for s in statements.values()
        for a in [s["Action"]]
        if isinstance(a, str)
    )
    assert statements["ShipMachineLogs"]["Resource"] == [
        f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/lg",
        f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/lg:*",
    ]
    # Ending and tagging: only instances prefect-remote launched with this pool's instance profile.
    own = {
        "ArnEquals": {"ec2:InstanceProfile": f"arn:aws:iam::{ACCOUNT}:instance-profile/prefect-remote-r"},
        "Null": {"ec2:ResourceTag/prefect-remote:launch": "false"},
    }
    assert statements["EndPoolInstances"]["Condition"] == own
    tagging = statements["TagPoolInstances"]["Condition"]
    assert tagging["ArnEquals"] == own["ArnEquals"] and tagging["Null"] == own["Null"]
    assert tagging["ForAllValues:StringEquals"]["aws:TagKeys"] == [
        "prefect-remote:lease",
        "prefect-remote:reason",
        "prefect-remote:exit-code",
    ]
    # A scheduler launches workers with this profile only, passing this role only, to EC2 only.
    assert statements["LaunchWorkersWithThisProfile"]["Condition"]["ArnEquals"] == own["ArnEquals"]
    assert statements["PassThisRoleToWorkers"]["Resource"] == f"arn:aws:iam::{ACCOUNT}:role/prefect-remote-r"
    assert statements["PassThisRoleToWorkers"]["Condition"] == {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}
    assert statements["TagWorkersAtLaunch"]["Condition"] == {"StringEquals": {"ec2:CreateAction": "RunInstances"}}
    # Workers need no ingress from outside the VPC: nothing may make or open security groups.
    assert not {"ec2:CreateSecurityGroup", "ec2:AuthorizeSecurityGroupIngress"} & {
        a for s in policy["Statement"] for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    }
    assert len(json.dumps(policy, separators=(",", ":"))) < 10240  # IAM's limit for a role's inline policies


def test_readme_quotes_the_policy_exactly():
    found = re.search(r"<!-- machine-policy -->\n```json\n(.*?)\n```", DOCS_PAGE.read_text(), re.S)
    assert found, "docs/providers/aws.md's setup section lost its policy block"
    assert found.group(1) == json.dumps(machine_policy(**README_VALUES), indent=2)


# -- provisioning ---------------------------------------------------------------------------------
def test_provisioning_twice_creates_once(region):
    setup, first = provision()
    name = role_name(REGION, "pool-a")
    assert setup.role == setup.instance_profile == name and setup.store == f"s3://{BUCKET}/store"
    created = [line for line in first if line.startswith("created")]
    assert len(created) == 6, first  # bucket, log group, two security groups, role, instance profile
    again, second = provision()
    assert again == setup
    assert not any(line.startswith(("created", "set", "updated")) for line in second), second
    assert sum(line.startswith("found") for line in second) == 6
    assert roles() == {name}

    iam = client("iam")
    document = iam.get_role_policy(RoleName=name, PolicyName=POLICY_NAME)["PolicyDocument"]
    assert document == machine_policy(
        account=ACCOUNT, region=REGION, role=name, bucket=BUCKET, prefix="store", log_group="/prefect-remote/machines"
    )
    assert iam.list_role_policies(RoleName=name)["PolicyNames"] == [POLICY_NAME]
    assert iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"] == []
    trust = iam.get_role(RoleName=name)["Role"]["AssumeRolePolicyDocument"]
    assert trust["Statement"] == [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]
    assert [r["RoleName"] for r in iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]["Roles"]] == [name]

    s3 = client("s3")
    assert all(s3.get_public_access_block(Bucket=BUCKET)["PublicAccessBlockConfiguration"].values())
    [rule] = s3.get_bucket_encryption(Bucket=BUCKET)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    [log_group] = log_groups()
    assert log_group["retentionInDays"] == 30
    vpc = AWSProvider().vpc_id
    assert groups() == {f"prefect-remote-{vpc}", f"prefect-remote-{vpc}-dask-from-203.0.113.7/32"}
    assert set(setup.security_groups) == {
        g["GroupId"] for g in client("ec2").describe_security_groups(GroupIds=list(setup.security_groups))["SecurityGroups"]
    }


def test_work_pool_create_provisions_aws_and_records_it(region, prefect_server, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tests.workers.conftest import prefect_cli

    monkeypatch.setenv("PREFECT_REMOTE_PROVIDER", "aws")
    created = prefect_cli(prefect_server, "work-pool", "create", "--type", "remote:push", "--provision-infra", "aws-pool", "--overwrite")
    assert created.returncode == 0, created.stdout + created.stderr
    name = role_name(REGION, "aws-pool")
    assert f"created IAM role {name}" in created.stdout and "created provider block 'aws-pool-provider'" in created.stdout
    assert f"PREFECT_REMOTE_STORE=s3://{BUCKET}/store" in created.stdout.replace("\n", "")
    again = prefect_cli(prefect_server, "work-pool", "create", "--type", "remote:push", "--provision-infra", "aws-pool", "--overwrite")
    assert again.returncode == 0 and "reusing provider block 'aws-pool-provider' (aws)" in again.stdout, again.stdout + again.stderr
    assert f"found IAM role {name}" in again.stdout and "created" not in again.stdout
    with temporary_settings({PREFECT_API_URL: prefect_server}), get_client(sync_client=True) as api:
        block = api.read_block_document_by_name("aws-pool-provider", "prefect-remote-provider")
        pool = api.read_work_pool("aws-pool")
    assert {k: v for k, v in block.data.items() if v} == {
        "provider": "aws",
        "region": REGION,
        "instance_profile": name,
        "log_group": "/prefect-remote/machines",
        "store": f"s3://{BUCKET}/store",
    }
    defaults = {key: value.get("default") for key, value in pool.base_job_template["variables"]["properties"].items()}
    assert defaults["credentials"] == {"$ref": {"block_document_id": str(block.id)}}
    assert defaults["provider"] == "aws" and defaults["region"] == REGION
    from prefect_remote.workers.config import RemoteProviderCredentials

    provider = RemoteProviderCredentials.model_validate(block.data).get_provider()  # what runs of the pool launch with
    assert provider.options.instance_profile == name and provider.region == REGION


# -- teardown -------------------------------------------------------------------------------------
def test_teardown_removes_what_provisioning_made_and_is_idempotent(region):
    provision()
    said: list[str] = []
    removed = infra.teardown(REGION, say=said.append)
    name = role_name(REGION, "pool-a")
    assert set(removed) >= {f"IAM role {name}", f"instance profile {name}", "log group /prefect-remote/machines"}
    assert sum(item.startswith("security group") for item in removed) == 2
    assert roles() == set() and groups() == set() and log_groups() == []
    assert bucket_exists() and any("kept S3 bucket" in line and "--delete-bucket" in line for line in said)  # it holds data
    assert infra.teardown(REGION, delete_bucket=True, say=said.append) == [f"S3 bucket {BUCKET}"]
    assert not bucket_exists()
    assert infra.teardown(REGION, delete_bucket=True, say=said.append) == []
    assert said[-1] == f"nothing to remove in {REGION}"


def test_teardown_of_one_pool_keeps_what_other_pools_use(region):
    provision("pool-a")
    provision("pool-b")
    said: list[str] = []
    assert infra.teardown(REGION, "pool-a", say=said.append) == [
        f"instance profile {role_name(REGION, 'pool-a')}",
        f"IAM role {role_name(REGION, 'pool-a')}",
    ]
    assert roles() == {role_name(REGION, "pool-b")} and len(groups()) == 2 and log_groups()
    assert "pools pool-b still use them" in said[0]
    assert infra.teardown(REGION, "pool-a", say=said.append) == []
    infra.teardown(REGION, "pool-b", say=said.append)  # the last pool: the shared resources go too
    assert roles() == set() and groups() == set() and log_groups() == []


def test_teardown_refuses_while_instances_run(region):
    setup, _ = provision()
    instance = launch_instance(setup.instance_profile)
    refused = cli("aws", "teardown", "--pool", "pool-a")
    assert refused.returncode == 1 and instance in refused.stderr and "--force" in refused.stderr, refused.stderr
    assert roles() == {setup.role} and len(groups()) == 2  # nothing removed
    with pytest.raises(TeardownRefused, match=instance):
        infra.teardown(REGION, say=lambda _: None)
    forced = cli("aws", "teardown", "--yes", "--force")
    assert forced.returncode == 0, forced.stderr
    assert f"terminated {instance}" in forced.stdout and f"removed IAM role {setup.role}" in forced.stdout
    state = client("ec2").describe_instances(InstanceIds=[instance])["Reservations"][0]["Instances"][0]["State"]["Name"]
    assert state == "terminated" and roles() == set() and groups() == set()
    assert f"nothing to remove in {REGION}" in cli("aws", "teardown", "--yes").stdout


def test_teardown_needs_a_pool_or_yes(region):
    result = cli("aws", "teardown")
    assert result.returncode == 2 and "--yes" in result.stderr


# -- errors ---------------------------------------------------------------------------------------
def refuse(boto_client, operation: str, code: str = "AccessDenied") -> None:
    """Makes ``boto_client`` answer ``operation`` as AWS does when a permission is missing."""

    def hook(**_):
        raise ClientError({"Error": {"Code": code, "Message": "not authorized"}}, operation)

    boto_client.meta.events.register(f"before-call.*.{operation}", hook)


def test_errors_name_the_fix(region, monkeypatch):
    provider = AWSProvider()
    refuse(provider.client("iam"), "CreateRole")
    with pytest.raises(
        AWSError, match=r"AWS refused iam:CreateRole \(AccessDenied\): the identity in use needs the permission iam:CreateRole"
    ):
        infra.provision(provider, "pool-a", say=lambda _: None)
    provider = AWSProvider()
    refuse(provider.client("s3"), "HeadBucket", "403")
    with pytest.raises(AWSError, match="may not use it"):
        infra.provision(provider, "pool-b", say=lambda _: None)
    provider = AWSProvider()
    refuse(provider.client("s3"), "CreateBucket")
    refuse(provider.client("s3"), "HeadBucket", "404")
    with pytest.raises(AWSError, match=r"needs the permission s3:CreateBucket"):
        infra.provision(provider, "pool-b", say=lambda _: None)
    with monkeypatch.context() as m:  # no credentials anywhere
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
            m.delenv(name, raising=False)
        m.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        m.setenv("AWS_CONFIG_FILE", "/nonexistent")
        m.setenv("AWS_EC2_METADATA_DISABLED", "true")
        with pytest.raises(AWSError, match="no AWS credentials found.*AWS_PROFILE"):
            infra.provision(AWSProvider(), "pool-a", say=lambda _: None)
        result = cli("aws", "teardown", "--yes")
        assert result.returncode == 1 and "no AWS credentials found" in result.stderr and "AWS_PROFILE" in result.stderr


def test_work_pool_create_reports_a_failed_provisioning(region, prefect_server, monkeypatch):
    """The provisioner raises a RuntimeError, which `prefect work-pool create` reports as "Failed to
    provision infrastructure: …" (a ValueError would make it say provisioning is unsupported, and
    create the pool anyway)."""
    from tests.workers.conftest import prefect_cli

    monkeypatch.setenv("PREFECT_REMOTE_PROVIDER", "aws")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "nowhere")
    failed = prefect_cli(prefect_server, "work-pool", "create", "--type", "remote:push", "--provision-infra", "aws-bad-pool")
    output = " ".join((failed.stdout + failed.stderr).split())
    assert failed.returncode == 1 and "Failed to provision infrastructure: region='nowhere'" in output, output
    assert "not supported" not in output
    assert prefect_cli(prefect_server, "work-pool", "inspect", "aws-bad-pool").returncode == 1  # no pool was made
