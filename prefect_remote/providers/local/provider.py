"""The local provider: machines are isolated process trees on this computer, booted like cloud VMs.

A machine is a folder under ``<home>/machines`` (see :mod:`records`) plus a detached monitor process
(:mod:`hypervisor`) running the boot script, so it outlives the process that launched it and any
process can find it by tags. :mod:`start` starts them; :mod:`runtime` is their machine side.
Isolation is ``namespace`` (own network namespace and IP on a host-only bridge, cgroup v1 cpu and
memory limits) where the host allows it, else ``process`` (own process group, working directory and
environment).
"""

from __future__ import annotations

import functools
import os
import platform
import shutil
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from prefect_remote.errors import CapabilityError, CapacityError, MachineNotFound
from prefect_remote.machine.container import find_engine, no_engine_message
from prefect_remote.on_machine import MACHINE_ID_ENV
from prefect_remote.providers.base import LOOPBACK_HOSTS, Capabilities, InstanceType, Launch, LogChunk, Machine, Provider
from prefect_remote.providers.local import gateway, host_launch, records
from prefect_remote.providers.local.isolation import (
    LAUNCH_GRACE,
    Bridge,
    kill_pids,
    live_pid,
    namespace_unavailable,
    record_end,
    tagged_pids,
)
from prefect_remote.providers.local.runtime import request_stop
from prefect_remote.providers.local.start import HostConfig, resolve_isolation, stage_secrets, staged_secrets, start_machines
from prefect_remote.units import format_size

if TYPE_CHECKING:
    from prefect_remote.settings import RemoteSettings
    from prefect_remote.spec import MachineSpec


