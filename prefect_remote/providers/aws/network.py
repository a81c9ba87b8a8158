"""Where the aws provider's machines run in the account's network: the subnet, its VPC, and the
security groups the provider keeps per VPC.

``prefect-remote-<vpc>`` lets its members reach each other on their private addresses (a cluster's
workers and scheduler); ``prefect-remote-<vpc>-dask-from-<cidr>`` admits the Dask ports from one
source only (:func:`prefect_remote.providers.network.ingress_cidr`). Launches and provisioning
(``--provision-infra``) make them the same way, when missing.

>>> network = AWSNetwork(AWSClients("us-east-2"), AWSOptions(region="us-east-2"))   # doctest: +SKIP
>>> network.security_groups("me", runs_inside=lambda: False)                           # doctest: +SKIP
['sg-0abc…', 'sg-0def…']
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prefect_remote.errors import CapacityError
from prefect_remote.providers.aws.clients import AWSClients, error_code, eventually
from prefect_remote.providers.aws.options import AWSOptions
from prefect_remote.providers.aws.tags import MANAGED_TAG
from prefect_remote.providers.network import DASK_PORTS, ingress_cidr


@dataclass(frozen=True)
class Subnet:
    """A subnet to launch in (``id`` None: EC2's default), its availability zone, and whether it maps
    public IPs on launch (else a launch that needs one asks for it)."""

    id: str | None
    zone: str | None
    public: bool


class AWSNetwork:
    """The subnet, VPC and security groups of machines launched with ``options``."""

    def __init__(self, clients: AWSClients, options: AWSOptions) -> None:
        self.clients, self.options = clients, options

    @property
    def region(self) -> str:
        return self.options.region

    @functools.cached_property
    def subnets(self) -> list[Subnet]:
        """The subnets a launch may use, in the order to try them when capacity is short: the one
        given; else those of ``vpc_id``; else the default VPC's (one per availability zone). Those
        that give public addresses come first; EC2's own choice (``Subnet(None)``) if the account has
        no default subnet to name."""
        ec2 = self.clients.client("ec2")
        if self.options.subnet_id:
            found = ec2.describe_subnets(SubnetIds=[self.options.subnet_id])["Subnets"]
        elif self.options.vpc_id:
            found = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [self.options.vpc_id]}])["Subnets"]
            if not found:
                raise CapacityError(f"vpc_id={self.options.vpc_id!r} has no subnet in {self.region}; pass subnet_id=… or another VPC")
        else:
            found = ec2.describe_subnets(Filters=[{"Name": "default-for-az", "Values": ["true"]}])["Subnets"]
        subnets = [Subnet(s["SubnetId"], s.get("AvailabilityZone"), bool(s.get("MapPublicIpOnLaunch"))) for s in found]
        return sorted(subnets, key=lambda s: (not s.public, s.zone or "", s.id or "")) or [Subnet(None, None, True)]

    @functools.cached_property
    def vpc_id(self) -> str:
        """The VPC machines launch in: the subnet's, the one given, else the region's default VPC."""
        ec2 = self.clients.client("ec2")
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

    def security_groups(self, allow_ingress_from: str | None, *, runs_inside: Callable[[], bool]) -> list[str]:
        """The groups the provider keeps in the VPC, made if missing: the internal one, and the one
        admitting the Dask ports from ``allow_ingress_from`` (default: the provider's option) unless
        that admits nobody. ``runs_inside()`` says whether this launcher is a machine of the VPC, which
        ``"me"`` then needs no rule for: it is in the internal group."""
        vpc = self.vpc_id
        internal = self._group(
            f"prefect-remote-{vpc}",
            "prefect-remote machines: all traffic between them",
            lambda own: [{"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": own}]}],
        )
        cidr = ingress_cidr(
            allow_ingress_from or self.options.allow_ingress_from,
            runs_inside=runs_inside,
            known_ip=self.options.public_ip,
            known_ip_setting="PREFECT_REMOTE_AWS_PUBLIC_IP",
        )
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

    def _group(self, name: str, description: str, rules: Callable[[str], list[dict[str, Any]]]) -> str:
        """The id of the security group ``name`` in this VPC, made with ``rules`` (given its own id) if missing."""
        from botocore.exceptions import ClientError

        ec2 = self.clients.client("ec2")
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
                if error_code(error) != "InvalidGroup.Duplicate":
                    raise
                # Another launcher made it just now.
                group_id = ec2.describe_security_groups(Filters=filters)["SecurityGroups"][0]["GroupId"]
        # Also for a found group: a launcher that died between creating it and adding its rules left none.
        # A group made a moment ago may not be visible yet (EC2's eventual consistency).
        try:
            eventually(lambda: ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=rules(group_id)))
        except ClientError as error:
            if error_code(error) != "InvalidPermission.Duplicate":
                raise
        return group_id
