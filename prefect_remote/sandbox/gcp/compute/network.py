"""The sandbox Compute Engine's network: the project's ``default`` network and its subnetwork in the
region (10.128.0.0/20), the network interfaces an instance gets there, and firewall rules (insert,
get, list, patch, delete, validated as Compute Engine validates them).

An instance's ``networkIP`` is its private address on the sandbox's VPC bridge, which this host
cannot reach, and ``natIP`` its machine's address on this host's bridge; the allow rules that apply
to an instance are enforced in its namespace (:meth:`Network.ingress`, :mod:`prefect_remote.sandbox.vpc`).
Deny rules and priorities are not modelled (the product makes none).
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import threading
from collections.abc import Callable
from typing import Any

from starlette.requests import Request

from prefect_remote.sandbox.gcp.api import body
from prefect_remote.sandbox.gcp.compute.google import (
    NAME,
    ComputeProject,
    Route,
    already_exists,
    filter_items,
    fingerprint,
    invalid,
    last_segment,
    not_found,
    numeric_id,
    page,
    principal_email,
    timestamp,
)
from prefect_remote.sandbox.gcp.compute.operations import Operations
from prefect_remote.sandbox.vpc import Ingress

SUBNET = "10.128.0.0/20"  # the default subnetwork's range in every region, as in a new project
PROTOCOLS = ("tcp", "udp", "icmp", "esp", "ah", "sctp", "ipip", "all")


class Network:
    """The ``default`` network, its subnetwork's addresses, and the project's firewall rules."""

    def __init__(self, project: ComputeProject, operations: Operations) -> None:
        self.project = project
        self.operations = operations
        self._lock = threading.Lock()
        self._firewalls: dict[str, dict[str, Any]] = {}  # name -> rule
        self._addresses = ipaddress.ip_network(SUBNET).hosts()  # until a machine gives the real one
        next(self._addresses)  # .1 is the gateway

    def routes(self, p: str) -> list[Route]:
        """Its routes under the project's path ``p``."""
        return [
            (p + "/global/firewalls", ["GET"], "compute.firewalls.list", self.list_firewalls),
            (p + "/global/firewalls", ["POST"], "compute.firewalls.insert", self.insert_firewall),
            (p + "/global/firewalls/{firewall}", ["GET"], "compute.firewalls.get", self.get_firewall),
            (p + "/global/firewalls/{firewall}", ["PATCH"], "compute.firewalls.patch", self.patch_firewall),
            (p + "/global/firewalls/{firewall}", ["DELETE"], "compute.firewalls.delete", self.delete_firewall),
            (p + "/global/networks/{network}", ["GET"], "compute.networks.get", self.get_network),
            (p + "/regions/{region}/subnetworks/{subnetwork}", ["GET"], "compute.subnetworks.get", self.get_subnetwork),
        ]

    # -- an instance's interfaces ----------------------------------------------------------------------
    def interfaces(self, wanted: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The network interfaces an instance's ``networkInterfaces`` ask for, each with an address in
        the subnetwork and, with ``accessConfigs``, an external one."""
        interfaces = []
        region = self.project.sandbox.region
        for index, nic in enumerate(wanted):
            network = last_segment(nic.get("network") or "default")
            subnetwork = last_segment(nic.get("subnetwork") or "default")
            if network != "default":
                raise not_found(f"projects/{self.project.id}/global/networks/{network}")
            if subnetwork != "default":
                raise not_found(f"projects/{self.project.id}/regions/{region}/subnetworks/{subnetwork}")
            address = self.allocate()
            interface: dict[str, Any] = {
                "kind": "compute#networkInterface",
                "network": self.project.link("global/networks/default"),
                "subnetwork": self.project.link("regions", region, "subnetworks/default"),
                "networkIP": address,
                "name": f"nic{index}",
                "fingerprint": fingerprint(address),
                "stackType": "IPV4_ONLY",
            }
            configs = nic.get("accessConfigs") or []
            if configs:
                interface["accessConfigs"] = [
                    {
                        "kind": "compute#accessConfig",
                        "type": "ONE_TO_ONE_NAT",
                        "name": config.get("name", "External NAT"),
                        "natIP": f"34.{secrets.randbelow(256)}.{secrets.randbelow(256)}.{1 + secrets.randbelow(254)}",
                        "networkTier": config.get("networkTier", "PREMIUM"),
                    }
                    for config in configs
                ]
            interfaces.append(interface)
        return interfaces

    def allocate(self) -> str:
        """The subnetwork's next free address (a VM's ``networkIP``, a Cloud Run task's by Direct VPC egress)."""
        with self._lock:
            return str(next(self._addresses))

    def ingress(self, tags: set[str], members: Callable[[list[str]], list[str]]) -> list[Ingress]:
        """What the enabled ingress allow rules admit to an instance with network ``tags``: a rule
        with no target tags applies to every instance; its sources are its ranges, and the internal
        addresses of the instances with its source tags (``members(tags)``), as Compute Engine matches them."""
        with self._lock:
            rules = [rule for rule in self._firewalls.values() if rule["direction"] == "INGRESS" and not rule["disabled"]]
        admitted = []
        for rule in rules:
            if rule.get("targetTags") and not tags & set(rule["targetTags"]):
                continue
            sources = tuple([*rule.get("sourceRanges", []), *(members(rule["sourceTags"]) if rule.get("sourceTags") else [])])
            for entry in rule.get("allowed") or []:
                for ports in entry.get("ports") or [None]:
                    low, _, high = str(ports).partition("-") if ports else ("", "", "")
                    admitted.append(Ingress(entry["IPProtocol"], (int(low), int(high or low)) if ports else None, sources))
        return admitted

    # -- firewalls ----------------------------------------------------------------------------------------
    def _firewall(self, project: str, name: str) -> dict[str, Any]:
        self.project.check(project)
        with self._lock:
            found = self._firewalls.get(name)
        if found is None:
            raise not_found(f"projects/{project}/global/firewalls/{name}")
        return found

    def _check_firewall(self, rule: dict[str, Any]) -> None:
        if not NAME.fullmatch(rule.get("name", "")):
            raise invalid("resource.name", rule.get("name", ""), f"Must be a match of regex '{NAME.pattern}'")
        if last_segment(rule.get("network", "default")) != "default":
            raise not_found(f"projects/{self.project.id}/global/networks/{last_segment(rule['network'])}")
        if rule.get("direction", "INGRESS") not in ("INGRESS", "EGRESS"):
            raise invalid("resource.direction", rule["direction"], "Must be one of [EGRESS, INGRESS].")
        if bool(rule.get("allowed")) == bool(rule.get("denied")):
            raise invalid("resource", "", "Exactly one of 'allowed' or 'denied' must be specified.")
        for index, entry in enumerate(rule.get("allowed") or rule.get("denied") or []):
            protocol = entry.get("IPProtocol", "")
            if protocol not in PROTOCOLS and not protocol.isdigit():
                raise invalid(f"resource.allowed[{index}].IPProtocol", protocol, "Must be a protocol name or number.")
            for port in entry.get("ports") or []:
                if not re.fullmatch(r"\d{1,5}(-\d{1,5})?", str(port)) or any(int(part) > 65535 for part in str(port).split("-")):
                    raise invalid(
                        f"resource.allowed[{index}].ports", str(port), "Must be a port or a port range, e.g. '8786' or '8786-8787'."
                    )
        for index, source in enumerate(rule.get("sourceRanges") or []):
            try:
                ipaddress.ip_network(source, strict=False)
            except ValueError:
                raise invalid(f"resource.sourceRanges[{index}]", source, "Must be a valid IPV4 or IPV6 CIDR range.") from None
        for index, tag in enumerate(rule.get("targetTags") or []):
            if not NAME.fullmatch(tag):
                raise invalid(f"resource.targetTags[{index}]", tag, f"Must be a match of regex '{NAME.pattern}'")

    def _complete_firewall(self, rule: dict[str, Any], rule_id: str, created: str) -> dict[str, Any]:
        rule = {key: value for key, value in rule.items() if value not in (None, [], "")}
        rule.update(
            {
                "kind": "compute#firewall",
                "id": rule_id,
                "creationTimestamp": created,
                "network": self.project.link("global/networks", last_segment(rule.get("network", "default"))),
                "priority": int(rule.get("priority", 1000)),
                "direction": rule.get("direction", "INGRESS"),
                "disabled": bool(rule.get("disabled", False)),
                "logConfig": rule.get("logConfig") or {"enable": False},
                "selfLink": self.project.link("global/firewalls", rule["name"]),
            }
        )
        if rule["direction"] == "INGRESS" and not (rule.get("sourceRanges") or rule.get("sourceTags") or rule.get("sourceServiceAccounts")):
            rule["sourceRanges"] = ["0.0.0.0/0"]  # Google's default for an ingress rule with no source
        return rule

    def list_firewalls(self, request: Request, project: str) -> dict[str, Any]:
        self.project.check(project)
        with self._lock:
            items = [dict(rule) for rule in self._firewalls.values()]
        return page(filter_items(items, request), request, "compute#firewallList", self.project.link("global/firewalls"))

    def get_firewall(self, request: Request, project: str, firewall: str) -> dict[str, Any]:
        return dict(self._firewall(project, firewall))

    def insert_firewall(self, request: Request, project: str) -> dict[str, Any]:
        self.project.check(project)
        spec = body(request)
        self._check_firewall(spec)
        rule = self._complete_firewall(spec, str(secrets.randbits(63)), timestamp())
        with self._lock:
            if rule["name"] in self._firewalls:
                raise already_exists(f"projects/{project}/global/firewalls/{rule['name']}")
            self._firewalls[rule["name"]] = rule
        return self.operations.record(None, "insert", rule["selfLink"], rule["id"], user=principal_email(request))

    def patch_firewall(self, request: Request, project: str, firewall: str) -> dict[str, Any]:
        current = self._firewall(project, firewall)
        patch = body(request)
        if patch.get("name", firewall) != firewall:
            raise invalid("resource.name", patch["name"], "The name of a firewall rule cannot be changed.")
        merged = {**current, **patch}
        if patch.get("allowed"):
            merged.pop("denied", None)
        if patch.get("denied"):
            merged.pop("allowed", None)
        self._check_firewall(merged)
        rule = self._complete_firewall(merged, current["id"], current["creationTimestamp"])
        with self._lock:
            self._firewalls[firewall] = rule
        return self.operations.record(None, "patch", rule["selfLink"], rule["id"], user=principal_email(request))

    def delete_firewall(self, request: Request, project: str, firewall: str) -> dict[str, Any]:
        rule = self._firewall(project, firewall)
        with self._lock:
            self._firewalls.pop(firewall, None)
        return self.operations.record(None, "delete", rule["selfLink"], rule["id"], user=principal_email(request))

    # -- the network and its subnetwork -------------------------------------------------------------------
    def get_network(self, request: Request, project: str, network: str) -> dict[str, Any]:
        self.project.check(project)
        if network != "default":
            raise not_found(f"projects/{project}/global/networks/{network}")
        return {
            "kind": "compute#network",
            "id": numeric_id("network", project, network),
            "creationTimestamp": "2026-01-01T00:00:00.000-08:00",
            "name": network,
            "description": "Default network for the project",
            "selfLink": self.project.link("global/networks", network),
            "autoCreateSubnetworks": True,
            "subnetworks": [self.project.link("regions", self.project.sandbox.region, "subnetworks/default")],
            "routingConfig": {"routingMode": "REGIONAL"},
            "networkFirewallPolicyEnforcementOrder": "AFTER_CLASSIC_FIREWALL",
        }

    def get_subnetwork(self, request: Request, project: str, region: str, subnetwork: str) -> dict[str, Any]:
        self.project.check(project)
        if region != self.project.sandbox.region or subnetwork != "default":
            raise not_found(f"projects/{project}/regions/{region}/subnetworks/{subnetwork}")
        return {
            "kind": "compute#subnetwork",
            "id": numeric_id("subnetwork", project, region, subnetwork),
            "creationTimestamp": "2026-01-01T00:00:00.000-08:00",
            "name": subnetwork,
            "network": self.project.link("global/networks/default"),
            "ipCidrRange": SUBNET,
            "gatewayAddress": "10.128.0.1",
            "region": self.project.link("regions", region),
            "selfLink": self.project.link("regions", region, "subnetworks", subnetwork),
            "privateIpGoogleAccess": False,
            "stackType": "IPV4_ONLY",
            "purpose": "PRIVATE",
            "fingerprint": fingerprint(subnetwork),
        }