def _host_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class LocalProvider(Provider):
    """Machines on this computer. ``LocalProvider()`` takes its configuration from the settings
    (``PREFECT_REMOTE_HOME``, ``PREFECT_REMOTE_LOCAL_*``); keyword arguments override them.

    Example::

        provider = LocalProvider(isolation="process")
        [machine] = provider.launch(MachineSpec(cpu=1, timeout="1 hour"), BootPayload(["python", "-c", "print(42)"]))
        print(provider.logs(machine.id).text)
    """

    name = "local"
    # Namespace machines reach each other on the bridge; process machines share this host's loopback.
    # containers: with this host's Podman or Docker, when it has one (check_spec refuses image= otherwise).
    capabilities = Capabilities(inbound_connections=True, terminate_one=True, containers=True, gpus=False, max_lifetime=None)
    shares_host_software = True  # machines run the launcher's interpreter: no package sync unless asked for
    runtime = "prefect_remote.providers.local.runtime:LocalRuntime"
    lease_interval = 1.0  # a stat() of a file: cheap, so owner loss is noticed within a second of keepalive
    max_boot_script = 96 * 1024  # the agent's configuration is one environment variable (at most 128 KiB on Linux)

    def __init__(
        self,
        home: str | Path | None = None,
        *,
        isolation: str | None = None,
        overcommit: bool | None = None,
        settings: RemoteSettings | Mapping[str, Any] | None = None,
    ) -> None:
        self._settings = settings
        self.home = Path(home).expanduser().absolute() if home else self.settings.home
        self._isolation = isolation
        self._overcommit = overcommit
        self._engine_answered = False  # once an engine answered, later plans of images do not ask again

    @property
    def settings(self) -> RemoteSettings:
        # Loaded on first use: the settings model imports pydantic, which describing a machine does not need.
        settings = self._settings  # (read once: another thread may be loading it too)
        if settings is None or isinstance(settings, Mapping):
            from prefect_remote.settings import RemoteSettings as Settings
            from prefect_remote.settings import get_settings

            settings = self._settings = Settings(**settings) if settings else get_settings()
        return settings

    @property
    def machines_dir(self) -> Path:
        return self.home / "machines"

    @property
    def isolation(self) -> str:
        """``namespace`` or ``process``: what launched machines get."""
        wanted = self._isolation or self.settings.local_isolation
        return resolve_isolation(wanted, on_namespace_machine=bool(self._namespace_machine))

    @property
    def host(self) -> HostConfig:
        """How this host starts this provider's machines."""
        settings = self.settings
        return HostConfig(
            home=str(self.home),
            isolation=self._isolation or settings.local_isolation,  # "auto" is decided where machines start
            bridge=settings.local_bridge,
            subnet=settings.local_subnet,
            egress=list(settings.local_egress),
            grace_period=settings.local_grace_period,
        )

    @property
    def bridge(self) -> Bridge:
        """The host-only bridge namespace machines are attached to."""
        return Bridge(self.settings.local_bridge, self.settings.local_subnet)

    @property
    def host_address(self) -> str:
        """Where machines reach services on this host (e.g. a Prefect API bound to it)."""
        return self.bridge.address if self.isolation == "namespace" else "127.0.0.1"

    # -- sizing ---------------------------------------------------------------------------------
    def instance_types(self) -> Sequence[InstanceType]:
        return [InstanceType(name="local", cpu=os.cpu_count() or 1, memory=_host_memory(), arch=_host_arch())]

    def choose_instance_type(self, spec: MachineSpec) -> InstanceType:
        """The machine shape for ``spec``: exactly what it asks for (its minimum), refused if this host
        cannot meet it, unless ``PREFECT_REMOTE_LOCAL_OVERCOMMIT`` is on. (GPUs are refused by
        :meth:`check_spec`: the provider declares none.)"""
        host = self.instance_types()[0]
        cpu = spec.cpu[0] if spec.cpu else None
        memory = spec.memory[0] if spec.memory else None
        overcommit = self._overcommit if self._overcommit is not None else self.settings.local_overcommit
        if not overcommit:
            problems = []
            if cpu and cpu > host.cpu:
                problems.append(f"cpu={cpu} (this host has {host.cpu})")
            if memory and memory > host.memory:
                problems.append(f"memory={format_size(memory)} (this host has {format_size(host.memory)})")
            if problems:
                raise CapacityError(
                    f"local provider: this host cannot meet {', '.join(problems)}. Ask for less, use a cloud "
                    "provider, or set PREFECT_REMOTE_LOCAL_OVERCOMMIT=true to run anyway without the guarantee."
                )
        size = f"{cpu}cpu" if cpu else "shared-cpu"
        size += f"-{format_size(memory).replace(' ', '').lower()}" if memory else ""
        return InstanceType(
            name=f"local-{size}",
            cpu=cpu or host.cpu,
            memory=memory or host.memory,
            arch=host.arch,
        )

    def check_spec(self, spec: MachineSpec) -> None:
        """The shared checks, and an engine on this host for ``image=``: its machines run the image with it."""
        super().check_spec(spec)
        if spec.image and not self._engine_answered:
            problems: list[str] = []
            if find_engine(problems=problems) is None:
                raise CapabilityError(no_engine_message(spec.image, problems))
            self._engine_answered = True

    # -- launching --------------------------------------------------------------------------------
    def placement(self, spec: MachineSpec, instance_type: InstanceType) -> str:
        return f"this host ({platform.node()}), {instance_type.name}"

    def boot_python(self) -> str:
        return sys.executable  # a local machine's "image" is this host: it runs the launcher's interpreter

    def _store_secrets(self, launch_id: str, secrets: Mapping[str, str]) -> None:
        stage_secrets(self.home, launch_id, dict(secrets))

    def _forget_secrets(self, launch_id: str) -> None:
        staged_secrets(self.home, launch_id).unlink(missing_ok=True)

    def _start(self, launch: Launch) -> list[Machine]:
        spec = launch.spec
        record = {
            "tags": dict(launch.tags),
            "owner": launch.owner,
            "spec": spec.summary(),
            "instance_type": launch.instance_type.name,
            "region": spec.region or "local",
            "spot_policy": spec.spot_policy,
            "vm_type": list(spec.vm_type) if spec.vm_type else None,
            "image": spec.image,  # its monitor removes the machine's containers when it ends
            "limits": {"cpu": spec.cpu[0] if spec.cpu else None, "memory": spec.memory[0] if spec.memory else None},
        }
        arguments: dict[str, Any] = {
            "launch_id": launch.id,
            "boot_script": launch.boot_script,
            "record": record,
            "count": launch.count,
            "has_secrets": launch.has_secrets,
            "software": spec.software is not None,
        }
        if self._namespace_machine:
            # Code on a namespace machine (a cluster's scheduler) launching machines: they start in the
            # host's namespaces, as if the host had launched them.
            hypervisor = records.read_json(self.machines_dir / self._namespace_machine / records.HYPERVISOR_PID)
            machine_ids = host_launch.request(hypervisor["pid"], self.host, **arguments)
        else:
            machine_ids = start_machines(self.host, **arguments)
        return [self.describe(machine_id) for machine_id in machine_ids]

    @functools.cached_property
    def _namespace_machine(self) -> str | None:
        """The id of the namespace machine this code runs on, if any (a cluster's scheduler)."""
        machine_id = os.environ.get(MACHINE_ID_ENV)
        record = records.read_json(self.machines_dir / machine_id / records.MACHINE, default=None) if machine_id else None
        return machine_id if record and record.get("network") else None

    def reachable_url(self, url: str) -> str:
        """``url`` as this provider's machines reach it. Namespace machines cannot reach this host's
        loopback, so a loopback service is forwarded onto the bridge address."""
        parts = urlsplit(url)
        if self.isolation != "namespace" or parts.hostname not in LOOPBACK_HOSTS:
            return url
        port = parts.port or (443 if parts.scheme == "https" else 80)
        self.bridge.ensure()
        gateway.ensure_forward(self.bridge, port)
        return urlunsplit(parts._replace(netloc=f"{self.host_address}:{port}"))

    # -- finding ----------------------------------------------------------------------------------
    def _directory(self, machine_id: str) -> Path:
        directory = self.machines_dir / machine_id
        if not machine_id or "/" in machine_id or not (directory / records.MACHINE).exists():
            raise MachineNotFound(f"no local machine {machine_id!r} under {self.machines_dir}; `prefect-remote machines ls` lists them")
        return directory

    def _hypervisor_pid(self, directory: Path) -> int | None:
        """The machine's live monitor process, if it has one."""
        return live_pid(directory / records.HYPERVISOR_PID)

    def _machine(self, directory: Path) -> Machine:
        record = records.read_json(directory / records.MACHINE)
        ended = records.read_json(directory / records.ENDED, default=None)
        launching = not (directory / records.HYPERVISOR_PID).exists() and time.time() - record["created"] < LAUNCH_GRACE
        if ended is None and not launching and self._hypervisor_pid(directory) is None:
            # Read again: the monitor may have recorded the end and exited since the first read.
            ended = records.read_json(directory / records.ENDED, default=None) or self._reclaim(directory, record)
        state_file = records.read_json(directory / records.STATE, default=None)
        state = "terminated" if ended else ("running" if state_file else "pending")
        address = record["network"]["ip"] if record.get("network") else "127.0.0.1"
        return Machine(
            id=record["id"],
            provider=self.name,
            state=state,
            instance_type=record["instance_type"],
            created=record["created"],
            tags=record["tags"],
            spec=record["spec"],
            region=record["region"],
            spot=record["spot_policy"] != "on-demand",
            owner=record["owner"],
            private_address=address,  # one host: machines and their owner reach a machine alike
            public_address=address,
            reason=ended and ended["reason"],
            exit_code=ended and ended["exit_code"],
            details={
                "isolation": record["isolation"],
                "directory": str(directory),
                "vm_type": record["vm_type"],
                "spot_policy": record["spot_policy"],
                "limits": record["limits"],
                "ended": ended and ended["ended"],
            },
        )

    def _reclaim(self, directory: Path, record: dict[str, Any]) -> dict[str, Any]:
        """A machine whose monitor died (killed, host rebooted): stop what is left, tear its isolation
        down, then record its end (with the reason it was being stopped for, if any)."""
        kill_pids(tagged_pids(f"{MACHINE_ID_ENV}={record['id']}".encode()), signal.SIGKILL)
        return record_end(directory, record, reason=None, exit_code=None, otherwise="machine monitor died; machine reclaimed")

    def describe(self, machine_id: str) -> Machine:
        return self._machine(self._directory(machine_id))

    def list(self, tags: Mapping[str, str] | None = None, *, include_terminated: bool = False) -> list[Machine]:
        if not self.machines_dir.exists():
            return []
        found = []
        retention = self.settings.local_record_retention
        for directory in self.machines_dir.iterdir():
            if not (directory / records.MACHINE).exists():
                continue
            try:
                machine = self._machine(directory)
            except (OSError, KeyError, ValueError):
                continue
            if not machine.alive and time.time() - machine.details["ended"] > retention:
                shutil.rmtree(directory, ignore_errors=True)
                continue
            if (include_terminated or machine.alive) and all(machine.tags.get(k) == v for k, v in (tags or {}).items()):
                found.append(machine)
        return sorted(found, key=lambda m: m.created, reverse=True)

    # -- ending -----------------------------------------------------------------------------------
    def _terminate(self, machine_ids: list[str], reason: str, exit_code: int | None) -> set[str]:
        for machine_id in machine_ids:
            directory = self._directory(machine_id)
            if (directory / records.ENDED).exists():
                continue
            if not request_stop(directory, reason, exit_code) and (directory / records.HYPERVISOR_PID).exists():
                self._reclaim(directory, records.read_json(directory / records.MACHINE))  # its monitor died
        return set()  # each machine's copy of its launch's secrets goes with its end

    def cleanup_host(self) -> None:
        """Stops the host gateway and removes the host-only bridge once no namespace machine uses them."""
        if namespace_unavailable() is None and not self.bridge.in_use():
            gateway.stop(self.bridge)
            self.bridge.remove_if_unused()

    # -- logs and leases --------------------------------------------------------------------------
    def logs(self, machine_id: str, *, cursor: str | None = None) -> LogChunk:
        """The cursor is a byte offset into the machine's log file."""
        path = self._directory(machine_id) / records.LOG
        if cursor is not None and not cursor.isdigit():
            raise ValueError(f"cursor={cursor!r}: not a local log cursor; pass the cursor of a previous chunk")
        offset = int(cursor or 0)
        try:
            with open(path, "rb") as handle:
                handle.seek(offset)
                data = handle.read()
        except FileNotFoundError:
            data = b""
        data = complete_utf8(data)  # a character split by a write in progress is read whole next time
        return LogChunk(text=data.decode(errors="replace"), cursor=str(offset + len(data)))

    def _renew(self, machine_ids: list[str]) -> dict[str, str | None]:
        """A ``utime`` of each machine's lease file; no launch secrets to forget (see :meth:`_terminate`)."""
        gone: dict[str, str | None] = {}
        for machine_id in machine_ids:
            directory = self.machines_dir / machine_id
            try:
                os.utime(directory / records.LEASE)
            except FileNotFoundError:
                gone[machine_id] = None
                continue
            if (directory / records.ENDED).exists():
                gone[machine_id] = None
        return gone

    def software_options(self) -> dict[str, str | None]:
        """Machines on this host share one environment cache and the host's uv cache (warm rebuilds);
        namespace machines download what the cache lacks through the egress proxy."""
        from prefect_remote.software.rebuild import uv_cache_dir

        proxy = f"http://{self.host_address}:{gateway.EGRESS_PORT}" if self.isolation == "namespace" else None
        return {"envs_dir": str(self.home / "envs"), "uv_cache_dir": uv_cache_dir(), "proxy": proxy}

    # -- elsewhere: a cluster's scheduler, the machine side --------------------------------------------
    def client_options(self) -> dict[str, Any]:
        """Everything that makes this provider launch the machines it does, so that code on a machine
        (a cluster's scheduler) launches the same kind: home, isolation, and the local settings."""
        local = {key: value for key, value in self.settings.model_dump(mode="json").items() if key.startswith("local_")}
        # As configured: "auto" is decided where the launch happens, on the host (a namespace machine's
        # launches go through the host).
        isolation = self._isolation or self.settings.local_isolation
        return {"home": str(self.home), "isolation": isolation, "overcommit": self._overcommit, "settings": local}

    def machine_options(self) -> dict[str, Any]:
        """The same as a cluster's scheduler gets (none is secret): machines launch into this home."""
        return self.client_options()

    def runtime_options(self, launch_id: str) -> dict[str, Any]:
        return {"home": str(self.home)}  # the machine's folder holds its lease and secrets


def complete_utf8(data: bytes) -> bytes:
    """``data`` without a trailing, unfinished UTF-8 character (log chunks end where writes are)."""
    for cut in range(1, min(4, len(data)) + 1):
        lead = data[-cut]
        if lead & 0xC0 != 0x80:  # the last character's first byte
            size = 2 if lead >> 5 == 0b110 else 3 if lead >> 4 == 0b1110 else 4 if lead >> 3 == 0b11110 else 1
            return data[:-cut] if size > cut else data
    return data


def _host_arch() -> str:
    return "arm64" if os.uname().machine in ("aarch64", "arm64") else "x86_64"
