"""``prefect-remote doctor aws``: the account checked against what a first run needs, each check a
:class:`~prefect_remote.doctor.Finding` that names its fix.

- **credentials**: ``sts:GetCallerIdentity``;
- **launcher permissions**: ``iam:SimulatePrincipalPolicy`` of the caller (an assumed role's
  session as its role) against :func:`~prefect_remote.providers.aws.permissions.launcher_policy`'s
  actions and resources, the store's included;
- **machine permissions**: the same for the role of the machines' instance profile against
  :func:`~prefect_remote.providers.aws.permissions.machine_policy`, each statement simulated with
  a context that meets its conditions (but those that name the calling instance, which only an
  instance's own session meets); a profile provisioning made whose pool still keeps its launch
  secrets under the shared ``/prefect-remote/`` (provisioned before pools had their own) is named,
  with the provisioning that gives it its own;
- **vCPU quota**: Service Quotas' on-demand vCPU quota of the instance family the pool's largest
  machine needs (EC2's ``max-instances`` account attribute where Service Quotas does not answer);
- **network**: the launch subnet gives public IPs, or routes 0.0.0.0/0 to a NAT gateway;
- **store bucket**: the store's bucket exists and the launcher may list it.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from prefect_remote.providers.aws.clients import DOCS_PAGE, error_code, translated
from prefect_remote.providers.aws.options import SHARED_SECRETS_PREFIX
from prefect_remote.providers.aws.permissions import MACHINE_ROLES, ROLE_PREFIX, launcher_policy, machine_policy
from prefect_remote.providers.doctor import Finding, Needs, guarded

if TYPE_CHECKING:
    from prefect_remote.providers.aws.provider import AWSProvider

PERMISSIONS_DOCS = f"{DOCS_PAGE}#permissions"
# Service Quotas' on-demand vCPU quotas by instance family letter(s) (EC2's "Running On-Demand … instances").
VCPU_QUOTAS = {
    "standard": ("L-1216C47A", "Standard (A, C, D, H, I, M, R, T, Z) instances"),
    "g": ("L-DB2E81BA", "G and VT instances"),
    "vt": ("L-DB2E81BA", "G and VT instances"),
    "p": ("L-417A185B", "P instances"),
    "inf": ("L-1945791B", "Inf instances"),
    "trn": ("L-2C3B7624", "Trn instances"),
    "dl": ("L-6E869C2A", "DL instances"),
    "f": ("L-74FC7D96", "F instances"),
    "x": ("L-7295265B", "X instances"),
}
# What SimulatePrincipalPolicy answers for an action no policy allows.
ALLOWED = "allowed"


def checks(provider: AWSProvider, needs: Needs) -> list[Finding]:
    """Every check of the account ``provider`` uses, for ``needs``; after failed credentials, none other."""
    found = guarded("credentials", lambda: _credentials(provider))
    if not found[0].ok:
        return found
    caller = provider.client("sts").get_caller_identity()
    account, arn = caller["Account"], caller["Arn"]
    bucket, prefix = _store(needs.store)
    findings = [
        *found,
        *guarded("launcher permissions", lambda: _launcher_permissions(provider, account, arn, bucket, prefix)),
        *guarded("machine permissions", lambda: _machine_permissions(provider, account, bucket, prefix)),
        *guarded("vCPU quota", lambda: _quota(provider, needs)),
        *guarded("network", lambda: _network(provider)),
        *guarded("store bucket", lambda: _bucket(provider, needs.store, bucket)),
    ]
    return findings


def _store(store: str | None) -> tuple[str, str]:
    """The bucket and prefix of an ``s3://`` store; ("", "") for anything else."""
    if not (store or "").startswith("s3://"):
        return "", ""
    bucket, _, prefix = store.removeprefix("s3://").partition("/")  # type: ignore[union-attr]
    return bucket, prefix.strip("/")


