"""What the aws provider needs from IAM, in one place: the permissions of the identity that launches,
of the one that provisions, of the one that tears down, and the machines' own policy
(:func:`machine_policy`), which provisioning puts on their role.

The docs (docs/providers/aws.md) list exactly these, and the sandbox AWS enforces exactly these (a
test compares the docs' lists with this module); a refusal at run time names the permission and the
docs page (:func:`~prefect_remote.providers.aws.clients.translated`).
"""

from __future__ import annotations

from typing import Any

from prefect_remote.providers.aws.runtime import EXIT_CODE_TAG, LEASE_TAG, REASON_TAG
from prefect_remote.providers.aws.tags import CONTROLLER_TAG, LAUNCH_TAG, PARENT_TAG

ROLE_PREFIX = "prefect-remote-"
POLICY_NAME = "prefect-remote-machines"  # the machines' role's inline policy
MACHINE_ROLES = ROLE_PREFIX + "*"  # the roles provisioning makes, which the launcher passes to EC2
# The tags a machine writes on instances after launch: its owner's lease, and why it ended.
MACHINE_TAG_KEYS = (LEASE_TAG, REASON_TAG, EXIT_CODE_TAG)

# What `prefect-remote doctor` reads beyond launching: the launcher's and the machines' permissions
# (simulated), the machines' role (from their instance profile), the vCPU quotas (EC2's account
# attributes when Service Quotas does not answer) and the subnet's routes.
DOCTOR_PERMISSIONS = (
    "iam:SimulatePrincipalPolicy",
    "iam:GetInstanceProfile",
    "servicequotas:GetServiceQuota",
    "ec2:DescribeAccountAttributes",
    "ec2:DescribeRouteTables",
)
# The launcher's permissions on every resource: launch, watch and end instances (and the security
# groups they use), keep each launch's secrets (and sweep those left behind), read machines' logs,
# and prices (the bundled table stands in when the Pricing API refuses); and what doctor reads.
LAUNCHER_PERMISSIONS = (
    "ec2:RunInstances",
    "ec2:CreateTags",
    "ec2:DescribeInstances",
    "ec2:TerminateInstances",
    "ec2:DescribeInstanceTypes",
    "ec2:DescribeImages",
    "ec2:DescribeVpcs",
    "ec2:DescribeSubnets",
    "ec2:CreateSecurityGroup",
    "ec2:DescribeSecurityGroups",
    "ec2:AuthorizeSecurityGroupIngress",
    "ssm:PutParameter",
    "ssm:DeleteParameter",
    "ssm:GetParameter",
    "ssm:GetParametersByPath",
    "ssm:AddTagsToResource",
    "logs:GetLogEvents",
    "pricing:GetProducts",
    *DOCTOR_PERMISSIONS,
)
# The launcher's permissions on the software store: its objects (and its bucket, for listing).
STORE_OBJECT_PERMISSIONS = ("s3:GetObject", "s3:PutObject", "s3:DeleteObject")
STORE_BUCKET_PERMISSIONS = ("s3:ListBucket",)
# The launcher passes the machines' role to EC2 (and nothing else).
PASS_ROLE = "iam:PassRole"

# What --provision-infra needs, on every resource.
PROVISIONING_PERMISSIONS = (
    "s3:CreateBucket",
    "s3:ListBucket",
    "s3:PutBucketPublicAccessBlock",
    "s3:PutEncryptionConfiguration",
    "s3:PutBucketTagging",
    "logs:CreateLogGroup",
    "logs:TagResource",
    "logs:PutRetentionPolicy",
    "ec2:DescribeVpcs",
    "ec2:DescribeSecurityGroups",
    "ec2:CreateSecurityGroup",
    "ec2:CreateTags",
    "ec2:AuthorizeSecurityGroupIngress",
    "iam:ListRoles",  # other pools' roles: their secrets paths, which this pool's must not nest in or under
    "iam:ListRoleTags",
    "iam:GetRole",
    "iam:CreateRole",
    "iam:TagRole",
    "iam:GetRolePolicy",
    "iam:PutRolePolicy",
    "iam:GetInstanceProfile",
    "iam:CreateInstanceProfile",
    "iam:TagInstanceProfile",
    "iam:AddRoleToInstanceProfile",
    "iam:PassRole",  # AddRoleToInstanceProfile: "the caller must be granted the PassRole permission on the role"
)

