"""``@prefect_remote.function``: run a Python function on machines, one call or many.

>>> @function(cpu=2, memory="4 GiB", n_workers=[0, 20], keepalive="5 minutes")  # doctest: +SKIP
... def simulate(trial: int, group: str = "A") -> float:
...     return trial * 2.0
>>> simulate(3)                                          # runs remotely, blocks  # doctest: +SKIP
6.0
>>> list(simulate.map(range(1000), group="B"))            # fans out; results in input order  # doctest: +SKIP

Calls run on a :class:`~prefect_remote.cluster.remote.RemoteCluster` made (or found warm) for the
function's spec; functions with the same spec share it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import itertools
import logging
import os
import queue
import sys
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, Literal, ParamSpec, TypeVar

from prefect_remote.cluster.options import ClusterOptionError, ClusterOptions
from prefect_remote.cluster.output import OUTPUT_TOPIC, captured_output

P = ParamSpec("P")
R = TypeVar("R")

FIRST_BATCH = 100  # items submitted at once first, so work starts right away
BATCH = 1000  # then per submission round-trip
MAX_PENDING_BATCHES = 20  # submitted ahead of the consumer, at most
SCATTER_OVER = 100_000  # bytes: keyword arguments larger than this are sent to the cluster once
_DONE = object()


class RemoteCall:
    """What runs on a worker: the user's function (awaited when async), with its output forwarded."""

    def __init__(self, func: Callable[..., Any]) -> None:
        self.func = func
        self.is_async = inspect.iscoroutinefunction(func)
        functools.update_wrapper(self, func)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with captured_output():
            if self.is_async:
                return asyncio.run(self.func(*args, **kwargs))
            return self.func(*args, **kwargs)

    def __reduce__(self):
        return RemoteCall, (self.func,)


# One cluster and client per cluster name in this process: functions with the same spec share them.
_clusters: dict[str, Any] = {}
_clients: dict[str, Any] = {}
_routes: dict[str, queue.SimpleQueue] = {}  # task key -> the queue of the caller waiting on it
_lock = threading.RLock()
cluster_logger = logging.getLogger("prefect_remote.cluster")


def _on_output(event: tuple[float, dict[str, str]]) -> None:
    """Remote output arrives here (the client's event thread): to the waiting caller, else stdout."""
    _, message = event
    route = _routes.get(message.get("key", ""))
    if route is not None:
        route.put(message)
    else:
        (sys.stderr if message.get("stream") == "stderr" else sys.stdout).write(message["text"])


def _on_cluster_event(event: tuple[float, dict[str, str]]) -> None:
    """The controller's scaling events and warnings, into this process's ``prefect_remote.cluster`` logger."""
    _, message = event
    cluster_logger.log(logging.WARNING if message.get("level") == "warning" else logging.INFO, message.get("message"))


