"""The engine behind ``Function.map``: items cut into batches and submitted as room frees up,
results handed back in input order (or as they finish), failures raised or skipped per item.

A background thread (:class:`_Submitter`) reads the inputs only as batches go out, sized by
:class:`~prefect_remote.cluster.batching.BatchSizer` and bounded by its in-flight window, so a
generator is consumed lazily; :class:`MapResults`, the iterator the caller holds, fetches finished
batches several per round trip, measures them for the next batches' size, and reruns a batch that
failed as a whole one item per task. Closing it (or dropping it) cancels what has not run.
"""

from __future__ import annotations

import dataclasses
import itertools
import queue
import sys
import threading
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from prefect_remote.cluster.batching import BatchCall, BatchResult, BatchSizer

SCATTER_OVER = 100_000  # bytes: keyword arguments larger than this are sent to the cluster once
STOP_READING_WITHIN = 5.0  # seconds a closed map waits for its reader to finish the item it is reading
_DONE = object()


class Mapped(Protocol):
    """The function a map runs, as the engine uses it: a :class:`~prefect_remote.functions.Function`."""

    __name__: str
    _batch: BatchCall  # what one task runs: a batch's items in turn

    @property
    def client(self) -> Any:
        """The Dask client of the function's cluster (started on first use)."""

    @property
    def cluster(self) -> Any:
        """The function's cluster."""

    def _key(self) -> str:
        """A new task key."""


@dataclasses.dataclass
class _Batch:
    """A submitted batch: its place among the batches, its task, and its items (kept while in flight,
    which the window bounds, so a batch that fails as a whole can be run again one item per task)."""

    index: int
    future: Any
    items: list[Any]

    @property
    def size(self) -> int:
        return len(self.items)


class _Submitter:
    """Cuts the inputs into batches (sized by ``sizer``) and submits each as one task, from a
    background thread, while the in-flight window has room. Each finished batch, and then ``_DONE``
    (or the exception that stopped submitting), arrives in ``events``; the consumer reports the
    batches it measured (:meth:`measured`) and handed on (:meth:`released`), which frees room.

    It holds no reference to the :class:`MapResults`, so an abandoned iterator is collected (and
    stops the thread), which releases its tasks."""

    def __init__(
        self,
        function: Mapped,
        iterables: tuple[Iterable[Any], ...],
        kwargs: dict[str, Any],
        retries: int,
        sizer: BatchSizer,
        total: int | None,
    ) -> None:
        self.function, self.sizer = function, sizer
        self.unpack = len(iterables) > 1  # items are tuples of arguments; else single arguments (lighter to send)
        self.kwargs, self.retries = kwargs, retries  # (kwargs: large values scattered once submitting starts)
        self.stop = threading.Event()
        inputs = _until(self.stop, zip(*iterables, strict=False) if self.unpack else iter(iterables[0]))
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self.submitted = 0  # batches; final once _DONE is in events
        self._changed = threading.Condition()  # guards the sizer and the in-flight state below
        self._in_flight: dict[int, _Batch] = {}  # submitted, not yet handed on by the consumer
        self._items_in_flight = 0
        self._thread = threading.Thread(
            target=self._run, args=(inputs, kwargs, retries, total), name=f"prefect-remote-map-{function.__name__}", daemon=True
        )
        self._thread.start()

    def _run(self, inputs: Iterator[Any], kwargs: dict[str, Any], retries: int, remaining: int | None) -> None:
        from dask.sizeof import sizeof

        events = self.events
        try:
            client, cluster = self.function.client, self.function.cluster
            kwargs = self.kwargs = {name: _scatter_if_large(client, value) for name, value in kwargs.items()}
            while (size := self._room(cluster, remaining)) and (items := list(itertools.islice(inputs, size))):  # read only now
                batch = _Batch(self.submitted, self.submit(items, kwargs, retries), items)
                future = batch.future
                with self._changed:
                    if self.stop.is_set():  # closed while this one was being submitted
                        client.cancel([future])
                        break
                    self.sizer.record_bytes(len(items), sizeof(items))
                    self._in_flight[batch.index] = batch
                    self._items_in_flight += batch.size
                    self.submitted += 1
                future.add_done_callback(lambda _, batch=batch: events.put(batch))
                remaining = None if remaining is None else remaining - batch.size
        except BaseException as error:  # reaches the consumer, who raises it
            events.put(error)
        finally:
            events.put(_DONE)

    def submit(self, items: list[Any], kwargs: dict[str, Any], retries: int) -> Any:
        """One task running ``items`` in turn on a worker."""
        return self.function.client.submit(self.function._batch, items, kwargs, retries, self.unpack, key=self.function._key(), pure=False)

    def _room(self, cluster: Any, remaining: int | None) -> int | None:
        """Waits until the next batch fits the window; returns its size (None once stopped)."""
        with self._changed:
            while not self.stop.is_set():
                threads = _threads(cluster)
                size = self.sizer.next_size(threads, remaining)
                if self.sizer.may_submit(size, self._items_in_flight, len(self._in_flight), threads):
                    return size
                self._changed.wait(0.1)  # woken when the consumer hands a batch on
        return None

    def measured(self, batch: _Batch, result: BatchResult) -> None:
        """A finished batch's run time and size, for the next batches' size."""
        with self._changed:
            self.sizer.record(batch.size, result.seconds, result.nbytes)
            self._changed.notify()

    def released(self, batch: _Batch) -> None:
        """The consumer has handed ``batch``'s items on: room for more."""
        with self._changed:
            if self._in_flight.pop(batch.index, None) is not None:
                self._items_in_flight -= batch.size
            self._changed.notify()

    def cancel(self) -> None:
        """Stops submitting and cancels every batch not handed on yet. Returns once no more inputs
        are read (or after a few seconds, if the caller's iterable is blocked in producing one)."""
        with self._changed:
            self.stop.set()
            futures = [batch.future for batch in self._in_flight.values()]
            self._in_flight.clear()
            self._items_in_flight = 0
            self._changed.notify()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=STOP_READING_WITHIN)
        if futures:
            try:
                self.function.client.cancel(futures)
            except Exception:  # the client or cluster is already gone: nothing left to cancel
                pass