# What `prefect-remote aws teardown` needs, on every resource; with --delete-bucket and --force, more.
TEARDOWN_PERMISSIONS = (
    "iam:ListRoles",
    "iam:ListRoleTags",
    "iam:ListInstanceProfilesForRole",
    "iam:RemoveRoleFromInstanceProfile",
    "iam:DeleteInstanceProfile",
    "iam:ListRolePolicies",
    "iam:DeleteRolePolicy",
    "iam:ListAttachedRolePolicies",
    "iam:DeleteRole",
    "ec2:DescribeInstances",
    "ec2:DescribeSecurityGroups",
    "ec2:DeleteSecurityGroup",
    "logs:DescribeLogGroups",
    "logs:ListTagsForResource",
    "logs:DeleteLogGroup",
    "ssm:GetParametersByPath",
    "ssm:ListTagsForResource",
    "ssm:DeleteParameters",
    "s3:GetBucketTagging",
    "s3:ListBucketVersions",  # a pool's own store folder: its objects, every version, are deleted with the pool
    "s3:DeleteObjectVersion",
)
TEARDOWN_DELETE_BUCKET_PERMISSIONS = ("s3:DeleteBucket",)
TEARDOWN_FORCE_PERMISSIONS = ("ec2:TerminateInstances", "ec2:CreateTags")


def _policy(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def launcher_policy(*, account: str, bucket: str, prefix: str, partition: str = "aws") -> dict[str, Any]:
    """The launcher's permissions as an identity policy: :data:`LAUNCHER_PERMISSIONS` on every
    resource, the store's objects and bucket (``bucket`` may hold a wildcard: ``prefect-remote-*``),
    and ``iam:PassRole`` on the machines' roles, to EC2 only."""
    store_bucket = f"arn:{partition}:s3:::{bucket}"
    objects = f"{store_bucket}/{prefix}/*" if prefix else f"{store_bucket}/*"
    return _policy(
        {"Sid": "Launch", "Effect": "Allow", "Action": list(LAUNCHER_PERMISSIONS), "Resource": "*"},
        {"Sid": "UseSoftwareStore", "Effect": "Allow", "Action": list(STORE_OBJECT_PERMISSIONS), "Resource": objects},
        {
            "Sid": "ListSoftwareStore",
            "Effect": "Allow",
            "Action": list(STORE_BUCKET_PERMISSIONS),
            "Resource": store_bucket,
        },
        {
            "Sid": "PassMachineRoles",
            "Effect": "Allow",
            "Action": PASS_ROLE,
            "Resource": f"arn:{partition}:iam::{account}:role/{MACHINE_ROLES}",
            "Condition": {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}},
        },
    )


def provisioning_policy() -> dict[str, Any]:
    """What provisioning needs, as an identity policy."""
    return _policy({"Sid": "Provision", "Effect": "Allow", "Action": list(PROVISIONING_PERMISSIONS), "Resource": "*"})


def teardown_policy(*, delete_bucket: bool = True, force: bool = True) -> dict[str, Any]:
    """What teardown needs (with ``--delete-bucket`` and ``--force`` by default), as an identity policy."""
    actions = [
        *TEARDOWN_PERMISSIONS,
        *(TEARDOWN_DELETE_BUCKET_PERMISSIONS if delete_bucket else ()),
        *(TEARDOWN_FORCE_PERMISSIONS if force else ()),
    ]
    return _policy({"Sid": "TearDown", "Effect": "Allow", "Action": list(dict.fromkeys(actions)), "Resource": "*"})


def trust_policy() -> dict[str, Any]:
    """Who may assume the machines' role: EC2, for the instances it is attached to."""
    return {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}],
    }


