"""Google Cloud: Cloud Run jobs for single machines, Compute Engine VMs for clusters (``provider="gcp"``,
the ``gcp`` extra).

``provider`` is the client side (``GCPProvider`` and the ``GCPService`` each service implements:
``cloudrun``, ``compute``), ``runtime`` the machine side (``GCPRuntime``, standard library at
import); ``clients`` makes the google-cloud clients, ``records`` keeps leases and end records in the
store, ``secrets`` uses Secret Manager, ``logs`` Cloud Logging, ``infra`` sets up a project. Nothing
is imported eagerly here: the machine side imports ``runtime`` without pydantic.
"""

from typing import Any

__all__ = ["GCPOptions", "GCPProvider", "GCPService"]


def __getattr__(name: str) -> Any:  # the client side's names, imported on first use
    if name == "GCPOptions":
        from prefect_remote.providers.gcp.options import GCPOptions

        return GCPOptions
    if name in ("GCPProvider", "GCPService"):
        from prefect_remote.providers.gcp import provider

        return getattr(provider, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