class Function(Generic[P, R]):
    """A function that runs on machines. Call it (``f(x)``, blocks), ``.submit`` it (a Dask future) or
    ``.map`` it (an iterator of results); ``.cluster`` and ``.client`` are the Dask objects behind it.
    Made by :func:`function`."""

    def __init__(self, func: Callable[P, R], options: ClusterOptions, *, local: bool = False) -> None:
        functools.update_wrapper(self, func)
        self._remote = RemoteCall(func)
        self._options = options
        self._local = local
        if self._remote.is_async:
            self._is_coroutine = asyncio.coroutines._is_coroutine  # type: ignore[attr-defined]  # asyncio/Prefect see an async function

    def __repr__(self) -> str:
        where = "locally" if self._local else f"on cluster {self.cluster_name}"
        return f"<prefect_remote.Function {self.__name__} ({where})>"

    def __get__(self, instance: Any, owner: Any = None) -> Any:
        return self if instance is None else functools.partial(self, instance)

    # -- the cluster behind it --------------------------------------------------------------------
    @property
    def cluster_name(self) -> str:
        return f"local-{self.__name__}" if self._local else self._options.cluster_name

    @property
    def cluster(self):
        """The Dask cluster this function runs on, started (or attached to) on first use."""
        with _lock:
            cluster = _clusters.get(self.cluster_name)
            if cluster is None or cluster.status.name in ("closing", "closed", "failed"):
                cluster = _clusters[self.cluster_name] = self._start_cluster()
                _clients.pop(self.cluster_name, None)
            return cluster

    def _start_cluster(self):
        options = self._options
        if self._local:
            from distributed import LocalCluster

            cap = os.cpu_count() or 1  # this computer's cores bound the local workers
            cluster = LocalCluster(n_workers=min(options.minimum, cap), threads_per_worker=options.nthreads(cap), dashboard_address=":0")
            if options.adaptive:
                cluster.adapt(minimum=min(options.minimum, cap), maximum=min(options.maximum, cap))
            return cluster
        from prefect_remote.cluster.remote import RemoteCluster

        # The first call is coming: boot one worker beside the scheduler rather than after it.
        boot_options = options if options.start_workers else dataclasses.replace(options, start_workers=min(1, options.maximum))
        return RemoteCluster(options=boot_options, shutdown_on_close=False)

    @property
    def client(self):
        """A :class:`distributed.Client` connected to :attr:`cluster` (shared by functions on it)."""
        from distributed import Client

        with _lock:
            cluster = self.cluster
            client = _clients.get(self.cluster_name)
            if client is None or client.status in ("closing", "closed"):
                client = _clients[self.cluster_name] = Client(cluster, set_as_default=False)
                client.subscribe_topic(OUTPUT_TOPIC, _on_output)
                client.subscribe_topic("prefect-remote", _on_cluster_event)
            return client

    # -- running ----------------------------------------------------------------------------------
    def _key(self) -> str:
        return f"{self.__name__}-{uuid.uuid4().hex}"

    def submit(self, *args: P.args, retries: int | None = None, **kwargs: P.kwargs):
        """Runs one call in the background; returns a :class:`distributed.Future` right away.
        Each call runs, even with arguments identical to another's. ``retries`` reruns a call that
        raised, up to that many times."""
        _check_retries(retries)
        return self.client.submit(self._remote, *args, key=self._key(), retries=retries, pure=False, **kwargs)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Runs the function remotely and returns its result (a coroutine, for async functions).
        What it prints is printed here, in the caller's thread (so Prefect's ``log_prints`` sees it)."""
        if self._remote.is_async:
            return asyncio.to_thread(self._call, *args, **kwargs)  # type: ignore[return-value]
        return self._call(*args, **kwargs)

    def _call(self, *args: Any, **kwargs: Any) -> Any:
        key = self._key()
        route: queue.SimpleQueue = queue.SimpleQueue()
        _routes[key] = route
        try:
            future = self.client.submit(self._remote, *args, key=key, pure=False, **kwargs)
            future.add_done_callback(lambda _: route.put(_DONE))
            while (message := route.get()) is not _DONE:
                _print_remote(message)
            while not route.empty():
                if (message := route.get()) is not _DONE:
                    _print_remote(message)
            return future.result()
        finally:
            _routes.pop(key, None)

    def map(
        self,
        *iterables: Iterable[Any],
        retries: int | None = None,
        errors: Literal["raise", "skip"] = "raise",
        ordered: bool = True,
        batch_size: int | None = None,
        progress: bool | None = None,
        **kwargs: Any,
    ) -> MapResults:
        """Runs the function once per item (zipping several iterables, like :func:`map`); returns an
        iterator at once while calls run on the cluster. Keyword arguments go whole to every call.

        Results come in input order, or as they finish with ``ordered=False``. A call that still fails
        after ``retries`` raises here (``errors="raise"``, and the rest are cancelled) or is left out
        (``errors="skip"``). Inputs are submitted ``batch_size`` at a time; a progress bar shows when
        stderr is a terminal (or ``progress=True``).
        """
        if not iterables:
            raise TypeError(f"{self.__name__}.map() needs at least one iterable of inputs, e.g. {self.__name__}.map(range(10))")
        for position, iterable in enumerate(iterables):
            if not isinstance(iterable, Iterable) or isinstance(iterable, (str, bytes)):
                raise TypeError(f"{self.__name__}.map(): argument {position + 1} is a {type(iterable).__name__}, not an iterable of inputs")
        _check_retries(retries)
        if errors not in ("raise", "skip"):
            raise ValueError(f"errors={errors!r}: expected 'raise' (stop at the first failure) or 'skip' (leave failures out)")
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size={batch_size!r}: expected 1 or more")
        return MapResults(self, iterables, kwargs, retries=retries, errors=errors, ordered=ordered, batch_size=batch_size, progress=progress)


def _print_remote(message: dict[str, str]) -> None:
    stream = sys.stderr if message.get("stream") == "stderr" else sys.stdout
    for line in message["text"].splitlines():
        print(line, file=stream)


def _check_retries(retries: int | None) -> None:
    if retries is not None and (not isinstance(retries, int) or isinstance(retries, bool) or retries < 0):
        raise ValueError(f"retries={retries!r}: expected 0 or more")


class MapResults(Iterator[Any]):
    """The iterator ``Function.map`` returns. Inputs are submitted in batches from a background
    thread; closing the iterator (or leaving a ``for`` loop early) cancels what has not run."""

    def __init__(self, function: Function, iterables, kwargs, *, retries, errors, ordered, batch_size, progress) -> None:
        self.function = function
        self.errors, self.ordered = errors, ordered
        sizes = [len(it) for it in iterables if hasattr(it, "__len__")]  # type: ignore[arg-type]
        self.total = min(sizes) if len(sizes) == len(iterables) else None
        self._batches: queue.Queue = queue.Queue(maxsize=MAX_PENDING_BATCHES)
        self._stop = threading.Event()
        self._submitted: list[Any] = []
        self._results = self._iterate()
        self._progress = _Progress(function.__name__, self.total, progress)
        self._thread = threading.Thread(
            target=self._submit, args=(zip(*iterables), kwargs, retries, batch_size), name=f"prefect-remote-map-{function.__name__}", daemon=True
        )
        self._thread.start()

    def _submit(self, inputs: Iterator[tuple], kwargs: dict[str, Any], retries: int | None, batch_size: int | None) -> None:
        try:
            client = self.function.client
            kwargs = {name: _scatter_if_large(client, value) for name, value in kwargs.items()}
            size = batch_size or FIRST_BATCH
            while not self._stop.is_set():
                batch = list(itertools.islice(inputs, size))
                if not batch:
                    break
                keys = [self.function._key() for _ in batch]
                futures = client.map(self.function._remote, *zip(*batch), key=keys, retries=retries, pure=False, **kwargs)
                self._put(futures)
                size = batch_size or BATCH
        except BaseException as error:  # reaches the consumer, who raises it
            self._put(error)
        finally:
            self._put(_DONE)

    def _put(self, item: Any) -> None:
        while not self._stop.is_set():
            try:
                self._batches.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _next_batch(self):
        item = self._batches.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def _iterate(self) -> Iterator[Any]:
        from distributed import as_completed

        client = self.function.client
        if self.ordered:
            while (futures := self._next_batch()) is not _DONE:
                yield from self._gathered(client, futures)
            return
        pending = as_completed(loop=client.loop)
        done_submitting = False
        while not (done_submitting and pending.count() == 0):
            if not done_submitting:
                # New batches join the race as they are submitted; wait for one only when nothing runs.
                try:
                    item = self._batches.get(timeout=None if pending.count() == 0 else 0.01)
                except queue.Empty:
                    item = None
                if isinstance(item, BaseException):
                    raise item
                if item is _DONE:
                    done_submitting = True
                elif item is not None:
                    pending.update(item)
                    continue
            finished = pending.next_batch(block=done_submitting)
            if finished:
                yield from self._gathered(client, finished)

    def _gathered(self, client, futures: list) -> Iterator[Any]:
        try:
            results = client.gather(futures, errors="skip")
        finally:
            self._progress.advance(len(futures))
        failed = next((i for i, future in enumerate(futures) if future.status == "error"), None) if self.errors == "raise" else None
        if failed is None:
            yield from results
            return
        yield from results[:failed]  # everything before the first failure, in this batch's order
        futures[failed].result()  # raises the remote exception with its remote traceback

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
        self._stop.set()
        self._progress.close()
        self._results.close()  # drops the futures it holds: Dask forgets what nobody waits for
        leftovers = []
        while True:
            try:
                item = self._batches.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, list):
                leftovers.extend(item)
        if leftovers:
            try:
                self.function.client.cancel(leftovers)
            except Exception:
                pass

    def __del__(self) -> None:
        self._stop.set()


def _scatter_if_large(client, value: Any) -> Any:
    """Large keyword arguments go to the cluster once, not inside every task."""
    from dask.sizeof import sizeof

    return client.scatter(value, hash=False) if sizeof(value) > SCATTER_OVER else value


class _Progress:
    """A rich progress bar on stderr, shown when it is a terminal (or when asked)."""

    def __init__(self, name: str, total: int | None, wanted: bool | None) -> None:
        self._bar = None
        if wanted or (wanted is None and sys.stderr.isatty()):
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn(f"{name}.map"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=False)
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


def function(
    func: Callable[P, R] | None = None,
    *,
    software: str | None = None,
    container: str | None = None,
    vm_type: str | list[str] | None = None,
    cpu: int | list[int] | None = None,
    memory: str | list[str] | None = None,
    gpu: bool | int | str | None = None,
    region: str | None = None,
    arm: bool | None = None,
    disk_size: int | str | None = None,
    spot_policy: str | None = None,
    idle_timeout: str | float | None = "24 hours",
    keepalive: str | float = "30 seconds",
    n_workers: int | list[int] | None = None,
    threads_per_worker: int = 1,
    environ: dict[str, Any] | None = None,
    package_sync_ignore: list[str] | None = None,
    tags: dict[str, str] | None = None,
    name: str | None = None,
    local: bool = False,
    allow_ingress_from: str | None = None,
    provider: str | None = None,
) -> Any:
    """Decorates a function to run on machines with the hardware and software asked for.

    Everything is validated here, at decoration time, and nothing starts until the first call.
    ``n_workers`` is a fixed count or ``[min, max]`` adaptive bounds (default ``[0, 500]``);
    ``keepalive`` is how long the machines outlive this process (warm start for the next one);
    ``idle_timeout`` ends them after that long without work. ``local=True`` runs on a
    :class:`distributed.LocalCluster` with the same semantics, for debugging.

    Example::

        @prefect_remote.function(cpu=2, memory="4 GiB", n_workers=[0, 20], keepalive="5 minutes")
        def simulate(trial: int) -> float:
            ...

        simulate(1)                                   # one call, on a machine
        list(simulate.map(range(1000), retries=3))    # fan out, results in order
    """
    if container is not None:
        raise ClusterOptionError(f"container={container!r}: container images are not supported yet; use software= (package sync) instead")
    if package_sync_ignore is not None and (isinstance(package_sync_ignore, str) or not all(isinstance(p, str) for p in package_sync_ignore)):
        raise ClusterOptionError(f"package_sync_ignore={package_sync_ignore!r}: expected a list of package names")
    if not isinstance(local, bool):
        raise ClusterOptionError(f"local={local!r}: expected True or False")
    options = ClusterOptions.build(
        n_workers=n_workers,
        threads_per_worker=threads_per_worker,
        keepalive=keepalive,
        idle_timeout=idle_timeout,
        name=name,
        provider=provider,
        software=software,
        vm_type=vm_type,
        cpu=cpu,
        memory=memory,
        gpu=gpu,
        region=region,
        arm=arm,
        disk_size=disk_size,
        spot_policy=spot_policy,
        environ=environ,
        tags=tags,
        allow_ingress_from=allow_ingress_from,
    )
    def decorate(target: Callable[P, R]) -> Function[P, R]:
        if not callable(target):
            raise TypeError(f"prefect_remote.function decorates a function, not {type(target).__name__}")
        return Function(target, options, local=local)

    return decorate(func) if func is not None else decorate


__all__ = ["Function", "MapResults", "function"]
