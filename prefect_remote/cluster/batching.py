"""Batches for ``Function.map``: several items per Dask task, sized from measured durations.

A Dask task costs the scheduler, a worker and the client about a millisecond each way; when the
function itself takes microseconds, that overhead is the whole run. So ``.map`` sends items in
batches: a worker runs a batch's items one after another (:class:`BatchCall`) and returns, per item,
a value or an exception, with how long the items took and how large their values are
(:class:`BatchResult`). :class:`BatchSizer` turns those measurements into the next batch's size so
each task runs about ``TARGET_SECONDS``: the first batches are single items (a slow function is then
spread over every thread from the start), later ones grow or shrink with the measured time per item.

>>> sizer = BatchSizer()
>>> sizer.next_size(threads=2, remaining=10_000)    # nothing measured yet: probe with one item
1
>>> sizer.record(items=1, seconds=0.001)            # 1 ms an item: 150 make a 150 ms task
>>> sizer.next_size(threads=2, remaining=10_000)
150
"""

from __future__ import annotations

import asyncio
import inspect
import math
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from prefect_remote.cluster.output import captured_output

TARGET_SECONDS = 0.15  # a batch's run time: long enough to amortise a task's overhead, short enough to balance
MIN_SECONDS = 0.02  # the last batches shrink to spread the rest over the threads, but not below this much work
MAX_BATCH = 5_000  # items in one task, at most
MAX_BATCH_BYTES = 32 * 2**20  # estimated bytes of a batch's inputs or values, at most
MAX_IN_FLIGHT = 20_000  # items submitted and not yet handed to the caller, at most (bounds the caller's memory)
DECAY = 0.5  # weight of older measurements: recent batches count most (a first call's warm-up fades)


def check_batch_size(batch_size: Any) -> int | None:
    """``None`` for ``"auto"``, else the fixed number of items per task; anything else is a ValueError."""
    if batch_size == "auto" and isinstance(batch_size, str):
        return None
    if isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size >= 1:
        return batch_size
    raise ValueError(
        f"batch_size={batch_size!r}: expected 'auto' (sized from measured run times, the default) or a whole number of items per "
        "task, 1 or more"
    )


@dataclass
class BatchSizer:
    """How many items the next task gets, from the measured time and size per item.

    ``fixed`` pins the size. Otherwise: one item until a batch has been measured, then enough items for
    ``target`` seconds, bounded by ``max_size``, by ``max_bytes`` of inputs or values, by a share of
    the in-flight ``window`` that leaves every thread two batches, and by the remaining items spread
    over the threads (the last batches shrink so no thread idles while one finishes a large one, down
    to ``min_seconds`` of work, below which a task's overhead would dominate).

    >>> BatchSizer(fixed=100).next_size(threads=4, remaining=None)
    100
    """

    fixed: int | None = None
    target: float = TARGET_SECONDS
    min_seconds: float = MIN_SECONDS
    max_size: int = MAX_BATCH
    max_bytes: int = MAX_BATCH_BYTES
    window: int = MAX_IN_FLIGHT
    measured: int = 0  # batches measured so far
    _seconds: float = field(default=0.0, repr=False)  # decayed totals: seconds and items measured
    _items: float = field(default=0.0, repr=False)
    _bytes_per_item: float = field(default=0.0, repr=False)

    def record(self, items: int, seconds: float, nbytes: int = 0) -> None:
        """A finished batch: ``items`` took ``seconds`` on the worker and came to ``nbytes``."""
        if items < 1:
            return
        self._seconds = self._seconds * DECAY + max(seconds, 0.0)
        self._items = self._items * DECAY + items
        self.record_bytes(items, nbytes)
        self.measured += 1

    def record_bytes(self, items: int, nbytes: int) -> None:
        """Inputs or values of ``items`` came to ``nbytes``: the larger per-item size bounds batches."""
        if items >= 1:
            self._bytes_per_item = max(self._bytes_per_item * DECAY, nbytes / items)

    @property
    def seconds_per_item(self) -> float | None:
        return self._seconds / self._items if self._items else None

    @property
    def in_flight_limit(self) -> int:
        """Items allowed in flight: the window, or two fixed batches when they are larger."""
        return max(self.window, 2 * (self.fixed or 0))

    def next_size(self, threads: int, remaining: int | None) -> int:
        """The next batch's size, with ``threads`` worker threads and ``remaining`` items left (None: unknown)."""
        threads = max(threads, 1)
        if self.fixed is not None:
            return self.fixed
        per_item = self.seconds_per_item
        if per_item is None:
            return 1
        per_item = max(per_item, 1e-9)
        size = min(self.target / per_item, self.max_size, self.window / (2 * threads))
        if self._bytes_per_item:
            size = min(size, self.max_bytes / self._bytes_per_item)
        if remaining is not None:
            size = min(size, max(math.ceil(remaining / threads), self.min_seconds / per_item), remaining)
        return max(1, int(size + 1e-6))  # (15.0 computed as 14.999... is 15)

    def may_submit(self, size: int, items_in_flight: int, batches_in_flight: int, threads: int) -> bool:
        """Whether a batch of ``size`` may go now: the window has room for it and, until a batch has been
        measured, only two probes per thread are out."""
        if batches_in_flight == 0:
            return True
        if self.fixed is None and not self.measured and batches_in_flight >= 2 * max(threads, 1):
            return False
        return items_in_flight + size <= self.in_flight_limit


