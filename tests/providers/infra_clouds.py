"""The sandbox clouds as the infra contract (``test_infra.py``) sees them: per cloud, what
``--provision-infra`` makes and says, what teardown removes and says, how to start a machine that
uses what was provisioned, and what the cloud's own API shows is left (boto3 against moto, the
google-cloud clients and the sandbox GCP's IAM fake)."""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from botocore.exceptions import ClientError

from prefect_remote.providers.aws import infra as aws_infra
from prefect_remote.providers.aws.provider import LAUNCH_TAG, AWSProvider
from prefect_remote.providers.gcp import grants as gcp_grants
from prefect_remote.providers.gcp import infra as gcp_infra
from prefect_remote.providers.gcp.provider import GCPProvider
from prefect_remote.providers.setup import pool_key

CLI = str(Path(sys.executable).parent / "prefect-remote")
LAUNCHER_IP = "203.0.113.7"  # a documentation address (TEST-NET-3): "me" without asking checkip


def cli(*args: str) -> subprocess.CompletedProcess:
    """`prefect-remote <args>` as a user runs it, with no terminal to answer a prompt."""
    return subprocess.run(
        [CLI, *args], capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"}, stdin=subprocess.DEVNULL, timeout=120
    )


class InfraCloud:
    """One cloud's provisioning and teardown, in a place of the sandbox nothing else provisions."""

    name: ClassVar[str]
    made: ClassVar[tuple[str, ...]]  # how the lines of what provisioning made begin
    changed: ClassVar[tuple[str, ...]]  # how the lines of a change begin
    made_count: ClassVar[int]  # how many things a first provisioning makes (and a second finds)
    refusal: ClassVar[type[Exception]]  # what teardown raises while machines run
    network_item: ClassVar[str]  # how teardown names a network rule it removed
    network_count: ClassVar[int]
    kept_bucket_said: ClassVar[str]
    teardown_pool: ClassVar[tuple[str, ...]]  # the CLI's arguments for a teardown that refuses while machines run

    def __init__(self, sandbox: Any) -> None:
        self.sandbox = sandbox

    @contextlib.contextmanager
    def identity(self, name: str) -> Iterator[None]:
        """Within the block, the cloud's clients act as the identity with exactly the docs' ``name``
        list (``provisioning``, ``teardown``); a cloud with one identity for all keeps it."""
        yield

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        """`prefect-remote <cloud> <args>` (a teardown) as the identity the docs list for teardown."""
        with self.identity("teardown"):
            return cli(self.name, *args)

    @property
    def bucket(self) -> str:
        raise NotImplementedError

    @property
    def nothing_said(self) -> str:
        """What a teardown says when nothing is left to remove."""
        raise NotImplementedError

    @property
    def bucket_item(self) -> str:
        """How teardown names the bucket it removed."""
        raise NotImplementedError

    def principal(self, pool: str) -> str:
        """What ``pool``'s machines act as, as provisioning names it: an IAM role, a service account."""
        raise NotImplementedError

    def provision(self, pool: str = "pool-a") -> tuple[Any, list[str]]:
        """Provisions for ``pool``: the setup, and what was said."""
        raise NotImplementedError

    def teardown(self, *, force: bool = False, delete_bucket: bool = False, say=lambda _: None) -> list[str]:
        raise NotImplementedError

    def bucket_exists(self) -> bool:
        raise NotImplementedError

    def removed(self) -> set[str]:
        """What a teardown removes besides the network rules and the bucket (at least)."""
        raise NotImplementedError

    def nothing_left(self) -> bool:
        """Whether the cloud holds nothing provisioning made but the bucket."""
        raise NotImplementedError

    def untouched(self, setup: Any) -> bool:
        """Whether what provisioning made for ``setup`` is all still there."""
        raise NotImplementedError

    def check_provisioned(self, setup: Any) -> None:
        """Asserts what provisioning made is exactly what it should be, as the cloud's API shows it."""
        raise NotImplementedError

    def block_data(self) -> dict[str, str]:
        """The provider block a pool provisioned here records (its fields that are set)."""
        raise NotImplementedError

    def check_pool_provider(self, provider: Any) -> None:
        """Asserts a provider made from the pool's block launches with what provisioning made."""
        raise NotImplementedError

    def start_machine(self, setup: Any) -> str:
        """A running machine that uses what provisioning made, as prefect-remote launches them: its id."""
        raise NotImplementedError

    def forced_said(self, machine_id: str, setup: Any) -> list[str]:
        """What `teardown --yes --force` says as it ends ``machine_id`` and removes the principal."""
        raise NotImplementedError

    def machine_ended(self, machine_id: str) -> bool:
        raise NotImplementedError


