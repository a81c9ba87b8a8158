"""The gs:// store against gcp-storage-emulator, through the real google-cloud-storage client: the
behaviours every store shares (test_store_s3.py's), then what is Cloud Storage's own: layout, clear
errors for a missing bucket, missing or refused credentials, and the agent wheel's fetch at boot."""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from prefect_remote.software.gcsstore import GCSStore
from prefect_remote.software.store import StoreError
from prefect_remote.software.stores import open_store
from tests.providers.gcp.conftest import gcs, gcs_emulator  # noqa: F401 - fixtures (the session's sandbox GCP's)
from tests.software.test_store_s3 import (  # noqa: F401 - the shared contract, run here on gs://
    HELLO,
    Case,
    test_blobs_are_addressed_by_content,
    test_boot_fetches_the_agent_wheel_and_verifies_it,
    test_envs_by_name,
    test_large_files_round_trip,
    test_missing_keys,
    test_tampered_blobs_are_refused_and_removed,
)


def client(gcs):
    from google.cloud import storage

    return storage.Client(project=None)


@pytest.fixture
def case(gcs) -> Case:
    bucket = gcs.bucket()
    store = open_store(f"gs://{bucket}/team/envs")

    def tamper(digest: str, data: bytes) -> None:
        client(gcs).bucket(bucket).blob(f"team/envs/blobs/{digest}").upload_from_string(data)

    return Case(store, tamper)


def test_gs_urls_and_layout(gcs, monkeypatch):
    bucket = gcs.bucket()
    store = open_store(f"gs://{bucket}/a/b/")
    assert isinstance(store, GCSStore) and store.url == f"gs://{bucket}/a/b" and (store.bucket, store.prefix) == (bucket, "a/b")
    digest = store.put_bytes(b"hello")
    store.put_env("senv-0123456789abcdef", b"{}")
    names = sorted(blob.name for blob in client(gcs).list_blobs(bucket))
    assert names == [f"a/b/blobs/{digest}", "a/b/envs/senv-0123456789abcdef.json"]
    assert store.key("machines/x.json") == "a/b/machines/x.json" and store.blob("x").name == "a/b/x"
    bare = open_store(f"gs://{bucket}")
    assert bare.url == f"gs://{bucket}" and bare.blobs() == []  # a/b/… is another store's
    monkeypatch.setenv("PREFECT_REMOTE_STORE", f"gs://{bucket}/a/b")
    assert open_store().get_bytes(digest) == b"hello"
    with pytest.raises(StoreError, match="not a valid Cloud Storage bucket name"):
        open_store("gs://Not_A_Bucket/x")


def test_missing_bucket_says_how_to_make_it(gcs):
    store = open_store("gs://pr-test-no-such-bucket/envs")
    expected = r"bucket pr-test-no-such-bucket does not exist .*gcloud storage buckets create gs://pr-test-no-such-bucket.*provision-infra"
    for action in (lambda: store.put_bytes(b"x"), lambda: store.get_bytes(HELLO), lambda: store.has_blob(HELLO), store.envs):
        with pytest.raises(StoreError, match=expected):
            action()


def test_no_credentials(monkeypatch, tmp_path):
    # Nothing in Google's chain: no emulator, no key file, no gcloud login, no metadata server.
    for name in ("STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS", "GCE_METADATA_HOST", "GCE_METADATA_IP"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path))  # where `gcloud auth application-default login` writes
    monkeypatch.setenv("NO_GCE_CHECK", "True")
    store = open_store("gs://pr-test-any-bucket/envs")
    for action in (lambda: store.put_bytes(b"hello"), lambda: store.get_bytes(HELLO)):
        with pytest.raises(
            StoreError, match="no Google Cloud credentials found .*gcloud auth application-default login.*GOOGLE_APPLICATION_CREDENTIALS"
        ):
            action()


class Refusing(BaseHTTPRequestHandler):
    """Answers every request as Cloud Storage does an identity it refuses (``status``)."""

    status = 403

    def _refuse(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        message = {
            403: "tester@example.iam.gserviceaccount.com does not have storage.objects.create access to the Google Cloud Storage object.",
            401: "Invalid Credentials",
        }[self.status]
        body = json.dumps(
            {"error": {"code": self.status, "message": message, "errors": [{"message": message, "reason": "forbidden"}]}}
        ).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _refuse

    def log_message(self, *args) -> None:
        pass


@pytest.mark.parametrize("status", [403, 401])
def test_refusals_name_the_fix(monkeypatch, status):
    handler = type("Handler", (Refusing,), {"status": status})
    server = HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{server.server_address[1]}")
        store = open_store("gs://pr-test-bucket/envs")
        if status == 403:
            expected = (
                r"access denied: storage.objects.get on blobs/\w+ in gs://pr-test-bucket/envs "
                r"\(tester@example.iam.gserviceaccount.com does not have .* roles/storage.objectAdmin .*add-iam-policy-binding gs://pr-test-bucket"
            )
        else:
            expected = (
                r"Google Cloud refused the credentials used for the store gs://pr-test-bucket/envs .*gcloud auth application-default login"
            )
        with pytest.raises(StoreError, match=expected):
            store.put_bytes(b"hello")
    finally:
        server.shutdown()
        server.server_close()


def test_without_google_cloud_storage_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "google.cloud.storage", None)  # as if the gcp extra were not installed
    store = open_store("gs://pr-test-any-bucket/envs")  # opening costs nothing…
    with pytest.raises(StoreError, match=r"need google-cloud-storage.*: pip install 'prefect-remote\[gcp\]'"):
        store.put_bytes(b"hello")  # …using it says what to install
