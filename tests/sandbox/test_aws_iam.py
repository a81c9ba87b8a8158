"""The sandbox AWS's IAM: the policy evaluator (pure logic), what each request asks IAM (the
operation table, read against a fixed account), and the enforcing server through the real boto3
(users allowed and refused per service in AWS's error shapes, an instance's role session through
IMDS checked against machine_policy(), expired sessions, SimulatePrincipalPolicy).

What the sandbox cannot tell from AWS itself, the tests take from AWS's documentation: the Service
Authorization Reference (resources and condition keys per action), "Policy evaluation logic" and
"Condition operators" of the IAM User Guide, and the error codes of each service's API reference.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from prefect_remote.providers.aws.infra import machine_policy
from prefect_remote.sandbox import aws_identities
from prefect_remote.sandbox.aws import ACCOUNT_ID, SandboxAWS
from prefect_remote.sandbox.aws_identities import MachineCredentials, make_user
from prefect_remote.sandbox.iam_policy import Check, PolicyError, evaluate
from prefect_remote.sandbox.iam_requests import Account, Request, UnknownOperation, checks, operations

REGION = "us-east-1"
DOCS_PAGE = Path(__file__).parents[2] / "docs" / "providers" / "aws.md"
NO_RETRIES = Config(retries={"max_attempts": 1, "mode": "standard"})
EC2 = f"arn:aws:ec2:{REGION}:{ACCOUNT_ID}"
PROFILE = f"arn:aws:iam::{ACCOUNT_ID}:instance-profile/prefect-remote-{REGION}-pool"
LAUNCH_TAG = "prefect-remote:launch"
PARENT_TAG, CONTROLLER_TAG = "prefect-remote:parent", "prefect-remote:controller"


def policy(*statements: dict) -> dict:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def allow(action, resource="*", **extra) -> dict:
    return {"Effect": "Allow", "Action": action, "Resource": resource, **extra}


def deny(action, resource="*", **extra) -> dict:
    return {"Effect": "Deny", "Action": action, "Resource": resource, **extra}


def decide(document: dict, action: str, resource: str = "*", **context) -> str:
    return evaluate([("p", document)], Check(action, resource, context)).decision


# -- the evaluator ---------------------------------------------------------------------------------
def test_allow_implicit_deny_and_explicit_deny_wins():
    assert decide(policy(allow("ec2:DescribeInstances")), "ec2:DescribeInstances") == "allowed"
    assert decide(policy(allow("ec2:DescribeInstances")), "ec2:DescribeVpcs") == "implicitDeny"
    both = policy(allow("ec2:*"), deny("ec2:DescribeVpcs"))
    assert decide(both, "ec2:DescribeVpcs") == "explicitDeny"
    assert decide(both, "ec2:DescribeSubnets") == "allowed"
    # A Deny in another policy wins as well.
    found = evaluate([("a", policy(allow("*"))), ("b", policy(deny("s3:*")))], Check("s3:GetObject", "arn:aws:s3:::b/k"))
    assert found.decision == "explicitDeny" and [m.policy for m in found.matched] == ["b"]


def test_actions_match_without_case_with_wildcards():
    assert decide(policy(allow("ec2:describe*")), "ec2:DescribeInstances") == "allowed"
    assert decide(policy(allow("EC2:DescribeInstances")), "ec2:describeinstances") == "allowed"
    assert decide(policy(allow("s3:Get?bject")), "s3:GetObject") == "allowed"
    assert decide(policy(allow("s3:Get?bject")), "s3:GetObjectTagging") == "implicitDeny"
    assert decide(policy(allow("ec2.Describe*")), "ec2:DescribeInstances") == "implicitDeny"  # "." is no wildcard


def test_not_action_and_not_resource():
    everything_but_iam = policy({"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"})
    assert decide(everything_but_iam, "ec2:RunInstances") == "allowed"
    assert decide(everything_but_iam, "iam:CreateRole") == "implicitDeny"
    # A Deny with NotResource denies everything outside it (moto reads it as an Allow).
    guarded = policy(allow("s3:*"), {"Effect": "Deny", "Action": "s3:*", "NotResource": "arn:aws:s3:::mine/*"})
    assert decide(guarded, "s3:GetObject", "arn:aws:s3:::mine/key") == "allowed"
    assert decide(guarded, "s3:GetObject", "arn:aws:s3:::theirs/key") == "explicitDeny"
    with pytest.raises(PolicyError, match="both Action and NotAction"):
        decide(policy({"Effect": "Allow", "Action": "a:b", "NotAction": "a:c", "Resource": "*"}), "a:b")


def test_resources_match_arns_part_by_part():
    secrets = policy(allow("ssm:GetParameter", f"arn:aws:ssm:{REGION}:{ACCOUNT_ID}:parameter/prefect-remote/*"))
    assert decide(secrets, "ssm:GetParameter", f"arn:aws:ssm:{REGION}:{ACCOUNT_ID}:parameter/prefect-remote/launch-1") == "allowed"
    assert decide(secrets, "ssm:GetParameter", f"arn:aws:ssm:{REGION}:{ACCOUNT_ID}:parameter/other/x") == "implicitDeny"
    assert decide(secrets, "ssm:GetParameter", f"arn:aws:ssm:eu-west-1:{ACCOUNT_ID}:parameter/prefect-remote/x") == "implicitDeny"
    # A statement naming resources does not cover an action on no particular resource.
    assert decide(secrets, "ssm:GetParameter", "*") == "implicitDeny"
    images = policy(allow("ec2:RunInstances", f"arn:aws:ec2:{REGION}::image/*"))
    assert decide(images, "ec2:RunInstances", f"arn:aws:ec2:{REGION}::image/ami-0abc") == "allowed"


def test_string_and_arn_operators():
    tagged = policy(allow("ec2:TerminateInstances", f"{EC2}:instance/*", Condition={"StringEquals": {"ec2:ResourceTag/team": "data"}}))
    assert decide(tagged, "ec2:TerminateInstances", f"{EC2}:instance/i-1", **{"ec2:ResourceTag/team": "data"}) == "allowed"
    assert decide(tagged, "ec2:TerminateInstances", f"{EC2}:instance/i-1", **{"ec2:ResourceTag/team": "Data"}) == "implicitDeny"
    assert decide(tagged, "ec2:TerminateInstances", f"{EC2}:instance/i-1") == "implicitDeny"  # a missing key fails
    # Keys know no case; several values are alternatives.
    either = policy(allow("x:Y", Condition={"StringEquals": {"EC2:RESOURCETAG/team": ["data", "ml"]}}))
    assert decide(either, "x:Y", **{"ec2:ResourceTag/team": "ml"}) == "allowed"
    ignoring = policy(allow("x:Y", Condition={"StringEqualsIgnoreCase": {"k": "DATA"}}))
    assert decide(ignoring, "x:Y", k="data") == "allowed"
    prefixes = policy(allow("s3:ListBucket", "arn:aws:s3:::b", Condition={"StringLike": {"s3:prefix": ["store", "store/*"]}}))
    assert decide(prefixes, "s3:ListBucket", "arn:aws:s3:::b", **{"s3:prefix": "store/blobs/"}) == "allowed"
    assert decide(prefixes, "s3:ListBucket", "arn:aws:s3:::b", **{"s3:prefix": "elsewhere/"}) == "implicitDeny"
    assert decide(prefixes, "s3:ListBucket", "arn:aws:s3:::b") == "implicitDeny"
    profile = policy(allow("ec2:RunInstances", Condition={"ArnEquals": {"ec2:InstanceProfile": PROFILE}}))
    assert decide(profile, "ec2:RunInstances", **{"ec2:InstanceProfile": PROFILE}) == "allowed"
    assert decide(profile, "ec2:RunInstances", **{"ec2:InstanceProfile": PROFILE + "-other"}) == "implicitDeny"
    like = policy(allow("x:Y", Condition={"ArnLike": {"aws:PrincipalArn": f"arn:aws:iam::{ACCOUNT_ID}:role/prefect-*"}}))
    assert decide(like, "x:Y", **{"aws:PrincipalArn": f"arn:aws:iam::{ACCOUNT_ID}:role/prefect-remote-x"}) == "allowed"
    assert decide(like, "x:Y", **{"aws:PrincipalArn": f"arn:aws:iam::{ACCOUNT_ID}:user/prefect-x"}) == "implicitDeny"


def test_negated_operators_hold_when_the_key_is_missing():
    not_prod = policy(allow("x:Y", Condition={"StringNotEquals": {"aws:ResourceTag/env": "prod"}}))
    assert decide(not_prod, "x:Y", **{"aws:ResourceTag/env": "dev"}) == "allowed"
    assert decide(not_prod, "x:Y", **{"aws:ResourceTag/env": "prod"}) == "implicitDeny"
    assert decide(not_prod, "x:Y") == "allowed"
    not_like = policy(deny("x:Y", Condition={"ArnNotLike": {"aws:PrincipalArn": "arn:aws:iam::*:role/admin"}}), allow("x:Y"))
    assert decide(not_like, "x:Y", **{"aws:PrincipalArn": "arn:aws:iam::1:role/admin"}) == "allowed"
    assert decide(not_like, "x:Y", **{"aws:PrincipalArn": "arn:aws:iam::1:role/other"}) == "explicitDeny"


def test_null_and_if_exists():
    launched = policy(allow("ec2:TerminateInstances", Condition={"Null": {f"ec2:ResourceTag/{LAUNCH_TAG}": "false"}}))
    assert decide(launched, "ec2:TerminateInstances", **{f"ec2:ResourceTag/{LAUNCH_TAG}": "launch-1"}) == "allowed"
    assert decide(launched, "ec2:TerminateInstances") == "implicitDeny"
    untagged = policy(allow("x:Y", Condition={"Null": {"aws:RequestTag/owner": "true"}}))
    assert decide(untagged, "x:Y") == "allowed"
    assert decide(untagged, "x:Y", **{"aws:RequestTag/owner": "me"}) == "implicitDeny"
    if_exists = policy(allow("x:Y", Condition={"StringEqualsIfExists": {"ec2:InstanceType": "t3.micro"}}))
    assert decide(if_exists, "x:Y") == "allowed"
    assert decide(if_exists, "x:Y", **{"ec2:InstanceType": "t3.micro"}) == "allowed"
    assert decide(if_exists, "x:Y", **{"ec2:InstanceType": "p5.48xlarge"}) == "implicitDeny"


def test_set_operators():
    only = policy(
        allow("ec2:CreateTags", Condition={"ForAllValues:StringEquals": {"aws:TagKeys": ["prefect-remote:lease", "prefect-remote:reason"]}})
    )
    assert decide(only, "ec2:CreateTags", **{"aws:TagKeys": ["prefect-remote:lease"]}) == "allowed"
    assert decide(only, "ec2:CreateTags", **{"aws:TagKeys": ["prefect-remote:lease", "Name"]}) == "implicitDeny"
    assert decide(only, "ec2:CreateTags") == "allowed"  # vacuously true, as IAM documents
    any_of = policy(allow("x:Y", Condition={"ForAnyValue:StringLike": {"aws:TagKeys": "team*"}}))
    assert decide(any_of, "x:Y", **{"aws:TagKeys": ["Name", "team-a"]}) == "allowed"
    assert decide(any_of, "x:Y", **{"aws:TagKeys": ["Name"]}) == "implicitDeny"
    assert decide(any_of, "x:Y") == "implicitDeny"


def test_other_operators_variables_and_unknown_operators():
    assert (
        decide(policy(allow("x:Y", Condition={"Bool": {"aws:SecureTransport": "true"}})), "x:Y", **{"aws:SecureTransport": "true"})
        == "allowed"
    )
    assert (
        decide(policy(allow("x:Y", Condition={"Bool": {"aws:SecureTransport": True}})), "x:Y", **{"aws:SecureTransport": "false"})
        == "implicitDeny"
    )
    small = policy(allow("x:Y", Condition={"NumericLessThanEquals": {"s3:max-keys": "10"}}))
    assert decide(small, "x:Y", **{"s3:max-keys": "10"}) == "allowed" and decide(small, "x:Y", **{"s3:max-keys": "11"}) == "implicitDeny"
    own = policy(allow("iam:GetUser", "arn:aws:iam::*:user/${aws:username}"))
    assert decide(own, "iam:GetUser", f"arn:aws:iam::{ACCOUNT_ID}:user/ada", **{"aws:username": "ada"}) == "allowed"
    assert decide(own, "iam:GetUser", f"arn:aws:iam::{ACCOUNT_ID}:user/bob", **{"aws:username": "ada"}) == "implicitDeny"
    assert decide(own, "iam:GetUser", f"arn:aws:iam::{ACCOUNT_ID}:user/ada") == "implicitDeny"  # no such key: no match
    with pytest.raises(PolicyError, match="StringSoundsLike"):
        decide(policy(allow("x:Y", Condition={"StringSoundsLike": {"k": "v"}})), "x:Y", k="v")
    with pytest.raises(PolicyError, match="Effect"):
        decide(policy({"Effect": "Maybe", "Action": "x:Y", "Resource": "*"}), "x:Y")


def test_what_a_variable_brings_in_is_literal_wildcards_included():
    """IAM takes a variable's value as written: a tag value of ``*`` is no wildcard (the sandbox took
    it for one, so a machine whose pool tag was ``*`` could read every pool's parameters)."""
    own = policy(allow("ssm:GetParameter", "arn:aws:ssm:*:*:parameter/prefect-remote/${aws:PrincipalTag/pool}/*"))
    pool, wild = {"aws:PrincipalTag/pool": "a"}, {"aws:PrincipalTag/pool": "*"}
    parameter = f"arn:aws:ssm:{REGION}:{ACCOUNT_ID}:parameter/prefect-remote"
    assert decide(own, "ssm:GetParameter", f"{parameter}/a/launch-1", **pool) == "allowed"
    assert decide(own, "ssm:GetParameter", f"{parameter}/b/launch-1", **wild) == "implicitDeny"
    assert decide(own, "ssm:GetParameter", f"{parameter}/*/launch-1", **wild) == "allowed"
    tagged = policy(allow("ec2:TerminateInstances", Condition={"StringLike": {"ec2:ResourceTag/owner": "${aws:username}"}}))
    assert decide(tagged, "ec2:TerminateInstances", **{"aws:username": "a?a", "ec2:ResourceTag/owner": "ada"}) == "implicitDeny"
    assert decide(tagged, "ec2:TerminateInstances", **{"aws:username": "a?a", "ec2:ResourceTag/owner": "a?a"}) == "allowed"
    star = policy(allow("s3:ListBucket", Condition={"StringLike": {"s3:prefix": "${*}"}}))  # IAM's literal *
    assert decide(star, "s3:ListBucket", **{"s3:prefix": "*"}) == "allowed"
    assert decide(star, "s3:ListBucket", **{"s3:prefix": "home/"}) == "implicitDeny"
    equal = policy(allow("x:Y", Condition={"StringEquals": {"k": "${aws:username}"}}))
    assert decide(equal, "x:Y", k="a*", **{"aws:username": "a*"}) == "allowed"


