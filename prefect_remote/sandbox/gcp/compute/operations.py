"""Compute Engine's operations: every change answers one, already ``DONE`` (the python client's
``operation.result()`` polls with a client of its own that ignores ``api_endpoint``, so an operation
that is not done at once would be polled at the real Google). A failed one carries
``error.errors[{code, message}]`` and ``httpErrorStatusCode``, which ``result()`` raises. The last
:data:`OPERATIONS_KEPT` stay readable (get, wait, list per zone).
"""

from __future__ import annotations

import secrets
import threading
import time
from typing import Any

from starlette.requests import Request

from prefect_remote.sandbox.gcp.compute.google import ComputeProject, Route, filter_items, not_found, page, timestamp

OPERATIONS_KEPT = 2000


class Operations:
    """The project's zone and global operations, oldest first."""

    def __init__(self, project: ComputeProject) -> None:
        self.project = project
        self._lock = threading.Lock()
        self._operations: dict[str, dict[str, Any]] = {}  # "zones/<zone>" or "global" + "/operations/" + name -> operation

    def record(
        self,
        scope: str | None,
        operation_type: str,
        target: str,
        target_id: str,
        *,
        user: str,
        error: tuple[int, str, str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A finished operation (``scope``: a zone, or None for global); ``error``: (HTTP status,
        HTTP message, code, message); ``extra``: fields of its kind (a bulkInsert's metadata)."""
        now = time.time()
        name = f"operation-{int(now * 1000)}-{secrets.token_hex(6)}-{secrets.token_hex(4)}-{secrets.token_hex(4)}"
        path = f"zones/{scope}/operations/{name}" if scope else f"global/operations/{name}"
        operation: dict[str, Any] = {
            "kind": "compute#operation",
            "id": str(secrets.randbits(63)),
            "name": name,
            "operationType": operation_type,
            "targetLink": target,
            "targetId": target_id,
            "status": "DONE",
            "user": user,
            "progress": 100,
            "insertTime": timestamp(now),
            "startTime": timestamp(now),
            "endTime": timestamp(now),
            "selfLink": self.project.link(path),
            **(extra or {}),
        }
        if scope:
            operation["zone"] = self.project.link("zones", scope)
        if error is not None:
            status, http_message, code, message = error
            operation["error"] = {"errors": [{"code": code, "message": message}]}
            operation["httpErrorStatusCode"] = status
            operation["httpErrorMessage"] = http_message
        with self._lock:
            self._operations[path] = operation
            while len(self._operations) > OPERATIONS_KEPT:
                self._operations.pop(next(iter(self._operations)))
        return operation

    def routes(self, p: str, z: str) -> list[Route]:
        """Its routes under the project's path ``p`` and a zone's path ``z``."""
        return [
            (z + "/operations/{operation}/wait", ["POST"], "compute.zoneOperations.wait", self.get_zone_operation),
            (z + "/operations/{operation}", ["GET"], "compute.zoneOperations.get", self.get_zone_operation),
            (z + "/operations", ["GET"], "compute.zoneOperations.list", self.list_zone_operations),
            (p + "/global/operations/{operation}/wait", ["POST"], "compute.globalOperations.wait", self.get_global_operation),
            (p + "/global/operations/{operation}", ["GET"], "compute.globalOperations.get", self.get_global_operation),
        ]

    def _get(self, project: str, path: str) -> dict[str, Any]:
        with self._lock:
            found = self._operations.get(path)
        if found is None:
            raise not_found(f"projects/{project}/{path}")
        return found

    def get_zone_operation(self, request: Request, project: str, zone: str, operation: str) -> dict[str, Any]:
        self.project.check_zone(project, zone)
        return self._get(project, f"zones/{zone}/operations/{operation}")

    def list_zone_operations(self, request: Request, project: str, zone: str) -> dict[str, Any]:
        self.project.check_zone(project, zone)
        prefix = f"zones/{zone}/operations/"
        with self._lock:
            items = [operation for path, operation in self._operations.items() if path.startswith(prefix)]
        return page(filter_items(items, request), request, "compute#operationList", self.project.link("zones", zone, "operations"))

    def get_global_operation(self, request: Request, project: str, operation: str) -> dict[str, Any]:
        self.project.check(project)
        return self._get(project, f"global/operations/{operation}")
