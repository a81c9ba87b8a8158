"""The gcp tests' view of the session's sandbox GCP (tests/conftest.py's ``gcp_sandbox``): its Cloud
Storage (gcp-storage-emulator, reached through ``STORAGE_EMULATOR_HOST``) with a count of the HTTP
requests it answers, so that tests can show what an operation costs; and launcher-side clients."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import pytest


@dataclass
class GCSEmulator:
    url: str
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path) of each request answered

    def bucket(self) -> str:
        """A new, empty bucket's name."""
        from google.cloud import storage

        name = f"pr-test-{secrets.token_hex(6)}"
        storage.Client(project="sandbox-project", client_options={"api_endpoint": self.url}).create_bucket(name)
        return name


def _count_requests() -> None:
    """Makes every gcp-storage-emulator count the requests it answers, when it has a list for them
    (``prefect_requests``)."""
    from gcp_storage_emulator import server

    if getattr(server.Router.handle, "counted", False):
        return
    handle = server.Router.handle

    def counted(self, method):
        requests = getattr(self._request_handler.server, "prefect_requests", None)
        if requests is not None:
            requests.append((method, self._request_handler.path))
        return handle(self, method)

    counted.counted = True  # type: ignore[attr-defined]
    server.Router.handle = counted


@pytest.fixture(scope="session")
def gcs_emulator(gcp_sandbox) -> GCSEmulator:
    _count_requests()
    httpd = gcp_sandbox._storage._api._httpd  # the sandbox's emulator's HTTP server
    found = GCSEmulator(gcp_sandbox.storage_url)
    httpd.prefect_requests = found.requests
    return found


@pytest.fixture
def gcs(gcs_emulator, gcp_env) -> GCSEmulator:
    """The sandbox's Cloud Storage, as google-cloud-storage finds it in this test (``STORAGE_EMULATOR_HOST``)."""
    return gcs_emulator


@dataclass(frozen=True)
class Options:
    project: str | None
    api_endpoint: str | None


@pytest.fixture
def clients(gcp_env):
    """GoogleClients of the sandbox's project, as a launcher has them."""
    from prefect_remote.providers.gcp.clients import GoogleClients

    return GoogleClients(Options(gcp_env.project, gcp_env.url))