def machine_policy(
    *,
    account: str,
    region: str,
    role: str,
    bucket: str,
    prefix: str,
    log_group: str,
    secrets_prefix: str = "/prefect-remote/",
    partition: str = "aws",
) -> dict[str, Any]:
    """The inline policy of the machines' role ``role`` (its instance profile has the same name):
    what a machine does (read its launch's secrets and software, ship its log, tag and end itself)
    and what a cluster's scheduler machine does with its workers (launch them with this same
    profile, renew their leases, end them, and keep their launches' secrets), which is also what a
    flow run that scales out does with its cluster's scheduler and first workers. Neither makes or
    changes security groups: from inside the VPC they need the internal group only, which exists
    whole by then. The README quotes it.

    A machine may end and tag (its lease, why it ended) only itself, the instances it launched (their
    ``prefect-remote:parent`` tag names it), and a cluster's first workers if it is their scheduler
    (their ``prefect-remote:controller`` tag names it), those two only with this pool's profile; and
    it may launch only instances that name it as their parent, with this pool's profile. So two flow
    runs, or two clusters, of one pool cannot touch each other's machines, nor any pool another's.
    Its launch secrets are the pool's own: ``secrets_prefix`` (provisioning gives each pool its own).
    """
    ec2 = f"arn:{partition}:ec2:{region}:{account}"
    ssm = f"arn:{partition}:ssm:{region}:{account}:parameter{secrets_prefix}*"
    profile = f"arn:{partition}:iam::{account}:instance-profile/{role}"
    objects = f"arn:{partition}:s3:::{bucket}/{prefix}/*" if prefix else f"arn:{partition}:s3:::{bucket}/*"
    listing: dict[str, Any] = {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": f"arn:{partition}:s3:::{bucket}"}
    if prefix:
        listing["Condition"] = {"StringLike": {"s3:prefix": [prefix, f"{prefix}/*"]}}
    # ec2:SourceInstanceARN is the instance whose role credentials signed the request: a global condition
    # key, present only for an instance's own role session (EC2 User Guide, "Condition keys":
    # ec2:SourceInstanceARN), and a policy variable (IAM User Guide, "IAM policy elements: Variables and
    # tags", request information for policy variables). IAM refuses a bare variable as a Resource ("must
    # be in ARN format"), so "itself" is the instance whose ARN, built from the target's ec2:InstanceID,
    # is the caller's. What a machine launched, or keeps for a cluster, names it in a tag.
    caller = "${ec2:SourceInstanceARN}"
    this_pool = {"ArnEquals": {"ec2:InstanceProfile": profile}}
    # aws:TagKeys: only the tags a machine writes after launch. TerminateInstances sets none, and
    # ForAllValues holds for a request without the key, so one statement covers both actions.
    machine_tags = {"ForAllValues:StringEquals": {"aws:TagKeys": list(MACHINE_TAG_KEYS)}}
    end_and_tag = ["ec2:TerminateInstances", "ec2:CreateTags"]
    statements: list[dict[str, Any]] = [
        {"Sid": "ReadLaunchSecrets", "Effect": "Allow", "Action": "ssm:GetParameter", "Resource": ssm},
        {"Sid": "ReadSoftwareStore", "Effect": "Allow", "Action": "s3:GetObject", "Resource": objects},
        {"Sid": "ListSoftwareStore", **listing},
        {
            "Sid": "ShipMachineLogs",
            "Effect": "Allow",
            "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
            "Resource": [
                f"arn:{partition}:logs:{region}:{account}:log-group:{log_group}",
                f"arn:{partition}:logs:{region}:{account}:log-group:{log_group}:*",
            ],
        },
        {
            "Sid": "ReadMachineLogs",
            "Effect": "Allow",
            "Action": "logs:GetLogEvents",
            "Resource": f"arn:{partition}:logs:{region}:{account}:log-group:{log_group}:log-stream:*",
        },
        {
            "Sid": "EndAndTagItself",
            "Effect": "Allow",
            "Action": end_and_tag,
            "Resource": f"{ec2}:instance/*",
            "Condition": {"ArnEquals": {"ec2:SourceInstanceARN": f"{ec2}:instance/${{ec2:InstanceID}}"}, **machine_tags},
        },
        {
            "Sid": "EndAndTagWhatItLaunched",
            "Effect": "Allow",
            "Action": end_and_tag,
            "Resource": f"{ec2}:instance/*",
            "Condition": {**this_pool, "StringEquals": {f"ec2:ResourceTag/{PARENT_TAG}": caller}, **machine_tags},
        },
        {
            "Sid": "EndAndTagWorkersItSchedules",
            "Effect": "Allow",
            "Action": end_and_tag,
            "Resource": f"{ec2}:instance/*",
            "Condition": {**this_pool, "StringEquals": {f"ec2:ResourceTag/{CONTROLLER_TAG}": caller}, **machine_tags},
        },
        {
            "Sid": "LaunchWorkersWithThisProfile",
            "Effect": "Allow",
            "Action": "ec2:RunInstances",
            "Resource": f"{ec2}:instance/*",
            "Condition": {
                **this_pool,
                "StringEquals": {f"aws:RequestTag/{PARENT_TAG}": caller},
                "Null": {f"aws:RequestTag/{LAUNCH_TAG}": "false"},
            },
        },
        {
            "Sid": "LaunchWorkersResources",
            "Effect": "Allow",
            "Action": "ec2:RunInstances",
            "Resource": [
                f"arn:{partition}:ec2:{region}::image/*",
                f"{ec2}:subnet/*",
                f"{ec2}:network-interface/*",
                f"{ec2}:security-group/*",
                f"{ec2}:volume/*",
                f"{ec2}:spot-instances-request/*",
            ],
        },
        {
            "Sid": "TagWorkersAtLaunch",
            "Effect": "Allow",
            "Action": "ec2:CreateTags",
            "Resource": [f"{ec2}:instance/*", f"{ec2}:volume/*"],
            "Condition": {"StringEquals": {"ec2:CreateAction": "RunInstances"}},
        },
        {
            "Sid": "PassThisRoleToWorkers",
            "Effect": "Allow",
            "Action": "iam:PassRole",
            "Resource": f"arn:{partition}:iam::{account}:role/{role}",
            "Condition": {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}},
        },
        {
            "Sid": "KeepWorkerLaunchSecrets",
            "Effect": "Allow",
            "Action": ["ssm:PutParameter", "ssm:DeleteParameter", "ssm:AddTagsToResource"],
            "Resource": ssm,
        },
        {
            "Sid": "ReadDefaultImages",
            "Effect": "Allow",
            "Action": "ssm:GetParameter",
            # AWS's public parameters of the default images: Amazon Linux 2023, the GPU one (DLAMI), and
            # for image= the ECS-optimized Amazon Linux 2023 (it carries Docker)
            "Resource": [
                f"arn:{partition}:ssm:{region}::parameter/aws/service/ami-amazon-linux-latest/*",
                f"arn:{partition}:ssm:{region}::parameter/aws/service/deeplearning/ami/*",
                f"arn:{partition}:ssm:{region}::parameter/aws/service/ecs/optimized-ami/amazon-linux-2023/*",
            ],
        },
        # image= from ECR: a token for the engine's login (no resource of its own), then what a pull
        # asks of this account's repositories: the manifest (BatchGetImage) and each layer
        # (GetDownloadUrlForLayer); BatchCheckLayerAvailability is a push's. Another account's
        # repository grants the role in its own policy.
        {"Sid": "LogInToECR", "Effect": "Allow", "Action": "ecr:GetAuthorizationToken", "Resource": "*"},
        {
            "Sid": "PullImagesFromECR",
            "Effect": "Allow",
            "Action": ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"],
            "Resource": f"arn:{partition}:ecr:{region}:{account}:repository/*",
        },
        {
            "Sid": "FindInstancesImagesNetwork",
            "Effect": "Allow",
            "Action": [
                "ec2:DescribeInstances",
                "ec2:DescribeInstanceTypes",
                "ec2:DescribeImages",
                "ec2:DescribeSubnets",
                "ec2:DescribeVpcs",
                "ec2:DescribeSecurityGroups",
            ],
            "Resource": "*",
        },
    ]
    return {"Version": "2012-10-17", "Statement": statements}
