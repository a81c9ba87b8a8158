"""The sandbox GCP's Cloud Logging v2, as ``google.cloud.logging.Client(_use_grpc=False)`` calls it:
``entries:write`` and ``entries:list``.

Writing: each entry takes the request's ``logName``, ``resource`` and ``labels`` where it has none
of its own (labels merge); it needs a log name of this project and a resource, as Google's does;
it gets a ``timestamp`` (now), an ``insertId`` and a ``receiveTimestamp`` when missing. Entries
list in Google's order: by timestamp, then ``insertId``. Google's
limits hold: 256 KiB an entry, 10 MB a request.

Listing: the filter subset the product uses (``logName="…"``, ``labels."k"="v"``, ``timestamp>=…``,
``resource.type``, ``severity=``, ``insertId``, ``textPayload:``…, joined by AND/OR/NOT, see
:mod:`prefect_remote.sandbox.gcp.filters`), ``orderBy`` ``timestamp asc`` (default) or
``timestamp desc``, ``pageSize`` (default 50, at most 1000) and ``pageToken``.

Google's read quota holds: ``entries.list`` takes :data:`READS_PER_MINUTE` requests a minute per
project (a page is a request; the quota cannot be raised), and answers the next 429
``RESOURCE_EXHAUSTED`` as Google does. A test that needs it off sets ``read_quota = None`` (and
``quota_window`` makes a test's minute shorter).

>>> fake = LoggingFake(api, Project.named("sandbox-project"))          # doctest: +SKIP
>>> fake.entries()[-1]["textPayload"]                                  # doctest: +SKIP
'flow run started'
"""

from __future__ import annotations

import collections
import json
import threading
import time
from collections.abc import Callable
from typing import Any

from starlette.requests import Request

from prefect_remote.sandbox.gcp.api import GoogleAPI, GoogleError, body, rfc3339
from prefect_remote.sandbox.gcp.common import Project, page
from prefect_remote.sandbox.gcp.filters import compile_filter, parse_time

MAX_ENTRY = 256 * 1024
MAX_REQUEST = 10 * 1024 * 1024
_AUTO_ID = "sandbox-"  # the prefix of insertIds the fake assigns
READS_PER_MINUTE = 60  # Cloud Logging's entries.list quota, per project ("cannot be increased")


def _order(held: tuple[float, str, int, dict[str, Any]]) -> tuple[float, str, int]:
    """Google's order of entries: by timestamp, then insertId (which breaks ties, as documented)."""
    return held[:3]  # type: ignore[return-value]