def test_a_source_instance_arn_and_a_user_name_holding_wildcards_match_only_themselves():
    """``${ec2:SourceInstanceARN}`` and ``${aws:username}`` in a Resource or an ArnLike/StringLike
    condition: a ``*`` or ``?`` in the value stands for itself, as in IAM, never for other instances
    or users."""
    own = policy(
        allow("ec2:TerminateInstances", "${ec2:SourceInstanceARN}"),
        allow("ec2:CreateTags", Condition={"ArnLike": {"aws:ResourceArn": "${ec2:SourceInstanceARN}"}}),
    )
    wild, other = {"ec2:SourceInstanceARN": f"{EC2}:instance/i-*"}, f"{EC2}:instance/i-0123456789abcdef0"
    assert decide(own, "ec2:TerminateInstances", other, **wild) == "implicitDeny"
    assert decide(own, "ec2:TerminateInstances", f"{EC2}:instance/i-*", **wild) == "allowed"
    assert decide(own, "ec2:CreateTags", **{**wild, "aws:ResourceArn": other}) == "implicitDeny"
    assert decide(own, "ec2:CreateTags", **{**wild, "aws:ResourceArn": f"{EC2}:instance/i-*"}) == "allowed"
    assert decide(own, "ec2:TerminateInstances", other, **{"ec2:SourceInstanceARN": other}) == "allowed"
    home = policy(allow("s3:GetObject", "arn:aws:s3:::bucket/home/${aws:username}/*"))
    assert decide(home, "s3:GetObject", "arn:aws:s3:::bucket/home/bob/x", **{"aws:username": "*"}) == "implicitDeny"
    assert decide(home, "s3:GetObject", "arn:aws:s3:::bucket/home/bob/x", **{"aws:username": "b?b"}) == "implicitDeny"
    assert decide(home, "s3:GetObject", "arn:aws:s3:::bucket/home/b?b/x", **{"aws:username": "b?b"}) == "allowed"
    assert decide(home, "s3:GetObject", "arn:aws:s3:::bucket/home/bob/x", **{"aws:username": "bob"}) == "allowed"