def _credentials(provider: AWSProvider) -> Finding:
    with translated("sts"):
        caller = provider.client("sts").get_caller_identity()
    return Finding("credentials", True, f"{caller['Arn']} in account {caller['Account']}, region {provider.region}")


def principal_arn(caller: str) -> str:
    """The ARN SimulatePrincipalPolicy takes for a caller: an assumed role's session is its role
    (at the root path; :func:`_simulate` asks IAM for the real one when that is not it).

    >>> principal_arn("arn:aws:sts::123456789012:assumed-role/dev/alice@example.com")
    'arn:aws:iam::123456789012:role/dev'
    >>> principal_arn("arn:aws:iam::123456789012:user/alice")
    'arn:aws:iam::123456789012:user/alice'
    """
    found = re.fullmatch(r"arn:([\w-]+):sts::(\d+):assumed-role/([^/]+)/.+", caller)
    return f"arn:{found.group(1)}:iam::{found.group(2)}:role/{found.group(3)}" if found else caller


def _simulate(provider: AWSProvider, source: str, statements: list[dict[str, Any]]) -> list[str]:
    """The actions of ``statements`` (each on each of its resources, in a context that meets its
    conditions) that ``source``'s policies do not allow, as ``action on resource``."""
    from botocore.exceptions import ClientError

    iam = provider.client("iam")
    missing = []
    for statement in statements:
        actions = _listed(statement["Action"])
        resources = _listed(statement.get("Resource", "*"))
        context = _meeting(statement.get("Condition", {}))
        try:
            with translated("iam", f"simulate {source}'s policies for prefect-remote doctor"):
                pages = iam.get_paginator("simulate_principal_policy").paginate(
                    PolicySourceArn=source, ActionNames=actions, ResourceArns=resources, ContextEntries=context
                )
                results = [result for page in pages for result in page["EvaluationResults"]]
        except ClientError as error:
            if error_code(error) == "NoSuchEntity" and ":role/" in source:  # a role with a path: IAM names it
                role = iam.get_role(RoleName=source.rsplit("/", 1)[1])["Role"]["Arn"]
                return _simulate(provider, role, statements)
            raise
        for result in results:
            if result["EvalDecision"] != ALLOWED:
                missing.append(f"{result['EvalActionName']} on {result.get('EvalResourceName', '*')}")
    return missing


