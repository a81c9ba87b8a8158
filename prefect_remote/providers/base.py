"""The provider interface: get machines from a spec, find them by tags, and let them end themselves.

A provider has two sides. The *client side* (``launch``, ``list``, ``describe``, ``terminate``,
``logs``, ``renew_leases``) runs wherever the user's code runs. The *machine side* (``lease_age``,
``read_secrets``, ``current_machine_id``, and ``terminate`` on itself) is what the on-machine agent
calls, after rebuilding the provider from :meth:`Provider.boot_options`.

This module imports nothing beyond the standard library: the agent loads it on every machine boot.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal
from urllib.parse import urlsplit

from prefect_remote.errors import CapacityError
from prefect_remote.units import format_size

if TYPE_CHECKING:
    from prefect_remote.spec import MachineSpec

MachineState = Literal["pending", "running", "terminated"]

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "0.0.0.0", "::1")

# Tags the package sets on every machine; user tags may not use this prefix.
TAG_PREFIX = "prefect-remote:"


@dataclass(frozen=True)
class InstanceType:
    """A machine shape a provider offers (an EC2 instance type, a Cloud Run cpu/memory pair…)."""

    name: str
    cpu: int
    memory: int
    gpu: int = 0
    gpu_type: str | None = None
    arch: Literal["x86_64", "arm64"] = "x86_64"
    price: float | None = None  # on-demand USD per hour, when the provider knows it

    def describe(self) -> str:
        gpu = f", {self.gpu}x {self.gpu_type or 'gpu'}" if self.gpu else ""
        return f"{self.name} ({self.cpu} cpu, {format_size(self.memory)}{gpu}, {self.arch})"


@dataclass(frozen=True)
class BootPayload:
    """What a machine runs once booted: a command, its environment, and secrets kept off the boot script.

    ``activity`` says how the agent decides the payload is idle: ``"auto"`` counts CPU use and
    output; ``"explicit"`` counts only touches of ``$PREFECT_REMOTE_ACTIVITY_FILE`` (for servers such
    as a Dask scheduler that tick while idle).
    """

    command: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    secrets: Mapping[str, str] = field(default_factory=dict)
    activity: Literal["auto", "explicit"] = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.command, str):
            raise ValueError(f"BootPayload.command={self.command!r}: expected a non-empty list of strings, e.g. ['python', '-m', 'app'], not one string")
        # Stored as plain lists and dicts: a generator would be used up by the checks below.
        object.__setattr__(self, "command", list(self.command))
        object.__setattr__(self, "env", dict(self.env))
        object.__setattr__(self, "secrets", dict(self.secrets))
        if not self.command or not all(isinstance(a, str) for a in self.command):
            raise ValueError(f"BootPayload.command={self.command!r}: expected a non-empty list of strings, e.g. ['python', '-m', 'app']")
        if self.activity not in ("auto", "explicit"):
            raise ValueError(f"BootPayload.activity={self.activity!r}: expected 'auto' or 'explicit'")
        for name, mapping in (("env", self.env), ("secrets", self.secrets)):
            bad = [key for key, value in mapping.items() if not isinstance(key, str) or not isinstance(value, str)]
            if bad:
                raise ValueError(f"BootPayload.{name}: {bad} must map names to plain strings (reveal SecretStr values first)")
        overlap = set(self.env) & set(self.secrets)
        if overlap:
            raise ValueError(f"BootPayload: {sorted(overlap)} given both as env and as secrets; give each once")


@dataclass(frozen=True)
class Machine:
    """One machine as its provider last saw it."""

    id: str
    provider: str
    state: MachineState
    instance_type: str
    created: float
    tags: Mapping[str, str] = field(default_factory=dict)
    spec: str = "default"  # MachineSpec.summary(), the cost-relevant facts
    region: str | None = None
    spot: bool = False
    owner: str | None = None
    address: str | None = None  # where other machines and the owner reach it
    reason: str | None = None  # why it ended, once terminated
    exit_code: int | None = None
    details: Mapping[str, Any] = field(default_factory=dict)  # provider-specific facts (pid, cgroup, netns…)

    @property
    def age(self) -> float:
        return time.time() - self.created

    @property
    def alive(self) -> bool:
        return self.state != "terminated"


@dataclass(frozen=True)
class LogChunk:
    """Machine log text from ``offset``; pass ``next_offset`` to read on (``machines logs --follow``)."""

    text: str
    next_offset: int


def complete_utf8(data: bytes) -> bytes:
    """``data`` without a trailing, unfinished UTF-8 character (log chunks end where writes are)."""
    for cut in range(1, min(4, len(data)) + 1):
        lead = data[-cut]
        if lead & 0xC0 != 0x80:  # the last character's first byte
            size = 2 if lead >> 5 == 0b110 else 3 if lead >> 4 == 0b1110 else 4 if lead >> 3 == 0b11110 else 1
            return data[:-cut] if size > cut else data
    return data


def pick_instance_type(provider: str, catalog: Iterable[InstanceType], spec: MachineSpec) -> InstanceType:
    """The cheapest (then smallest) type in ``catalog`` that meets ``spec``; a clear error otherwise.

    ``vm_type`` restricts the choice to the names given, in the order given.
    """
    catalog = list(catalog)
    arch = "arm64" if spec.arm else "x86_64"
    if spec.vm_type:
        by_name = {item.name: item for item in catalog}
        unknown = [name for name in spec.vm_type if name not in by_name]
        if len(unknown) == len(spec.vm_type):
            near = ", ".join(sorted(by_name)[:8])
            raise CapacityError(f"{provider}: vm_type={list(spec.vm_type)!r} is not offered here; some that are: {near}")
        candidates = [by_name[name] for name in spec.vm_type if name in by_name]
    else:
        candidates = sorted(catalog, key=lambda it: (it.price if it.price is not None else 0, it.cpu, it.memory, it.gpu))

    def fits(item: InstanceType) -> bool:
        if spec.vm_type is None and item.arch != arch:
            return False
        if spec.cpu and not spec.cpu[0] <= item.cpu <= spec.cpu[1]:
            return False
        if spec.memory:  # one value means "at least"; a range bounds both sides
            low, high = spec.memory
            if item.memory < low or (high != low and item.memory > high):
                return False
        if spec.gpu:
            if item.gpu < spec.gpu.count:
                return False
            if spec.gpu.type and spec.gpu.type not in (item.gpu_type or "").lower():
                return False
        elif spec.vm_type is None and item.gpu:
            return False
        return True

    for item in candidates:
        if fits(item):
            return item
    raise CapacityError(f"{provider}: no instance type meets {spec.summary()} ({arch}); loosen cpu/memory or name a vm_type")


class Provider(ABC):
    """Where machines come from. Subclass it and register the class under the entry point group
    ``prefect_remote.providers`` to add a provider; see :func:`prefect_remote.providers.get_provider`.
    """

    name: ClassVar[str]

    # -- client side -------------------------------------------------------------------------
    @abstractmethod
    def instance_types(self) -> Sequence[InstanceType]:
        """The shapes this provider can launch."""

    def choose_instance_type(self, spec: MachineSpec) -> InstanceType:
        """The type :meth:`launch` would use for ``spec``; raises :class:`CapacityError` if none fits."""
        return pick_instance_type(self.name, self.instance_types(), spec)

    @abstractmethod
    def launch(
        self,
        spec: MachineSpec,
        payload: BootPayload,
        *,
        count: int = 1,
        tags: Mapping[str, str] | None = None,
        owner: str | None = None,
    ) -> list[Machine]:
        """Start ``count`` machines that boot and run ``payload``. Validates everything before starting any."""

    @abstractmethod
    def list(self, tags: Mapping[str, str] | None = None, *, include_terminated: bool = False) -> list[Machine]:
        """Machines whose tags include ``tags``, newest first."""

    @abstractmethod
    def describe(self, machine_id: str) -> Machine:
        """One machine; raises :class:`MachineNotFound`."""

    @abstractmethod
    def terminate(self, machine_ids: Iterable[str], *, reason: str = "terminated on request", exit_code: int | None = None) -> None:
        """End machines (already-ended ones are fine). Returns once they are stopping; ``reason`` is recorded."""

    def wait(self, machine_ids: Iterable[str], timeout: float = 30.0, *, poll: float = 0.05) -> list[Machine]:
        """Blocks until the machines have ended; raises ``TimeoutError`` naming those still alive."""
        pending, deadline = list(machine_ids), time.monotonic() + timeout
        while True:
            machines = [self.describe(machine_id) for machine_id in pending]
            alive = [m.id for m in machines if m.alive]
            if not alive:
                return machines
            if time.monotonic() > deadline:
                raise TimeoutError(f"machines still running after {timeout}s: {', '.join(alive)}")
            time.sleep(poll)

    @abstractmethod
    def logs(self, machine_id: str, *, offset: int = 0) -> LogChunk:
        """Boot, agent and payload output of a machine, from ``offset``."""

    @abstractmethod
    def renew_leases(self, machine_ids: Iterable[str]) -> list[str]:
        """The owner's heartbeat: machines whose lease is older than their ``keepalive`` end themselves.
        Returns the ids that have ended (or are unknown), which need no more renewing."""

    def reachable_url(self, url: str) -> str:
        """``url`` as this provider's machines reach it. A cloud machine cannot reach the launcher's
        loopback, so such a URL is refused with what to do instead; providers that can bridge it
        (the local provider's gateway) override this."""
        if urlsplit(url).hostname in LOOPBACK_HOSTS:
            raise CapacityError(
                f"{url} is this computer's loopback address, which {self.name} machines cannot reach; "
                "use an address they can reach (e.g. set PREFECT_API_URL to the server's public or VPC address)"
            )
        return url

    def software_options(self) -> dict[str, str | None]:
        """How machines rebuild software environments: where they cache them (``envs_dir``), uv's
        download cache (``uv_cache_dir``) and the proxy package downloads go through (``proxy``)."""
        return {"envs_dir": "/var/lib/prefect-remote/envs", "uv_cache_dir": None, "proxy": None}

    # -- machine side ------------------------------------------------------------------------
    @abstractmethod
    def boot_options(self) -> dict[str, Any]:
        """Keyword arguments (JSON) that rebuild this provider on a machine, for the agent."""

    @abstractmethod
    def current_machine_id(self) -> str:
        """On a machine: its own id (the local provider's environment, EC2's metadata service…)."""

    @abstractmethod
    def lease_age(self, machine_id: str) -> float:
        """Seconds since the owner last renewed this machine's lease."""

    @abstractmethod
    def read_secrets(self, machine_id: str) -> dict[str, str]:
        """On a machine: the secret environment delivered for it at launch."""
