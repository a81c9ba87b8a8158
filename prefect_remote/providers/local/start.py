"""Starting local machines on this host: their folders, isolation plans and monitors.

The one place local machines are started, used by the local provider on the host and by
:mod:`host_launch` when the launch comes from a namespace machine (a cluster's scheduler).
Standard library only.

>>> host = HostConfig(home="/tmp/h", isolation="process", bridge="prbr0", subnet="10.231.0.0/16", egress=[], grace_period=5.0)
>>> str(host.machines_dir)
'/tmp/h/machines'
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect_remote.errors import CapacityError
from prefect_remote.providers.local import gateway, records
from prefect_remote.providers.local.isolation import (
    Bridge,
    Cgroups,
    IsolationError,
    Network,
    PrivateLink,
    host_engine_env,
    host_trust_env,
    namespace_unavailable,
    spawn_detached,
    teardown,
)
from prefect_remote.providers.local.runtime import request_stop

ISOLATIONS = ("auto", "process", "namespace")


@dataclass(frozen=True)
class HostConfig:
    """How this host starts local machines: the local provider's settings, JSON-safe."""

    home: str
    isolation: str  # as configured: "auto" is decided where the machines start
    bridge: str
    subnet: str
    egress: list[str]
    grace_period: float

    @property
    def machines_dir(self) -> Path:
        return Path(self.home) / "machines"


def resolve_isolation(wanted: str, *, on_namespace_machine: bool = False) -> str:
    """``namespace`` or ``process``: what machines launched with ``wanted`` get. On a namespace machine
    the host decides (launches go through it), and the host evidently has namespaces."""
    if wanted not in ISOLATIONS:
        raise ValueError(f"isolation={wanted!r}: expected 'auto', 'process' or 'namespace'")
    if wanted == "process":
        return "process"
    if on_namespace_machine:
        return "namespace"
    unavailable = namespace_unavailable()
    if unavailable and wanted == "namespace":
        raise CapacityError(f"{unavailable}; set PREFECT_REMOTE_LOCAL_ISOLATION=process (or auto) to run without it")
    return "process" if unavailable else "namespace"


# -- secrets: staged per launch, then linked into each machine's folder -----------------------------
def staged_secrets(home: str | Path, launch_id: str) -> Path:
    return Path(home) / "secrets" / f"{launch_id}.json"


def stage_secrets(home: str | Path, launch_id: str, values: dict[str, str]) -> None:
    """Keeps a launch's secrets owner-only until :func:`start_machines` gives each machine its copy."""
    path = staged_secrets(home, launch_id)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    records.write_json(path, values, mode=0o600)


# -- starting -----------------------------------------------------------------------------------
def start_machines(
    host: HostConfig,
    *,
    launch_id: str,
    boot_script: str,
    record: dict[str, Any],
    count: int,
    has_secrets: bool,
    software: bool,
    image_env: dict[str, str] | None = None,
) -> list[str]:
    """Starts ``count`` machines running ``boot_script``; returns their ids. ``record`` holds the
    launch's facts for each ``machine.json`` (tags, owner, spec summary…); ``image_env`` is what the
    machine's "image" sets in its environment (a sandbox cloud's endpoints). Everything is written
    before any machine starts: a launch that fails leaves no folder, and ends the machines it had started."""
    isolation = resolve_isolation(host.isolation)
    bridge = Bridge(host.bridge, host.subnet)
    staged = staged_secrets(host.home, launch_id)
    host.machines_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    directories = [host.machines_dir / f"m-{secrets.token_hex(6)}" for _ in range(count)]
    try:
        with bridge.lock() if isolation == "namespace" else nullcontext():
            try:
                if isolation == "namespace":
                    bridge.ensure()  # here, not in the machine's monitor: a subnet another interface uses fails the launch
                for directory in directories:
                    (directory / records.WORK).mkdir(parents=True, mode=0o700)
                    network = None
                    if isolation == "namespace":
                        private = PrivateLink(**record["private_link"]) if record.get("private_link") else None
                        network = Network.plan(directory.name, bridge.allocate(directory), bridge, private)
                    (directory / records.BOOT_SCRIPT).write_text(boot_script)
                    if has_secrets:
                        os.link(staged, directory / records.SECRETS)  # the same owner-only file, no copy
                    (directory / records.LEASE).touch()  # a new machine's lease is fresh
                    records.write_json(
                        directory / records.MACHINE,
                        {
                            **record,
                            "id": directory.name,
                            "created": time.time(),
                            "isolation": isolation,
                            "network": network.__dict__ if network else None,
                            "cgroups": Cgroups.plan(directory.name).paths if isolation == "namespace" else None,
                            "grace_period": host.grace_period,
                            "image_env": image_env or {},
                        },
                    )
            except (OSError, IsolationError) as error:
                _remove(directories)
                raise CapacityError(f"local provider: could not launch {count} machine(s): {error}") from error
    finally:
        staged.unlink(missing_ok=True)
    started: list[Path] = []
    try:
        if isolation == "namespace" and software:
            gateway.ensure_egress(bridge, host.egress)
        for directory in directories:
            _start_hypervisor(directory)
            started.append(directory)
    except (OSError, IsolationError) as error:
        for directory in started:  # their monitors end them and record why
            request_stop(directory, f"its launch failed: {error}", None)
        _remove(directories[len(started) :])
        raise CapacityError(f"local provider: could not launch {count} machine(s): {error}") from error
    return [directory.name for directory in directories]


def _remove(directories: list[Path]) -> None:
    """Undoes machines that were written but never started: isolation, address and folder."""
    for directory in directories:
        written = records.read_json(directory / records.MACHINE, default=None)
        if written:
            teardown(written)
        shutil.rmtree(directory, ignore_errors=True)


def _start_hypervisor(directory: Path) -> None:
    with open(directory / records.LOG, "ab") as log:
        spawn_detached(
            [sys.executable, "-m", "prefect_remote.providers.local.hypervisor", str(directory)],
            directory / records.HYPERVISOR_PID,
            cwd=directory,
            env={"PATH": os.environ.get("PATH", ""), "LANG": "C.UTF-8", **host_trust_env(), **host_engine_env()},
            stderr=log,
        )
