"""Workers share Prefect's verified TLS contexts: fewer CA bundle loads, same verification."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from prefect.client import orchestration
from prefect.client.orchestration import SyncPrefectClient

from prefect_remote.cluster import prefect_tls


@pytest.fixture
def shared():
    original = orchestration.ssl
    assert original is ssl, "Prefect's client module no longer uses the ssl module directly: revisit prefect_tls"
    assert prefect_tls.share_prefect_tls_contexts()
    yield
    orchestration.ssl = original


def _context(client: SyncPrefectClient) -> ssl.SSLContext:
    return client._client._transport._pool._ssl_context


def test_prefect_clients_share_one_verified_context_per_ca_file(shared, tmp_path):
    first = SyncPrefectClient("http://127.0.0.1:1/api")
    second = SyncPrefectClient("http://127.0.0.1:1/api")
    assert _context(first) is _context(second)
    assert _context(first).verify_mode == ssl.CERT_REQUIRED and _context(first).check_hostname
    assert prefect_tls.share_prefect_tls_contexts()  # installing twice is harmless


def test_a_changed_ca_file_is_loaded_again(shared, tmp_path):
    import certifi

    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(Path(certifi.where()).read_bytes())
    first = orchestration.ssl.create_default_context(cafile=str(bundle))
    assert orchestration.ssl.create_default_context(cafile=str(bundle)) is first
    bundle.write_bytes(Path(certifi.where()).read_bytes() + b"\n")
    import os

    os.utime(bundle, ns=(0, 1))  # a different mtime, as a rewrite would leave
    assert orchestration.ssl.create_default_context(cafile=str(bundle)) is not first


def test_unverified_and_other_contexts_are_never_shared(shared):
    # Prefect changes the contexts it makes for PREFECT_API_TLS_INSECURE_SKIP_VERIFY: each is its own.
    assert orchestration.ssl.create_default_context() is not orchestration.ssl.create_default_context()
    assert ssl.create_default_context is not orchestration.ssl.create_default_context  # the rest of the process is untouched
    with pytest.raises((FileNotFoundError, ssl.SSLError, OSError)):
        orchestration.ssl.create_default_context(cafile="/nonexistent/ca.pem")
