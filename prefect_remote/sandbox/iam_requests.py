"""What each AWS request asks IAM, for the sandbox AWS: an API call becomes the authorizations AWS
makes for it (:class:`~prefect_remote.sandbox.iam_policy.Check`: action, resource ARN, condition
context), read from the request's parameters (as moto's own parsers give them) and from the
sandbox's account (moto's backends, in this process: resource tags, an instance's profile).

The table covers the operations prefect-remote, its machines and the sandbox make, following the
Service Authorization Reference: every resource an operation touches (RunInstances: the instance,
its image, subnet, security groups, network interface and volume), the condition keys the project's
policies use, and the checks AWS adds on its own: ``iam:PassRole`` (with ``iam:PassedToService``)
for a launch with an instance profile and for AddRoleToInstanceProfile, and the tag-on-create
checks (``ec2:CreateTags`` with ``ec2:CreateAction``; ``iam:TagRole``, ``iam:TagInstanceProfile``,
``ssm:AddTagsToResource``, ``logs:TagResource`` when the create call carries tags). An operation the
table does not know raises :class:`UnknownOperation`: the sandbox refuses it rather than let a new
call through unchecked.

One module over 500 lines, on purpose: it is one table, each operation registered by ``_handles``
beside the others of its service, read as the Service Authorization Reference is; split by service,
every part would still share the registry, :class:`Request`, :class:`Account` and the tag context
helpers, and the table would no longer read as one.

>>> request = Request("ssm", "GetParameter", {"Name": "/prefect-remote/launch-1"}, "us-east-1", "123456789012")
>>> [check.resource for check in checks(request, Account())]
['arn:aws:ssm:us-east-1:123456789012:parameter/prefect-remote/launch-1']
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from prefect_remote.sandbox.iam_policy import Check

Context = dict[str, Any]


class UnknownOperation(LookupError):
    """An operation the sandbox's IAM does not model: refused, never let through unchecked."""

    def __init__(self, service: str, operation: str, detail: str = "") -> None:
        self.service, self.operation = service, operation
        super().__init__(
            f"the sandbox's IAM does not know what {service}:{operation}{detail} needs, so it refuses it (its table is {__name__})"
        )


@dataclass(frozen=True)
class Request:
    service: str  # the signing name: ec2, s3, ssm, logs, iam, sts, pricing, ecr
    operation: str  # the API's name: RunInstances, HeadBucket…
    params: Mapping[str, Any]  # as botocore's model names them
    region: str
    account: str
    partition: str = "aws"


class Account:
    """What the table reads of the sandbox's account: moto's backends in this process. Each lookup
    answers ``None`` or empty for what does not exist (AWS authorizes before it looks)."""

    def ec2(self, request: Request) -> Any:
        from moto.ec2.models import ec2_backends

        return ec2_backends[request.account][request.region]

    def iam(self, request: Request) -> Any:
        from moto.iam.models import iam_backends

        return iam_backends[request.account][request.partition]

    def ec2_tags(self, request: Request, resource_id: str) -> dict[str, str]:
        return dict(self.ec2(request).tags.get(resource_id, {}))

    def instance(self, request: Request, instance_id: str) -> dict[str, str] | None:
        """An instance's facts for conditions: its type and instance profile (every instance of a
        launch has its own association, which ends with it: :mod:`prefect_remote.sandbox.ec2_strict`)."""
        backend = self.ec2(request)
        for reservation in list(backend.reservations.values()):
            for member in reservation.instances:
                if member.id == instance_id:
                    facts = {"type": member.instance_type}
                    association = backend.iam_instance_profile_associations.get(member.id)
                    if association is not None:
                        facts["profile"] = association.iam_instance_profile.arn
                    return facts
        return None

    def security_group(self, request: Request, name_or_id: str, vpc_id: str | None = None) -> Any:
        backend = self.ec2(request)
        if name_or_id.startswith("sg-"):
            return backend.get_security_group_from_id(name_or_id)
        return backend.get_security_group_from_name(name_or_id, vpc_id or self.default_vpc(request))

    def default_vpc(self, request: Request) -> str | None:
        vpc = self.ec2(request).get_default_vpc()
        return vpc.id if vpc else None

    def default_subnet(self, request: Request) -> str | None:
        subnets = sorted(self.ec2(request).get_default_subnets().values(), key=lambda s: s.availability_zone)
        return subnets[0].id if subnets else None

    def ssm_tags(self, request: Request, name: str) -> dict[str, str]:
        from moto.ssm.models import ssm_backends

        backend = ssm_backends[request.account][request.region]
        if backend.get_parameter(name) is None:
            return {}
        return dict(backend.list_tags_for_resource("Parameter", name))

    def log_group_tags(self, request: Request, name: str) -> dict[str, str]:
        from moto.logs.models import logs_backends

        backend = logs_backends[request.account][request.region]
        return dict(backend.list_tags_log_group(name)) if name in backend.groups else {}

    def ecr_tags(self, request: Request, repository: str) -> dict[str, str]:
        from moto.ecr.models import ecr_backends

        backend = ecr_backends[request.account][request.region]
        found = backend.repositories.get(repository)
        return dict(backend.tagger.get_tag_dict_for_resource(found.arn)) if found is not None else {}

    def role(self, request: Request, name: str) -> Any:
        for role in list(self.iam(request).roles.values()):
            if role.name == name:
                return role
        return None

    def instance_profile(self, request: Request, name_or_arn: str) -> Any:
        backend = self.iam(request)
        for profile in list(backend.instance_profiles.values()):
            if name_or_arn in (profile.name, profile.arn):
                return profile
        return None


