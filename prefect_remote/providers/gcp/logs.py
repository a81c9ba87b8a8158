"""gcp machines' logs in Cloud Logging: the machine side ships its log file there
(:func:`ship_log`), the launcher reads it back (:func:`read_logs`).

Every entry of a machine is in log ``projects/P/logs/<log_name>`` with the label
``prefect-remote-machine=<machine id>``, as a ``textPayload`` line stamped with when it was read, and
an ``insertId`` of the machine id and the line's number (a batch sent again after a lost answer is
not logged twice, and entries of the same instant sort in the order they were written).

Standard library only at import (the agent imports it on every boot).

>>> insert_id("vm-0123456789ab", 7)
'vm-0123456789ab-0000000007'
"""

from __future__ import annotations

import datetime
import json
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prefect_remote.machine.logship import LogSender, LogShipper
from prefect_remote.providers.base import LogChunk

if TYPE_CHECKING:
    from prefect_remote.providers.gcp.clients import GoogleClients

MACHINE_LABEL = "prefect-remote-machine"
DEFAULT_ENDPOINT = "https://logging.googleapis.com"
PAGE = 1000  # entries per read: the most entries:list gives at once
# Cloud Logging's entries.list quota is 60 requests a minute per project, for every process at once:
# each process reads at most a third of it (the worker, a `machines logs --follow`, a cluster's client).
READS_PER_MINUTE = 20
MAX_FILTER = 20000  # characters in a Cloud Logging filter
QUOTA_RETRY_SECONDS = 180.0  # how long a read retries a 429 before it fails
# Cloud Logging counts an entry's JSON, and JSON may escape one UTF-8 byte as six characters (\u0001):
# pieces of 40 KiB stay under its 256 KiB per entry, batches of 1 MiB under its 10 MB per call.
EVENT_OVERHEAD = 1024  # the entry's timestamp, insertId, and the log name, resource and labels it inherits
MAX_EVENT_BYTES = 40 * 1024 + EVENT_OVERHEAD
MAX_BATCH_BYTES = 1024 * 1024


def insert_id(machine_id: str, number: int) -> str:
    """The ``insertId`` of a machine's ``number``-th event (zero-padded: ids sort as events do)."""
    return f"{machine_id}-{number:010d}"


def _rfc3339(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class CloudLoggingSender(LogSender):
    """Sends a machine's events to Cloud Logging with ``entries.write`` (resource ``global``), with
    the machine's credentials (its service account needs roles/logging.logWriter). ``api_endpoint``
    is Cloud Logging's base URL (a sandbox's); ``session`` an authorized ``requests`` session to use
    instead of one from Google's default credentials. Calls time out within seconds: a machine's log
    must not hold up its end."""

    max_batch_events = 1000
    max_batch_bytes = MAX_BATCH_BYTES
    max_event_bytes = MAX_EVENT_BYTES
    event_overhead = EVENT_OVERHEAD
    missing_library = "google-auth is not installed in the agent's environment: this machine's log is not shipped to Cloud Logging"

    def __init__(
        self,
        project: str,
        log_name: str,
        machine_id: str,
        *,
        api_endpoint: str | None = None,
        session: Any = None,
        timeout: tuple[float, float] = (2.0, 5.0),
    ) -> None:
        self.project, self.log_name, self.machine_id, self.timeout = project, log_name, machine_id, timeout
        self.url = f"{(api_endpoint or DEFAULT_ENDPOINT).rstrip('/')}/v2/entries:write"
        self.session = session
        self.destination = f"Cloud Logging projects/{project}/logs/{log_name}"

    def send(self, events: list[dict[str, Any]], first: int) -> None:
        if self.session is None:
            from google.auth.transport.requests import AuthorizedSession

            from prefect_remote.providers.gcp.clients import default_credentials

            credentials, _ = default_credentials(("https://www.googleapis.com/auth/logging.write",))
            self.session = AuthorizedSession(credentials)
        body = {
            "logName": f"projects/{self.project}/logs/{self.log_name}",
            "resource": {"type": "global", "labels": {"project_id": self.project}},
            "labels": {MACHINE_LABEL: self.machine_id},
            "entries": [
                {
                    "textPayload": event["message"],
                    "timestamp": _rfc3339(event["timestamp"] / 1000),
                    "insertId": insert_id(self.machine_id, first + index),
                }
                for index, event in enumerate(events)
            ],
        }
        response = self.session.post(self.url, data=json.dumps(body), headers={"Content-Type": "application/json"}, timeout=self.timeout)
        if response.status_code >= 300:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:500]
            raise RuntimeError(f"entries.write answered HTTP {response.status_code}: {message}")


def ship_log(
    path: str,
    project: str,
    log_name: str,
    machine_id: str,
    *,
    api_endpoint: str | None = None,
    session: Any = None,
    interval: float = 1.0,
    report: Callable[[str], None] | None = None,
) -> LogShipper:
    """Tails the machine log at ``path`` into Cloud Logging (:class:`CloudLoggingSender`); started.

    Example::

        shipping = ship_log("/var/log/prefect-remote.log", "my-project", "prefect-remote", "vm-0123456789ab")
        ...
        shipping.close()
    """
    sender = CloudLoggingSender(project, log_name, machine_id, api_endpoint=api_endpoint, session=session)
    return LogShipper(path, sender, interval=interval, report=report).start()


