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


def seconds_until_each_ends(agents: dict[str, str], ended: Callable[[str], bool], timeout: float) -> list[float]:
    """``agents`` maps each instance's id to its sandbox machine's id. Their agents are killed together,
    then for each instance, the seconds from its agent's kill until ``ended(instance_id)`` holds (polled
    every 0.1 s); fails after ``timeout``. Together, so that three instances take one bound, not three."""
    killed = {instance_id: kill_agent(local_id) for instance_id, local_id in agents.items()}
    figures: dict[str, float] = {}
    while len(figures) < len(killed):
        for instance_id, since in killed.items():
            if instance_id not in figures and ended(instance_id):
                figures[instance_id] = time.monotonic() - since
        assert time.monotonic() < min(killed.values()) + timeout, f"not ended within {timeout} s: {sorted(set(killed) - set(figures))}"
        time.sleep(0.1)
    return [figures[instance_id] for instance_id in agents]


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
