"""What machine a user asks for: one validated model shared by flow runs, clusters and functions.

>>> spec = MachineSpec(cpu=[2, 8], memory="16 GiB", spot_policy="spot_with_fallback", idle_timeout="2 hours")
>>> spec.cpu, spec.memory, spec.idle_timeout
((2, 8), (17179869184, 17179869184), 7200.0)

Every bad value is rejected with its field, the value, and what is accepted:

>>> MachineSpec(cpu=0)
Traceback (most recent call last):
  ...
pydantic_core._pydantic_core.ValidationError: 1 validation error for MachineSpec
cpu
  Value error, cpu=0: expected a whole number of CPUs (1 or more) or a [min, max] range of them ...
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, SecretStr, field_serializer, field_validator, model_validator

from prefect_remote.on_machine import REGISTRY_SECRETS
from prefect_remote.software.naming import NAME_PATTERN as ENV_NAME_PATTERN
from prefect_remote.units import DURATION_HELP, SIZE_HELP, format_duration, format_size, parse_duration, parse_size

SpotPolicy = Literal["on-demand", "spot", "spot_with_fallback"]
SPOT_POLICIES: tuple[str, ...] = get_args(SpotPolicy)

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_REGION = re.compile(r"[a-z0-9][a-z0-9-]*[a-z0-9]")
# An image reference: [registry[:port]/]name[:tag][@digest], no spaces, never an option (a leading '-').
_IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]*")


class GpuRequest(BaseModel):
    """``count`` accelerators, of ``type`` when given (``"t4"``, ``"a10g"``, ``"nvidia-l4"``…)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    count: int = 1
    type: str | None = None


def _range(field: str, value: Any, parse, help_text: str) -> tuple[int, int] | None:
    """One value or a ``[min, max]`` pair, parsed with ``parse`` and checked to be ordered."""
    if value is None:
        return None
    items = list(value) if isinstance(value, (list, tuple)) else [value, value]
    if len(items) != 2:
        raise ValueError(f"{field}={value!r}: expected {help_text}, or a [min, max] range of them")
    try:
        low, high = (parse(item) for item in items)
    except ValueError as error:
        raise ValueError(f"{field}={value!r}: {error}, or a [min, max] range of them") from None
    if low > high:
        raise ValueError(f"{field}={value!r}: the range's minimum is larger than its maximum; write [min, max]")
    return low, high


def _cpu_count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError("expected a whole number of CPUs (1 or more)")
    return value


def _duration(field: str, value: Any) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError:
        raise ValueError(f"{field}={value!r}: expected {DURATION_HELP}, or None for no limit") from None


MIN_INGRESS_PREFIX = 8  # the widest CIDR allow_ingress_from takes; wider is "everyone", said so


def ingress_source(value: str) -> str:
    """Who may reach a machine's Dask ports from outside its network: ``"me"`` (the launcher's public
    IP), ``"everyone"``, ``"none"`` (only machines of the same network: a cluster's workers) or a
    CIDR, normalized; a clear error otherwise.

    >>> ingress_source("10.1.2.3/8")
    '10.0.0.0/8'
    """
    if value in ("me", "everyone", "none"):
        return value
    try:
        network = ipaddress.ip_network(value, strict=False)
    except (TypeError, ValueError):
        raise ValueError(
            f"allow_ingress_from={value!r}: expected 'me' (your public IP), 'everyone', 'none', or a CIDR such as '10.0.0.0/8'"
        ) from None
    if network.prefixlen < MIN_INGRESS_PREFIX:  # "203.0.113.7/0" would be the whole internet, by a typo
        raise ValueError(
            f"allow_ingress_from={value!r} admits {network} ({network.num_addresses:,} addresses): a prefix shorter than "
            f"/{MIN_INGRESS_PREFIX} is refused; pass 'everyone' if you mean everyone, or a narrower CIDR"
        )
    return str(network)


