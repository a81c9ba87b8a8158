"""What the EC2 and Compute Engine tests of orphans share: the agent of a sandbox instance found and
killed (``kill -9`` of the agent process alone, its payload left running), and the time its instance
takes to end after that."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from prefect_remote.on_machine import MACHINE_ID_ENV

AGENT_MODULE = b"prefect_remote.machine.agent"


def agent_pids(local_machine_id: str) -> set[int]:
    """The agent process(es) of the sandbox machine ``local_machine_id`` (its environment carries the
    machine's id; its command line runs the agent module)."""
    marker = f"{MACHINE_ID_ENV}={local_machine_id}".encode()
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read().split(b"\0")
            with open(f"/proc/{entry}/environ", "rb") as handle:
                environ = handle.read().split(b"\0")
        except OSError:
            continue
        if AGENT_MODULE in cmdline and marker in environ:
            found.add(int(entry))
    return found


def kill_agent(local_machine_id: str) -> float:
    """``kill -9`` of the machine's agent process only; the monotonic time it was killed."""
    [pid] = agent_pids(local_machine_id)
    os.kill(pid, signal.SIGKILL)
    return time.monotonic()


def seconds_until(ended: Callable[[], bool], since: float, timeout: float) -> float:
    """Seconds from ``since`` until ``ended()`` holds (polled every 0.1 s); fails after ``timeout``."""
    deadline = since + timeout
    while not ended():
        assert time.monotonic() < deadline, f"not ended within {timeout} s"
        time.sleep(0.1)
    return time.monotonic() - since


@contextmanager
def renewing(renew: Callable[[], object], every: float) -> Iterator[None]:
    """The owner renews its machines' leases every ``every`` seconds within the block (so that a machine
    can end only by the backstop, not as "owner gone")."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every):
            try:
                renew()
            except Exception:  # a missed renewal: the next one makes up for it
                pass

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
