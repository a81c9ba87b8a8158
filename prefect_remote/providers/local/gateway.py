"""The host gateway for namespace machines, which have no route out: what a cloud VPC's NAT and
load balancer are to VMs, in two small services on the host's bridge address.

* ``egress``: an HTTPS (CONNECT) proxy to port 443 of the hosts in ``PREFECT_REMOTE_LOCAL_EGRESS``
  (package indexes by default) and nothing else. Only the agent's environment rebuild is pointed at
  it; payloads are not given its address.
* ``forward PORT``: forwards ``bridge-address:PORT`` to ``127.0.0.1:PORT``, so machines reach a
  service this host runs on loopback (a Prefect API started with the defaults).

Each runs as its own process per bridge, started on demand, and exits once no machine has been on
the bridge, and nobody has asked for it, for ``IDLE_EXIT`` seconds. Starting, stopping and that exit
are decided under the bridge's lock, which launches in every home take to give out addresses: a
launch never finds a gateway running that is about to go.

    python -m prefect_remote.providers.local.gateway BRIDGE SUBNET egress ALLOWED_HOSTS
    python -m prefect_remote.providers.local.gateway BRIDGE SUBNET forward PORT
"""

from __future__ import annotations

import asyncio
import errno
import fnmatch
import ipaddress
import os
import signal
import socket
import sys
import time
from pathlib import Path

from prefect_remote.filelock import file_lock
from prefect_remote.providers.local import records
from prefect_remote.providers.local.isolation import RUN_DIR, Bridge, IsolationError, live_pid, spawn_detached
from prefect_remote.relay import relay

EGRESS_PORT = 3128
IDLE_EXIT = 10.0  # seconds without namespace machines, or a request, before a gateway service exits
# The gateway's CPU priority (nice): it is the machines' NAT, which on a cloud no VM's CPU use slows
# down. At the default priority, a dozen machines unpacking wheels on a small host starve it, and new
# tunnels take tens of seconds to open, so the machines' downloads time out.
PRIORITY = -10


def allowed(host: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(host.lower(), pattern.lower()) for pattern in patterns)


async def _handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter, patterns: list[str]) -> None:
    try:
        head = await asyncio.wait_for(client_reader.readuntil(b"\r\n\r\n"), 30)
        method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        host, _, port = target.rpartition(":")
        if method != "CONNECT" or port != "443":
            client_writer.write(b"HTTP/1.1 405 Method Not Allowed\r\n\r\nonly CONNECT tunnels to port 443 are offered\r\n")
            return
        if not allowed(host, patterns):
            client_writer.write(f"HTTP/1.1 403 Forbidden\r\n\r\n{host} is not in PREFECT_REMOTE_LOCAL_EGRESS\r\n".encode())
            return
        upstream_reader, upstream_writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 30)
        client_writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await client_writer.drain()
        await relay((client_reader, client_writer), (upstream_reader, upstream_writer))
    except (TimeoutError, OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        pass
    finally:
        client_writer.close()


async def _forward(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter, port: int) -> None:
    try:
        upstream_reader, upstream_writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 30)
    except (TimeoutError, OSError):
        client_writer.close()
        return
    await relay((client_reader, client_writer), (upstream_reader, upstream_writer))


def _from_machines(handler, bridge: Bridge):
    """``handler`` for connections from the bridge's subnet only: Linux answers on the bridge address
    whatever interface a packet came in by, so a LAN neighbour that routes the subnet to this host
    would otherwise reach its loopback services (the Prefect API) and its egress proxy."""

    async def admitted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        if not peer or ipaddress.ip_address(peer[0]) not in bridge.network:
            writer.close()
            return
        await handler(reader, writer)

    return admitted


def _requested(pid_file: Path) -> float:
    """When the service was last asked for (started, or found running by :func:`_ensure`)."""
    try:
        return pid_file.stat().st_mtime
    except FileNotFoundError:
        return 0.0


