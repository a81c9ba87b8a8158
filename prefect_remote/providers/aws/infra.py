"""What the aws provider's machines need in the user's account, set up once and torn down again.

:func:`provision` (run by ``prefect work-pool create --type remote:push --provision-infra`` when the
provider is aws) makes, or finds when they exist:

- the software store's S3 bucket (``PREFECT_REMOTE_STORE`` if it is ``s3://…``, else the pool's own
  folder :func:`default_store`, ``s3://prefect-remote-<account>-<region>/store/<pool key>``), public
  access blocked, encrypted by default;
- the CloudWatch Logs group machines write to (``log_group``), kept :data:`LOG_RETENTION_DAYS` days;
- the security groups the provider keeps per VPC (its own code:
  :meth:`~prefect_remote.providers.aws.network.AWSNetwork.security_groups`);
- one IAM role and instance profile per pool and region, ``prefect-remote-<region>-<pool>``, with
  the least-privilege policy :func:`machine_policy` (the README quotes it), whose launch secrets
  are the pool's own: ``/prefect-remote/<pool key>/`` (:func:`pool_secrets_prefix`), a path no
  other provisioned pool's nests in or under (:func:`_check_secrets_apart`).

:func:`teardown` (``prefect-remote aws teardown``) removes them again. The role's tags record what
it was provisioned with (region, pool, store, log group), so teardown needs nothing but AWS.

Every AWS refusal becomes an :class:`~prefect_remote.providers.aws.clients.AWSError` naming the
permission that is missing, and missing credentials say how to set them.

One cohesive thing over 500 lines: provisioning and its exact undoing, which must stay side by side
(what ``teardown`` removes is what ``provision`` records), with the machines' least-privilege policy.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prefect_remote.providers.aws.clients import AWSError, error_code, translated
from prefect_remote.providers.aws.options import SHARED_SECRETS_PREFIX
from prefect_remote.providers.aws.permissions import POLICY_NAME, ROLE_PREFIX, machine_policy, trust_policy
from prefect_remote.providers.aws.provider import ALIVE_STATES, AWSProvider
from prefect_remote.providers.aws.tags import LAUNCH_TAG, MANAGED_TAG
from prefect_remote.providers.base import TAG_PREFIX
from prefect_remote.providers.setup import Say, owns_store, pool_key, pool_store, removed

if TYPE_CHECKING:
    from botocore.client import BaseClient

LOG_RETENTION_DAYS = 30
# What a provisioned role's tags record, so that teardown finds everything from AWS alone.
REGION_TAG = TAG_PREFIX + "region"
POOL_TAG = TAG_PREFIX + "pool"
STORE_TAG = TAG_PREFIX + "store"
LOG_GROUP_TAG = TAG_PREFIX + "log-group"
SECRETS_PREFIX_TAG = TAG_PREFIX + "secrets-prefix"
_TAG_VALUE = re.compile(r"[^\w .:/=+\-@]")  # what IAM tag values may not hold


class TeardownRefused(AWSError):
    """Instances that use what teardown would remove are still running (``--force`` ends them)."""


# -- names and documents ---------------------------------------------------------------------------
def role_name(region: str, pool: str) -> str:
    """The IAM role (and instance profile) of ``pool``'s machines in ``region``: at most 64 characters
    of those IAM allows, made unique by a hash when the pool's name has to be cut.

    >>> role_name("us-east-2", "my pool")
    'prefect-remote-us-east-2-my-pool'
    """
    base = f"{ROLE_PREFIX}{region}-"
    slug = re.sub(r"[^A-Za-z0-9+=,.@_-]+", "-", pool).strip("-") or "pool"
    if len(base) + len(slug) > 64:
        slug = f"{slug[: 64 - len(base) - 9]}-{hashlib.sha256(pool.encode()).hexdigest()[:8]}"
    return base + slug


def default_bucket(account: str, region: str) -> str:
    """The bucket provisioning makes when ``PREFECT_REMOTE_STORE`` names no S3 store.

    >>> default_bucket("123456789012", "us-east-2")
    'prefect-remote-123456789012-us-east-2'
    """
    return f"prefect-remote-{account}-{region}"


def default_store(account: str, region: str, pool: str) -> str:
    """The store provisioning gives ``pool`` when ``PREFECT_REMOTE_STORE`` names no S3 store: a folder
    of its own (:func:`~prefect_remote.providers.setup.pool_store`) in the default bucket's ``store/``.

    >>> default_store("123456789012", "us-east-2", "ab")
    's3://prefect-remote-123456789012-us-east-2/store/ab-fb8e20fc'
    """
    return pool_store(f"s3://{default_bucket(account, region)}/store", pool)


def pool_secrets_prefix(pool: str) -> str:
    """The SSM path provisioning gives ``pool``'s launch secrets: its own, below the shared default, so
    that its role's policy covers no other pool's (no pool key begins another's: ``ab``, ``abc``).

    >>> pool_secrets_prefix("ab")
    '/prefect-remote/ab-fb8e20fc/'
    """
    return f"{SHARED_SECRETS_PREFIX}{pool_key(pool)}/"


def prefixes_overlap(first: str, second: str) -> bool:
    """Whether one SSM path holds the other (a policy's ``parameter<prefix>*`` covers every path below it).

    >>> prefixes_overlap("/prefect-remote/", "/prefect-remote/ab-fb8e20fc/"), prefixes_overlap("/a/b/", "/a/bc/")
    (True, False)
    """
    return first.startswith(second) or second.startswith(first)


def _tag_value(value: str) -> str:
    return _TAG_VALUE.sub("_", value)[:256]


def _tags(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": key, "Value": _tag_value(value)} for key, value in tags.items()]


# -- provisioning ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class AWSSetup:
    """What :func:`provision` made or found for one pool."""

    account: str
    region: str
    role: str | None  # None: the pool uses an instance profile of the user's own
    instance_profile: str | None
    store: str
    log_group: str
    security_groups: tuple[str, ...]
    secrets_prefix: str = SHARED_SECRETS_PREFIX

    def block_fields(self) -> dict[str, str | None]:
        """The provider block's fields that record this setup, so that later runs use it."""
        return {
            "region": self.region,
            "instance_profile": self.instance_profile,
            "log_group": self.log_group,
            "secrets_prefix": self.secrets_prefix,
            "store": self.store,
        }


def provision(provider: AWSProvider, pool: str, store: str | None = None, say: Say = print) -> AWSSetup:
    """Makes (or finds) the bucket, the log group, the security groups and ``pool``'s role and
    instance profile for ``provider``'s region, printing each through ``say``. ``store`` is the
    software store to use (an ``s3://`` URL; anything else means ``pool``'s own folder in the default
    bucket, :func:`default_store`, which its role alone may read). Idempotent:
    a second run finds everything and changes nothing (the role's policy is brought up to date)."""
    from prefect_remote.software.s3store import S3Store
    from prefect_remote.software.stores import open_store

    account, partition = provider.account
    region = provider.region
    say(f"AWS account {account}, region {region}")
    if not (store or "").startswith("s3://"):
        chosen = default_store(account, region, pool)
        if store:
            say(f"PREFECT_REMOTE_STORE={store} is not in S3, where machines read software environments: using {chosen}")
        store = chosen
    s3store = open_store(store)
    assert isinstance(s3store, S3Store)
    _ensure_bucket(provider.client("s3"), s3store.bucket, region, say)
    say(f"software environments store: {s3store.url}")
    _ensure_log_group(provider.client("logs"), provider.options.log_group, say)
    groups = _ensure_security_groups(provider, say)
    options = provider.options
    name = role_name(region, pool)
    secrets_prefix = options.secrets_prefix
    if options.instance_profile and options.instance_profile != name:
        say(f"machines use your instance profile {options.instance_profile} (no role made; docs/providers/aws.md quotes its policy)")
        role, profile = None, options.instance_profile
    else:
        if secrets_prefix == SHARED_SECRETS_PREFIX:  # none chosen (or a pool provisioned before pools had their own)
            secrets_prefix = pool_secrets_prefix(pool)
        _check_secrets_apart(provider.client("iam"), region, name, pool, secrets_prefix)
        policy = machine_policy(
            account=account,
            region=region,
            role=name,
            bucket=s3store.bucket,
            prefix=s3store.prefix,
            log_group=options.log_group,
            secrets_prefix=secrets_prefix,
            partition=partition,
        )
        tags = {
            MANAGED_TAG: "true",
            REGION_TAG: region,
            POOL_TAG: pool,
            STORE_TAG: s3store.url,
            LOG_GROUP_TAG: options.log_group,
            SECRETS_PREFIX_TAG: secrets_prefix,
        }
        _ensure_role(provider.client("iam"), name, policy, tags, say)
        say(f"launch secrets: SSM parameters under {secrets_prefix} (this pool's machines read no other's)")
        role, profile = name, name
    return AWSSetup(account, region, role, profile, s3store.url, options.log_group, tuple(groups), secrets_prefix)


def _check_secrets_apart(iam: BaseClient, region: str, role: str, pool: str, prefix: str) -> None:
    """Refuses ``prefix`` for ``pool`` when it holds, or lies in, another provisioned pool's secrets
    path in ``region``: one role's ``parameter<prefix>*`` would cover the other's secrets (Prefect API
    keys, clusters' TLS keys), whichever of the two was provisioned first."""
    for name, tags in provisioned_roles(iam, region).items():
        theirs = tags.get(SECRETS_PREFIX_TAG)
        if name == role or theirs is None or not prefixes_overlap(prefix, theirs):
            continue
        other = tags.get(POOL_TAG, name)
        if theirs == SHARED_SECRETS_PREFIX:
            raise AWSError(
                f"pool {other!r} (role {name}) was provisioned with the shared secrets prefix {theirs}, under which its machines may "
                f"read every pool's launch secrets, pool {pool!r}'s ({prefix}) included: provision pool {other!r} again first "
                f"(`prefect work-pool create {other!r} --type remote:push --provision-infra --overwrite`, with no secrets_prefix in its "
                f"block's options), which gives it its own, {pool_secrets_prefix(other)}; then provision {pool!r}"
            )
        raise AWSError(
            f"secrets_prefix {prefix} of pool {pool!r} {'holds' if theirs.startswith(prefix) else 'lies in'} pool {other!r}'s {theirs} "
            f"(role {name}): each pool's machines could read the other's launch secrets. Give pool {pool!r} a path apart (drop "
            f"secrets_prefix from its block's options for its own, {pool_secrets_prefix(pool)}), and provision again"
        )


def _ensure_bucket(s3: BaseClient, bucket: str, region: str, say: Say) -> None:
    from botocore.exceptions import ClientError

    purpose = f"make the store's bucket {bucket}"
    with translated("s3", purpose):
        try:
            s3.head_bucket(Bucket=bucket)
            say(f"found S3 bucket {bucket}")
            return
        except ClientError as error:
            if error_code(error) in ("403", "AccessDenied"):
                raise AWSError(
                    f"S3 bucket {bucket} exists but this identity may not use it (it may belong to another account, or "
                    f"s3:ListBucket is missing); set PREFECT_REMOTE_STORE=s3://<a bucket of yours>/<prefix> and provision again"
                ) from None
            if error_code(error) not in ("404", "NoSuchBucket", "NotFound"):
                raise
        location = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
        try:
            s3.create_bucket(Bucket=bucket, **location)
        except ClientError as error:
            if error_code(error) != "BucketAlreadyOwnedByYou":  # made a moment ago by another provisioning
                raise
        s3.put_public_access_block(
            Bucket=bucket,
            PublicAccessBlockConfiguration={
                "BlockPublicAcls": True,
                "IgnorePublicAcls": True,
                "BlockPublicPolicy": True,
                "RestrictPublicBuckets": True,
            },
        )
        s3.put_bucket_encryption(
            Bucket=bucket, ServerSideEncryptionConfiguration={"Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]}
        )
        s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": _tags({MANAGED_TAG: "true"})})
    say(f"created S3 bucket {bucket} in {region} (public access blocked, encrypted by default)")


def _ensure_log_group(logs: BaseClient, name: str, say: Say) -> None:
    with translated("logs", f"make the machines' log group {name}"):
        try:
            logs.create_log_group(logGroupName=name, tags={MANAGED_TAG: "true"})
        except logs.exceptions.ResourceAlreadyExistsException:
            say(f"found log group {name}")
            return
        logs.put_retention_policy(logGroupName=name, retentionInDays=LOG_RETENTION_DAYS)
    say(f"created log group {name} (events kept {LOG_RETENTION_DAYS} days)")


def _managed_groups(ec2: BaseClient, vpc: str | None = None) -> list[dict[str, Any]]:
    """The security groups the provider made (tagged ``prefect-remote:managed``), in ``vpc`` or all."""
    filters = [{"Name": "tag-key", "Values": [MANAGED_TAG]}] + ([{"Name": "vpc-id", "Values": [vpc]}] if vpc else [])
    pages = ec2.get_paginator("describe_security_groups").paginate(Filters=filters)
    return [group for page in pages for group in page["SecurityGroups"] if group["GroupName"].startswith(ROLE_PREFIX)]


def _ensure_security_groups(provider: AWSProvider, say: Say) -> list[str]:
    ec2 = provider.client("ec2")
    with translated("ec2", "make the machines' security groups"):
        if provider.options.security_group_ids:
            say(f"machines use your security groups {', '.join(provider.options.security_group_ids)}")
            return list(provider.options.security_group_ids)
        before = {group["GroupId"] for group in _managed_groups(ec2, provider.vpc_id)}
        ids = provider.networking.security_groups(None, runs_inside=provider.runs_inside)  # the same groups its launches use
        for group in ec2.describe_security_groups(GroupIds=ids)["SecurityGroups"]:
            say(f"{'found' if group['GroupId'] in before else 'created'} security group {group['GroupName']} ({group['GroupId']})")
    return ids


def _ensure_role(iam: BaseClient, name: str, policy: dict[str, Any], tags: dict[str, str], say: Say) -> None:
    with translated("iam", f"make the machines' role {name}"):
        try:
            found = {tag["Key"]: tag["Value"] for tag in iam.get_role(RoleName=name)["Role"].get("Tags", [])}  # GetRole returns them
            if found.get(MANAGED_TAG) != "true":
                raise AWSError(
                    f"IAM role {name} exists and prefect-remote did not make it (no {MANAGED_TAG} tag): it is left as it is; "
                    "give the pool another name, or remove that role"
                )
            if found.get(POOL_TAG, _tag_value(tags[POOL_TAG])) != _tag_value(tags[POOL_TAG]):
                raise AWSError(
                    f"IAM role {name} is pool {found[POOL_TAG]!r}'s (pool names that differ only in characters IAM does not "
                    f"take share a role name): give pool {tags[POOL_TAG]!r} another name"
                )
            say(f"found IAM role {name}")
        except iam.exceptions.NoSuchEntityException:
            iam.create_role(
                RoleName=name,
                AssumeRolePolicyDocument=json.dumps(trust_policy()),
                Tags=_tags(tags),
                Description="prefect-remote machines: read their secrets and software, ship logs, end themselves, launch cluster workers",
            )
            say(f"created IAM role {name} (assumed by EC2)")
        iam.tag_role(RoleName=name, Tags=_tags(tags))  # what it is for, as of this provisioning
        try:
            current = iam.get_role_policy(RoleName=name, PolicyName=POLICY_NAME)["PolicyDocument"]
        except iam.exceptions.NoSuchEntityException:
            current = None
        if current != policy:
            iam.put_role_policy(RoleName=name, PolicyName=POLICY_NAME, PolicyDocument=json.dumps(policy))
            say(f"{'set' if current is None else 'updated'} its least-privilege policy {POLICY_NAME}")
        try:
            roles = iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]["Roles"]
            say(f"found instance profile {name}")
        except iam.exceptions.NoSuchEntityException:
            iam.create_instance_profile(InstanceProfileName=name, Tags=_tags({MANAGED_TAG: "true", REGION_TAG: tags[REGION_TAG]}))
            roles = []
            say(f"created instance profile {name} (EC2 accepts a new one after about ten seconds)")
        if name not in {role["RoleName"] for role in roles}:
            iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)


# -- teardown -------------------------------------------------------------------------------------
def provisioned_roles(iam: BaseClient, region: str) -> dict[str, dict[str, str]]:
    """The roles provisioning made for ``region``, by name, with their tags (what each was made for)."""
    found: dict[str, dict[str, str]] = {}
    with translated("iam", "find the roles provisioning made"):
        for page in iam.get_paginator("list_roles").paginate():
            for role in page["Roles"]:
                if role["RoleName"].startswith(ROLE_PREFIX):
                    tags = {tag["Key"]: tag["Value"] for tag in iam.list_role_tags(RoleName=role["RoleName"])["Tags"]}
                    if tags.get(MANAGED_TAG) == "true" and tags.get(REGION_TAG) == region:
                        found[role["RoleName"]] = tags
    return found


def teardown(
    region: str | None = None, pool: str | None = None, *, force: bool = False, delete_bucket: bool = False, say: Say = print
) -> list[str]:
    """Removes what :func:`provision` made in ``region`` (default: boto3's) and returns what it removed.

    With ``pool``, that pool's role and instance profile and the objects of its own store folder
    (the one :func:`default_store` chose; a store given is kept), plus the shared resources if no
    other pool's role is left; without, everything: every provisioned role and profile of the region, the
    security groups the provider made (``prefect-remote-<vpc>``, ``prefect-remote-<vpc>-dask-from-*``),
    the log groups, launch secrets left behind, and with ``delete_bucket`` the buckets provisioning
    created (they hold software environments). Refuses with :class:`TeardownRefused` while instances
    that use any of it run, unless ``force``, which terminates them first. Idempotent.
    """
    provider = AWSProvider(region=region)
    region = provider.region
    iam, ec2 = provider.client("iam"), provider.client("ec2")
    roles = provisioned_roles(iam, region)
    mine = {name: tags for name, tags in roles.items() if pool is None or tags.get(POOL_TAG) == _tag_value(pool)}
    if pool is not None and not mine:
        say(f"nothing to remove: no role was provisioned for pool {pool!r} in {region}")
        return []
    others = sorted(tags.get(POOL_TAG, name) for name, tags in roles.items() if name not in mine)
    shared = not others
    account, partition = provider.account
    profiles = {f"arn:{partition}:iam::{account}:instance-profile/{name}" for name in mine}
    _end_instances(provider, None if shared else profiles, force, say)
    done: list[str] = []
    if pool is not None:  # the pool's own store folder, if provisioning chose it (one given is the user's)
        owned = sorted({tags[STORE_TAG] for tags in mine.values() if owns_store(tags.get(STORE_TAG, ""), pool)})
        done += _remove_store_folders(provider.client("s3"), owned, say)
    prefixes = {tags[SECRETS_PREFIX_TAG] for tags in mine.values() if SECRETS_PREFIX_TAG in tags}
    if shared:
        prefixes.add(provider.options.secrets_prefix)
    else:  # a pool's own secrets only: a path another pool's lies in (the shared one, before pools had their own) is kept
        theirs = {tags[SECRETS_PREFIX_TAG] for name, tags in roles.items() if name not in mine and SECRETS_PREFIX_TAG in tags}
        kept = {prefix for prefix in prefixes if any(prefixes_overlap(prefix, other) for other in theirs)}
        if kept:
            say(f"kept the launch secrets under {', '.join(sorted(kept))}: other pools' lie there too")
        prefixes -= kept
    done += _remove_leftover_secrets(provider.client("ssm"), sorted(prefixes), say)
    if shared:
        done += _remove_security_groups(ec2, say)
        log_groups = {tags[LOG_GROUP_TAG] for tags in mine.values() if LOG_GROUP_TAG in tags} | {provider.options.log_group}
        done += _remove_log_groups(provider.client("logs"), sorted(log_groups), say)
        stores = sorted({tags[STORE_TAG] for tags in mine.values() if STORE_TAG in tags} | {f"s3://{default_bucket(account, region)}"})
        done += _remove_buckets(provider.client("s3"), stores, delete_bucket, say)
    else:
        say(f"kept the security groups, log group and bucket: pools {', '.join(others)} still use them")
    for name in sorted(mine):  # last: the role's tags are the record of everything above
        done += _remove_role(iam, name, say)
    if not done:
        say(f"nothing to remove in {region}")
    return done


def _end_instances(provider: AWSProvider, profiles: set[str] | None, force: bool, say: Say) -> None:
    """Refuses (or, with ``force``, ends and waits for) live prefect-remote instances: all of them,
    or those with one of ``profiles``."""
    with translated("ec2", "find prefect-remote's instances"):
        instances = provider.clients.instances(
            Filters=[{"Name": "tag-key", "Values": [LAUNCH_TAG]}, {"Name": "instance-state-name", "Values": list(ALIVE_STATES)}]
        )
    if profiles is not None:
        instances = [i for i in instances if i.get("IamInstanceProfile", {}).get("Arn") in profiles]
    if not instances:
        return
    lines = [
        f"  {i['InstanceId']}  {i['State']['Name']:<8} {i['InstanceType']:<12} "
        f"{i.get('IamInstanceProfile', {}).get('Arn', 'no instance profile').rsplit('/', 1)[-1]}"
        for i in instances
    ]
    ids = [i["InstanceId"] for i in instances]
    if not force:
        raise TeardownRefused(
            f"{len(ids)} prefect-remote instance(s) still use what teardown would remove in {provider.region}:\n"
            + "\n".join(lines)
            + "\nend them first (`prefect-remote machines rm --all --everyone --provider aws`), or pass --force to terminate them"
        )
    with translated("ec2", "terminate prefect-remote's instances (--force)"):
        provider.terminate(ids, reason="prefect-remote aws teardown --force")
        say(f"terminating {len(ids)} instance(s):\n" + "\n".join(lines))
        provider.client("ec2").get_waiter("instance_terminated").wait(InstanceIds=ids, WaiterConfig={"Delay": 5, "MaxAttempts": 120})
    say(f"terminated {', '.join(ids)}")


def _remove_security_groups(ec2: BaseClient, say: Say) -> list[str]:
    from botocore.exceptions import ClientError

    done: list[str] = []
    with translated("ec2", "remove the provider's security groups"):
        # The Dask ingress groups first: nothing refers to them, while they may sit beside the shared one.
        for group in sorted(_managed_groups(ec2), key=lambda g: "-dask-from-" not in g["GroupName"]):
            try:
                ec2.delete_security_group(GroupId=group["GroupId"])
            except ClientError as error:
                if error_code(error) == "InvalidGroup.NotFound":
                    continue
                if error_code(error) == "DependencyViolation":
                    raise AWSError(
                        f"security group {group['GroupName']} ({group['GroupId']}) is still in use (network interfaces of "
                        "instances that just ended are released within minutes, or a resource of yours uses it); run teardown again shortly"
                    ) from None
                raise
            removed(done, f"security group {group['GroupName']} ({group['GroupId']})", say)
    return done


def _remove_log_groups(logs: BaseClient, names: list[str], say: Say) -> list[str]:
    done: list[str] = []
    with translated("logs", "remove the machines' log group"):
        for name in names:
            found = [g for g in logs.describe_log_groups(logGroupNamePrefix=name)["logGroups"] if g["logGroupName"] == name]
            if not found:
                continue
            arn = found[0].get("logGroupArn") or found[0]["arn"].removesuffix(":*")
            if logs.list_tags_for_resource(resourceArn=arn).get("tags", {}).get(MANAGED_TAG) != "true":
                say(f"kept log group {name}: provisioning did not make it")
                continue
            try:
                logs.delete_log_group(logGroupName=name)
            except logs.exceptions.ResourceNotFoundException:
                continue
            removed(done, f"log group {name}", say)
    return done


def _remove_leftover_secrets(ssm: BaseClient, prefixes: list[str], say: Say) -> list[str]:
    """Launch secrets no instance will read any more (their machines ended without anyone noticing):
    parameters named ``<prefix>launch-<12 hex digits>`` and tagged with that launch, as a launch makes
    them; a parameter of yours under the prefix is never one."""
    names = []
    with translated("ssm", "remove launch secrets left behind"):
        for prefix in prefixes:
            pages = ssm.get_paginator("get_parameters_by_path").paginate(Path=prefix.rstrip("/") or "/", Recursive=False)
            for name in (p["Name"] for page in pages for p in page["Parameters"]):
                launch = name.removeprefix(prefix)
                if name.startswith(prefix) and re.fullmatch(r"launch-[0-9a-f]{12}", launch):
                    tags = ssm.list_tags_for_resource(ResourceType="Parameter", ResourceId=name)["TagList"]
                    if {t["Key"]: t["Value"] for t in tags}.get(LAUNCH_TAG) == launch:
                        names.append(name)
        for start in range(0, len(names), 10):  # DeleteParameters takes ten names a call
            ssm.delete_parameters(Names=names[start : start + 10])
    if names:
        say(f"removed {len(names)} launch secret(s) left behind ({', '.join(names)})")
    return [f"SSM parameter {name}" for name in names]


def _made_bucket(s3: BaseClient, bucket: str) -> bool | None:
    """Whether provisioning made ``bucket`` (its ``prefect-remote:managed`` tag); None: there is no such bucket."""
    from botocore.exceptions import ClientError

    try:
        tags = {t["Key"]: t["Value"] for t in s3.get_bucket_tagging(Bucket=bucket)["TagSet"]}
    except ClientError as error:
        if error_code(error) == "NoSuchBucket":
            return None
        if error_code(error) != "NoSuchTagSet":
            raise
        tags = {}
    return tags.get(MANAGED_TAG) == "true"


def _delete_versions(s3: BaseClient, bucket: str, prefix: str = "") -> int:
    """Deletes every version (and delete marker) of the objects under ``prefix`` in ``bucket``, so
    that nothing of them stays behind in a bucket that keeps versions; returns how many objects were."""
    count = 0
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
        versions = page.get("Versions", [])
        objects = [{"Key": o["Key"], "VersionId": o["VersionId"]} for o in versions + page.get("DeleteMarkers", [])]
        if objects:  # a page holds at most 1000, what DeleteObjects takes
            s3.delete_objects(Bucket=bucket, Delete={"Objects": objects, "Quiet": True})
            count += sum(1 for o in versions if o.get("IsLatest"))
    return count


def _remove_store_folders(s3: BaseClient, stores: list[str], say: Say) -> list[str]:
    """Deletes every object of ``stores`` (pools' own folders, ``s3://bucket/store/<pool key>``), with
    its earlier versions, in the buckets provisioning made; the buckets and everything else in them stay."""
    done: list[str] = []
    for url in stores:
        bucket, prefix = url.removeprefix("s3://").rstrip("/").split("/", 1)
        with translated("s3", f"remove the pool's store {url}"):
            if not _made_bucket(s3, bucket):
                continue
            count = _delete_versions(s3, bucket, f"{prefix}/")
        if count:
            removed(done, f"the pool's store {url}", say, f" ({count} object(s))")
    return done


def _remove_buckets(s3: BaseClient, stores: list[str], delete: bool, say: Say) -> list[str]:
    """Deletes, emptied, the stores' buckets that provisioning made (tagged ``prefect-remote:managed``)."""
    done: list[str] = []
    for bucket in sorted({store.removeprefix("s3://").split("/", 1)[0] for store in stores}):
        with translated("s3", f"remove the store's bucket {bucket}"):
            made = _made_bucket(s3, bucket)
            if made is None:
                continue
            if not made:
                say(f"kept S3 bucket {bucket}: provisioning did not make it")
                continue
            if not delete:
                say(f"kept S3 bucket {bucket}: it holds software environments (--delete-bucket removes it)")
                continue
            _delete_versions(s3, bucket)
            s3.delete_bucket(Bucket=bucket)
        removed(done, f"S3 bucket {bucket}", say, " and everything in it")
    return done


def _remove_role(iam: BaseClient, name: str, say: Say) -> list[str]:
    done: list[str] = []
    with translated("iam", f"remove the machines' role {name}"):
        for profile in iam.list_instance_profiles_for_role(RoleName=name)["InstanceProfiles"]:
            iam.remove_role_from_instance_profile(InstanceProfileName=profile["InstanceProfileName"], RoleName=name)
        try:
            iam.delete_instance_profile(InstanceProfileName=name)
            removed(done, f"instance profile {name}", say)
        except iam.exceptions.NoSuchEntityException:
            pass
        for policy in iam.list_role_policies(RoleName=name)["PolicyNames"]:
            iam.delete_role_policy(RoleName=name, PolicyName=policy)
        for policy in iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]:
            iam.detach_role_policy(RoleName=name, PolicyArn=policy["PolicyArn"])
        iam.delete_role(RoleName=name)
    removed(done, f"IAM role {name}", say, " and its policy")
    return done