def test_missing_context_keys_are_reported():
    found = evaluate(
        [("p", policy(allow("ec2:RunInstances", Condition={"ArnEquals": {"ec2:InstanceProfile": PROFILE}})))],
        Check("ec2:RunInstances", "*"),
    )
    assert found.decision == "implicitDeny" and found.missing == ("ec2:InstanceProfile",)


# -- what requests ask -----------------------------------------------------------------------------
class FixedAccount(Account):
    """An account whose resources a test states (the sandbox reads moto's backends)."""

    def __init__(self, instances=None, tags=None, profiles=None):
        self.instances, self.tags, self.profiles = instances or {}, tags or {}, profiles or {}

    def ec2_tags(self, request, resource_id):
        return dict(self.tags.get(resource_id, {}))

    def instance(self, request, instance_id):
        return self.instances.get(instance_id)

    def security_group(self, request, name_or_id, vpc_id=None):
        return None

    def default_vpc(self, request):
        return "vpc-1"

    def default_subnet(self, request):
        return "subnet-1"

    def ssm_tags(self, request, name):
        return {}

    def log_group_tags(self, request, name):
        return {}

    def ecr_tags(self, request, repository):
        return dict(self.tags.get(repository, {}))

    def role(self, request, name):
        return None

    def instance_profile(self, request, name_or_arn):
        return self.profiles.get(name_or_arn)


class Profile:
    def __init__(self, name: str, role: str):
        self.name, self.path, self.tags = name, "/", []
        self.arn = f"arn:aws:iam::{ACCOUNT_ID}:instance-profile/{name}"
        self.roles = [type("Role", (), {"arn": f"arn:aws:iam::{ACCOUNT_ID}:role/{role}", "name": role})()]


def ask(service: str, operation: str, account: Account | None = None, **params) -> list[Check]:
    return checks(Request(service, operation, params, REGION, ACCOUNT_ID), account or FixedAccount())


POOL_ROLE = f"prefect-remote-{REGION}-pool"
MACHINES = machine_policy(
    account=ACCOUNT_ID, region=REGION, role=POOL_ROLE, bucket="store-bkt", prefix="store", log_group="/prefect-remote/machines"
)


def allowed(document: dict, wanted: list[Check], caller: str | None = None) -> list[tuple[str, str, str]]:
    """Each check's decision: (action, resource, decision), asked by instance ``caller`` (an instance's
    ARN: its role session's ``ec2:SourceInstanceARN``), or by a caller that is no instance."""
    principal = {"ec2:SourceInstanceARN": caller} if caller else {}
    return [
        (c.action, c.resource, evaluate([("p", document)], Check(c.action, c.resource, {**principal, **c.context})).decision)
        for c in wanted
    ]


def launch(profile: str = POOL_ROLE, tags: dict | None = None, **extra) -> dict:
    tag_list = [{"Key": k, "Value": v} for k, v in (tags if tags is not None else {LAUNCH_TAG: "launch-1"}).items()]
    return {
        "ImageId": "ami-0abc",
        "InstanceType": "t3.micro",
        "MinCount": 1,
        "MaxCount": 1,
        "SecurityGroupIds": ["sg-1"],
        "IamInstanceProfile": {"Name": profile},
        "TagSpecifications": [{"ResourceType": kind, "Tags": tag_list} for kind in ("instance", "volume")] if tag_list else [],
        **extra,
    }


def test_run_instances_checks_every_resource_and_what_aws_implies():
    account = FixedAccount(profiles={POOL_ROLE: Profile(POOL_ROLE, POOL_ROLE)})
    found = ask("ec2", "RunInstances", account, **launch())
    assert [(c.action, c.resource) for c in found] == [
        ("ec2:RunInstances", f"{EC2}:instance/*"),
        ("ec2:RunInstances", f"arn:aws:ec2:{REGION}::image/ami-0abc"),  # images name no account
        ("ec2:RunInstances", f"{EC2}:subnet/subnet-1"),  # the default subnet, none being named
        ("ec2:RunInstances", f"{EC2}:security-group/sg-1"),
        ("ec2:RunInstances", f"{EC2}:network-interface/*"),
        ("ec2:RunInstances", f"{EC2}:volume/*"),
        ("iam:PassRole", f"arn:aws:iam::{ACCOUNT_ID}:role/{POOL_ROLE}"),
        ("ec2:CreateTags", f"{EC2}:instance/*"),
        ("ec2:CreateTags", f"{EC2}:volume/*"),
    ]
    instance = found[0].context
    assert instance["ec2:InstanceProfile"] == f"arn:aws:iam::{ACCOUNT_ID}:instance-profile/{POOL_ROLE}"
    assert instance[f"aws:RequestTag/{LAUNCH_TAG}"] == "launch-1" and instance["aws:TagKeys"] == [LAUNCH_TAG]
    assert found[6].context["iam:PassedToService"] == "ec2.amazonaws.com"
    assert found[7].context["ec2:CreateAction"] == "RunInstances"
    spot = ask("ec2", "RunInstances", account, **launch(InstanceMarketOptions={"MarketType": "spot"}))
    assert f"{EC2}:spot-instances-request/*" in [c.resource for c in spot]


