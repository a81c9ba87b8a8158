"""Compute Engine's conventions, as every resource of the fake follows them: its links and ids, its
timestamps and fingerprints, its errors (``Invalid value for field …``, ``The resource … was not
found``), its pages and aggregated lists, and its list filters.

>>> last_segment("https://www.googleapis.com/compute/v1/projects/p/zones/us-central1-a")
'us-central1-a'
>>> not_found("projects/p/zones/nowhere").message
"The resource 'projects/p/zones/nowhere' was not found"
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from prefect_remote.sandbox.gcp.api import GoogleError
from prefect_remote.sandbox.gcp.common import Sandbox
from prefect_remote.sandbox.gcp.common import page as page_of
from prefect_remote.sandbox.gcp.filters import compile_filter

BASE = "https://www.googleapis.com/compute/v1/"  # Compute Engine's selfLinks use this host
NAME = re.compile(r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?")
LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")
Route = tuple[str, list[str], str, Callable[..., Any]]  # path, methods, API method name, handler


@dataclass(frozen=True)
class ComputeProject:
    """The sandbox's project as Compute Engine serves it: links to its resources, and Google's 404
    for a request naming another project or a zone it lacks."""

    sandbox: Sandbox

    @property
    def id(self) -> str:
        return self.sandbox.project

    def link(self, *parts: str) -> str:
        """A resource's selfLink: ``link("zones", zone)`` is ``…/projects/<id>/zones/<zone>``."""
        return BASE + "projects/" + self.id + "/" + "/".join(parts)

    def check(self, project: str) -> None:
        if project not in (self.id, self.sandbox.project_number):  # Google takes either
            raise not_found(f"projects/{project}")

    def check_zone(self, project: str, zone: str) -> None:
        self.check(project)
        if zone not in self.sandbox.zones:
            raise not_found(f"projects/{project}/zones/{zone}")


def timestamp(epoch: float | None = None) -> str:
    """A time as Compute Engine prints it, in Pacific time: ``2026-12-01T03:04:05.123-08:00``."""
    epoch = time.time() if epoch is None else epoch
    pacific = epoch - 8 * 3600  # Google's servers print -08:00 (-07:00 in summer: not modelled)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(pacific)) + f".{int(epoch % 1 * 1000):03d}-08:00"


def numeric_id(*parts: str) -> str:
    """A stable id of digits for a catalog resource (Compute Engine's ids are uint64 as strings)."""
    return str(int.from_bytes(hashlib.sha256("/".join(parts).encode()).digest()[:8], "big") >> 1)


def fingerprint(value: Any) -> str:
    """Compute Engine's optimistic-locking fingerprint of ``value``: 8 bytes, base64."""
    return base64.b64encode(hashlib.sha256(json.dumps(value, sort_keys=True).encode()).digest()[:8]).decode()


def last_segment(url: str) -> str:
    return url.rstrip("/").rpartition("/")[2]


def principal_email(request: Request) -> str:
    """Who made ``request``, as an operation's ``user`` names them."""
    principal = getattr(request.state, "principal", "") or ""
    return principal.partition(":")[2] or principal


# -- errors ------------------------------------------------------------------------------------------
def invalid(field_name: str, value: str, why: str) -> GoogleError:
    """Compute Engine's 400 for a bad field: ``Invalid value for field 'resource.name': 'X'. Must …``."""
    return GoogleError(400, f"Invalid value for field '{field_name}': '{value}'. {why}", reason="invalid")


def not_found(path: str) -> GoogleError:
    """Compute Engine's 404 for a resource (``projects/P/global/firewalls/N``) that does not exist."""
    return GoogleError(404, f"The resource '{path}' was not found", reason="notFound")


def already_exists(path: str) -> GoogleError:
    return GoogleError(409, f"The resource '{path}' already exists", reason="alreadyExists")


def invalid_usage(why: str) -> GoogleError:
    """Compute Engine's 400 for a request it understands but cannot serve (an arm image on x86…)."""
    return GoogleError(400, f"Invalid resource usage: '{why}'", reason="invalidResourceUsage")


