"""The EC2 provider: machines are instances in the user's own AWS account, found again by their tags.

A launch is one ``run_instances`` call (IMDSv2 only, terminate on shutdown, tags on instance and
volume, spot when asked); its secrets are one SSM SecureString parameter that its instances read
with their instance profile; an owner's lease is a tag it renews for all its instances in one
``create_tags`` call, and that the instances read through the metadata service. boto3 comes with
the ``aws`` extra and is imported on first use; region, credentials and endpoint come from boto3's
usual chain.

Example::

    provider = AWSProvider(region="us-east-2", allow_ingress_from="me")
    [machine] = provider.launch(MachineSpec(cpu=2, memory="4 GiB", spot_policy="spot_with_fallback"), BootPayload(["python", "app.py"]))
    print(machine.cost_summary(), machine.estimated_cost())
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import json
import logging
import math
import re
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from prefect_remote.errors import CapacityError, MachineNotFound, RemoteError
from prefect_remote.providers.aws import catalog
from prefect_remote.providers.aws.runtime import EXIT_CODE_TAG, LEASE_TAG, REASON_TAG
from prefect_remote.providers.base import TAG_PREFIX, Capabilities, InstanceType, Launch, LogChunk, Machine, Provider
from prefect_remote.spec import ingress_source

if TYPE_CHECKING:
    from botocore.client import BaseClient

    from prefect_remote.spec import MachineSpec

logger = logging.getLogger("prefect_remote.providers.aws")

INSTALL_HINT = "pip install 'prefect-remote[aws]'"
OWNER_TAG = TAG_PREFIX + "owner"
LAUNCH_TAG = TAG_PREFIX + "launch"
KEEPALIVE_TAG = TAG_PREFIX + "keepalive"
SPEC_TAG = TAG_PREFIX + "spec"
SECRETS_TAG = TAG_PREFIX + "secrets"  # the launch's SSM parameter, on launches that have one
MANAGED_TAG = TAG_PREFIX + "managed"  # on security groups the provider made

DEFAULT_AMI = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-{arch}"
DASK_PORTS = (8786, 8787)  # scheduler, dashboard
CHECKIP_URL = "https://checkip.amazonaws.com"
# What EC2 answers when spot capacity is short: spot_with_fallback launches on-demand instead.
SPOT_CAPACITY_ERRORS = {"InsufficientInstanceCapacity", "SpotMaxPriceTooLow", "MaxSpotInstanceCountExceeded", "UnfulfillableCapacity"}
SPOT_OPTIONS = {"MarketType": "spot", "SpotOptions": {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}}
# EC2's states as a machine's; the rest have ended. A shutting-down instance still runs its processes
# (a flow run's engine may still report its state): it has not ended until it is terminated.
STATES: dict[str, Literal["pending", "running", "terminated"]] = {"pending": "pending", "running": "running", "shutting-down": "running"}
ENDED_STATES = ("shutting-down", "terminated")  # terminating these again is moot
_INSTANCE_ID = re.compile(r"i-[0-9a-f]{8,17}")
# Instance tags served by the metadata service may only use these characters (EC2 refuses others
# once InstanceMetadataTags is enabled).
_IMDS_TAG_KEY = re.compile(r"[A-Za-z0-9+\-=.,_:@]{1,128}")
_NO_CREDENTIALS = (
    "no AWS credentials found for the aws provider; set AWS_PROFILE (after `aws configure` or `aws sso login`) "
    "or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or run where an instance profile or role provides them"
)
_BAD_CREDENTIALS = {"AuthFailure", "UnrecognizedClientException", "InvalidClientTokenId", "ExpiredToken", "SignatureDoesNotMatch"}
_DENIED = {"UnauthorizedOperation", "AccessDenied", "AccessDeniedException"}


SECRETS_SWEEP_AGE = 3600.0  # seconds: a launch secret older than this with no instance left is an orphan


class AWSError(RemoteError):
    """AWS refused the provider (no credentials, a missing permission): the message says what to fix."""


class AWSOptions(BaseModel):
    """The aws provider's options, validated when it is made; all of them travel to a cluster's
    scheduler (:meth:`AWSProvider.client_options`), none is secret.

    >>> AWSOptions(region="us-east-2", allow_ingress_from="10.0.0.0/8").secrets_prefix
    '/prefect-remote/'
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    region: str
    ami: str | None = None  # an AMI id, or an SSM parameter naming one; default: Amazon Linux 2023
    subnet_id: str | None = None
    vpc_id: str | None = None
    security_group_ids: tuple[str, ...] = ()  # default: groups the provider makes per VPC
    instance_profile: str | None = None  # its name; the machines' role (secrets, self-termination)
    log_group: str = "/prefect-remote/machines"
    secrets_prefix: str = "/prefect-remote/"
    allow_ingress_from: str = "me"
    metadata_endpoint: str | None = None  # the machines' IMDS; default: theirs (or $AWS_EC2_METADATA_SERVICE_ENDPOINT)
    lease_interval: float = Field(default=30.0, ge=5.0)  # seconds between a machine's lease reads

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d+", value):
            raise ValueError(f"region={value!r}: expected an AWS region such as 'us-east-2'")
        return value

    @field_validator("ami")
    @classmethod
    def _ami(cls, value: str | None) -> str | None:
        if value is not None and value.startswith("ami-") and not re.fullmatch(r"ami-[0-9a-f]{8,17}", value):
            raise ValueError(f"ami={value!r}: expected an AMI id such as 'ami-0abc12345def67890', or an SSM parameter name naming one")
        return value

    @field_validator("subnet_id", "vpc_id")
    @classmethod
    def _resource(cls, value: str | None, info: Any) -> str | None:
        prefix = info.field_name.removesuffix("_id") + "-"
        if value is not None and not value.startswith(prefix):
            raise ValueError(f"{info.field_name}={value!r}: expected an id such as '{prefix}0abc12345def67890'")
        return value

    @field_validator("security_group_ids", mode="before")
    @classmethod
    def _groups(cls, value: Any) -> Any:
        groups = [value] if isinstance(value, str) else list(value or ())
        bad = [group for group in groups if not str(group).startswith("sg-")]
        if bad:
            raise ValueError(f"security_group_ids={bad!r}: expected security group ids such as 'sg-0abc12345def67890'")
        return tuple(groups)

    @field_validator("secrets_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value.startswith("/") or value.lower().startswith(("/aws", "/ssm")):
            raise ValueError(f"secrets_prefix={value!r}: expected a parameter path such as '/prefect-remote/' (not under /aws or /ssm)")
        return value if value.endswith("/") else value + "/"

    @field_validator("allow_ingress_from")
    @classmethod
    def _ingress(cls, value: str) -> str:
        return ingress_source(value)


def _boto3() -> Any:
    try:
        import boto3
    except ImportError:
        raise AWSError(f"the aws provider needs boto3, which is not installed: {INSTALL_HINT}") from None
    return boto3


def _error_code(error: Exception) -> str:
    response = getattr(error, "response", None)
    return str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""


F = TypeVar("F", bound=Callable[..., Any])


def _translated(method: F) -> F:
    """Turns what boto3 raises for missing or refused credentials into an :class:`AWSError` naming the fix."""

    @functools.wraps(method)
    def wrapper(self: AWSProvider, *args: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

        try:
            return method(self, *args, **kwargs)
        except (NoCredentialsError, PartialCredentialsError):
            raise AWSError(_NO_CREDENTIALS) from None
        except ClientError as error:
            code, operation = _error_code(error), error.operation_name
            if code in _BAD_CREDENTIALS:
                raise AWSError(
                    f"AWS rejected the credentials in use ({code} on {operation}); check AWS_PROFILE or run `aws configure`"
                ) from None
            if code in _DENIED:
                raise AWSError(
                    f"AWS refused {operation} ({code}): the identity in use lacks a permission the aws provider needs "
                    f"(listed in the README's AWS section); {error.response['Error'].get('Message', '')}"
                ) from None
            raise

    return wrapper  # type: ignore[return-value]


@functools.lru_cache(maxsize=1)
def public_ip(url: str = CHECKIP_URL, timeout: float = 3.0) -> str | None:
    """This launcher's public IPv4 address, asked once per process; ``None`` if it cannot be found."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return str(ipaddress.IPv4Address(response.read().decode().strip()))
    except (OSError, ValueError):
        return None


def tag_key(key: str) -> str:
    """``key`` as an EC2 tag name the instance metadata service can serve: '/' becomes ':' and a
    space '_' (Prefect's labels, such as ``prefect.io/flow-run-id``, have '/').

    >>> tag_key("prefect.io/flow-run-id")
    'prefect.io:flow-run-id'
    """
    return key.replace("/", ":").replace(" ", "_")


_TRANSITION_TIME = re.compile(r"\((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) (?:GMT|UTC)\)")


def _transition_time(reason: str) -> float | None:
    """The time in EC2's StateTransitionReason ("User initiated (2026-12-01 07:22:24 GMT)"), when it has one.

    >>> _transition_time("User initiated (1970-01-01 00:01:00 GMT)")
    60.0
    """
    found = _TRANSITION_TIME.search(reason)
    if not found:
        return None
    return datetime.datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=datetime.UTC).timestamp()


def _batches(items: Sequence[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


class AWSProvider(Provider):
    """Machines on EC2 in ``region`` (default: boto3's, e.g. ``AWS_DEFAULT_REGION``). The options are
    :class:`AWSOptions`'s.

    Example::

        provider = AWSProvider(region="us-east-2", subnet_id="subnet-0abc…", instance_profile="prefect-remote-machine")
    """

    name = "aws"
    # containers=False: the stock image runs no container engine, and package sync replaces building images.
    capabilities = Capabilities(inbound_connections=True, terminate_one=True, containers=False, gpus=True, max_lifetime=None)
    runtime = "prefect_remote.providers.aws.runtime:EC2Runtime"
    lease_interval = 30.0  # a metadata read is cheap, but a lease tag reaches IMDS only after a delay
    max_boot_script = 16 * 1024  # EC2's user-data limit
    dask_ports = DASK_PORTS  # what the ingress security group admits
    agent_extras = ("aws",)
    agent_requirements = ("boto3",)  # the machine side reads SSM, tags and ends itself, and ships its log
    # Only on a real instance (the link-local metadata service), as EC2Runtime.halt: a sandbox's
    # instance is a process tree on someone's computer. InstanceInitiatedShutdownBehavior=terminate.
    halt_command = '[ -n "${AWS_EC2_METADATA_SERVICE_ENDPOINT:-}" ] || shutdown -h now'

    def __init__(
        self,
        region: str | None = None,
        *,
        ami: str | None = None,
        subnet_id: str | None = None,
        vpc_id: str | None = None,
        security_group_ids: Sequence[str] | str | None = None,
        instance_profile: str | None = None,
        log_group: str = "/prefect-remote/machines",
        secrets_prefix: str = "/prefect-remote/",
        allow_ingress_from: str = "me",
        metadata_endpoint: str | None = None,
        lease_interval: float | None = None,
    ) -> None:
        from prefect_remote.settings import get_settings

        settings = get_settings()
        instance_profile = instance_profile or settings.aws_instance_profile
        lease_interval = settings.aws_lease_interval if lease_interval is None else lease_interval
        session = _boto3().session.Session()  # its own: boto3's default session keeps the first credentials it found
        region = region or session.region_name
        if not region:
            raise AWSError(
                "no AWS region for the aws provider: pass region='us-east-2', set AWS_DEFAULT_REGION, or set one with `aws configure`"
            )
        try:
            self.options = AWSOptions(
                region=region,
                ami=ami,
                subnet_id=subnet_id,
                vpc_id=vpc_id,
                security_group_ids=security_group_ids or (),
                instance_profile=instance_profile,
                log_group=log_group,
                secrets_prefix=secrets_prefix,
                allow_ingress_from=allow_ingress_from,
                metadata_endpoint=metadata_endpoint,
                lease_interval=lease_interval,
            )
        except ValidationError as error:
            raise ValueError("; ".join(e["msg"].removeprefix("Value error, ") for e in error.errors())) from None
        self.lease_interval = self.options.lease_interval
        self._session: Any = session
        self._swept = False  # sweep_secrets, once per provider
        self._clients: dict[str, BaseClient] = {}

    def __getstate__(self) -> dict[str, Any]:
        # boto3's session and clients do not pickle (a flow sends its task runner, and so this
        # provider, with every task): they are made again on first use.
        return {key: value for key, value in self.__dict__.items() if key not in ("_session", "_clients")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _session=None, _clients={})

    @property
    def region(self) -> str:
        return self.options.region

    def client(self, service: str) -> BaseClient:
        """This provider's boto3 client for ``service`` (``"ec2"``, ``"ssm"``, ``"logs"``), made once."""
        if service not in self._clients:
            from botocore.config import Config

            if self._session is None:  # unpickled
                self._session = _boto3().session.Session()
            config = Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=10, read_timeout=60)
            self._clients[service] = self._session.client(service, region_name=self.region, config=config)
        return self._clients[service]

    def provision_infra(self, pool: str, store: str | None, say: Callable[[str], None]) -> dict[str, str | None]:
        """The bucket, log group, security groups and ``pool``'s role and instance profile
        (:func:`prefect_remote.providers.aws.infra.provision`), recorded as block fields."""
        from prefect_remote.providers.aws.infra import provision

        return provision(self, pool, store, say).block_fields()

    # -- sizing -----------------------------------------------------------------------------------
    @_translated
    def instance_types(self) -> Sequence[InstanceType]:
        return catalog.instance_types(self.client("ec2"), self.region)

    def choose_instance_type(self, spec: MachineSpec) -> InstanceType:
        return catalog.choose_instance_type(self.instance_types(), spec, self.region)

    def placement(self, spec: MachineSpec, instance_type: InstanceType) -> str:
        return f"aws EC2 {instance_type.name} in {self.region}"

    def check_spec(self, spec: MachineSpec) -> None:
        super().check_spec(spec)
        if spec.region and spec.region != self.region:
            raise CapacityError(
                f"region={spec.region!r}, but this aws provider launches in {self.region}; make it with region={spec.region!r}, "
                "or drop region"
            )

    @functools.cached_property
    def _prices(self) -> dict[str, float | None]:
        return {item.name: item.price for item in self.instance_types()}

    # -- secrets ----------------------------------------------------------------------------------
    def secrets_parameter(self, launch_id: str) -> str:
        """The SSM parameter that holds ``launch_id``'s secrets."""
        return f"{self.options.secrets_prefix}{launch_id}"

    @_translated
    def _store_secrets(self, launch_id: str, secrets: Mapping[str, str]) -> None:
        if not self._swept:
            self._swept = True
            self.sweep_secrets()
        value = json.dumps(dict(secrets))
        self.client("ssm").put_parameter(
            Name=self.secrets_parameter(launch_id),
            Description=f"prefect-remote: secret environment of launch {launch_id}",
            Value=value,
            Type="SecureString",
            Tier="Advanced" if len(value.encode()) > 4096 else "Standard",  # Standard holds 4 KB
            Tags=[{"Key": LAUNCH_TAG, "Value": launch_id}],
        )

    @_translated
    def _forget_secrets(self, launch_id: str) -> None:
        ssm = self.client("ssm")
        try:
            ssm.delete_parameter(Name=self.secrets_parameter(launch_id))
        except ssm.exceptions.ParameterNotFound:
            pass

    # -- launching --------------------------------------------------------------------------------
    @_translated
    def _start(self, launch: Launch) -> list[Machine]:
        bad = [key for key in launch.tags if not _IMDS_TAG_KEY.fullmatch(tag_key(key)) or key.lower().startswith("aws:")]
        if bad:
            raise ValueError(
                f"tags {bad}: on aws, tag names use letters, digits and + - = . , _ : @ / and spaces only, at most 128, and not "
                "the aws: prefix"
            )
        spec, instance_type = launch.spec, launch.instance_type
        image_id, root_device = self._image(instance_type)
        subnet_id = self._subnet()
        tags = {
            **{tag_key(key): value for key, value in launch.tags.items()},
            LAUNCH_TAG: launch.id,
            LEASE_TAG: str(int(time.time())),
            SPEC_TAG: spec.summary()[:256],
            **({OWNER_TAG: launch.owner} if launch.owner else {}),
            **({KEEPALIVE_TAG: str(spec.keepalive)} if spec.keepalive is not None else {}),
            **({SECRETS_TAG: self.secrets_parameter(launch.id)} if launch.has_secrets else {}),
        }
        tag_list = [{"Key": key, "Value": value} for key, value in tags.items()]
        params: dict[str, Any] = {
            "ImageId": image_id,
            "InstanceType": instance_type.name,
            "MinCount": launch.count,  # all or none: a launch that cannot have them all starts none
            "MaxCount": launch.count,
            "UserData": launch.boot_script,
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled", "InstanceMetadataTags": "enabled"},
            "InstanceInitiatedShutdownBehavior": "terminate",  # the agent's last resort, `shutdown -h now`, ends it
            "TagSpecifications": [{"ResourceType": kind, "Tags": tag_list} for kind in ("instance", "volume")],
            "SecurityGroupIds": list(self.options.security_group_ids) or self._security_groups(spec.allow_ingress_from),
        }
        if subnet_id:
            params["SubnetId"] = subnet_id
        if spec.disk_size:
            size = math.ceil(spec.disk_size / 2**30)
            params["BlockDeviceMappings"] = [
                {"DeviceName": root_device, "Ebs": {"VolumeSize": size, "VolumeType": "gp3", "DeleteOnTermination": True}}
            ]
        if self.options.instance_profile:
            params["IamInstanceProfile"] = {"Name": self.options.instance_profile}
        instances = self._run_instances(params, launch)
        try:
            return [self._machine(instance) for instance in instances]
        except BaseException:
            self.client("ec2").terminate_instances(InstanceIds=[i["InstanceId"] for i in instances])
            raise

    def _run_instances(self, params: dict[str, Any], launch: Launch) -> list[dict[str, Any]]:
        """One ``run_instances`` call (two with spot_with_fallback when spot capacity is short)."""
        from botocore.exceptions import ClientError

        ec2, policy, name = self.client("ec2"), launch.spec.spot_policy, launch.instance_type.name
        spot = policy in ("spot", "spot_with_fallback")
        try:
            # ClientToken: a retried request (a timeout, a lost answer) launches nothing twice.
            return ec2.run_instances(
                **params, **({"InstanceMarketOptions": SPOT_OPTIONS} if spot else {}), ClientToken=f"{launch.id}-{policy}"
            )["Instances"]
        except ClientError as error:
            code = _error_code(error)
            if code not in SPOT_CAPACITY_ERRORS:
                raise
            if not spot or policy == "spot":
                market = "spot" if spot else "on-demand"
                instead = "spot_policy='spot_with_fallback', " if spot else ""
                raise CapacityError(
                    f"{market} capacity unavailable for {name} in {self.region} ({code}); try {instead}another vm_type, or later"
                ) from None
            logger.warning("spot capacity unavailable for %s in %s (%s); launching on-demand", name, self.region, code)
        try:
            return ec2.run_instances(**params, ClientToken=f"{launch.id}-on-demand")["Instances"]
        except ClientError as error:
            if _error_code(error) in SPOT_CAPACITY_ERRORS:
                raise CapacityError(
                    f"no spot or on-demand capacity for {name} in {self.region} ({_error_code(error)}); try another vm_type, or later"
                ) from None
            raise

    def _image(self, instance_type: InstanceType) -> tuple[str, str]:
        """The AMI id to boot (resolving an SSM parameter) and its root device name; refuses an AMI
        of the other architecture."""
        from botocore.exceptions import ClientError

        wanted = self.options.ami or DEFAULT_AMI.format(arch=instance_type.arch)
        image_id = wanted
        if not wanted.startswith("ami-"):
            try:
                image_id = self.client("ssm").get_parameter(Name=wanted)["Parameter"]["Value"]
            except ClientError as error:
                if _error_code(error) != "ParameterNotFound":
                    raise
                raise CapacityError(
                    f"ami={wanted!r}: no such SSM parameter in {self.region}; pass an AMI id (ami-…) or a parameter that names one"
                ) from None
        try:
            [image] = self.client("ec2").describe_images(ImageIds=[image_id])["Images"]
        except (ClientError, ValueError) as error:
            if isinstance(error, ClientError) and not _error_code(error).startswith("InvalidAMIID"):
                raise
            raise CapacityError(
                f"ami={image_id!r} is not an image this account can launch in {self.region}; check the id and region"
            ) from None
        if image.get("Architecture") not in (None, instance_type.arch):
            raise CapacityError(
                f"ami={image_id!r} is {image['Architecture']}, but {instance_type.name} is {instance_type.arch}; "
                f"use an {instance_type.arch} image{' (or arm=True)' if instance_type.arch == 'x86_64' else ''}"
            )
        return image_id, image.get("RootDeviceName") or "/dev/xvda"

    # -- network: subnet and security groups ---------------------------------------------------------
    def _subnet(self) -> str | None:
        """The subnet to launch in: the one given, else one of ``vpc_id`` (preferring those that
        give public addresses), else EC2's default (the default VPC's)."""
        if self.options.subnet_id or not self.options.vpc_id:
            return self.options.subnet_id
        subnets = self.client("ec2").describe_subnets(Filters=[{"Name": "vpc-id", "Values": [self.options.vpc_id]}])["Subnets"]
        if not subnets:
            raise CapacityError(f"vpc_id={self.options.vpc_id!r} has no subnet in {self.region}; pass subnet_id=… or another VPC")
        return sorted(subnets, key=lambda s: (not s.get("MapPublicIpOnLaunch"), s["SubnetId"]))[0]["SubnetId"]

    @functools.cached_property
    def vpc_id(self) -> str:
        """The VPC machines launch in: the subnet's, the one given, else the region's default VPC."""
        ec2 = self.client("ec2")
        if self.options.subnet_id:
            return ec2.describe_subnets(SubnetIds=[self.options.subnet_id])["Subnets"][0]["VpcId"]
        if self.options.vpc_id:
            return self.options.vpc_id
        vpcs = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
        if not vpcs:
            raise CapacityError(
                f"no default VPC in {self.region}; pass subnet_id=… (or vpc_id=…), or create one with `aws ec2 create-default-vpc`"
            )
        return vpcs[0]["VpcId"]

    def _security_groups(self, allow_ingress_from: str | None) -> list[str]:
        """The groups the provider keeps per VPC: ``prefect-remote-<vpc>`` lets its members talk to
        each other on their private addresses (a cluster's workers and scheduler); a second,
        ``prefect-remote-<vpc>-dask-from-<cidr>``, admits the Dask ports from one source only. One
        ingress group per source, so that asking for ``"everyone"`` once never opens other machines."""
        vpc = self.vpc_id
        internal = self._group(
            f"prefect-remote-{vpc}",
            "prefect-remote machines: all traffic between them",
            lambda own: [{"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": own}]}],
        )
        cidr = self._ingress_cidr(ingress_source(allow_ingress_from) if allow_ingress_from else self.options.allow_ingress_from)
        if cidr is None:
            return [internal]
        ranges = (
            {"Ipv6Ranges": [{"CidrIpv6": cidr}]}
            if ":" in cidr
            else {"IpRanges": [{"CidrIp": cidr, "Description": "prefect-remote: Dask from allow_ingress_from"}]}
        )
        low, high = DASK_PORTS
        ingress = self._group(
            f"prefect-remote-{vpc}-dask-from-{cidr}",
            f"prefect-remote machines: Dask scheduler and dashboard ports from {cidr}",
            lambda own: [{"IpProtocol": "tcp", "FromPort": low, "ToPort": high, **ranges}],
        )
        return [internal, ingress]

    def _ingress_cidr(self, source: str) -> str | None:
        """The CIDR ``source`` admits: ``"me"`` is this launcher's public IP (``PREFECT_REMOTE_AWS_PUBLIC_IP``,
        else asked of checkip.amazonaws.com once); ``None`` if it cannot be found."""
        if source == "everyone":
            return "0.0.0.0/0"
        if source == "none":
            return None
        if source != "me":
            return source
        if self.runs_inside():  # this launcher is a machine of this VPC: it reaches machines on their private addresses
            return None
        from prefect_remote.settings import get_settings

        address = get_settings().aws_public_ip or public_ip(CHECKIP_URL)
        if address is None:
            logger.warning(
                "could not find this computer's public IP (%s unreachable): machines get no public ingress; "
                "set PREFECT_REMOTE_AWS_PUBLIC_IP or pass allow_ingress_from as a CIDR",
                CHECKIP_URL,
            )
            return None
        return str(ipaddress.ip_network(address))  # a bare address becomes /32 (or /128)

    def _group(self, name: str, description: str, rules: Callable[[str], list[dict[str, Any]]]) -> str:
        """The id of the security group ``name`` in this VPC, made with ``rules`` (given its own id) if missing."""
        from botocore.exceptions import ClientError

        ec2 = self.client("ec2")
        filters = [{"Name": "vpc-id", "Values": [self.vpc_id]}, {"Name": "group-name", "Values": [name]}]
        found = ec2.describe_security_groups(Filters=filters)["SecurityGroups"]
        if found and found[0].get("IpPermissions"):  # made whole: no rule to add (nor the permission to add one)
            return found[0]["GroupId"]
        if found:
            group_id = found[0]["GroupId"]
        else:
            try:
                group_id = ec2.create_security_group(
                    GroupName=name,
                    Description=description,
                    VpcId=self.vpc_id,
                    TagSpecifications=[{"ResourceType": "security-group", "Tags": [{"Key": MANAGED_TAG, "Value": "true"}]}],
                )["GroupId"]
            except ClientError as error:
                if _error_code(error) != "InvalidGroup.Duplicate":
                    raise
                group_id = ec2.describe_security_groups(Filters=filters)["SecurityGroups"][0][
                    "GroupId"
                ]  # another launcher made it just now
        # Also for a found group: a launcher that died between creating it and adding its rules left none.
        try:
            ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=rules(group_id))
        except ClientError as error:
            if _error_code(error) != "InvalidPermission.Duplicate":
                raise
        return group_id

    # -- finding ----------------------------------------------------------------------------------
    def _instances(self, **params: Any) -> list[dict[str, Any]]:
        pages = self.client("ec2").get_paginator("describe_instances").paginate(**params)
        return [instance for page in pages for reservation in page["Reservations"] for instance in reservation["Instances"]]

    def _machine(self, instance: Mapping[str, Any]) -> Machine:
        tags = {tag["Key"]: tag["Value"] for tag in instance.get("Tags", [])}
        spot = instance.get("InstanceLifecycle") == "spot"
        exit_code = tags.get(EXIT_CODE_TAG, "")
        private = instance.get("PrivateIpAddress")
        return Machine(
            id=instance["InstanceId"],
            provider=self.name,
            state=STATES.get(instance["State"]["Name"], "terminated"),
            instance_type=instance["InstanceType"],
            created=instance["LaunchTime"].timestamp(),
            tags={key: value for key, value in tags.items() if not key.startswith((TAG_PREFIX, "aws:"))},
            spec=tags.get(SPEC_TAG, "default"),
            region=self.region,
            spot=spot,
            owner=tags.get(OWNER_TAG),
            private_address=private,
            public_address=instance.get("PublicIpAddress") or private,
            reason=tags.get(REASON_TAG) or instance.get("StateReason", {}).get("Message") or None,
            exit_code=int(exit_code) if exit_code.lstrip("-").isdigit() else None,
            details={
                "price_per_hour": self._prices.get(instance["InstanceType"]),
                "market": "spot" if spot else "on-demand",
                "ec2_state": instance["State"]["Name"],
                "launch": tags.get(LAUNCH_TAG),
                "image_id": instance.get("ImageId"),
                "availability_zone": instance.get("Placement", {}).get("AvailabilityZone"),
                "lease": float(tags[LEASE_TAG]) if LEASE_TAG in tags else None,
                "ended": _transition_time(instance.get("StateTransitionReason", "")) if instance["State"]["Name"] not in STATES else None,
            },
        )

    def _not_found(self, machine_id: str) -> MachineNotFound:
        return MachineNotFound(f"no aws machine {machine_id!r} in {self.region}; `prefect-remote machines ls` lists them")

    def _described(self, machine_ids: Sequence[str]) -> list[dict[str, Any]]:
        """The instances ``machine_ids`` (one call); :class:`MachineNotFound` names the first unknown."""
        from botocore.exceptions import ClientError

        for machine_id in machine_ids:
            if not _INSTANCE_ID.fullmatch(machine_id):
                raise self._not_found(machine_id)
        try:
            instances = self._instances(InstanceIds=list(machine_ids))
        except ClientError as error:
            if not _error_code(error).startswith("InvalidInstanceID"):
                raise
            unknown = re.findall(r"i-[0-9a-f]+", str(error)) or list(machine_ids)
            raise self._not_found(unknown[0]) from None
        mine = {i["InstanceId"]: i for i in instances if any(t["Key"] == LAUNCH_TAG for t in i.get("Tags", []))}
        for machine_id in machine_ids:
            if machine_id not in mine:  # an instance prefect-remote did not launch is not its to manage
                raise self._not_found(machine_id)
        return [mine[machine_id] for machine_id in machine_ids]

    @_translated
    def describe(self, machine_id: str) -> Machine:
        return self._machine(self._described([machine_id])[0])

    @_translated
    def list(self, tags: Mapping[str, str] | None = None, *, include_terminated: bool = False) -> list[Machine]:
        filters = [{"Name": "tag-key", "Values": [LAUNCH_TAG]}]
        filters += [{"Name": f"tag:{tag_key(key)}", "Values": [value]} for key, value in (tags or {}).items()]
        if not include_terminated:
            filters.append({"Name": "instance-state-name", "Values": list(STATES)})
        machines = [self._machine(instance) for instance in self._instances(Filters=filters)]
        return sorted(machines, key=lambda m: (m.created, m.id), reverse=True)

    # -- ending -----------------------------------------------------------------------------------
    @_translated
    def terminate(self, machine_ids: Iterable[str], *, reason: str = "terminated on request", exit_code: int | None = None) -> None:
        ids = list(dict.fromkeys(machine_ids))
        if not ids:
            return
        instances = self._described(ids)
        # Ended ones keep the reason they ended with.
        ending = [i["InstanceId"] for i in instances if i["State"]["Name"] not in ENDED_STATES]
        ec2 = self.client("ec2")
        if ending:
            tags = [{"Key": REASON_TAG, "Value": reason[:256]}]
            if exit_code is not None:
                tags.append({"Key": EXIT_CODE_TAG, "Value": str(exit_code)})
            ec2.create_tags(Resources=ending, Tags=tags)
            ec2.terminate_instances(InstanceIds=ending)
        with_secrets = {tags[LAUNCH_TAG] for i in instances if SECRETS_TAG in (tags := {t["Key"]: t["Value"] for t in i.get("Tags", [])})}
        if with_secrets:
            self._forget_ended_launches(with_secrets)

    def sweep_secrets(self, older_than: float = SECRETS_SWEEP_AGE) -> list[str]:
        """Deletes launch secrets left behind by owners that died (their machines ended themselves
        and nobody renewed, so nobody saw them end): those older than ``older_than`` seconds with no
        instance left. The first launch with secrets in a process does it; returns the launch ids."""
        from botocore.exceptions import ClientError

        ssm = self.client("ssm")
        prefix = self.options.secrets_prefix
        cutoff = time.time() - older_than
        try:
            pages = ssm.get_paginator("get_parameters_by_path").paginate(
                Path=prefix.rstrip("/") or "/", Recursive=False, WithDecryption=False
            )
            names = [p["Name"] for page in pages for p in page["Parameters"] if p["LastModifiedDate"].timestamp() < cutoff]
        except ClientError as error:  # a tidy-up: an identity that may not list parameters just skips it
            logger.debug("launch secrets not swept: %s", error)
            return []
        launches = {name.rsplit("/", 1)[-1] for name in names if name.rsplit("/", 1)[-1].startswith("launch-")}
        for batch in _batches(sorted(launches), 200):
            self._forget_ended_launches(set(batch))
        return sorted(launches)

    def _forget_ended_launches(self, launch_ids: set[str]) -> None:
        """Deletes the secrets of those launches no instance of which is left (one describe call)."""
        alive_states = ["pending", "running", "stopping", "stopped"]  # (a shutting-down machine reads no more secrets)
        filters = [{"Name": f"tag:{LAUNCH_TAG}", "Values": sorted(launch_ids)}, {"Name": "instance-state-name", "Values": alive_states}]
        alive = {t["Value"] for i in self._instances(Filters=filters) for t in i.get("Tags", []) if t["Key"] == LAUNCH_TAG}
        for launch_id in sorted(launch_ids - alive):
            self._forget_secrets(launch_id)

    # -- logs and leases --------------------------------------------------------------------------
    @_translated
    def logs(self, machine_id: str, *, cursor: str | None = None) -> LogChunk:
        """CloudWatch Logs, stream ``<instance id>`` of ``log_group``; the cursor is its ``nextForwardToken``."""
        from botocore.exceptions import ClientError

        if not _INSTANCE_ID.fullmatch(machine_id):
            raise self._not_found(machine_id)
        params: dict[str, Any] = {"logGroupName": self.options.log_group, "logStreamName": machine_id, "startFromHead": True}
        if cursor:
            params["nextToken"] = cursor
        try:
            page = self.client("logs").get_log_events(**params)
        except ClientError as error:
            if _error_code(error) != "ResourceNotFoundException":
                raise
            self.describe(machine_id)  # an unknown machine is an error; a known one has not logged yet
            return LogChunk("", cursor or "")
        text = "".join(event["message"] if event["message"].endswith("\n") else event["message"] + "\n" for event in page["events"])
        return LogChunk(text, page.get("nextForwardToken") or cursor or "")

    @_translated
    def renew_leases(self, machine_ids: Iterable[str]) -> list[str]:
        """One describe call (per 200 ids) finds the live instances, one ``create_tags`` call (per
        1000) renews them all."""
        from botocore.exceptions import ClientError

        ids = list(dict.fromkeys(machine_ids))
        candidates = [machine_id for machine_id in ids if _INSTANCE_ID.fullmatch(machine_id)]
        instances: list[dict[str, Any]] = []
        for batch in _batches(candidates, 200):  # EC2 takes at most 200 values per filter
            instances += self._instances(Filters=[{"Name": "instance-id", "Values": batch}])
        alive = {i["InstanceId"] for i in instances if i["State"]["Name"] in STATES}
        # Machines mostly end themselves (payload done, timeouts): their launch's secrets go once none is left.
        ended_with_secrets = {
            tags[LAUNCH_TAG]
            for i in instances
            if i["State"]["Name"] not in STATES and SECRETS_TAG in (tags := {t["Key"]: t["Value"] for t in i.get("Tags", [])})
        }
        if ended_with_secrets:
            self._forget_ended_launches(ended_with_secrets)
        now = str(int(time.time()))
        for batch in _batches([machine_id for machine_id in ids if machine_id in alive], 1000):
            try:
                self.client("ec2").create_tags(Resources=batch, Tags=[{"Key": LEASE_TAG, "Value": now}])
            except ClientError as error:
                if not _error_code(error).startswith("InvalidInstanceID"):
                    raise
                # EC2 is eventually consistent: an instance launched a moment ago may not be taggable
                # yet. Its lease is fresh from launch; the next renewal reaches it.
                logger.debug("lease renewal skipped this round: %s", error)
        return [machine_id for machine_id in ids if machine_id not in alive]

    # -- elsewhere: a cluster's scheduler, the machine side --------------------------------------------
    def client_options(self) -> dict[str, Any]:
        """The options (region and configuration; never credentials, which each place finds itself)."""
        return self.options.model_dump(mode="json")

    def machine_options(self) -> dict[str, Any]:
        """All of them (none is secret): a machine launches in the same region and VPC, with the same profile."""
        return self.client_options()

    @_translated
    def network(self) -> str:
        """The VPC, e.g. ``aws:us-east-2:vpc-0abc…``: its machines reach each other's private addresses."""
        return f"aws:{self.region}:{self.vpc_id}"

    def runtime_options(self, launch_id: str) -> dict[str, Any]:
        return {
            "region": self.region,
            "secrets_parameter": self.secrets_parameter(launch_id),
            "log_group": self.options.log_group,
            "lease_tag": LEASE_TAG,
            "metadata_endpoint": self.options.metadata_endpoint,
        }
