"""The local provider's machine side: a machine's folder holds its lease, its secrets and its stop request.

Standard library only: the agent imports it on every local machine boot.

>>> runtime = LocalRuntime(home="/tmp/home")  # on a machine: runtime.machine_id, runtime.lease_age()…
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from prefect_remote.machine.runtime import MachineRuntime
from prefect_remote.on_machine import MACHINE_ID_ENV
from prefect_remote.providers.local import records
from prefect_remote.providers.local.isolation import live_pid


class LocalRuntime(MachineRuntime):
    """A local machine's runtime; ``home`` is the provider's ``PREFECT_REMOTE_HOME``."""

    def __init__(self, home: str) -> None:
        self.home = Path(home)

    @property
    def machine_id(self) -> str:
        machine_id = os.environ.get(MACHINE_ID_ENV)
        if not machine_id:
            raise RuntimeError(f"not on a local machine: {MACHINE_ID_ENV} is not set")
        return machine_id

    @property
    def directory(self) -> Path:
        return self.home / "machines" / self.machine_id

    def lease_age(self) -> float:
        return time.time() - (self.directory / records.LEASE).stat().st_mtime

    def read_secrets(self) -> dict[str, str]:
        return records.read_json(self.directory / records.SECRETS, default={})

    def terminate(self, reason: str, exit_code: int | None) -> None:
        request_stop(self.directory, reason, exit_code)

    def engine_prefix(self) -> list[str]:
        """A namespace machine runs in ``ip netns exec``'s mount namespace, whose fresh /sys has no
        cgroup mounts, which the engine needs: its commands run in its monitor's (the host's) mount
        namespace, still in the machine's network namespace (``--network host`` is the machine's)."""
        monitor = live_pid(self.directory / records.HYPERVISOR_PID)
        if monitor is None or os.readlink(f"/proc/{monitor}/ns/mnt") == os.readlink("/proc/self/ns/mnt"):
            return []
        return ["nsenter", f"--mount=/proc/{monitor}/ns/mnt", "--"]


def request_stop(directory: Path, reason: str, exit_code: int | None) -> bool:
    """Asks a local machine's monitor to stop it: the first request's reason and exit code are the
    ones recorded. ``False`` if no live monitor got the request (it may not have started yet: it reads
    the request when it does)."""
    records.write_once(directory / records.STOP, {"reason": reason, "exit_code": exit_code, "at": time.time()})
    monitor = live_pid(directory / records.HYPERVISOR_PID)
    if monitor is None:
        return False
    try:
        os.kill(monitor, signal.SIGTERM)  # the monitor also polls stop.json, should this race its start
    except ProcessLookupError:
        return False
    return True
