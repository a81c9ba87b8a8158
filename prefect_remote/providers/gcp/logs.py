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
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prefect_remote.machine.logship import LogSender, LogShipper
from prefect_remote.providers.base import LogChunk

if TYPE_CHECKING:
    from prefect_remote.providers.gcp.clients import GoogleClients

MACHINE_LABEL = "prefect-remote-machine"
DEFAULT_ENDPOINT = "https://logging.googleapis.com"
PAGE = 1000  # entries per read: the most entries:list gives at once
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
            import google.auth
            from google.auth.transport.requests import AuthorizedSession

            credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/logging.write"])
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


def read_logs(clients: GoogleClients, log_name: str, machine_id: str, cursor: str | None = None) -> LogChunk:
    """What machine ``machine_id`` logged after ``cursor`` (a previous chunk's; None: from the
    start), up to 1,000 lines a chunk, read with one ``entries.list`` call. The cursor is the last
    entry's timestamp and insertId: the next read asks for entries after it."""
    from google.cloud.logging import ASCENDING

    query = f'logName="projects/{clients.project}/logs/{log_name}" AND labels."{MACHINE_LABEL}"="{machine_id}"'
    if cursor:
        stamp, _, last_id = cursor.partition("|")
        query += f' AND (timestamp>"{stamp}" OR (timestamp="{stamp}" AND insertId>"{last_id}"))'
    with clients.translated("logging.logEntries.list"):
        entries = list(
            clients.logging().list_entries(
                resource_names=[f"projects/{clients.project}"], filter_=query, order_by=ASCENDING, page_size=PAGE, max_results=PAGE
            )
        )
    if not entries:
        return LogChunk("", cursor or "")
    lines = [str(entry.payload) if entry.payload is not None else "" for entry in entries]
    text = "".join(line if line.endswith("\n") else line + "\n" for line in lines)
    last = entries[-1]
    stamp = last.timestamp.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # every entry has one
    return LogChunk(text, f"{stamp}|{last.insert_id}")
