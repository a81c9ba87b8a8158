"""Forwarding what remote functions print to the process that called them.

On a worker, ``sys.stdout``/``sys.stderr`` become routers: a thread running a captured call writes
to the machine log as usual *and* sends each line to the clients as an event (``OUTPUT_TOPIC``),
tagged with the task's key; other threads write as before. Several tasks of one worker run in
threads at once, so the capture is per thread.

:class:`RemoteCall` (a function's call) and :class:`~prefect_remote.cluster.batching.BatchCall` (a
batch of its map) are what workers unpickle: they and this module import only the standard
library, so a cluster's image needs no more than Dask (tests/cluster/test_image.py).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

OUTPUT_TOPIC = "prefect-remote-output"

_capturing = threading.local()
_install_lock = threading.Lock()


class _Router:
    def __init__(self, stream_name: str, original: TextIO) -> None:
        self.stream_name = stream_name
        self.original = original

    def write(self, text: str) -> int:
        written = self.original.write(text)
        capture = getattr(_capturing, "capture", None)
        if capture is not None and text:
            capture.add(self.stream_name, text)
        return written

    def flush(self) -> None:
        self.original.flush()
        capture = getattr(_capturing, "capture", None)
        if capture is not None:
            capture.flush()

    def __getattr__(self, name: str):
        return getattr(self.original, name)


class _Capture:
    def __init__(self, worker, key: str) -> None:
        self.worker, self.key = worker, key
        self.pending: dict[str, str] = {}

    def add(self, stream: str, text: str) -> None:
        buffered = self.pending.get(stream, "") + text
        complete, _, rest = buffered.rpartition("\n")
        self.pending[stream] = rest
        if complete:
            self._send(stream, complete + "\n")

    def flush(self) -> None:
        for stream, text in list(self.pending.items()):
            if text:
                self.pending[stream] = ""
                self._send(stream, text)

    def _send(self, stream: str, text: str) -> None:
        self.worker.log_event(OUTPUT_TOPIC, {"key": self.key, "stream": stream, "text": text})


def _install() -> None:
    with _install_lock:
        if not isinstance(sys.stdout, _Router):
            sys.stdout = _Router("stdout", sys.stdout)
        if not isinstance(sys.stderr, _Router):
            sys.stderr = _Router("stderr", sys.stderr)


@contextmanager
def captured_output() -> Iterator[None]:
    """Inside a Dask task, forwards the calling thread's output to the clients; elsewhere does nothing."""
    try:
        from distributed import get_worker

        worker = get_worker()
        key = worker.get_current_task()
    except (ValueError, ImportError):
        yield
        return
    _install()
    capture = _Capture(worker, str(key))
    _capturing.capture = capture
    try:
        yield
    finally:
        _capturing.capture = None
        capture.flush()


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
