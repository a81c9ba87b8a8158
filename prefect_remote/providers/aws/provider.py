"""The EC2 provider: machines are instances in the user's own AWS account, found again by their tags.

A launch is one ``run_instances`` call (IMDSv2 only, terminate on shutdown, tags on instance and
volume, spot when asked); its secrets are one SSM SecureString parameter that its instances read
with their instance profile; an owner's lease is a tag it renews for all its instances in one
``create_tags`` call, and that the instances read through the metadata service. boto3 comes with
the ``aws`` extra and is imported on first use; region, credentials and endpoint come from boto3's
usual chain.

Beside it: ``options`` (:class:`~prefect_remote.providers.aws.options.AWSOptions`), ``clients``
(boto3 clients, errors that name the fix), ``secrets`` (the SSM channel), ``network`` (subnet, VPC,
security groups), ``tags`` (the tag vocabulary), ``catalog`` and ``prices`` (instance types), and
``infra`` (``--provision-infra``), which uses this provider.

Example::

    provider = AWSProvider(region="us-east-2", allow_ingress_from="me")
    [machine] = provider.launch(MachineSpec(cpu=2, memory="4 GiB", spot_policy="spot_with_fallback"), BootPayload(["python", "app.py"]))
    print(machine.cost_summary(), machine.estimated_cost())
"""

from __future__ import annotations

import datetime
import functools
import logging
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from prefect_remote.errors import CapacityError, MachineNotFound
from prefect_remote.on_machine import MACHINE_ID_ENV
from prefect_remote.providers.aws import catalog
from prefect_remote.providers.aws.clients import AWSClients, AWSError, error_code, eventually, not_yet_visible, translated
from prefect_remote.providers.aws.network import AWSNetwork, Subnet
from prefect_remote.providers.aws.options import AWSOptions
from prefect_remote.providers.aws.runtime import EXIT_CODE_TAG, LEASE_TAG, REASON_TAG
from prefect_remote.providers.aws.secrets import forget_secrets, parameter_name, store_secrets, stored_launches
from prefect_remote.providers.aws.tags import (
    CONTROLLER_TAG,
    COUNT_TAG,
    KEEPALIVE_TAG,
    LAUNCH_TAG,
    OWNER_TAG,
    PARENT_TAG,
    SECRETS_TAG,
    SPEC_TAG,
    imds_tag_key_error,
    tag_key,
)
from prefect_remote.providers.base import (
    DEFAULT_DISK_GIB,
    TAG_PREFIX,
    Capabilities,
    InstanceType,
    Launch,
    LogChunk,
    Machine,
    Provider,
    batches,
)
from prefect_remote.providers.capacity import Placement, first_with_capacity, placements
from prefect_remote.providers.network import DASK_PORTS

if TYPE_CHECKING:
    from botocore.client import BaseClient

    from prefect_remote.spec import MachineSpec

logger = logging.getLogger("prefect_remote.providers.aws")

DEFAULT_AMI = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-{arch}"
# A GPU machine's default: AWS's Deep Learning Base OSS Nvidia Driver GPU AMI (Amazon Linux 2023), whose
# NVIDIA driver and CUDA stack the stock AL2023 lacks; x86_64 and arm64 (G5g) alike. Its root snapshot
# is larger (75 GiB): the root disk is never smaller.
GPU_AMI = "/aws/service/deeplearning/ami/{arch}/base-oss-nvidia-driver-gpu-amazon-linux-2023/latest/ami-id"
# An image= machine's default: AWS's ECS-optimized Amazon Linux 2023 AMI, which carries Docker (and, its GPU
# variant, NVIDIA's driver and container toolkit), so the boot installs no engine (bench/bench_engine_ami.py,
# docs/guides/images.md). AWS publishes no arm64 GPU variant: an arm64 GPU machine keeps GPU_AMI.
ECS_AMI = "/aws/service/ecs/optimized-ami/amazon-linux-2023/{variant}recommended/image_id"
ECS_VARIANTS = {("x86_64", False): "", ("arm64", False): "arm64/", ("x86_64", True): "gpu/"}
# What EC2 answers when capacity or a quota is short in one place or market (the capacity policy's
# shortage): the launch tries the next subnet (another availability zone), then on-demand.
CAPACITY_ERRORS = frozenset(
    {
        "InsufficientInstanceCapacity",
        "SpotMaxPriceTooLow",
        "MaxSpotInstanceCountExceeded",
        "UnfulfillableCapacity",
        "VcpuLimitExceeded",
        "InstanceLimitExceeded",
        "InsufficientFreeAddressesInSubnet",
        "Unsupported",  # the instance type is not offered in this availability zone
    }
)
SPOT_OPTIONS = {"MarketType": "spot", "SpotOptions": {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}}
# EC2's states as a machine's; the rest have ended. A shutting-down instance still runs its processes
# (a flow run's engine may still report its state): it has not ended until it is terminated.
STATES: dict[str, Literal["pending", "running", "terminated"]] = {"pending": "pending", "running": "running", "shutting-down": "running"}
ENDED_STATES = ("shutting-down", "terminated")  # terminating these again is moot
ALIVE_STATES = ("pending", "running", "stopping", "stopped")  # a launch's secrets stay while one is in these (shutting-down reads none)
_INSTANCE_ID = re.compile(r"i-[0-9a-f]{8,17}")
BURSTABLE = re.compile(r"t\d[a-z]*\.")  # t2, t3, t3a, t4g: CPU credits


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