def _matching(field: str, value: Any, pattern: re.Pattern[str], expected: str) -> str | None:
    """``value`` when None or a string ``pattern`` matches whole, else a ValueError saying ``expected``."""
    if value is None or (isinstance(value, str) and pattern.fullmatch(value)):
        return value
    raise ValueError(f"{field}={value!r}: expected {expected}")


def image_choice(image: str | None, container: str | None) -> str | None:
    """The container image asked for by ``image`` or by ``container``, its older name; both given
    and different is an error.

    >>> image_choice(None, "python:3.12-slim")
    'python:3.12-slim'
    """
    if image is not None and container is not None and image != container:
        raise ValueError(f"image={image!r} and container={container!r} disagree: container is the older name of image; give only image")
    return image if image is not None else container


class MachineSpec(BaseModel):
    """A machine request in the vocabulary of the tools users know.

    Sizes accept ``"64 GiB"``/``"512 GB"``/bytes; ``cpu`` and ``memory`` accept ``[min, max]``;
    durations accept ``"2 hours"``/``"5m"``/seconds. ``disk_size`` as a bare number means GiB, as in
    EC2's ``VolumeSize``. ``environ`` values wrapped in :class:`pydantic.SecretStr` are secrets: they
    reach the payload's environment through the provider's secret channel and never a boot script,
    a command line or a log.

    ``software`` names a package-synced environment (``senv-…``) the machine rebuilds and runs its
    payload in; ``None`` means the provider's default (the launcher's interpreter, locally).
    ``image`` is a container image the payload runs in (``container`` is its older name, accepted
    as an alias): Cloud Run runs it as the task's container; VM and local machines pull it with their
    engine (Podman or Docker) and run the payload in it (see :mod:`prefect_remote.machine.container`).
    ``inbound`` says the machine accepts connections from other machines (a Dask scheduler or
    worker, a server): a provider whose machines cannot (Cloud Run jobs) uses one that can, or refuses.

    Example::

        MachineSpec(cpu=4, memory="16 GiB", region="us-east-2", spot_policy="spot", keepalive="30s")
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    cpu: tuple[int, int] | None = None
    memory: tuple[int, int] | None = None
    gpu: GpuRequest | None = None
    vm_type: tuple[str, ...] | None = None
    arm: bool = False
    region: str | None = None
    disk_size: int | None = None
    spot_policy: SpotPolicy = "on-demand"
    idle_timeout: float | None = None
    keepalive: float | None = None
    timeout: float | None = None
    allow_ingress_from: str | None = None
    tags: dict[str, str] = {}
    environ: dict[str, str | SecretStr] = {}
    software: str | None = None
    image: str | None = None
    inbound: bool = False

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, data: Any) -> Any:
        if isinstance(data, dict) and "container" in data:  # the older name of image
            image = image_choice(data.get("image"), data["container"])
            data = {**{key: value for key, value in data.items() if key != "container"}, "image": image}
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(cls.model_fields))
            if unknown:
                accepted = ", ".join(cls.model_fields)
                raise ValueError(f"unknown machine spec field(s) {', '.join(unknown)}; accepted: {accepted}")
        return data

    @field_validator("cpu", mode="before")
    @classmethod
    def _cpu(cls, value: Any) -> tuple[int, int] | None:
        return _range("cpu", value, _cpu_count, "a whole number of CPUs (1 or more)")

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, value: Any) -> tuple[int, int] | None:
        return _range("memory", value, parse_size, SIZE_HELP)

    @field_validator("gpu", mode="before")
    @classmethod
    def _gpu(cls, value: Any) -> Any:
        help_text = "True, a number of GPUs, a GPU type such as 't4' or 'a10g', or {'count': 2, 'type': 'a100'}"
        if value is None or value is False or value == 0:
            return None
        if value is True:
            return GpuRequest()
        if isinstance(value, int) and value > 0:
            return GpuRequest(count=value)
        if isinstance(value, str) and value.strip():
            return GpuRequest(type=value.strip().lower())
        if isinstance(value, (dict, GpuRequest)):
            try:
                gpu = GpuRequest.model_validate(value)
            except ValueError:
                raise ValueError(f"gpu={value!r}: expected {help_text}") from None
            if gpu.count >= 1:
                return gpu
        raise ValueError(f"gpu={value!r}: expected {help_text}")

    @field_validator("vm_type", mode="before")
    @classmethod
    def _vm_type(cls, value: Any) -> tuple[str, ...] | None:
        if value is None:
            return None
        names = [value] if isinstance(value, str) else value
        if not isinstance(names, (list, tuple)) or not names or not all(isinstance(name, str) and name.strip() for name in names):
            raise ValueError(f"vm_type={value!r}: expected an instance type name such as 'm6i.xlarge', or a list of them")
        return tuple(name.strip() for name in names)

    @field_validator("region", mode="before")
    @classmethod
    def _region(cls, value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or not _REGION.fullmatch(value):
            raise ValueError(f"region={value!r}: expected a region name such as 'us-east-2' or 'europe-west1'")
        return value

    @field_validator("disk_size", mode="before")
    @classmethod
    def _disk_size(cls, value: Any) -> int | None:
        if value is None:
            return None
        try:
            if isinstance(value, str):
                return parse_size(value)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return parse_size(value * 2**30)
        except ValueError:
            pass
        raise ValueError(f"disk_size={value!r}: expected a number of GiB such as 100, or {SIZE_HELP}")

    @field_serializer("disk_size")
    def _disk_size_out(self, value: int | None) -> str | None:
        return None if value is None else f"{value} B"  # a bare number reads back as GiB

    @field_validator("spot_policy", mode="before")
    @classmethod
    def _spot_policy(cls, value: Any) -> str:
        if value is None:
            return "on-demand"
        if value not in SPOT_POLICIES:
            raise ValueError(f"spot_policy={value!r}: expected one of {', '.join(map(repr, SPOT_POLICIES))}")
        return value

    @field_validator("arm", mode="before")
    @classmethod
    def _arm(cls, value: Any) -> bool:
        if value is None:
            return False
        if not isinstance(value, bool):
            raise ValueError(f"arm={value!r}: expected True (ARM/aarch64 machines) or False (x86_64)")
        return value

    @field_validator("idle_timeout", "keepalive", "timeout", mode="before")
    @classmethod
    def _durations(cls, value: Any, info) -> float | None:
        return _duration(info.field_name, value)

    @field_validator("allow_ingress_from", mode="before")
    @classmethod
    def _ingress(cls, value: Any) -> str | None:
        return None if value is None else ingress_source(value)

    @field_validator("tags", mode="before")
    @classmethod
    def _tags(cls, value: Any) -> dict[str, str]:
        if value is None:
            return {}
        if not isinstance(value, dict) or not all(
            isinstance(key, str) and key and isinstance(item, (str, int, float)) and not isinstance(item, bool)
            for key, item in value.items()
        ):
            raise ValueError(f"tags={value!r}: expected a mapping of non-empty names to string values")
        return {key: str(item) for key, item in value.items()}

    @field_validator("environ", mode="before")
    @classmethod
    def _environ(cls, value: Any) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ValueError(f"environ={value!r}: expected a mapping of variable names to string values")
        for key, item in value.items():
            if not isinstance(key, str) or not _ENV_NAME.fullmatch(key):
                raise ValueError(f"environ key {key!r}: expected a variable name such as 'MY_VAR'")
            if not isinstance(item, (str, SecretStr)):
                raise ValueError(f"environ[{key!r}]: expected a string or a pydantic.SecretStr, not {type(item).__name__}")
        return value

    @model_validator(mode="after")
    def _registry_credentials(self) -> MachineSpec:
        given = [name for name in REGISTRY_SECRETS if name in self.environ]
        if len(given) == 1:
            [missing] = set(REGISTRY_SECRETS) - set(given)
            raise ValueError(
                f"environ has {given[0]} but not {missing}: a private registry needs both (as secrets), "
                "or neither to pull as the machine's own identity"
            )
        plain = [name for name in given if not isinstance(self.environ[name], SecretStr)]
        if plain:
            raise ValueError(f"environ[{plain[0]!r}] must be a pydantic.SecretStr: registry credentials travel as secrets only")
        return self

    @field_validator("image", mode="before")
    @classmethod
    def _image(cls, value: Any) -> str | None:
        return _matching("image", value, _IMAGE, "an image reference such as 'python:3.12-slim' or 'registry.example.com:5000/team/app:1'")

    @field_validator("software", mode="before")
    @classmethod
    def _software(cls, value: Any) -> str | None:
        return _matching(
            "software",
            value,
            ENV_NAME_PATTERN,
            "a software environment name such as 'senv-0123456789abcdef' "
            "(from `prefect-remote env build` or the build_package_sync_senv deploy step), or None",
        )

    @property
    def public_environ(self) -> dict[str, str]:
        """``environ`` without its secrets: safe for boot scripts and logs."""
        return {key: value for key, value in self.environ.items() if isinstance(value, str)}

    @property
    def secret_environ(self) -> dict[str, str]:
        """The secret part of ``environ``, revealed for the provider's secret channel only."""
        return {key: value.get_secret_value() for key, value in self.environ.items() if isinstance(value, SecretStr)}

    def to_wire(self) -> dict[str, Any]:
        """JSON-safe fields that :meth:`from_wire` turns back into this spec; secret values stay out
        (send :attr:`secret_environ` through a secret channel)."""
        return {**self.model_dump(mode="json", exclude={"environ"}), "environ": self.public_environ}

    @classmethod
    def from_wire(cls, data: dict[str, Any], secret_environ: dict[str, str] | None = None) -> MachineSpec:
        """The spec :meth:`to_wire` described, with its secrets back as :class:`pydantic.SecretStr`."""
        environ = {**data.get("environ", {}), **{key: SecretStr(value) for key, value in (secret_environ or {}).items()}}
        return cls.model_validate({**data, "environ": environ})

    def summary(self) -> str:
        """A one-line, cost-relevant description for logs and tables: ``'4 cpu, 16 GiB, spot, us-east-2'``."""

        def span(pair: tuple[int, int], fmt) -> str:
            return fmt(pair[0]) if pair[0] == pair[1] else f"{fmt(pair[0])}-{fmt(pair[1])}"

        parts = []
        if self.vm_type:
            parts.append("|".join(self.vm_type))
        if self.cpu:
            parts.append(f"{span(self.cpu, str)} cpu")
        if self.memory:
            parts.append(span(self.memory, format_size))
        if self.gpu:
            parts.append(f"{self.gpu.count}x {self.gpu.type or 'gpu'}")
        if self.arm:
            parts.append("arm")
        if self.spot_policy != "on-demand":
            parts.append(self.spot_policy)
        if self.region:
            parts.append(self.region)
        if self.timeout:
            parts.append(f"timeout {format_duration(self.timeout)}")
        return ", ".join(parts) or "default"


def as_spec(spec: MachineSpec | dict[str, Any] | None = None, **overrides: Any) -> MachineSpec:
    """A :class:`MachineSpec` from a spec, a mapping or keyword arguments (``None`` values are ignored).

    >>> as_spec({"cpu": 2}, memory="4 GiB").summary()
    '2 cpu, 4 GiB'
    """
    given = {key: value for key, value in overrides.items() if value is not None}
    if isinstance(spec, MachineSpec):
        if not given:
            return spec
        spec = spec.model_dump()  # round-trips through validation (disk_size dumps with its unit)
    return MachineSpec.model_validate({**dict(spec or {}), **given})


__all__ = ["GpuRequest", "MachineSpec", "SpotPolicy", "as_spec", "image_choice"]
