"""LeaseWatch, the machines' clock-free lease read, with a fake monotonic clock: a lease's age is how
long its token stayed the same on the machine's own clock, whatever time the owner's token names."""

from __future__ import annotations

import pytest

from prefect_remote.machine.runtime import LeaseWatch


def watch_at(start: float = 5000.0) -> tuple[LeaseWatch, list[float]]:
    now = [start]
    return LeaseWatch(clock=lambda: now[0]), now


def test_an_unchanged_token_ages_from_the_first_read_and_a_changed_one_is_fresh():
    watch, now = watch_at()
    assert watch.age("1765090000") == 0  # fresh at launch: the first read counts from then
    now[0] += 7.5
    assert watch.age("1765090000") == 7.5
    now[0] += 30
    assert watch.age("1765090000") == 37.5  # unchanged for 37.5 s: 37.5 s old
    assert watch.age("1765090010") == 0  # renewed
    now[0] += 2
    assert watch.age("1765090010") == 2


@pytest.mark.parametrize("skew", [-600, 0, 600])
def test_an_owner_clock_off_by_ten_minutes_changes_no_age(skew):
    """The owner renews every 10 s, stamping its own clock, then stops; the machine reads every 3 s."""
    watch, now = watch_at(0.0)
    ages = []
    for tick in range(0, 120, 3):
        now[0] = tick
        owner_clock = 1_765_090_000 + skew + min(tick, 60) // 10 * 10  # renewals every 10 s until 60 s
        ages.append(watch.age(str(owner_clock)))
    assert max(ages[:20]) < 10 + 3  # while renewed: never older than a renewal gap plus a read interval
    assert ages[-1] == 117 - 60  # after the last renewal (seen at 60 s): counted on the machine's clock


def test_ages_are_identical_whatever_the_skew():
    def run(skew: int) -> list[float]:
        watch, now = watch_at(0.0)
        out = []
        for tick in range(0, 90, 3):
            now[0] = tick
            out.append(watch.age(1_765_090_000 + skew + min(tick, 40) // 10 * 10))
        return out

    assert run(-600) == run(0) == run(600)


def test_a_token_may_be_any_value_such_as_a_metageneration_or_an_rfc3339_time():
    watch, now = watch_at()
    assert watch.age(("2026-12-07T07:40:00.000Z", 3)) == 0
    now[0] += 4
    assert watch.age(("2026-12-07T07:40:00.000Z", 3)) == 4
    assert watch.age(("2026-12-07T07:39:00.000Z", 4)) == 0  # an earlier time is a change too
