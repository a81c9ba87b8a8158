"""The sandbox GCP's metadata server: what ``http://metadata.google.internal/computeMetadata/v1/``
is to a Compute Engine VM or a Cloud Run task, for every machine the sandbox runs, each under its
own key on the sandbox's one endpoint (``http://HOST:PORT/<key>/computeMetadata/v1/…``).

A machine's image sets ``GCE_METADATA_HOST`` and ``GCE_METADATA_IP`` to ``HOST:PORT/<key>``
(:meth:`MetadataServer.env`): google-auth then finds the machine's project and its service
account's token there, as on Google Cloud, and the product's machine side reads its instance's
name, zone and attributes. Requests need ``Metadata-Flavor: Google`` (as Google's server does) and
no bearer token; answers carry that header too.

A machine's facts are metadata paths (``instance/name``, ``instance/zone``,
``instance/attributes``: a dict, ``instance/network-interfaces/0/ip``…) read on every request, so
attributes written through the API show at once. The server adds the project's
(``project/project-id``, ``project/numeric-project-id``) and the service account's
(``instance/service-accounts/default/{email,scopes,aliases,token}``, the token one the sandbox's API
accepts).

>>> metadata = MetadataServer(api, project="sandbox-project", project_number="123")        # doctest: +SKIP
>>> metadata.register("vm-0abc", lambda: {"instance/name": "vm-0abc"}, "sa@sandbox-project.iam.gserviceaccount.com")  # doctest: +SKIP
>>> metadata.env("vm-0abc", "http://10.232.0.1:41234")                                      # doctest: +SKIP
{'GCE_METADATA_HOST': '10.232.0.1:41234/vm-0abc', 'GCE_METADATA_IP': '10.232.0.1:41234/vm-0abc'}
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from prefect_remote.sandbox.gcp.api import GoogleAPI

Facts = dict[str, Any]  # metadata path ("instance/name") -> text, or a dict (a folder: "instance/attributes")
SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
FLAVOR = {"Metadata-Flavor": "Google"}


class MetadataServer:
    """Per-machine metadata under ``/<key>/computeMetadata/v1/`` of ``api``."""

    def __init__(self, api: GoogleAPI, *, project: str, project_number: str) -> None:
        self.api, self.project, self.project_number = api, project, project_number
        self._machines: dict[str, tuple[Callable[[], Facts | None], str]] = {}  # key -> (facts, service account)
        self._lock = threading.Lock()
        api.route("/{key}/computeMetadata/v1/{path:path}", ["GET", "POST"], "metadata.get", authenticated=False)(self._answer)
        # google-auth's ping (is this Google Cloud?) asks for http://$GCE_METADATA_IP itself.
        api.route("/{key}", ["GET"], "metadata.ping", authenticated=False)(self._root)

    def register(self, key: str, facts: Callable[[], Facts | None], service_account: str) -> None:
        """Serves ``facts()`` (None: the machine is gone, 404) and ``service_account``'s identity
        under ``key`` (letters, digits, ``-_.``: it is a URL path segment)."""
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", key):
            raise ValueError(f"metadata key {key!r}: use letters, digits, '-', '_' or '.'")
        with self._lock:
            self._machines[key] = (facts, service_account)

    def forget(self, key: str) -> None:
        with self._lock:
            self._machines.pop(key, None)

    def env(self, key: str, reachable_base_url: str) -> dict[str, str]:
        """What a machine's image sets so that google-auth uses this server: ``reachable_base_url``
        is the sandbox endpoint as the machine reaches it (``http://10.232.0.1:41234``)."""
        host = reachable_base_url.split("://", 1)[-1].rstrip("/") + f"/{key}"
        return {"GCE_METADATA_HOST": host, "GCE_METADATA_IP": host}

    # -- the protocol ---------------------------------------------------------------------------------
    async def _root(self, request: Request, key: str) -> Response:
        with self._lock:
            known = key in self._machines
        return _text(200, "computeMetadata/\n") if known else _text(404, "Not Found\n")

    async def _answer(self, request: Request, key: str, path: str) -> Response:
        if request.headers.get("metadata-flavor", "").lower() != "google":
            return _text(403, "Missing required header: Metadata-Flavor: Google\n")
        with self._lock:
            found = self._machines.get(key)
        facts = found[0]() if found else None
        if found is None or facts is None:
            return _text(404, "Not Found\n")
        tree = self._tree(facts, found[1])
        node: Any = tree
        parts = [part for part in path.split("/") if part]
        for part in parts:
            if not isinstance(node, dict) or part not in node:
                return _text(404, "Not Found\n")
            node = node[part]
        if callable(node):  # a service account's token: fresh on every request, always JSON
            return _json(node())
        recursive = request.query_params.get("recursive", "").lower() == "true"
        as_json = recursive or request.query_params.get("alt") == "json"
        if isinstance(node, dict):
            if as_json:
                return _json(_camel(node, raw=parts[-1:] == ["attributes"]))
            return _text(200, "".join(f"{name}/\n" if isinstance(child, dict) else f"{name}\n" for name, child in node.items()))
        if isinstance(node, list):
            return _json(node) if as_json else _text(200, "".join(f"{item}\n" for item in node))
        return _json(node) if as_json else _text(200, str(node))

    def _tree(self, facts: Facts, service_account: str) -> dict[str, Any]:
        tree: dict[str, Any] = {"project": {"project-id": self.project, "numeric-project-id": self.project_number}}
        for path, value in facts.items():
            _put(tree, [part for part in path.split("/") if part], value)
        account = {
            "aliases": ["default"],
            "email": service_account,
            "scopes": SCOPES,
            "token": lambda: self.api.issue_token(f"serviceAccount:{service_account}"),
        }
        _put(tree, ["instance", "service-accounts"], {"default": account, service_account: account})
        return tree


def _put(tree: dict[str, Any], parts: list[str], value: Any) -> None:
    for part in parts[:-1]:
        tree = tree.setdefault(part, {})
    if isinstance(value, dict) and isinstance(tree.get(parts[-1]), dict):
        tree[parts[-1]].update(value)
    else:
        tree[parts[-1]] = value


def _camel(node: Any, raw: bool = False) -> Any:
    """A folder as Google's recursive answers print it: ``network-interfaces`` → ``networkInterfaces``
    (an instance's attributes keep their own names); tokens are left out."""
    if not isinstance(node, dict):
        return node
    out = {}
    for name, child in node.items():
        if callable(child):
            continue
        out[name if raw else re.sub(r"-(\w)", lambda m: m.group(1).upper(), name)] = _camel(child, raw=name == "attributes")
    return out


def _text(status: int, body: str) -> Response:
    return Response(body, status_code=status, media_type="application/text", headers=FLAVOR)


def _json(value: Any) -> Response:
    return Response(json.dumps(value), status_code=200, media_type="application/json", headers=FLAVOR)
