"""A throwaway self-hosted Prefect server (SQLite, loopback) for demos, tests and benchmarks.

>>> with local_prefect_server(Path(".demo/prefect")) as api_url:   # doctest: +SKIP
...     print(api_url)  # http://127.0.0.1:PORT/api
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def healthy(api_url: str) -> bool:
    try:
        return urllib.request.urlopen(f"{api_url}/health", timeout=2).status == 200
    except OSError:
        return False


def stop_process_group(process: subprocess.Popen, grace: float = 20) -> None:
    """SIGTERM a process started with ``start_new_session=True`` and all it started; SIGKILL after ``grace``."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(grace)
    except ProcessLookupError:
        pass  # already gone
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextmanager
def local_prefect_server(home: Path, *, port: int | None = None, env: dict[str, str] | None = None, timeout: float = 120) -> Iterator[str]:
    """Runs ``prefect server start`` on 127.0.0.1 with its database under ``home``; yields the API URL
    and stops the server (and everything it started) on exit. Its log is ``home/server.log``."""
    home.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    server_env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **(env or {})}
    server_env.pop("PREFECT_API_URL", None)
    prefect = str(Path(sys.executable).parent / "prefect")
    with open(home / "server.log", "wb") as log:
        server = subprocess.Popen(
            [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=server_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + timeout
        while not healthy(api_url):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Prefect server did not start; see {home / 'server.log'}")
            time.sleep(0.5)
        yield api_url
    finally:
        stop_process_group(server)
