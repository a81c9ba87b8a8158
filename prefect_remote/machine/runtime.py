"""The machine side of a provider: what the on-machine agent needs from it, and nothing more.

The agent builds the runtime named by the boot script's ``runtime`` (``"module:Class"``) from its
``runtime_options``. Those travel in the boot script, which a cloud exposes as user-data, so they
are never secret: secrets are read through :meth:`MachineRuntime.read_secrets`.

Standard library only: the agent imports this on every machine boot.

>>> runtime = load_runtime("prefect_remote.providers.local.runtime:LocalRuntime", {"home": "/tmp/home"})
>>> type(runtime).__name__
'LocalRuntime'
"""

from __future__ import annotations

import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable
from importlib import import_module
from typing import Any, BinaryIO, Protocol


class LogShipping(Protocol):
    """A running shipment of the machine log, as :meth:`MachineRuntime.ship_log` returns it."""

    def close(self) -> object:
        """Ships what the file holds now (bounded to a few seconds), then stops. Idempotent; what it
        returns is the provider's (EC2's: whether everything was shipped)."""


class _NothingToShip:
    """The default shipment: the provider keeps the machine log itself."""

    def close(self) -> None:
        pass


class LeaseWatch:
    """How old a lease is, by this machine's own monotonic clock alone: how long its token (whatever
    the owner's renewal changes, such as a tag's value or a stored object's customTime) has stayed
    the same. No clock of the owner's or the cloud's is compared with this machine's, so an owner
    whose clock is minutes off neither ends its machines early nor keeps them past their keepalive.

    The first read counts from then (a lease is fresh at launch), and a changed token restarts the
    count at the read that sees it, which may come up to one read interval after the renewal: the
    age is never more than the truth, and less by that interval at most (plus however late the
    renewal reaches what the machine reads).

    >>> now = [100.0]
    >>> watch = LeaseWatch(clock=lambda: now[0])
    >>> watch.age("1765090000"), now.__setitem__(0, 130.0), watch.age("1765090000")
    (0.0, None, 30.0)
    >>> watch.age("1765090010")  # renewed: fresh again, whatever time the token names
    0.0
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._token: Hashable = None
        self._since: float | None = None

    def age(self, token: Hashable) -> float:
        """Seconds ``token`` has been seen unchanged, from the first read that saw it."""
        now = self._clock()
        if self._since is None or token != self._token:
            self._token, self._since = token, now
        return now - self._since


class MachineRuntime(ABC):
    """One machine's view of its provider: its id, its owner's lease, its secrets, its log, its end.

    Example::

        runtime = load_runtime(config["runtime"], config["runtime_options"])
        if runtime.lease_age() > keepalive:
            runtime.terminate("owner gone", None)
    """

    @property
    @abstractmethod
    def machine_id(self) -> str:
        """This machine's id (an environment variable locally, the metadata service on EC2…)."""

    @abstractmethod
    def lease_age(self) -> float:
        """Seconds since the owner last renewed this machine's lease. The agent calls it at most once
        per the provider's ``lease_interval``: on a cloud it may be an API call. A cloud's runtime
        measures it with :class:`LeaseWatch`, never against the owner's clock."""

    @abstractmethod
    def read_secrets(self) -> dict[str, str]:
        """The secret environment delivered for this machine at launch."""

    def log_sink(self) -> BinaryIO:
        """Where the agent writes its own and the payload's output: by default the boot script's
        output, which the provider keeps as the machine log."""
        return sys.stdout.buffer

    def ship_log(self, path: str) -> LogShipping:
        """Starts copying the machine log at ``path`` (from its start, as it grows) to the provider's
        log service; the agent closes the returned handle just before the machine ends, which ships
        the rest. By default nothing to ship: the provider already keeps the boot script's output
        (locally, the machine's log file). On EC2: CloudWatch Logs, stream ``<instance id>``."""
        return _NothingToShip()

    def first_start(self) -> bool:
        """Records that the agent started on this machine; False when it had started here before: the
        machine rebooted and its cloud ran the boot script again (Compute Engine runs startup
        scripts on every boot), and the agent then ends the machine rather than run the payload a
        second time. By default True: a provider whose machines never boot twice records nothing."""
        return True

    def engine_prefix(self) -> list[str]:
        """What the container engine's commands run behind on this machine (``nsenter …``), where the
        machine's own mount namespace hides what the engine needs. By default nothing."""
        return []

    def registry_credentials(self, registry: str) -> tuple[str, str] | None:
        """A user name and password for ``registry`` from this machine's own identity (ECR through an
        EC2 instance's role, Artifact Registry through a VM's service account), or None: a public
        image, or credentials that come through the secret channel. By default None."""
        return None

    def forget_secrets(self) -> None:  # noqa: B027 (a no-op by default, not abstract: most providers need none)
        """Removes this machine's launch secrets from the provider's secret channel, as the launch's only
        machine ends (the agent calls it when its launcher said so). May fail: the owner's renewal, or
        a later sweep, removes them then. By default nothing: a channel whose secrets end with the
        machine (the local provider's file in the machine's folder)."""

    @abstractmethod
    def terminate(self, reason: str, exit_code: int | None) -> None:
        """Asks the provider to end this machine, recording ``reason`` and ``exit_code``. May fail
        (the provider unreachable): the agent then calls :meth:`halt`."""

    def halt(self) -> None:  # noqa: B027 (a no-op by default, not abstract: most providers need none)
        """Ends the machine without the provider's help; must not fail. By default nothing: the
        agent exits, which ends the boot script, and a provider that ends machines whose boot script
        ended (the local one) ends the machine. On EC2: ``shutdown -h now`` with
        ``InstanceInitiatedShutdownBehavior=terminate``."""


def load_runtime(target: str, options: dict[str, Any]) -> MachineRuntime:
    """The runtime ``target`` (``"module:Class"``) made with ``options``."""
    module, _, attribute = target.partition(":")
    cls = getattr(import_module(module), attribute)
    if not (isinstance(cls, type) and issubclass(cls, MachineRuntime)):
        raise TypeError(f"runtime {target!r} is not a prefect_remote MachineRuntime subclass")
    return cls(**options)
