"""All configuration, in one place: environment variables ``PREFECT_REMOTE_*`` (or a ``.env`` file).

>>> settings = RemoteSettings(home="/tmp/pr-home")
>>> settings.machines_dir
PosixPath('/tmp/pr-home/machines')
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from prefect_remote.errors import RemoteError
from prefect_remote.units import parse_duration, parse_size

Isolation = Literal["auto", "process", "namespace"]


class RemoteSettings(BaseSettings):
    """prefect-remote's settings. Each field is read from ``PREFECT_REMOTE_<FIELD>``.

    Example: ``PREFECT_REMOTE_HOME=/data/remote PREFECT_REMOTE_LOCAL_ISOLATION=process``.
    """

    model_config = SettingsConfigDict(env_prefix="PREFECT_REMOTE_", env_file=".env", extra="ignore")

    home: Path = Field(
        default=Path("~/.prefect-remote"),
        description="Folder for local machines, the default store and caches.",
    )
    provider: str = Field(default="local", description="Provider used when none is named: local, aws, gcp, or a plugin's name.")
    provider_options: Annotated[dict[str, Any], NoDecode] = Field(
        default_factory=dict,
        description='Options (a JSON object) of that provider, e.g. \'{"region": "us-east-2"}\'. Every machine gets its launcher\'s '
        "(with PREFECT_REMOTE_PROVIDER and PREFECT_REMOTE_STORE), so code on it launches machines as its launcher did.",
    )
    store: str | None = Field(default=None, description="Store URL for software environments; default: <home>/store.")
    max_bundle_size: int = Field(default=100 * 2**20, description="Largest local code bundle package sync captures, e.g. '100 MiB'.")
    include_secret_files: bool = Field(
        default=False,
        description="Let package sync bundle code files that hold credentials (private keys, cloud credential files, "
        "kubeconfigs), which it otherwise leaves out with a warning.",
    )

    push_service: bool = Field(
        default=True, description="Run the remote:push service inside `prefect server start` (when prefect-remote is installed there)."
    )
    push_interval: float = Field(default=5.0, description="Seconds between the push service's looks for remote:push pools.")
    push_pools: Annotated[list[str], NoDecode] = Field(
        default=["*"], description="remote:push pools the in-server push service serves (names or wildcards, comma-separated)."
    )

    local_isolation: Isolation = Field(
        default="auto",
        description="Local machines' isolation: 'namespace' (own network namespace and cgroup limits; Linux as root), "
        "'process' (own process group, directory and environment), or 'auto' (namespace where available).",
    )
    local_overcommit: bool = Field(default=False, description="Let local machines ask for more CPU, memory or GPUs than this host has.")
    local_subnet: str = Field(
        default="10.231.0.0/16", description="Host-only subnet for namespace machines; the host takes its first address."
    )
    local_bridge: str = Field(default="prbr0", description="Name of the host-only bridge for namespace machines.")
    local_egress: Annotated[list[str], NoDecode] = Field(
        default=["pypi.org", "files.pythonhosted.org"],
        description="Hosts namespace machines may reach to rebuild software environments (wildcards allowed); "
        "add your private index, e.g. 'pypi.org,files.pythonhosted.org,*.mycorp.com'.",
    )
    local_grace_period: float = Field(default=5.0, description="Seconds a terminated machine's processes get between SIGTERM and SIGKILL.")
    local_record_retention: float = Field(default=86400.0, description="Seconds a terminated local machine's folder (and logs) is kept.")

    @field_validator("home", mode="after")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser().absolute()

    @field_validator("local_subnet")
    @classmethod
    def _subnet(cls, value: str) -> str:
        try:
            network = ipaddress.IPv4Network(value)
        except ValueError:
            raise ValueError(f"local_subnet={value!r}: expected an IPv4 CIDR such as '10.231.0.0/16'") from None
        if network.num_addresses < 4:
            raise ValueError(f"local_subnet={value!r}: too small; use /30 or larger")
        return str(network)

    @field_validator("local_bridge")
    @classmethod
    def _bridge(cls, value: str) -> str:
        if not (0 < len(value) <= 15) or not value.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"local_bridge={value!r}: expected an interface name of 1-15 letters, digits, '-' or '_'")
        return value

    @field_validator("local_egress", "push_pools", mode="before")
    @classmethod
    def _hosts(cls, value: object) -> object:
        return [h.strip() for h in value.split(",") if h.strip()] if isinstance(value, str) else value

    @field_validator("provider_options", mode="before")
    @classmethod
    def _options(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        try:
            options = json.loads(value) if value.strip() else {}
        except ValueError as error:
            raise ValueError(f'expected a JSON object such as \'{{"region": "us-east-2"}}\' ({error})') from None
        if not isinstance(options, dict):
            raise ValueError(f'expected a JSON object such as \'{{"region": "us-east-2"}}\', not {value!r}')
        return options

    @field_validator("max_bundle_size", mode="before")
    @classmethod
    def _size(cls, value: object) -> int:
        return parse_size(value)  # type: ignore[arg-type]

    @field_validator("local_grace_period", "local_record_retention", mode="before")
    @classmethod
    def _seconds(cls, value: object) -> float:
        return parse_duration(value)  # type: ignore[arg-type]

    @property
    def machines_dir(self) -> Path:
        """Where local machines live, one folder each."""
        return self.home / "machines"


class SettingsError(RemoteError, ValueError):
    """A PREFECT_REMOTE_* variable has a value prefect-remote cannot use."""


def get_settings() -> RemoteSettings:
    """Settings as the environment says now (read each call, so tests and CLIs can change them)."""
    try:
        return RemoteSettings()
    except ValidationError as error:
        problems = "; ".join(f"PREFECT_REMOTE_{str(e['loc'][0]).upper()}: {e['msg'].removeprefix('Value error, ')}" for e in error.errors())
        raise SettingsError(f"invalid prefect-remote settings: {problems}") from None
