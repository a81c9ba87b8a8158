"""The provider interface: get machines from a spec, find them by tags, and let them end themselves.

A provider has two sides. The *client side* is a :class:`Provider` subclass, used wherever the user's
code runs: :meth:`Provider.launch` does the work every provider shares once (validation, the instance
type, the agent's configuration, a boot script within the provider's size limit, secrets handed to
the provider's secret channel) and then calls ``_start``, which only starts the machines. The
*machine side* is the provider's :class:`~prefect_remote.machine.runtime.MachineRuntime`, which the
on-machine agent builds from the boot script's non-secret ``runtime_options``.

This module imports nothing beyond the standard library: the local provider, which the machine-side
code of local machines imports, builds on it. It is one cohesive thing over 500 lines: the whole
provider contract, the data its verbs exchange and the :class:`Provider` template, in the one file a
plugin author reads.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal
from urllib.parse import urlsplit

from prefect_remote.errors import CapabilityError, CapacityError
from prefect_remote.machine.boot import AgentSource, render_boot_script
from prefect_remote.machine.container import image_with_software
from prefect_remote.units import format_duration, format_size

if TYPE_CHECKING:
    from prefect_remote.providers.options import ProviderOptions
    from prefect_remote.software.store import Store
    from prefect_remote.spec import MachineSpec

MachineState = Literal["pending", "running", "terminated"]

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "0.0.0.0", "::1")

# A cloud machine's root disk when the spec names no disk_size, in GiB: room for real environments
# (uv's cache, CPython, torch), as dask-cloudprovider's default; a cloud never makes it smaller than
# its image.
DEFAULT_DISK_GIB = 40

# Tags the package sets on every machine; user tags may not use this prefix.
TAG_PREFIX = "prefect-remote:"

# Set on every machine by its launcher (Provider.machine_environ): the network it runs in, as
# Provider.network() names it. Code there that launches on that provider reaches machines inside it.
MACHINE_NETWORK_ENV = "PREFECT_REMOTE_MACHINE_NETWORK"

# Seconds a launch's secrets are kept with no machine left before a sweep deletes them: a launch
# younger than this may still be starting its machines.
SECRETS_SWEEP_AGE = 3600.0


def owner_user(owner: str | None) -> str | None:
    """The user (``user@host``) an owner of :func:`~prefect_remote.lease.default_owner`'s form names; None for owners that
    name no user: a flow run's worker, a cluster's scheduler, or a launcher older than users (``host:pid``).

    >>> owner_user("ada@lab:4242"), owner_user("prefect-worker:pool-a"), owner_user("lab:4242")
    ('ada@lab', None, None)
    """
    user, sep, pid = (owner or "").rpartition(":")
    return user if sep and "@" in user and pid.isdigit() else None


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
        """The type in words, for messages: ``m6i.large (2 cpu, 8 GiB, x86_64)``."""
        gpu = f", {self.gpu}x {self.gpu_type or 'gpu'}" if self.gpu else ""
        return f"{self.name} ({self.cpu} cpu, {format_size(self.memory)}{gpu}, {self.arch})"


@dataclass(frozen=True)
class BootPayload:
    """What a machine runs once booted: a command, its environment, and secrets kept off the boot script.

    ``activity`` says how the agent decides the payload is idle: ``"auto"`` counts CPU use and
    output; ``"explicit"`` counts only touches of ``$PREFECT_REMOTE_ACTIVITY_FILE`` (for servers such
    as a Dask scheduler that tick while idle). ``on_stop`` is a command the agent runs, with the
    payload's environment and ``$PREFECT_REMOTE_END_REASON``, once it has stopped the payload for a reason
    of its own (timeout, idle, owner gone): a flow run's marks the run Crashed, saying why, since its
    submitter may be gone.

    With an image (``MachineSpec.image``), ``agent_code`` bind-mounts the agent's own ``prefect_remote``
    package into the container, read-only, at :data:`~prefect_remote.machine.container.AGENT_CODE_MOUNT`
    (:func:`~prefect_remote.machine.container.agent_code_command` runs a module of it), and ``beside`` is a command the agent runs next
    to the container, outside the image, with the payload's environment and working folder, for as
    long as the payload runs (a cluster scheduler's provider relay). Without an image, both are ignored.
    """

    command: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    secrets: Mapping[str, str] = field(default_factory=dict)
    activity: Literal["auto", "explicit"] = "auto"
    on_stop: Sequence[str] | None = None
    agent_code: bool = False
    beside: Sequence[str] | None = None

    def __post_init__(self) -> None:
        for name in ("command", "on_stop", "beside"):
            command = getattr(self, name)
            if command is None and name in ("on_stop", "beside"):
                continue
            if isinstance(command, str):
                raise ValueError(
                    f"BootPayload.{name}={command!r}: expected a non-empty list of strings, e.g. ['python', '-m', 'app'], not one string"
                )
            command = list(command)  # stored as a list: a generator would be used up by the check below
            if not command or not all(isinstance(a, str) for a in command):
                raise ValueError(f"BootPayload.{name}={command!r}: expected a non-empty list of strings, e.g. ['python', '-m', 'app']")
            object.__setattr__(self, name, command)
        object.__setattr__(self, "env", dict(self.env))
        object.__setattr__(self, "secrets", dict(self.secrets))
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
    private_address: str | None = None  # where other machines reach it (a cluster's workers → its scheduler)
    public_address: str | None = None  # where its owner reaches it (a cluster's client → its scheduler)
    reason: str | None = None  # why it ended, once terminated
    exit_code: int | None = None
    details: Mapping[str, Any] = field(default_factory=dict)  # provider-specific facts (pid, cgroup, netns…)

    @property
    def age(self) -> float:
        """Seconds since it was launched."""
        return time.time() - self.created

    @property
    def alive(self) -> bool:
        """Whether it has not ended yet (pending or running)."""
        return self.state != "terminated"

    @property
    def user(self) -> str | None:
        """The user (``user@host``) whose process launched it, if its owner names one (:func:`owner_user`)."""
        return owner_user(self.owner)

    @property
    def price_per_hour(self) -> float | None:
        """USD per hour at its on-demand price (an upper bound for spot), when the provider knows it."""
        return self.details.get("price_per_hour")

    def estimated_cost(self, until: float | None = None) -> float | None:
        """USD spent on it from launch until ``until`` (default: its end if it ended, else now);
        ``None`` when the price is unknown.

        >>> Machine("i-0abc", "aws", "running", "m6i.large", created=0.0, details={"price_per_hour": 0.096}).estimated_cost(until=1800.0)
        0.048
        """
        if self.price_per_hour is None:
            return None
        until = until if until is not None else (self.details.get("ended") or time.time())
        return round(max(0.0, until - self.created) / 3600 * self.price_per_hour, 6)

    def cost_summary(self) -> str:
        """The cost-relevant facts, for logs: type, region, market and price.

        >>> machine = Machine("i-0abc", "aws", "running", "m6i.large", created=0.0, region="us-east-2",
        ...                   details={"price_per_hour": 0.096})
        >>> machine.cost_summary()
        'm6i.large in us-east-2, on-demand, $0.0960/hour'
        """
        price = f"${self.price_per_hour:.4f}/hour" if self.price_per_hour is not None else "price unknown"
        return f"{self.instance_type} in {self.region or '?'}, {'spot' if self.spot else 'on-demand'}, {price}"


@dataclass(frozen=True)
class LogChunk:
    """Machine log text, and the opaque cursor to read on from (``machines logs --follow``).

    The cursor is whatever the provider needs (a file offset, a CloudWatch token) as a string:
    pass it back unchanged.

    >>> chunk = LogChunk("hello\\n", cursor="6")
    """

    text: str
    cursor: str


@dataclass(frozen=True)
class Capabilities:
    """What a provider's machines can do, declared on the provider class: callers check these,
    never a provider's name.

    >>> Capabilities(inbound_connections=False).inbound_connections
    False
    """

    inbound_connections: bool = True  # machines accept connections from each other (Dask workers dial their scheduler)
    terminate_one: bool = True  # one machine can be ended alone (a cluster scaling down)
    containers: bool = False  # machines run container images
    gpus: bool = False  # machines can have GPUs
    max_lifetime: float | None = None  # the longest a machine may run, in seconds; None: no limit


# What a provider without the capability does not do, for error messages.
MISSING = {
    "inbound_connections": "accept inbound connections between machines",
    "terminate_one": "end machines one at a time",
    "containers": "run containers",
    "gpus": "offer GPUs",
}


def capability_error(provider: str, capability: str, needed_for: str, instead: str) -> CapabilityError:
    """The error for a request ``provider`` cannot serve, saying what needed ``capability`` and what to do."""
    return CapabilityError(f"provider {provider!r} does not {MISSING[capability]}, which {needed_for}; {instead}")


@dataclass(frozen=True)
class Plan:
    """What a launch runs on, as :meth:`Provider.plan` decides it once, before anything starts.

    ``placement`` says where in words (the first line of the machines' logs); a provider with several
    services (gcp: Cloud Run and Compute Engine) also says which one runs the launch (``service``,
    in its own words) and why (``service_reason``).
    """

    instance_type: InstanceType
    placement: str
    service: str | None = None
    service_reason: str | None = None


@dataclass(frozen=True)
class Launch:
    """One validated launch, as :meth:`Provider.launch` hands it to ``_start``.

    ``boot_script`` is what each machine runs (no secrets); ``tags`` are the user's (a provider adds
    its own under ``TAG_PREFIX``); ``has_secrets`` says whether ``_store_secrets`` was given some
    under ``id``; ``service`` and ``service_reason`` are the :class:`Plan`'s, for a provider with
    several services; ``controller`` is another machine of this provider that will keep and end
    these (a cluster's scheduler, for the first workers its creator launches), for a provider whose
    machines may act only on their own.
    """

    id: str
    boot_script: str
    spec: MachineSpec
    instance_type: InstanceType
    count: int
    tags: Mapping[str, str]
    owner: str | None
    has_secrets: bool
    service: str | None = None
    service_reason: str | None = None
    controller: str | None = None


def batches(items: Sequence[str], size: int) -> Iterator[list[str]]:
    """``items`` in lists of at most ``size``, in order (what one API call takes).

    >>> list(batches(["a", "b", "c"], 2))
    [['a', 'b'], ['c']]
    """
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def refuse_beyond_largest(spec: MachineSpec, types: Sequence[InstanceType], where: str) -> None:
    """Refuses a ``spec`` asking for more cpu or memory than the largest of ``types`` has, naming that
    largest. ``where`` says what ``types`` are, e.g. ``"x86_64 instance type in us-east-1"``."""
    most_cpu = max((item.cpu for item in types), default=0)
    most_memory = max((item.memory for item in types), default=0)
    if spec.cpu and spec.cpu[0] > most_cpu:
        raise CapacityError(
            f"cpu={spec.cpu[0]}: the largest {where} has {most_cpu}; ask for fewer, or spread the work over several machines"
        )
    if spec.memory and spec.memory[0] > most_memory:
        raise CapacityError(
            f"memory={format_size(spec.memory[0])}: the largest {where} has {format_size(most_memory)}; "
            "ask for less, or spread the work over several machines"
        )


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
        # Unpriced types come after priced ones: an unknown price is not a free machine.
        candidates = sorted(catalog, key=lambda it: (it.price is None, it.price or 0.0, it.cpu, it.memory, it.gpu))

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

    The public verbs are template methods that do what every provider shares: :meth:`launch`
    (validation, the plan, the boot script, the secrets), :meth:`terminate` and :meth:`renew_leases`
    (each id once, and the secrets of launches with no machine left). A provider writes only what
    differs between clouds: ``_start`` (start ``count`` machines running a boot script),
    ``_terminate`` and ``_renew`` (end machines, renew leases), its secret channel
    (``_store_secrets``, ``_forget_secrets``, and ``_live_launches``/``_stored_launches`` where
    secrets outlive a launch's machines), ``list``, ``describe``, ``logs``, ``instance_types``, and
    the class attributes below; plus a :class:`~prefect_remote.machine.runtime.MachineRuntime` for
    the machine side, named by ``runtime``.
    """

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities] = Capabilities()
    # Whether machines run this host's interpreter and see its files (the local provider: its
    # "image" is this host). Then the boot script starts the agent with that interpreter at once, and
    # a cluster with no ``software`` runs the launcher's interpreter and import path as they are.
    # Otherwise machines boot from a stock image (the boot script installs uv and the agent), and a
    # cluster with no ``software`` runs this environment, captured by automatic package sync.
    shares_host_software: ClassVar[bool] = False
    # The machine's runtime, "module:Class" (imported by the agent on the machine, so stdlib-only).
    runtime: ClassVar[str]
    # Seconds between a machine's reads of its lease: owner loss is noticed at most this long after
    # keepalive. Each read may be an API call, so a cloud reads every few tens of seconds.
    lease_interval: ClassVar[float] = 30.0
    # The longest boot script the provider's machines accept, in bytes (EC2 user-data: 16 KiB).
    max_boot_script: ClassVar[int] = 16 * 1024
    # On a stock image: the extra of prefect-remote the machine side uses, and what it imports
    # (installed into the agent's environment, at the versions installed here).
    agent_extras: ClassVar[tuple[str, ...]] = ()
    agent_requirements: ClassVar[tuple[str, ...]] = ()
    # The ports a cluster's scheduler and dashboard listen on, which a cloud's firewall admits from
    # ``allow_ingress_from``; None: any free ports (machines on this host).
    dask_ports: ClassVar[tuple[int, int] | None] = None
    # The shortest pause between two polls of the cloud's API (wait()): a cloud's read rate limits.
    min_poll: ClassVar[float] = 0.0
    # Seconds after its launch a machine may still be missing from list(), or unknown to describe():
    # a cloud's eventual consistency. Until then a machine launched but not seen has not ended.
    visible_after: ClassVar[float] = 0.0
    # A shell command that ends the machine, run when its boot fails before the agent can.
    halt_command: ClassVar[str] = "true"
    # A shell command with {minutes} that schedules the machine's own end (replacing a pending one), with
    # no agent and no API: a stock machine's boot runs it, and its agent pushes it forward while healthy,
    # so a machine whose agent died ends on schedule. None: the provider ends such machines otherwise.
    backstop_command: ClassVar[str | None] = None
    # Shell lines a stock machine's boot runs first, so that a reboot ends the machine where its cloud
    # would not run the boot script again (which would leave it running with no agent). "": nothing.
    reboot_hook: ClassVar[str] = ""
    # The module that sets up what machines need in the account (--provision-infra), named rather
    # than imported: it builds on the provider. Its provision(provider, pool, store, say) returns a
    # prefect_remote.providers.setup.Setup. None: nothing beyond the store's folder.
    infra: ClassVar[str | None] = None
    # The module of ``prefect-remote doctor``'s checks of the account, named like ``infra``: its
    # checks(provider, needs) returns prefect_remote.doctor.Finding's. None: nothing to check.
    doctor: ClassVar[str | None] = None
    # The provider's options (keyword arguments of get_provider, a provider block's options), each
    # also read from PREFECT_REMOTE_<PROVIDER>_<OPTION>: a ProviderOptions subclass. None: the
    # options are __init__'s keyword arguments, with no variables of their own.
    options_model: ClassVar[type[ProviderOptions] | None] = None
    # Work-pool job variables that set one of ``options_model``'s options for a flow run, {variable:
    # option}: a pool's form offers each, typed and described as its option (gcp: gcp_service).
    job_variables: ClassVar[Mapping[str, str]] = {}
    # Options a setup (``--provision-infra``) records in a pool's provider block, as fields of their
    # own, so that the block's form shows them: the names ``infra``'s Setup.block_fields() returns.
    block_fields: ClassVar[tuple[str, ...]] = ()
    # The software store its machines read, as a work pool's provider block records it (where PackageSync
    # and --provision-infra put environments): None, the configured one (PREFECT_REMOTE_STORE, else
    # $PREFECT_REMOTE_HOME/store). So a worker finds a pool's environments with no setting of its own.
    store_url: str | None = None
    # Whether this provider has swept the secrets of dead owners' launches yet (sweep_secrets, at its
    # first launch with secrets).
    _swept: bool = False

    # Whether image= plus software= works: the machine boots inside the image and rebuilds the software
    # environment there (Cloud Run: boots_in_image). Machines that run the image with an engine refuse the pair.
    layers_software_on_image: ClassVar[bool] = False

    # -- launching: the shared work ---------------------------------------------------------------
    def launch(
        self,
        spec: MachineSpec,
        payload: BootPayload,
        *,
        count: int = 1,
        tags: Mapping[str, str] | None = None,
        owner: str | None = None,
        agent: AgentSource | None = None,
        controller: str | None = None,
    ) -> list[Machine]:
        """Start ``count`` machines that boot and run ``payload``. Everything is validated, and the
        boot script made, before any machine starts; a launch that fails starts none. ``agent`` is
        how stock-image machines get the agent (default: :meth:`agent_source`, this launcher's
        prefect-remote); a cluster's scheduler passes the one its creator chose. ``controller``: the
        id of another machine of this provider that will keep and end these (:class:`Launch`).

        Example::

            [machine] = provider.launch(MachineSpec(cpu=2, keepalive="1 minute"), BootPayload(["python", "app.py"]))
        """
        from prefect_remote.spec import as_spec  # pydantic: not on the machine-side import path

        spec = as_spec(spec)
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise ValueError(f"count={count!r}: expected a whole number of machines (1 or more)")
        user_tags = {**spec.tags, **(tags or {})}
        reserved = [key for key in user_tags if key.startswith(TAG_PREFIX)]
        if reserved:
            raise ValueError(f"tags {reserved}: names starting with {TAG_PREFIX!r} are reserved for prefect-remote")
        plan = self.plan(spec)
        launch_id = f"launch-{secrets.token_hex(6)}"
        config = self.agent_config(spec, payload, launch_id, count=count)
        if self.boots_in_image(plan):  # the machine is the image's container: nothing to pull or run in it
            config["image"] = None
        if self.shares_host_software:
            boot_script = render_boot_script(config, python=self.boot_python(), placement=plan.placement)
        else:
            boot_script = render_boot_script(
                config,
                agent=agent or self.agent_source(spec),
                halt=self.halt_command,
                backstop=self.backstop_command,
                on_reboot=self.reboot_hook,
                placement=plan.placement,
            )
        size = len(boot_script.encode())
        if size > self.max_boot_script:
            raise ValueError(
                f"the machine's command and environment make a {size // 1024} KiB boot script, over the "
                f"{self.max_boot_script // 1024} KiB {self.name} machines accept; pass large data through files or the store, not env"
            )
        machine_secrets = {**spec.secret_environ, **payload.secrets}
        if machine_secrets:
            if not self._swept:  # once per provider: secrets left behind by owners that died
                self._swept = True
                self.sweep_secrets()
            self._store_secrets(launch_id, machine_secrets)
        launch = Launch(
            launch_id,
            boot_script,
            spec,
            plan.instance_type,
            count,
            user_tags,
            owner,
            has_secrets=bool(machine_secrets),
            service=plan.service,
            service_reason=plan.service_reason,
            controller=controller,
        )
        try:
            return self._start(launch)
        except BaseException:
            if machine_secrets:
                self._forget_secrets(launch_id)
            raise

    def plan(self, spec: MachineSpec) -> Plan:
        """What a launch of ``spec`` runs on, decided once before anything starts: ``spec`` checked
        (:meth:`check_spec`), the instance type chosen (:meth:`choose_instance_type`) and where
        that is in words (:meth:`placement`). A provider with several services overrides it to
        choose the service here, once; the :class:`Launch` carries it to ``_start``."""
        self.check_spec(spec)
        instance_type = self.choose_instance_type(spec)
        return Plan(instance_type, self.placement(spec, instance_type))

    def boots_in_image(self, plan: Plan) -> bool:
        """Whether a launch on ``plan`` boots inside ``spec.image`` itself (Cloud Run), rather than on a
        machine whose engine pulls and runs it (:mod:`prefect_remote.machine.container`). By default not."""
        return False

    def placement(self, spec: MachineSpec, instance_type: InstanceType) -> str:
        """Where the machines of a launch of ``spec`` on ``instance_type`` run, in words, for the first
        line of their logs: the provider, the service, the shape and the region (``"aws EC2 t3.medium
        in us-east-1"``). By default the provider's name, the type and the region ``spec`` asks for."""
        return f"{self.name} {instance_type.name}" + (f" in {spec.region}" if spec.region else "")

    def agent_config(self, spec: MachineSpec, payload: BootPayload, launch_id: str, *, count: int = 1) -> dict[str, Any]:
        """What the agent on a machine of ``launch_id`` (one of ``count``) needs to know, as JSON for
        the boot script: no secrets (the agent reads them through the runtime). ``runtime`` and
        ``runtime_options`` make the provider's machine side; ``lease_interval`` paces its lease reads;
        ``forget_secrets`` says the machine removes the launch's secrets as it ends."""
        secret_names = sorted({*spec.secret_environ, *payload.secrets})
        return {
            "software": self._software_config(spec),
            "runtime": self.runtime,
            "runtime_options": self.runtime_options(launch_id),
            "lease_interval": self.lease_interval,
            "command": list(payload.command),
            "image": spec.image,  # run with the machine's engine, unless the machine is the image's container (Cloud Run)
            "env": {**self.machine_environ(), **spec.public_environ, **payload.env},
            "secret_names": secret_names,
            # The only machine of its launch is the only reader of its secrets, and may be the last one
            # alive to remove them: its owner's renewal sees it end, but an owner that died (a lease lost)
            # never does, and the sweep waits an hour for a later launch. Machines of a larger launch
            # leave theirs to the owner: a sibling may not have read them yet.
            "forget_secrets": bool(secret_names) and count == 1,
            "activity": payload.activity,
            "on_stop": payload.on_stop,
            "agent_code": payload.agent_code,
            "beside": payload.beside,
            "timeout": spec.timeout,
            "idle_timeout": spec.idle_timeout,
            "keepalive": spec.keepalive,
        }

    def machine_environ(self) -> dict[str, str]:
        """The settings every machine gets from its launcher, under what its payload sets: this
        provider with :meth:`machine_options` as the default provider, the store its machines read,
        and the network they run in. So code on a machine (a function a flow run calls) launches
        machines as its launcher did, and reaches them inside that network (:meth:`runs_inside`).
        They travel in the boot script: never secrets."""
        from prefect_remote.software.store import LocalStore
        from prefect_remote.software.stores import open_store

        environ = {
            "PREFECT_REMOTE_PROVIDER": self.name,
            "PREFECT_REMOTE_PROVIDER_OPTIONS": json.dumps(self.machine_options(), sort_keys=True),
            MACHINE_NETWORK_ENV: self.network(),
        }
        store = open_store(self.store_url)
        if self.shares_host_software or not isinstance(store, LocalStore):  # one its machines can read
            environ["PREFECT_REMOTE_STORE"] = store.url
        return environ

    def _software_config(self, spec: MachineSpec) -> dict[str, Any] | None:
        """Where the agent finds ``spec.software`` and caches it; checks now that the store holds it,
        so a missing or changed environment starts no machine."""
        if spec.software is None:
            return None
        from prefect_remote.software.rebuild import load_spec

        store = self.machine_store()
        load_spec(store, spec.software)
        return {"name": spec.software, "store": store.url, **self.software_options()}

    def check_spec(self, spec: MachineSpec) -> None:
        """Refuses a spec this provider can never serve (its capabilities, its lease timing), before
        anything starts. :meth:`launch` calls it; clusters call it when they are configured."""
        if spec.image and not self.capabilities.containers:
            raise capability_error(
                self.name,
                "containers",
                f"image={spec.image!r} needs",
                "remove it, or use software='{{ senv.name }}' (package sync) or a provider that runs containers",
            )
        if spec.image and spec.software and not self.layers_software_on_image:
            raise ValueError(image_with_software(spec.image, spec.software))
        if spec.inbound and not self.capabilities.inbound_connections:
            raise capability_error(
                self.name, "inbound_connections", "inbound=True needs", "use a provider whose machines accept connections"
            )
        if spec.gpu and not self.capabilities.gpus:
            raise capability_error(self.name, "gpus", f"gpu={spec.gpu.count} needs", "drop gpu, or use a provider that offers GPUs")
        lifetime = self.capabilities.max_lifetime
        if lifetime is not None and spec.timeout is not None and spec.timeout > lifetime:
            raise CapabilityError(
                f"timeout={format_duration(spec.timeout)}: {self.name} machines run at most {format_duration(lifetime)}; "
                "ask for less, or use a provider without that limit"
            )
        if spec.keepalive is not None and spec.keepalive < self.lease_interval:
            raise ValueError(
                f"keepalive={format_duration(spec.keepalive)}: {self.name} machines read their lease every "
                f"{format_duration(self.lease_interval)}, so a shorter keepalive cannot be kept; ask for at least that"
            )

    @abstractmethod
    def _start(self, launch: Launch) -> list[Machine]:
        """Starts ``launch.count`` machines of ``launch.instance_type`` that run ``launch.boot_script``,
        tagged with ``launch.tags`` and ``launch.owner``, their leases fresh. Starts none if it raises."""

    @abstractmethod
    def _store_secrets(self, launch_id: str, secrets: Mapping[str, str]) -> None:
        """Hands a launch's secret environment to the secret channel, where its machines' runtime
        reads it (an owner-only file, an SSM SecureString…). Called before ``_start``."""

    @abstractmethod
    def _forget_secrets(self, launch_id: str) -> None:
        """Removes what ``_store_secrets`` kept for a launch (a missing one is fine): its ``_start``
        failed, or none of its machines is left."""

    def _live_launches(self, launch_ids: set[str]) -> set[str]:
        """Those of ``launch_ids`` with a machine still running, whose secrets must stay. A provider
        whose secrets outlive a launch's machines answers from the cloud (one call where it can); by
        default all of them, so nothing is forgotten."""
        return set(launch_ids)

    def _stored_launches(self, older_than: float) -> set[str]:
        """The launches whose secrets the channel has kept more than ``older_than`` seconds, for
        :meth:`sweep_secrets`; none where it cannot list them (a tidy-up: never an error). By
        default none."""
        return set()

    def _forget_ended_launches(self, launch_ids: Iterable[str]) -> list[str]:
        """Deletes the secrets of those of ``launch_ids`` none of whose machines is left
        (:meth:`_live_launches`); returns them."""
        launch_ids = set(launch_ids)
        if not launch_ids:
            return []
        ended = sorted(launch_ids - self._live_launches(launch_ids))
        for launch_id in ended:
            self._forget_secrets(launch_id)
        return ended

    def sweep_secrets(self, older_than: float = SECRETS_SWEEP_AGE) -> list[str]:
        """Deletes launch secrets left behind by owners that died (their machines ended themselves and
        nobody renewed, so nobody saw them end): those kept more than ``older_than`` seconds whose
        launch has no machine left. A provider's first launch with secrets does it; returns the
        launch ids."""
        return self._forget_ended_launches(self._stored_launches(older_than))

    def boot_python(self) -> str:
        """With ``shares_host_software``: the interpreter the boot script starts the agent with."""
        return "python3"

    def agent_source(self, spec: MachineSpec) -> AgentSource:
        """Where a stock-image machine gets the agent: prefect-remote at this version, with its
        dependencies when the payload runs in the agent's environment (no software environment, no image)."""
        from prefect_remote.providers.agent_source import agent_source

        full = spec.software is None and spec.image is None
        return agent_source(self.machine_store, extras=self.agent_extras, requirements=self.agent_requirements, full=full)

    def machine_store(self) -> Store:
        """The store this provider's machines read (:attr:`store_url`, else the configured one): a
        folder on this computer only where they share this host's files."""
        from prefect_remote.settings import get_settings
        from prefect_remote.software.store import LocalStore
        from prefect_remote.software.stores import open_store

        settings = get_settings()
        url = self.store_url or settings.store or str(settings.home / "store")  # (as open_store resolves None)
        cached = self.__dict__.get("_machine_store")
        if cached is not None and cached[0] == url:  # one client (and its token) for every launch and record
            return cached[1]
        store = open_store(url)
        if isinstance(store, LocalStore) and not self.shares_host_software:
            raise CapabilityError(
                f"the store is this computer's folder {store.url}, which {self.name} machines cannot read; "
                "set PREFECT_REMOTE_STORE to a bucket they can (s3://bucket/prefix on aws; "
                "`prefect work-pool create --type remote:push --provision-infra` makes one)"
            )
        self.__dict__["_machine_store"] = (url, store)
        return store

    def provision_infra(self, pool: str, store: str | None, say: Callable[[str], None]) -> dict[str, str | None] | None:
        """Sets up what machines of work pool ``pool`` need (``--provision-infra``), printing each
        step through ``say``; ``store`` is the software store asked for (None: the configured one).
        Returns the provider block's fields that record the setup (``store`` among them when one
        was chosen), or None when there was nothing to record. Idempotent. A provider with an
        :attr:`infra` module: what its ``provision`` makes; by default, the store's folder on this
        computer.

        >>> provider.provision_infra("my-pool", None, print)        # doctest: +SKIP
        software environments store: /root/.prefect-remote/store
        """
        if self.infra is not None:
            from importlib import import_module

            return import_module(self.infra).provision(self, pool, store, say).block_fields()
        from prefect_remote.software.store import LocalStore
        from prefect_remote.software.stores import open_store

        found = open_store(store)
        if isinstance(found, LocalStore):
            found.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        say(f"software environments store: {found.url}")
        return None

    # -- client side -------------------------------------------------------------------------
    @abstractmethod
    def instance_types(self) -> Sequence[InstanceType]:
        """The shapes this provider can launch."""

    def choose_instance_type(self, spec: MachineSpec) -> InstanceType:
        """The type :meth:`launch` would use for ``spec``; raises :class:`CapacityError` if none fits."""
        return pick_instance_type(self.name, self.instance_types(), spec)

    @abstractmethod
    def list(self, tags: Mapping[str, str] | None = None, *, include_terminated: bool = False) -> list[Machine]:
        """Machines whose tags include ``tags``, newest first."""

    @abstractmethod
    def describe(self, machine_id: str) -> Machine:
        """One machine; raises :class:`MachineNotFound`."""

    def terminate(self, machine_ids: Iterable[str], *, reason: str = "terminated on request", exit_code: int | None = None) -> None:
        """End machines (already-ended ones are fine). Returns once they are stopping; ``reason`` (and
        ``exit_code``) are recorded. Then the secrets of their launches go, once none of a launch's
        machines is left."""
        ids = list(dict.fromkeys(machine_ids))
        if ids:
            self._forget_ended_launches(self._terminate(ids, reason, exit_code))

    @abstractmethod
    def _terminate(self, machine_ids: list[str], reason: str, exit_code: int | None) -> Iterable[str]:
        """Ends ``machine_ids`` (each named once; already-ended ones are fine), recording ``reason`` and
        ``exit_code``; an unknown id raises :class:`MachineNotFound` (before any machine is ended, where
        the cloud reads them all in one call).
        Returns the launches of these machines whose secrets may now go: :meth:`terminate` deletes
        those with no machine left. A channel whose secrets end with each machine returns none."""

    def wait(self, machine_ids: Iterable[str], timeout: float = 30.0, *, poll: float = 0.05) -> list[Machine]:
        """Blocks until the machines have ended, polling every ``poll`` seconds (at least
        :attr:`min_poll`); raises ``TimeoutError`` naming those still alive."""
        pending, deadline = list(machine_ids), time.monotonic() + timeout
        while True:
            machines = [self.describe(machine_id) for machine_id in pending]
            alive = [m.id for m in machines if m.alive]
            if not alive:
                return machines
            if time.monotonic() > deadline:
                raise TimeoutError(f"machines still running after {timeout}s: {', '.join(alive)}")
            time.sleep(max(poll, self.min_poll))

    @abstractmethod
    def logs(self, machine_id: str, *, cursor: str | None = None) -> LogChunk:
        """Boot, agent and payload output of a machine, from ``cursor`` (a previous chunk's) or the start."""

    def log_tail(self, machine_id: str, lines: int = 20) -> str:
        """The last ``lines`` lines of a machine's log (what an error message quotes). By default its
        whole log, read page by page from the start; a cloud reads its last page at once."""
        import collections

        tail: collections.deque[str] = collections.deque(maxlen=lines)
        cursor = None
        while True:
            chunk = self.logs(machine_id, cursor=cursor)
            if not chunk.text or chunk.cursor == cursor:
                tail.extend(chunk.text.splitlines())
                return "".join(line + "\n" for line in tail)
            tail.extend(chunk.text.splitlines())
            cursor = chunk.cursor

    def renew_leases(self, machine_ids: Iterable[str]) -> list[str]:
        """The owner's heartbeat, for all its machines in one call: machines whose lease is older than
        their ``keepalive`` end themselves. Returns the ids that have ended (or are unknown), which
        need no more renewing; the secrets of launches none of whose machines is left go."""
        ids = list(dict.fromkeys(machine_ids))
        ended = self._renew(ids) if ids else {}
        self._forget_ended_launches(launch for launch in ended.values() if launch)
        return list(ended)

    @abstractmethod
    def _renew(self, machine_ids: list[str]) -> Mapping[str, str | None]:
        """Renews the leases of ``machine_ids`` (each named once) that still run, in as few calls as
        the cloud allows. Returns those that have ended or are unknown, in order, each with its launch
        when that launch's secrets may now go (None otherwise, or when it said so before): machines
        mostly end themselves, and the owner's renewal is what sees them go."""

    def runs_inside(self) -> bool:
        """Whether this process runs on a machine in this provider's network (its launcher said so,
        :meth:`machine_environ`): it then reaches machines at their private addresses, and admits
        nobody from outside to reach them for it (``allow_ingress_from="me"``)."""
        here = os.environ.get(MACHINE_NETWORK_ENV)
        return here is not None and here == self.network()

    def client_address(self, machine: Machine) -> str | None:
        """Where this process reaches ``machine``: its private address from inside the network
        (:meth:`runs_inside`), else its public one."""
        if machine.private_address and self.runs_inside():
            return machine.private_address
        return machine.public_address

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
        """How machines rebuild software environments: where they cache them (``envs_dir``; None:
        under the machine's ``$PREFECT_REMOTE_ROOT``), uv's download cache (``uv_cache_dir``; None:
        the boot script's) and the proxy package downloads go through (``proxy``)."""
        return {"envs_dir": None, "uv_cache_dir": None, "proxy": None}

    def network(self) -> str:
        """A name for the network this provider's machines run in (machines of one network reach
        each other's private addresses). By default the provider's name: one network."""
        return self.name

    def machine_options(self) -> dict[str, Any]:
        """Keyword arguments (JSON) that make this provider on its own machines, where they are the
        default provider's options (:meth:`machine_environ`). They travel in the boot script: never
        secrets. By default none: there, the provider's own defaults."""
        return {}

    @abstractmethod
    def client_options(self) -> dict[str, Any]:
        """Keyword arguments (JSON) that make the same provider in another process: a cluster's
        scheduler launches its workers with them. They travel through the secret channel, never a
        boot script."""

    # -- machine side ------------------------------------------------------------------------
    @abstractmethod
    def runtime_options(self, launch_id: str) -> dict[str, Any]:
        """Keyword arguments (JSON) for ``runtime`` on the machines of ``launch_id``. They travel in
        the boot script, which a cloud exposes as user-data: never secrets."""