@dataclass(frozen=True)
class Entry:
    """One log line as the reader hands it on: its machine, its place in the log (``stamp``: RFC 3339
    in UTC, ``insert_id``), its text."""

    machine_id: str
    stamp: str
    insert_id: str
    text: str

    @property
    def position(self) -> tuple[str, str]:
        return (self.stamp, self.insert_id)


# (filter, most, newest_first) -> the first entries that match, oldest first (newest first when asked): one request
Fetch = Callable[[str, int, bool], list[Entry]]


def _position(cursor: str | None, since: float | None = None) -> tuple[str, str] | None:
    """Where a read starts: after the cursor's entry, else at ``since`` (an epoch; its position has
    no insertId, which every entry's sorts after), else None: the log's start."""
    if not cursor:
        return (_rfc3339(since), "") if since is not None else None
    stamp, _, last_id = cursor.partition("|")
    return (stamp, last_id)


def machines_filter(log_filter: str, wanted: Mapping[str, tuple[str, str] | None]) -> str:
    """One Cloud Logging filter for the entries of every machine of ``wanted`` after its position
    (None: from its start), within the log ``log_filter`` names. A position with no insertId is a
    time: entries from then on. (Google's client adds "the last 24 hours" to a filter that names no
    timestamp: a read from a machine's start names the machine's creation.)"""
    clauses = []
    for machine_id, position in wanted.items():
        clause = f'labels."{MACHINE_LABEL}"="{machine_id}"'
        if position is not None and not position[1]:
            clause += f' AND timestamp>="{position[0]}"'
        elif position is not None:
            stamp, last_id = position
            clause += f' AND (timestamp>"{stamp}" OR (timestamp="{stamp}" AND insertId>"{last_id}"))'
        clauses.append(f"({clause})")
    return f"{log_filter} AND ({' OR '.join(clauses)})"