class AWSInfra(InfraCloud):
    """In a region no other test uses (EC2 state there is the infra tests' alone)."""

    name = "aws"
    REGION = "eu-west-3"
    ACCOUNT = "123456789012"  # moto's
    made = ("created",)
    changed = ("created", "set", "updated")
    made_count = 6  # bucket, log group, two security groups, role, instance profile
    refusal = aws_infra.TeardownRefused
    sandbox_aws: Any = None  # the session's SandboxAWS, once prepared
    network_item = "security group"
    network_count = 2
    kept_bucket_said = "kept S3 bucket"
    teardown_pool = ("--pool", "pool-a")

    @classmethod
    @contextlib.contextmanager
    def prepared(cls, sandbox: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
        """The region, left with nothing provisioned in it."""
        monkeypatch.setenv("AWS_DEFAULT_REGION", cls.REGION)
        monkeypatch.setenv("PREFECT_REMOTE_AWS_PUBLIC_IP", LAUNCHER_IP)
        monkeypatch.delenv("PREFECT_REMOTE_STORE", raising=False)  # the sandbox's: here provisioning chooses
        monkeypatch.delenv("PREFECT_REMOTE_AWS_INSTANCE_PROFILE", raising=False)
        cls.sandbox_aws = sandbox
        try:
            yield cls.REGION
        finally:
            with AWSInfra(sandbox).identity("teardown"):
                aws_infra.teardown(cls.REGION, force=True, delete_bucket=True, say=lambda _: None)

    @contextlib.contextmanager
    def identity(self, name: str) -> Iterator[None]:
        with pytest.MonkeyPatch.context() as keys:
            for variable, value in self.sandbox_aws.keys(name).items():
                keys.setenv(variable, value)
            yield

    @property
    def bucket(self) -> str:
        return f"prefect-remote-{self.ACCOUNT}-{self.REGION}"

    @property
    def nothing_said(self) -> str:
        return f"nothing to remove in {self.REGION}"

    @property
    def bucket_item(self) -> str:
        return f"S3 bucket {self.bucket}"

    def principal(self, pool: str) -> str:
        return f"IAM role {aws_infra.role_name(self.REGION, pool)}"

    @classmethod
    def client(cls, service: str) -> Any:
        """The sandbox's own client (a look at the account, allowed everything), in the infra tests' region."""
        return cls.sandbox_aws.client(service, region=cls.REGION)

    @property
    def role(self) -> str:
        return aws_infra.role_name(self.REGION, "pool-a")

    def provision(self, pool: str = "pool-a") -> tuple[Any, list[str]]:
        lines: list[str] = []
        with self.identity("provisioning"):
            return aws_infra.provision(AWSProvider(), pool, say=lines.append), lines

    def teardown(self, *, force: bool = False, delete_bucket: bool = False, say=lambda _: None) -> list[str]:
        with self.identity("teardown"):
            return aws_infra.teardown(self.REGION, force=force, delete_bucket=delete_bucket, say=say)

    def bucket_exists(self) -> bool:
        try:
            self.client("s3").head_bucket(Bucket=self.bucket)
        except ClientError:
            return False
        return True

    @classmethod
    def roles(cls) -> set[str]:
        return {r["RoleName"] for r in cls.client("iam").list_roles()["Roles"] if r["RoleName"].startswith(f"prefect-remote-{cls.REGION}-")}

    @classmethod
    def groups(cls) -> set[str]:
        filters = [{"Name": "tag-key", "Values": ["prefect-remote:managed"]}]
        return {g["GroupName"] for g in cls.client("ec2").describe_security_groups(Filters=filters)["SecurityGroups"]}

    @classmethod
    def log_groups(cls) -> list[dict]:
        return cls.client("logs").describe_log_groups(logGroupNamePrefix="/prefect-remote/machines")["logGroups"]

    def removed(self) -> set[str]:
        return {f"IAM role {self.role}", f"instance profile {self.role}", "log group /prefect-remote/machines"}

    def nothing_left(self) -> bool:
        return self.roles() == set() and self.groups() == set() and self.log_groups() == []

    def untouched(self, setup: Any) -> bool:
        return self.roles() == {setup.role} and len(self.groups()) == 2

    def check_provisioned(self, setup: Any) -> None:
        name, region, bucket = self.role, self.REGION, self.bucket
        assert setup.role == setup.instance_profile == name and setup.store == f"s3://{bucket}/store/{pool_key('pool-a')}"
        assert self.roles() == {name}
        iam = self.client("iam")
        document = iam.get_role_policy(RoleName=name, PolicyName=aws_infra.POLICY_NAME)["PolicyDocument"]
        assert document == aws_infra.machine_policy(
            account=self.ACCOUNT,
            region=region,
            role=name,
            bucket=bucket,
            prefix=f"store/{pool_key('pool-a')}",
            log_group="/prefect-remote/machines",
            secrets_prefix=f"/prefect-remote/{pool_key('pool-a')}/",
        )
        assert iam.list_role_policies(RoleName=name)["PolicyNames"] == [aws_infra.POLICY_NAME]
        assert iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"] == []
        trust = iam.get_role(RoleName=name)["Role"]["AssumeRolePolicyDocument"]
        assert trust["Statement"] == [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]
        assert [r["RoleName"] for r in iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]["Roles"]] == [name]

        s3 = self.client("s3")
        assert all(s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"].values())
        [rule] = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
        assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
        [log_group] = self.log_groups()
        assert log_group["retentionInDays"] == 30
        vpc = AWSProvider().vpc_id
        assert self.groups() == {f"prefect-remote-{vpc}", f"prefect-remote-{vpc}-dask-from-{LAUNCHER_IP}/32"}
        described = self.client("ec2").describe_security_groups(GroupIds=list(setup.security_groups))["SecurityGroups"]
        assert set(setup.security_groups) == {g["GroupId"] for g in described}

    def block_data(self) -> dict[str, str]:
        return {
            "provider": "aws",
            "region": self.REGION,
            "instance_profile": aws_infra.role_name(self.REGION, "aws-pool"),
            "log_group": "/prefect-remote/machines",
            "secrets_prefix": f"/prefect-remote/{pool_key('aws-pool')}/",
            "store": f"s3://{self.bucket}/store/{pool_key('aws-pool')}",
        }

    def check_pool_provider(self, provider: Any) -> None:
        assert provider.options.instance_profile == aws_infra.role_name(self.REGION, "aws-pool") and provider.region == self.REGION
        assert provider.options.secrets_prefix == f"/prefect-remote/{pool_key('aws-pool')}/"  # its own: no other pool's machines read it

    def start_machine(self, setup: Any) -> str:
        """An instance as prefect-remote launches them: its launch tag, the pool's instance profile
        (which EC2 refuses for a few seconds after provisioning made it: retried, as launches do), and
        listed by EC2 when this returns (teardown finds instances by a listing, which leaves out those
        launched a moment ago: docs/known-limits.md)."""
        from tests.providers.aws.conftest import start_instance

        return start_instance(self.client("ec2"), setup.instance_profile, {LAUNCH_TAG: "launch-0123456789ab"})

    def forced_said(self, machine_id: str, setup: Any) -> list[str]:
        return [f"terminated {machine_id}", f"removed IAM role {setup.role}"]

    def machine_ended(self, machine_id: str) -> bool:
        [reservation] = self.client("ec2").describe_instances(InstanceIds=[machine_id])["Reservations"]
        return reservation["Instances"][0]["State"]["Name"] == "terminated"


class GCPInfra(InfraCloud):
    """In the session's sandbox GCP project, its firewall rules of other tests' VMs removed first."""

    name = "gcp"
    PROJECT = "sandbox-project"
    EMAIL = gcp_grants.pool_account_email(PROJECT, "pool-a")  # provision()'s pool's own account
    MEMBER = f"serviceAccount:{EMAIL}"
    made = ("created", "granted", "undeleted")  # a custom role a teardown deleted (kept 7 days) is undeleted
    changed = ("created", "granted", "updated", "undeleted")
    # bucket, the pool's account, three custom roles, three firewall rules (VMs among themselves, the Dask ports
    # from this launcher and from the subnetwork, where a flow run that starts a cluster connects from); grants
    # on the project, bucket and account (to the machines, and to the identity that provisions, which launches too)
    made_count = 12
    refusal = gcp_infra.TeardownRefused
    network_item = "firewall rule"
    network_count = 3
    kept_bucket_said = "kept bucket"
    teardown_pool = ("--yes",)  # gcp pools share all but their accounts

    @classmethod
    @contextlib.contextmanager
    def prepared(cls, sandbox: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
        """The sandbox's project, left with nothing provisioned in it."""
        monkeypatch.delenv("PREFECT_REMOTE_STORE", raising=False)  # the sandbox's: here provisioning chooses
        monkeypatch.delenv("PREFECT_REMOTE_GCP_SERVICE_ACCOUNT", raising=False)  # the sandbox's own account
        monkeypatch.setenv("PREFECT_REMOTE_GCP_PUBLIC_IP", LAUNCHER_IP)
        # Other tests' VMs leave the rules their launches made (as a project in use has them): start without.
        gcp_infra.teardown(GCPProvider(), force=True, delete_bucket=True, say=lambda _: None)
        try:
            yield sandbox
        finally:
            for service in list(sandbox.api.disabled):
                sandbox.api.enable_api(service)
            gcp_infra.teardown(GCPProvider(), force=True, delete_bucket=True, say=lambda _: None)

    @property
    def bucket(self) -> str:
        return "prefect-remote-sandbox-project-us-central1"

    @property
    def nothing_said(self) -> str:
        return f"nothing to remove in project {self.PROJECT}"

    @property
    def bucket_item(self) -> str:
        return f"bucket gs://{self.bucket}"

    def principal(self, pool: str) -> str:
        return f"service account {gcp_grants.pool_account_email(self.PROJECT, pool)}"  # the pool's own

    def provision(self, pool: str = "pool-a", store: str | None = None, **options: Any) -> tuple[Any, list[str]]:
        lines: list[str] = []
        return gcp_infra.provision(GCPProvider(**options), pool, store, say=lines.append), lines

    def teardown(self, *, force: bool = False, delete_bucket: bool = False, say=lambda _: None) -> list[str]:
        return gcp_infra.teardown(GCPProvider(), force=force, delete_bucket=delete_bucket, say=say)

    @staticmethod
    def storage() -> Any:
        from google.cloud import storage

        return storage.Client(project="sandbox-project")

    def bucket_exists(self, name: str | None = None) -> bool:
        return self.storage().lookup_bucket(name or self.bucket) is not None

    def firewalls(self) -> set[str]:
        from google.cloud import compute_v1

        client = compute_v1.FirewallsClient(transport="rest", client_options={"api_endpoint": self.sandbox.url})
        return {rule.name for rule in client.list(project=self.sandbox.project) if rule.name.startswith(gcp_infra.FIREWALL_PREFIXES)}

    def removed(self) -> set[str]:
        email = self.EMAIL
        return {
            f"the project grants of {email}",
            f"the grant of {email} on bucket {self.bucket}",
            *(f"custom role projects/sandbox-project/roles/{role_id}" for role_id in gcp_infra.MACHINE_CUSTOM_ROLES),
            f"service account {email}",
        }

    def nothing_left(self) -> bool:
        iam = self.sandbox.iam
        return (
            self.firewalls() == set()
            and self.EMAIL not in iam.accounts
            and self.EMAIL not in self.sandbox.service_accounts
            and not any(email.startswith(gcp_grants.POOL_ACCOUNT_PREFIX) for email in iam.accounts)  # no pool's account left
            and all(iam.roles[role_id]["deleted"] for role_id in gcp_infra.MACHINE_CUSTOM_ROLES)  # Google keeps a deleted role 7 days
            and iam.grants_of(self.MEMBER) == []
        )

    def untouched(self, setup: Any) -> bool:
        return self.EMAIL in self.sandbox.iam.accounts and len(self.firewalls()) == 3

    def check_provisioned(self, setup: Any) -> None:
        project, email, member, bucket_name = self.sandbox, self.EMAIL, self.MEMBER, self.bucket
        assert setup.block_fields() == {
            "project": "sandbox-project",
            "region": "us-central1",
            "service_account": email,
            "store": f"gs://{bucket_name}/store/{pool_key('pool-a')}",
        }
        assert set(setup.firewalls) == self.firewalls() and len(setup.firewalls) == 3
        from prefect_remote.providers.gcp.records import MachineRecords
        from prefect_remote.software.stores import open_store

        roles = gcp_infra.machine_roles(
            project="sandbox-project",
            project_number=project.project_number,
            bucket=bucket_name,
            service_account=email,
            pool=MachineRecords(open_store(setup.store)).label,  # its secrets and VMs only
            folder=f"store/{pool_key('pool-a')}/",  # its store folder only
        )
        assert project.iam.grants_of(member) == roles["project"]  # exactly these, once each
        for role_id, permissions in gcp_infra.MACHINE_CUSTOM_ROLES.items():
            role = project.iam.roles[role_id]
            assert role["includedPermissions"] == list(permissions) and not role.get("deleted")
        bucket = self.storage().get_bucket(bucket_name)
        policy = bucket.get_iam_policy(requested_policy_version=3)
        held = [
            {"role": b["role"], "condition": {k: b["condition"][k] for k in ("title", "expression")}}
            for b in policy.bindings
            if member in b["members"]
        ]
        assert sorted(held, key=str) == sorted(roles[f"bucket {bucket_name}"], key=str)  # the pool's folder only
        account_policy = project.iam.account_policies[email]
        assert [{"role": b["role"]} for b in account_policy["bindings"] if member in b["members"]] == roles[f"service account {email}"]
        launcher = f"serviceAccount:{project.launcher_account}"  # who provisioned: it may launch machines as the account
        assert [{"role": b["role"]} for b in account_policy["bindings"] if launcher in b["members"]] == gcp_infra.LAUNCHER_ACCOUNT_GRANTS
        assert email in project.service_accounts  # Cloud Run and Compute Engine accept it now
        assert bucket.labels == {gcp_infra.MANAGED_LABEL: "true", gcp_infra.GRANTED_LABEL: "granted"}
        [rule] = [dict(r) for r in bucket.lifecycle_rules]
        assert rule == {
            "action": {"type": "Delete"},
            "condition": {"daysSinceCustomTime": 7, "matchesPrefix": [f"store/{pool_key('pool-a')}/machines/"]},
        }

    def block_data(self) -> dict[str, str]:
        return {
            "provider": "gcp",
            "project": "sandbox-project",
            "region": "us-central1",
            "service_account": gcp_grants.pool_account_email(self.PROJECT, "gcp-pool"),
            "store": f"gs://{self.bucket}/store/{pool_key('gcp-pool')}",
        }

    def check_pool_provider(self, provider: Any) -> None:
        assert provider.options.service_account == gcp_grants.pool_account_email(self.PROJECT, "gcp-pool")
        assert provider.options.project == "sandbox-project"

    def start_machine(self, setup: Any) -> str:
        """A VM as prefect-remote starts them, running as the provisioned service account, labelled
        with the provisioned store's records (as a launch with that store labels its machines)."""
        from unittest import mock

        from prefect_remote.providers.base import Launch
        from prefect_remote.spec import MachineSpec

        compute = GCPProvider(service="compute", service_account=setup.service_account).service("compute")
        with mock.patch.dict(os.environ, {"PREFECT_REMOTE_STORE": setup.store}):
            compute.provider.records.label  # noqa: B018  (read once, with the pool's store)
        spec = MachineSpec(cpu=2)
        launch = Launch(
            f"launch-{secrets.token_hex(6)}",
            "#!/bin/sh\nsleep 120\n",
            spec,
            compute.choose_instance_type(spec),
            1,
            {},
            "test-host:42",
            False,
        )
        with mock.patch.dict(os.environ, {"PREFECT_REMOTE_STORE": setup.store}):
            [machine] = compute.start(launch, compute.new_ids(1))
        return machine.id

    def forced_said(self, machine_id: str, setup: Any) -> list[str]:
        return [f"ended {machine_id}", f"removed service account {self.EMAIL}"]

    def machine_ended(self, machine_id: str) -> bool:
        return GCPProvider(service="compute").service("compute").machines([machine_id]) == []


INFRA_CLOUDS: dict[str, type[InfraCloud]] = {"aws": AWSInfra, "gcp": GCPInfra}