def check_labels(labels: dict[str, str], field_name: str) -> None:
    """Google's label rules, with Compute Engine's messages (at most 64; keys and values of lowercase
    letters, digits, ``_`` and ``-``, at most 63 characters; keys start with a letter)."""
    if len(labels) > 64:
        raise invalid(field_name, "", "A resource can have at most 64 labels.")
    for key, value in labels.items():
        if not LABEL_KEY.fullmatch(key):
            raise invalid(
                field_name,
                "",
                f"Label key '{key}' violates format constraints. The key must start with a lowercase character, can only contain "
                "lowercase letters, numeric characters, underscores and dashes. The key can be at most 63 characters long. "
                "International characters are allowed.",
            )
        if not LABEL_VALUE.fullmatch(str(value)):
            raise invalid(
                field_name,
                "",
                f"Label value '{value}' violates format constraints. The value can only contain lowercase letters, numeric "
                "characters, underscores and dashes. The value can be at most 63 characters long. International characters are allowed.",
            )


# -- lists -------------------------------------------------------------------------------------------
def page(items: list[dict[str, Any]], request: Request, kind: str, link: str) -> dict[str, Any]:
    """One page of ``items`` (``maxResults``: at most and by default 500; ``pageToken``), as Compute Engine lists."""
    chunk, token = page_of(items, request.query_params, default=500, maximum=500, size_key="maxResults")
    answer: dict[str, Any] = {"kind": kind, "id": link.removeprefix(BASE), "selfLink": link}
    if chunk:  # Compute Engine leaves out an empty page's items
        answer["items"] = chunk
    if token:
        answer["nextPageToken"] = token
    return answer


def aggregated(scoped: dict[str, list[dict[str, Any]]], field_name: str, kind: str, link: str) -> dict[str, Any]:
    """An aggregatedList answer: one entry per zone, with Google's warning where a zone has none."""
    items: dict[str, Any] = {}
    for zone, found in scoped.items():
        scope = f"zones/{zone}"
        if found:
            items[scope] = {field_name: found}
        else:
            items[scope] = {
                "warning": {
                    "code": "NO_RESULTS_ON_PAGE",
                    "message": f"There are no results for scope '{scope}' on this page.",
                    "data": [{"key": "scope", "value": scope}],
                }
            }
    return {"kind": kind, "id": link.removeprefix(BASE), "items": items, "selfLink": link}


REGEX_TERM = re.compile(r"""\s*\(?\s*(?P<field>[\w.-]+)\s+(?P<op>eq|ne)\s+(?P<value>"[^"]*"|'[^']*'|[^\s()]+)\s*\)?\s*""")


def filter_items(items: list[dict[str, Any]], request: Request) -> list[dict[str, Any]]:
    """``items`` that match the request's ``filter``, in Compute Engine's syntax: comparisons
    (``labels.k = "v"``, ``status != TERMINATED``, ``labels.k:*``) joined by spaces, parentheses,
    ``AND``, ``OR``; or regular expressions matching a whole field (``name eq 'vm-.*'``,
    ``(name ne vm-1) (status eq RUNNING)``), which Compute Engine takes instead of comparisons."""
    text = (request.query_params.get("filter") or "").strip()
    if re.search(r"\s(eq|ne)\s", text):
        terms = list(REGEX_TERM.finditer(text))
        if "".join(term.group(0) for term in terms) != text:
            raise invalid("filter", text, "Invalid list filter expression.")
        return [item for item in items if all(regex_matches(item, term) for term in terms)]
    match = compile_filter(text)
    return [item for item in items if match(lambda path, item=item: field_value(item, path))]


def field_value(item: dict[str, Any], path: Sequence[str]) -> Any:
    """A resource's field for a filter: ``labels.k``; booleans as Compute Engine prints them."""
    value: Any = item
    for part in path:
        value = value.get(part) if isinstance(value, dict) else None
    return str(value).lower() if isinstance(value, bool) else value


def regex_matches(item: dict[str, Any], term: re.Match[str]) -> bool:
    value = field_value(item, term.group("field").split("."))
    literal = term.group("value").strip("\"'")
    hit = value is not None and re.fullmatch(literal, str(value)) is not None
    return hit if term.group("op") == "eq" else not hit