def _until(stop: threading.Event, items: Iterator[Any]) -> Iterator[Any]:
    """``items`` until ``stop`` is set: a closed map reads no further input, even mid-batch."""
    while not stop.is_set():
        try:
            item = next(items)
        except StopIteration:
            return
        yield item


def _threads(cluster: Any) -> int:
    """The cluster's worker threads now, from its cached scheduler info (no round trip)."""
    workers = (getattr(cluster, "scheduler_info", None) or {}).get("workers", {})
    return sum(worker.get("nthreads", 0) for worker in workers.values())


class MapResults(Iterator[Any]):
    """The iterator ``Function.map`` returns. Items go to the cluster in batches (one task each), cut
    from the inputs by a background thread as room frees up; finished batches are fetched as they
    finish, several per round trip. Closing the iterator (or leaving a ``for`` loop early) cancels
    what has not run."""

    def __init__(
        self,
        function: Mapped,
        iterables,
        kwargs,
        *,
        retries: int | None,
        errors: str,
        ordered: bool,
        batch_size: int | None,
        progress: bool | None,
    ) -> None:
        self.function = function
        self.errors, self.ordered = errors, ordered
        sizes = [len(it) for it in iterables if hasattr(it, "__len__")]  # type: ignore[arg-type]
        self.total = min(sizes) if len(sizes) == len(iterables) else None
        self.sizer = BatchSizer(fixed=batch_size)
        self._progress = _Progress(function.__name__, self.total, progress)
        self._submitter = _Submitter(function, iterables, kwargs, retries or 0, self.sizer, self.total)
        self._results = self._iterate()

    def _finished(self) -> Iterator[list[_Batch]]:
        """Finished batches as they come, all those already waiting at once; ends after the last one."""
        events, submitter = self._submitter.events, self._submitter
        done_submitting, handed = False, 0
        while not (done_submitting and handed == submitter.submitted):
            group, event = [], events.get()  # blocks until a batch finishes or submitting ends
            while True:
                if isinstance(event, BaseException):
                    raise event
                if event is _DONE:
                    done_submitting = True
                else:
                    group.append(event)
                try:
                    event = events.get_nowait()
                except queue.Empty:
                    break
            if group:
                handed += len(group)
                yield group

    def _iterate(self) -> Iterator[Any]:
        client = self.function.client
        waiting: dict[int, tuple[_Batch, BatchResult | None]] = {}  # fetched, waiting for their turn (ordered)
        next_index = 0
        for group in self._finished():
            results = _gather(client, group)
            for batch in sorted(group, key=lambda batch: batch.index):
                if results[batch.index] is not None:
                    self._submitter.measured(batch, results[batch.index])
                waiting[batch.index] = (batch, results[batch.index])
            # In order: the next batches in input order, as far as they have arrived.
            turn = list(itertools.takewhile(waiting.__contains__, itertools.count(next_index))) if self.ordered else sorted(waiting)
            for index in turn:
                batch, result = waiting.pop(index)
                next_index = index + 1
                yield from self._items(batch, result)

    def _items(self, batch: _Batch, result: BatchResult | None, *, counted: bool = False) -> Iterator[Any]:
        """A finished batch's items in input order: a failed item raises (``errors="raise"``) or is left
        out (``"skip"``). The batch is counted and leaves the window first (unless ``counted``)."""
        if not counted:
            self._submitter.released(batch)
            self._progress.advance(batch.size)
        if result is None and batch.size > 1:
            # The task failed as a whole (a value that cannot be sent back, a call that kills its
            # worker): one item's failure must not take its neighbours, so each runs as its own task.
            submitter = self._submitter
            singles = [submitter.submit([item], submitter.kwargs, submitter.retries) for item in batch.items]
            for single in singles:
                try:
                    outcome = single.result()
                except Exception:  # raised again below, or skipped
                    outcome = None
                yield from self._items(_Batch(batch.index, single, [None]), outcome, counted=True)
            return
        if result is None:  # the item's task failed as a whole
            if self.errors == "raise":
                batch.future.result()
            return
        yield from result.items(skip_errors=self.errors == "skip")

    def __iter__(self) -> MapResults:
        return self

    def __next__(self) -> Any:
        try:
            return next(self._results)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stops submitting and cancels calls that have not finished."""
        self._submitter.cancel()
        self._progress.close()
        self._results.close()

    def __del__(self) -> None:
        submitter = getattr(self, "_submitter", None)
        if submitter is not None:
            submitter.stop.set()


def _gather(client, batches: list[_Batch]) -> dict[int, BatchResult | None]:
    """The finished batches' results by index, in one round trip; a batch that failed, or whose
    result cannot be sent back (one value that does not pickle), is None."""
    try:
        return client.gather({batch.index: batch.future for batch in batches}, errors="skip")
    except Exception:  # one batch's value broke the whole fetch: fetch them one by one
        results: dict[int, BatchResult | None] = {}
        for batch in batches:
            try:
                results[batch.index] = batch.future.result()
            except Exception:
                results[batch.index] = None
        return results


def _scatter_if_large(client, value: Any) -> Any:
    """Large keyword arguments go to the cluster once, not inside every task."""
    from dask.sizeof import sizeof

    return client.scatter(value, hash=False) if sizeof(value) > SCATTER_OVER else value


class _Progress:
    """A rich progress bar on stderr, shown when it is a terminal (or when asked)."""

    def __init__(self, name: str, total: int | None, wanted: bool | None) -> None:
        self._bar = None
        if wanted or (wanted is None and sys.stderr.isatty()):
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            columns = (TextColumn(f"{name}.map"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
            self._bar = Progress(*columns, console=Console(stderr=True), transient=False)  # stdout is for the results
            self._task = self._bar.add_task(name, total=total)
            self._bar.start()
        self._done = 0
        self.total = total

    def advance(self, count: int) -> None:
        self._done += count
        if self._bar is not None:
            self._bar.advance(self._task, count)
            if self.total is not None and self._done >= self.total:
                self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
