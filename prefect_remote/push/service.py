"""The push service inside ``prefect server start``: submits scheduled runs of ``remote:push`` pools.

Registered as one of Prefect's docket "perpetual services" when this module is imported, which
``prefect_remote``'s Prefect integration does only inside a server process. That registry is
private Prefect API (pinned by the prefect version range, tested in tests/workers); the public
fallbacks are ``prefect-remote push serve`` and ``prefect worker start --type remote:push``.
"""

from __future__ import annotations

import functools
from datetime import timedelta

import psutil
from docket import Perpetual
from prefect.context import SettingsContext, get_settings_context
from prefect.server.services.perpetual_services import perpetual_service
from prefect.settings import PREFECT_API_URL, Settings, get_current_settings, temporary_settings

from prefect_remote.push.executor import PushExecutor
from prefect_remote.settings import get_settings

executor = PushExecutor(get_settings().push_pools)


@functools.cache  # the process's settings and listening port do not change while it serves
def own_api_url() -> str:
    """This server's API URL, as the process's own clients reach it."""
    configured = get_current_settings().api.url
    if configured:
        return configured
    wanted = get_current_settings().server.api.port
    listening = [c.laddr for c in psutil.Process().net_connections("inet") if c.status == psutil.CONN_LISTEN]
    address = next((a for a in listening if a.port == wanted), listening[0] if listening else None)
    if address is None:
        return f"http://127.0.0.1:{wanted}/api"
    host = "127.0.0.1" if address.ip in ("0.0.0.0", "::", "") else address.ip
    return f"http://{host}:{address.port}/api"


@perpetual_service(enabled_getter=lambda: get_settings().push_service)
async def run_remote_push_pools(
    perpetual: Perpetual = Perpetual(automatic=True, every=timedelta(seconds=get_settings().push_interval)),
) -> None:
    """Makes sure every remote:push pool has its worker running in this server."""
    with SettingsContext(profile=get_settings_context().profile, settings=serving_settings()):  # inherited by the workers' tasks
        await executor.sync()


@functools.cache  # made once: Prefect's settings take more CPU to make than a tick's listing
def serving_settings() -> Settings:
    """This process's Prefect settings with its own API URL as the API."""
    with temporary_settings({PREFECT_API_URL: own_api_url()}) as settings:
        return settings
