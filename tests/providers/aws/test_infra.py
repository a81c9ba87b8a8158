"""--provision-infra on aws and `prefect-remote aws teardown`: what only aws has (what the infra
contract, tests/providers/test_infra.py, does not check on every cloud). moto's IAM does not enforce
policies, so the machines' policy is checked as a document (and against the docs' copy of it); one
pool's teardown keeps what other pools use; refusals name the permission to add.

Every test works in a region no other test uses (EC2 state there is the infra tests' alone) and ends
with everything torn down."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from prefect_remote.providers.aws import infra, permissions
from prefect_remote.providers.aws.infra import machine_policy, role_name
from prefect_remote.providers.aws.provider import AWSError, AWSProvider
from prefect_remote.providers.setup import pool_key
from prefect_remote.sandbox import aws_identities
from tests.providers.infra_clouds import AWSInfra, cli

REGION = AWSInfra.REGION
ACCOUNT = AWSInfra.ACCOUNT
DOCS_PAGE = Path(__file__).parents[3] / "docs" / "providers" / "aws.md"
# The values the docs' copy of the policy is written with.
README_VALUES = dict(
    account="<account>",
    region="<region>",
    role="prefect-remote-<region>-<pool>",
    bucket="<bucket>",
    prefix="<prefix>",
    log_group="/prefect-remote/machines",
    secrets_prefix="/prefect-remote/<pool key>/",
)
roles, groups, log_groups = AWSInfra.roles, AWSInfra.groups, AWSInfra.log_groups


@pytest.fixture
def region(aws_env, monkeypatch):
    """The infra tests' region, left with nothing provisioned in it."""
    with AWSInfra.prepared(aws_env, monkeypatch) as name:
        yield name


def provision(pool: str = "pool-a") -> tuple[infra.AWSSetup, list[str]]:
    return AWSInfra(None).provision(pool)


