"""The gcp provider's shared Cloud Logging reader (:class:`~prefect_remote.providers.gcp.logs.LogReader`)
as pure logic, on a fake clock, with a fake ``entries.list`` that answers from a list of entries
by the filter's machine clauses: pacing within the quota, many followers' asks in one request,
pages followed, cursors per caller."""

from __future__ import annotations

import re
import threading

from prefect_remote.providers.gcp.logs import MACHINE_LABEL, MAX_FILTER, Entry, LogReader, _groups, machines_filter

LOG = 'logName="projects/p/logs/prefect-remote"'


class FakeLogging:
    """Entries of machines, listed as Cloud Logging would for the reader's filters."""

    def __init__(self, entries: list[Entry]) -> None:
        self.entries, self.filters = sorted(entries, key=lambda e: e.position), []
        self.gate: threading.Event | None = None

    def fetch(self, query: str, most: int, newest_first: bool = False) -> list[Entry]:
        if self.gate is not None:
            self.gate.wait(5)
        self.filters.append(query)
        wanted = {}
        for clause in re.findall(
            r'\(labels\."'
            + MACHINE_LABEL
            + r'"="([^"]+)"(?: AND \(timestamp>"([^"]+)" OR \(timestamp="[^"]+" AND insertId>"([^"]+)"\)\))?\)',
            query,
        ):
            machine_id, stamp, last_id = clause
            wanted[machine_id] = (stamp, last_id) if stamp else None
        found = [e for e in self.entries if e.machine_id in wanted and (wanted[e.machine_id] is None or e.position > wanted[e.machine_id])]
        return found[:most]


class Clock:
    def __init__(self) -> None:
        self.now, self.sleeps = 1000.0, []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def entry(machine_id: str, second: int, text: str) -> Entry:
    return Entry(machine_id, f"2026-12-07T00:00:{second:02d}.000000Z", f"{machine_id}-{second:010d}", text)


def test_reads_are_paced_within_the_quota_and_cursors_move_on():
    logging = FakeLogging([entry("vm-a", 1, "one"), entry("vm-a", 2, "two")])
    clock = Clock()
    reader = LogReader(logging.fetch, LOG, reads_per_minute=20, clock=clock, sleep=clock.sleep)
    first = reader.read("vm-a")
    assert first.text == "one\ntwo\n" and clock.sleeps == []  # the first read at once
    logging.entries.append(entry("vm-a", 3, "three"))
    again = reader.read("vm-a", first.cursor)
    assert again.text == "three\n" and clock.sleeps == [3.0]  # 20 a minute: one every 3 s
    assert reader.read("vm-a", again.cursor).text == "" and reader.read("vm-a", again.cursor).cursor == again.cursor
    assert reader.requests == 4 and clock.sleeps == [3.0, 3.0, 3.0]


def test_followers_waiting_together_share_one_request():
    logging = FakeLogging([entry(f"vm-{n}", n, f"line of {n}") for n in range(6)])
    reader = LogReader(logging.fetch, LOG, reads_per_minute=60)
    logging.gate = threading.Event()  # the first read hangs until the others have asked
    answers: dict[str, str] = {}

    def follow(machine_id: str) -> None:
        answers[machine_id] = reader.read(machine_id).text

    threads = [threading.Thread(target=follow, args=(f"vm-{n}",)) for n in range(6)]
    threads[0].start()
    while not reader._reading:
        pass
    for thread in threads[1:]:
        thread.start()
    while len(reader._pending) < 5:
        pass
    logging.gate.set()
    for thread in threads:
        thread.join(10)
    assert answers == {f"vm-{n}": f"line of {n}\n" for n in range(6)}
    assert reader.requests == 2  # vm-0's own, then one for the five that waited
    assert logging.filters[1].count(MACHINE_LABEL) == 5


def test_full_pages_are_followed_and_long_filters_split():
    logging = FakeLogging([entry("vm-a", n % 60, f"a{n}") for n in range(5)] + [entry("vm-b", n, f"b{n}") for n in range(5)])
    clock = Clock()
    reader = LogReader(logging.fetch, LOG, reads_per_minute=60, page=3, clock=clock, sleep=clock.sleep)
    assert reader.read("vm-a").text == "a0\na1\na2\na3\na4\n" and reader.requests == 2 and clock.sleeps == [1.0]
    wanted = {f"vm-{n:012d}": ("2026-12-07T00:00:00.000000Z", f"vm-{n:012d}-0000000001") for n in range(400)}
    assert len(machines_filter(LOG, wanted)) > MAX_FILTER
    groups = _groups(LOG, wanted)
    assert len(groups) > 1 and sum(map(len, groups), 0) == 400
    assert all(len(machines_filter(LOG, group)) <= MAX_FILTER for group in groups)


def test_two_followers_of_one_machine_at_different_places():
    logging = FakeLogging([entry("vm-a", n, f"a{n}") for n in range(4)])
    reader = LogReader(logging.fetch, LOG, reads_per_minute=60_000)
    early = reader.read("vm-a")
    assert reader.read("vm-a", early.cursor).text == ""
    head = reader.read("vm-a")
    assert head.text == "a0\na1\na2\na3\n" and head.cursor == early.cursor