def default_ami(arch: str, *, gpu: bool, container: bool) -> str:
    """The SSM parameter of the AMI a launch boots when ``ami`` is not given: for a machine that runs a
    container image (``container``), the ECS-optimized Amazon Linux 2023 AMI of its architecture (its GPU
    variant for a GPU); otherwise stock Amazon Linux 2023, or for a GPU AWS's Deep Learning Base AMI.

    >>> default_ami("arm64", gpu=False, container=True)
    '/aws/service/ecs/optimized-ami/amazon-linux-2023/arm64/recommended/image_id'
    """
    if container and (arch, gpu) in ECS_VARIANTS:
        return ECS_AMI.format(variant=ECS_VARIANTS[arch, gpu])
    return (GPU_AMI if gpu else DEFAULT_AMI).format(arch=arch)


def _shortage(error: Exception) -> str | None:
    """The code of an EC2 error that says capacity is short (:data:`CAPACITY_ERRORS`), else None."""
    code = error_code(error)
    return code if code in CAPACITY_ERRORS else None


def _launch_with_secrets(instance: Mapping[str, Any]) -> str | None:
    """The launch of ``instance`` if it kept secrets (its ``prefect-remote:secrets`` tag)."""
    tags = {tag["Key"]: tag["Value"] for tag in instance.get("Tags", [])}
    return tags.get(LAUNCH_TAG) if SECRETS_TAG in tags else None


