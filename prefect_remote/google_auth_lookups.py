"""google-auth's Regional Access Boundary lookup, without urllib3's warnings when it cannot reach Google.

google-auth (2.62+) asks ``iamcredentials.googleapis.com/…/allowedLocations`` in the background for
every service-account credential. It treats a failure as harmless (it logs it at debug and tries
again 15 minutes later), but urllib3 first warns three times about its retries wherever Google is
out of reach: a private endpoint, a subnet without egress, the sandbox. Every Google client that
prefect-remote makes (the gcp provider's, the machines', the gs:// store's) calls :func:`quiet` first.
"""

from __future__ import annotations

import logging


def quiet() -> None:
    """Drops urllib3's retry warnings for the lookup; every other warning stays (idempotent)."""
    logging.getLogger("urllib3.connectionpool").addFilter(_not_a_lookup_retry)  # a logger's filters are a set


def _not_a_lookup_retry(record: logging.LogRecord) -> bool:
    return not (record.levelno == logging.WARNING and "/allowedLocations" in record.getMessage())
