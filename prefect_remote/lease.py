"""Owner leases: while the process that owns machines lives, it renews their leases; when it dies,
renewal stops and each machine's agent ends it once ``keepalive`` has passed.

Renewal is batched: one ``renew_leases`` call per provider per interval, however many machines it
holds (on a cloud each call is an API request). Each provider's call runs in its own thread, so a
provider whose API hangs delays no other provider's renewals; it skips rounds until its call returns.

This is the owner's side of a lease (a launcher, or a cluster's controller on its scheduler's
machine), so it lives with the launcher, not in :mod:`prefect_remote.machine`: a machine's side is
:meth:`~prefect_remote.machine.runtime.MachineRuntime.lease_age`, which the agent reads.

>>> from prefect_remote.providers import get_provider
>>> keeper = LeaseKeeper()
>>> keeper.add(get_provider("local"), [], keepalive=30)
>>> keeper.stop()
"""

from __future__ import annotations

import getpass
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from prefect_remote.providers.base import Provider

logger = logging.getLogger("prefect_remote.lease")

MIN_INTERVAL, MAX_INTERVAL = 0.2, 10.0


def default_user() -> str:
    """Who launches from this process, the same in every process of one OS user on one host:
    ``user@host``. ``prefect-remote machines rm --all`` ends only this user's machines."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a uid with no passwd entry (some containers) and no $USER
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def default_owner() -> str:
    """Who owns machines launched from this process: ``user@host:pid`` (:func:`default_user` and the
    process, whose lease it is)."""
    return f"{default_user()}:{os.getpid()}"


def renewal_interval(keepalive: float, lease_interval: float) -> float:
    """Seconds between renewals of leases whose shortest ``keepalive`` is given: a third of it (a
    renewal may be lost or late), between MIN_INTERVAL and MAX_INTERVAL, and never more often than
    twice per the provider's ``lease_interval``: machines read their lease only that often.

    >>> renewal_interval(30, lease_interval=1.0), renewal_interval(1.5, lease_interval=1.0)
    (10.0, 0.5)
    """
    return max(min(MAX_INTERVAL, max(MIN_INTERVAL, keepalive / 3)), lease_interval / 2)


@dataclass
class _Held:
    """One provider's machines (id → keepalive) and when they were last renewed."""

    provider: Provider
    last: float
    machines: dict[str, float] = field(default_factory=dict)
    failing: bool = False  # the last renewal failed (said once per streak of failures)

    def due(self) -> float:
        return self.last + renewal_interval(min(self.machines.values()), self.provider.lease_interval)


class LeaseKeeper:
    """Renews the leases it holds: one provider call per provider per interval.

    With ``background`` (the process-wide keeper) a daemon thread renews; otherwise its owner calls
    :meth:`renew_due` from its own loop (a cluster's controller: a wedged scheduler stops renewing).
    A machine's lease is fresh at launch, so what is added is renewed one interval later.

    Example::

        keeper = LeaseKeeper(background=False)
        keeper.add(provider, [m.id for m in machines], keepalive=20)
        wait = keeper.renew_due()  # renews what is due; seconds until the next renewal
    """

    def __init__(self, *, background: bool = True, clock: Callable[[], float] = time.monotonic) -> None:
        self._background = background
        self._clock = clock
        self._held: dict[int, _Held] = {}  # by id(provider)
        self._renewing: set[int] = set()  # the providers whose renewal call is running
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, provider: Provider, machine_ids: Iterable[str], keepalive: float) -> None:
        """Starts renewing ``machine_ids`` for ``provider``, whose leases are fresh (just launched) or
        were kept by another owner until now."""
        machine_ids = list(machine_ids)
        if not machine_ids:  # nothing to renew: no entry, whose empty lease set has no next renewal
            return
        with self._lock:
            held = self._held.setdefault(id(provider), _Held(provider, last=self._clock()))
            held.machines.update(dict.fromkeys(machine_ids, keepalive))
            if self._background and (self._thread is None or not self._thread.is_alive()):
                self._stopped.clear()
                self._thread = threading.Thread(target=self._run, name="prefect-remote-leases", daemon=True)
                self._thread.start()
        self._wake.set()  # a shorter keepalive may bring the next renewal forward

    def remove(self, machine_ids: Iterable[str]) -> None:
        """Stops renewing ``machine_ids``: their agents end them after ``keepalive``."""
        with self._lock:
            for machine_id in machine_ids:
                for key, held in list(self._held.items()):
                    if held.machines.pop(machine_id, None) is not None and not held.machines:
                        del self._held[key]

    def held(self) -> list[str]:
        with self._lock:
            return [machine_id for held in self._held.values() for machine_id in held.machines]

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()

    def renew_due(self) -> float:
        """Renews each provider whose interval has passed, all its machines in one call, each provider's
        call in its own thread; returns the seconds until the next renewal is due. It waits for the
        calls it started until then at most: a call still running is left to finish in its thread,
        and its provider is skipped (never renewed twice at once) until it has."""
        now = self._clock()
        with self._lock:
            due = [key for key, held in self._held.items() if key not in self._renewing and held.due() <= now]
            rounds = []
            for key in due:
                held = self._held[key]
                held.last = now
                self._renewing.add(key)
                rounds.append(
                    threading.Thread(
                        target=self._renew, args=(key, held, list(held.machines)), name="prefect-remote-lease-renewal", daemon=True
                    )
                )
            wait = min((held.due() for held in self._held.values()), default=now) - now  # until the next round
        for thread in rounds:
            thread.start()
        deadline = time.monotonic() + wait
        for thread in rounds:
            thread.join(max(0.0, deadline - time.monotonic()))
        now = self._clock()
        with self._lock:
            return max(0.0, self._next_due(now) - now)

    def _next_due(self, now: float) -> float:
        """When :meth:`renew_due` should next be called (with the lock held): a provider whose call is
        still running waits for it (its end wakes the background thread; a caller's own loop polls)."""
        soonest = min((held.due() for key, held in self._held.items() if key not in self._renewing), default=now + MAX_INTERVAL)
        return min(soonest, now + MIN_INTERVAL) if self._renewing else soonest

    def _renew(self, key: int, held: _Held, machine_ids: list[str]) -> None:
        """One provider's renewal call (in its own thread), its failures said once per streak."""
        try:
            self.remove(held.provider.renew_leases(machine_ids) or [])  # ended machines need no renewing
            held.failing = False
        except Exception as error:  # keep renewing: the error may pass before the machines' keepalive does
            if not held.failing:
                logger.warning(
                    "could not renew the leases of %d %s machine(s): %s; they end themselves after their keepalive "
                    "unless a later renewal succeeds (check the provider's credentials and permissions)",
                    len(machine_ids),
                    held.provider.name,
                    error,
                )
            held.failing = True
        finally:
            with self._lock:
                self._renewing.discard(key)
            self._wake.set()

    def _run(self) -> None:
        while not self._stopped.is_set():
            self._wake.clear()  # before the round: a renewal that ends during it wakes the wait below
            self._wake.wait(self.renew_due())


leases = LeaseKeeper()
"""The process-wide keeper used by :func:`prefect_remote.machines.launch`."""
