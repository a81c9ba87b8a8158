"""The network policy every cloud shares: what allow_ingress_from admits, and this launcher's public
IP, asked of a real HTTP server on loopback (as checkip.amazonaws.com answers) with a fake clock."""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from prefect_remote.providers import network
from prefect_remote.providers.network import PUBLIC_IP_TTL, ingress_cidr, public_ip


class CheckIP:
    """A checkip-like server answering ``address`` (503 while ``failing``); ``stop()`` makes it unreachable."""

    def __init__(self, address: str) -> None:
        self.address, self.asked, self.failing = address, 0, False
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.asked += 1
                body = f"{server.address}\n".encode()
                self.send_response(503 if server.failing else 200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(autouse=True)
def nothing_found_yet(monkeypatch):
    monkeypatch.setattr(network, "_found", {})


@pytest.fixture
def checkip():
    server = CheckIP("203.0.113.7")
    yield server
    server.stop()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_public_ip_is_kept_a_few_minutes_then_asked_again(checkip):
    clock = Clock()
    assert public_ip(checkip.url, clock=clock) == "203.0.113.7"
    checkip.address = "198.51.100.9"  # the laptop moved to another network
    clock.now += PUBLIC_IP_TTL - 1
    assert public_ip(checkip.url, clock=clock) == "203.0.113.7" and checkip.asked == 1
    clock.now += 2
    assert public_ip(checkip.url, clock=clock) == "198.51.100.9" and checkip.asked == 2


def test_a_failed_lookup_is_not_kept(checkip):
    clock = Clock()
    checkip.failing = True
    assert public_ip(checkip.url, clock=clock) is None
    checkip.failing = False
    assert public_ip(checkip.url, clock=clock) == "203.0.113.7"  # asked again at once
    checkip.failing = True
    clock.now += PUBLIC_IP_TTL + 1
    assert public_ip(checkip.url, clock=clock) is None  # a stale address is not given for a failed lookup
    assert checkip.asked == 3


def test_an_answer_that_is_no_address_is_no_address():
    server = CheckIP("<html>captive portal</html>")
    try:
        assert public_ip(server.url, clock=Clock()) is None
    finally:
        server.stop()


def test_what_each_source_admits(checkip, monkeypatch, caplog):
    outside, inside = (lambda: False), (lambda: True)
    common = {"known_ip": None, "known_ip_setting": "PREFECT_REMOTE_AWS_PUBLIC_IP"}
    assert ingress_cidr("everyone", runs_inside=outside, **common) == "0.0.0.0/0"
    assert ingress_cidr("none", runs_inside=outside, **common) is None
    assert ingress_cidr("10.8.0.0/16", runs_inside=inside, **common) == "10.8.0.0/16"  # as asked, wherever it runs
    assert ingress_cidr("me", runs_inside=outside, known_ip="192.0.2.1", known_ip_setting="X") == "192.0.2.1/32"
    # From inside the network: what the cloud needs there (nothing, or the network's own range).
    assert ingress_cidr("me", runs_inside=inside, **common) is None
    assert ingress_cidr("me", runs_inside=inside, inside_range=lambda: "10.128.0.0/20", **common) == "10.128.0.0/20"
    monkeypatch.setattr(network, "CHECKIP_URL", checkip.url)
    assert ingress_cidr("me", runs_inside=outside, **common) == "203.0.113.7/32"
    checkip.stop()
    monkeypatch.setattr(network, "CHECKIP_URL", "http://127.0.0.1:9/")  # nothing listens there
    with caplog.at_level(logging.WARNING, logger="prefect_remote.providers.network"):
        assert ingress_cidr("me", runs_inside=outside, **common) is None
    assert "could not find this computer's public IP" in caplog.text and "set PREFECT_REMOTE_AWS_PUBLIC_IP" in caplog.text
