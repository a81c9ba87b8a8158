"""Carrying bytes between two asyncio connections, both ways: the local gateway's forwards and
proxy tunnels, and a cluster's dashboard tunnel (:mod:`prefect_remote.cluster.dashboard`)."""

from __future__ import annotations

import asyncio

CHUNK = 64 * 1024

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copies ``reader`` to ``writer`` until either side closes or fails (a TLS error is an OSError), then closes ``writer``."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except (OSError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


async def relay(near: Connection, far: Connection) -> None:
    """Carries bytes both ways between ``near`` and ``far`` until both directions have ended."""
    await asyncio.gather(pipe(near[0], far[1]), pipe(far[0], near[1]))
