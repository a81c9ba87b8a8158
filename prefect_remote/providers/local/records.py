"""A local machine's folder: one file per fact, each written atomically.

machine.json     what was launched (spec, tags, owner, isolation plan); written once
boot.sh          the boot script (no secrets)
secrets.json     the secret environment, owner-only (0600)
lease            its modification time is the owner's last heartbeat
hypervisor.pid   the machine's monitor process
state.json       the boot process, once started
stop.json        the first termination request: reason and exit code
ended.json       why and when the machine ended
machine.log      boot, agent, payload and monitor output
work/            the machine's working directory and HOME
root/            a sandbox cloud's instance's own / (``own_root``: an overlay mounted in its namespace), where its boot starts
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect_remote import atomic_files

MACHINE = "machine.json"
BOOT_SCRIPT = "boot.sh"
SECRETS = "secrets.json"
LEASE = "lease"
HYPERVISOR_PID = "hypervisor.pid"
STATE = "state.json"
STOP = "stop.json"
ENDED = "ended.json"
LOG = "machine.log"
WORK = "work"
ROOT = "root"

_MISSING = object()


def write_json(path: Path, data: Any, *, mode: int = 0o644) -> None:
    """Writes ``data`` so that readers see the old file or the new one, never half of one."""
    atomic_files.write_json(path, data, mode=mode)


def write_once(path: Path, data: Any) -> bool:
    """Writes ``data`` unless ``path`` exists; ``True`` if this call wrote it (first writer wins, atomically)."""
    return atomic_files.create_once(path, json.dumps(data).encode(), mode=0o644)


def read_json(path: Path, default: Any = _MISSING) -> Any:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        if default is _MISSING:
            raise
        return default
