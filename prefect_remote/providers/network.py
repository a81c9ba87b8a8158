"""The network policy every cloud shares: the ports a cluster's scheduler listens on, and who may
reach them from outside the provider's network (``allow_ingress_from``).

Each cloud admits :data:`DASK_PORTS` with one rule per source (an AWS security group, a GCP firewall
rule), so that asking for ``"everyone"`` once never opens other machines; what a source admits is
decided here (:func:`ingress_cidr`). ``"me"`` is this launcher's public IP address, asked of
:data:`CHECKIP_URL` and kept a few minutes (:func:`public_ip`): a laptop changes networks, and a
lookup that failed is asked again at the next launch.

>>> outside = lambda: False
>>> ingress_cidr("10.1.0.0/16", runs_inside=outside, known_ip=None, known_ip_setting="PREFECT_REMOTE_AWS_PUBLIC_IP")
'10.1.0.0/16'
>>> ingress_cidr("me", runs_inside=outside, known_ip="203.0.113.7", known_ip_setting="PREFECT_REMOTE_AWS_PUBLIC_IP")
'203.0.113.7/32'
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
import urllib.request
from collections.abc import Callable

logger = logging.getLogger(__name__)

DASK_PORTS = (8786, 8787)  # a cluster's scheduler and its dashboard
EVERYONE = "0.0.0.0/0"
CHECKIP_URL = "https://checkip.amazonaws.com"
PUBLIC_IP_TTL = 300.0  # seconds a found address is kept; a failed lookup is not kept at all

_found: dict[str, tuple[float, str]] = {}  # checkip URL -> (when found, the address)
_lookup = threading.Lock()


def public_ip(url: str = CHECKIP_URL, timeout: float = 3.0, *, clock: Callable[[], float] = time.monotonic) -> str | None:
    """This launcher's public IPv4 address as ``url`` sees it, asked again once it is
    :data:`PUBLIC_IP_TTL` seconds old; ``None`` if it cannot be found (not kept: the next call asks)."""
    with _lookup:
        found = _found.get(url)
        if found is not None and clock() - found[0] < PUBLIC_IP_TTL:
            return found[1]
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                address = str(ipaddress.IPv4Address(response.read().decode().strip()))
        except (OSError, ValueError):
            _found.pop(url, None)
            return None
        _found[url] = (clock(), address)
        return address


def ingress_cidr(
    source: str,
    *,
    runs_inside: Callable[[], bool],
    known_ip: str | None,
    known_ip_setting: str,
    inside_range: Callable[[], str | None] = lambda: None,
) -> str | None:
    """The CIDR that ``source`` (an ``allow_ingress_from`` value) admits to the Dask ports; None for
    nobody from outside the network. ``"everyone"`` is 0.0.0.0/0, ``"none"`` nobody, a CIDR itself,
    and ``"me"`` this launcher:

    - when it runs inside the provider's network (``runs_inside()``, asked only for ``"me"``: a flow
      run that scales out from its machine), ``inside_range()``: the range it connects from where the cloud's internal rule does not admit
      it already (GCP: a Cloud Run task's address comes from the subnetwork, and no network tag
      marks it), else None;
    - elsewhere its public IP: ``known_ip`` (the ``known_ip_setting`` setting), else asked of
      checkip; None, with a warning saying what to set, if it cannot be found.
    """
    if source == "everyone":
        return EVERYONE
    if source == "none":
        return None
    if source != "me":
        return source
    if runs_inside():
        return inside_range()
    address = known_ip or public_ip(CHECKIP_URL)
    if address is None:
        logger.warning(
            "could not find this computer's public IP (%s unreachable): machines get no ingress to the Dask ports; "
            "set %s or pass allow_ingress_from as a CIDR",
            CHECKIP_URL,
            known_ip_setting,
        )
        return None
    return str(ipaddress.ip_network(address, strict=False))  # a bare address becomes /32 (or /128)
