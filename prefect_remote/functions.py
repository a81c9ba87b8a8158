"""``@prefect_remote.function``: run a Python function on machines, one call or many.

>>> @function(cpu=2, memory="4 GiB", n_workers=[0, 20], keepalive="5 minutes")  # doctest: +SKIP
... def simulate(trial: int, group: str = "A") -> float:
...     return trial * 2.0
>>> simulate(3)                                          # runs remotely, blocks  # doctest: +SKIP
6.0
>>> list(simulate.map(range(1000), group="B"))            # fans out; results in input order  # doctest: +SKIP

Calls run on a :class:`~prefect_remote.cluster.remote.RemoteCluster` made (or found warm) for the
function's spec; functions with the same spec share it. ``.map``'s engine (batches, the in-flight
window, results in order) is :mod:`prefect_remote.cluster.mapping`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import queue
import sys
import threading
import uuid
from collections.abc import Callable, Iterable
from typing import Any, Generic, Literal, ParamSpec, TypeVar, Unpack

from prefect_remote.cluster.batching import BatchCall, check_batch_size
from prefect_remote.cluster.mapping import MapResults
from prefect_remote.cluster.options import ClusterArguments, ClusterOptionError, ClusterOptions, takes_cluster_arguments
from prefect_remote.cluster.output import OUTPUT_TOPIC, RemoteCall
from prefect_remote.on_machine import MACHINE_ID_ENV

P = ParamSpec("P")
R = TypeVar("R")

_DONE = object()


# One cluster and client per cluster name in this process: functions with the same spec share them.
_clusters: dict[str, Any] = {}
_clients: dict[str, Any] = {}
_routes: dict[str, queue.SimpleQueue] = {}  # task key -> the queue of the caller waiting on it
_lock = threading.RLock()


def _on_output(event: tuple[float, dict[str, str]]) -> None:
    """Remote output arrives here (the client's event thread): to the waiting caller, else stdout."""
    _, message = event
    route = _routes.get(message.get("key", ""))
    if route is not None:
        route.put(message)
    else:
        (sys.stderr if message.get("stream") == "stderr" else sys.stdout).write(message["text"])


class Function(Generic[P, R]):
    """A function that runs on machines. Call it (``f(x)``, blocks), ``.submit`` it (a Dask future) or
    ``.map`` it (an iterator of results); ``.cluster`` and ``.client`` are the Dask objects behind it.
    Made by :func:`function`."""

    def __init__(self, func: Callable[P, R], options: ClusterOptions, *, local: bool = False) -> None:
        functools.update_wrapper(self, func)
        self._remote = RemoteCall(func)
        self._batch = BatchCall(func)  # what .map runs: several items per task
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
        """The cluster's name, derived from the spec and the software environment (for which this
        environment is captured on first use, when automatic package sync applies)."""
        return f"local-{self.__name__}" if self._local else self._options.with_software().cluster_name

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
            from prefect_remote.cluster.local import start_local_cluster

            return start_local_cluster(options)  # workers never re-run an unguarded __main__
        from prefect_remote.cluster.remote import RemoteCluster

        options = options.with_software()
        if not options.start_workers:  # the first call is coming: boot one worker beside the scheduler, not after it
            options = dataclasses.replace(options, start_workers=min(1, options.maximum))
        # Left to its keepalive when this process exits, for the next process to find warm; but no
        # other process can attach to one made on a machine (a flow run's: its credentials live in
        # the machine's home), so that one is shut down on exit.
        return RemoteCluster(options=options, shutdown_on_close=bool(os.environ.get(MACHINE_ID_ENV)))

    @property
    def client(self):
        """A :class:`distributed.Client` connected to :attr:`cluster` (shared by functions on it)."""
        from distributed import Client

        with _lock:
            cluster = self.cluster
            client = _clients.get(self.cluster_name)
            if client is None or client.status in ("closing", "closed"):
                client = _clients[self.cluster_name] = Client(cluster, set_as_default=False)
                client.subscribe_topic(OUTPUT_TOPIC, _on_output)  # (the cluster's events: RemoteCluster logs them)
            return client

    def close(self) -> None:
        """Ends the cluster behind this function now (with every function sharing it) instead of
        after its keepalive; the next call starts a new one.

        >>> double.close()  # doctest: +SKIP
        """
        with _lock:
            client = _clients.pop(self.cluster_name, None)
            cluster = _clusters.pop(self.cluster_name, None)
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()

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
        batch_size: int | Literal["auto"] = "auto",
        progress: bool | None = None,
        **kwargs: Any,
    ) -> MapResults:
        """Runs the function once per item (zipping several iterables, like :func:`map`); returns an
        iterator at once while calls run on the cluster. Keyword arguments go whole to every call.

        Items travel in batches, one Dask task each, so small calls do not pay a task's overhead
        each: ``batch_size="auto"`` sizes batches from their measured run time (single items first,
        then about 150 ms of work per task, smaller near the end so every thread stays busy), a
        number fixes it. Everything else is per item: results come in input order, or batch by batch
        as they finish with ``ordered=False``; each call is retried up to ``retries`` times; a call
        that still fails raises here (``errors="raise"``: the first failure in input order, among the
        batches finished so far with ``ordered=False``; the rest are cancelled) or is left out
        (``errors="skip"``); the progress bar (shown when stderr is a terminal, or with
        ``progress=True``) counts items. Inputs are read as batches go out, at most 20,000 items ahead
        of the loop, so a generator is consumed lazily.

        Example::

            for result in simulate.map(range(100_000), group="B", errors="skip"):
                ...
        """
        if not iterables:
            raise TypeError(f"{self.__name__}.map() needs at least one iterable of inputs, e.g. {self.__name__}.map(range(10))")
        for position, iterable in enumerate(iterables):
            if not isinstance(iterable, Iterable) or isinstance(iterable, (str, bytes)):
                raise TypeError(f"{self.__name__}.map(): argument {position + 1} is a {type(iterable).__name__}, not an iterable of inputs")
        _check_retries(retries)
        if errors not in ("raise", "skip"):
            raise ValueError(f"errors={errors!r}: expected 'raise' (stop at the first failure) or 'skip' (leave failures out)")
        fixed_size = check_batch_size(batch_size)
        return MapResults(
            self, iterables, kwargs, retries=retries, errors=errors, ordered=ordered, batch_size=fixed_size, progress=progress
        )


