"""Batch sizing and the worker side of a batch, without a cluster: durations come from a fake clock."""

from __future__ import annotations

import asyncio
import pickle
import traceback

import pytest

from prefect_remote.cluster.batching import MAX_BATCH, MAX_IN_FLIGHT, BatchCall, BatchResult, BatchSizer, check_batch_size


class FakeClock:
    """Advances ``step`` seconds each time it is read, or as much as the function under test says."""

    def __init__(self, step: float = 0.0) -> None:
        self.now, self.step = 100.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def measured_batch(sizer: BatchSizer, items: int, seconds_per_item: float) -> None:
    """Runs a batch of ``items`` through BatchCall whose function "takes" ``seconds_per_item`` on a fake clock."""
    clock = FakeClock()
    result = BatchCall(lambda x: clock.sleep(seconds_per_item) or x, clock=clock)(list(range(items)), {}, retries=0)
    assert result.seconds == pytest.approx(items * seconds_per_item)
    sizer.record(items, result.seconds, result.nbytes)


def test_probes_with_single_items_then_sizes_batches_to_the_target_duration():
    sizer = BatchSizer()
    assert sizer.next_size(threads=4, remaining=None) == 1  # nothing measured: one item, so slow functions spread out
    measured_batch(sizer, 1, 0.01)  # 10 ms an item: 15 items make a 150 ms task
    assert sizer.next_size(threads=4, remaining=None) == 15
    measured_batch(sizer, 15, 0.01)
    assert sizer.next_size(threads=4, remaining=None) == 15  # steady


def test_slow_items_go_one_per_task():
    sizer = BatchSizer()
    measured_batch(sizer, 1, 2.0)
    assert sizer.next_size(threads=2, remaining=1000) == 1


def test_batches_follow_the_measured_time_as_it_changes():
    sizer = BatchSizer()
    measured_batch(sizer, 1, 0.5)  # a slow first call (imports, caches)...
    assert sizer.next_size(threads=1, remaining=None) == 1
    for _ in range(6):
        measured_batch(sizer, sizer.next_size(threads=1, remaining=None), 0.001)  # ...then 1 ms an item
    assert 100 <= sizer.next_size(threads=1, remaining=None) <= 150  # the warm-up has faded


def test_trivial_items_are_bounded_by_the_maximum_and_the_window_share():
    sizer = BatchSizer()
    measured_batch(sizer, 100, 1e-7)
    assert sizer.next_size(threads=1, remaining=None) == MAX_BATCH
    assert sizer.next_size(threads=100, remaining=None) == MAX_IN_FLIGHT // 200  # every thread gets two batches of the window


def test_the_last_batches_spread_over_the_threads_down_to_a_minimum_of_work():
    sizer = BatchSizer()
    measured_batch(sizer, 10, 0.01)  # 15 items per 150 ms, 2 per 20 ms
    assert sizer.next_size(threads=4, remaining=1000) == 15
    assert sizer.next_size(threads=4, remaining=20) == 5  # 20 left over 4 threads
    assert sizer.next_size(threads=4, remaining=4) == 2  # not below 20 ms of work
    fast = BatchSizer()
    measured_batch(fast, 1000, 1e-6)
    assert fast.next_size(threads=2, remaining=3000) == 3000  # 3 ms of work in all: not worth splitting


def test_large_items_are_bounded_by_bytes():
    sizer = BatchSizer(max_bytes=1000)
    sizer.record(items=10, seconds=1e-5, nbytes=10 * 100)  # 100 bytes an item
    assert sizer.next_size(threads=1, remaining=None) == 10
    inputs = BatchSizer(max_bytes=1000)
    inputs.record(items=10, seconds=1e-5)
    inputs.record_bytes(items=2, nbytes=2 * 500)  # large inputs count too
    assert inputs.next_size(threads=1, remaining=None) == 2


