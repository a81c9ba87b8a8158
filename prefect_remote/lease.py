"""Owner leases: while the process that owns machines lives, it renews their leases; when it dies,
renewal stops and each machine's agent ends it once ``keepalive`` has passed.

>>> from prefect_remote.providers import get_provider
>>> keeper = LeaseKeeper()
>>> keeper.add(get_provider("local"), [], keepalive=30)
>>> keeper.stop()
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterable

from prefect_remote.providers.base import Provider

MIN_INTERVAL, MAX_INTERVAL = 0.2, 10.0


def default_owner() -> str:
    """Who owns machines launched from this process: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


class LeaseKeeper:
    """Renews leases from one daemon thread, every third of the shortest keepalive it holds."""

    def __init__(self) -> None:
        self._held: dict[str, tuple[Provider, float]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, provider: Provider, machine_ids: Iterable[str], keepalive: float) -> None:
        """Starts renewing ``machine_ids`` (renewed once right away)."""
        machine_ids = list(machine_ids)
        with self._lock:
            for machine_id in machine_ids:
                self._held[machine_id] = (provider, keepalive)
            if self._thread is None or not self._thread.is_alive():
                self._stopped.clear()
                self._thread = threading.Thread(target=self._run, name="prefect-remote-leases", daemon=True)
                self._thread.start()
        provider.renew_leases(machine_ids)
        self._wake.set()

    def remove(self, machine_ids: Iterable[str]) -> None:
        """Stops renewing ``machine_ids``: their agents end them after ``keepalive``."""
        with self._lock:
            for machine_id in machine_ids:
                self._held.pop(machine_id, None)

    def held(self) -> list[str]:
        with self._lock:
            return list(self._held)

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()

    def renew_now(self) -> None:
        with self._lock:
            by_provider: dict[int, tuple[Provider, list[str]]] = {}
            for machine_id, (provider, _) in self._held.items():
                by_provider.setdefault(id(provider), (provider, []))[1].append(machine_id)
        for provider, machine_ids in by_provider.values():
            try:
                self.remove(provider.renew_leases(machine_ids) or [])  # ended machines need no renewing
            except Exception:  # a transient provider error must not kill the renewer
                pass

    def _interval(self) -> float:
        with self._lock:
            shortest = min((keepalive for _, keepalive in self._held.values()), default=MAX_INTERVAL * 3)
        return min(MAX_INTERVAL, max(MIN_INTERVAL, shortest / 3))

    def _run(self) -> None:
        while not self._stopped.is_set():
            self.renew_now()
            self._wake.wait(self._interval())
            self._wake.clear()


leases = LeaseKeeper()
"""The process-wide keeper used by :func:`prefect_remote.machines.launch`."""
