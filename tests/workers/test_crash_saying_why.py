"""What a flow run's machine runs once its agent has stopped the run (``CRASH_SAYING_WHY``): the run is
Crashed with the machine's reason, through an API that is briefly unreachable, on the real server."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

from prefect import flow
from prefect.states import Running

from prefect_remote.devserver import free_port
from prefect_remote.relay import relay
from prefect_remote.workers.config import CRASH_SAYING_WHY
from tests.conftest import SESSION_HOME

REASON = "owner gone: lease not renewed for 20.3s (keepalive 20s)"


@flow
def sleeper() -> None:
    """Never runs: its run is made Running through the API."""


@contextmanager
def forwarding(port: int, target: tuple[str, int]) -> Iterator[None]:
    """Listens on ``port`` (of loopback) and relays each connection to ``target`` (the product's relay,
    as the local gateway's forwards do): the API, reachable again after an outage."""
    loop = asyncio.new_event_loop()

    async def carry(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await relay((reader, writer), await asyncio.open_connection(*target))

    async def settled() -> None:  # the connections still relayed end with the loop
        tasks = asyncio.all_tasks() - {asyncio.current_task()}
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    server = loop.run_until_complete(asyncio.start_server(carry, "127.0.0.1", port))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        server.close()
        loop.run_until_complete(settled())
        loop.close()


def test_the_run_is_crashed_with_the_reason_once_an_unreachable_api_answers(prefect_server, api):
    """The machine's one chance to say why: an API that refuses connections at first (a server
    restarting, a host too loaded to accept) is tried again until it answers, then the run is
    Crashed with the reason. Prefect's client alone fails at once on a first connection refused."""
    run = api.create_flow_run(sleeper, state=Running())
    port = free_port()  # nothing listens there yet
    env = {
        **os.environ,
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_HOME": str(SESSION_HOME / "prefect-cli"),
        "PREFECT__FLOW_RUN_ID": str(run.id),
        "PREFECT_REMOTE_END_REASON": REASON,
    }
    command = [sys.executable, "-c", CRASH_SAYING_WHY]
    telling = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        first = telling.stderr.readline()  # its first refusal, said once it has met it (or its traceback)
        assert "trying again" in first, first + telling.stderr.read()
        server = urlsplit(prefect_server)
        with forwarding(port, (server.hostname, server.port)):
            telling.wait(timeout=60)
        said = telling.stderr.read()
    finally:
        telling.kill()
        telling.wait()
    assert telling.returncode == 0, said
    state = api.read_flow_run(run.id).state
    assert state.name == "Crashed" and state.message == f"Machine ended: {REASON}", state
    assert "marked Crashed at attempt" in said, said


def test_a_run_the_api_does_not_know_is_not_tried_again(prefect_server):
    """A refusal that another try cannot change (here: no such run) ends the command at once."""
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_server,
        "PREFECT_HOME": str(SESSION_HOME / "prefect-cli"),
        "PREFECT__FLOW_RUN_ID": "00000000-0000-0000-0000-000000000000",
        "PREFECT_REMOTE_END_REASON": REASON,
    }
    done = subprocess.run([sys.executable, "-c", CRASH_SAYING_WHY], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "ObjectNotFound" in done.stderr and "trying again" not in done.stderr, done.stderr