def test_a_fixed_size_is_kept_and_widens_the_window():
    sizer = BatchSizer(fixed=7)
    assert sizer.next_size(threads=8, remaining=3) == 7 and sizer.next_size(threads=1, remaining=None) == 7
    assert BatchSizer(fixed=50_000).in_flight_limit == 100_000


def test_submission_waits_for_a_measurement_then_for_room_in_the_window():
    sizer = BatchSizer(window=100)
    assert sizer.may_submit(1, items_in_flight=0, batches_in_flight=0, threads=0)  # always one
    assert sizer.may_submit(1, items_in_flight=3, batches_in_flight=3, threads=2)
    assert not sizer.may_submit(1, items_in_flight=4, batches_in_flight=4, threads=2)  # two probes per thread, then wait
    sizer.record(items=1, seconds=0.001)
    assert sizer.may_submit(50, items_in_flight=50, batches_in_flight=4, threads=2)
    assert not sizer.may_submit(51, items_in_flight=50, batches_in_flight=4, threads=2)  # the window is full


@pytest.mark.parametrize("bad", [0, -1, 2.5, "big", "AUTO", None, True, [10]])
def test_bad_batch_sizes_are_rejected_clearly(bad):
    with pytest.raises(ValueError, match=r"batch_size=.*expected 'auto' .* or a whole number of items per task, 1 or more"):
        check_batch_size(bad)


def test_good_batch_sizes():
    assert check_batch_size("auto") is None and check_batch_size(1) == 1 and check_batch_size(250) == 250


def failing_on_odd(x: int) -> int:
    if x % 2:
        raise ValueError(f"odd input {x}")
    return x


def test_a_batch_keeps_each_items_outcome_and_traceback():
    result = BatchCall(failing_on_odd)([0, 1, 2, 3], {}, retries=0)
    assert result.values == [0, None, 2, None] and sorted(result.errors) == [1, 3]
    travelled: BatchResult = pickle.loads(pickle.dumps(result))  # as it reaches the caller
    assert list(travelled.items(skip_errors=True)) == [0, 2]
    received = []
    with pytest.raises(ValueError, match="odd input 1") as raised:
        for value in travelled.items(skip_errors=False):
            received.append(value)
    assert received == [0]  # what came before the first failure, in input order
    assert 'raise ValueError(f"odd input {x}")' in "".join(traceback.format_exception(raised.value))


def test_each_item_is_retried_on_its_own():
    attempts: dict[int, int] = {}

    def flaky(x: int) -> int:
        attempts[x] = attempts.get(x, 0) + 1
        if attempts[x] < 3:
            raise RuntimeError(f"attempt {attempts[x]} of {x}")
        return x

    assert BatchCall(flaky)([1, 2], {}, retries=2).values == [1, 2] and attempts == {1: 3, 2: 3}
    result = BatchCall(flaky)([5], {}, retries=1)
    assert str(result.errors[0]) == "attempt 2 of 5" and attempts[5] == 2


def test_keywords_unpacked_arguments_and_async_functions():
    assert BatchCall(lambda x, y, k=0: x * y + k)([(1, 2), (3, 4)], {"k": 1}, retries=0, unpack=True).values == [3, 13]

    async def double(x: int) -> int:
        await asyncio.sleep(0)
        return 2 * x

    assert BatchCall(double)([1, 2, 3], {}, retries=0).values == [2, 4, 6]


class Unpicklable(Exception):
    def __init__(self) -> None:
        super().__init__("carries a lock")
        import threading

        self.lock = threading.Lock()


def test_an_exception_that_cannot_travel_becomes_a_readable_one():
    def broken(x: int) -> int:
        raise Unpicklable()

    error = pickle.loads(pickle.dumps(BatchCall(broken)([1], {}, retries=0))).errors[0]
    assert isinstance(error, RuntimeError) and "Unpicklable: carries a lock" in str(error) and "raise Unpicklable()" in str(error)