def test_machine_policy_lets_a_machine_launch_only_instances_naming_it_their_parent_with_its_pools_profile():
    account = FixedAccount(profiles={POOL_ROLE: Profile(POOL_ROLE, POOL_ROLE), "other": Profile("other", "other")})
    me = f"{EC2}:instance/i-0me"
    mine = {LAUNCH_TAG: "launch-1", PARENT_TAG: me}
    assert {d for *_, d in allowed(MACHINES, ask("ec2", "RunInstances", account, **launch(tags=mine)), me)} == {"allowed"}
    # Without the launch tag, naming another parent (or none), from no instance, with another profile: refused.
    for tags, caller in (
        ({PARENT_TAG: me}, me),
        ({LAUNCH_TAG: "l", PARENT_TAG: f"{EC2}:instance/i-0else"}, me),
        ({LAUNCH_TAG: "l"}, me),
        (mine, None),
    ):
        refused = allowed(MACHINES, ask("ec2", "RunInstances", account, **launch(tags=tags)), caller)
        assert ("ec2:RunInstances", f"{EC2}:instance/*", "implicitDeny") in refused, (tags, caller)
    elsewhere = allowed(MACHINES, ask("ec2", "RunInstances", account, **launch(profile="other", tags=mine)), me)
    assert ("ec2:RunInstances", f"{EC2}:instance/*", "implicitDeny") in elsewhere
    assert ("iam:PassRole", f"arn:aws:iam::{ACCOUNT_ID}:role/other", "implicitDeny") in elsewhere


def test_machine_policy_ends_and_tags_only_itself_what_it_launched_and_the_workers_it_schedules():
    ours = {"type": "t3.micro", "profile": f"arn:aws:iam::{ACCOUNT_ID}:instance-profile/{POOL_ROLE}"}
    me, sibling = f"{EC2}:instance/i-0me", f"{EC2}:instance/i-0sib"
    account = FixedAccount(
        instances={
            "i-0me": ours,
            "i-0child": ours,
            "i-0kept": ours,
            "i-0sib": ours,
            "i-0cousin": ours,
            "i-0other": {**ours, "profile": PROFILE + "-other"},
        },
        tags={
            "i-0me": {LAUNCH_TAG: "launch-0"},
            "i-0child": {LAUNCH_TAG: "launch-1", PARENT_TAG: me},  # launched by it
            "i-0kept": {LAUNCH_TAG: "launch-2", PARENT_TAG: sibling, CONTROLLER_TAG: me},  # a first worker it schedules
            "i-0sib": {LAUNCH_TAG: "launch-3"},  # another flow run's machine of the pool
            "i-0cousin": {LAUNCH_TAG: "launch-4", PARENT_TAG: sibling},  # another cluster's worker, same pool
            "i-0other": {LAUNCH_TAG: "launch-5", PARENT_TAG: me},  # another pool's profile
        },
    )

    def decision(operation, caller=me, **params):
        return [d for *_, d in allowed(MACHINES, ask("ec2", operation, account, **params), caller)]

    lease = [{"Key": "prefect-remote:lease", "Value": "1"}]
    for target in ("i-0me", "i-0child", "i-0kept"):
        assert decision("CreateTags", Resources=[target], Tags=lease) == ["allowed"], target
        assert decision("TerminateInstances", InstanceIds=[target]) == ["allowed"], target
        assert decision("CreateTags", Resources=[target], Tags=[{"Key": "Name", "Value": "x"}]) == ["implicitDeny"], target
        assert decision("CreateTags", Resources=[target], Tags=[{"Key": PARENT_TAG, "Value": me}]) == ["implicitDeny"], target
    for target in ("i-0sib", "i-0cousin", "i-0other"):
        assert decision("CreateTags", Resources=[target], Tags=lease) == ["implicitDeny"], target
        assert decision("TerminateInstances", InstanceIds=[target]) == ["implicitDeny"], target
    assert decision("TerminateInstances", InstanceIds=["i-0child", "i-0sib"]) == ["allowed", "implicitDeny"]
    assert decision("TerminateInstances", caller=None, InstanceIds=["i-0me"]) == ["implicitDeny"]  # no instance's session
    assert decision("TerminateInstances", caller=sibling, InstanceIds=["i-0sib", "i-0me"]) == ["allowed", "implicitDeny"]
    assert decision("AuthorizeSecurityGroupIngress", GroupId="sg-1", IpPermissions=[]) == ["implicitDeny"]
    assert decision("DescribeInstances") == ["allowed"]


def test_machine_policy_on_secrets_store_and_logs():
    def decision(service, operation, **params):
        return [d for *_, d in allowed(MACHINES, ask(service, operation, **params))]

    assert decision("ssm", "GetParameter", Name="/prefect-remote/launch-1", WithDecryption=True) == ["allowed"]
    assert decision("ssm", "GetParameter", Name="/elsewhere/x") == ["implicitDeny"]
    assert decision("ssm", "GetParameter", Name="/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64") == ["allowed"]
    # a scheduler launching GPU workers resolves AWS's GPU image (DLAMI) by its public parameter
    dlami = "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-amazon-linux-2023/latest/ami-id"
    assert decision("ssm", "GetParameter", Name=dlami) == ["allowed"]
    # and workers in a container image, the ECS-optimized image (its GPU variant too), but no other ECS parameter
    for variant in ("", "arm64/", "gpu/"):
        ecs = f"/aws/service/ecs/optimized-ami/amazon-linux-2023/{variant}recommended/image_id"
        assert decision("ssm", "GetParameter", Name=ecs) == ["allowed"]
    assert decision("ssm", "GetParameter", Name="/aws/service/ecs/optimized-ami/amazon-linux-2/recommended") == ["implicitDeny"]
    assert decision("ssm", "GetParameter", Name="/aws/service/global-infrastructure/regions") == ["implicitDeny"]
    # PutParameter with tags is authorized as ssm:AddTagsToResource too.
    assert decision("ssm", "PutParameter", Name="/prefect-remote/launch-2", Value="{}", Tags=[{"Key": LAUNCH_TAG, "Value": "x"}]) == [
        "allowed",
        "allowed",
    ]
    assert decision("s3", "GetObject", Bucket="store-bkt", Key="store/blobs/abc") == ["allowed"]
    assert decision("s3", "HeadObject", Bucket="store-bkt", Key="elsewhere/abc") == ["implicitDeny"]
    assert decision("s3", "ListObjectsV2", Bucket="store-bkt", Prefix="store/envs/") == ["allowed"]
    assert decision("s3", "ListObjectsV2", Bucket="store-bkt", Prefix="elsewhere/") == ["implicitDeny"]
    assert decision("s3", "PutObject", Bucket="store-bkt", Key="store/blobs/abc") == ["implicitDeny"]
    assert decision("logs", "CreateLogStream", logGroupName="/prefect-remote/machines", logStreamName="i-0a") == ["allowed"]
    assert decision("logs", "PutLogEvents", logGroupName="/prefect-remote/machines", logStreamName="i-0a", logEvents=[]) == ["allowed"]
    assert decision("logs", "CreateLogGroup", logGroupName="/prefect-remote/machines") == ["implicitDeny"]


