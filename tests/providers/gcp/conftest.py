"""Cloud Storage for the gcp tests: gcp-storage-emulator in this process, which google-cloud-storage
reaches through ``STORAGE_EMULATOR_HOST`` (as the sandbox GCP serves it), with a count of the HTTP
requests it answers, so that tests can show how many calls an operation costs."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
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
    """Makes every emulator count the requests it answers, when it has a list for them (``prefect_requests``)."""
    from gcp_storage_emulator import server

    if getattr(server.Router.handle, "counted", False):
        return
    handle = server.Router.handle

    def counted(self, method):  # noqa: ANN001, ANN202 - the emulator's own signature
        requests = getattr(self._request_handler.server, "prefect_requests", None)
        if requests is not None:
            requests.append((method, self._request_handler.path))
        return handle(self, method)

    counted.counted = True  # type: ignore[attr-defined]
    server.Router.handle = counted


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[GCSEmulator]:
    from gcp_storage_emulator.server import create_server

    _count_requests()
    emulator = create_server("127.0.0.1", 0, in_memory=True)
    emulator.start()
    httpd = emulator._api._httpd
    found = GCSEmulator(f"http://127.0.0.1:{httpd.server_address[1]}")
    httpd.prefect_requests = found.requests
    try:
        yield found
    finally:
        emulator.stop()


@pytest.fixture
def gcs(gcs_emulator, monkeypatch) -> GCSEmulator:
    """The emulator, as google-cloud-storage finds it in this test (``STORAGE_EMULATOR_HOST``)."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator.url)
    return gcs_emulator


@dataclass
class FakeGoogle:
    """The sandbox's fake Secret Manager and Cloud Logging on one loopback endpoint, and a service
    account key of the project that the real clients authenticate with."""

    api: object
    secrets: object
    logs: object
    key_file: str
    project: str = "sandbox-project"


@pytest.fixture(scope="session")
def fake_google(tmp_path_factory) -> Iterator[FakeGoogle]:
    import json

    from prefect_remote.testing.gcp.api import GoogleAPI
    from prefect_remote.testing.gcp.common import Project
    from prefect_remote.testing.gcp.logs import LoggingFake
    from prefect_remote.testing.gcp.secrets import SecretManagerFake

    api = GoogleAPI()
    project = Project.named("sandbox-project")
    secrets_fake, logs_fake = SecretManagerFake(api, project), LoggingFake(api, project)
    api.serve()
    key_file = tmp_path_factory.mktemp("gcp") / "key.json"
    key_file.write_text(json.dumps(api.service_account_key("tester@sandbox-project.iam.gserviceaccount.com", project.id)))
    try:
        yield FakeGoogle(api, secrets_fake, logs_fake, str(key_file), project.id)
    finally:
        api.close()


@dataclass(frozen=True)
class Options:
    project: str | None
    api_endpoint: str | None


@pytest.fixture
def clients(fake_google, monkeypatch):
    """GoogleClients of the project, pointed at the fakes, as a launcher has them."""
    from prefect_remote.providers.gcp.clients import GoogleClients

    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", fake_google.key_file)
    return GoogleClients(Options(fake_google.project, fake_google.api.url))
