"""Keeps one in-process ``remote:push`` worker running per push pool.

Submitting a flow run goes through Prefect's orchestration (Scheduled → Pending is granted to one
proposer only), so a run is submitted exactly once however many executors run, or restart.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import WorkPoolFilter, WorkPoolFilterType

from prefect_remote.workers.worker import RemotePushWorker

logger = logging.getLogger("prefect_remote.push")
PUSH_TYPE = RemotePushWorker.type


class PushExecutor:
    """Runs a :class:`RemotePushWorker` for every ``remote:push`` pool (or for ``pools`` only)."""

    def __init__(self, pools: list[str] | None = None) -> None:
        self.pools = set(pools) if pools else None
        self._workers: dict[str, asyncio.Task[None]] = {}

    async def sync(self) -> list[str]:
        """Starts workers for new pools and stops those of deleted ones; returns the pools served."""
        async with get_client() as client:
            found = await client.read_work_pools(work_pool_filter=WorkPoolFilter(type=WorkPoolFilterType(any_=[PUSH_TYPE])))
        names = {pool.name for pool in found if self.pools is None or pool.name in self.pools}
        for name in names:
            task = self._workers.get(name)
            if task is None or task.done():
                self._workers[name] = asyncio.create_task(self._serve(name), name=f"prefect-remote push {name}")
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
                await self.sync()
                await asyncio.sleep(interval)
        finally:
            await self.close()

    async def close(self) -> None:
        tasks = list(self._workers.values())
        self._workers.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