def _print_remote(message: dict[str, str]) -> None:
    stream = sys.stderr if message.get("stream") == "stderr" else sys.stdout
    for line in message["text"].splitlines():
        print(line, file=stream)


def _check_retries(retries: int | None) -> None:
    if retries is not None and (not isinstance(retries, int) or isinstance(retries, bool) or retries < 0):
        raise ValueError(f"retries={retries!r}: expected 0 or more")


@takes_cluster_arguments(threads_per_worker=1)
def function(
    func: Callable[P, R] | None = None,
    *,
    name: str | None = None,
    local: bool = False,
    **arguments: Unpack[ClusterArguments],
) -> Any:
    """Decorates a function to run on machines with the hardware and software asked for.

    Everything is validated here, at decoration time, and nothing starts until the first call.
    ``n_workers`` is a fixed count or ``[min, max]`` adaptive bounds (default ``[0, 500]``);
    ``keepalive`` is how long the machines outlive this process (warm start for the next one);
    ``idle_timeout`` ends them after that long without work. ``local=True`` runs on a
    :class:`distributed.LocalCluster` with the same semantics, for debugging.

    Called on a machine (in a flow run deployed to a ``remote:push`` pool), it launches on that
    machine's provider with its launcher's settings, runs the flow run's own software environment,
    and its cluster ends when the flow run's process does.

    The machines run the ``software`` environment named. With neither ``software`` nor
    ``image``, on a provider whose machines do not share this host's interpreter (every cloud),
    this environment (packages, local packages as wheels, the code under the working directory) is
    captured by automatic package sync at the first call and they run that, without the
    distributions ``package_sync_ignore`` lists; the capture is reused while nothing in it changes
    (see :mod:`prefect_remote.software.auto`). On the local provider they run this interpreter, unless
    ``package_sync=True``; ``package_sync=False`` never captures.

    Example::

        @prefect_remote.function(cpu=2, memory="4 GiB", n_workers=[0, 20], keepalive="5 minutes")
        def simulate(trial: int) -> float:
            ...

        simulate(1)                                   # one call, on a machine
        list(simulate.map(range(1000), retries=3))    # fan out, results in order
    """
    if not isinstance(local, bool):
        raise ClusterOptionError(f"local={local!r}: expected True or False")
    options = ClusterOptions.build(name=name, **arguments)

    def decorate(target: Callable[P, R]) -> Function[P, R]:
        if not callable(target):
            raise TypeError(f"prefect_remote.function decorates a function, not {type(target).__name__}")
        return Function(target, options, local=local)

    return decorate(func) if func is not None else decorate


__all__ = ["Function", "MapResults", "function"]
