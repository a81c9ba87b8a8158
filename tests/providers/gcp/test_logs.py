"""Machine logs on gcp: the Cloud Logging sender (through the shared LogShipper) against the sandbox's
Cloud Logging, read back with read_logs and its cursor, as `machines logs --follow` reads them, and
a log's tail. Google's client (google-cloud-logging, as the launcher runs it) adds "the last 24
hours" to a filter that names no time: the reads here go through it, so a read from a machine's
start that does not name its creation misses what it logged more than a day ago."""

from __future__ import annotations

import time

import pytest
from google.auth.transport.requests import AuthorizedSession

from prefect_remote.machine.logship import LogShipper
from prefect_remote.providers.gcp.logs import MACHINE_LABEL, CloudLoggingSender, insert_id, log_reader, read_logs, ship_log
from tests.conftest import wait_for


@pytest.fixture
def session(gcp_env):
    """A machine's session: a token of the machines' service account, as its metadata server gives it."""
    from google.oauth2.credentials import Credentials

    token = gcp_env.api.issue_token(f"serviceAccount:{gcp_env.machine_account}")["access_token"]
    return AuthorizedSession(Credentials(token=token))


def read_all(clients, machine_id: str, cursor: str | None = None) -> tuple[str, str | None]:
    text = ""
    while True:
        chunk = read_logs(clients, "prefect-remote", machine_id, cursor)
        if not chunk.text:
            return text, cursor
        text, cursor = text + chunk.text, chunk.cursor


def test_a_file_written_in_steps_arrives_in_order(tmp_path, gcp_env, clients, session):
    machine_id = f"vm-{time.time_ns() % 10**12:012d}"
    log = tmp_path / "machine.log"
    log.write_text("[boot] phase 1\n[boot] phase 2\n")
    shipper = ship_log(str(log), clients.project, "prefect-remote", machine_id, api_endpoint=gcp_env.url, session=session, interval=0.05)
    try:
        first = wait_for(
            lambda: (chunk := read_logs(clients, "prefect-remote", machine_id)).text == "[boot] phase 1\n[boot] phase 2\n" and chunk,
            message="the boot lines",
        )
        with log.open("a") as file:
            file.write("agent: started\n\n")
            file.flush()
            second = wait_for(
                lambda: (chunk := read_logs(clients, "prefect-remote", machine_id, first.cursor)).text and chunk, message="more lines"
            )
            assert second.text == "agent: started\n\n"  # a blank line stays one
            file.write("payload: höla\nthe last line, without its newline")
    finally:
        assert shipper.close()
    assert read_logs(clients, "prefect-remote", machine_id, second.cursor).text == "payload: höla\nthe last line, without its newline\n"
    assert read_all(clients, machine_id)[0] == log.read_text() + "\n"
    entries = [e for e in gcp_env.logging.entries() if e.get("labels", {}).get(MACHINE_LABEL) == machine_id]
    assert [e["insertId"] for e in entries] == [insert_id(machine_id, n) for n in range(6)]
    assert entries[0]["logName"] == f"projects/{clients.project}/logs/prefect-remote" and entries[0]["resource"]["type"] == "global"
    assert read_logs(clients, "prefect-remote", "vm-000000000000").text == ""  # another machine's: none


def test_a_burst_is_split_into_valid_calls_and_read_back_whole(tmp_path, gcp_env, clients, session):
    """More lines than one read gives (1,000) with one timestamp (they were read at once), lines
    longer than an entry holds, and non-ASCII text that JSON escapes to six times its size."""
    machine_id = f"run-{time.time_ns() % 10**12:012d}"
    lines = [f"burst line {i:05d} " + "x" * (50 + i % 50) for i in range(3000)]
    lines[100] = "y" * 100_000  # more than one entry holds
    lines[200] = "é" * 30_000  # 60 KB as UTF-8, 180 KB as JSON
    log = tmp_path / "machine.log"
    log.write_text("\n".join(lines) + "\n")
    writes = gcp_env.calls["logging.entries.write"]
    sender = CloudLoggingSender(clients.project, "prefect-remote", machine_id, api_endpoint=gcp_env.url, session=session)
    shipper = LogShipper(str(log), sender, interval=0.05, clock=lambda: 1_800_000_000.0).start()
    assert shipper.close(timeout=20)
    assert gcp_env.calls["logging.entries.write"] - writes >= 3  # 1,000 entries a call at most
    text, _ = read_all(clients, machine_id)
    pieces = text.splitlines()
    assert pieces[:100] == lines[:100] and "".join(pieces[100:103]) == lines[100]  # cut in three
    assert "".join(pieces[202:204]) == lines[200] and pieces[-1] == lines[-1]
    assert len(pieces) == len(lines) + 3


