"""The sandbox's Cloud Storage where gcp-storage-emulator is kinder than Google
(:mod:`prefect_remote.sandbox.gcp.storage_rules`), through google-cloud-storage: an update that
lowers customTime is refused 400, alone or in a batch; a batch reads objects' metadata; lifecycle rules run when the test moves the
clock, by ``age`` or ``daysSinceCustomTime``, and a condition the sandbox does not model is refused."""

from __future__ import annotations

import datetime
import secrets

import pytest


@pytest.fixture
def bucket(gcp_env):
    from google.cloud import storage

    client = storage.Client(project=gcp_env.project)
    return client.create_bucket(f"pr-rules-{secrets.token_hex(6)}")


def _now(offset_days: float = 0.0) -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=offset_days)


def test_custom_time_is_never_lowered(bucket):
    from google.api_core.exceptions import BadRequest

    blob = bucket.blob("machines/a.json")
    blob.custom_time = _now()
    blob.upload_from_string("{}")
    blob.custom_time = _now(-1)
    with pytest.raises(BadRequest, match="Custom time cannot be decreased"):
        blob.patch()
    later = _now(1)
    blob.custom_time = later
    blob.patch()  # raising it is fine
    blob.reload()
    assert blob.custom_time == later

    blob.custom_time = _now(-2)  # the same in a JSON batch: that part alone is refused
    other = bucket.blob("machines/b.json")
    other.upload_from_string("{}")
    other.metadata = {"reason": "ended"}
    with pytest.raises(BadRequest):
        with bucket.client.batch():
            blob.patch()
            other.patch()
    assert bucket.get_blob("machines/b.json").metadata == {"reason": "ended"}
    assert bucket.get_blob("machines/a.json").custom_time == later


def test_a_batch_reads_objects_metadata(bucket):
    from google.api_core.exceptions import NotFound

    kept = bucket.blob("machines/c.json")
    kept.metadata = {"launch": "launch-1"}
    kept.upload_from_string("{}")
    read, missing = bucket.blob("machines/c.json"), bucket.blob("machines/none.json")
    with bucket.client.batch(raise_exception=False) as batch:
        read.reload()
        missing.reload()
    assert [response.status_code for response in batch._responses] == [200, 404]
    assert read.metadata == {"launch": "launch-1"} and read.size == 2
    with pytest.raises(NotFound):
        with bucket.client.batch():
            missing.reload()


def test_lifecycle_rules_run_on_the_tests_clock(gcp_env, bucket):
    bucket.lifecycle_rules = [
        {"action": {"type": "Delete"}, "condition": {"daysSinceCustomTime": 7, "matchesPrefix": ["leases/"]}},
        {"action": {"type": "Delete"}, "condition": {"age": 3, "matchesPrefix": ["scratch/"]}},
    ]
    bucket.patch()
    for name in ("leases/live", "leases/dead", "scratch/x", "kept/y"):
        blob = bucket.blob(name)
        blob.custom_time = _now()
        blob.upload_from_string("x")
    assert gcp_env.advance_lifecycle(2, bucket=bucket.name) == []
    assert gcp_env.advance_lifecycle(1, bucket=bucket.name) == [f"{bucket.name}/scratch/x"]  # age 3
    for _ in range(5):
        gcp_env.advance_lifecycle(1, bucket=bucket.name)
        live = bucket.get_blob("leases/live")
        live.custom_time = _now()  # renewed daily
        live.patch()
    assert sorted(blob.name for blob in bucket.list_blobs()) == ["kept/y", "leases/live"]  # dead: 7 days since customTime

    bucket.lifecycle_rules = [{"action": {"type": "Delete"}, "condition": {"numNewerVersions": 2}}]
    bucket.patch()
    with pytest.raises(NotImplementedError, match="numNewerVersions"):
        gcp_env.advance_lifecycle(1, bucket=bucket.name)
