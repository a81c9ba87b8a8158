"""Launch machines from Python: the thin layer over a provider that flow runs and clusters use.

>>> import prefect_remote
>>> [m] = prefect_remote.launch(["python", "-c", "print('hello')"], cpu=1, keepalive="30s")  # doctest: +SKIP
>>> prefect_remote.get_provider().wait([m.id])  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from prefect_remote.lease import default_owner, leases
from prefect_remote.providers import get_provider
from prefect_remote.providers.base import BootPayload, Machine, Provider
from prefect_remote.spec import MachineSpec, as_spec


def launch(
    command: Sequence[str],
    *,
    spec: MachineSpec | Mapping[str, Any] | None = None,
    provider: str | Provider | None = None,
    count: int = 1,
    env: Mapping[str, str] | None = None,
    secrets: Mapping[str, str] | None = None,
    tags: Mapping[str, str] | None = None,
    activity: str = "auto",
    **spec_fields: Any,
) -> list[Machine]:
    """Start ``count`` machines running ``command``; this process owns them.

    Spec fields may be given as a :class:`MachineSpec` or as keywords (``cpu=2, memory="4 GiB"``).
    With ``keepalive`` set, this process renews the machines' lease while it lives, and they end
    ``keepalive`` after it is gone. Everything is validated before any machine starts.

    Example::

        machines = launch(["python", "train.py"], cpu=4, memory="16 GiB", timeout="2 hours", keepalive="1 minute")
    """
    machine_spec = as_spec(spec, **spec_fields)
    payload = BootPayload(command=command, env=dict(env or {}), secrets=dict(secrets or {}), activity=activity)  # type: ignore[arg-type]
    chosen = provider if isinstance(provider, Provider) else get_provider(provider)
    machines = chosen.launch(machine_spec, payload, count=count, tags=tags, owner=default_owner())
    if machine_spec.keepalive:
        leases.add(chosen, [m.id for m in machines], machine_spec.keepalive)
    return machines


def terminate(machine_ids: Iterable[str], *, provider: str | Provider | None = None, reason: str = "terminated on request") -> None:
    """End machines and stop renewing their leases."""
    machine_ids = list(machine_ids)
    leases.remove(machine_ids)
    (provider if isinstance(provider, Provider) else get_provider(provider)).terminate(machine_ids, reason=reason)