async def serve(bridge: Bridge, port: int, handler, pid_file: Path) -> None:
    """Serves ``handler`` on the bridge address until no machine has used the bridge, and nobody has
    asked for the service, for ``IDLE_EXIT`` seconds."""
    server = await asyncio.start_server(_from_machines(handler, bridge), bridge.address, port)
    async with server:
        used = time.time()
        while True:
            await asyncio.sleep(1)
            if bridge.in_use():
                used = time.time()
            elif time.time() - max(used, _requested(pid_file)) > IDLE_EXIT:
                with bridge.lock():  # checked again where launches allocate and _ensure finds us running
                    if not bridge.in_use() and time.time() - _requested(pid_file) > IDLE_EXIT:
                        server.close()  # the port is free before another start can be decided
                        _forget(pid_file)
                        return


def ensure_egress(bridge: Bridge, patterns: list[str]) -> None:
    """Starts the egress proxy for the bridge's machines (at ``bridge-address:EGRESS_PORT``) unless it already runs."""
    _ensure(bridge, "egress", EGRESS_PORT, ",".join(patterns))


def ensure_forward(bridge: Bridge, port: int) -> None:
    """Forwards ``bridge-address:port`` to this host's ``127.0.0.1:port`` while machines use the bridge."""
    _ensure(bridge, "forward", port, str(port))


def _pid_file(bridge: Bridge, service: str, port: int) -> Path:
    return RUN_DIR / f"{bridge.name}-gateway-{service}-{port}.pid"


def _forget(pid_file: Path) -> None:
    """Removes this process's pid file (not a successor's)."""
    if (records.read_json(pid_file, default=None) or {}).get("pid") == os.getpid():
        pid_file.unlink(missing_ok=True)


def _ensure(bridge: Bridge, service: str, port: int, argument: str) -> None:
    pid_file = _pid_file(bridge, service, port)
    # One starter at a time (the next one finds the service listening), then the bridge's lock (see the module's doc).
    with file_lock(RUN_DIR / f"{bridge.name}-gateway.lock"):
        with bridge.lock():
            if live_pid(pid_file):
                os.utime(pid_file)  # asked for now: kept for IDLE_EXIT even before a machine is on the bridge
                return
            bridge.ensure()  # (another home may have removed it since this one's launch ensured it)
            process = spawn_detached(
                [sys.executable, "-m", "prefect_remote.providers.local.gateway", bridge.name, bridge.subnet, service, argument],
                pid_file,
                env={"PATH": os.environ.get("PATH", "")},
            )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((bridge.address, port), timeout=0.2).close()
                return
            except OSError as error:
                if process.poll() is not None or time.monotonic() > deadline:  # (a service that exited may have found one listening)
                    raise IsolationError(
                        f"the host gateway's {service} service on {bridge.address}:{port} did not start "
                        f"({'not listening after 10 s' if process.returncode is None else f'exited with code {process.returncode}'}: "
                        f"{error}); "
                        f"namespace machines would not reach it. Free the port, or use PREFECT_REMOTE_LOCAL_ISOLATION=process"
                    ) from None
                time.sleep(0.02)


def stop(bridge: Bridge) -> None:
    """Stops the bridge's gateway services unless a machine is on the bridge or a service was asked
    for in the last ``IDLE_EXIT`` seconds (by a launch in another home that has not allocated yet)."""
    with bridge.lock():
        if bridge.in_use():
            return
        for pid_file in RUN_DIR.glob(f"{bridge.name}-gateway-*.pid"):
            if time.time() - _requested(pid_file) <= IDLE_EXIT:
                continue
            pid = live_pid(pid_file)
            if pid:
                os.kill(pid, signal.SIGTERM)
            pid_file.unlink(missing_ok=True)


def main() -> int:
    name, subnet, service, argument = sys.argv[1:5]
    bridge = Bridge(name, subnet)
    port = EGRESS_PORT if service == "egress" else int(argument)
    pid_file = _pid_file(bridge, service, port)
    try:
        os.setpriority(os.PRIO_PROCESS, 0, PRIORITY)
    except OSError:  # not root: served at the default priority
        pass
    try:
        if service == "egress":
            patterns = [p for p in argument.split(",") if p]
            asyncio.run(serve(bridge, port, lambda r, w: _handle(r, w, patterns), pid_file))
        else:
            asyncio.run(serve(bridge, port, lambda r, w: _forward(r, w, port), pid_file))
    except OSError as error:
        if error.errno != errno.EADDRINUSE:  # in use: the service already listens on every address
            raise
    finally:
        _forget(pid_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
