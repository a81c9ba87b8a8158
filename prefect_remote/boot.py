"""The boot script every machine runs, whatever its provider: a cloud VM gets it as user-data, a
local machine runs it in its own process tree.

It prepares the software (the Python the payload runs with), then hands over to the agent
(:mod:`prefect_remote.agent`), which runs the payload and ends the machine when its time is up. The
agent's configuration (made by :meth:`Provider.agent_config`) travels inside the script, which a
cloud exposes as user-data: secrets never do (see :class:`BootPayload`); the agent reads them
through the provider's machine runtime. Each provider caps the script's size
(``Provider.max_boot_script``); :meth:`Provider.launch` checks it. Standard library only.

>>> render_boot_script({"command": ["true"]}, python="/usr/bin/python3").startswith("#!/usr/bin/env bash")
True
"""

from __future__ import annotations

import base64
import json
import shlex
from typing import Any

AGENT_CONFIG_ENV = "PREFECT_REMOTE_AGENT_CONFIG"
MACHINE_ID_ENV = "PREFECT_REMOTE_MACHINE_ID"
ACTIVITY_FILE_ENV = "PREFECT_REMOTE_ACTIVITY_FILE"

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


def render_boot_script(config: dict[str, Any], *, python: str) -> str:
    """The boot script for an agent ``config`` whose agent runs with the interpreter at ``python``."""
    encoded = base64.b64encode(json.dumps(config, separators=(",", ":")).encode()).decode()
    return _TEMPLATE.replace("@PYTHON@", shlex.quote(python)).replace("@CONFIG@", encoded)


def decode_agent_config(encoded: str) -> dict[str, Any]:
    return json.loads(base64.b64decode(encoded))
