"""Prefect task runs on cluster workers: one TLS context per CA bundle, not two per task run.

Prefect 3.8's ``SyncPrefectClient`` builds an ``ssl.SSLContext`` from the whole CA bundle each time
one is made, and a task run on a Dask worker makes two (``prefect.context.hydrated_context`` and the
task engine's client context). For short tasks, loading the bundle was a third of a worker's CPU
(measured with py-spy on a 400-task flow). A verified context is not changed once made, so the
workers of a :class:`~prefect_remote.RemoteTaskRunner` share one per CA file (reloaded when the file
changes). Only Prefect's client module sees the shared contexts; the rest of the process does not.

This relies on a private detail of Prefect (its client module calling ``ssl.create_default_context``),
checked by ``tests/cluster/test_prefect_tls.py``; if it changes, nothing is shared and nothing breaks.

>>> from distributed import Client  # doctest: +SKIP
>>> Client(cluster).register_plugin(SharePrefectTLS())  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import os
import ssl
import types
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin


@functools.lru_cache(maxsize=8)
def _verified_context(cafile: str, _mtime_ns: int) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=cafile)


class _SharedContexts(types.SimpleNamespace):
    """The ``ssl`` module as Prefect's client module sees it: verified contexts shared per CA file,
    everything else (including the unverified contexts Prefect changes after making) as usual."""

    def __getattr__(self, name: str) -> Any:
        return getattr(ssl, name)

    @staticmethod
    def create_default_context(purpose: ssl.Purpose = ssl.Purpose.SERVER_AUTH, *, cafile=None, capath=None, cadata=None) -> ssl.SSLContext:
        if cafile and purpose == ssl.Purpose.SERVER_AUTH and capath is None and cadata is None:
            try:
                return _verified_context(os.fspath(cafile), os.stat(cafile).st_mtime_ns)
            except OSError:
                pass  # let ssl raise its own error for a missing file
        return ssl.create_default_context(purpose, cafile=cafile, capath=capath, cadata=cadata)


def share_prefect_tls_contexts() -> bool:
    """Makes Prefect's clients in this process share verified TLS contexts; False (and nothing done)
    if Prefect's client module no longer makes its contexts the way this expects."""
    try:
        from prefect.client import orchestration
    except ImportError:
        return False
    current = getattr(orchestration, "ssl", None)
    if isinstance(current, _SharedContexts):
        return True
    if current is not ssl:
        return False
    orchestration.ssl = _SharedContexts()
    return True


class SharePrefectTLS(WorkerPlugin):
    """A worker plugin: :func:`share_prefect_tls_contexts` on every worker of the cluster."""

    name = "prefect-remote-share-prefect-tls"

    def setup(self, worker) -> None:
        share_prefect_tls_contexts()
