"""A hostile tenant on the sandbox AWS, IAM enforced: code on a machine of pool A, calling with that
machine's own instance-role session (what IMDS serves it, so ``ec2:SourceInstanceARN`` names it),
tries to reach pool B's launch secrets and machines, and another flow run's or cluster's machines of
pool A. Each attempt is refused as AWS refuses it, and the victim is unchanged (its secret) or keeps
running (its machine); what the machine launched itself, it may still tag and end. The pools' roles
carry :func:`machine_policy` exactly as provisioning puts it, each with its own secrets path
(:func:`pool_secrets_prefix`).
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
from prefect_remote.providers.aws.infra import pool_secrets_prefix
from prefect_remote.sandbox.aws import ACCOUNT_ID, STORE_BUCKET
from tests.providers.aws.conftest import start_instance

EC2 = "arn:aws:ec2:{region}:" + ACCOUNT_ID + ":instance/{id}"

NO_RETRIES = Config(retries={"max_attempts": 1, "mode": "standard"})
LAUNCH_TAG, PARENT_TAG, CONTROLLER_TAG = "prefect-remote:launch", "prefect-remote:parent", "prefect-remote:controller"


@dataclass
class Pool:
    """One pool as provisioning leaves it: its role and profile (same name), its secrets path, and
    machines that run with its profile."""

    sandbox: Any
    name: str
    role: str
    prefix: str

    def launch(self, ec2: Any = None, **tags: str) -> str:
        """An instance of this pool as prefect-remote launches one (its launch tag, the pool's profile),
        started by ``ec2`` (default: the account's administrator, as a worker launches a flow run's
        machine) with ``tags`` besides; EC2 accepts a fresh profile after a few seconds."""
        tags = {LAUNCH_TAG: f"launch-{secrets.token_hex(6)}", **tags}
        admin = self.sandbox.client("ec2")
        return start_instance(ec2 or admin, self.role, tags, watcher=admin)

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
    """The error code AWS answers ``call(**params)`` with (it must refuse, at once: no retry)."""
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


def state(aws_env, instance_id: str) -> str:
    return aws_env.client("ec2").describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]["State"]["Name"]


def test_a_machine_acts_only_on_itself_and_what_it_launched_never_on_another_pools_or_runs_machines(aws_env, pools):
    a, b = pools
    arn = lambda instance_id: EC2.format(region=aws_env.region, id=instance_id)  # noqa: E731
    run_1, run_2, theirs = a.launch(), a.launch(), b.launch()  # two flow runs' machines of pool A, one of pool B
    ec2 = a.machine(run_1, "ec2")
    # It launches with its pool's profile only instances that name it as their parent.
    child = a.launch(ec2, **{PARENT_TAG: arn(run_1)})
    assert refusal(lambda: a.launch(ec2)) == "UnauthorizedOperation"  # no parent named
    assert refusal(lambda: a.launch(ec2, **{PARENT_TAG: arn(run_2)})) == "UnauthorizedOperation"  # another's
    assert refusal(lambda: b.launch(ec2, **{PARENT_TAG: arn(run_1)})) == "UnauthorizedOperation"  # B's profile
    other_cluster = a.launch(a.machine(run_2, "ec2"), **{PARENT_TAG: arn(run_2)})  # run 2's cluster
    lease = [{"Key": "prefect-remote:lease", "Value": "1"}]
    for victim in (theirs, run_2, other_cluster):
        assert refusal(ec2.create_tags, Resources=[victim], Tags=lease) == "UnauthorizedOperation", victim
        assert refusal(ec2.create_tags, Resources=[victim], Tags=[{"Key": PARENT_TAG, "Value": arn(run_1)}]) == "UnauthorizedOperation"
        assert refusal(ec2.terminate_instances, InstanceIds=[victim]) == "UnauthorizedOperation", victim
    # Nor may it take over its own child's tags (its parent) or name another as its child's keeper.
    assert refusal(ec2.create_tags, Resources=[child], Tags=[{"Key": PARENT_TAG, "Value": arn(run_2)}]) == "UnauthorizedOperation"
    assert refusal(ec2.create_tags, Resources=[child], Tags=[{"Key": CONTROLLER_TAG, "Value": arn(run_2)}]) == "UnauthorizedOperation"
    ec2.create_tags(Resources=[child, run_1], Tags=lease)
    ec2.terminate_instances(InstanceIds=[child])
    assert [state(aws_env, victim) for victim in (theirs, run_2, other_cluster)] == ["running"] * 3


def test_a_clusters_scheduler_keeps_the_first_workers_its_creator_launched_and_no_other_clusters(aws_env, pools):
    a, _ = pools
    arn = lambda instance_id: EC2.format(region=aws_env.region, id=instance_id)  # noqa: E731
    run = a.launch()
    creator = a.machine(run, "ec2")
    scheduler = a.launch(creator, **{PARENT_TAG: arn(run)})
    first = a.launch(creator, **{PARENT_TAG: arn(run), CONTROLLER_TAG: arn(scheduler)})
    other_scheduler = a.launch(creator, **{PARENT_TAG: arn(run)})  # a second cluster of the same flow run
    its_worker = a.launch(creator, **{PARENT_TAG: arn(run), CONTROLLER_TAG: arn(other_scheduler)})
    ec2 = a.machine(scheduler, "ec2")
    lease = [{"Key": "prefect-remote:lease", "Value": "1"}]
    ec2.create_tags(Resources=[first], Tags=lease)
    own = a.launch(ec2, **{PARENT_TAG: arn(scheduler)})
    assert refusal(ec2.create_tags, Resources=[its_worker], Tags=lease) == "UnauthorizedOperation"
    assert refusal(ec2.terminate_instances, InstanceIds=[its_worker]) == "UnauthorizedOperation"
    assert refusal(ec2.terminate_instances, InstanceIds=[run]) == "UnauthorizedOperation"  # its creator's machine
    ec2.terminate_instances(InstanceIds=[first, own])
    assert state(aws_env, its_worker) == state(aws_env, run) == "running"


def test_the_provider_on_a_machine_names_it_the_parent_of_what_it_launches(aws_env, pools, monkeypatch):
    """What the provider does on a flow run's machine (its agent sets PREFECT_REMOTE_MACHINE_ID; boto3
    finds the instance's session): its launch names the machine as parent, and the cluster's scheduler
    as controller when asked; the machine then ends what it launched."""
    from prefect_remote.on_machine import MACHINE_ID_ENV
    from prefect_remote.providers.aws.provider import AWSProvider
    from prefect_remote.providers.base import BootPayload
    from prefect_remote.spec import MachineSpec

    a, _ = pools
    arn = lambda instance_id: EC2.format(region=aws_env.region, id=instance_id)  # noqa: E731
    run, scheduler = a.launch(), a.launch()
    spec = MachineSpec(cpu=1)
    agent = AWSProvider().agent_source(spec)  # in the store already, as a cluster's plan names it (machines only read it)
    for name, value in aws_env.keys("machine", instance_id=run).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(MACHINE_ID_ENV, run)
    group = aws_env.client("ec2").describe_security_groups(GroupNames=["default"])["SecurityGroups"][0]["GroupId"]
    provider = AWSProvider(instance_profile=a.role, secrets_prefix=a.prefix, security_group_ids=group)
    [machine] = provider.launch(spec, BootPayload(["sleep", "600"], secrets={"TOKEN": "t"}), agent=agent, controller=scheduler)
    described = aws_env.client("ec2").describe_instances(InstanceIds=[machine.id])["Reservations"][0]["Instances"][0]
    tags = {tag["Key"]: tag["Value"] for tag in described["Tags"]}
    assert tags[PARENT_TAG] == arn(run) and tags[CONTROLLER_TAG] == arn(scheduler)
    provider.terminate([machine.id], reason="test over")
    assert state(aws_env, machine.id) in ("shutting-down", "terminated") and state(aws_env, scheduler) == "running"
