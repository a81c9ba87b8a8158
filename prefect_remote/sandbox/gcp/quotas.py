"""The sandbox GCP's Cloud Quotas API v1 (``cloudquotas.googleapis.com``): the QuotaInfo of Cloud
Run's regional allocation quotas, and their enforcement when a Cloud Run job is created.

Cloud Run's quotas are not in any Cloud Run resource: Google publishes them through Cloud Quotas
(``GET /v1/projects/P/locations/global/services/run.googleapis.com/quotaInfos[/ID]``, permission
``cloudquotas.quotas.get`` on the project). Each :data:`RUN_QUOTAS` entry is a QuotaInfo as Google
lists it: its id, metric, unit, and a ``dimensionsInfos`` list whose entry without a ``region``
dimension is the project's default and whose others are one region's value (what a granted
increase writes). A new project's values are Google's defaults as projects report them: 20 vCPU
(20000 milli-vCPU) and 40 GiB per region, and 3 L4 GPUs without zonal redundancy (granted with a
region's first GPU deployment; Cloud Run jobs' GPUs use this quota).

Cloud Run checks the quotas against what a job asks for: a job whose tasks running at once
(``parallelism``, at most ``taskCount``) take more CPU, memory or GPUs than a quota allows is
refused at creation, 400 ``Quota violated: <ID> requested: N allowed: M`` (the words of Google's
answer to a deployment over these quotas). Usage is not counted: Cloud Run checks allocation, and
QuotaInfo carries no usage.

>>> quotas = CloudQuotasFake(api, Project.named("sandbox-project"))          # doctest: +SKIP
>>> quotas.set_quota("CpuAllocPerProjectRegion", 4000, region="us-central1")  # doctest: +SKIP
"""

from __future__ import annotations

import threading
from typing import Any

from starlette.requests import Request

from prefect_remote.sandbox.gcp.api import GoogleAPI, GoogleError
from prefect_remote.sandbox.gcp.common import Project, page

GIB = 2**30
CLOUD_RUN = "run.googleapis.com"
CPU, MEMORY, L4 = "CpuAllocPerProjectRegion", "MemAllocPerProjectRegion", "NvidiaL4GpuAllocNoZonalRedundancyPerProjectRegion"
# quota id -> (metric, unit, display name, a new project's value in each region)
RUN_QUOTAS: dict[str, tuple[str, str, str, int]] = {
    CPU: (f"{CLOUD_RUN}/cpu_allocation", "milli-vCPU", "CPU allocation", 20_000),
    MEMORY: (f"{CLOUD_RUN}/mem_allocation", "By", "Memory allocation", 40 * GIB),
    L4: (
        f"{CLOUD_RUN}/nvidia_l4_gpu_allocation_no_zonal_redundancy",
        "1",
        "Total Nvidia L4 GPU allocation without zonal redundancy, per project per region",
        3,
    ),
}


class CloudQuotasFake:
    """Cloud Run's QuotaInfo for ``project``, served on ``api``; :meth:`set_quota` changes one as a
    granted (or lowered) quota would, :meth:`violations` is what Cloud Run checks a job against."""

    def __init__(self, api: GoogleAPI, project: Project) -> None:
        self.project = project
        self._regional: dict[str, dict[str, int]] = {quota: {} for quota in RUN_QUOTAS}  # quota id -> region -> value
        self._lock = threading.Lock()
        base = "/v1/projects/{project}/locations/{location}/services/{service}/quotaInfos"
        api.route(base + "/{quota}", ["GET"], "cloudquotas.quotaInfos.get")(self._get)
        api.route(base, ["GET"], "cloudquotas.quotaInfos.list")(self._list)

    # -- for tests and the Cloud Run fake ---------------------------------------------------------------
    def set_quota(self, quota: str, value: int | None, region: str) -> None:
        """Cloud Run quota ``quota`` (an id of :data:`RUN_QUOTAS`) is ``value`` in ``region`` (None:
        the project's default again)."""
        if quota not in RUN_QUOTAS:
            raise ValueError(f"quota={quota!r}: the sandbox's Cloud Run quotas are {sorted(RUN_QUOTAS)}")
        with self._lock:
            if value is None:
                self._regional[quota].pop(region, None)
            else:
                self._regional[quota][region] = value

    def limit(self, quota: str, region: str) -> int:
        with self._lock:
            return self._regional[quota].get(region, RUN_QUOTAS[quota][3])

    def violations(self, region: str, requested: dict[str, int]) -> list[str]:
        """``<ID> requested: N allowed: M`` for each quota that ``requested`` (quota id -> amount) exceeds."""
        return [
            f"{quota} requested: {amount} allowed: {self.limit(quota, region)}"
            for quota, amount in requested.items()
            if amount > self.limit(quota, region)
        ]

    # -- the API -------------------------------------------------------------------------------------------
    def _info(self, quota: str) -> dict[str, Any]:
        metric, unit, display, default = RUN_QUOTAS[quota]
        with self._lock:
            regional = dict(self._regional[quota])
        dimensions = [
            {"dimensions": {"region": region}, "details": {"value": str(value)}, "applicableLocations": [region]}
            for region, value in sorted(regional.items())
        ]
        dimensions.append({"details": {"value": str(default)}, "applicableLocations": ["global"]})
        return {
            "name": f"projects/{self.project.number}/locations/global/services/{CLOUD_RUN}/quotaInfos/{quota}",
            "quotaId": quota,
            "metric": metric,
            "service": CLOUD_RUN,
            "isPrecise": True,
            "refreshInterval": "60s",
            "containerType": "PROJECT",
            "dimensions": ["region"],
            "metricDisplayName": display,
            "quotaDisplayName": display,
            "metricUnit": unit,
            "quotaIncreaseEligibility": {"isEligible": True},
            "isFixed": False,
            "dimensionsInfos": dimensions,
            "isConcurrent": True,
        }

    def _service(self, project: str, location: str, service: str) -> None:
        self.project.check(project, "cloudquotas.quotas.get", f"projects/{project}")
        if location != "global":
            raise GoogleError(400, f"Invalid location {location!r}: quota infos are under locations/global")
        if service != CLOUD_RUN:  # the sandbox models Cloud Run's quotas only (Compute Engine's: regions.get)
            raise GoogleError(404, f"The sandbox GCP serves the quota infos of {CLOUD_RUN} only, not {service}")

    def _get(self, request: Request, project: str, location: str, service: str, quota: str) -> dict[str, Any]:
        self._service(project, location, service)
        if quota not in RUN_QUOTAS:
            raise GoogleError(404, f"QuotaInfo {quota} of service {service} not found.")
        return self._info(quota)

    def _list(self, request: Request, project: str, location: str, service: str) -> dict[str, Any]:
        self._service(project, location, service)
        infos, token = page([self._info(quota) for quota in RUN_QUOTAS], request.query_params)
        return {"quotaInfos": infos, **({"nextPageToken": token} if token else {})}