class LogReader:
    """Reads the machines' logs of one project for every caller in this process, within Cloud
    Logging's read quota (``entries.list``: 60 requests a minute per project, which cannot be raised).

    Callers (the worker's log shipping into Prefect for each flow run, ``machines logs --follow``,
    :meth:`GCPProvider.logs`) ask :meth:`read` for one machine's lines after their cursor. The asks
    that arrive while a read waits its turn are answered together by one filtered ``entries.list``
    (every machine's clause ORed; a filter over :data:`MAX_FILTER` characters is split), one request
    at most every ``60 / reads_per_minute`` seconds: the first ask is answered at once, a burst of
    followers costs one request per interval in all. ``fetch(filter, most)`` makes one request
    (:func:`cloud_logging_fetch`); a page that fills (``page`` entries) is followed by a read from
    where it ended, taking its turn, so that no machine's chunk is cut short.
    """

    def __init__(
        self,
        fetch: Fetch,
        log_filter: str,
        *,
        reads_per_minute: float = READS_PER_MINUTE,
        page: int = PAGE,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.fetch, self.log_filter = fetch, log_filter
        self.interval, self.page = 60.0 / reads_per_minute, page
        self._clock, self._sleep = clock, sleep
        self._next_read = -math.inf
        self._cond = threading.Condition()
        self._pending: list[_Ask] = []
        self._reading = False
        self.requests = 0  # entries.list requests made (a benchmark's count)

    def read(self, machine_id: str, cursor: str | None = None, *, since: float | None = None) -> LogChunk:
        """What ``machine_id`` logged after ``cursor`` (a previous chunk's; None: from its start, or
        from ``since``, an epoch: the machine's creation)."""
        ask = _Ask(machine_id, _position(cursor, since), cursor or "")
        with self._cond:
            self._pending.append(ask)
            while not ask.done and self._reading:
                self._cond.wait()
            if ask.done:
                return ask.answer()
            self._reading = True  # this caller reads for everyone waiting
        batch: list[_Ask] = []
        try:
            self._wait_turn()
            with self._cond:
                batch, self._pending = self._pending, []
            self._answer(batch)
        except BaseException as error:
            for waiting in batch or [ask]:
                waiting.error = error
            raise
        finally:
            with self._cond:
                for waiting in batch:
                    waiting.done = True
                self._reading = False
                self._cond.notify_all()
        return ask.answer()

    def tail(self, machine_id: str, lines: int, *, since: float | None = None) -> str:
        """The last ``lines`` entries ``machine_id`` logged (from ``since`` on, an epoch), as text: one
        request, newest first, taking its turn within the quota."""
        with self._cond:
            while self._reading:
                self._cond.wait()
            self._reading = True
        try:
            self._wait_turn()
            entries = self.fetch(machines_filter(self.log_filter, {machine_id: _position(None, since)}), lines, True)
            self.requests += 1
        finally:
            with self._cond:
                self._reading = False
                self._cond.notify_all()
        return _chunk(entries[::-1], "").text

    def _wait_turn(self) -> None:
        wait = self._next_read - self._clock()
        if wait > 0:
            self._sleep(wait)  # asks arriving meanwhile join this read
        self._next_read = max(self._clock(), self._next_read) + self.interval

    def _answer(self, batch: list[_Ask]) -> None:
        wanted: dict[str, tuple[str, str] | None] = {}
        for ask in batch:  # two asks for one machine: read from the earlier cursor
            known = wanted.get(ask.machine_id, ask.position)
            wanted[ask.machine_id] = None if known is None or ask.position is None else min(known, ask.position)
        found: dict[str, list[Entry]] = {machine_id: [] for machine_id in wanted}
        for group in _groups(self.log_filter, wanted):
            while True:
                entries = self.fetch(machines_filter(self.log_filter, group), self.page, False)
                self.requests += 1
                for entry in entries:
                    found.setdefault(entry.machine_id, []).append(entry)
                    group[entry.machine_id] = entry.position
                if len(entries) < self.page:
                    break
                self._wait_turn()  # a full page: read on from where it ended
        for ask in batch:
            lines = [e for e in found[ask.machine_id] if ask.position is None or e.position > ask.position]
            ask.chunk = _chunk(lines, ask.cursor)


@dataclass
class _Ask:
    machine_id: str
    position: tuple[str, str] | None
    cursor: str
    done: bool = False
    chunk: LogChunk | None = None
    error: BaseException | None = None

    def answer(self) -> LogChunk:
        if self.error is not None:
            raise self.error
        assert self.chunk is not None
        return self.chunk


def _groups(log_filter: str, wanted: dict[str, tuple[str, str] | None]) -> list[dict[str, tuple[str, str] | None]]:
    """``wanted`` in groups whose filter fits Cloud Logging's :data:`MAX_FILTER` characters."""
    groups: list[dict[str, tuple[str, str] | None]] = [{}]
    for machine_id, position in wanted.items():
        candidate = {**groups[-1], machine_id: position}
        if groups[-1] and len(machines_filter(log_filter, candidate)) > MAX_FILTER:
            groups.append({machine_id: position})
        else:
            groups[-1] = candidate
    return groups


def _chunk(entries: list[Entry], cursor: str) -> LogChunk:
    if not entries:
        return LogChunk("", cursor)
    text = "".join(e.text if e.text.endswith("\n") else e.text + "\n" for e in entries)
    last = entries[-1]
    return LogChunk(text, f"{last.stamp}|{last.insert_id}")


def cloud_logging_fetch(clients: GoogleClients) -> Fetch:
    """One ``entries.list`` request of ``clients``' project, oldest (or newest) first, a page of ``most``
    entries (which ends the client's paging): a 429 (the read quota) or a server error is retried with backoff (google-api-core's
    retry), then raised as a :class:`~prefect_remote.errors.RemoteError`."""
    from google.api_core import exceptions
    from google.api_core.retry import Retry, if_exception_type

    retry = Retry(
        predicate=if_exception_type(exceptions.TooManyRequests, exceptions.InternalServerError, exceptions.ServiceUnavailable),
        initial=2.0,
        maximum=30.0,
        multiplier=2.0,
        timeout=QUOTA_RETRY_SECONDS,
    )

    def fetch(query: str, most: int, newest_first: bool = False) -> list[Entry]:
        from google.cloud.logging import ASCENDING, DESCENDING

        def one_page() -> list[Entry]:
            found = clients.logging().list_entries(
                resource_names=[f"projects/{clients.project}"],
                filter_=query,
                order_by=DESCENDING if newest_first else ASCENDING,
                page_size=most,
                max_results=most,
            )
            return [
                Entry(
                    (entry.labels or {}).get(MACHINE_LABEL, ""),
                    entry.timestamp.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),  # every entry has one
                    entry.insert_id or "",
                    str(entry.payload) if entry.payload is not None else "",
                )
                for entry in found
            ]

        with clients.translated("logging.logEntries.list"):
            return retry(one_page)()

    return fetch


_readers: dict[tuple[str, str, str], LogReader] = {}
_readers_lock = threading.Lock()


def log_reader(clients: GoogleClients, log_name: str) -> LogReader:
    """This process's one reader of log ``log_name`` in ``clients``' project (made on first use)."""
    key = (clients.project, clients.options.api_endpoint or "", log_name)
    with _readers_lock:
        if key not in _readers:
            _readers[key] = LogReader(cloud_logging_fetch(clients), f'logName="projects/{clients.project}/logs/{log_name}"')
        return _readers[key]


def read_logs(clients: GoogleClients, log_name: str, machine_id: str, cursor: str | None = None, *, since: float | None = None) -> LogChunk:
    """What machine ``machine_id`` logged after ``cursor`` (a previous chunk's; None: from the
    start, ``since`` when given: the machine's creation, an epoch), through this process's shared
    :class:`LogReader`. The cursor is the last entry's timestamp and insertId: the next read asks
    for entries after it."""
    return log_reader(clients, log_name).read(machine_id, cursor, since=since)