Handler = Callable[[Request, Account], list[Check]]
_TABLE: dict[tuple[str, str], Handler] = {}


def operations() -> list[str]:
    """Every ``service:Operation`` the table knows."""
    return sorted(f"{service}:{operation}" for service, operation in _TABLE)


def checks(request: Request, account: Account | None = None) -> list[Check]:
    """The authorizations AWS makes for ``request``, in the order it makes them; raises
    :class:`UnknownOperation` for one the table does not know."""
    handler = _TABLE.get((request.service, request.operation))
    if handler is None:
        raise UnknownOperation(request.service, request.operation)
    return handler(request, account or Account())


def _handles(service: str, *operations: str) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        for operation in operations:
            if (service, operation) in _TABLE:
                raise ValueError(f"{service}:{operation} is in the table twice")
            _TABLE[(service, operation)] = handler
        return handler

    return register


def _unscoped(service: str, *operations: str, action: dict[str, str] | None = None) -> None:
    """Operations IAM authorizes on no particular resource (``Resource: "*"`` only)."""
    for operation in operations:
        name = f"{service}:{(action or {}).get(operation, operation)}"
        _handles(service, operation)(lambda request, account, name=name: [Check(name, "*")])


# -- context helpers -------------------------------------------------------------------------------
def resource_tags(tags: Mapping[str, str], *prefixes: str) -> Context:
    """A resource's tags as ``aws:ResourceTag/K`` (and ``ec2:ResourceTag/K``… for each prefix)."""
    return {f"{prefix}:ResourceTag/{key}": value for key, value in tags.items() for prefix in ("aws", *prefixes)}


def request_tags(tags: Mapping[str, str]) -> Context:
    """Tags a request sets, as ``aws:RequestTag/K`` and ``aws:TagKeys``."""
    return {**{f"aws:RequestTag/{key}": value for key, value in tags.items()}, "aws:TagKeys": list(tags)}


def _tag_list(tags: Iterable[Mapping[str, str]] | None) -> dict[str, str]:
    return {tag["Key"]: tag.get("Value", "") for tag in tags or []}


# -- EC2 -------------------------------------------------------------------------------------------
_EC2_KINDS = {
    "i": "instance",
    "sg": "security-group",
    "vol": "volume",
    "subnet": "subnet",
    "vpc": "vpc",
    "ami": "image",
    "eni": "network-interface",
    "snap": "snapshot",
    "igw": "internet-gateway",
    "rtb": "route-table",
    "sir": "spot-instances-request",
    "lt": "launch-template",
    "key": "key-pair",
    "nat": "natgateway",
    "eipalloc": "elastic-ip",
}
_GLOBAL_EC2_KINDS = ("image", "snapshot")  # their ARNs name no account


def ec2_arn(request: Request, kind: str, ident: str = "*") -> str:
    account = "" if kind in _GLOBAL_EC2_KINDS else request.account
    return f"arn:{request.partition}:ec2:{request.region}:{account}:{kind}/{ident}"


def _ec2_kind(request: Request, resource_id: str) -> str:
    kind = _EC2_KINDS.get(resource_id.rsplit("-", 1)[0]) if "-" in resource_id else None
    if kind is None:
        raise UnknownOperation(request.service, request.operation, f" on {resource_id}")
    return kind


