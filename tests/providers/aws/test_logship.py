"""Machine-log shipping to CloudWatch Logs: the batching rules alone, then LogShipper (and the agent
through EC2Runtime.ship_log) against the session's moto server with the real boto3, read back with
AWSProvider.logs and its cursor."""

from __future__ import annotations

import secrets
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from prefect_remote.errors import MachineNotFound
from prefect_remote.machine.agent import Agent
from prefect_remote.machine.boot import MACHINE_LOG_ENV
from prefect_remote.machine.runtime import MachineRuntime
from prefect_remote.providers.aws.logship import (
    EVENT_OVERHEAD,
    MAX_BATCH_BYTES,
    MAX_BATCH_EVENTS,
    MAX_EVENT_BYTES,
    LogShipper,
    batch_events,
    event_messages,
)
from prefect_remote.providers.aws.provider import AWSProvider
from prefect_remote.providers.aws.runtime import EC2Runtime
from prefect_remote.providers.base import LogChunk
from tests.conftest import wait_for


def size(batch: list[dict]) -> int:
    return sum(len(event["message"].encode()) + EVENT_OVERHEAD for event in batch)


# -- batching: a pure function, no server -----------------------------------------------------------
def test_batches_respect_cloudwatch_limits():
    events = [(1000 + i // 7, f"line {i}") for i in range(25_000)]
    events += [(5000, "é" * 200_000), (5000, ""), (999, "x" * 20_000)]  # 400 KB in UTF-8; blank; an earlier one
    batches = batch_events(events)
    flat = [event for batch in batches for event in batch]
    assert all(len(batch) <= MAX_BATCH_EVENTS and size(batch) <= MAX_BATCH_BYTES for batch in batches)
    assert all(len(event["message"].encode()) + EVENT_OVERHEAD <= MAX_EVENT_BYTES and event["message"] for event in flat)
    assert [event["timestamp"] for event in flat] == sorted(event["timestamp"] for event in flat)
    assert flat[0]["message"] == "x" * 20_000
    assert [e["message"] for e in flat[1:25_001]] == [f"line {i}" for i in range(25_000)]  # stable: same-ms order kept
    long = [e["message"] for e in flat if e["message"].startswith("é")]
    assert len(long) == 2 and "".join(long) == "é" * 200_000  # cut between characters, never inside one
    assert flat[-1] == {"timestamp": 5000, "message": "\n"}  # CloudWatch refuses empty messages
    # each limit on its own
    assert [len(b) for b in batch_events([(0, "a")] * 5, max_events=2)] == [2, 2, 1]
    assert [len(b) for b in batch_events([(0, "a" * 74)] * 5, max_bytes=200)] == [2, 2, 1]  # 100 bytes each
    assert [len(b) for b in batch_events([(0, "a"), (10, "b"), (11, "c"), (21, "d"), (32, "e")], max_span_ms=10)] == [2, 2, 1]
    assert batch_events([]) == []
    assert event_messages("abc", limit=1) == ["a", "b", "c"]


# -- LogShipper against moto ------------------------------------------------------------------------
@pytest.fixture
def group(aws_env, monkeypatch) -> str:
    """The machines' log group (provisioning makes it), shipped to and read as a machine: with its
    instance profile's credentials, whose policy is machine_policy()."""
    for name, value in aws_env.keys("machine").items():
        monkeypatch.setenv(name, value)
    return "/prefect-remote/machines"


@pytest.fixture
def stream() -> str:
    return f"i-{secrets.token_hex(8)}0"  # an instance id's shape, as the provider reads it


@pytest.fixture
def reader(group) -> AWSProvider:
    return AWSProvider(log_group=group)


def logs(reader: AWSProvider, stream: str, cursor: str | None = None) -> LogChunk:
    """``reader.logs``, for a stream of no real instance: nothing until the shipper created it."""
    try:
        return reader.logs(stream, cursor=cursor)
    except MachineNotFound:  # no stream yet, and no such instance
        return LogChunk("", cursor or "")


def read_all(reader: AWSProvider, stream: str, cursor: str | None = None) -> tuple[str, str | None]:
    """Everything after ``cursor``, page by page (a page holds at most 10,000 events)."""
    text = ""
    while True:
        chunk = logs(reader, stream, cursor=cursor)
        if not chunk.text:
            return text, cursor
        text, cursor = text + chunk.text, chunk.cursor


def test_a_file_written_in_steps_arrives_in_order(tmp_path, group, stream, reader):
    log = tmp_path / "machine.log"
    log.write_text("[boot] phase 1\n[boot] phase 2\n")
    with LogShipper(str(log), group, stream, interval=0.05) as shipper:
        first = wait_for(
            lambda: (chunk := logs(reader, stream)).text == "[boot] phase 1\n[boot] phase 2\n" and chunk, message="the boot lines"
        )
        with log.open("a") as file:
            file.write("agent: started\n\n")
            file.flush()
            second = wait_for(lambda: (chunk := reader.logs(stream, cursor=first.cursor)).text and chunk, message="more lines")
            assert second.text == "agent: started\n\n"  # a blank line stays one
            file.write("payload: höla\npayload: done\n")
        third = wait_for(lambda: (chunk := reader.logs(stream, cursor=second.cursor)).text.count("\n") == 2 and chunk, message="the rest")
        assert third.text == "payload: höla\npayload: done\n"
    assert shipper.shipped == 6
    assert read_all(reader, stream)[0] == log.read_text()


def test_close_ships_the_tail_even_a_late_one(tmp_path, group, stream, reader):
    log = tmp_path / "machine.log"
    log.write_text("")
    shipper = LogShipper(str(log), group, stream, interval=60).start()  # no regular flush during this test
    with log.open("a") as file:
        file.write("agent: machine ending: payload finished\n")
        file.flush()

        def tee_catching_up() -> None:  # the boot script's tee writes the agent's last line a moment later
            time.sleep(0.05)
            file.write("the last line, without its newline")
            file.flush()

        writer = threading.Thread(target=tee_catching_up)
        writer.start()
        assert shipper.close(timeout=5)  # within 5 s, not the 60 s interval
        writer.join()
    assert read_all(reader, stream)[0] == "agent: machine ending: payload finished\nthe last line, without its newline\n"
    assert shipper.close()  # idempotent


def test_a_burst_is_split_into_valid_calls(tmp_path, group, stream, reader):
    client = boto3.session.Session().client("logs")
    calls: list[list[dict]] = []
    client.meta.events.register(
        "before-parameter-build.cloudwatch-logs.PutLogEvents", lambda params, **_: calls.append(params["logEvents"])
    )
    lines = [f"burst line {i:05d} " + "x" * (150 + i % 50) for i in range(25_000)]  # 5 MB: more than one read-ahead
    lines[100] = "y" * 300_000  # above the 256 KiB an event may hold
    log = tmp_path / "machine.log"
    log.write_text("\n".join(lines) + "\n")
    shipper = LogShipper(str(log), group, stream, client=client, interval=0.05).start()
    assert shipper.close(timeout=10)
    assert len(calls) >= 3
    for batch in calls:
        assert 0 < len(batch) <= MAX_BATCH_EVENTS and size(batch) <= MAX_BATCH_BYTES
        assert all(len(e["message"].encode()) + EVENT_OVERHEAD <= MAX_EVENT_BYTES for e in batch)
        assert [e["timestamp"] for e in batch] == sorted(e["timestamp"] for e in batch)
    text, _ = read_all(reader, stream)
    pieces = text.splitlines()
    assert len(pieces) == 25_001 and pieces[100] + pieces[101] == lines[100]  # the long line, in two events
    assert pieces[:100] == lines[:100] and pieces[102:] == lines[101:]


def test_an_unreachable_endpoint_does_not_hold_close(tmp_path, aws_env):
    blackhole = socket.socket()  # accepts connections (the backlog) and never answers
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(16)
    try:
        client = boto3.session.Session().client(
            "logs",
            endpoint_url=f"http://127.0.0.1:{blackhole.getsockname()[1]}",
            config=Config(read_timeout=60, retries={"max_attempts": 1}),
        )
        log = tmp_path / "machine.log"
        log.write_text("a line nobody will read\n")
        shipper = LogShipper(
            str(log), "/prefect-remote/machines", "i-0123456789abcdef0", client=client, interval=0.05, report=lambda _: None
        ).start()
        time.sleep(0.2)  # the shipper is now stuck in a call
        started = time.monotonic()
        assert shipper.close(timeout=1.0) is False
        assert time.monotonic() - started < 1.5
    finally:
        blackhole.close()


def test_failures_are_reported_once_per_streak_and_shipping_resumes(tmp_path, group, stream, reader):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: connections are refused
    refused = boto3.session.Session().client("logs", endpoint_url=f"http://127.0.0.1:{port}", config=Config(retries={"max_attempts": 1}))
    reports: list[str] = []
    log = tmp_path / "machine.log"
    log.write_text("written while CloudWatch was unreachable\n")
    shipper = LogShipper(str(log), group, stream, client=refused, interval=0.01, report=reports.append).start()
    try:
        wait_for(lambda: shipper._failures >= 4, message="several failed attempts")
        assert len(reports) == 1 and "cannot ship this machine's log" in reports[0] and "retrying" in reports[0]
        shipper._client = boto3.session.Session().client("logs")  # the network is back
        wait_for(lambda: logs(reader, stream).text, message="the held lines")
        wait_for(lambda: len(reports) == 2, timeout=10, message="the resumption said")  # (said after the lines went)
        assert "again" in reports[1]
    finally:
        assert shipper.close()
    assert read_all(reader, stream)[0] == "written while CloudWatch was unreachable\n"


# -- the agent ships the machine log through EC2Runtime ---------------------------------------------
class Instance(EC2Runtime):
    """An EC2 instance's runtime without the instance: a fixed id, a fresh lease, a secret, and an end
    that is recorded. Its ``ship_log`` is EC2Runtime's, with boto3 pointed at moto."""

    def __init__(self, instance_id: str, log_group: str, log: Path, secret: str) -> None:
        super().__init__(region="us-east-1", secrets_parameter="/prefect-remote/launch-test", log_group=log_group)
        self._machine_id, self.log, self.secret, self.ended = instance_id, log, secret, None

    def lease_age(self) -> float:
        return 0.0

    def read_secrets(self) -> dict[str, str]:
        return {"TOKEN": self.secret}

    def log_sink(self):
        return self.log.open("ab")  # as the boot script's tee appends the agent's output

    def terminate(self, reason: str, exit_code: int | None) -> None:
        """Records the end, and what CloudWatch held then: a real instance may be gone a moment later."""
        events = (
            boto3.session.Session()
            .client("logs")
            .get_log_events(logGroupName=self.log_group, logStreamName=self.machine_id, startFromHead=True)
        )
        self.ended = (reason, exit_code, "".join(event["message"] + "\n" for event in events["events"]))


def test_the_agent_ships_the_whole_machine_log_and_nothing_else(tmp_path, monkeypatch, group, stream, reader):
    secret = secrets.token_hex(16)
    log = tmp_path / "machine.log"
    log.write_text("[boot] booting machine\n[boot] agent: starting\n")
    monkeypatch.setenv(MACHINE_LOG_ENV, str(log))
    monkeypatch.setenv("SOME_CREDENTIAL", secret)  # in the agent's own environment too
    monkeypatch.chdir(tmp_path)
    (tmp_path / "secrets.json").write_text(secret)  # beside the log
    runtime = Instance(stream, group, log, secret)
    payload = "import os; print('payload: token of', len(os.environ['TOKEN']), 'characters'); print('payload: done')"
    config = {
        "command": [sys.executable, "-c", payload],
        "env": {},
        "secret_names": ["TOKEN"],
        "activity": "auto",
        "software": None,
        "timeout": 60,
        "idle_timeout": None,
        "keepalive": None,
        "lease_interval": 30.0,
    }
    handlers = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        assert Agent(config, runtime).run() == 0
    finally:  # the agent takes SIGTERM and SIGINT: give them back to pytest
        for number, handler in handlers.items():
            signal.signal(number, handler)
    reason, code, shipped_before_terminate = runtime.ended
    assert (reason, code) == ("payload finished", 0)
    text, _ = read_all(reader, stream)
    assert text == log.read_text() == shipped_before_terminate  # exactly the file, all of it before the end
    assert text.startswith("[boot] booting machine\n") and "payload: token of 32 characters\npayload: done\n" in text
    assert "machine ending: payload finished" in text.splitlines()[-1]
    assert secret not in text
    events = boto3.session.Session().client("logs").get_log_events(logGroupName=group, logStreamName=stream, startFromHead=True)["events"]
    assert events and all(secret not in event["message"] for event in events)


def test_runtimes_ship_nothing_by_default(tmp_path):
    class Local(MachineRuntime):
        machine_id = "m-local"

        def lease_age(self) -> float:
            return 0.0

        def read_secrets(self) -> dict[str, str]:
            return {}

        def terminate(self, reason, exit_code) -> None:
            pass

    Local().ship_log(str(tmp_path / "machine.log")).close()  # no file needed, nothing shipped