def test_arns_and_action_names_per_service():
    [parameter] = ask("ssm", "GetParameter", Name="/prefect-remote/launch-1")
    assert parameter.resource == f"arn:aws:ssm:{REGION}:{ACCOUNT_ID}:parameter/prefect-remote/launch-1"
    [public] = ask("ssm", "GetParameter", Name="/aws/service/ami-amazon-linux-latest/x")
    assert public.resource == f"arn:aws:ssm:{REGION}::parameter/aws/service/ami-amazon-linux-latest/x"
    [stream] = ask("logs", "GetLogEvents", logGroupName="/lg", logStreamName="i-1")
    assert stream.resource == f"arn:aws:logs:{REGION}:{ACCOUNT_ID}:log-group:/lg:log-stream:i-1"
    assert [c.action for c in ask("logs", "CreateLogGroup", logGroupName="/lg", tags={"a": "b"})] == [
        "logs:CreateLogGroup",
        "logs:TagResource",
    ]
    s3_names = {
        "HeadBucket": "s3:ListBucket",
        "PutPublicAccessBlock": "s3:PutBucketPublicAccessBlock",
        "PutBucketEncryption": "s3:PutEncryptionConfiguration",
        "ListObjectVersions": "s3:ListBucketVersions",
        "CreateMultipartUpload": "s3:PutObject",
        "HeadObject": "s3:GetObject",
    }
    for operation, action in s3_names.items():
        assert ask("s3", operation, Bucket="b", Key="k")[0].action == action
    assert [
        c.action for c in ask("s3", "DeleteObjects", Bucket="b", Delete={"Objects": [{"Key": "a"}, {"Key": "b", "VersionId": "1"}]})
    ] == [
        "s3:DeleteObject",
        "s3:DeleteObjectVersion",
    ]
    assert [c.action for c in ask("iam", "CreateRole", RoleName="r", Tags=[{"Key": "a", "Value": "b"}])] == [
        "iam:CreateRole",
        "iam:TagRole",
    ]
    add = ask("iam", "AddRoleToInstanceProfile", InstanceProfileName="p", RoleName="r")
    assert [(c.action, c.resource) for c in add] == [
        ("iam:AddRoleToInstanceProfile", f"arn:aws:iam::{ACCOUNT_ID}:instance-profile/p"),
        ("iam:PassRole", f"arn:aws:iam::{ACCOUNT_ID}:role/r"),
    ]
    sg = ask(
        "ec2",
        "CreateSecurityGroup",
        GroupName="g",
        Description="d",
        TagSpecifications=[{"ResourceType": "security-group", "Tags": [{"Key": "m", "Value": "t"}]}],
    )
    assert [(c.action, c.resource) for c in sg] == [
        ("ec2:CreateSecurityGroup", f"{EC2}:security-group/*"),
        ("ec2:CreateSecurityGroup", f"{EC2}:vpc/vpc-1"),
        ("ec2:CreateTags", f"{EC2}:security-group/*"),
    ]
    assert sg[2].context["ec2:CreateAction"] == "CreateSecurityGroup"
    assert ask("sts", "GetCallerIdentity") == []  # no permission needed
    [attribute] = ask("ec2", "DescribeInstanceAttribute", InstanceId="i-0a", Attribute="userData")
    assert attribute.resource == f"{EC2}:instance/i-0a"  # (unlike DescribeInstances, scoped to the instance)


def test_ecr_operations_ask_what_the_service_authorization_reference_says():
    """GetAuthorizationToken is on no resource; the repository actions on the repository of the
    caller's registry, with its tags; tags at creation are ecr:TagResource too. Another account's
    registry answers to its repository policy, which the sandbox does not evaluate: refused."""
    repository = f"arn:aws:ecr:{REGION}:{ACCOUNT_ID}:repository/team/app"
    assert ask("ecr", "GetAuthorizationToken") == [Check("ecr:GetAuthorizationToken", "*")]
    assert ask("ecr", "GetAuthorizationToken", registryIds=["210987654321"]) == [Check("ecr:GetAuthorizationToken", "*")]
    pull = {"BatchGetImage": {"imageIds": [{"imageTag": "1"}]}, "GetDownloadUrlForLayer": {"layerDigest": "sha256:ab"}}
    tagged = FixedAccount(tags={"team/app": {"stage": "prod"}})
    for operation, params in pull.items():
        [check] = ask("ecr", operation, tagged, repositoryName="team/app", **params)
        assert (check.action, check.resource) == (f"ecr:{operation}", repository)
        assert check.context == {"aws:ResourceTag/stage": "prod", "ecr:ResourceTag/stage": "prod"}
    assert ask("ecr", "BatchGetImage", repositoryName="team/app", registryId=ACCOUNT_ID, imageIds=[])[0].resource == repository
    created = ask("ecr", "CreateRepository", repositoryName="team/app", tags=[{"Key": "stage", "Value": "dev"}])
    assert [(c.action, c.resource) for c in created] == [("ecr:CreateRepository", repository), ("ecr:TagResource", repository)]
    assert created[1].context == {"aws:RequestTag/stage": "dev", "aws:TagKeys": ["stage"]}
    with pytest.raises(UnknownOperation, match="ecr:BatchGetImage on account 210987654321's registry"):
        ask("ecr", "BatchGetImage", repositoryName="team/app", registryId="210987654321", imageIds=[])
    with pytest.raises(UnknownOperation, match="ecr:DescribeRepositories"):
        ask("ecr", "DescribeRepositories")


def test_machine_policy_pulls_from_the_accounts_repositories_and_no_more():
    """A pull: the login token, the manifest and the layers, in the account's repositories of the pool's
    region; BatchCheckLayerAvailability (a push's), pushing, and other regions are refused."""

    def decision(operation, region=REGION, **params):
        return [d for *_, d in allowed(MACHINES, checks(Request("ecr", operation, params, region, ACCOUNT_ID), FixedAccount()))]

    assert decision("GetAuthorizationToken") == ["allowed"]
    assert decision("BatchGetImage", repositoryName="team/app", imageIds=[{"imageTag": "1"}]) == ["allowed"]
    assert decision("GetDownloadUrlForLayer", repositoryName="team/app", layerDigest="sha256:ab") == ["allowed"]
    assert decision("BatchCheckLayerAvailability", repositoryName="team/app", layerDigests=["sha256:ab"]) == ["implicitDeny"]
    assert decision("PutImage", repositoryName="team/app", imageManifest="{}") == ["implicitDeny"]
    assert decision("BatchGetImage", "eu-west-1", repositoryName="team/app", imageIds=[{"imageTag": "1"}]) == ["implicitDeny"]


def test_the_table_names_operations_as_botocore_does():
    """Every operation of the table is one of its service's botocore model (a misspelled name would
    never match a request, and the request would be refused as unknown)."""
    import botocore.session

    from prefect_remote.sandbox.iam_server import MODEL_NAMES

    session = botocore.session.get_session()
    for entry in operations():
        service, operation = entry.split(":")
        assert operation in session.get_service_model(MODEL_NAMES.get(service, service)).operation_names, entry


def test_unknown_operations_are_refused_by_name():
    with pytest.raises(UnknownOperation, match="ec2:DescribeHosts"):
        ask("ec2", "DescribeHosts")
    with pytest.raises(UnknownOperation, match=r"ec2:CreateTags on fpga-0abc"):
        ask("ec2", "CreateTags", Resources=["fpga-0abc"], Tags=[])
    with pytest.raises(UnknownOperation, match="sts:AssumeRole"):
        ask("sts", "AssumeRole", RoleArn="arn:aws:iam::1:role/r", RoleSessionName="s")
    assert "ec2:RunInstances" in operations() and "s3:HeadBucket" in operations()


