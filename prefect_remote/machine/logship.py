"""Ships a machine's log file to its cloud's log service as the machine runs: the tailing, batching,
pacing and backoff every cloud shares; a :class:`LogSender` per service does the calls (CloudWatch
Logs on aws, Cloud Logging on gcp) and declares the service's limits.

The boot script appends the machine's whole output (its boot phases, then the agent's and the
payload's) to one file; :class:`LogShipper` tails that file from its first byte in a background
thread and sends its lines as events, each stamped with the time it was read: a line written after
a quiet spell goes at once (the file is read every 0.2 s), steady output about once per
``interval``. :meth:`LogShipper.close` ships the rest, within a few seconds at most, so a dead API
never keeps a machine alive. It ships exactly the file: nothing else of the machine (its
environment, its secrets) is read.

Standard library only at import (the agent imports it on every boot); a sender imports its cloud's
library in the shipping thread.

>>> events = [(1000, "booting"), (1000, ""), (1001, "x" * 300)]
>>> batch_events(events, max_events=10, max_bytes=1000, max_event_bytes=226, max_span_ms=10, overhead=26)[0][:2]
[{'timestamp': 1000, 'message': 'booting'}, {'timestamp': 1000, 'message': '\\n'}]
"""

from __future__ import annotations

import codecs
import collections
import os
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

POLL = 0.2  # seconds between reads of the file
BURST = 3  # calls that may go at once before shipping slows to one per interval
READ_AHEAD = 4 * 1024 * 1024  # bytes read but not yet shipped, at most: the file is the buffer
MAX_BACKOFF = 30.0  # seconds between attempts while the service refuses or cannot be reached
SETTLE = 0.2  # seconds without growth that mean the writers (the boot script's tee) have caught up
MAX_SETTLE = 1.0  # at most this much of close's budget goes to waiting for them


def event_messages(line: str, limit: int) -> list[str]:
    """The messages one line of the log (without its newline) becomes: itself, or pieces of at most
    ``limit`` UTF-8 bytes cut between characters. A blank line is ``"\\n"``: log services refuse
    empty messages, and the providers' readers render it as the blank line it was.

    >>> event_messages("", 10)
    ['\\n']
    >>> event_messages("héllo", limit=3)
    ['h\\xe9', 'llo']
    """
    if not line:
        return ["\n"]
    data = line.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return [line]
    pieces, start = [], 0
    while start < len(data):
        end = min(start + limit, len(data))
        while end < len(data) and data[end] & 0xC0 == 0x80:  # never inside a character
            end -= 1
        pieces.append(data[start:end].decode("utf-8", "surrogatepass"))
        start = end
    return pieces


def batch_events(
    events: Iterable[tuple[int, str]], *, max_events: int, max_bytes: int, max_event_bytes: int, max_span_ms: int, overhead: int
) -> list[list[dict[str, Any]]]:
    """``(timestamp ms, message)`` pairs as valid calls' events: sorted by time (events of the same
    millisecond keep their order), messages too big for one event cut (:func:`event_messages`), at
    most ``max_events`` events and ``max_bytes`` bytes (``overhead`` per event included) per call,
    and no call spanning more than ``max_span_ms``."""
    batches: list[list[dict[str, Any]]] = []
    batch: list[dict[str, Any]] = []
    size = 0
    for timestamp, message in sorted(events, key=lambda event: event[0]):
        for piece in event_messages(message, max_event_bytes - overhead):
            cost = len(piece.encode("utf-8", "surrogatepass")) + overhead
            if batch and (len(batch) >= max_events or size + cost > max_bytes or timestamp - batch[0]["timestamp"] > max_span_ms):
                batches.append(batch)
                batch, size = [], 0
            batch.append({"timestamp": timestamp, "message": piece})
            size += cost
    if batch:
        batches.append(batch)
    return batches