def _ec2_resource(request: Request, account: Account, resource_id: str) -> tuple[str, Context]:
    """The ARN of an existing EC2 resource, with the condition keys AWS gives it."""
    kind = _ec2_kind(request, resource_id)
    context: Context = {"ec2:Region": request.region, **resource_tags(account.ec2_tags(request, resource_id), "ec2")}
    if kind == "instance":
        facts = account.instance(request, resource_id) or {}
        context["ec2:InstanceID"] = resource_id
        if "type" in facts:
            context["ec2:InstanceType"] = facts["type"]
        if "profile" in facts:
            context["ec2:InstanceProfile"] = facts["profile"]
    elif kind == "security-group":
        context["ec2:SecurityGroupID"] = resource_id
        group = account.security_group(request, resource_id)
        if group is not None and getattr(group, "vpc_id", None):
            context["ec2:Vpc"] = ec2_arn(request, "vpc", group.vpc_id)
    return ec2_arn(request, kind, resource_id), context


def _specs(params: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """TagSpecifications: resource type -> the tags the request puts on it."""
    found: dict[str, dict[str, str]] = {}
    for spec in params.get("TagSpecifications") or []:
        found.setdefault(spec.get("ResourceType", ""), {}).update(_tag_list(spec.get("Tags")))
    return found


def _tag_on_create(request: Request, specs: Mapping[str, Mapping[str, str]]) -> list[Check]:
    """EC2's extra authorization of tags set at creation: ec2:CreateTags on each tagged resource
    type, with ec2:CreateAction naming the creating call."""
    return [
        Check(
            "ec2:CreateTags",
            ec2_arn(request, kind),
            {"ec2:CreateAction": request.operation, "ec2:Region": request.region, **request_tags(tags)},
        )
        for kind, tags in specs.items()
        if tags
    ]


@_handles("ec2", "RunInstances")
def _run_instances(request: Request, account: Account) -> list[Check]:
    params, action = request.params, "ec2:RunInstances"
    specs = _specs(params)
    spot = (params.get("InstanceMarketOptions") or {}).get("MarketType") == "spot"
    instance: Context = {
        "ec2:Region": request.region,
        "ec2:InstanceType": params.get("InstanceType", "m1.small"),
        "ec2:InstanceMarketType": "spot" if spot else "on-demand",
        **request_tags(specs.get("instance", {})),
    }
    metadata = params.get("MetadataOptions") or {}
    if "HttpTokens" in metadata:
        instance["ec2:MetadataHttpTokens"] = metadata["HttpTokens"]
    role_arn = None
    wanted = params.get("IamInstanceProfile") or {}
    if wanted:
        profile = account.instance_profile(request, wanted.get("Arn") or wanted.get("Name", ""))
        if profile is not None:
            instance["ec2:InstanceProfile"] = profile.arn
            role_arn = profile.roles[0].arn if profile.roles else None
        else:
            instance["ec2:InstanceProfile"] = (
                wanted.get("Arn") or f"arn:{request.partition}:iam::{request.account}:instance-profile/{wanted['Name']}"
            )
    found = [Check(action, ec2_arn(request, "instance"), instance)]
    image = params.get("ImageId")
    if image:
        found.append(Check(action, ec2_arn(request, "image", image), {"ec2:Region": request.region, **_tags_of(request, account, image)}))
    interfaces = params.get("NetworkInterfaces") or []
    subnets = [params["SubnetId"]] if params.get("SubnetId") else [nic["SubnetId"] for nic in interfaces if nic.get("SubnetId")]
    if not subnets and (default := account.default_subnet(request)):
        subnets = [default]
    for subnet in subnets:
        found.append(
            Check(action, ec2_arn(request, "subnet", subnet), {"ec2:Region": request.region, **_tags_of(request, account, subnet)})
        )
    groups = list(params.get("SecurityGroupIds") or []) + [group for nic in interfaces for group in nic.get("Groups") or []]
    for name in params.get("SecurityGroups") or []:
        group = account.security_group(request, name)
        groups.append(group.id if group is not None else name)
    if not groups and (default_group := account.security_group(request, "default")) is not None:
        groups = [default_group.id]
    for group in groups:
        arn, context = (
            _ec2_resource(request, account, group) if group.startswith("sg-") else (ec2_arn(request, "security-group", group), {})
        )
        found.append(Check(action, arn, context))
    found.append(
        Check(
            action,
            ec2_arn(request, "network-interface"),
            {"ec2:Region": request.region, **request_tags(specs.get("network-interface", {}))},
        )
    )
    found.append(Check(action, ec2_arn(request, "volume"), {"ec2:Region": request.region, **request_tags(specs.get("volume", {}))}))
    if spot:
        spot_tags = request_tags(specs.get("spot-instances-request", {}))
        found.append(Check(action, ec2_arn(request, "spot-instances-request"), {"ec2:Region": request.region, **spot_tags}))
    if params.get("KeyName"):
        found.append(Check(action, ec2_arn(request, "key-pair", params["KeyName"]), {"ec2:Region": request.region}))
    if params.get("LaunchTemplate"):
        raise UnknownOperation(request.service, request.operation, " with a launch template")
    if role_arn:
        found.append(
            Check(
                "iam:PassRole",
                role_arn,
                {"iam:PassedToService": "ec2.amazonaws.com", "iam:AssociatedResourceArn": ec2_arn(request, "instance")},
            )
        )
    return found + _tag_on_create(request, specs)


def _tags_of(request: Request, account: Account, resource_id: str) -> Context:
    return resource_tags(account.ec2_tags(request, resource_id), "ec2")


@_handles("ec2", "CreateTags", "DeleteTags")
def _tagging(request: Request, account: Account) -> list[Check]:
    tags = _tag_list(request.params.get("Tags"))
    found = []
    for resource_id in request.params.get("Resources") or []:
        arn, context = _ec2_resource(request, account, resource_id)
        found.append(Check(f"ec2:{request.operation}", arn, {**context, **request_tags(tags)}))
    return found


@_handles("ec2", "TerminateInstances", "StopInstances", "StartInstances", "RebootInstances")
def _instances(request: Request, account: Account) -> list[Check]:
    return [Check(f"ec2:{request.operation}", *_ec2_resource(request, account, i)) for i in request.params.get("InstanceIds") or []]


@_handles("ec2", "DescribeInstanceAttribute")
def _instance_attribute(request: Request, account: Account) -> list[Check]:
    return [Check("ec2:DescribeInstanceAttribute", *_ec2_resource(request, account, request.params["InstanceId"]))]


@_handles("ec2", "CreateSecurityGroup")
def _create_security_group(request: Request, account: Account) -> list[Check]:
    specs = _specs(request.params)
    vpc = request.params.get("VpcId") or account.default_vpc(request)
    found = [
        Check(
            "ec2:CreateSecurityGroup",
            ec2_arn(request, "security-group"),
            {"ec2:Region": request.region, **request_tags(specs.get("security-group", {}))},
        )
    ]
    if vpc:
        found.append(
            Check(
                "ec2:CreateSecurityGroup", ec2_arn(request, "vpc", vpc), {"ec2:Region": request.region, **_tags_of(request, account, vpc)}
            )
        )
    return found + _tag_on_create(request, specs)


@_handles(
    "ec2",
    "AuthorizeSecurityGroupIngress",
    "AuthorizeSecurityGroupEgress",
    "RevokeSecurityGroupIngress",
    "RevokeSecurityGroupEgress",
    "DeleteSecurityGroup",
)
def _security_group(request: Request, account: Account) -> list[Check]:
    group_id = request.params.get("GroupId")
    if not group_id and request.params.get("GroupName"):
        group = account.security_group(request, request.params["GroupName"])
        group_id = group.id if group is not None else None
    if not group_id:
        return [Check(f"ec2:{request.operation}", ec2_arn(request, "security-group"), {"ec2:Region": request.region})]
    found = [Check(f"ec2:{request.operation}", *_ec2_resource(request, account, group_id))]
    return found + _tag_on_create(request, _specs(request.params))


_unscoped(
    "ec2",
    "DescribeInstances",
    "DescribeInstanceStatus",
    "DescribeInstanceTypes",
    "DescribeInstanceTypeOfferings",
    "DescribeImages",
    "DescribeSubnets",
    "DescribeVpcs",
    "DescribeSecurityGroups",
    "DescribeSecurityGroupRules",
    "DescribeAvailabilityZones",
    "DescribeRegions",
    "DescribeTags",
    "DescribeVolumes",
    "DescribeNetworkInterfaces",
    "DescribeKeyPairs",
    "DescribeAccountAttributes",
    "DescribeSpotPriceHistory",
    "DescribeRouteTables",
    "DescribeInternetGateways",
    "DescribeNatGateways",
    "DescribeVpcEndpoints",
    "DescribeIamInstanceProfileAssociations",
)


# -- SSM -------------------------------------------------------------------------------------------
def ssm_parameter_arn(request: Request, name: str) -> str:
    """``arn:aws:ssm:R:A:parameter/NAME`` (the name's leading ``/`` not doubled); AWS's public
    parameters (``/aws/service/…``) have no account."""
    if name.startswith("arn:"):
        return name
    bare = name.lstrip("/")
    account = "" if bare.startswith("aws/service/") else request.account
    return f"arn:{request.partition}:ssm:{request.region}:{account}:parameter/{bare}"


def _parameter(request: Request, account: Account, name: str, action: str | None = None, **extra: Any) -> Check:
    tags = resource_tags(account.ssm_tags(request, name), "ssm")
    return Check(action or f"ssm:{request.operation}", ssm_parameter_arn(request, name), {**tags, **extra})


@_handles("ssm", "GetParameter", "DeleteParameter", "GetParameterHistory", "LabelParameterVersion")
def _one_parameter(request: Request, account: Account) -> list[Check]:
    return [_parameter(request, account, request.params["Name"])]


@_handles("ssm", "GetParameters", "DeleteParameters")
def _parameters(request: Request, account: Account) -> list[Check]:
    return [_parameter(request, account, name) for name in request.params.get("Names") or []]


@_handles("ssm", "GetParametersByPath")
def _parameters_by_path(request: Request, account: Account) -> list[Check]:
    path = request.params["Path"]
    recursive = "Recursive" if request.params.get("Recursive") else "OneLevel"
    return [Check("ssm:GetParametersByPath", ssm_parameter_arn(request, path), {"ssm:Recursive": recursive})]


@_handles("ssm", "PutParameter")
def _put_parameter(request: Request, account: Account) -> list[Check]:
    name, tags = request.params["Name"], _tag_list(request.params.get("Tags"))
    overwrite = "true" if request.params.get("Overwrite") else "false"
    found = [_parameter(request, account, name, **request_tags(tags), **{"ssm:Overwrite": overwrite})]
    if tags:  # tags at creation are authorized as ssm:AddTagsToResource too
        found.append(_parameter(request, account, name, "ssm:AddTagsToResource", **request_tags(tags)))
    return found


@_handles("ssm", "AddTagsToResource", "RemoveTagsFromResource", "ListTagsForResource")
def _ssm_tags(request: Request, account: Account) -> list[Check]:
    if request.params.get("ResourceType") != "Parameter":
        raise UnknownOperation(request.service, request.operation, f" on a {request.params.get('ResourceType')}")
    tags = _tag_list(request.params.get("Tags")) if request.operation == "AddTagsToResource" else {}
    keys = {"aws:TagKeys": list(request.params.get("TagKeys") or [])} if request.operation == "RemoveTagsFromResource" else {}
    return [_parameter(request, account, request.params["ResourceId"], **request_tags(tags) if tags else {}, **keys)]


_unscoped("ssm", "DescribeParameters")


# -- CloudWatch Logs -------------------------------------------------------------------------------
def log_group_arn(request: Request, group: str, stream: str | None = None) -> str:
    arn = f"arn:{request.partition}:logs:{request.region}:{request.account}:log-group:{group}"
    return arn if stream is None else f"{arn}:log-stream:{stream}"


@_handles("logs", "CreateLogGroup")
def _create_log_group(request: Request, account: Account) -> list[Check]:
    group, tags = request.params["logGroupName"], dict(request.params.get("tags") or {})
    found = [Check("logs:CreateLogGroup", log_group_arn(request, group), request_tags(tags) if tags else {})]
    if tags:  # tags at creation are authorized as logs:TagResource too
        found.append(Check("logs:TagResource", log_group_arn(request, group), request_tags(tags)))
    return found


@_handles(
    "logs",
    "DeleteLogGroup",
    "PutRetentionPolicy",
    "DeleteRetentionPolicy",
    "DescribeLogStreams",
    "FilterLogEvents",
    "ListTagsLogGroup",
    "TagLogGroup",
    "UntagLogGroup",
)
def _log_group(request: Request, account: Account) -> list[Check]:
    group = request.params["logGroupName"]
    context = resource_tags(account.log_group_tags(request, group))
    if request.operation == "TagLogGroup":
        context.update(request_tags(dict(request.params.get("tags") or {})))
    return [Check(f"logs:{request.operation}", log_group_arn(request, group), context)]


@_handles("logs", "CreateLogStream", "PutLogEvents", "GetLogEvents", "DeleteLogStream")
def _log_stream(request: Request, account: Account) -> list[Check]:
    group = request.params["logGroupName"]
    arn = log_group_arn(request, group, request.params["logStreamName"])
    return [Check(f"logs:{request.operation}", arn, resource_tags(account.log_group_tags(request, group)))]


@_handles("logs", "ListTagsForResource", "TagResource", "UntagResource")
def _logs_tagging(request: Request, account: Account) -> list[Check]:
    arn = request.params["resourceArn"].removesuffix(":*")
    context = request_tags(dict(request.params.get("tags") or {})) if request.operation == "TagResource" else {}
    return [Check(f"logs:{request.operation}", arn, context)]


_unscoped("logs", "DescribeLogGroups")


# -- ECR -------------------------------------------------------------------------------------------
# Operations on one repository of the caller's registry (the Service Authorization Reference:
# resource type ``repository*``, condition keys ``aws:ResourceTag/K`` and ``ecr:ResourceTag/K``). A
# pull asks two of them: BatchGetImage for the manifest, GetDownloadUrlForLayer for each layer, as the
# engine's requests to the registry (``<account>.dkr.ecr.<region>.amazonaws.com``) with the token
# from GetAuthorizationToken are authorized with the identity that got the token.
_ECR_REPOSITORY_OPERATIONS = ("BatchGetImage", "GetDownloadUrlForLayer", "BatchCheckLayerAvailability", "PutImage", "DeleteRepository")


def ecr_repository_arn(request: Request, name: str) -> str:
    return f"arn:{request.partition}:ecr:{request.region}:{request.account}:repository/{name}"


def _ecr_repository(request: Request, account: Account, name: str, action: str | None = None, **extra: Any) -> Check:
    registry = request.params.get("registryId")
    if registry and registry != request.account:
        # Another account's repository answers to its repository policy as well, which the sandbox
        # does not evaluate: refused rather than decided on half the policies.
        raise UnknownOperation(request.service, request.operation, f" on account {registry}'s registry")
    tags = resource_tags(account.ecr_tags(request, name), "ecr")
    return Check(action or f"ecr:{request.operation}", ecr_repository_arn(request, name), {**tags, **extra})


@_handles("ecr", *_ECR_REPOSITORY_OPERATIONS)
def _ecr_repository_operation(request: Request, account: Account) -> list[Check]:
    return [_ecr_repository(request, account, request.params["repositoryName"])]


@_handles("ecr", "CreateRepository")
def _create_repository(request: Request, account: Account) -> list[Check]:
    name, tags = request.params["repositoryName"], _tag_list(request.params.get("tags"))
    found = [_ecr_repository(request, account, name, **request_tags(tags) if tags else {})]
    if tags:  # tags at creation are authorized as ecr:TagResource too
        found.append(_ecr_repository(request, account, name, "ecr:TagResource", **request_tags(tags)))
    return found


# The login token: on no particular resource (whichever registries registryIds names).
_unscoped("ecr", "GetAuthorizationToken")


# -- IAM -------------------------------------------------------------------------------------------
def iam_arn(request: Request, kind: str, name: str, path: str = "/") -> str:
    return f"arn:{request.partition}:iam::{request.account}:{kind}{path}{name}"


def _role(request: Request, account: Account, name: str, action: str | None = None, **extra: Any) -> Check:
    role = account.role(request, name)
    path = role.path if role is not None else request.params.get("Path", "/")
    tags = resource_tags(_tag_list(role.tags), "iam") if role is not None else {}
    return Check(action or f"iam:{request.operation}", iam_arn(request, "role", name, path), {**tags, **extra})


@_handles(
    "iam",
    "GetRole",
    "DeleteRole",
    "UpdateRole",
    "UpdateAssumeRolePolicy",
    "ListRoleTags",
    "PutRolePolicy",
    "GetRolePolicy",
    "DeleteRolePolicy",
    "ListRolePolicies",
    "ListAttachedRolePolicies",
    "ListInstanceProfilesForRole",
    "UntagRole",
)
def _role_operation(request: Request, account: Account) -> list[Check]:
    extra = {"aws:TagKeys": list(request.params.get("TagKeys") or [])} if request.operation == "UntagRole" else {}
    return [_role(request, account, request.params["RoleName"], **extra)]


@_handles("iam", "AttachRolePolicy", "DetachRolePolicy")
def _role_managed_policy(request: Request, account: Account) -> list[Check]:
    return [_role(request, account, request.params["RoleName"], **{"iam:PolicyARN": request.params["PolicyArn"]})]


@_handles("iam", "CreateRole", "TagRole")
def _role_with_tags(request: Request, account: Account) -> list[Check]:
    name, tags = request.params["RoleName"], _tag_list(request.params.get("Tags"))
    found = [_role(request, account, name, **request_tags(tags))]
    if request.operation == "CreateRole" and tags:  # tags at creation are authorized as iam:TagRole too
        found.append(_role(request, account, name, "iam:TagRole", **request_tags(tags)))
    return found


def _profile(request: Request, account: Account, name: str, action: str | None = None, **extra: Any) -> Check:
    profile = account.instance_profile(request, name)
    path = profile.path if profile is not None else request.params.get("Path", "/")
    tags = resource_tags(_tag_list(profile.tags), "iam") if profile is not None else {}
    return Check(action or f"iam:{request.operation}", iam_arn(request, "instance-profile", name, path), {**tags, **extra})


@_handles("iam", "GetInstanceProfile", "DeleteInstanceProfile", "RemoveRoleFromInstanceProfile", "ListInstanceProfileTags")
def _profile_operation(request: Request, account: Account) -> list[Check]:
    return [_profile(request, account, request.params["InstanceProfileName"])]


@_handles("iam", "CreateInstanceProfile", "TagInstanceProfile")
def _profile_with_tags(request: Request, account: Account) -> list[Check]:
    name, tags = request.params["InstanceProfileName"], _tag_list(request.params.get("Tags"))
    found = [_profile(request, account, name, **request_tags(tags))]
    if request.operation == "CreateInstanceProfile" and tags:  # as CreateRole's
        found.append(_profile(request, account, name, "iam:TagInstanceProfile", **request_tags(tags)))
    return found


@_handles("iam", "AddRoleToInstanceProfile")
def _add_role_to_profile(request: Request, account: Account) -> list[Check]:
    # "The caller of this operation must be granted the PassRole permission on the IAM role."
    role = _role(request, account, request.params["RoleName"], "iam:PassRole")
    return [_profile(request, account, request.params["InstanceProfileName"]), Check(role.action, role.resource, {})]


@_handles("iam", "SimulatePrincipalPolicy")
def _simulate(request: Request, account: Account) -> list[Check]:
    return [Check("iam:SimulatePrincipalPolicy", request.params["PolicySourceArn"])]


@_handles("iam", "GetUser")
def _get_user(request: Request, account: Account) -> list[Check]:
    name = request.params.get("UserName")
    return [Check("iam:GetUser", iam_arn(request, "user", name) if name else "*")]


@_handles("iam", "GetPolicy", "GetPolicyVersion", "ListPolicyVersions")
def _managed_policy(request: Request, account: Account) -> list[Check]:
    return [Check(f"iam:{request.operation}", request.params["PolicyArn"])]


_unscoped("iam", "ListRoles", "ListInstanceProfiles", "ListPolicies", "ListUsers", "GetAccountSummary")


# -- STS and Pricing --------------------------------------------------------------------------------
@_handles("sts", "GetCallerIdentity")
def _caller_identity(request: Request, account: Account) -> list[Check]:
    return []  # "No permissions are required to perform this operation."


_unscoped("pricing", "GetProducts", "DescribeServices", "GetAttributeValues")


# -- Service Quotas --------------------------------------------------------------------------------
@_handles("servicequotas", "GetServiceQuota")
def _service_quota(request: Request, account: Account) -> list[Check]:
    params = request.params
    quota = f"arn:{request.partition}:servicequotas:{request.region}:{request.account}:{params['ServiceCode']}/{params['QuotaCode']}"
    return [Check("servicequotas:GetServiceQuota", quota)]


# -- S3 --------------------------------------------------------------------------------------------
# Operation -> the IAM action it is authorized as (S3's names differ from its operations').
_S3_BUCKET = {
    "CreateBucket": "CreateBucket",
    "DeleteBucket": "DeleteBucket",
    "HeadBucket": "ListBucket",
    "GetBucketLocation": "GetBucketLocation",
    "ListObjects": "ListBucket",
    "ListObjectsV2": "ListBucket",
    "ListObjectVersions": "ListBucketVersions",
    "ListMultipartUploads": "ListBucketMultipartUploads",
    "PutPublicAccessBlock": "PutBucketPublicAccessBlock",
    "GetPublicAccessBlock": "GetBucketPublicAccessBlock",
    "DeletePublicAccessBlock": "PutBucketPublicAccessBlock",
    "PutBucketEncryption": "PutEncryptionConfiguration",
    "GetBucketEncryption": "GetEncryptionConfiguration",
    "DeleteBucketEncryption": "PutEncryptionConfiguration",
    "PutBucketTagging": "PutBucketTagging",
    "GetBucketTagging": "GetBucketTagging",
    "DeleteBucketTagging": "PutBucketTagging",
    "PutBucketVersioning": "PutBucketVersioning",
    "GetBucketVersioning": "GetBucketVersioning",
    "PutBucketLifecycleConfiguration": "PutLifecycleConfiguration",
    "GetBucketLifecycleConfiguration": "GetLifecycleConfiguration",
    "DeleteBucketLifecycle": "PutLifecycleConfiguration",
    "PutBucketPolicy": "PutBucketPolicy",
    "GetBucketPolicy": "GetBucketPolicy",
    "DeleteBucketPolicy": "DeleteBucketPolicy",
}
_S3_OBJECT = {
    "GetObject": "GetObject",
    "HeadObject": "GetObject",
    "PutObject": "PutObject",
    "CreateMultipartUpload": "PutObject",
    "UploadPart": "PutObject",
    "CompleteMultipartUpload": "PutObject",
    "AbortMultipartUpload": "AbortMultipartUpload",
    "ListParts": "ListMultipartUploadParts",
    "DeleteObject": "DeleteObject",
    "GetObjectTagging": "GetObjectTagging",
    "PutObjectTagging": "PutObjectTagging",
}
_S3_VERSIONED = {"GetObject": "GetObjectVersion", "DeleteObject": "DeleteObjectVersion", "GetObjectTagging": "GetObjectVersionTagging"}


def s3_arn(request: Request, bucket: str, key: str | None = None) -> str:
    return f"arn:{request.partition}:s3:::{bucket}" + (f"/{key}" if key is not None else "")


def s3_action(operation: str, versioned: bool = False) -> str | None:
    """The IAM action S3 authorizes ``operation`` as (``HeadBucket`` -> ``s3:ListBucket``)."""
    name = _S3_BUCKET.get(operation) or _S3_OBJECT.get(operation)
    if name and versioned and operation in _S3_VERSIONED:
        name = _S3_VERSIONED[operation]
    elif name and versioned and operation == "HeadObject":
        name = "GetObjectVersion"
    return f"s3:{name}" if name else None


def _s3(request: Request, account: Account) -> list[Check]:
    params, operation = request.params, request.operation
    if operation in _S3_BUCKET:
        context: Context = {}
        for key, name in (("Prefix", "s3:prefix"), ("Delimiter", "s3:delimiter"), ("MaxKeys", "s3:max-keys")):
            if key in params and operation in ("ListObjects", "ListObjectsV2", "ListObjectVersions"):
                context[name] = str(params[key])
        if operation == "CreateBucket":
            location = (params.get("CreateBucketConfiguration") or {}).get("LocationConstraint")
            if location:
                context["s3:LocationConstraint"] = location
        return [Check(str(s3_action(operation)), s3_arn(request, params["Bucket"]), context)]
    return [Check(str(s3_action(operation, bool(params.get("VersionId")))), s3_arn(request, params["Bucket"], params["Key"]))]


for _operation in (*_S3_BUCKET, *_S3_OBJECT):
    _handles("s3", _operation)(_s3)
_unscoped("s3", "ListBuckets", action={"ListBuckets": "ListAllMyBuckets"})


@_handles("s3", "DeleteObjects")
def _delete_objects(request: Request, account: Account) -> list[Check]:
    # Authorized key by key. (AWS answers a refused key in the response's Errors; the sandbox
    # refuses the whole request: stricter, never kinder.)
    bucket = request.params["Bucket"]
    return [
        Check(str(s3_action("DeleteObject", bool(item.get("VersionId")))), s3_arn(request, bucket, item["Key"]))
        for item in (request.params.get("Delete") or {}).get("Objects") or []
    ]


@_handles("s3", "CopyObject", "UploadPartCopy")
def _copy(request: Request, account: Account) -> list[Check]:
    from urllib.parse import unquote

    source = request.params.get("CopySource")
    source = source if isinstance(source, str) else ""
    path, _, query = unquote(source).lstrip("/").partition("?versionId=")
    bucket, _, key = path.partition("/")
    return [
        Check("s3:PutObject", s3_arn(request, request.params["Bucket"], request.params["Key"])),
        Check("s3:GetObjectVersion" if query else "s3:GetObject", s3_arn(request, bucket, key)),
    ]