def test_the_sandbox_users_hold_the_docs_policies():
    """Each user the sandbox makes holds exactly one of permissions' policies (the docs' lists, which
    tests/providers/aws/test_infra.py compares with the docs); the exported one, launcher and provisioning."""
    from moto.iam.models import iam_backends

    with SandboxAWS(region=REGION, run_instances=False) as aws:
        users = {user.name: user for user in iam_backends[ACCOUNT_ID]["aws"].users.values()}
        key_owner = {key.access_key_id: user for user in users.values() for key in user.access_keys}
        expected = aws_identities.policies(ACCOUNT_ID)
        for name, policy in expected.items():
            user = key_owner[aws.keys(name)["AWS_ACCESS_KEY_ID"]]
            assert {n: json.loads(p) for n, p in user.policies.items()} == {name: policy}
        exported = key_owner[aws.environ()["AWS_ACCESS_KEY_ID"]]
        assert {n: json.loads(p) for n, p in exported.policies.items()} == {
            "launcher": expected["launcher"],
            "provisioning": expected["provisioning"],
        }


# -- the enforcing server, through boto3 -----------------------------------------------------------
@pytest.fixture(scope="module")
def sandbox():
    """A sandbox AWS enforcing IAM (no instance runner: the machine's side is its IMDS alone)."""
    with SandboxAWS(region=REGION, run_instances=False, enforce_iam=True) as aws:
        yield aws


def clients(sandbox, keys):
    session = boto3.session.Session(region_name=REGION, **keys.session_kwargs())
    return lambda service: session.client(service, endpoint_url=sandbox.url, config=NO_RETRIES)


def refused(call, **params) -> tuple[int, str, str]:
    with pytest.raises(ClientError) as caught:
        call(**params)
    response = caught.value.response
    return response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Code"], response["Error"].get("Message", "")


@pytest.fixture(scope="module")
def admin(sandbox):
    return clients(sandbox, make_user("test-admin", {"all": aws_identities.ADMIN_POLICY}, account=ACCOUNT_ID))


def test_a_user_is_allowed_what_its_policy_grants_and_refused_the_rest_in_each_services_shape(sandbox, admin):
    admin("ssm").put_parameter(Name="/team/secret", Value="v", Type="SecureString")
    admin("logs").create_log_group(logGroupName="/team/logs")
    keys = make_user(
        "reader",
        {
            "read": policy(
                allow("ec2:DescribeInstances"),
                allow("ssm:GetParameter", f"arn:aws:ssm:{REGION}:{ACCOUNT_ID}:parameter/team/*"),
                allow("s3:ListBucket", "arn:aws:s3:::prefect-remote-sandbox"),
                allow("logs:DescribeLogGroups"),
            )
        },
        account=ACCOUNT_ID,
    )
    client = clients(sandbox, keys)
    arn = client("sts").get_caller_identity()["Arn"]  # needs no permission
    assert arn == keys.arn
    assert client("ec2").describe_instances()["Reservations"] is not None
    assert client("ssm").get_parameter(Name="/team/secret", WithDecryption=True)["Parameter"]["Value"] == "v"
    client("s3").head_bucket(Bucket="prefect-remote-sandbox")
    assert client("logs").describe_log_groups(logGroupNamePrefix="/team")["logGroups"]

    status, code, message = refused(client("ec2").describe_vpcs)
    assert (status, code) == (403, "UnauthorizedOperation")
    assert message.startswith(
        f"You are not authorized to perform this operation. User: {arn} is not authorized to perform: ec2:DescribeVpcs"
    )
    assert "Encoded authorization failure message:" in message
    status, code, message = refused(client("ssm").get_parameter, Name="/other/secret")
    assert (status, code) == (400, "AccessDeniedException")
    assert message == (
        f"User: {arn} is not authorized to perform: ssm:GetParameter on resource: "
        f"arn:aws:ssm:{REGION}:{ACCOUNT_ID}:parameter/other/secret because no identity-based policy allows the ssm:GetParameter action"
    )
    assert refused(client("logs").create_log_stream, logGroupName="/team/logs", logStreamName="s")[:2] == (400, "AccessDeniedException")
    assert refused(client("s3").get_object, Bucket="prefect-remote-sandbox", Key="store/x")[:2] == (403, "AccessDenied")
    assert refused(client("s3").head_object, Bucket="prefect-remote-sandbox", Key="store/x")[:2] == (403, "403")  # HEAD: no body
    status, code, message = refused(client("iam").list_roles)
    assert (status, code) == (403, "AccessDenied") and "iam:ListRoles because no identity-based policy allows" in message
    status, code, message = refused(client("sts").get_session_token)  # an operation the sandbox does not model
    assert (status, code) == (403, "AccessDenied") and "sts:GetSessionToken" in message and "does not know" in message


def test_a_missing_key_is_404_only_to_who_may_list_the_bucket(sandbox):
    bucket = "prefect-remote-sandbox"
    objects = allow("s3:GetObject", f"arn:aws:s3:::{bucket}/*")
    blind = clients(sandbox, make_user("blind", {"p": policy(objects)}, account=ACCOUNT_ID))
    assert refused(blind("s3").head_object, Bucket=bucket, Key="store/missing")[:2] == (403, "403")
    assert refused(blind("s3").get_object, Bucket=bucket, Key="store/missing")[:2] == (403, "AccessDenied")
    seeing = clients(
        sandbox, make_user("seeing", {"p": policy(objects, allow("s3:ListBucket", f"arn:aws:s3:::{bucket}"))}, account=ACCOUNT_ID)
    )
    assert refused(seeing("s3").head_object, Bucket=bucket, Key="store/missing")[:2] == (404, "404")
    assert refused(seeing("s3").get_object, Bucket=bucket, Key="store/missing")[:2] == (404, "NoSuchKey")


def test_an_explicit_deny_wins_and_says_so(sandbox):
    keys = make_user("denied", {"p": policy(allow("ec2:*"), deny("ec2:DescribeSubnets"))}, account=ACCOUNT_ID)
    client = clients(sandbox, keys)
    client("ec2").describe_vpcs()
    _status, code, message = refused(client("ec2").describe_subnets)
    assert code == "UnauthorizedOperation" and "with an explicit deny in an identity-based policy" in message


def test_launching_needs_pass_role_and_tagging_as_aws_implies(sandbox, admin):
    image = admin("ec2").describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    run = dict(
        ImageId=image,
        InstanceType="t3.micro",
        MinCount=1,
        MaxCount=1,
        IamInstanceProfile={"Name": "prefect-remote-sandbox"},
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": LAUNCH_TAG, "Value": "launch-0"}]}],
    )
    only_run = clients(sandbox, make_user("run-only", {"p": policy(allow("ec2:RunInstances"))}, account=ACCOUNT_ID))
    _status, code, message = refused(only_run("ec2").run_instances, **run)
    assert code == "UnauthorizedOperation" and f"iam:PassRole on resource: arn:aws:iam::{ACCOUNT_ID}:role/prefect-remote-sandbox" in message
    no_tags = clients(sandbox, make_user("no-tags", {"p": policy(allow(["ec2:RunInstances", "iam:PassRole"]))}, account=ACCOUNT_ID))
    _status, code, message = refused(no_tags("ec2").run_instances, **run)
    assert code == "UnauthorizedOperation" and f"ec2:CreateTags on resource: arn:aws:ec2:{REGION}:{ACCOUNT_ID}:instance/*" in message
    launcher = clients(sandbox, sandbox.identity)  # what the sandbox exports: the docs' launcher list
    [instance] = launcher("ec2").run_instances(**run)["Instances"]
    launcher("ec2").get_waiter("instance_exists").wait(
        InstanceIds=[instance["InstanceId"]], WaiterConfig={"Delay": 1}
    )  # (EC2's consistency)
    launcher("ec2").terminate_instances(InstanceIds=[instance["InstanceId"]])


