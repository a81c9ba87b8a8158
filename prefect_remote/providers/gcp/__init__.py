"""Google Cloud: Cloud Run jobs for single machines, Compute Engine VMs for clusters (``provider="gcp"``,
the ``gcp`` extra).

``provider`` is the client side (``GCPProvider``), ``service`` what each service implements
(``GCPService``: ``cloudrun``, ``compute``) and the label vocabulary, ``runtime`` the machine side
(``GCPRuntime``, standard library at import); ``options`` are the provider's options, ``clients``
makes the google-cloud clients, ``records`` keeps leases and end records in the store, ``secrets``
uses Secret Manager, ``logs`` Cloud Logging, ``cloudrun_catalog`` and ``compute_catalog`` (with
``prices``) know the shapes, ``infra`` sets up a project. Nothing is imported eagerly here: the
machine side imports ``runtime`` without pydantic.
"""

from typing import Any

__all__ = ["GCPOptions", "GCPProvider", "GCPService"]


def __getattr__(name: str) -> Any:  # the client side's names, imported on first use
    if name == "GCPOptions":
        from prefect_remote.providers.gcp.options import GCPOptions

        return GCPOptions
    if name == "GCPProvider":
        from prefect_remote.providers.gcp.provider import GCPProvider

        return GCPProvider
    if name == "GCPService":
        from prefect_remote.providers.gcp.service import GCPService

        return GCPService
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
