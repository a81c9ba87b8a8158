"""Whether an instance of a sandbox cloud is reached, from this host or from another instance: each
serves a token on two ports (:data:`SERVE`, its boot script), and the token either comes back or not.

This host's egress gateway answers any TCP connection to an address it routes outwards (private
ones too), so "not reached" means "the instance's token does not come back", not a refused connect.
"""

from __future__ import annotations

import subprocess
import urllib.request

from prefect_remote.providers.local.isolation import netns_name

TOKEN = "served-by-the-instance"
ADMITTED, MEMBERS_ONLY = 8786, 9000  # a port the test's rules admit from this host; one they admit from members only
SERVE = (
    f"#!/bin/bash\nmkdir -p www && cd www && echo {TOKEN} > token\n"
    f"python3 -m http.server {ADMITTED} & python3 -m http.server {MEMBERS_ONLY}\n"
)


def token_from_host(address: str, port: int) -> str:
    """What this host gets asking ``address:port`` for the token (the error, if none)."""
    try:
        with urllib.request.urlopen(f"http://{address}:{port}/token", timeout=3) as answer:
            return answer.read().decode().strip()
    except OSError as error:
        return repr(error)


def token_from_instance(machine_id: str, address: str, port: int) -> str:
    """The same, asked from inside the namespace of the instance whose machine is ``machine_id``."""
    code = (
        f"import urllib.request\ntry: print(urllib.request.urlopen('http://{address}:{port}/token', timeout=3).read().decode().strip())\n"
        "except OSError as error: print(repr(error))"
    )
    asked = subprocess.run(["ip", "netns", "exec", netns_name(machine_id), "python3", "-c", code], capture_output=True, text=True)
    return asked.stdout.strip()