def test_expired_sessions_are_refused_in_each_services_shape(sandbox, admin):
    from moto.sts.models import sts_backends

    session = sts_backends[ACCOUNT_ID]["aws"].assume_role(
        region_name=REGION,
        role_session_name="old",
        role_arn=f"arn:aws:iam::{ACCOUNT_ID}:role/prefect-remote-sandbox",
        policy=None,
        duration=900,
        external_id=None,
    )
    session.expiration = datetime.datetime(2020, 1, 1)
    client = clients(sandbox, aws_identities.Keys(session.access_key_id, session.secret_access_key, session.session_token))
    assert refused(client("sts").get_caller_identity)[:2] == (403, "ExpiredToken")
    assert refused(client("ssm").get_parameter, Name="/prefect-remote/x")[:2] == (400, "ExpiredTokenException")
    assert refused(client("ec2").describe_instances)[:2] == (400, "RequestExpired")
    assert refused(client("s3").get_object, Bucket="prefect-remote-sandbox", Key="store/x")[:2] == (400, "ExpiredToken")
    wrong_token = clients(sandbox, aws_identities.Keys(session.access_key_id, session.secret_access_key, "forged"))
    assert refused(wrong_token("iam").list_roles)[:2] == (403, "InvalidClientTokenId")


def test_only_sessions_ec2_hands_to_instances_bring_their_source_instance_arn(sandbox, admin):
    """ec2:SourceInstanceARN is present "only when the request comes from an Amazon EC2 instance using
    an IAM role associated with an EC2 instance profile": a session of the machines' role assumed
    otherwise, even named like an instance, has none, and "itself" never holds for it."""
    from moto.sts.models import sts_backends

    image = admin("ec2").describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    run = {
        "ImageId": image,
        "InstanceType": "t3.micro",
        "MinCount": 1,
        "MaxCount": 1,
        "IamInstanceProfile": {"Name": "prefect-remote-sandbox"},
    }
    [instance] = admin("ec2").run_instances(**run)["Instances"]
    instance_id = instance["InstanceId"]
    admin("ec2").get_waiter("instance_exists").wait(InstanceIds=[instance_id], WaiterConfig={"Delay": 1})
    lookalike = sts_backends[ACCOUNT_ID]["aws"].assume_role(
        region_name=REGION,
        role_session_name=instance_id,
        role_arn=f"arn:aws:iam::{ACCOUNT_ID}:role/prefect-remote-sandbox",
        policy=None,
        duration=900,
        external_id=None,
    )
    forged = clients(sandbox, aws_identities.Keys(lookalike.access_key_id, lookalike.secret_access_key, lookalike.session_token))
    lease = [{"Key": "prefect-remote:lease", "Value": "1"}]
    try:
        assert refused(forged("ec2").create_tags, Resources=[instance_id], Tags=lease)[1] == "UnauthorizedOperation"
        machine = sandbox.keys("machine", instance_id=instance_id)
        own = clients(
            sandbox, aws_identities.Keys(machine["AWS_ACCESS_KEY_ID"], machine["AWS_SECRET_ACCESS_KEY"], machine["AWS_SESSION_TOKEN"])
        )
        own("ec2").create_tags(Resources=[instance_id], Tags=lease)
    finally:
        admin("ec2").terminate_instances(InstanceIds=[instance_id])


def test_unknown_keys_and_bad_signatures_are_refused_in_each_services_shape(sandbox):
    unknown = clients(sandbox, aws_identities.Keys("AKIAEXAMPLEEXAMPLE00", "x"))
    assert refused(unknown("ec2").describe_instances)[:2] == (401, "AuthFailure")
    assert refused(unknown("s3").list_buckets)[:2] == (403, "InvalidAccessKeyId")
    assert refused(unknown("iam").list_roles)[:2] == (403, "InvalidClientTokenId")
    assert refused(unknown("logs").describe_log_groups)[:2] == (400, "UnrecognizedClientException")
    wrong = clients(sandbox, aws_identities.Keys(sandbox.identity.access_key_id, "not-the-secret"))
    assert refused(wrong("sts").get_caller_identity)[:2] == (403, "SignatureDoesNotMatch")
    assert refused(wrong("ssm").describe_parameters)[:2] == (400, "InvalidSignatureException")
    unsigned = boto3.session.Session(region_name=REGION).client(
        "sts", endpoint_url=sandbox.url, config=NO_RETRIES.merge(Config(signature_version=__import__("botocore").UNSIGNED))
    )
    assert refused(unsigned.get_caller_identity)[:2] == (403, "MissingAuthenticationToken")
    # moto's own API (reset, switches) is no way around it.
    request = urllib.request.Request(f"{sandbox.url}/moto-api/reset", method="POST")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    assert caught.value.code == 403


def test_simulate_principal_policy_answers_from_the_same_evaluator(sandbox, admin):
    role = f"prefect-remote-{REGION}-simulated"
    admin("iam").create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps(policy()))
    document = machine_policy(
        account=ACCOUNT_ID, region=REGION, role=role, bucket="store-bkt", prefix="store", log_group="/prefect-remote/machines"
    )
    admin("iam").put_role_policy(RoleName=role, PolicyName="machines", PolicyDocument=json.dumps(document))
    admin("iam").put_role_policy(RoleName=role, PolicyName="guard", PolicyDocument=json.dumps(policy(deny("ec2:DescribeVpcs"))))
    source = f"arn:aws:iam::{ACCOUNT_ID}:role/{role}"
    profile = f"arn:aws:iam::{ACCOUNT_ID}:instance-profile/{role}"
    answer = admin("iam").simulate_principal_policy(
        PolicySourceArn=source,
        ActionNames=["ssm:GetParameter", "ec2:DescribeVpcs", "ec2:AuthorizeSecurityGroupIngress"],
        ResourceArns=[f"arn:aws:ssm:{REGION}:{ACCOUNT_ID}:parameter/prefect-remote/launch-1"],
    )["EvaluationResults"]
    assert [(r["EvalActionName"], r["EvalDecision"]) for r in answer] == [
        ("ssm:GetParameter", "allowed"),
        ("ec2:DescribeVpcs", "explicitDeny"),
        ("ec2:AuthorizeSecurityGroupIngress", "implicitDeny"),
    ]
    assert answer[0]["MatchedStatements"][0]["SourcePolicyId"] == "machines"
    terminate = dict(PolicySourceArn=source, ActionNames=["ec2:TerminateInstances"], ResourceArns=[f"{EC2}:instance/i-0abc"])
    without = admin("iam").simulate_principal_policy(**terminate)["EvaluationResults"][0]
    assert without["EvalDecision"] == "implicitDeny"
    assert set(without["MissingContextValues"]) == {
        "ec2:SourceInstanceARN",
        "ec2:InstanceProfile",
        f"ec2:ResourceTag/{PARENT_TAG}",
        f"ec2:ResourceTag/{CONTROLLER_TAG}",
        "aws:TagKeys",
    }
    parent = f"{EC2}:instance/i-0parent"
    context = [
        {"ContextKeyName": "ec2:SourceInstanceARN", "ContextKeyValues": [parent], "ContextKeyType": "string"},
        {"ContextKeyName": "ec2:InstanceProfile", "ContextKeyValues": [profile], "ContextKeyType": "string"},
        {"ContextKeyName": f"ec2:ResourceTag/{PARENT_TAG}", "ContextKeyValues": [parent], "ContextKeyType": "string"},
    ]
    assert admin("iam").simulate_principal_policy(**terminate, ContextEntries=context)["EvaluationResults"][0]["EvalDecision"] == "allowed"
    # The call is authorized like any other: the teardown identity may not simulate (the launcher
    # may, for prefect-remote doctor).
    status, code, message = refused(clients(sandbox, sandbox._identities["teardown"])("iam").simulate_principal_policy, **terminate)
    assert (status, code) == (403, "AccessDenied") and "iam:SimulatePrincipalPolicy" in message