def test_failures_are_retried_without_duplicates(tmp_path, gcp_env, clients, session):
    """While Cloud Logging cannot be reached, attempts back off and the failure is reported once;
    shipping resumes when it can (the same events again, with the same insertIds)."""
    machine_id = f"vm-{time.time_ns() % 10**12:012d}"
    reports: list[str] = []
    log = tmp_path / "machine.log"
    log.write_text("written while Cloud Logging was unreachable\n")
    sender = CloudLoggingSender(
        clients.project, "prefect-remote", machine_id, api_endpoint="http://127.0.0.1:9", session=session, timeout=(0.5, 0.5)
    )
    shipper = LogShipper(str(log), sender, interval=0.01, report=reports.append).start()
    try:
        wait_for(lambda: shipper._failures >= 3, message="several failed attempts")
        assert len(reports) == 1 and "cannot ship this machine's log to Cloud Logging" in reports[0]
        sender.url = f"{gcp_env.url}/v2/entries:write"  # the network is back
        wait_for(lambda: read_logs(clients, "prefect-remote", machine_id).text, message="the held line")
        assert len(reports) == 2 and "again" in reports[1]
    finally:
        assert shipper.close()
    assert read_all(clients, machine_id)[0] == "written while Cloud Logging was unreachable\n"


def test_reads_stay_within_the_read_quota_and_wait_out_a_429(gcp_env, clients, session, monkeypatch):
    """Followers of many machines share one reader: their reads cost one entries.list per turn, and a
    quota spent by someone else (another process of the project) is waited out with backoff."""
    import threading

    from prefect_remote.providers.gcp.logs import log_reader

    machine_ids = [f"vm-{time.time_ns() % 10**12 + n:012d}" for n in range(8)]
    for machine_id in machine_ids:
        CloudLoggingSender(clients.project, "prefect-remote", machine_id, api_endpoint=gcp_env.url, session=session).send(
            [{"timestamp": time.time() * 1000, "message": f"hello from {machine_id}"}], 0
        )
    monkeypatch.setattr(gcp_env.logging, "read_quota", 3)
    monkeypatch.setattr(gcp_env.logging, "quota_window", 4.0)
    gcp_env.logging.reset_reads()
    reader = log_reader(clients, "prefect-remote")
    before, calls = reader.requests, gcp_env.calls["logging.entries.list"]
    texts: dict[str, str] = {}
    threads = [threading.Thread(target=lambda m=m: texts.update({m: read_logs(clients, "prefect-remote", m).text})) for m in machine_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert texts == {m: f"hello from {m}\n" for m in machine_ids}
    assert reader.requests - before <= 3  # 8 followers: their first reads, batched
    gcp_env.logging.reset_reads()
    for _ in range(3):  # another process spends the quota
        list(clients.logging().list_entries(filter_='logName="projects/sandbox-project/logs/none"', max_results=1))
    started = time.monotonic()
    assert read_logs(clients, "prefect-remote", machine_ids[0]).text == f"hello from {machine_ids[0]}\n"  # after a 429, retried
    assert time.monotonic() - started >= 1.5 and gcp_env.calls["logging.entries.list"] - calls > reader.requests - before + 3


def test_a_read_from_the_start_and_the_tail_reach_entries_older_than_a_day(gcp_env, clients, session):
    machine_id = f"vm-{time.time_ns() % 10**12:012d}"
    created = time.time() - 3 * 86400  # a machine three days old
    sender = CloudLoggingSender(clients.project, "prefect-remote", machine_id, api_endpoint=gcp_env.url, session=session)
    sender.send([{"timestamp": (created + 60 + n) * 1000, "message": f"line {n}"} for n in range(30)], 0)
    assert read_logs(clients, "prefect-remote", machine_id).text == ""  # the client's default: the last 24 hours
    chunk = read_logs(clients, "prefect-remote", machine_id, since=created)
    assert chunk.text == "".join(f"line {n}\n" for n in range(30))
    assert read_logs(clients, "prefect-remote", machine_id, chunk.cursor).text == ""  # a cursor names its time
    assert log_reader(clients, "prefect-remote").tail(machine_id, 20, since=created) == "".join(f"line {n}\n" for n in range(10, 30))


@pytest.mark.parametrize("machine_id", ['vm-0123456789ab" OR logName:"', "vm-0123456789ab OR x", "run-zz", "vm-0123456789abc"])
def test_an_id_prefect_remote_never_made_is_refused_before_it_enters_a_logging_filter(machine_id):
    """A flow run's machine id comes from its infrastructure_pid, which anyone with the API can set:
    only ids as launches make them (run-/vm- and 12 hex digits) reach a Cloud Logging filter."""
    from prefect_remote.errors import MachineNotFound
    from prefect_remote.providers.gcp import GCPProvider

    provider = GCPProvider(project="unit-project", region="us-central1", service_account="runner@unit-project.iam.gserviceaccount.com")
    for read in (provider.logs, provider.log_tail):
        with pytest.raises(MachineNotFound, match="12 hex digits"):
            read(machine_id)
