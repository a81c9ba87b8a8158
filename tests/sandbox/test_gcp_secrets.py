"""The sandbox's Secret Manager, driven by google-cloud-secret-manager over REST."""

from __future__ import annotations

import google_crc32c
import pytest
from google.api_core import exceptions


def test_secret_round_trip_labels_versions_and_errors(google, gcp_sandbox):
    client = google.secrets()
    parent = f"projects/{google.project}"
    secret = client.create_secret(
        parent=parent,
        secret_id="prefect-remote-l-1",
        secret={"replication": {"automatic": {}}, "labels": {"prefect-remote-launch": "l-1"}},
    )
    assert secret.name == f"projects/{gcp_sandbox.project_number}/secrets/prefect-remote-l-1"  # Google names it by number
    assert secret.labels["prefect-remote-launch"] == "l-1"
    with pytest.raises(exceptions.Conflict):  # 409 ALREADY_EXISTS, as google-api-core maps it over REST
        client.create_secret(parent=parent, secret_id="prefect-remote-l-1", secret={"replication": {"automatic": {}}})
    with pytest.raises(exceptions.BadRequest, match="replication"):
        client.create_secret(parent=parent, secret_id="no-replication", secret={})

    first = client.add_secret_version(parent=secret.name, payload={"data": b'{"TOKEN": "one"}'})
    data = b'{"TOKEN": "two"}'
    second = client.add_secret_version(parent=secret.name, payload={"data": data, "data_crc32c": google_crc32c.value(data)})
    assert first.name.endswith("/versions/1") and second.name.endswith("/versions/2")
    latest = client.access_secret_version(name=f"{parent}/secrets/prefect-remote-l-1/versions/latest")
    assert latest.payload.data == data and latest.payload.data_crc32c == google_crc32c.value(data)
    assert latest.name.endswith("/versions/2")
    assert client.access_secret_version(name=f"{secret.name}/versions/1").payload.data == b'{"TOKEN": "one"}'
    assert gcp_sandbox.secrets.value("prefect-remote-l-1") == data.decode()  # what Cloud Run's secretKeyRef resolves
    with pytest.raises(exceptions.BadRequest, match="[Cc]hecksum"):
        client.add_secret_version(parent=secret.name, payload={"data": b"x", "data_crc32c": 1})
    with pytest.raises(exceptions.NotFound):
        client.access_secret_version(name=f"{secret.name}/versions/9")

    client.create_secret(parent=parent, secret_id="unlabelled", secret={"replication": {"automatic": {}}})
    labelled = [
        s.name.rsplit("/", 1)[1] for s in client.list_secrets(request={"parent": parent, "filter": "labels.prefect-remote-launch:*"})
    ]
    assert "prefect-remote-l-1" in labelled and "unlabelled" not in labelled, labelled  # (other tests' launches may be listed)
    assert [
        s.name.rsplit("/", 1)[1] for s in client.list_secrets(request={"parent": parent, "filter": "labels.prefect-remote-launch=l-2"})
    ] == []
    assert len(list(client.list_secrets(request={"parent": parent, "page_size": 1}))) >= 2  # pages followed

    client.delete_secret(name=secret.name)
    client.delete_secret(name=f"{parent}/secrets/unlabelled")
    with pytest.raises(exceptions.NotFound):
        client.access_secret_version(name=f"{parent}/secrets/prefect-remote-l-1/versions/latest")
    with pytest.raises(exceptions.Forbidden):  # 403 PERMISSION_DENIED
        client.get_secret(name="projects/someone-else/secrets/x")
