"""Keeps one in-process ``remote:push`` worker running per push pool.

Submitting a flow run goes through Prefect's orchestration (Scheduled → Pending is granted to one
proposer only), so a run is submitted exactly once however many executors run, or restart.
"""

from __future__ import annotations

import asyncio
import fnmatch
import functools
import logging
import os
import socket
import ssl

import certifi
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import WorkPoolFilter, WorkPoolFilterType

from prefect_remote.workers.worker import RemotePushWorker

logger = logging.getLogger("prefect_remote.push")
PUSH_TYPE = RemotePushWorker.type


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """The TLS context of sync's clients (Prefect's default: its CA bundle, or certifi's), made once:
    a Prefect client makes one each time otherwise, which cost more CPU than the listing."""
    from prefect.settings import PREFECT_API_SSL_CERT_FILE, PREFECT_API_TLS_INSECURE_SKIP_VERIFY

    if PREFECT_API_TLS_INSECURE_SKIP_VERIFY.value():
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        return context
    return ssl.create_default_context(cafile=PREFECT_API_SSL_CERT_FILE.value() or certifi.where())


def _report_end(task: asyncio.Task[None]) -> None:
    """A pool's worker ended: say why (the next sync starts it again)."""
    if not task.cancelled() and task.exception() is not None:
        logger.error("prefect-remote push: %s stopped: %r; restarting it", task.get_name(), task.exception())


class PushExecutor:
    """Runs a :class:`RemotePushWorker` for every ``remote:push`` pool (or for ``pools`` only)."""

    def __init__(self, pools: list[str] | None = None) -> None:
        self.pools = list(pools) if pools else ["*"]  # names or wildcards
        self._workers: dict[str, asyncio.Task[None]] = {}

    async def sync(self) -> list[str]:
        """Starts workers for new pools and stops those of deleted ones; returns the pools served."""
        async with get_client(httpx_settings={"verify": _tls_context()}) as client:
            found = await client.read_work_pools(work_pool_filter=WorkPoolFilter(type=WorkPoolFilterType(any_=[PUSH_TYPE])))
        names = {pool.name for pool in found if any(fnmatch.fnmatchcase(pool.name, p) for p in self.pools)}
        for name in names:
            task = self._workers.get(name)
            if task is None or task.done():
                task = asyncio.create_task(self._serve(name), name=f"prefect-remote push {name}")
                task.add_done_callback(_report_end)
                self._workers[name] = task
        for name in set(self._workers) - names:
            self._workers.pop(name).cancel()
        return sorted(names)

    async def _serve(self, pool: str) -> None:
        # A name of its own per process: a restarted service is another worker, which adopts the runs
        # the old one was following once the old one's heartbeat has stopped.
        name = f"prefect-remote push ({pool}) {socket.gethostname()}:{os.getpid()}"
        worker = RemotePushWorker(work_pool_name=pool, name=name, create_pool_if_not_found=False)
        logger.info("prefect-remote push: submitting runs of work pool %r", pool)
        await worker.start(printer=logger.info)

    async def serve_forever(self, interval: float = 5.0) -> None:
        try:
            while True:
                try:
                    await self.sync()
                except Exception:  # the API may be down for a while: keep serving what runs, try again
                    logger.exception("prefect-remote push: could not list work pools; retrying")
                await asyncio.sleep(interval)
        finally:
            await self.close()

    async def close(self) -> None:
        tasks = list(self._workers.values())
        self._workers.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
