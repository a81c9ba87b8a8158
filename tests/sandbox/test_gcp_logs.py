"""The sandbox's Cloud Logging, driven by google-cloud-logging over HTTP (``_use_grpc=False``)."""

from __future__ import annotations

import datetime

import pytest
from google.api_core import exceptions
from google.cloud.logging import ASCENDING, DESCENDING


@pytest.mark.no_iam  # the launcher writes here, which only machines may (test_gcp_iam.py checks who may)
def test_write_list_filter_order_and_pages(google, gcp_sandbox):
    client = google.logging()
    logger = client.logger("prefect-remote-logs-test")
    start = datetime.datetime.now(datetime.UTC)
    for n in range(5):
        stamp = start + datetime.timedelta(seconds=n)
        logger.log_text(f"line {n}", labels={"prefect-remote-machine": "run-a" if n % 2 == 0 else "run-b"}, timestamp=stamp)
    logger.log_struct({"event": "done"}, labels={"prefect-remote-machine": "run-a"}, timestamp=start + datetime.timedelta(seconds=9))

    log = f'logName="projects/{google.project}/logs/prefect-remote-logs-test"'
    mine = f'{log} AND labels."prefect-remote-machine"="run-a"'
    entries = list(client.list_entries(filter_=mine, order_by=ASCENDING))
    assert [e.payload for e in entries] == ["line 0", "line 2", "line 4", {"event": "done"}]
    assert all(e.insert_id and e.labels["prefect-remote-machine"] == "run-a" for e in entries)
    assert entries[0].resource.type == "global"

    since = (start + datetime.timedelta(seconds=2)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert [e.payload for e in client.list_entries(filter_=f'{mine} AND timestamp>"{since}"')] == ["line 4", {"event": "done"}]
    assert [e.payload for e in client.list_entries(filter_=f'{mine} AND timestamp>="{since}"')] == ["line 2", "line 4", {"event": "done"}]
    assert [e.payload for e in client.list_entries(filter_=mine, order_by=DESCENDING, max_results=2)] == [{"event": "done"}, "line 4"]

    before = gcp_sandbox.calls["logging.entries.list"]
    everything = [
        e.payload for e in client.list_entries(filter_=f'{log} labels."prefect-remote-machine":*', page_size=2)
    ]  # (not the client's own diagnostic entry)
    assert everything == ["line 0", "line 1", "line 2", "line 3", "line 4", {"event": "done"}]
    assert gcp_sandbox.calls["logging.entries.list"] - before == 3  # three pages of two, followed by their tokens


@pytest.mark.no_iam  # the launcher writes here, which only machines may (test_gcp_iam.py checks who may)
def test_write_refuses_what_cloud_logging_refuses(google):
    client = google.logging()
    with pytest.raises(exceptions.BadRequest, match="256.0K"):
        client.logger("prefect-remote-logs-test").log_text("x" * 300_000)
    with pytest.raises(exceptions.BadRequest, match="filter"):
        list(client.list_entries(filter_='logName="x" AND ('))


@pytest.mark.no_iam  # the launcher writes here, which only machines may (test_gcp_iam.py checks who may)
def test_entries_of_one_timestamp_list_by_insert_id(google):
    client = google.logging()
    logger = client.logger("prefect-remote-logs-ties")
    stamp = datetime.datetime.now(datetime.UTC)
    for insert_id in ("m-2", "m-1", "m-3"):
        logger.log_text(insert_id, timestamp=stamp, insert_id=insert_id)
    log = f'logName="projects/{google.project}/logs/prefect-remote-logs-ties" AND textPayload:"m-"'
    assert [e.payload for e in client.list_entries(filter_=log)] == ["m-1", "m-2", "m-3"]


@pytest.fixture
def read_quota(gcp_sandbox, monkeypatch):
    """The sandbox's Cloud Logging read quota, whole for this test."""
    monkeypatch.setattr(gcp_sandbox.logging, "read_quota", 60)
    gcp_sandbox.logging.reset_reads()
    yield gcp_sandbox.logging
    gcp_sandbox.logging.reset_reads()


def test_entries_list_takes_60_requests_a_minute_per_project(google, read_quota, monkeypatch):
    client = google.logging()
    for _ in range(60):
        list(client.list_entries(filter_='logName="projects/sandbox-project/logs/none"', max_results=1))
    with pytest.raises(exceptions.TooManyRequests) as refused:  # ResourceExhausted, as google-cloud-logging raises a 429
        list(client.list_entries(filter_='logName="projects/sandbox-project/logs/none"', max_results=1))
    assert refused.value.code == 429 and "Read requests per minute" in refused.value.message
    monkeypatch.setattr(read_quota, "read_quota", None)  # a test that needs it off
    list(client.list_entries(filter_='logName="projects/sandbox-project/logs/none"', max_results=1))
