"""A scheduler that says it listens but cannot be reached from this host is reported as such, not as
a machine that ended (issue 11, item 3)."""

from __future__ import annotations

import asyncio
import subprocess
import textwrap

import pytest

from prefect_remote.cluster.credentials import ClusterCredentials
from prefect_remote.cluster.remote import ClusterStartError, SchedulerMachine
from prefect_remote.providers.base import BootPayload
from prefect_remote.providers.local import LocalProvider
from prefect_remote.spec import MachineSpec
from tests.conftest import needs_namespace, wait_for

PORT = 8786


@needs_namespace
def test_a_listening_scheduler_the_host_cannot_reach_is_reported_as_unreachable():
    provider = LocalProvider(isolation="namespace")
    # Listens, says so as the cluster node does, and ends a few seconds later (as keepalive would end it).
    code = textwrap.dedent(
        f"""
        import socket, time
        server = socket.create_server(("0.0.0.0", {PORT}))
        print("scheduler unreachable-test listening at tls://127.0.0.1:{PORT}, dashboard port 0", flush=True)
        time.sleep(4)
        """
    )
    [machine] = provider.launch(MachineSpec(), BootPayload(["python", "-c", code]))
    wait_for(lambda: "listening at" in provider.logs(machine.id).text, message="the scheduler listening")
    # The host sends the machine's frames to a MAC nobody has: what a stale neighbour entry did.
    blackhole = [
        "ip",
        "neigh",
        "replace",
        machine.public_address,
        "lladdr",
        "02:00:00:00:00:02",
        "dev",
        provider.bridge.name,
        "nud",
        "permanent",
    ]
    subprocess.run(blackhole, check=True)

    async def start() -> None:
        await SchedulerMachine(provider, machine, PORT, ClusterCredentials.temporary()).start()

    try:
        with pytest.raises(ClusterStartError) as raised:
            asyncio.run(start())
    finally:
        subprocess.run(["ip", "neigh", "del", machine.public_address, "dev", provider.bridge.name])
    message = str(raised.value)
    assert message.startswith(f"scheduler {machine.id} listening at tls://{machine.public_address}:{PORT}, unreachable from this host: "), (
        message
    )
    assert "its machine then ended" in message and "ended before accepting connections" not in message
