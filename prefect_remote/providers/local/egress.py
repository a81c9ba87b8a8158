"""Controlled egress for namespace machines: an HTTPS proxy on the host's bridge address.

Namespace machines have no route out. Like a cloud VPC's egress proxy, this lets them reach the
hosts in ``PREFECT_REMOTE_LOCAL_EGRESS`` (package indexes by default) and nothing else. Only the
agent's environment rebuild is pointed at it: payloads keep no way out. It tunnels ``CONNECT host:port`` requests to allowed
hosts, refuses everything else with 403, and exits once no namespace machine is left.

    python -m prefect_remote.providers.local.egress HOME BRIDGE_ADDRESS PORT ALLOWED_HOSTS
"""

from __future__ import annotations

import asyncio
import fnmatch
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from prefect_remote.filelock import file_lock
from prefect_remote.providers.local import records
from prefect_remote.providers.local.isolation import process_identity

PORT = 3128
IDLE_EXIT = 10.0  # seconds without namespace machines before the proxy exits
PID_FILE = "local-egress.pid"


def allowed(host: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(host.lower(), pattern.lower()) for pattern in patterns)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


async def _handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter, patterns: list[str]) -> None:
    try:
        head = await asyncio.wait_for(client_reader.readuntil(b"\r\n\r\n"), 30)
        method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        host, _, port = target.rpartition(":")
        if method != "CONNECT" or not port.isdigit():
            client_writer.write(b"HTTP/1.1 405 Method Not Allowed\r\n\r\nonly CONNECT tunnels are offered\r\n")
            return
        if not allowed(host, patterns):
            client_writer.write(
                f"HTTP/1.1 403 Forbidden\r\n\r\n{host} is not in PREFECT_REMOTE_LOCAL_EGRESS\r\n".encode()
            )
            return
        upstream_reader, upstream_writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 30)
        client_writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await client_writer.drain()
        await asyncio.gather(_pipe(client_reader, upstream_writer), _pipe(upstream_reader, client_writer))
    except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.TimeoutError, asyncio.LimitOverrunError):
        pass
    finally:
        client_writer.close()


def namespace_machines_alive(home: Path) -> bool:
    machines = home / "machines"
    if not machines.is_dir():
        return False
    for directory in machines.iterdir():
        record = records.read_json(directory / records.MACHINE, default=None)
        if record and record.get("network") and not (directory / records.ENDED).exists():
            return True
    return False


async def serve(home: Path, address: str, port: int, patterns: list[str]) -> None:
    server = await asyncio.start_server(lambda r, w: _handle(r, w, patterns), address, port)
    async with server:
        idle_since = None
        while True:
            await asyncio.sleep(1)
            if namespace_machines_alive(home):
                idle_since = None
            elif idle_since is None:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > IDLE_EXIT:
                return


def ensure_running(home: Path, address: str, patterns: list[str]) -> None:
    """Starts the proxy for ``home`` unless it already runs (one per home, started on demand)."""
    pid_file = home / PID_FILE
    with file_lock(home / f"{PID_FILE}.lock"):
        identity = records.read_json(pid_file, default=None)
        if identity and process_identity(identity["pid"]) == identity:
            return
        process = subprocess.Popen(
            [sys.executable, "-m", "prefect_remote.providers.local.egress", str(home), address, str(PORT), ",".join(patterns)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env={"PATH": os.environ.get("PATH", "")},
        )
        records.write_json(pid_file, process_identity(process.pid) or {"pid": process.pid, "start": -1})
        threading.Thread(target=process.wait, daemon=True).start()  # reaped when it exits
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and process.poll() is None:
            try:
                socket.create_connection((address, PORT), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)


def stop(home: Path) -> None:
    """Stops ``home``'s proxy if it runs."""
    identity = records.read_json(home / PID_FILE, default=None)
    if identity and process_identity(identity["pid"]) == identity:
        os.kill(identity["pid"], signal.SIGTERM)


def main() -> int:
    home, address, port, patterns = sys.argv[1:5]
    asyncio.run(serve(Path(home), address, int(port), [p for p in patterns.split(",") if p]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