class LogSender(ABC):
    """One log service's side of shipping: its limits, and the call that sends a batch of events.
    It is used from the shipping thread only (it may make its client there)."""

    max_batch_events: ClassVar[int]
    max_batch_bytes: ClassVar[int]  # a call's messages in UTF-8, ``event_overhead`` per event included
    max_event_bytes: ClassVar[int]  # one event, its overhead included
    event_overhead: ClassVar[int]
    max_span_ms: ClassVar[int] = 24 * 3600 * 1000  # a call's events may not span more than this
    destination: str  # "CloudWatch Logs GROUP/STREAM", for reports
    missing_library: str  # what the report says when the service's client library is not installed

    @abstractmethod
    def send(self, events: list[dict[str, Any]], first: int) -> None:
        """Sends ``events`` (``{"timestamp": ms, "message": text}``, valid for the limits) in one
        call, or raises. ``first`` is the number of events the service accepted before these: the
        same events are sent again with the same ``first`` after a failure (idempotency keys)."""

    def batches(self, events: Iterable[tuple[int, str]]) -> list[list[dict[str, Any]]]:
        return batch_events(
            events,
            max_events=self.max_batch_events,
            max_bytes=self.max_batch_bytes,
            max_event_bytes=self.max_event_bytes,
            max_span_ms=self.max_span_ms,
            overhead=self.event_overhead,
        )