PROBE = """
import json, boto3
from botocore.exceptions import ClientError
session = boto3.session.Session()
credentials = session.get_credentials()
out = {"method": credentials.method, "arn": session.client("sts").get_caller_identity()["Arn"]}
def attempt(name, call):
    try:
        call()
        out[name] = "ok"
    except ClientError as error:
        out[name] = error.response["Error"]["Code"]
ec2, ssm, s3 = session.client("ec2"), session.client("ssm"), session.client("s3")
attempt("read_secret", lambda: ssm.get_parameter(Name="/prefect-remote/probe", WithDecryption=True))
attempt("read_other_secret", lambda: ssm.get_parameter(Name="/elsewhere/probe"))
attempt("list_store", lambda: s3.list_objects_v2(Bucket="prefect-remote-sandbox", Prefix="store/"))
attempt("write_store", lambda: s3.put_object(Bucket="prefect-remote-sandbox", Key="store/x", Body=b"x"))
attempt("describe_instances", lambda: ec2.describe_instances())
attempt("tag_lease", lambda: ec2.create_tags(Resources=[INSTANCE], Tags=[{"Key": "prefect-remote:lease", "Value": "1"}]))
attempt("tag_name", lambda: ec2.create_tags(Resources=[INSTANCE], Tags=[{"Key": "Name", "Value": "x"}]))
attempt("open_ingress", lambda: ec2.authorize_security_group_ingress(GroupId=GROUP, IpPermissions=[]))
attempt("terminate_self", lambda: ec2.terminate_instances(InstanceIds=[INSTANCE]))
print(json.dumps(out))
"""


def test_an_instance_calls_with_its_roles_session_from_imds_checked_against_machine_policy(sandbox, admin, tmp_path):
    from prefect_remote.sandbox.imds import MetadataService

    admin("ssm").put_parameter(Name="/prefect-remote/probe", Value="{}", Type="SecureString")
    admin("ssm").put_parameter(Name="/elsewhere/probe", Value="{}", Type="SecureString")
    image = admin("ec2").describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    [instance] = admin("ec2").run_instances(
        ImageId=image,
        InstanceType="t3.micro",
        MinCount=1,
        MaxCount=1,
        IamInstanceProfile={"Name": "prefect-remote-sandbox"},
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": LAUNCH_TAG, "Value": "launch-probe"}]}],
    )["Instances"]
    instance_id = instance["InstanceId"]
    admin("ec2").get_waiter("instance_exists").wait(InstanceIds=[instance_id], WaiterConfig={"Delay": 1})  # (EC2's consistency)
    group = admin("ec2").describe_security_groups(GroupNames=["default"])["SecurityGroups"][0]["GroupId"]
    imds = MetadataService()
    try:
        imds.register(instance_id, lambda: sandbox._facts(instance_id))
        environ = {
            "PATH": os.environ["PATH"],
            "HOME": str(tmp_path),
            "AWS_CONFIG_FILE": str(tmp_path / "none"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
            "AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.endpoint(instance_id),
            "AWS_ENDPOINT_URL": sandbox.url,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_MAX_ATTEMPTS": "1",
        }
        script = PROBE.replace("INSTANCE", repr(instance_id)).replace("GROUP", repr(group))
        done = subprocess.run([sys.executable, "-c", script], env=environ, capture_output=True, text=True, timeout=120)
    finally:
        imds.close()
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out == {
        "method": "iam-role",
        "arn": f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/prefect-remote-sandbox/{instance_id}",
        "read_secret": "ok",
        "read_other_secret": "AccessDeniedException",
        "list_store": "ok",
        "write_store": "AccessDenied",
        "describe_instances": "ok",
        "tag_lease": "ok",
        "tag_name": "UnauthorizedOperation",
        "open_ingress": "UnauthorizedOperation",
        "terminate_self": "ok",
    }


def test_machine_sessions_are_renewed_well_before_they_expire(sandbox):
    now = [datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)]
    credentials = MachineCredentials(ACCOUNT_ID, clock=lambda: now[0])
    first = credentials.for_instance("i-0renew", REGION, "prefect-remote-sandbox")
    assert first["Expiration"] == "2026-01-01T06:00:00Z" and first["LastUpdated"] == "2026-01-01T00:00:00Z"
    now[0] += datetime.timedelta(minutes=59)
    assert credentials.for_instance("i-0renew", REGION, "prefect-remote-sandbox")["AccessKeyId"] == first["AccessKeyId"]
    now[0] += datetime.timedelta(minutes=1)
    renewed = credentials.for_instance("i-0renew", REGION, "prefect-remote-sandbox")
    assert renewed["AccessKeyId"] != first["AccessKeyId"] and renewed["Expiration"] == "2026-01-01T07:00:00Z"
    assert credentials.for_instance("i-0renew", REGION, "no-such-profile") is None


def test_enforcement_is_switched_off_for_a_while_and_refusals_are_recorded(sandbox):
    launcher = boto3.session.Session(region_name=REGION, **{k.lower(): v for k, v in sandbox.keys("launcher").items()})
    iam = launcher.client("iam", endpoint_url=sandbox.url, config=NO_RETRIES)
    before = len(sandbox.refusals)
    assert refused(iam.list_roles)[:2] == (403, "AccessDenied")  # not on the docs' launcher list
    assert "iam:ListRoles" in sandbox.refusals[before]
    with sandbox.enforcing(False):
        iam.list_roles()
    assert refused(iam.list_roles)[:2] == (403, "AccessDenied")  # on again
    with pytest.raises(ValueError, match="no such identity 'root'"):
        sandbox.keys("root")


def test_machine_keys_of_a_real_instance_are_its_imds_session(sandbox, admin):
    """A test acting as a machine calls as that instance: the session IMDS serves it, named after it,
    so ``ec2:SourceInstanceARN`` (what per-instance policies compare against) names the instance."""
    image = admin("ec2").describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    launch = {"ImageId": image, "InstanceType": "t3.micro", "MinCount": 1, "MaxCount": 1}
    [with_profile] = admin("ec2").run_instances(**launch, IamInstanceProfile={"Name": "prefect-remote-sandbox"})["Instances"]
    [without] = admin("ec2").run_instances(**launch)["Instances"]
    ids = [with_profile["InstanceId"], without["InstanceId"]]
    admin("ec2").get_waiter("instance_exists").wait(InstanceIds=ids, WaiterConfig={"Delay": 1})  # (EC2's consistency)
    try:
        keys = sandbox.keys("machine", instance_id=with_profile["InstanceId"])
        sts = boto3.client(
            "sts",
            endpoint_url=sandbox.url,
            region_name=REGION,
            aws_access_key_id=keys["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=keys["AWS_SECRET_ACCESS_KEY"],
            aws_session_token=keys["AWS_SESSION_TOKEN"],
        )
        arn = sts.get_caller_identity()["Arn"]
        assert arn == f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/prefect-remote-sandbox/{with_profile['InstanceId']}"
        with pytest.raises(ValueError, match="has no instance profile"):
            sandbox.keys("machine", instance_id=without["InstanceId"])
        with pytest.raises(ValueError, match="no running instance i-0000000000000000"):
            sandbox.keys("machine", instance_id="i-0000000000000000")
    finally:
        admin("ec2").terminate_instances(InstanceIds=ids)