def _listed(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _meeting(condition: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Context entries that meet ``condition`` (a statement's), as a machine's or launcher's call
    would carry them: the values it names (``Null: false`` only asks for the key to be there).

    >>> _meeting({"Null": {"aws:RequestTag/x": "false"}, "StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}})[1]
    {'ContextKeyName': 'iam:PassedToService', 'ContextKeyValues': ['ec2.amazonaws.com'], 'ContextKeyType': 'string'}
    """
    entries = []
    for operator, keys in condition.items():
        for key, wanted in keys.items():
            if operator == "Null" and wanted == "true":  # asks for the key's absence
                continue
            many = operator.startswith(("ForAllValues:", "ForAnyValue:"))
            values = ["present"] if operator == "Null" else _listed(wanted) if many else _listed(wanted)[:1]
            entries.append({"ContextKeyName": key, "ContextKeyValues": values, "ContextKeyType": "stringList" if many else "string"})
    return entries


def _permission_finding(check: str, who: str, missing: list[str], total: int) -> Finding:
    if not missing:
        return Finding(check, True, f"{who}: all {total} allowed")
    return Finding(check, False, f"{who} lacks {len(missing)} of {total}", f"grant {', '.join(missing)} ({PERMISSIONS_DOCS} lists them)")


def _launcher_permissions(provider: AWSProvider, account: str, caller: str, bucket: str, prefix: str) -> Finding:
    statements = launcher_policy(account=account, bucket=bucket or "STORE-BUCKET", prefix=prefix)["Statement"]
    for statement in statements:  # the role passed is the machines' (a pattern in the policy)
        statement["Resource"] = [
            r.replace(MACHINE_ROLES, provider.options.instance_profile or "prefect-remote-machines") for r in _listed(statement["Resource"])
        ]
    if not bucket:  # no S3 store: the store's permissions are the store check's business
        statements = [s for s in statements if not any(r.startswith("arn:aws:s3") for r in s["Resource"])]
    source = principal_arn(caller)
    missing = _simulate(provider, source, statements)
    return _permission_finding("launcher permissions", source, missing, sum(len(_listed(s["Action"])) for s in statements))


def _machine_permissions(provider: AWSProvider, account: str, bucket: str, prefix: str) -> Finding:
    profile_name = provider.options.instance_profile
    if not profile_name:
        return Finding(
            "machine permissions",
            False,
            "no instance profile for the machines",
            "prefect work-pool create NAME --type remote:push --provision-infra makes one, or set PREFECT_REMOTE_AWS_INSTANCE_PROFILE",
        )
    from botocore.exceptions import ClientError

    try:
        profile = provider.client("iam").get_instance_profile(InstanceProfileName=profile_name)["InstanceProfile"]
    except ClientError as error:
        if error_code(error) != "NoSuchEntity":
            raise
        return Finding("machine permissions", False, f"no instance profile {profile_name!r}", "provision it: --provision-infra")
    if not profile.get("Roles"):
        return Finding(
            "machine permissions", False, f"instance profile {profile_name!r} has no role", "aws iam add-role-to-instance-profile"
        )
    role = profile["Roles"][0]
    if profile_name.startswith(f"{ROLE_PREFIX}{provider.region}-") and provider.options.secrets_prefix == SHARED_SECRETS_PREFIX:
        return Finding(
            "machine permissions",
            False,
            f"instance profile {profile_name} was provisioned with the shared secrets prefix {SHARED_SECRETS_PREFIX}: its machines "
            "may read and overwrite every other pool's launch secrets in this account and region",
            "provision the pool again (prefect work-pool create POOL --type remote:push --provision-infra --overwrite), which gives "
            f"it secrets of its own ({PERMISSIONS_DOCS})",
        )
    policy = machine_policy(
        account=account,
        region=provider.region,
        role=profile_name,
        bucket=bucket or "STORE-BUCKET",
        prefix=prefix,
        log_group=provider.options.log_group,
        secrets_prefix=provider.options.secrets_prefix,
    )
    # A statement whose condition names the calling instance (${ec2:SourceInstanceARN}) holds only for an
    # instance's own session: a simulation of the role, with no instance behind it, cannot meet it.
    statements = [s for s in policy["Statement"] if "${" not in json.dumps(s.get("Condition", {}))]
    unsimulated = len(policy["Statement"]) - len(statements)
    missing = _simulate(provider, role["Arn"], statements)
    total = sum(len(_listed(s["Action"])) * len(_listed(s["Resource"])) for s in statements)
    finding = _permission_finding("machine permissions", f"role {role['RoleName']}", missing, total)
    if finding.ok and unsimulated:
        return Finding(finding.check, True, f"{finding.detail} ({unsimulated} per-instance statements not simulated)")
    if not finding.ok:
        fix = f"put machine_policy() on role {role['RoleName']} (--provision-infra does; {PERMISSIONS_DOCS})"
        return Finding(finding.check, False, f"{finding.detail}: {', '.join(missing)}", fix)
    return finding


def quota_of(instance_type: str) -> tuple[str, str]:
    """The Service Quotas code and name of the on-demand vCPU quota ``instance_type`` counts against.

    >>> quota_of("g5.xlarge")
    ('L-DB2E81BA', 'G and VT instances')
    >>> quota_of("m6i.large")[0]
    'L-1216C47A'
    """
    family = re.match(r"[a-z]+", instance_type)
    return VCPU_QUOTAS.get(family.group(0) if family else "", VCPU_QUOTAS["standard"])


def _quota(provider: AWSProvider, needs: Needs) -> Finding:
    from botocore.exceptions import ClientError

    code, name = quota_of(needs.instance_type.name)
    try:
        quota = provider.client("service-quotas").get_service_quota(ServiceCode="ec2", QuotaCode=code)["Quota"]
    except ClientError as error:  # not served (an account without Service Quotas, a partition) or refused
        attributes = provider.client("ec2").describe_account_attributes(AttributeNames=["max-instances"])["AccountAttributes"]
        limit = int(attributes[0]["AttributeValues"][0]["AttributeValue"]) if attributes else 0
        detail = f"Service Quotas: {error_code(error)}; EC2 allows {limit} instances (vCPU quota unread) for {needs.source}"
        fix = "" if limit >= 1 else "ask AWS for an instance limit increase"
        return Finding("vCPU quota", limit >= 1, detail, fix)
    limit = int(quota["Value"])
    detail = f"{name}: {limit} vCPUs, {needs.cpu} needed ({needs.source})"
    if limit >= needs.cpu:
        return Finding("vCPU quota", True, detail)
    fix = f"aws service-quotas request-service-quota-increase --service-code ec2 --quota-code {code} --desired-value {needs.cpu}"
    return Finding("vCPU quota", False, detail, fix)


def _network(provider: AWSProvider) -> Finding:
    ec2 = provider.client("ec2")
    vpc = provider.networking.vpc_id
    subnets = [subnet.id for subnet in provider.networking.subnets if subnet.id]  # those launches try
    public = [subnet.id for subnet in provider.networking.subnets if subnet.id and subnet.public]
    given = provider.options.subnet_id
    where = f"subnet {given}" if given else f"the subnets of {vpc}"
    if public:
        return Finding("network", True, f"{where}: {public[0]} gives machines public IPs")
    nat = _nat_route(ec2, vpc, subnets)
    if nat:
        return Finding("network", True, f"{where}: no public IPs, egress through NAT gateway {nat}")
    return Finding(
        "network",
        False,
        f"{where}: no public IPs and no route 0.0.0.0/0 to a NAT gateway: machines cannot reach PyPI or the store",
        "aws ec2 modify-subnet-attribute --map-public-ip-on-launch --subnet-id SUBNET, a NAT gateway, or subnet_id= of a public subnet",
    )


def _nat_route(ec2: Any, vpc: str, subnets: list[str]) -> str | None:
    """The NAT gateway the subnets' route tables (or the VPC's main one) send 0.0.0.0/0 to, if any."""
    tables = ec2.describe_route_tables(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["RouteTables"]
    for table in tables:
        associations = table.get("Associations", [])
        if any(a.get("SubnetId") in subnets or a.get("Main") for a in associations):
            for route in table.get("Routes", []):
                if route.get("DestinationCidrBlock") == "0.0.0.0/0" and route.get("NatGatewayId"):
                    return route["NatGatewayId"]
    return None


def _bucket(provider: AWSProvider, store: str | None, bucket: str) -> Finding:
    from botocore.exceptions import ClientError

    if not bucket:
        return Finding(
            "store bucket",
            False,
            f"the store is {store or 'not set'}, which aws machines cannot read",
            "set PREFECT_REMOTE_STORE=s3://BUCKET/PREFIX (--provision-infra makes one)",
        )
    try:
        provider.client("s3").head_bucket(Bucket=bucket)
    except ClientError as error:
        code = error_code(error)
        if code in ("404", "NoSuchBucket"):
            return Finding("store bucket", False, f"no bucket {bucket!r}", f"aws s3 mb s3://{bucket} (or --provision-infra makes it)")
        return Finding(
            "store bucket", False, f"bucket {bucket!r}: {code}", f"grant s3:ListBucket on arn:aws:s3:::{bucket} ({PERMISSIONS_DOCS})"
        )
    return Finding("store bucket", True, f"{store} reachable")
