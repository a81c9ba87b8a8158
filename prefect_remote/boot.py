"""The boot script every machine runs, whatever its provider: a cloud VM gets it as user-data, a
local machine runs it in its own process tree.

It prepares the software (the Python the payload runs with), then hands over to the agent
(:mod:`prefect_remote.agent`), which runs the payload and ends the machine when its time is up. The
agent's configuration travels inside the script; secrets never do (see :class:`BootPayload`).
"""

from __future__ import annotations

import base64
import json
import shlex
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prefect_remote.providers.base import BootPayload, Provider
    from prefect_remote.spec import MachineSpec

AGENT_CONFIG_ENV = "PREFECT_REMOTE_AGENT_CONFIG"
MACHINE_ID_ENV = "PREFECT_REMOTE_MACHINE_ID"
ACTIVITY_FILE_ENV = "PREFECT_REMOTE_ACTIVITY_FILE"
# One environment variable may hold at most 128 KiB on Linux; cloud user-data is limited to 16 KiB
# (EC2), so cloud providers compress or store larger configs.
MAX_CONFIG = 96 * 1024

_TEMPLATE = """\
#!/usr/bin/env bash
# prefect-remote boot script: the same for every provider (a cloud VM runs it as user-data).
set -euo pipefail
echo "[prefect-remote boot] $(date -u +%Y-%m-%dT%H:%M:%SZ) booting machine ${PREFECT_REMOTE_MACHINE_ID:-?} on $(hostname)"

# 1. Software: the Python environment the agent and the payload run with.
PREFECT_REMOTE_PYTHON=@PYTHON@
export PATH="$(dirname "$PREFECT_REMOTE_PYTHON"):$PATH"

# 2. The agent runs the payload and ends this machine on timeout, idleness or a lost owner.
export PREFECT_REMOTE_AGENT_CONFIG=@CONFIG@
exec "$PREFECT_REMOTE_PYTHON" -m prefect_remote.agent
"""


def software_config(provider: Provider, spec: MachineSpec) -> dict[str, Any] | None:
    """Where the agent finds ``spec.software`` and caches it; checks now that the store holds it,
    so a missing or changed environment starts no machine."""
    if spec.software is None:
        return None
    from prefect_remote.software.rebuild import load_spec
    from prefect_remote.software.store import open_store

    store = open_store()
    load_spec(store, spec.software)
    return {"name": spec.software, "store": store.url, **provider.software_options()}


def agent_config(provider: Provider, spec: MachineSpec, payload: BootPayload) -> dict[str, Any]:
    """What the agent needs to know, as JSON: no secrets (they go through the provider)."""
    return {
        "software": software_config(provider, spec),
        "provider": provider.name,
        "provider_options": provider.boot_options(),
        "command": list(payload.command),
        "env": {**spec.public_environ, **payload.env},
        "secret_names": sorted({*spec.secret_environ, *payload.secrets}),
        "activity": payload.activity,
        "timeout": spec.timeout,
        "idle_timeout": spec.idle_timeout,
        "keepalive": spec.keepalive,
    }


def render_boot_script(config: dict[str, Any], *, python: str) -> str:
    """The boot script for an agent ``config`` whose agent runs with the interpreter at ``python``."""
    encoded = base64.b64encode(json.dumps(config, separators=(",", ":")).encode()).decode()
    if len(encoded) > MAX_CONFIG:
        raise ValueError(
            f"the machine's command and environment come to {len(encoded) // 1024} KiB encoded, over the {MAX_CONFIG // 1024} KiB "
            "a boot script carries; pass large data through files or the store, not env"
        )
    return _TEMPLATE.replace("@PYTHON@", shlex.quote(python)).replace("@CONFIG@", encoded)


def decode_agent_config(encoded: str) -> dict[str, Any]:
    return json.loads(base64.b64decode(encoded))
