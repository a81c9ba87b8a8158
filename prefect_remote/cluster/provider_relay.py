"""The provider, for a cluster's scheduler that runs in a container image: a relay beside the image.

A cluster with ``image=`` runs Dask's scheduler and workers in the image (the scheduler unpickles
the client's task graphs, so it needs the image's code and the image's Dask). The image need carry
only Python and Dask: the machine's agent bind-mounts its own ``prefect_remote`` package into the
container, read-only (:data:`prefect_remote.machine.container.AGENT_CODE_MOUNT`), and the node's
code imports nothing beyond the standard library and ``distributed``.

The scheduler's controller also launches, lists, renews and ends worker machines, which needs what
the image has no reason to carry (the cloud's SDK, pydantic) and, on the local provider, this
host's own namespaces. So those calls cross the container's wall: the agent runs this module's
:func:`main` beside the payload, outside the image, in its own environment (the creator's
prefect-remote), where it serves them on a Unix socket in the machine's work folder, which the
container sees at the same path. :class:`RelayedProvider` is what the controller calls in the
image. Requests and answers are pickles between two processes of one machine, authenticated with
a key derived from the cluster's TLS key (both sides have it; nobody else does).
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
from multiprocessing.connection import Client, Connection, Listener
from typing import Any

from prefect_remote.cluster.plan import ClusterPlan, launch_workers

RELAY_ENV = "PREFECT_REMOTE_PROVIDER_RELAY"  # the socket's path (relative to the work folder), for the node in the image
SOCKET = "prefect-remote-provider.sock"
CONNECT_TIMEOUT = 60.0  # seconds the node waits for the relay's socket (started beside it by the agent)
# The provider's verbs the controller calls (LeaseKeeper: renew_leases), and its attributes it reads.
CALLS = ("list", "describe", "terminate", "renew_leases", "launch_workers")
ATTRIBUTES = ("name", "lease_interval", "visible_after")


def relay_key(plan: ClusterPlan) -> bytes:
    """The key both sides of the relay prove they hold: derived from the cluster's TLS key."""
    return hashlib.sha256(b"prefect-remote provider relay\0" + plan.credentials.encode()).digest()


class RelayedProvider:
    """The controller's provider in the image: each call goes to the relay beside it (one connection
    per call, so calls from several threads do not wait on each other). Errors come back as raised
    there when this side can unpickle them, else as ``RuntimeError`` naming their type."""

    def __init__(self, address: str, key: bytes, timeout: float = CONNECT_TIMEOUT) -> None:
        self.address, self._key = address, key
        deadline = time.monotonic() + timeout
        while True:
            try:
                attributes = self._call("attributes")
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the provider relay beside this container did not answer at {address} in {timeout:.0f}s") from None
                time.sleep(0.2)
        for name, value in attributes.items():
            setattr(self, name, value)

    def _call(self, verb: str, *args: Any, **kwargs: Any) -> Any:
        with Client(self.address, family="AF_UNIX", authkey=self._key) as connection:
            connection.send((verb, args, kwargs))
            ok, answer = connection.recv()
        if ok:
            return answer
        raise answer

    def __getattr__(self, verb: str) -> Any:
        if verb not in CALLS:
            raise AttributeError(f"{type(self).__name__} relays {', '.join(CALLS)}, not {verb!r}")
        return lambda *args, **kwargs: self._call(verb, *args, **kwargs)


def serve(plan: ClusterPlan, address: str) -> None:
    """Serves the provider's calls for ``plan``'s cluster at ``address`` until killed."""
    from prefect_remote.providers import provider_class

    if plan.store:  # the workers' software environment is in the creator's store, not this machine's default one
        os.environ["PREFECT_REMOTE_STORE"] = plan.store
    provider = provider_class(plan.provider)(**plan.provider_options)
    verbs = {
        "attributes": lambda: {name: getattr(provider, name) for name in ATTRIBUTES},
        "launch_workers": lambda *args, **kwargs: launch_workers(provider, plan, *args, **kwargs),
        **{verb: getattr(provider, verb) for verb in CALLS if verb != "launch_workers"},
    }

    def answer(connection: Connection) -> None:
        with connection:
            verb, args, kwargs = connection.recv()
            try:
                connection.send((True, verbs[verb](*args, **kwargs)))
            except Exception as error:
                connection.send((False, _portable(error)))

    with Listener(address, family="AF_UNIX", authkey=relay_key(plan)) as listener:
        print(f"provider relay for cluster {plan.name} at {address}", flush=True)
        while True:
            try:
                connection = listener.accept()
            except Exception as error:  # (a connection without the key): refused, and the relay goes on
                print(f"provider relay: refused a connection: {error}", flush=True)
                continue
            threading.Thread(target=answer, args=(connection,), daemon=True).start()


def _portable(error: Exception) -> Exception:
    """``error`` where the image can unpickle it: as it is when its class is a builtin or one of
    :mod:`prefect_remote.errors`; else its nearest such base class (``AccessDenied`` for a provider's
    own refusal, so the controller still tells a refusal apart), with its type and message."""
    for kind in type(error).__mro__:
        if kind.__module__ in ("builtins", "prefect_remote.errors"):
            if kind is type(error):
                return error
            try:
                return kind(f"{type(error).__name__}: {error}")
            except Exception:  # (a base class that wants other arguments)
                break
    return RuntimeError(f"{type(error).__name__}: {error}")


def main() -> int:
    from prefect_remote.cluster.plan import PLAN_ENV

    if PLAN_ENV not in os.environ:
        print(f"usage: python -m {__name__} (beside a cluster scheduler's container, with ${PLAN_ENV})", file=sys.stderr)
        return 2
    serve(ClusterPlan.from_environ(), os.environ.get(RELAY_ENV, SOCKET))
    return 0


if __name__ == "__main__":
    sys.exit(main())
