"""The aws provider's options: keyword arguments of ``get_provider("aws", ...)``, a pool's provider
block; the instance profile and lease interval default to their ``PREFECT_REMOTE_AWS_*`` settings.

>>> AWSOptions(region="us-east-2", allow_ingress_from="10.0.0.0/8").secrets_prefix
'/prefect-remote/'
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from prefect_remote.spec import ingress_source


def _settings():
    from prefect_remote.settings import get_settings

    return get_settings()


class AWSOptions(BaseModel):
    """Where aws machines run and with what, validated when the provider is made; all of them travel
    to a cluster's scheduler (:meth:`~prefect_remote.providers.aws.provider.AWSProvider.client_options`),
    none is secret."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    region: str
    ami: str | None = None  # an AMI id, or an SSM parameter naming one; default: Amazon Linux 2023
    subnet_id: str | None = None
    vpc_id: str | None = None
    security_group_ids: tuple[str, ...] = ()  # default: groups the provider makes per VPC
    # Its name; the machines' role (secrets, self-termination).
    instance_profile: str | None = Field(default_factory=lambda: _settings().aws_instance_profile)
    log_group: str = "/prefect-remote/machines"
    secrets_prefix: str = "/prefect-remote/"
    allow_ingress_from: str = "me"
    metadata_endpoint: str | None = None  # the machines' IMDS; default: theirs (or $AWS_EC2_METADATA_SERVICE_ENDPOINT)
    lease_interval: float = Field(default_factory=lambda: _settings().aws_lease_interval, ge=5.0)  # seconds between lease reads

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