class LogShipper:
    """Tails the file at ``path`` from its start into ``sender``'s service.

    The file is read every 0.2 s (or ``interval``, if shorter) and what it gained is shipped at once,
    one round of calls per ``interval`` on average with bursts of up to 3: a line after a quiet
    spell arrives within a fraction of a second, steady output goes about once per ``interval``. A
    line still without its newline is shipped once it has waited ``partial_wait`` seconds (its rest
    follows as another event). While the service fails, attempts back off (up to 30 s) and the
    failure is reported once per streak on stderr; reading pauses once 4 MiB wait unshipped (the
    file keeps them). :meth:`close` ships what the file holds, giving up after ``close_timeout``
    seconds. ``clock`` (epoch seconds) stamps the lines.

    Example::

        with LogShipper("/var/log/prefect-remote.log", CloudWatchSender("/prefect-remote/machines", "i-0123456789abcdef0")):
            run_the_payload()
    """

    def __init__(
        self,
        path: str,
        sender: LogSender,
        *,
        interval: float = 1.0,
        partial_wait: float = 5.0,
        close_timeout: float = 15.0,  # a machine's last lines say why it ended: worth a few seconds on a slow API
        clock: Callable[[], float] = time.time,
        report: Callable[[str], None] | None = None,
    ) -> None:
        self.path, self.sender = path, sender
        self.interval, self.partial_wait, self.close_timeout = interval, partial_wait, close_timeout
        self.clock = clock
        self._report = report or (lambda message: print(f"[prefect-remote log] {message}", file=sys.stderr, flush=True))
        self._file: Any = None
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._partial = ""  # the last line read, its newline not yet written
        self._partial_since: float | None = None
        self._pending: collections.deque[tuple[int, str]] = collections.deque()  # read, not yet shipped
        self._pending_bytes = 0  # roughly (characters, not bytes): it only bounds reading ahead
        self._last_timestamp = 0
        self._failures = 0
        self._retry_at = 0.0
        self._tokens, self._refilled = float(BURST), time.monotonic()  # shipping rounds allowed now
        self._gave_up = False
        self._stop = threading.Event()
        self._deadline = float("inf")
        self._thread = threading.Thread(target=self._run, name="prefect-remote log shipper", daemon=True)
        self.shipped = 0  # events the service accepted

    def start(self) -> LogShipper:
        """Starts the shipping thread; returns this shipper."""
        self._thread.start()
        return self

    def close(self, timeout: float | None = None) -> bool:
        """Ships everything written to the file so far (waiting briefly for its writers to catch up)
        and stops, within ``timeout`` seconds (default ``close_timeout``). True when all of it was
        shipped. Idempotent."""
        budget = self.close_timeout if timeout is None else timeout
        if not self._stop.is_set():
            self._deadline = time.monotonic() + budget
            self._stop.set()
        if self._thread.is_alive():
            self._thread.join(max(0.0, self._deadline - time.monotonic()))
        return not self._thread.is_alive() and not self._pending and not self._partial and not self._gave_up

    def __enter__(self) -> LogShipper:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the shipping thread --------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                self._read(READ_AHEAD)
                if self._pending and self._may_ship():
                    self._ship()
                if self._stop.wait(min(POLL, self.interval)):
                    break
            self._final()
        except ImportError:
            self._gave_up = True
            self._report(self.sender.missing_library)
        except Exception as error:  # never take the agent down; the file stays on the machine
            self._gave_up = True
            self._report(f"log shipping stopped: {error!r}")
        finally:
            if self._file is not None:
                self._file.close()

    def _may_ship(self) -> bool:
        """Whether a shipping round may go now (a token bucket: ``BURST`` rounds, refilled one per
        ``interval``; none while backing off after a failure), taking its token if so."""
        now = time.monotonic()
        self._tokens = min(float(BURST), self._tokens + (now - self._refilled) / self.interval)
        self._refilled = now
        if now < self._retry_at or self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def _final(self) -> None:
        """Waits for the file to stop growing (the boot script's tee may still hold the agent's last
        lines), then ships all of it, a read-ahead at a time, retrying until the deadline."""
        settle_by = min(self._deadline, time.monotonic() + MAX_SETTLE)
        size, quiet_from = self._size(), time.monotonic()
        while time.monotonic() < settle_by and time.monotonic() - quiet_from < SETTLE:
            time.sleep(0.02)
            if self._size() != size:
                size, quiet_from = self._size(), time.monotonic()
        while time.monotonic() < self._deadline:
            self._read(READ_AHEAD, final=True)
            if not self._pending and not self._partial:  # all of it read and shipped
                return
            if not self._ship():
                time.sleep(min(0.25, max(0.0, self._deadline - time.monotonic())))

    def _size(self) -> int:
        try:
            return os.stat(self.path).st_size
        except OSError:
            return 0

    def _read(self, budget: int, *, final: bool = False) -> int:
        """Reads what the file gained, until ``budget`` bytes wait unshipped, into events; the number
        of bytes read. ``final``: the writers are done, so a last line without its newline is one."""
        if self._file is None:
            try:
                self._file = open(self.path, "rb")  # noqa: SIM115 (held open while it grows)
            except FileNotFoundError:
                return 0
        size = max(0, budget - self._pending_bytes)
        data = self._file.read(size) if size else b""
        final = final and len(data) < size  # and all of it was read
        text = self._partial + self._decoder.decode(data, final=final)
        *lines, self._partial = text.split("\n")
        now = self.clock()
        for line in lines:
            self._add(line, now)
        if not self._partial:
            self._partial_since = None
        elif self._partial_since is None:
            self._partial_since = now
        if self._partial and (final or now - self._partial_since >= self.partial_wait or len(self._partial) >= self.sender.max_event_bytes):
            self._add(self._partial, now)
            self._partial, self._partial_since = "", None
        return len(data)

    def _add(self, line: str, now: float) -> None:
        timestamp = self._last_timestamp = max(int(now * 1000), self._last_timestamp)  # never backwards
        for message in event_messages(line, self.sender.max_event_bytes - self.sender.event_overhead):
            self._pending.append((timestamp, message))
            self._pending_bytes += len(message) + self.sender.event_overhead

    def _ship(self) -> bool:
        """Sends the pending events, batch by batch; False if the service failed (then backs off)."""
        if not self._pending:
            return True
        try:
            for batch in self.sender.batches(list(self._pending)):  # already cut to size: one event per pending one
                self.sender.send(batch, self.shipped)
                for _ in batch:
                    _, message = self._pending.popleft()
                    self._pending_bytes -= len(message) + self.sender.event_overhead
                self.shipped += len(batch)
        except ImportError:
            raise
        except Exception as error:
            if not self._failures:
                self._report(f"cannot ship this machine's log to {self.sender.destination} ({error!r}); retrying")
            self._failures += 1
            self._retry_at = time.monotonic() + min(MAX_BACKOFF, self.interval * 2 ** min(self._failures, 10))
            return False
        if self._failures:
            self._report(f"shipping this machine's log again after {self._failures} failed attempt(s)")
            self._failures = 0
        return True
