"""The aws provider's options: keyword arguments of ``get_provider("aws", ...)``, a pool's provider
block's options, else ``PREFECT_REMOTE_AWS_<OPTION>`` (``PREFECT_REMOTE_AWS_INSTANCE_PROFILE``…).

>>> AWSOptions(region="us-east-2", allow_ingress_from="10.0.0.0/8").secrets_prefix
'/prefect-remote/'
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from prefect_remote.providers.options import ProviderOptions
from prefect_remote.spec import ingress_source

# Launch secrets' SSM path when none is chosen: a provider with an instance profile of the user's own.
# Provisioning gives each pool a path of its own below it (infra.pool_secrets_prefix) and records it.
SHARED_SECRETS_PREFIX = "/prefect-remote/"


class AWSOptions(ProviderOptions):
    """Where aws machines run and with what, validated when the provider is made; each one not given
    is read from ``PREFECT_REMOTE_AWS_<OPTION>``. All but ``public_ip`` travel to its machines
    (:meth:`~prefect_remote.providers.aws.provider.AWSProvider.machine_options`); none is secret."""

    model_config = SettingsConfigDict(env_prefix="PREFECT_REMOTE_AWS_")

    region: str | None = Field(default=None, description="Region, e.g. us-east-2; default boto3's (AWS_DEFAULT_REGION, the profile's).")
    ami: str | None = None  # an AMI id, or an SSM parameter naming one; default: Amazon Linux 2023
    subnet_id: str | None = None
    vpc_id: str | None = None
    security_group_ids: Annotated[tuple[str, ...], NoDecode] = ()  # comma-separated in the variable; default: groups made per VPC
    instance_profile: str | None = Field(
        default=None,
        description="Instance profile (name) machines run with: what they read secrets, the store and end themselves with; "
        "`--provision-infra` makes one.",
    )
    log_group: str = Field(default="/prefect-remote/machines", description="CloudWatch Logs group machines write to.")
    secrets_prefix: str = Field(
        default=SHARED_SECRETS_PREFIX,
        description="SSM parameter path of launches' secrets; `--provision-infra` gives each pool its own, /prefect-remote/<pool key>/.",
    )
    allow_ingress_from: str = "me"
    metadata_endpoint: str | None = None  # the machines' IMDS; default: theirs (or $AWS_EC2_METADATA_SERVICE_ENDPOINT)
    # Seconds between a machine's reads of its lease: its owner's loss is noticed this long after keepalive.
    lease_interval: float = Field(default=30.0, ge=5.0)
    # This launcher's public IP, for allow_ingress_from="me"; default: asked of checkip.amazonaws.com. Not a machine's.
    public_ip: str | None = None

    @field_validator("region")
    @classmethod
    def _region(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d+", value):
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
        groups = [g.strip() for g in value.split(",") if g.strip()] if isinstance(value, str) else list(value or ())
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