@dataclass
class BatchResult:
    """What a batch task returns: one value per item (``None`` where it failed), the failed items'
    exceptions by position (their remote tracebacks attached), the items' run time and values' size."""

    values: list[Any]
    errors: dict[int, BaseException]
    seconds: float
    nbytes: int

    def items(self, skip_errors: bool) -> Iterator[Any]:
        """The values in input order; a failed item raises its exception, or is left out when skipping."""
        if not self.errors:
            yield from self.values
            return
        for position, value in enumerate(self.values):
            error = self.errors.get(position)
            if error is None:
                yield value
            elif not skip_errors:
                raise error


class BatchCall:
    """What a batch task runs on a worker: the user's function over each item in turn, each retried up
    to ``retries`` times, with what it prints forwarded to the caller. ``clock`` times the batch. Items
    are single arguments, or tuples of positional arguments with ``unpack=True`` (several iterables).

    >>> BatchCall(lambda x, k=0: x + k)([1, 2], {"k": 10}, retries=0).values
    [11, 12]
    >>> BatchCall(lambda x, y: x * y)([(1, 2), (3, 4)], {}, retries=0, unpack=True).values
    [2, 12]
    """

    def __init__(self, func: Callable[..., Any], clock: Callable[[], float] = time.perf_counter) -> None:
        self.func, self.clock = func, clock
        self.is_async = inspect.iscoroutinefunction(func)

    def __call__(self, items: list[Any], kwargs: dict[str, Any], retries: int, unpack: bool = False) -> BatchResult:
        from dask.sizeof import sizeof

        values: list[Any] = []
        errors: dict[int, BaseException] = {}
        func = self.func
        call = (lambda item: func(*item, **kwargs)) if unpack else (lambda item: func(item, **kwargs))
        with captured_output(), self._runner() as run:
            started = self.clock()  # the items' time only: the batch's own set-up is not theirs
            for position, item in enumerate(items):
                for attempt in range(retries + 1):
                    try:
                        values.append(run(call, item))
                        break
                    except BaseException as error:  # any failure is this item's, not the batch's
                        if attempt == retries:
                            values.append(None)
                            errors[position] = portable(error)
            seconds = self.clock() - started
        return BatchResult(values, errors, seconds, sizeof(values))

    @contextmanager
    def _runner(self) -> Iterator[Callable[[Callable[[Any], Any], Any], Any]]:
        if not self.is_async:
            yield lambda call, item: call(item)
            return
        with asyncio.Runner() as runner:  # one event loop for the whole batch, not one per item
            yield lambda call, item: runner.run(call(item))

    def __reduce__(self):
        return BatchCall, (self.func, self.clock)


def portable(error: BaseException) -> BaseException:
    """``error`` ready to travel to the caller with its traceback; an exception that cannot be pickled
    becomes a RuntimeError carrying its type, message and traceback as text."""
    import tblib.pickling_support
    from distributed.protocol import pickle

    tblib.pickling_support.install(error)
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        text = "".join(traceback.format_exception(error))
        return RuntimeError(f"{type(error).__name__}: {error} (the exception could not be pickled; its traceback follows)\n{text}")


__all__ = ["BatchCall", "BatchResult", "BatchSizer", "check_batch_size"]
