"""`prefect-remote doctor aws` on the strict sandbox AWS (IAM enforced), as a user runs it: healthy,
then with each fault injected, each giving exit 1 and a row that names the fix."""

from __future__ import annotations

import os

import pytest

from prefect_remote.providers.aws import permissions
from prefect_remote.sandbox.aws import ACCOUNT_ID
from tests.workers.conftest import doctor_report, run_cli


def doctor(*args: str, **env: str | None) -> tuple[int, dict[str, dict]]:
    return doctor_report("aws", *args, **env)


def failed(rows: dict[str, dict]) -> list[str]:
    return [check for check, row in rows.items() if not row["ok"]]


def test_healthy_account_passes_in_a_table_that_fits_80_columns(aws_env):
    result = run_cli({**os.environ, "COLUMNS": "80"}, "prefect-remote", "doctor", "aws", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, result.stdout
    for check in ("credentials", "launcher permissions", "machine permissions", "vCPU quota", "network", "store bucket"):
        assert any(line.startswith(check) and " ok " in line for line in lines), result.stdout
    assert "no --pool: a 4-CPU machine" in result.stdout.replace("\n", " ").replace("  ", " ") or "4-CPU" in result.stdout
    assert lines[-1] == "all checks passed"


def test_no_credentials_fail_and_say_how_to_set_them(aws_env, monkeypatch):
    code, rows = doctor(AWS_ACCESS_KEY_ID="AKIAIOSFODNN7NOBODY0", AWS_SECRET_ACCESS_KEY="nobody")
    assert code == 1 and failed(rows) == ["credentials"] and list(rows) == ["credentials"]
    assert "aws configure" in rows["credentials"]["fix"]


@pytest.mark.parametrize("removed", ["ec2:RunInstances", "iam:SimulatePrincipalPolicy"])
def test_a_missing_launcher_permission_is_named(aws_env, removed):
    """Doctor's own permission too: without it, doctor says it needs it."""
    from prefect_remote.sandbox.aws_identities import STORE_BUCKETS, make_user

    policy = permissions.launcher_policy(account=ACCOUNT_ID, bucket=STORE_BUCKETS, prefix="")
    policy["Statement"][0]["Action"].remove(removed)
    keys = make_user("doctor-launcher", {"launcher": policy}, account=ACCOUNT_ID)
    code, rows = doctor(**keys.environ())
    simulated = ["launcher permissions", "machine permissions"] if removed == "iam:SimulatePrincipalPolicy" else ["launcher permissions"]
    assert code == 1 and failed(rows) == simulated
    assert removed in rows["launcher permissions"]["fix"]
    if removed == "ec2:RunInstances":
        assert f"grant {removed} on *" in rows["launcher permissions"]["fix"]
        assert "docs/providers/aws.md#permissions" in rows["launcher permissions"]["fix"]


def test_a_machine_role_missing_a_permission_is_named(aws_env, machine_profile_without):
    weak_machine_profile = machine_profile_without("ReadLaunchSecrets")
    code, rows = doctor(PREFECT_REMOTE_AWS_INSTANCE_PROFILE=weak_machine_profile)
    assert code == 1 and failed(rows) == ["machine permissions"]
    row = rows["machine permissions"]
    assert "ssm:GetParameter on arn:aws:ssm:us-east-1:123456789012:parameter/prefect-remote/*" in row["detail"]
    assert f"role {weak_machine_profile}" in row["fix"] and "--provision-infra" in row["fix"]


def test_a_pool_provisioned_with_the_shared_secrets_path_is_named_with_the_fix(aws_env):
    """A provisioned pool's profile with the shared /prefect-remote/ (an older release's provisioning,
    whose block records no secrets_prefix): its machines reach every pool's secrets."""
    import uuid

    name = f"prefect-remote-{aws_env.region}-legacy-{uuid.uuid4().hex[:6]}"
    aws_env.make_instance_profile(name)
    iam = aws_env.client("iam")
    try:
        code, rows = doctor(PREFECT_REMOTE_AWS_INSTANCE_PROFILE=name)
        assert code == 1 and failed(rows) == ["machine permissions"]
        row = rows["machine permissions"]
        assert "shared secrets prefix /prefect-remote/" in row["detail"] and "every other pool's launch secrets" in row["detail"]
        assert "--provision-infra --overwrite" in row["fix"]
        assert (
            doctor(PREFECT_REMOTE_AWS_INSTANCE_PROFILE=name, PREFECT_REMOTE_AWS_SECRETS_PREFIX="/prefect-remote/legacy/")[1][
                "machine permissions"
            ]["detail"]
            != row["detail"]
        )  # with a path of its own, the role's policy is what is checked
    finally:
        iam.remove_role_from_instance_profile(InstanceProfileName=name, RoleName=name)
        iam.delete_instance_profile(InstanceProfileName=name)
        iam.delete_role(RoleName=name)


def test_a_missing_instance_profile_is_named(aws_env):
    code, rows = doctor(PREFECT_REMOTE_AWS_INSTANCE_PROFILE="prefect-remote-nowhere")
    assert code == 1 and "machine permissions" in failed(rows)
    assert "no instance profile 'prefect-remote-nowhere'" in rows["machine permissions"]["detail"]


def test_a_quota_below_the_machine_is_named_with_the_increase_command(aws_env):
    aws_env.set_quota("L-1216C47A", 2)
    try:
        code, rows = doctor()
    finally:
        aws_env.set_quota("L-1216C47A", None)
    assert code == 1 and failed(rows) == ["vCPU quota"]
    assert "2 vCPUs, 4 needed" in rows["vCPU quota"]["detail"]
    assert "request-service-quota-increase --service-code ec2 --quota-code L-1216C47A --desired-value 4" in rows["vCPU quota"]["fix"]


def test_a_subnet_without_public_ips_or_nat_is_named(aws_env):
    ec2 = aws_env.client("ec2")
    vpc = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    subnets = [s["SubnetId"] for s in ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Subnets"]]

    def map_public_ips(value: bool) -> None:
        with aws_env.enforcing(False):  # a change the sandbox's IAM table has no entry for: made as the sandbox itself
            for subnet in subnets:
                ec2.modify_subnet_attribute(SubnetId=subnet, MapPublicIpOnLaunch={"Value": value})

    map_public_ips(False)
    try:
        code, rows = doctor()
    finally:
        map_public_ips(True)
    assert code == 1 and failed(rows) == ["network"]
    assert "no route 0.0.0.0/0 to a NAT gateway" in rows["network"]["detail"]
    assert "modify-subnet-attribute --map-public-ip-on-launch" in rows["network"]["fix"]


def test_a_missing_bucket_is_named(aws_env):
    code, rows = doctor(PREFECT_REMOTE_STORE="s3://prefect-remote-doctor-missing/store")
    # The machines' role reads the sandbox's own store only: rightly, it may not read this one either.
    assert code == 1 and failed(rows) == ["machine permissions", "store bucket"]
    assert "s3:GetObject on arn:aws:s3:::prefect-remote-doctor-missing/store/*" in rows["machine permissions"]["detail"]
    assert "aws s3 mb s3://prefect-remote-doctor-missing" in rows["store bucket"]["fix"]


def test_principal_of_an_assumed_role_session_is_its_role():
    from prefect_remote.providers.aws.doctor import principal_arn

    assert principal_arn("arn:aws:sts::1:assumed-role/r/s") == "arn:aws:iam::1:role/r"