class LoggingFake:
    """Log entries of ``project``, served on ``api`` (kept for the sandbox's life)."""

    def __init__(self, api: GoogleAPI, project: Project, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.project = project
        self.read_quota: int | None = READS_PER_MINUTE  # None: no quota (a test that needs it off)
        self.quota_window = 60.0  # seconds the quota counts over
        self._clock = clock
        self._reads: collections.deque[float] = collections.deque()  # when each counted entries.list came
        self._entries: list[tuple[float, str, int, dict[str, Any]]] = []  # (timestamp epoch, insertId, arrival, entry)
        self._lock = threading.Lock()
        api.route("/v2/entries:write", ["POST"], "logging.entries.write")(self._write)
        api.route("/v2/entries:list", ["POST"], "logging.entries.list")(self._list)

    def write(self, entries: list[dict[str, Any]]) -> None:
        """Adds entries as Google would from ``entries:write`` (a sandbox service's own logs)."""
        received = rfc3339()
        with self._lock:
            for entry in entries:
                entry = {**entry, "receiveTimestamp": received}
                entry.setdefault("timestamp", received)
                entry.setdefault("insertId", f"{_AUTO_ID}{len(self._entries):012d}")  # in arrival order, as Google's are in time
                when = parse_time(entry["timestamp"])
                if when is None:
                    raise GoogleError(400, f"Invalid timestamp {entry['timestamp']!r}: expected RFC 3339, e.g. 2026-12-01T10:00:00.000Z")
                self._entries.append((when, entry["insertId"], len(self._entries), entry))

    def entries(self) -> list[dict[str, Any]]:
        """Every entry written, oldest first (for tests and the sandbox's own checks)."""
        with self._lock:
            return [held[-1] for held in sorted(self._entries, key=_order)]

    # -- the API ------------------------------------------------------------------------------------
    def _write(self, request: Request) -> dict[str, Any]:
        given = body(request)
        size = len(json.dumps(given))
        if size > MAX_REQUEST:
            raise GoogleError(400, f"Request payload size exceeds the limit: {MAX_REQUEST} bytes.")
        default_log, default_resource = given.get("logName"), given.get("resource")
        default_labels = given.get("labels") or {}
        entries = []
        for index, entry in enumerate(given.get("entries") or []):
            entry = dict(entry)
            entry.setdefault("logName", default_log)
            entry.setdefault("resource", default_resource)
            entry["labels"] = {**default_labels, **(entry.get("labels") or {})}
            if not entry["labels"]:
                del entry["labels"]
            if not entry.get("logName"):
                raise GoogleError(
                    400,
                    f"entries[{index}]: Log entry with no log name: give logName (projects/PROJECT/logs/LOG_ID) in the entry or "
                    "the request.",
                )
            project, _, log_id = entry["logName"].removeprefix("projects/").partition("/logs/")
            if not entry["logName"].startswith("projects/") or not log_id:
                raise GoogleError(400, f"entries[{index}]: invalid log name {entry['logName']!r}: expected projects/PROJECT/logs/LOG_ID")
            self.project.check(project, "logging.logEntries.create", entry["logName"])
            if not (entry.get("resource") or {}).get("type"):
                raise GoogleError(400, f'entries[{index}]: Log entry with no resource type: give resource (e.g. {{"type": "global"}}).')
            entry_size = len(json.dumps(entry))
            if entry_size > MAX_ENTRY:
                raise GoogleError(400, f"entries[{index}]: Log entry with size {entry_size / 1024:.1f}K exceeds maximum size of 256.0K")
            entries.append(entry)
        if not given.get("dryRun"):
            self.write(entries)
        return {}

    def reset_reads(self) -> None:
        """Forgets the reads counted so far (a test starts with the whole quota)."""
        with self._lock:
            self._reads.clear()

    def _count_read(self) -> None:
        """Counts an ``entries.list`` request against the project's quota; over it, 429 as Google."""
        if self.read_quota is None:
            return
        now = self._clock()
        with self._lock:
            while self._reads and self._reads[0] <= now - self.quota_window:
                self._reads.popleft()
            if len(self._reads) >= self.read_quota:
                raise GoogleError(
                    429,
                    "Quota exceeded for quota metric 'Read requests' and limit 'Read requests per minute' of service "
                    f"'logging.googleapis.com' for consumer 'project_number:{self.project.number}'.",
                    "RESOURCE_EXHAUSTED",
                    details=[
                        {
                            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                            "reason": "RATE_LIMIT_EXCEEDED",
                            "domain": "googleapis.com",
                            "metadata": {"service": "logging.googleapis.com", "quota_limit": "ReadRequestsPerMinutePerProject"},
                        }
                    ],
                )
            self._reads.append(now)

    def _list(self, request: Request) -> dict[str, Any]:
        self._count_read()
        given = body(request)
        names = given.get("resourceNames") or []
        if not names:
            raise GoogleError(400, "resourceNames is required: give projects/PROJECT")
        for name in names:
            project = name.removeprefix("projects/")
            if not name.startswith("projects/") or "/" in project:
                raise GoogleError(400, f"resourceNames: {name!r} is not projects/PROJECT")
            self.project.check(project, "logging.logEntries.list", name)
        order = " ".join(str(given.get("orderBy") or "timestamp asc").lower().split())
        if order not in ("timestamp asc", "timestamp desc", "timestamp"):
            raise GoogleError(400, f"orderBy {given.get('orderBy')!r}: only 'timestamp asc' and 'timestamp desc' are supported")
        match = compile_filter(given.get("filter"))
        with self._lock:
            held = sorted(self._entries, key=_order, reverse=order == "timestamp desc")
        found = [entry for when, _, _, entry in held if match(lambda path, e=entry, w=when: _field(e, w, path))]
        chunk, token = page(found, {key: str(given[key]) for key in ("pageSize", "pageToken") if given.get(key)}, default=50, maximum=1000)
        answer: dict[str, Any] = {"entries": chunk}
        if token:
            answer["nextPageToken"] = token
        return answer


def _field(entry: dict[str, Any], when: float, path: Any) -> Any:
    """An entry's field as a filter names it: ``timestamp`` compares as a time."""
    path = list(path)
    if path == ["timestamp"]:
        return when
    if path == ["receiveTimestamp"]:
        return parse_time(entry.get("receiveTimestamp", ""))
    node: Any = entry
    for part in path:
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node
