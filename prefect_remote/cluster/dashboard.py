"""A cluster's Dask dashboard, reachable only through the cluster's own mutual TLS.

Dask serves its dashboard as plain HTTP with no authentication. On a scheduler machine it listens
on the machine's loopback only; :func:`serve` admits the dashboard port to it over TLS that
requires a certificate of this cluster (the credentials its client, scheduler and workers hold,
which travel through the secret channel), so nobody without them gets a byte of it, whatever the
firewall admits. The client side, :class:`DashboardTunnel`, listens on this computer's loopback and
carries each browser connection there over TLS with the cluster's certificate: the dashboard link
is ``http://127.0.0.1:<port>/status`` on the computer that holds the cluster, while the cluster
object lives (a browser needs no certificate of its own; another user of this computer's loopback
is trusted as this computer's).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
from typing import TYPE_CHECKING

from prefect_remote.relay import relay

if TYPE_CHECKING:
    from prefect_remote.cluster.credentials import ClusterCredentials

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0  # seconds a tunnelled connection waits for the scheduler's TLS handshake


async def serve(credentials: ClusterCredentials, port: int, dashboard_port: int) -> asyncio.AbstractServer:
    """On the scheduler's machine: listens on ``port`` (every interface) for TLS connections that
    present this cluster's certificate, each carried to Dask's dashboard at loopback port
    ``dashboard_port``. A connection without one fails its handshake and reaches nothing."""
    context = credentials.security().get_listen_args("scheduler")["ssl_context"]  # requires the cluster's client certificate

    async def admit(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            dashboard = await asyncio.open_connection("127.0.0.1", dashboard_port)
        except OSError as error:
            logger.warning("dashboard connection not carried: %s", error)
            writer.close()
            return
        await relay((reader, writer), dashboard)

    return await asyncio.start_server(admit, port=port, ssl=context)


class DashboardTunnel:
    """This computer's loopback port (:attr:`port`) carrying each connection to the scheduler's
    dashboard port ``host:port`` over TLS with the cluster's certificate, served from a thread of
    its own until :meth:`close`."""

    def __init__(self, host: str, port: int, credentials: ClusterCredentials) -> None:
        self.host, self.remote_port = host, port
        self._context = credentials.security().get_connection_args("client")["ssl_context"]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"dashboard tunnel to {host}:{port}", daemon=True)
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(asyncio.start_server(self._carry, "127.0.0.1", 0), self._loop).result()
        self.port: int = self._server.sockets[0].getsockname()[1]

    @property
    def link(self) -> str:
        """The dashboard's page, as a browser on this computer opens it."""
        return f"http://127.0.0.1:{self.port}/status"

    async def _carry(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            scheduler = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.remote_port, ssl=self._context, server_hostname=self.host), CONNECT_TIMEOUT
            )
        except (OSError, ssl.SSLError, TimeoutError) as error:
            logger.warning("dashboard at %s:%s not reached: %s", self.host, self.remote_port, error)
            # The browser shows why, rather than a bare "connection reset".
            body = f"The Dask dashboard at {self.host}:{self.remote_port} was not reached: {error}\n".encode()
            head = f"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            writer.write(head.encode() + body)
            with contextlib.suppress(OSError):
                await writer.drain()
            writer.close()
            return
        await relay((reader, writer), scheduler)

    @property
    def closed(self) -> bool:
        """Whether the tunnel no longer listens (closed, or its thread gone)."""
        return self._loop.is_closed() or not self._thread.is_alive()

    async def _drop_connections(self) -> None:
        self._server.close()
        carrying = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in carrying:
            task.cancel()
        await asyncio.gather(*carrying, return_exceptions=True)

    def close(self) -> None:
        """Stops listening and ends the thread (connections still open are dropped)."""
        if self.closed:
            return
        with contextlib.suppress(Exception):  # a wedged loop still gets stopped below
            asyncio.run_coroutine_threadsafe(self._drop_connections(), self._loop).result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()
