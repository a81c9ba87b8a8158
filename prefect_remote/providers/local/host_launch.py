"""Launching local machines from code that runs on a namespace machine (a cluster's scheduler).

A namespace machine sees neither the host's network (bridge, veths) nor its cgroup mounts. The
launch is decided on the machine (validation, boot script, secrets: :meth:`Provider.launch`), and
only its last step, :func:`~prefect_remote.providers.local.start.start_machines`, runs in a helper
process that enters the host's mount and network namespaces (those of the machine's own
hypervisor) and leaves the machine's cgroups. Machines launched this way do not belong to the
launching machine: they outlive it like any other.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from typing import Any

from prefect_remote.errors import CapacityError
from prefect_remote.on_machine import MACHINE_ID_ENV
from prefect_remote.providers.local.isolation import leave_machine_cgroups
from prefect_remote.providers.local.start import HostConfig, start_machines

LAUNCH_TIMEOUT = 120.0


def request(hypervisor_pid: int, host: HostConfig, **arguments: Any) -> list[str]:
    """Runs ``start_machines(host, **arguments)`` on the host; returns the machine ids."""
    message = {"host": dataclasses.asdict(host), "arguments": arguments}
    env = {key: value for key, value in os.environ.items() if key != MACHINE_ID_ENV}
    command = ["nsenter", f"--target={hypervisor_pid}", "--mount", "--net", "--", sys.executable, "-m", __name__]
    try:
        result = subprocess.run(command, input=json.dumps(message), capture_output=True, text=True, env=env, timeout=LAUNCH_TIMEOUT)
    except FileNotFoundError as error:
        raise CapacityError("local provider: launching from a namespace machine needs nsenter on the host; install util-linux") from error
    except subprocess.TimeoutExpired as error:
        raise CapacityError(f"local provider: launching through the host took longer than {LAUNCH_TIMEOUT:.0f}s") from error
    lines = result.stdout.strip().splitlines()
    answer = (
        json.loads(lines[-1])
        if lines and lines[-1].startswith("{")
        else {"error": "CapacityError", "message": result.stderr.strip()[-2000:]}
    )
    if "error" in answer:  # raised again here as the same kind of error, with the host's message
        kind = {"ValueError": ValueError, "CapacityError": CapacityError}.get(answer["error"], CapacityError)
        raise kind(f"{answer['message']} (launching through the host)")
    return answer["machines"]


def main() -> int:
    leave_machine_cgroups()
    message = json.loads(sys.stdin.read())
    try:
        machine_ids = start_machines(HostConfig(**message["host"]), **message["arguments"])
    except (ValueError, CapacityError) as error:
        print(json.dumps({"error": type(error).__name__, "message": str(error)}))
        return 1
    print(json.dumps({"machines": machine_ids}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
