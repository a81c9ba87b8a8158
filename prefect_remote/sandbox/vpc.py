"""A sandbox cloud's VPC network, as the clouds have it: instances reach each other at their private
addresses, this host (the launcher, a laptop outside the cloud) reaches only their public ones, and
each instance admits only what its security groups (or firewall rules) allow.

Each instance's machine has two links. ``eth0`` is on the local provider's host-only bridge, where
this host is too: its address there is the instance's *public* address (and its way out, to the
cloud's endpoints and the package index). ``eth1`` is on this VPC's bridge, which has no address on
this host: its address there is the instance's *private* one (moto's private IP, Compute Engine's
``networkIP``), with the VPC's prefix, so that only other instances of the VPC reach it. Its cloud's
ingress rules become an nftables ruleset in the instance's namespace (:func:`ruleset`): stateful,
everything else dropped, a CIDR rule matching its sources on either address and a rule naming a
group (or a network tag) matching the members' private addresses only, as on AWS and GCP.

>>> print(ruleset([Ingress("tcp", (8786, 8787), ("203.0.113.7/32",))]))  # doctest: +ELLIPSIS
table inet sandbox_ingress
...
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

logger = logging.getLogger(__name__)

TABLE = "sandbox_ingress"


@dataclass(frozen=True)
class Ingress:
    """One ingress rule as a cloud states it: ``protocol`` (``tcp``, ``udp``, ``icmp``, ``all`` or a
    number), ``ports`` (first and last; None: all) and the ``sources`` it admits (CIDRs, or the
    private addresses of a group's members). A rule with no source admits nobody."""

    protocol: str
    ports: tuple[int, int] | None
    sources: tuple[str, ...]


def ruleset(rules: Iterable[Ingress], *, enforced: bool = True) -> str:
    """The nftables ruleset (one transaction, replacing the previous one) that admits what ``rules``
    admit to an instance, and replies to its own connections; everything when not ``enforced``."""
    lines = [f"table inet {TABLE}", f"delete table inet {TABLE}", f"table inet {TABLE} {{", "  chain input {"]
    lines.append(f"    type filter hook input priority 0; policy {'drop' if enforced else 'accept'};")
    lines += ["    ct state established,related accept", '    iif "lo" accept']
    for rule in rules:
        match = _protocol_match(rule)
        for source in sorted(set(rule.sources)):  # one line each: a set would refuse overlapping CIDRs
            lines.append(f"    {'ip6' if ':' in source else 'ip'} saddr {source} {match}accept")
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def _protocol_match(rule: Ingress) -> str:
    protocol = rule.protocol.lower()
    if protocol in ("all", "-1"):
        return ""
    if protocol in ("tcp", "udp") and rule.ports is not None:
        low, high = rule.ports
        return f"{protocol} dport {low if low == high else f'{low}-{high}'} "
    return f"meta l4proto {protocol} "


def private_interface(address: str, network: str) -> str:
    """``address`` with ``network``'s prefix (``172.31.5.6/16``): the instance reaches the whole VPC on its link."""
    return f"{address}/{ipaddress.ip_network(network, strict=False).prefixlen}"


# A VPC's bridge is named after the process that made it ("prvpc" + its pid in 7 hex digits + a count):
# a process killed before its sandbox closed leaves its bridge, and the next VPC made removes it.
BRIDGE = re.compile(r"prvpc(?P<pid>[0-9a-f]{7})[0-9a-f]+")
_made = itertools.count()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: alive
        pass
    return True


class VPC:
    """The bridge a sandbox cloud's instances have their private addresses on (one per sandbox, so
    that sandboxes of other processes, whose clouds give out the same addresses, never meet it),
    and whether their ingress rules are enforced (``enforced``; :meth:`enforcing` for one test)."""

    def __init__(self) -> None:
        self.bridge = f"prvpc{os.getpid():07x}{next(_made):x}"  # (15 characters at most: Linux's limit)
        self.enforced = True
        self.firewalls = shutil.which("nft") is not None  # nftables' command, which enforces the rules
        self._applied: dict[str, str] = {}  # namespace -> the ruleset it holds

    def create(self) -> None:
        """Makes the bridge, with no address on this host: the host cannot send to private addresses.
        The bridges of VPCs whose process has died go first."""
        links = subprocess.run(["ip", "-o", "link", "show", "type", "bridge"], capture_output=True, text=True).stdout
        for name in re.findall(r"^\d+: (prvpc[0-9a-f]+)", links, re.MULTILINE):
            if (made := BRIDGE.fullmatch(name)) and not _alive(int(made["pid"], 16)):
                with contextlib.suppress(subprocess.CalledProcessError):
                    _ip("link", "del", name)
        _ip("-batch", "-", batch=f"link add {self.bridge} type bridge\nlink set {self.bridge} up\n")
        if not self.firewalls:
            logger.warning("sandbox: no 'nft' command (Debian: apt-get install nftables): ingress rules are not enforced")

    def remove(self) -> None:
        """Deletes the bridge (the machines' links on it are gone by then, or go with it)."""
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("link", "del", self.bridge)
        self._applied.clear()

    def link(self, address: str, rules: Iterable[Ingress]) -> dict[str, str]:
        """A :class:`~prefect_remote.providers.local.isolation.PrivateLink`'s fields for an instance
        with private ``address`` (``a.b.c.d/prefix``) and ingress ``rules``, for its machine's record."""
        return {"bridge": self.bridge, "address": address, "firewall": ruleset(rules, enforced=self.enforced) if self.firewalls else None}

    def apply(self, netns: str, rules: Iterable[Ingress]) -> None:
        """Gives namespace ``netns`` the ruleset of ``rules`` unless it holds it already."""
        from prefect_remote.providers.local.isolation import apply_firewall

        wanted = ruleset(rules, enforced=self.enforced)
        if self.firewalls and self._applied.get(netns) != wanted:
            apply_firewall(netns, wanted)
            self._applied[netns] = wanted

    def forget(self, netns: str) -> None:
        self._applied.pop(netns, None)

    @contextlib.contextmanager
    def enforcing(self, on: bool) -> Iterator[None]:
        """Within the block ingress rules are enforced (``on``) or every connection is admitted (the
        instance runner's next round applies it)."""
        before, self.enforced = self.enforced, on
        try:
            yield
        finally:
            self.enforced = before


def _ip(*args: str, batch: str | None = None) -> None:
    subprocess.run(["ip", *args], input=batch, capture_output=True, text=True, check=True)
