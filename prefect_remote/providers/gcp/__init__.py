"""Google Cloud: Cloud Run jobs for single machines, Compute Engine VMs for clusters (``provider="gcp"``)."""

from prefect_remote.providers.gcp.options import GCPOptions
from prefect_remote.providers.gcp.provider import GCPProvider, GCPService

__all__ = ["GCPOptions", "GCPProvider", "GCPService"]