class AWSProvider(Provider):
    """Machines on EC2 in ``region`` (default: boto3's, e.g. ``AWS_DEFAULT_REGION``). The options are
    :class:`~prefect_remote.providers.aws.options.AWSOptions`'s; one given as None takes its default.

    Example::

        provider = AWSProvider(region="us-east-2", subnet_id="subnet-0abc…", instance_profile="prefect-remote-machine")
    """

    name = "aws"
    # containers: the boot installs Docker where the AMI has no engine (prefect_remote.machine.boot), and the agent runs the image.
    capabilities = Capabilities(inbound_connections=True, terminate_one=True, containers=True, gpus=True, max_lifetime=None)
    runtime = "prefect_remote.providers.aws.runtime:EC2Runtime"
    block_fields = ("region", "instance_profile", "log_group", "secrets_prefix")  # what --provision-infra records
    options_model = AWSOptions
    infra = "prefect_remote.providers.aws.infra"  # the bucket, log group, security groups, and the pool's role and instance profile
    doctor = "prefect_remote.providers.aws.doctor"  # credentials, permissions, quotas, network, bucket
    lease_interval = 30.0  # a metadata read is cheap, but a lease tag reaches IMDS only after a delay
    max_boot_script = 16 * 1024  # EC2's user-data limit
    min_poll = 1.0  # DescribeInstances shares a bucket of about 20 calls/s with every other read of the account
    # EC2 lists a new instance (DescribeInstances by filters) a few seconds after its launch, and knows its id
    # sooner; AWS gives no bound, so generously. It keeps an ended one listed for about an hour: an instance
    # missing from a listing is far more likely too young to be listed than gone.
    visible_after = 600.0
    dask_ports = DASK_PORTS  # what the ingress security group admits
    agent_extras = ("aws",)
    agent_requirements = ("boto3",)  # the machine side reads SSM, tags and ends itself, and ships its log
    # The boot script runs on the instance alone: its own shutdown, which InstanceInitiatedShutdownBehavior=
    # terminate makes a termination.
    halt_command = "shutdown -h now"
    # EC2 has no maximum run time of its own: a scheduled shutdown (terminate, as above) that the agent
    # pushes forward ends an instance whose agent died, with no API call and no credentials.
    backstop_command = "shutdown -h +{minutes}"
    # EC2 runs user data on an instance's first boot only (cloud-init's per-instance semaphore): after a
    # reboot (RebootInstances, a recovery) no agent would enforce timeout or keepalive. cloud-init runs
    # per-boot scripts on every boot, before user data: this one powers a rebooted instance off, which
    # InstanceInitiatedShutdownBehavior=terminate makes a termination. (Written on the first boot, after
    # that boot's per-boot scripts ran.)
    reboot_hook = (
        "mkdir -p /var/lib/cloud/scripts/per-boot\n"
        "printf '%s\\n' '#!/bin/sh' 'echo \"prefect-remote: this instance rebooted, and EC2 runs its boot once: ending it\"' "
        "'shutdown -h now' > /var/lib/cloud/scripts/per-boot/prefect-remote-end-on-reboot\n"
        "chmod 755 /var/lib/cloud/scripts/per-boot/prefect-remote-end-on-reboot"
    )

    def __init__(self, **options: Any) -> None:
        given = {key: value for key, value in options.items() if value is not None}
        self.options = AWSOptions.load(**given)
        self.clients = AWSClients(self.options.region)
        if not self.clients.region:
            raise AWSError(
                "no AWS region for the aws provider: pass region='us-east-2', set PREFECT_REMOTE_AWS_REGION or AWS_DEFAULT_REGION, "
                "or set one with `aws configure`"
            )
        if self.options.region is None:  # boto3's
            self.options = AWSOptions.load(**given, region=self.clients.region)
        self.lease_interval = self.options.lease_interval
        self.networking = AWSNetwork(self.clients, self.options)

    @property
    def region(self) -> str:
        return self.options.region

    def client(self, service: str) -> BaseClient:
        """This provider's boto3 client for ``service`` (``"ec2"``, ``"ssm"``, ``"logs"``), made once."""
        return self.clients.client(service)

    @property
    def vpc_id(self) -> str:
        """The VPC machines launch in (:attr:`AWSNetwork.vpc_id <prefect_remote.providers.aws.network.AWSNetwork.vpc_id>`)."""
        return self.networking.vpc_id

    # -- sizing -----------------------------------------------------------------------------------
    def instance_types(self) -> Sequence[InstanceType]:
        with translated():
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

    # -- secrets: one SSM parameter per launch (aws/secrets.py) ---------------------------------------
    def secrets_parameter(self, launch_id: str) -> str:
        """The SSM parameter that holds ``launch_id``'s secrets."""
        return parameter_name(self.options.secrets_prefix, launch_id)

    def _store_secrets(self, launch_id: str, secrets: Mapping[str, str]) -> None:
        store_secrets(self.clients, self.options.secrets_prefix, launch_id, secrets)

    def _forget_secrets(self, launch_id: str) -> None:
        forget_secrets(self.clients, self.options.secrets_prefix, launch_id)
        self._described_of.pop(launch_id, None)

    # -- launching --------------------------------------------------------------------------------
    @functools.cached_property
    def _own_instance(self) -> str | None:
        """The ARN of the instance this process runs on, when it runs on one of this provider's
        machines (its agent names it in the environment), else None. The account and partition are
        the caller's (STS's GetCallerIdentity, which needs no permission); the region, this provider's,
        which a machine launches in."""
        machine_id = os.environ.get(MACHINE_ID_ENV, "")
        if not _INSTANCE_ID.fullmatch(machine_id):
            return None
        return self.instance_arn(machine_id)

    @functools.cached_property
    def account(self) -> tuple[str, str]:
        """The account and partition (``aws``, ``aws-cn``…) of the credentials in use (STS's
        GetCallerIdentity, which needs no permission; asked once)."""
        with translated("sts", "find the AWS account"):
            identity = self.client("sts").get_caller_identity()
        return identity["Account"], identity["Arn"].split(":")[1]

    def instance_arn(self, machine_id: str) -> str:
        """``arn:<partition>:ec2:<region>:<account>:instance/<id>`` of this account's instance ``machine_id``."""
        account, partition = self.account
        return f"arn:{partition}:ec2:{self.region}:{account}:instance/{machine_id}"

    def _kin_tags(self, launch: Launch) -> dict[str, str]:
        """The tags that say which machines may act on a launch's instances besides themselves
        (permissions.machine_policy): the machine this launch is made from (a flow run's that starts a
        cluster, a scheduler's that adds workers), and the machine named to keep them (the cluster's
        scheduler, for the first workers its creator launches)."""
        own = self._own_instance
        controller = launch.controller
        return {
            **({PARENT_TAG: own} if own else {}),
            **({CONTROLLER_TAG: self.instance_arn(controller)} if controller and _INSTANCE_ID.fullmatch(controller) else {}),
        }

    def _start(self, launch: Launch) -> list[Machine]:
        with translated():
            return self._start_instances(launch)

    def _start_instances(self, launch: Launch) -> list[Machine]:
        bad = {key: why for key in launch.tags if (why := imds_tag_key_error(tag_key(key)))}
        if bad:
            raise ValueError(
                f"tags {list(bad)}: {'; '.join(bad.values())}. On aws, tag names use letters, digits and + - = . , _ : @ / and "
                "spaces only, at most 128, not the aws: prefix, and not '.', '..' or '_index'"
            )
        spec, instance_type = launch.spec, launch.instance_type
        image_id, root_device, image_gib = self._image(instance_type, container=spec.image is not None)
        tags = {
            **{tag_key(key): value for key, value in launch.tags.items()},
            LAUNCH_TAG: launch.id,
            LEASE_TAG: lease_stamp(),
            SPEC_TAG: spec.summary()[:256],
            **({OWNER_TAG: launch.owner} if launch.owner else {}),
            **({KEEPALIVE_TAG: str(spec.keepalive)} if spec.keepalive is not None else {}),
            **({SECRETS_TAG: self.secrets_parameter(launch.id), COUNT_TAG: str(launch.count)} if launch.has_secrets else {}),
            **self._kin_tags(launch),
        }
        tag_list = [{"Key": key, "Value": value} for key, value in tags.items()]
        params: dict[str, Any] = {
            "ImageId": image_id,
            "InstanceType": instance_type.name,
            "MinCount": launch.count,  # all or none: a launch that cannot have them all starts none
            "MaxCount": launch.count,
            "UserData": launch.boot_script,
            # Hop limit 2: a container on the machine (a payload that runs Docker) reaches the metadata
            # service too; EC2's default is 1, or the image's (AL2023 asks for 2).
            "MetadataOptions": {
                "HttpTokens": "required",
                "HttpEndpoint": "enabled",
                "InstanceMetadataTags": "enabled",
                "HttpPutResponseHopLimit": 2,
            },
            "InstanceInitiatedShutdownBehavior": "terminate",  # the agent's last resort, `shutdown -h now`, ends it
            "TagSpecifications": [{"ResourceType": kind, "Tags": tag_list} for kind in ("instance", "volume")],
            "BlockDeviceMappings": [
                {
                    "DeviceName": root_device,
                    "Ebs": {
                        "VolumeSize": self._disk_gib(spec, image_gib),
                        "VolumeType": "gp3",
                        "DeleteOnTermination": True,
                        "Encrypted": True,
                    },
                }
            ],
        }
        if self.options.instance_profile:
            params["IamInstanceProfile"] = {"Name": self.options.instance_profile}
        if BURSTABLE.match(instance_type.name):
            # Standard credits: a busy burstable machine slows to its baseline instead of running on
            # surplus credits, which T3/T4g ("unlimited" by default) bill on top of the price shown.
            params["CreditSpecification"] = {"CpuCredits": "standard"}
        groups = list(self.options.security_group_ids) or self.networking.security_groups(
            spec.allow_ingress_from, runs_inside=self.runs_inside
        )
        # Inbound connections from outside the VPC (a cluster's client) reach a machine at its public IP only.
        public = (spec.allow_ingress_from or self.options.allow_ingress_from) != "none" and not self.runs_inside()
        instances = self._run_instances(params, launch, groups, made_groups=not self.options.security_group_ids, public=public)
        self._launched_lately[launch.id] = (time.monotonic(), frozenset(i["InstanceId"] for i in instances))
        try:
            return [self._machine(instance) for instance in instances]
        except BaseException:
            self.client("ec2").terminate_instances(InstanceIds=[i["InstanceId"] for i in instances])
            raise

    @staticmethod
    def _disk_gib(spec: MachineSpec, image_gib: int | None) -> int:
        """The root disk's size: ``disk_size`` (default 40 GiB, or the image's snapshot where larger),
        never below the image's snapshot (EC2 refuses a smaller one)."""
        if not spec.disk_size:
            return max(DEFAULT_DISK_GIB, image_gib or 0)  # a GPU image's snapshot is larger than the default
        wanted = math.ceil(spec.disk_size / 2**30)
        if image_gib and wanted < image_gib:
            logger.warning(
                "disk_size of %d GiB is below the image's %d GiB snapshot: the root disk takes %d GiB", wanted, image_gib, image_gib
            )
            return image_gib
        return wanted

    def _run_instances(
        self, params: dict[str, Any], launch: Launch, groups: list[str], *, made_groups: bool, public: bool
    ) -> list[dict[str, Any]]:
        """One ``run_instances`` call per placement tried (:mod:`prefect_remote.providers.capacity`):
        each subnet (availability zone) in turn while capacity or a quota is short there, then
        on-demand with spot_with_fallback. A launch that needs a public IP asks for one where the
        subnet gives none. Resources made a moment ago (the instance profile, the groups) that EC2
        does not see yet are retried (:func:`~prefect_remote.providers.aws.clients.eventually`), and
        the launch returns once EC2 shows its instances (the ``instance_exists`` waiter)."""
        ec2, name = self.client("ec2"), launch.instance_type.name
        subnets = {subnet.id: subnet for subnet in self.networking.subnets}

        def run(placement: Placement) -> list[dict[str, Any]]:
            subnet: Subnet = subnets[placement.zone]
            where: dict[str, Any] = {"SecurityGroupIds": groups, **({"SubnetId": subnet.id} if subnet.id else {})}
            if public and not subnet.public:
                nic = {"DeviceIndex": 0, "Groups": groups, "AssociatePublicIpAddress": True}
                where = {"NetworkInterfaces": [{**nic, **({"SubnetId": subnet.id} if subnet.id else {})}]}
            market = {"InstanceMarketOptions": SPOT_OPTIONS} if placement.spot else {}
            # ClientToken: a retried request (a timeout, a lost answer) launches nothing twice.
            token = f"{launch.id}-{placement.market}-{subnet.id or ''}"
            return eventually(
                lambda: ec2.run_instances(**params, **where, **market, ClientToken=token)["Instances"],
                retry_if=lambda error: not_yet_visible(error, groups=made_groups),
            )

        def refused(placement: Placement, code: str, tried: Sequence[Placement]) -> CapacityError:
            if len({p.spot for p in tried}) > 1:
                return CapacityError(f"no spot or on-demand capacity for {name} in {self.region} ({code}); try another vm_type, or later")
            instead = "spot_policy='spot_with_fallback', " if placement.spot else ""
            return CapacityError(
                f"{placement.market} capacity unavailable for {name} in {self.region} ({code}); try {instead}another vm_type, or later"
            )

        def falling_back(placement: Placement, then: Placement, code: str) -> None:
            if then.spot != placement.spot:  # every subnet tried on this market
                logger.warning(
                    "%s capacity unavailable for %s in %s (%s); launching %s", placement.market, name, self.region, code, then.market
                )
            else:
                here, there = subnets[placement.zone], subnets[then.zone]
                logger.warning(
                    "%s capacity unavailable for %s in %s (%s, %s); trying %s (%s)",
                    placement.market,
                    name,
                    here.zone,
                    here.id,
                    code,
                    there.zone,
                    there.id,
                )

        tried = placements(launch.spec.spot_policy, list(subnets))
        instances = first_with_capacity(tried, run, shortage=_shortage, refused=refused, falling_back=falling_back)
        # EC2 is eventually consistent: a new instance may be unknown to the next calls for a moment.
        ec2.get_waiter("instance_exists").wait(
            InstanceIds=[i["InstanceId"] for i in instances], WaiterConfig={"Delay": 1, "MaxAttempts": 60}
        )
        return instances

    def _image(self, instance_type: InstanceType, container: bool = False) -> tuple[str, str, int | None]:
        """The AMI id to boot (resolving an SSM parameter), its root device name and its root
        snapshot's size in GiB (when the image says); refuses an AMI of the other architecture.
        Default: :func:`default_ami` (``container``: the launch runs an image)."""
        from botocore.exceptions import ClientError

        wanted = self.options.ami or default_ami(instance_type.arch, gpu=bool(instance_type.gpu), container=container)
        image_id = wanted
        if not wanted.startswith("ami-"):
            try:
                image_id = self.client("ssm").get_parameter(Name=wanted)["Parameter"]["Value"]
            except ClientError as error:
                if error_code(error) != "ParameterNotFound":
                    raise
                raise CapacityError(
                    f"ami={wanted!r}: no such SSM parameter in {self.region}; pass an AMI id (ami-…) or a parameter that names one"
                ) from None
        try:
            [image] = self.client("ec2").describe_images(ImageIds=[image_id])["Images"]
        except (ClientError, ValueError) as error:
            if isinstance(error, ClientError) and not error_code(error).startswith("InvalidAMIID"):
                raise
            raise CapacityError(
                f"ami={image_id!r} is not an image this account can launch in {self.region}; check the id and region"
            ) from None
        if image.get("Architecture") not in (None, instance_type.arch):
            raise CapacityError(
                f"ami={image_id!r} is {image['Architecture']}, but {instance_type.name} is {instance_type.arch}; "
                f"use an {instance_type.arch} image{' (or arm=True)' if instance_type.arch == 'x86_64' else ''}"
            )
        root = image.get("RootDeviceName") or "/dev/xvda"
        sizes = [m["Ebs"].get("VolumeSize") for m in image.get("BlockDeviceMappings", []) if m.get("DeviceName") == root and "Ebs" in m]
        return image_id, root, next((size for size in sizes if size), None)

    # -- finding ----------------------------------------------------------------------------------
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
            public_address=instance.get("PublicIpAddress"),  # none until it runs, and none in a private subnet
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
            instances = self.clients.instances(InstanceIds=list(machine_ids))
        except ClientError as error:
            if not error_code(error).startswith("InvalidInstanceID"):
                raise
            unknown = re.findall(r"i-[0-9a-f]+", str(error)) or list(machine_ids)
            raise self._not_found(unknown[0]) from None
        mine = {i["InstanceId"]: i for i in instances if any(t["Key"] == LAUNCH_TAG for t in i.get("Tags", []))}
        for machine_id in machine_ids:
            if machine_id not in mine:  # an instance prefect-remote did not launch is not its to manage
                raise self._not_found(machine_id)
        return [mine[machine_id] for machine_id in machine_ids]

    def describe(self, machine_id: str) -> Machine:
        with translated():
            return self._machine(self._described([machine_id])[0])

    def list(self, tags: Mapping[str, str] | None = None, *, include_terminated: bool = False) -> list[Machine]:
        filters = [{"Name": "tag-key", "Values": [LAUNCH_TAG]}]
        filters += [{"Name": f"tag:{tag_key(key)}", "Values": [value]} for key, value in (tags or {}).items()]
        if not include_terminated:
            filters.append({"Name": "instance-state-name", "Values": list(STATES)})
        with translated():
            machines = [self._machine(instance) for instance in self.clients.instances(Filters=filters)]
        return sorted(machines, key=lambda m: (m.created, m.id), reverse=True)

    # -- ending ---------------------------------------------------------------------------------
    def _terminate(self, machine_ids: list[str], reason: str, exit_code: int | None) -> set[str]:
        """Tags why, then terminates, the instances still running (one call each); returns the
        launches of all of them that kept secrets."""
        with translated():
            instances = self._described(machine_ids)
            # Ended ones keep the reason they ended with.
            ending = [i["InstanceId"] for i in instances if i["State"]["Name"] not in ENDED_STATES]
            ec2 = self.client("ec2")
            states: dict[str, Any] = {}
            if ending:
                tags = [{"Key": REASON_TAG, "Value": reason[:256]}]
                if exit_code is not None:
                    tags.append({"Key": EXIT_CODE_TAG, "Value": str(exit_code)})
                ec2.create_tags(Resources=ending, Tags=tags)
                terminating = ec2.terminate_instances(InstanceIds=ending)["TerminatingInstances"]
                states = {i["InstanceId"]: i["CurrentState"] for i in terminating}
        # As they are now (shutting-down): a listing may not show them yet, and must not take one for running.
        self._remember([{**i, "State": states.get(i["InstanceId"], i["State"])} for i in instances])
        return {launch for i in instances if (launch := _launch_with_secrets(i))}

    def _remember(self, instances: Sequence[Mapping[str, Any]]) -> None:
        """Keeps the ended instances with secrets just described by id (which EC2 answers for even while
        its filtered listings do not show them yet), for :meth:`_live_launches`, until their launch's
        secrets go."""
        for instance in instances:
            if launch := _launch_with_secrets(instance):
                self._described_of.setdefault(launch, {})[instance["InstanceId"]] = instance

    @functools.cached_property
    def _described_of(self) -> dict[str, dict[str, Mapping[str, Any]]]:
        return {}

    @functools.cached_property
    def _launched_lately(self) -> dict[str, tuple[float, frozenset[str]]]:
        """This provider's launches: launch id -> when (monotonic), and its instances, for :meth:`_just_launched`."""
        return {}

    def _just_launched(self, key: str) -> bool:
        """Whether this provider launched ``key`` (an instance id or a launch id) under :attr:`visible_after`
        seconds ago: EC2 may neither list nor know it yet. Forgets the older launches."""
        now = time.monotonic()
        for old in [launch for launch, (at, _) in self._launched_lately.items() if now - at >= self.visible_after]:
            del self._launched_lately[old]
        return key in self._launched_lately or any(key in ids for _, ids in self._launched_lately.values())

    def _known_by_id(self, machine_ids: Sequence[str]) -> list[dict[str, Any]]:
        """The instances of ``machine_ids`` that EC2 knows by id, which it answers for before its filtered
        listings show them: one call per 200 ids, and one more per answer naming ids it does not know
        (``InvalidInstanceID.NotFound``: a new id for a moment, or one that never was)."""
        from botocore.exceptions import ClientError

        found: list[dict[str, Any]] = []
        for batch in batches(list(machine_ids), 200):
            while batch:
                try:
                    found += self.clients.instances(InstanceIds=batch)
                    break
                except ClientError as error:
                    if error_code(error) != "InvalidInstanceID.NotFound":
                        raise
                    unknown = set(re.findall(r"i-[0-9a-f]+", str(error))) & set(batch)
                    batch = [machine_id for machine_id in batch if machine_id not in unknown] if unknown else []
        return found

    def _live_launches(self, launch_ids: set[str]) -> set[str]:
        """One describe call per 200 launches: those with an instance that may still read its secrets
        (a shutting-down one reads none), and the young ones some of whose instances EC2 does not
        list yet (eventual consistency: a sibling launched seconds ago may be missing from a filtered
        describe, and must still find its secrets; the sweep takes them later), or none of whose
        instances it lists, launched by this provider under :attr:`visible_after` ago."""
        found: dict[str, dict[str, Mapping[str, Any]]] = {launch: dict(self._described_of.get(launch, {})) for launch in launch_ids}
        with translated():
            for batch in batches(sorted(launch_ids), 200):  # EC2 takes at most 200 values per filter
                for instance in self.clients.instances(Filters=[{"Name": f"tag:{LAUNCH_TAG}", "Values": batch}]):
                    tags = {tag["Key"]: tag["Value"] for tag in instance.get("Tags", [])}
                    found.setdefault(tags[LAUNCH_TAG], {})[instance["InstanceId"]] = instance
        alive, now = set(), time.time()
        for launch, instances in found.items():
            tags = {tag["Key"]: tag["Value"] for i in instances.values() for tag in i.get("Tags", [])}
            missing = int(tags.get(COUNT_TAG, "0") or 0) > len(instances)
            young = any(now - i["LaunchTime"].timestamp() < self.visible_after for i in instances.values())
            if any(i["State"]["Name"] in ALIVE_STATES for i in instances.values()):
                alive.add(launch)
            elif (missing and young) or (not instances and self._just_launched(launch)):
                logger.debug("secrets of %s kept: EC2 does not list all its instances yet", launch)
                alive.add(launch)
        return alive

    def _stored_launches(self, older_than: float) -> set[str]:
        return stored_launches(self.clients, self.options.secrets_prefix, older_than)

    # -- logs and leases --------------------------------------------------------------------------
    def logs(self, machine_id: str, *, cursor: str | None = None) -> LogChunk:
        """CloudWatch Logs, stream ``<instance id>`` of ``log_group``; the cursor is its ``nextForwardToken``."""
        from botocore.exceptions import ClientError

        if not _INSTANCE_ID.fullmatch(machine_id):
            raise self._not_found(machine_id)
        params: dict[str, Any] = {"logGroupName": self.options.log_group, "logStreamName": machine_id, "startFromHead": True}
        if cursor:
            params["nextToken"] = cursor
        with translated():
            try:
                page = self.client("logs").get_log_events(**params)
            except ClientError as error:
                if error_code(error) != "ResourceNotFoundException":
                    raise
                self.describe(machine_id)  # an unknown machine is an error; a known one has not logged yet
                return LogChunk("", cursor or "")
        text = "".join(event["message"] if event["message"].endswith("\n") else event["message"] + "\n" for event in page["events"])
        return LogChunk(text, page.get("nextForwardToken") or cursor or "")

    def log_tail(self, machine_id: str, lines: int = 20) -> str:
        """The last ``lines`` events of the machine's stream: one ``GetLogEvents`` from its end
        (``startFromHead=False``), however long the log."""
        from botocore.exceptions import ClientError

        if not _INSTANCE_ID.fullmatch(machine_id):
            raise self._not_found(machine_id)
        params = {"logGroupName": self.options.log_group, "logStreamName": machine_id, "startFromHead": False, "limit": lines}
        with translated():
            try:
                events = self.client("logs").get_log_events(**params)["events"]
            except ClientError as error:
                if error_code(error) != "ResourceNotFoundException":
                    raise
                self.describe(machine_id)
                return ""
        return "".join(event["message"] if event["message"].endswith("\n") else event["message"] + "\n" for event in events)

    def _renew(self, machine_ids: list[str]) -> dict[str, str | None]:
        """One describe call (per 200 ids) finds the live instances, one ``create_tags`` call (per
        1000) renews them all. EC2 lists an instance only a while after its launch, and an ended one for
        about an hour after: the ids missing from the listing are asked for by id, and one that EC2 does
        not know even so has not ended while this provider launched it under :attr:`visible_after` ago
        (its lease is fresh from its launch)."""
        from botocore.exceptions import ClientError

        candidates = [machine_id for machine_id in machine_ids if _INSTANCE_ID.fullmatch(machine_id)]
        instances: list[dict[str, Any]] = []
        with translated():
            for batch in batches(candidates, 200):  # EC2 takes at most 200 values per filter
                instances += self.clients.instances(Filters=[{"Name": "instance-id", "Values": batch}])
            listed = {i["InstanceId"] for i in instances}
            instances += self._known_by_id([machine_id for machine_id in candidates if machine_id not in listed])
            found = {i["InstanceId"] for i in instances}
            alive = {i["InstanceId"] for i in instances if i["State"]["Name"] in STATES}
            unseen = {machine_id for machine_id in candidates if machine_id not in found and self._just_launched(machine_id)}
            now = lease_stamp()
            for batch in batches([machine_id for machine_id in machine_ids if machine_id in alive], 1000):
                try:
                    self.client("ec2").create_tags(Resources=batch, Tags=[{"Key": LEASE_TAG, "Value": now}])
                except ClientError as error:
                    if not error_code(error).startswith("InvalidInstanceID"):
                        raise
                    # EC2 is eventually consistent: an instance launched a moment ago may not be taggable
                    # yet. Its lease is fresh from launch; the next renewal reaches it.
                    logger.debug("lease renewal skipped this round: %s", error)
        self._remember([i for i in instances if i["InstanceId"] not in alive])
        launches = {i["InstanceId"]: _launch_with_secrets(i) for i in instances}
        return {machine_id: launches.get(machine_id) for machine_id in machine_ids if machine_id not in alive | unseen}

    # -- elsewhere: a cluster's scheduler, the machine side --------------------------------------------
    def client_options(self) -> dict[str, Any]:
        """The options (region and configuration; never credentials, which each place finds itself),
        but this launcher's public IP, which is not the other process's."""
        return self.options.model_dump(mode="json", exclude={"public_ip"})

    def machine_options(self) -> dict[str, Any]:
        """All of them (none is secret): a machine launches in the same region and VPC, with the same profile."""
        return self.client_options()

    def network(self) -> str:
        """The VPC, e.g. ``aws:us-east-2:vpc-0abc…``: its machines reach each other's private addresses."""
        with translated():
            return f"aws:{self.region}:{self.vpc_id}"

    def runtime_options(self, launch_id: str) -> dict[str, Any]:
        return {
            "region": self.region,
            "secrets_parameter": self.secrets_parameter(launch_id),
            "log_group": self.options.log_group,
            "lease_tag": LEASE_TAG,
            "metadata_endpoint": self.options.metadata_endpoint,
        }


def lease_stamp() -> str:
    """Now, as a lease tag holds it: whole seconds (renewals are seconds apart: ``lease_interval`` is
    at least 5 s, so each one changes the tag, which is what a machine watches; the time it names is
    for people, and is never compared with the machine's clock)."""
    return str(math.ceil(time.time()))
