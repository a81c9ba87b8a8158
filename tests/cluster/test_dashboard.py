"""The dashboard tunnel carries a browser's connection over the cluster's TLS, or says why not."""

from __future__ import annotations

import asyncio
import socket
import threading
import urllib.error
import urllib.request

import pytest

from prefect_remote.cluster import dashboard
from prefect_remote.cluster.credentials import ClusterCredentials


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_dashboard_not_listening_is_a_502_that_names_it():
    tunnel = dashboard.DashboardTunnel("127.0.0.1", _free_port(), ClusterCredentials.temporary())
    try:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(tunnel.link, timeout=30)
        assert refused.value.code == 502
        assert f"The Dask dashboard at 127.0.0.1:{tunnel.remote_port} was not reached" in refused.value.read().decode()
    finally:
        tunnel.close()


def test_the_tunnel_carries_a_page_from_the_scheduler_side():
    """Both halves: serve() on the scheduler's side in front of a plain HTTP page, the tunnel here."""
    credentials = ClusterCredentials.temporary()
    page = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nDask"

    async def http_page(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(page)
        await writer.drain()
        writer.close()

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        upstream = asyncio.run_coroutine_threadsafe(asyncio.start_server(http_page, "127.0.0.1", 0), loop).result()
        port = _free_port()
        upstream_port = upstream.sockets[0].getsockname()[1]
        server = asyncio.run_coroutine_threadsafe(dashboard.serve(credentials, port, upstream_port), loop).result()
        tunnel = dashboard.DashboardTunnel("127.0.0.1", port, credentials)
        try:
            with urllib.request.urlopen(tunnel.link, timeout=30) as answer:
                assert answer.status == 200 and answer.read() == b"Dask"
        finally:
            tunnel.close()
            loop.call_soon_threadsafe(server.close)
            loop.call_soon_threadsafe(upstream.close)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