# -- the policy -----------------------------------------------------------------------------------
def test_machine_policy_is_least_privilege():
    policy = machine_policy(account=ACCOUNT, region=REGION, role="prefect-remote-r", bucket="b", prefix="store", log_group="/lg")
    statements = {s["Sid"]: s for s in policy["Statement"]}
    assert all(s["Effect"] == "Allow" and "*" not in json.dumps(s["Action"]) for s in statements.values())  # no wildcard actions
    # Only the Describe calls, which EC2 cannot scope to resources, and ECR's login token (which has no
    # resource) apply to every resource; ECR's layers, to this account's repositories only.
    assert [sid for sid, s in statements.items() if s["Resource"] == "*"] == ["LogInToECR", "FindInstancesImagesNetwork"]
    assert statements["LogInToECR"]["Action"] == "ecr:GetAuthorizationToken"
    assert statements["PullImagesFromECR"]["Resource"] == f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/*"
    # what a pull asks (the manifest, the layers), as ECR's docs list it; BatchCheckLayerAvailability is a push's
    assert statements["PullImagesFromECR"]["Action"] == ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"]
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
    # Ending and tagging (its lease, why it ended): itself, and of this pool's instances those it launched
    # or schedules, named in their tags by the calling instance's ARN (only an instance's own session has one).
    caller = "${ec2:SourceInstanceARN}"
    machine_tags = {
        "ForAllValues:StringEquals": {"aws:TagKeys": ["prefect-remote:lease", "prefect-remote:reason", "prefect-remote:exit-code"]}
    }
    pool = {"ArnEquals": {"ec2:InstanceProfile": f"arn:aws:iam::{ACCOUNT}:instance-profile/prefect-remote-r"}}
    ec2 = f"arn:aws:ec2:{REGION}:{ACCOUNT}"
    for sid in ("EndAndTagItself", "EndAndTagWhatItLaunched", "EndAndTagWorkersItSchedules"):
        assert (
            statements[sid]["Action"] == ["ec2:TerminateInstances", "ec2:CreateTags"] and statements[sid]["Resource"] == f"{ec2}:instance/*"
        )
    assert statements["EndAndTagItself"]["Condition"] == {
        "ArnEquals": {"ec2:SourceInstanceARN": f"{ec2}:instance/${{ec2:InstanceID}}"},
        **machine_tags,
    }
    assert statements["EndAndTagWhatItLaunched"]["Condition"] == {
        **pool,
        "StringEquals": {"ec2:ResourceTag/prefect-remote:parent": caller},
        **machine_tags,
    }
    assert statements["EndAndTagWorkersItSchedules"]["Condition"] == {
        **pool,
        "StringEquals": {"ec2:ResourceTag/prefect-remote:controller": caller},
        **machine_tags,
    }
    # A machine launches with this profile only, instances that name it as their parent, passing this role only, to EC2 only.
    assert statements["LaunchWorkersWithThisProfile"]["Condition"] == {
        **pool,
        "StringEquals": {"aws:RequestTag/prefect-remote:parent": caller},
        "Null": {"aws:RequestTag/prefect-remote:launch": "false"},
    }
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


def docs_list(name: str) -> list[str]:
    """The permissions the docs list between ``<!-- name -->`` and ``<!-- /name -->``, in order."""
    found = re.search(rf"<!-- {name} -->\n(.*?)<!-- /{name} -->", DOCS_PAGE.read_text(), re.S)
    assert found, f"docs/providers/aws.md lost its {name} list"
    return re.findall(r"`([a-z0-9]+:[A-Za-z]+)`", found.group(1))


def test_the_docs_list_exactly_the_permissions_the_sandbox_enforces():
    """The docs' lists are permissions' data, which the sandbox's users hold (and nothing more)."""
    assert docs_list("launcher-permissions") == list(permissions.LAUNCHER_PERMISSIONS)
    assert docs_list("store-permissions") == [*permissions.STORE_OBJECT_PERMISSIONS, *permissions.STORE_BUCKET_PERMISSIONS]
    assert docs_list("provisioning-permissions") == list(permissions.PROVISIONING_PERMISSIONS)
    assert docs_list("teardown-permissions") == list(permissions.TEARDOWN_PERMISSIONS)
    assert docs_list("teardown-delete-bucket-permissions") == list(permissions.TEARDOWN_DELETE_BUCKET_PERMISSIONS)
    assert docs_list("teardown-force-permissions") == list(permissions.TEARDOWN_FORCE_PERMISSIONS)
    granted = {
        name: {a for s in policy["Statement"] for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])}
        for name, policy in aws_identities.policies(ACCOUNT).items()
    }
    assert granted["launcher"] == {*docs_list("launcher-permissions"), *docs_list("store-permissions"), "iam:PassRole"}
    assert granted["provisioning"] == set(docs_list("provisioning-permissions"))
    assert granted["teardown"] == {
        *docs_list("teardown-permissions"),
        *docs_list("teardown-delete-bucket-permissions"),
        *docs_list("teardown-force-permissions"),
    }


# -- teardown -------------------------------------------------------------------------------------
def test_teardown_of_one_pool_keeps_what_other_pools_use(region):
    """Two pools provisioned with defaults get a store folder each in the one default bucket; a
    pool's machines read their own folder and are refused the other's (S3 as IAM enforces it); one
    pool's teardown removes its role, profile and folder, and nothing of the other's."""
    import boto3

    from prefect_remote.sandbox.aws_identities import MachineCredentials

    setups = {pool: provision(pool)[0] for pool in ("pool-a", "pool-b")}
    bucket = AWSInfra(None).bucket
    assert {pool: setup.store for pool, setup in setups.items()} == {
        pool: f"s3://{bucket}/store/{pool_key(pool)}" for pool in ("pool-a", "pool-b")
    }
    s3 = AWSInfra.client("s3")
    keys = {pool: f"store/{pool_key(pool)}/envs/e.json" for pool in setups}
    for key in keys.values():
        s3.put_object(Bucket=bucket, Key=key, Body=b"{}")
    session = MachineCredentials(ACCOUNT).for_instance("i-0poolamachine", REGION, role_name(REGION, "pool-a"))
    machine = boto3.session.Session(
        aws_access_key_id=session["AccessKeyId"], aws_secret_access_key=session["SecretAccessKey"], aws_session_token=session["Token"]
    ).client("s3", region_name=REGION, endpoint_url=s3.meta.endpoint_url)
    assert machine.get_object(Bucket=bucket, Key=keys["pool-a"])["Body"].read() == b"{}"
    for refused in (
        lambda: machine.get_object(Bucket=bucket, Key=keys["pool-b"]),
        lambda: machine.list_objects_v2(Bucket=bucket, Prefix=f"store/{pool_key('pool-b')}/"),
    ):
        with pytest.raises(ClientError, match="AccessDenied"):
            refused()
    said: list[str] = []
    with AWSInfra(None).identity("teardown"):
        assert infra.teardown(REGION, "pool-a", say=said.append) == [
            f"the pool's store {setups['pool-a'].store}",
            f"instance profile {role_name(REGION, 'pool-a')}",
            f"IAM role {role_name(REGION, 'pool-a')}",
        ]
        assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == [keys["pool-b"]]
        assert roles() == {role_name(REGION, "pool-b")} and len(groups()) == 2 and log_groups()
        assert "pools pool-b still use them" in said[1]
        assert infra.teardown(REGION, "pool-a", say=said.append) == []
        infra.teardown(REGION, "pool-b", say=said.append)  # the last pool: the shared resources go too
    assert roles() == set() and groups() == set() and log_groups() == []
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket)  # pool-b's folder went with pool-b (the bucket is kept)


def test_a_role_of_the_same_name_not_made_for_this_pool_is_never_taken_over(region):
    """ "my pool" and "my-pool" slug to one role name: the second pool is refused, naming the first;
    so is a pool whose role name an unmanaged role of the account already has (left untouched)."""
    import boto3

    provision("my pool")
    with pytest.raises(infra.AWSError, match=r"is pool 'my pool''s .*give pool 'my-pool' another name"):
        provision("my-pool")
    theirs = role_name(REGION, "theirs")
    with AWSInfra(None).identity("provisioning"):  # (a role of the account's, made by someone else)
        boto3.session.Session().client("iam").create_role(RoleName=theirs, AssumeRolePolicyDocument=json.dumps(infra.trust_policy()))
    try:
        with pytest.raises(infra.AWSError, match=r"exists and prefect-remote did not make it .*left as it is"):
            provision("theirs")
        with AWSInfra(None).identity("provisioning"), pytest.raises(ClientError, match="NoSuchEntity"):
            boto3.session.Session().client("iam").get_role_policy(RoleName=theirs, PolicyName=infra.POLICY_NAME)  # nothing put on it
    finally:
        with AWSInfra(None).identity("teardown"):
            boto3.session.Session().client("iam").delete_role(RoleName=theirs)
            infra.teardown(REGION, "my pool", say=lambda _: None)


def test_teardown_removes_only_launch_secrets_a_launch_tagged(region):
    """Under the secrets prefix, teardown removes the parameters launches left (named and tagged so);
    a user's parameter there, even one named like a launch's, survives."""
    import secrets

    provision("pool-a")
    ssm = AWSInfra.client("ssm")
    leftover, lookalike = f"launch-{secrets.token_hex(6)}", f"launch-{secrets.token_hex(6)}"
    ssm.put_parameter(
        Name=f"/prefect-remote/{leftover}", Value="{}", Type="SecureString", Tags=[{"Key": "prefect-remote:launch", "Value": leftover}]
    )
    ssm.put_parameter(Name=f"/prefect-remote/{lookalike}", Value="mine", Type="SecureString")
    ssm.put_parameter(Name="/prefect-remote/api-key", Value="mine", Type="SecureString")
    try:
        with AWSInfra(None).identity("teardown"):
            removed = infra.teardown(REGION, say=lambda _: None)
        assert f"SSM parameter /prefect-remote/{leftover}" in removed
        left = {p["Name"] for p in ssm.get_parameters_by_path(Path="/prefect-remote")["Parameters"]}
        assert left == {f"/prefect-remote/{lookalike}", "/prefect-remote/api-key"}
    finally:
        ssm.delete_parameters(Names=[f"/prefect-remote/{lookalike}", "/prefect-remote/api-key"])


def put_leftover(ssm, prefix: str) -> str:
    """A launch's secret left behind under ``prefix`` (named and tagged as a launch makes them)."""
    import secrets

    launch = f"launch-{secrets.token_hex(6)}"
    ssm.put_parameter(Name=f"{prefix}{launch}", Value="{}", Type="SecureString", Tags=[{"Key": "prefect-remote:launch", "Value": launch}])
    return f"{prefix}{launch}"


def test_each_pool_gets_secrets_of_its_own_and_teardown_of_one_removes_only_its_own(region):
    setup_a, said = provision("pool-a")
    setup_b, _ = provision("pool-b")
    assert (setup_a.secrets_prefix, setup_b.secrets_prefix) == (infra.pool_secrets_prefix("pool-a"), infra.pool_secrets_prefix("pool-b"))
    assert setup_a.block_fields()["secrets_prefix"] == f"/prefect-remote/{pool_key('pool-a')}/"
    assert f"launch secrets: SSM parameters under {setup_a.secrets_prefix} (this pool's machines read no other's)" in said
    iam = AWSInfra.client("iam")
    for setup in (setup_a, setup_b):  # the policy reaches the pool's own path only, and the role records it
        document = iam.get_role_policy(RoleName=setup.role, PolicyName=permissions.POLICY_NAME)["PolicyDocument"]
        reads = {s["Sid"]: s["Resource"] for s in document["Statement"]}["ReadLaunchSecrets"]
        assert reads == f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter{setup.secrets_prefix}*"
        tags = {t["Key"]: t["Value"] for t in iam.list_role_tags(RoleName=setup.role)["Tags"]}
        assert tags[infra.SECRETS_PREFIX_TAG] == setup.secrets_prefix
    ssm = AWSInfra.client("ssm")
    theirs, ours = put_leftover(ssm, setup_b.secrets_prefix), put_leftover(ssm, setup_a.secrets_prefix)
    with AWSInfra(None).identity("teardown"):
        removed = infra.teardown(REGION, "pool-a", say=lambda _: None)
    assert f"SSM parameter {ours}" in removed and f"SSM parameter {theirs}" not in removed
    assert ssm.get_parameter(Name=theirs)["Parameter"]["Name"] == theirs


def test_a_secrets_path_that_holds_or_lies_in_another_pools_is_refused(region, monkeypatch):
    setup_a, _ = provision("pool-a")
    for nested in (f"{setup_a.secrets_prefix}b/", "/"):  # in A's path; holding it
        monkeypatch.setenv("PREFECT_REMOTE_AWS_SECRETS_PREFIX", nested)
        with pytest.raises(AWSError) as refused:
            provision("pool-b")
        message = str(refused.value)
        assert "pool 'pool-b'" in message and "pool 'pool-a'" in message and setup_a.secrets_prefix in message
        assert f"drop secrets_prefix from its block's options for its own, {infra.pool_secrets_prefix('pool-b')}" in message
    assert roles() == {setup_a.role}  # nothing made for B


def test_a_pool_provisioned_with_the_shared_secrets_path_is_named_until_provisioned_again(region):
    """A pool of an older release keeps its secrets under the shared /prefect-remote/, which reaches
    every pool's: provisioning another names it and the fix; provisioning it again gives it its own."""
    setup_a, _ = provision("pool-a")
    iam = AWSInfra.client("iam")  # as an older release left it: the shared path, in its tags and its policy
    iam.tag_role(RoleName=setup_a.role, Tags=[{"Key": infra.SECRETS_PREFIX_TAG, "Value": "/prefect-remote/"}])
    document = iam.get_role_policy(RoleName=setup_a.role, PolicyName=permissions.POLICY_NAME)["PolicyDocument"]
    shared = json.dumps(document).replace(setup_a.secrets_prefix, "/prefect-remote/")
    iam.put_role_policy(RoleName=setup_a.role, PolicyName=permissions.POLICY_NAME, PolicyDocument=shared)
    with pytest.raises(AWSError) as refused:
        provision("pool-b")
    message = str(refused.value)
    assert "pool 'pool-a'" in message and "shared secrets prefix /prefect-remote/" in message and "pool 'pool-b'" in message
    assert "prefect work-pool create 'pool-a' --type remote:push --provision-infra --overwrite" in message
    again, said = provision("pool-a")  # its block has no secrets_prefix: it gets its own
    assert (
        again.secrets_prefix == infra.pool_secrets_prefix("pool-a") and "updated its least-privilege policy prefect-remote-machines" in said
    )
    setup_b, _ = provision("pool-b")
    assert setup_b.secrets_prefix == infra.pool_secrets_prefix("pool-b")


# -- errors ---------------------------------------------------------------------------------------
def refuse(boto_client, operation: str, code: str = "AccessDenied") -> None:
    """Makes ``boto_client`` answer ``operation`` as AWS does when a permission is missing."""

    def hook(**_):
        raise ClientError({"Error": {"Code": code, "Message": "not authorized"}}, operation)

    boto_client.meta.events.register(f"before-call.*.{operation}", hook)


def test_errors_name_the_fix(region, aws_env, monkeypatch):
    for name, value in aws_env.keys("provisioning").items():
        monkeypatch.setenv(name, value)
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
