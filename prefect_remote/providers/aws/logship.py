"""Ships an EC2 machine's log file to CloudWatch Logs: one stream per instance, as the machine runs.

The tailing, batching, pacing and backoff are :mod:`prefect_remote.machine.logship`'s; here is
what is CloudWatch's: its limits, ``put_log_events`` with its sequence tokens, and the stream (and
group) made when missing. Standard library only at import (the agent imports it on every instance
boot); boto3 is imported by the shipping thread.

>>> batch_events([(1000, "booting"), (1000, ""), (1001, "x" * 300_000)])[0][:2]
[{'timestamp': 1000, 'message': 'booting'}, {'timestamp': 1000, 'message': '\\n'}]
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prefect_remote.machine import logship

# CloudWatch Logs' PutLogEvents limits: a batch's size is its messages' UTF-8 bytes plus 26 per event.
EVENT_OVERHEAD = 26
MAX_BATCH_EVENTS = 10_000
MAX_BATCH_BYTES = 1_048_576
MAX_EVENT_BYTES = 256 * 1024  # one event, its overhead included
MAX_BATCH_SPAN_MS = 24 * 3600 * 1000  # a batch's events may not span more than 24 hours


def event_messages(line: str, limit: int = MAX_EVENT_BYTES - EVENT_OVERHEAD) -> list[str]:
    """:func:`prefect_remote.machine.logship.event_messages` at CloudWatch's event limit.

    >>> event_messages("")
    ['\\n']
    """
    return logship.event_messages(line, limit)


def batch_events(
    events: Iterable[tuple[int, str]],
    *,
    max_events: int = MAX_BATCH_EVENTS,
    max_bytes: int = MAX_BATCH_BYTES,
    max_event_bytes: int = MAX_EVENT_BYTES,
    max_span_ms: int = MAX_BATCH_SPAN_MS,
) -> list[list[dict[str, Any]]]:
    """``(timestamp ms, message)`` pairs as valid ``put_log_events`` calls' ``logEvents`` (see
    :func:`prefect_remote.machine.logship.batch_events`), at CloudWatch's limits by default.

    >>> [len(batch) for batch in batch_events([(0, "a")] * 5, max_events=2)]
    [2, 2, 1]
    """
    return logship.batch_events(
        events,
        max_events=max_events,
        max_bytes=max_bytes,
        max_event_bytes=max_event_bytes,
        max_span_ms=max_span_ms,
        overhead=EVENT_OVERHEAD,
    )


def _default_client(region: str | None) -> Any:
    """A CloudWatch Logs client with short timeouts: a machine's log must not hold up its end."""
    from botocore.config import Config

    from prefect_remote.providers.aws.runtime import machine_session

    config = Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 2, "mode": "standard"})
    return machine_session().client("logs", region_name=region, config=config)


class CloudWatchSender(logship.LogSender):
    """Sends to CloudWatch Logs stream ``stream`` of ``group``, creating the stream if missing, and
    the group too when ``create_group`` (and the machine may). ``client`` (a boto3 ``logs`` client)
    defaults to one made in the shipping thread for ``region``."""

    max_batch_events = MAX_BATCH_EVENTS
    max_batch_bytes = MAX_BATCH_BYTES
    max_event_bytes = MAX_EVENT_BYTES
    event_overhead = EVENT_OVERHEAD
    max_span_ms = MAX_BATCH_SPAN_MS
    missing_library = "boto3 is not installed in the agent's environment: this machine's log is not shipped to CloudWatch Logs"

    def __init__(self, group: str, stream: str, *, region: str | None = None, client: Any = None, create_group: bool = True) -> None:
        self.group, self.stream, self.region, self.client, self.create_group = group, stream, region, client, create_group
        self.destination = f"CloudWatch Logs {group}/{stream}"
        self._stream_ready = False
        self._sequence_token: str | None = None  # only services that still check them need them

    def send(self, events: list[dict[str, Any]], first: int) -> None:
        if self.client is None:
            self.client = _default_client(self.region)
        if not self._stream_ready:
            self._ensure_stream()
        for attempt in range(3):
            params: dict[str, Any] = {"logGroupName": self.group, "logStreamName": self.stream, "logEvents": events}
            if self._sequence_token:
                params["sequenceToken"] = self._sequence_token
            try:
                response = self.client.put_log_events(**params)
            except Exception as error:
                code = _error_code(error)
                expected = getattr(error, "response", {}).get("expectedSequenceToken")
                if code == "DataAlreadyAcceptedException":  # a retried call that had gone through
                    self._sequence_token = expected
                    return
                if code == "InvalidSequenceTokenException" and attempt < 2:
                    self._sequence_token = expected
                    continue
                if code == "ResourceNotFoundException" and attempt < 2:  # the stream (or group) was deleted
                    self._stream_ready = False
                    self._ensure_stream()
                    continue
                raise
            self._sequence_token = response.get("nextSequenceToken") or None
            return

    def _ensure_stream(self) -> None:
        try:
            self._create("create_log_stream", logGroupName=self.group, logStreamName=self.stream)
        except Exception as error:
            if _error_code(error) != "ResourceNotFoundException" or not self.create_group:
                raise
            self._create("create_log_group", logGroupName=self.group)
            self._create("create_log_stream", logGroupName=self.group, logStreamName=self.stream)
        self._stream_ready = True

    def _create(self, operation: str, **params: str) -> None:
        try:
            getattr(self.client, operation)(**params)
        except Exception as error:
            if _error_code(error) != "ResourceAlreadyExistsException":
                raise


class LogShipper(logship.LogShipper):
    """Tails the file at ``path`` from its start into CloudWatch Logs stream ``stream`` of ``group``
    (:class:`CloudWatchSender`; the shipping itself: :class:`prefect_remote.machine.logship.LogShipper`).

    Example::

        with LogShipper("/var/log/prefect-remote.log", "/prefect-remote/machines", "i-0123456789abcdef0"):
            run_the_payload()
    """

    def __init__(
        self,
        path: str,
        group: str,
        stream: str,
        *,
        region: str | None = None,
        client: Any = None,
        create_group: bool = True,
        **options: Any,
    ) -> None:
        """``options``: the shipper's (``interval``, ``partial_wait``, ``close_timeout``, ``clock``, ``report``)."""
        super().__init__(path, CloudWatchSender(group, stream, region=region, client=client, create_group=create_group), **options)
        self.group, self.stream, self.region = group, stream, region

    @property
    def _client(self) -> Any:  # the sender's boto3 client (tests swap it to simulate the network coming back)
        return self.sender.client

    @_client.setter
    def _client(self, client: Any) -> None:
        self.sender.client = client


def _error_code(error: Exception) -> str:
    return str(getattr(error, "response", {}).get("Error", {}).get("Code", ""))
