"""The sandbox GCP's Cloud Run Admin API v2 for jobs, as ``google.cloud.run_v2``'s clients call it over
REST (camelCase JSON, integer enums): jobs (create, get, list, delete, run with overrides),
executions (get, list, cancel, delete), tasks (get, list) and the long-running operations they
return. Operations are done at once (``done: true``) and stay readable under ``operations/``.

Each task runs as a local machine through the sandbox's instance runner: its boot script is the
container's ``command + args`` (after the run's overrides), its environment the container's
(``secretKeyRef``s resolved from the sandbox's Secret Manager), Cloud Run's own (``CLOUD_RUN_JOB``,
``CLOUD_RUN_EXECUTION``, ``CLOUD_RUN_TASK_INDEX``, ``CLOUD_RUN_TASK_ATTEMPT``,
``CLOUD_RUN_TASK_COUNT``) and the sandbox image's (:meth:`SandboxGCP.image_env`: the endpoints, a
metadata server for the job's service account). **An image in the sandbox's registry**
(:class:`~prefect_remote.sandbox.images.SandboxImages`, given by ``use_images``) **is pulled and run**
with the instance's engine, as Cloud Run runs it: ``command`` in place of its entrypoint, ``args`` of
its command (either missing: the image's own), that environment passed in, the instance's network;
a reference the registry does not hold fails the attempt (``Image '…' not found.``), as Cloud Run
fails a task whose image it cannot pull. **Any other image** (a public one, such as the default
``python:3.11-slim``, which this offline sandbox cannot pull) **is recorded, not pulled**: this host
stands for it, so a job's command must exist here.

What Cloud Run reports, the fake reports: a task's ``lastAttemptResult.exitCode`` is its machine's
real exit code (``termSignal`` when a signal ended it); a failed attempt is retried up to
``maxRetries`` (3 when unset) with ``CLOUD_RUN_TASK_ATTEMPT`` counting; a task that outlives its
``timeout`` (600 s when unset) is killed and failed; what a task prints goes to Cloud Logging
(``run.googleapis.com/stdout``, labelled ``run.googleapis.com/execution_name``, ``…/task_index``,
``…/task_attempt``); cancelling ends the running machines and counts
the tasks cancelled; an execution counts ``running/succeeded/failed/cancelled/retriedCount`` and,
once every task ended, sets ``completionTime`` and a ``Completed`` condition (succeeded, or failed
with the failing task's message). What Cloud Run refuses, it refuses (400): a cpu/memory pair Cloud
Run does not offer, an ``nvidia-l4`` GPU under 4 CPU / 16 GiB or in a region without L4s, a timeout
over 168 h (1 h with a GPU), a service account the project lacks, reserved env names, Direct VPC
egress into a network or subnetwork the project lacks. **The network is not modelled**: every task
and VM reaches every other (no firewall, no VPC), so reachability is the product's to get right. A secret that
does not exist fails the task, as on Cloud Run. Deleting a job or an execution ends its machines
(the sandbox never leaves one running); cancelling a completed execution is refused (400
``FAILED_PRECONDITION``, which google-api-core raises as ``BadRequest`` over REST).

One module, past 500 lines, on purpose: jobs, executions, tasks and their operations are one state
machine (an execution's counts and conditions follow its tasks' attempts, a job's latest execution
follows its runs), so splitting them by resource would scatter one set of transitions.

>>> run = CloudRunFake(sandbox)           # registers its routes on sandbox.api        # doctest: +SKIP
>>> JobsClient(transport="rest", client_options={"api_endpoint": sandbox.api.url}, credentials=creds).run_job(name=job)  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import ipaddress
import re
import secrets
import shlex
import string
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.requests import Request

from prefect_remote.sandbox.gcp.api import GoogleError, body, rfc3339
from prefect_remote.sandbox.gcp.common import Project, Sandbox, check_labels, default_compute_account, page
from prefect_remote.sandbox.gcp.compute.network import SUBNET
from prefect_remote.sandbox.gcp.permissions import Check
from prefect_remote.sandbox.instances import Instance

if TYPE_CHECKING:
    from prefect_remote.providers.base import Machine

PREFIX = "run:"  # the runner's instance ids of Cloud Run task attempts
GiB = 1024**3
MiB = 1024**2
# Cloud Run jobs' CPUs -> (least, most) memory (https://cloud.google.com/run/docs/configuring/jobs/memory-limits)
CPU_MEMORY = {1: (512 * MiB, 4 * GiB), 2: (512 * MiB, 8 * GiB), 4: (2 * GiB, 16 * GiB), 6: (4 * GiB, 24 * GiB), 8: (4 * GiB, 32 * GiB)}
L4_REGIONS = {"us-central1", "us-east4", "europe-west1", "europe-west4", "asia-southeast1", "asia-south1"}
MAX_TIMEOUT = 168 * 3600
GA_TIMEOUT = 24 * 3600  # longer task timeouts are a Preview feature: the job's launch stage must say BETA (or ALPHA)
PREVIEW_STAGES = (2, 3, "ALPHA", "BETA")  # google.api.LaunchStage, as an integer enum or its name
GPU_MAX_TIMEOUT = 3600
DEFAULT_TIMEOUT = "600s"
DEFAULT_RETRIES = 3
RESERVED_ENV = ("CLOUD_RUN_JOB", "CLOUD_RUN_EXECUTION", "CLOUD_RUN_TASK_INDEX", "CLOUD_RUN_TASK_ATTEMPT", "CLOUD_RUN_TASK_COUNT")
# Condition.State, Condition.ExecutionReason, ExecutionReference.CompletionStatus (integer enums on the wire)
PENDING, FAILED, SUCCEEDED = 1, 3, 4
NON_ZERO_EXIT_CODE, CANCELLED = 2, 3
COMPLETION = {"succeeded": 1, "failed": 2, "running": 3, "pending": 4, "cancelled": 5}
TERMINAL = ("succeeded", "failed", "cancelled")
LOG_EVERY = 1.0  # seconds between copies of running tasks' output to Cloud Logging
HOST_LINE = "[prefect-remote host]"  # the local machine monitor's own log lines
_JOB_ID = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
_NETWORK_TAG = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")


@dataclass
class Attempt:
    """One attempt of one task: one machine of the instance runner."""

    instance_id: str
    task: str  # the task's name
    number: int  # CLOUD_RUN_TASK_ATTEMPT
    script: str
    env: dict[str, str]
    timeout: float
    instance_type: str
    booted: float | None = None  # time.monotonic() when its machine started
    machine_id: str | None = None  # its machine, once booted
    log_cursor: str | None = None  # how far its output has gone to Cloud Logging
    log_rest: str = ""  # a line not yet ended
    end: str | None = None  # why it was asked to end: "cancelled", "timeout", "deleted"
    private_address: str | None = None  # its address in the VPC (Direct VPC egress), with the subnetwork's prefix
    finished: bool = False  # its machine has ended (or never will run)


@dataclass
class _Task:
    state: str = "pending"  # pending, running, succeeded, failed, cancelled
    key: str = ""  # its metadata server key
    attempts: list[Attempt] = field(default_factory=list)


class CloudRunFake:
    """Cloud Run jobs of ``sandbox``'s project, served on ``sandbox.api``; its tasks run on
    ``sandbox.runner`` (instance ids ``run:…``)."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.project = Project(sandbox.project, sandbox.project_number)
        self._jobs: dict[str, dict[str, Any]] = {}
        self._executions: dict[str, dict[str, Any]] = {}
        self._tasks: dict[str, dict[str, Any]] = {}
        self._task_state: dict[str, _Task] = {}
        self._operations: dict[str, dict[str, Any]] = {}
        self._attempts: dict[str, Attempt] = {}  # instance id -> attempt, until its machine has ended
        self._shipped = 0.0  # time.monotonic() of the last copy of tasks' output to Cloud Logging
        self._lock = threading.RLock()
        route = sandbox.api.route
        base = "/v2/projects/{project}/locations/{location}"
        route(base + "/jobs/{job}:run", ["POST"], "run.jobs.run")(self._run)
        route(base + "/jobs/{job}/executions/{execution}:cancel", ["POST"], "run.executions.cancel")(self._cancel)
        route(base + "/operations/{operation}:wait", ["POST"], "run.operations.wait")(self._get_operation)
        route(base + "/jobs/{job}/executions/{execution}/tasks/{task}", ["GET"], "run.tasks.get")(self._get_task)
        route(base + "/jobs/{job}/executions/{execution}/tasks", ["GET"], "run.tasks.list")(self._list_tasks)
        route(base + "/jobs/{job}/executions/{execution}", ["GET"], "run.executions.get")(self._get_execution)
        route(base + "/jobs/{job}/executions/{execution}", ["DELETE"], "run.executions.delete")(self._delete_execution)
        route(base + "/jobs/{job}/executions", ["GET"], "run.executions.list")(self._list_executions)
        route(base + "/jobs/{job}", ["GET"], "run.jobs.get")(self._get_job)
        route(base + "/jobs/{job}", ["DELETE"], "run.jobs.delete")(self._delete_job)
        route(base + "/jobs", ["POST"], "run.jobs.create")(self._create_job)
        route(base + "/jobs", ["GET"], "run.jobs.list")(self._list_jobs)
        route(base + "/operations/{operation}", ["GET"], "run.operations.get")(self._get_operation)
        route(base + "/operations/{operation}", ["DELETE"], "run.operations.delete")(self._delete_operation)
        route(base + "/operations", ["GET"], "run.operations.list")(self._list_operations)

    # -- the instance runner's view ---------------------------------------------------------------------
    def instances(self) -> Iterator[Instance]:
        """Task attempts whose machine should run (``pending``/``running``) or end (``terminated``),
        within each execution's parallelism; attempts past their timeout are ended here."""
        now = time.monotonic()
        with self._lock:
            if now - self._shipped > LOG_EVERY:
                self._shipped = now
                for attempt in self._attempts.values():
                    if attempt.machine_id is not None and not attempt.finished:
                        self._ship_output(attempt)
            running: dict[str, int] = {}
            for attempt in self._attempts.values():
                if attempt.booted is not None and not attempt.finished:
                    running[_execution_of(attempt.task)] = running.get(_execution_of(attempt.task), 0) + 1
            listed = []
            for attempt in self._attempts.values():
                if attempt.finished:
                    continue
                if attempt.end is None and attempt.booted is not None and now - attempt.booted > attempt.timeout:
                    attempt.end = "timeout"
                state = "terminated" if attempt.end else "running" if attempt.booted is not None else "pending"
                if state == "pending":
                    execution = _execution_of(attempt.task)
                    parallelism = int(self._executions[execution].get("parallelism") or 0)
                    if parallelism and running.get(execution, 0) >= parallelism:
                        continue
                    running[execution] = running.get(execution, 0) + 1
                listed.append(
                    Instance(
                        attempt.instance_id,
                        state,
                        attempt.script,
                        attempt.instance_type,
                        self.sandbox.region,
                        private_address=attempt.private_address,
                        vm=False,  # a container: it ends with its command, as on Cloud Run
                    )
                )
        return iter(listed)

    def image_env(self, instance: Instance) -> dict[str, str]:
        with self._lock:
            attempt = self._attempts[instance.id]
            key = self._task_state[attempt.task].key
        # A container starts with its image's environment: HOME=/root (the image's user), as Docker sets it.
        return {"HOME": "/root", **self.sandbox.image_env(key), **attempt.env}

    def booted(self, instance: Instance, machine: Machine) -> None:
        with self._lock:
            attempt = self._attempts.get(instance.id)
            if attempt is None:
                return
            attempt.booted, attempt.machine_id = time.monotonic(), machine.id
            if attempt.end is not None:  # cancelled while it booted: the runner ends it
                attempt.finished = False
                return
            task = self._tasks[attempt.task]
            task["startTime"] = rfc3339()
            self._task_state[attempt.task].state = "running"
            execution = self._executions[_execution_of(attempt.task)]
            execution.setdefault("startTime", task["startTime"])
            self._refresh(_execution_of(attempt.task))

    def terminate(self, instance_id: str, reason: str, exit_code: int | None) -> None:
        """The runner's word that an attempt's machine has ended (or could not boot)."""
        with self._lock:
            attempt = self._attempts.get(instance_id)
            if attempt is None or attempt.finished:
                return
            attempt.finished = True
            del self._attempts[instance_id]  # its machine has ended: nothing more to run or end
            if attempt.machine_id is not None:
                self._ship_output(attempt, final=True)
            if attempt.end in ("cancelled", "deleted"):
                return
            if attempt.end == "timeout":
                self._attempt_failed(attempt.task, 4, "The configured timeout was reached.", exit_code)
            elif exit_code == 0:
                self._task_ended(attempt.task, "succeeded", {"status": {}, "exitCode": 0}, "")
            elif exit_code is None:
                self._attempt_failed(attempt.task, 2, f"The container could not run: {reason}", None)
            else:
                self._attempt_failed(attempt.task, 2, "The container exited with an error.", exit_code)

    def end_all(self, reason: str = "terminated by the sandbox") -> list[str]:
        """Cancels every task still pending or running (a test's clean-up, the sandbox stopping);
        returns their attempts' instance ids."""
        ended = []
        with self._lock:
            for attempt in list(self._attempts.values()):
                if not attempt.finished and attempt.end is None:
                    ended.append(attempt.instance_id)
                    self._end_task(attempt.task, "cancelled", reason)
        return ended

    def _ship_output(self, attempt: Attempt, final: bool = False) -> None:
        """Copies what the attempt's container printed to Cloud Logging, as Cloud Run does: one
        entry a line in ``run.googleapis.com/stdout``, labelled with the execution, task and attempt."""
        assert attempt.machine_id is not None
        chunk = self.sandbox.runner.machines.logs(attempt.machine_id, cursor=attempt.log_cursor)
        attempt.log_cursor = chunk.cursor
        lines = (attempt.log_rest + chunk.text).split("\n")
        attempt.log_rest = "" if final else lines.pop()
        task = self._tasks.get(attempt.task)
        if task is None:
            return
        location = attempt.task.split("/")[3]
        stamp = rfc3339()
        entries = [
            {
                "logName": f"projects/{self.project.id}/logs/run.googleapis.com%2Fstdout",
                "resource": {
                    "type": "cloud_run_job",
                    "labels": {"project_id": self.project.id, "job_name": task["job"], "location": location},
                },
                "labels": {
                    "run.googleapis.com/execution_name": task["execution"],
                    "run.googleapis.com/task_index": str(task["index"]),
                    "run.googleapis.com/task_attempt": str(attempt.number),
                },
                "textPayload": line,
                "timestamp": stamp,
            }
            for line in lines
            if line and not line.startswith(HOST_LINE)  # (the sandbox's own lines about the machine)
        ]
        if entries:
            self.sandbox.logging.write(entries)

    # -- jobs ---------------------------------------------------------------------------------------------
    def _parent(self, project: str, location: str, permission: str) -> str:
        self.project.check(project, permission, f"projects/{project}/locations/{location}")
        return f"projects/{self.project.id}/locations/{location}"

    def _job(self, project: str, location: str, job: str, permission: str) -> dict[str, Any]:
        name = f"{self._parent(project, location, permission)}/jobs/{job}"
        found = self._jobs.get(name)
        if found is None:
            raise GoogleError(404, f"Resource '{job}' of kind 'JOB' in region '{location}' in project '{project}' does not exist.")
        return found

    def _create_job(self, request: Request, project: str, location: str) -> dict[str, Any]:
        parent = self._parent(project, location, "run.jobs.create")
        job_id = request.query_params.get("jobId", "")
        if not _JOB_ID.fullmatch(job_id):
            raise GoogleError(
                400,
                f"job_id {job_id!r} is invalid: it must start with a lowercase letter, hold only lowercase letters, digits and "
                "'-', not end with '-', and be at most 63 characters.",
            )
        given = body(request)
        template = copy.deepcopy(given.get("template") or {})
        task_template = template.setdefault("template", {})
        task_template.setdefault("maxRetries", DEFAULT_RETRIES)
        task_template.setdefault("timeout", DEFAULT_TIMEOUT)
        task_template.setdefault("serviceAccount", default_compute_account(self.project.number))
        template.setdefault("taskCount", 1)
        self._check_template(task_template, location, "job.template.template", given.get("launchStage"))
        if int(template["taskCount"]) < 1:
            raise GoogleError(400, "job.template.task_count must be at least 1")
        self._check_quotas(template, location)
        principal = request.state.principal.removeprefix("serviceAccount:").removeprefix("user:")
        now = rfc3339()
        job = {
            "name": f"{parent}/jobs/{job_id}",
            "uid": str(uuid.uuid4()),
            "generation": "1",
            "labels": check_labels(given.get("labels"), "job.labels"),
            "annotations": given.get("annotations") or {},
            "createTime": now,
            "updateTime": now,
            "creator": principal,
            "lastModifier": principal,
            "launchStage": given.get("launchStage") or 4,  # GA
            "template": {**template, "labels": check_labels(template.get("labels"), "job.template.labels")},
            "observedGeneration": "1",
            "terminalCondition": {"type": "Ready", "state": SUCCEEDED, "lastTransitionTime": now},
            "conditions": [],
            "executionCount": 0,
            "reconciling": False,
            "etag": f'"{secrets.token_hex(8)}"',
        }
        if request.query_params.get("validateOnly", "").lower() == "true":
            return self._operation(location, "Job", job)
        with self._lock:
            if job["name"] in self._jobs:
                raise GoogleError(409, f"Resource '{job_id}' already exists.")
            self._jobs[job["name"]] = job
            return self._operation(location, "Job", job)

    def _check_quotas(self, template: dict[str, Any], location: str) -> None:
        """Cloud Run's regional quotas against what the tasks running at once take (a valid template)."""
        from prefect_remote.sandbox.gcp.quotas import CPU, L4, MEMORY

        tasks = int(template["taskCount"])
        parallel = min(int(template.get("parallelism") or tasks), tasks)
        task = template["template"]
        limits = [(container.get("resources") or {}).get("limits") or {} for container in task["containers"]]
        requested = {
            CPU: parallel * round(1000 * sum(_cpu(str(found.get("cpu", "1")), "") for found in limits)),
            MEMORY: parallel * sum(_bytes(str(found.get("memory", "512Mi")), "") for found in limits),
        }
        if (task.get("nodeSelector") or {}).get("accelerator"):
            requested[L4] = parallel * sum(int(found.get("nvidia.com/gpu") or 0) for found in limits)
        violated = self.sandbox.quotas.violations(location, requested)
        if violated:
            raise GoogleError(
                400,
                "Consider running your workload in a region with greater capacity, or requesting an increase in quota for this "
                "region, see https://cloud.google.com/run/quotas.\n\nQuota violated:\n" + "\n".join(violated),
            )

    def _check_template(self, task: dict[str, Any], location: str, where: str, launch_stage: Any) -> None:
        """What Cloud Run refuses in a task template (400, naming the field)."""
        containers = task.get("containers") or []
        if not containers:
            raise GoogleError(400, f"{where}.containers: a job needs a container")
        accelerator = (task.get("nodeSelector") or {}).get("accelerator")
        timeout = _seconds(task.get("timeout", DEFAULT_TIMEOUT), f"{where}.timeout")
        for index, container in enumerate(containers):
            place = f"{where}.containers[{index}]"
            if not container.get("image"):
                raise GoogleError(400, f"{place}.image: a container image is required")
            reserved = [env["name"] for env in container.get("env") or [] if env.get("name") in RESERVED_ENV]
            if reserved:
                raise GoogleError(
                    400,
                    f"{place}.env: The following reserved env names were provided: {', '.join(reserved)}. These values are "
                    "automatically set by the system.",
                )
            _check_shape((container.get("resources") or {}).get("limits") or {}, accelerator, location, f"{place}.resources.limits")
        if timeout > (GPU_MAX_TIMEOUT if accelerator else MAX_TIMEOUT):
            most = "1 hour with a GPU" if accelerator else "168 hours"
            raise GoogleError(400, f"{where}.timeout: {task['timeout']} exceeds the maximum task timeout of {most}.")
        if timeout > GA_TIMEOUT and launch_stage not in PREVIEW_STAGES:
            raise GoogleError(
                400,
                f"{where}.timeout: a task timeout over 24 hours ({task['timeout']}) is a Preview feature: set the job's "
                "launch_stage to BETA.",
            )
        self._check_vpc_access(task.get("vpcAccess"), location, f"{where}.vpc_access")
        account = task.get("serviceAccount")
        if account not in self.sandbox.service_accounts:
            raise GoogleError(400, f"{where}.service_account: Service account {account} does not exist.")
        retries = int(task.get("maxRetries", DEFAULT_RETRIES))
        if not 0 <= retries <= 10:
            raise GoogleError(400, f"{where}.max_retries: {retries} is out of range: 0 to 10")

    def _check_vpc_access(self, access: dict[str, Any] | None, location: str, where: str) -> None:
        """What Cloud Run refuses in Direct VPC egress: a connector with it, more than one interface,
        one naming neither network nor subnetwork, a network or subnetwork the project lacks (the
        sandbox has the ``default`` network and its subnetwork in each region), a bad network tag."""
        if not access:
            return
        interfaces = access.get("networkInterfaces") or []
        if access.get("connector") and interfaces:
            raise GoogleError(400, f"{where}: a VPC connector and network interfaces (Direct VPC egress) cannot both be set")
        if len(interfaces) > 1:
            raise GoogleError(400, f"{where}.network_interfaces: only one network interface is supported")
        if access.get("egress", 2) not in (1, 2, "ALL_TRAFFIC", "PRIVATE_RANGES_ONLY"):
            raise GoogleError(400, f"{where}.egress: {access['egress']!r} is not a VPC egress setting")
        for index, interface in enumerate(interfaces):
            place = f"{where}.network_interfaces[{index}]"
            network, subnetwork = interface.get("network"), interface.get("subnetwork")
            if not network and not subnetwork:
                raise GoogleError(400, f"{place}: at least one of network or subnetwork must be specified")
            project = self.sandbox.project
            if network and network not in ("default", f"projects/{project}/global/networks/default"):
                raise GoogleError(400, f"{place}.network: network {network!r} not found in project {project}")
            if subnetwork and subnetwork not in ("default", f"projects/{project}/regions/{location}/subnetworks/default"):
                raise GoogleError(400, f"{place}.subnetwork: subnetwork {subnetwork!r} not found in project {project}, region {location}")
            bad = [tag for tag in interface.get("tags") or [] if not _NETWORK_TAG.fullmatch(tag)]
            if bad:
                raise GoogleError(400, f"{place}.tags: {bad} are not network tags (lowercase letters, digits and '-', at most 63)")

    def _get_job(self, request: Request, project: str, location: str, job: str) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self._job(project, location, job, "run.jobs.get"))

    def _list_jobs(self, request: Request, project: str, location: str) -> dict[str, Any]:
        parent = self._parent(project, location, "run.jobs.list")
        with self._lock:
            jobs = [copy.deepcopy(job) for name, job in sorted(self._jobs.items()) if name.startswith(parent + "/")]
        chunk, token = page(jobs, request.query_params)
        return {"jobs": chunk, **({"nextPageToken": token} if token else {})}

    def _delete_job(self, request: Request, project: str, location: str, job: str) -> dict[str, Any]:
        with self._lock:
            found = self._job(project, location, job, "run.jobs.delete")
            for name in [name for name in self._executions if name.startswith(found["name"] + "/")]:
                self._forget_execution(name)
            del self._jobs[found["name"]]
            found = {**found, "deleteTime": rfc3339(), "reconciling": False}
            return self._operation(location, "Job", found)

    # -- running ------------------------------------------------------------------------------------------
    def _run(self, request: Request, project: str, location: str, job: str) -> dict[str, Any]:
        given = body(request)
        overrides = given.get("overrides") or {}
        with self._lock:
            found = self._job(project, location, job, "run.jobs.run")
            template = copy.deepcopy(found["template"])
        task_template = template["template"]
        for index, override in enumerate(overrides.get("containerOverrides") or []):
            _override(task_template["containers"], override, f"overrides.container_overrides[{index}]")
        if overrides.get("taskCount"):
            template["taskCount"] = int(overrides["taskCount"])
        if overrides.get("timeout"):
            task_template["timeout"] = overrides["timeout"]
        self._check_template(task_template, location, "overrides", found["launchStage"])
        if given.get("validateOnly"):
            return self._operation(location, "Execution", {"name": f"{found['name']}/executions/{job}-validate", "job": job})
        suffix = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(5))
        execution_id = f"{job}-{suffix}"
        name = f"{found['name']}/executions/{execution_id}"
        now = rfc3339()
        labels = {**found["labels"], **(template.get("labels") or {}), "run.googleapis.com/execution-environment": "gen2"}
        execution = {
            "name": name,
            "uid": str(uuid.uuid4()),
            "creator": request.state.principal.removeprefix("serviceAccount:"),
            "generation": "1",
            "labels": labels,
            "annotations": template.get("annotations") or {},
            "createTime": now,
            "updateTime": now,
            "launchStage": found["launchStage"],
            "job": job,
            "parallelism": int(template.get("parallelism") or 0),
            "taskCount": int(template["taskCount"]),
            "template": task_template,
            "reconciling": True,
            "conditions": [],
            "observedGeneration": "1",
            "runningCount": 0,
            "succeededCount": 0,
            "failedCount": 0,
            "cancelledCount": 0,
            "retriedCount": 0,
            "logUri": f"https://console.cloud.google.com/logs/viewer?project={self.project.id}&resource=cloud_run_job/location/{location}/job_name/{job}",
            "etag": f'"{secrets.token_hex(8)}"',
        }
        with self._lock:
            if found["name"] not in self._jobs:  # deleted meanwhile
                raise GoogleError(404, f"Resource '{job}' of kind 'JOB' in region '{location}' in project '{project}' does not exist.")
            self._executions[name] = execution
            found["executionCount"] = int(found.get("executionCount") or 0) + 1
            found["latestCreatedExecution"] = {"name": name, "createTime": now, "completionStatus": COMPLETION["running"]}
            for index in range(execution["taskCount"]):
                self._new_task(execution, index)
            for index in range(execution["taskCount"]):
                self._start_attempt(f"{name}/tasks/{execution_id}-task{index}")
            self._refresh(name)
            return self._operation(location, "Execution", execution)

    def _new_task(self, execution: dict[str, Any], index: int) -> None:
        execution_id = execution["name"].rsplit("/", 1)[1]
        name = f"{execution['name']}/tasks/{execution_id}-task{index}"
        template = execution["template"]
        self._tasks[name] = {
            "name": name,
            "uid": str(uuid.uuid4()),
            "generation": "1",
            "labels": execution["labels"],
            "annotations": execution["annotations"],
            "createTime": execution["createTime"],
            "updateTime": execution["createTime"],
            "job": execution["job"],
            "execution": execution_id,
            "containers": template["containers"],
            "volumes": template.get("volumes") or [],
            "maxRetries": int(template.get("maxRetries", DEFAULT_RETRIES)),
            "timeout": template["timeout"],
            "serviceAccount": template["serviceAccount"],
            "executionEnvironment": template.get("executionEnvironment") or 2,
            "reconciling": True,
            "conditions": [{"type": "Completed", "state": PENDING, "lastTransitionTime": execution["createTime"]}],
            "observedGeneration": "1",
            "index": index,
            "retried": 0,
            "logUri": execution["logUri"],
            "etag": f'"{secrets.token_hex(8)}"',
            **({"nodeSelector": template["nodeSelector"]} if template.get("nodeSelector") else {}),
            **({"vpcAccess": template["vpcAccess"]} if template.get("vpcAccess") else {}),
        }
        key = f"{execution_id}-task{index}"
        self._task_state[name] = _Task(key=key)
        self.sandbox.metadata.register(key, lambda: self._metadata_facts(name), template["serviceAccount"])

    def _metadata_facts(self, task_name: str) -> dict[str, Any] | None:
        with self._lock:
            task = self._tasks.get(task_name)
            if task is None:
                return None
            number, region = self.project.number, self.sandbox.region
            return {
                "instance/id": task["uid"].replace("-", ""),
                "instance/region": f"projects/{number}/regions/{region}",
                "instance/zone": f"projects/{number}/zones/{region}-1",
            }

    def _start_attempt(self, task_name: str) -> None:
        """The task's next attempt: its machine boots in the runner's next round. An attempt that
        cannot start (a missing secret, nothing to run) fails at once, and may be retried."""
        task = self._tasks[task_name]
        execution = self._executions[_execution_of(task_name)]
        container = task["containers"][0]
        number = int(task["retried"])
        command = [*(container.get("command") or []), *(container.get("args") or [])]
        images, image = self.sandbox.images, container["image"]
        in_registry = images is not None and images.holds(image)
        if in_registry and not images.has(image):
            return self._attempt_failed(task_name, 5, f"Image '{image}' not found.", None)
        if not command and not in_registry:
            return self._attempt_failed(
                task_name,
                3,
                f"The sandbox cannot run image {container['image']}'s own entrypoint: give the container a command or args.",
                None,
            )
        env = {}
        for index, variable in enumerate(container.get("env") or []):
            reference = (variable.get("valueSource") or {}).get("secretKeyRef")
            if reference is None:
                env[variable["name"]] = variable.get("value", "")
                continue
            version = reference.get("version") or "latest"
            secret = (
                reference["secret"]
                if reference["secret"].startswith("projects/")
                else f"projects/{self.project.number}/secrets/{reference['secret']}"
            )
            refused = self._secret_refused(task["serviceAccount"], secret, version)
            if refused:
                return self._attempt_failed(task_name, 7, f"spec.template.spec.containers[0].env[{index}].value_from.{refused}", None)
            try:
                env[variable["name"]] = self.sandbox.secrets.value(reference["secret"], version)
            except GoogleError:
                message = (
                    f"spec.template.spec.containers[0].env[{index}].value_from.secret_key_ref.name: Secret "
                    f"{secret}/versions/{version} was not found"
                )
                return self._attempt_failed(task_name, 5, message, None)
        env.update(
            CLOUD_RUN_JOB=task["job"],
            CLOUD_RUN_EXECUTION=task["execution"],
            CLOUD_RUN_TASK_INDEX=str(task["index"]),
            CLOUD_RUN_TASK_ATTEMPT=str(number),
            CLOUD_RUN_TASK_COUNT=str(execution["taskCount"]),
        )
        limits = (container.get("resources") or {}).get("limits") or {}
        attempt = Attempt(
            instance_id=f"{PREFIX}{task['execution']}-task{task['index']}-{number}",
            task=task_name,
            number=number,
            # An image of the sandbox's registry runs with the instance's engine; any other stands for this host.
            script=self._in_image(image, container) if in_registry else shlex.join(command),
            env=env,
            timeout=_seconds(task["timeout"], "timeout"),
            instance_type=f"cloud-run-{limits.get('cpu', '1')}cpu-{limits.get('memory', '512Mi')}",
            # Direct VPC egress: an address of the subnetwork (the sandbox has one, the default's); no
            # firewall rule admits anything to a task, which takes no inbound connections.
            private_address=f"{self.sandbox.compute.network.allocate()}/{ipaddress.ip_network(SUBNET).prefixlen}"
            if task.get("vpcAccess")
            else None,
        )
        self._attempts[attempt.instance_id] = attempt
        self._task_state[task_name].attempts.append(attempt)

    def _in_image(self, image: str, container: dict[str, Any]) -> str:
        """The boot script that runs ``container`` in ``image`` with the instance's engine, the sandbox's
        shared folders (a test's scratch folder) mounted, but not its image layers (the engine's own)."""
        images = self.sandbox.images
        folders = [folder for folder in self.sandbox.runner.shared if folder != str(images.layers)]
        return images.run_script(image, container.get("command") or [], container.get("args") or [], folders)

    def _secret_refused(self, account: str, secret: str, version: str) -> str | None:
        """Why the task's service ``account`` may not read ``secret``'s ``version`` (Cloud Run reads a
        secretKeyRef as the task's account, which needs secretmanager.versions.access on it), worded as
        Cloud Run words it; None when it may (or IAM is not enforced)."""
        gate = self.sandbox.enforcement
        if gate is None:
            return None
        resource = gate.scope.secret(self.project.id, secret.rsplit("/", 1)[-1], version)
        if gate.allows(f"serviceAccount:{account}", Check("secretmanager.versions.access", resource)):
            return None
        return (
            f"secret_key_ref.name: Permission denied on secret: {secret}/versions/{version} for service account {account}. "
            "The service account used must be granted the 'Secret Manager Secret Accessor' role "
            "(roles/secretmanager.secretAccessor) at the secret, project or higher level."
        )

    def _attempt_failed(self, task_name: str, code: int, message: str, exit_code: int | None) -> None:
        task = self._tasks[task_name]
        result: dict[str, Any] = {"status": {"code": code, "message": message}}
        if exit_code is not None:
            result["exitCode"] = 128 - exit_code if exit_code < 0 else exit_code  # a signal's, as a shell reports it
            if exit_code < 0:
                result["termSignal"] = -exit_code
        if self._task_state[task_name].state in TERMINAL:
            return
        if int(task["retried"]) < int(task["maxRetries"]):
            task["retried"] = int(task["retried"]) + 1
            task["lastAttemptResult"] = result
            self._executions[_execution_of(task_name)]["retriedCount"] += 1
            self._task_state[task_name].state = "pending"
            self._start_attempt(task_name)
            self._refresh(_execution_of(task_name))
            return
        self._task_ended(task_name, "failed", result, message)

    def _task_ended(self, task_name: str, state: str, result: dict[str, Any] | None, message: str) -> None:
        task, held = self._tasks[task_name], self._task_state[task_name]
        if held.state in TERMINAL:
            return
        held.state = state
        now = rfc3339()
        task.update(completionTime=now, updateTime=now, reconciling=False)
        if result is not None:
            task["lastAttemptResult"] = result
        condition: dict[str, Any] = {"type": "Completed", "state": SUCCEEDED if state == "succeeded" else FAILED, "lastTransitionTime": now}
        if state == "failed":
            condition.update(message=message, executionReason=NON_ZERO_EXIT_CODE)
        elif state == "cancelled":
            condition.update(message=message or "The task was cancelled.", executionReason=CANCELLED)
        task["conditions"] = [condition]
        self._refresh(_execution_of(task_name))

    def _end_task(self, task_name: str, state: str, message: str, why: str = "cancelled") -> None:
        """Ends a task from outside (cancel, delete): its running machine is ended by the runner."""
        for attempt in self._task_state[task_name].attempts:
            if not attempt.finished and attempt.end is None:
                attempt.end = why
                if attempt.booted is None:  # never booted: no machine to wait for (booted() undoes this if it raced)
                    attempt.finished = True
        if state:
            self._task_ended(task_name, state, None, message)

    def _refresh(self, name: str) -> None:
        """An execution's counts and conditions from its tasks; its job's latest execution."""
        execution = self._executions.get(name)
        if execution is None:
            return
        states = [held.state for task, held in self._task_state.items() if _execution_of(task) == name]
        execution.update(
            runningCount=states.count("running"),
            succeededCount=states.count("succeeded"),
            failedCount=states.count("failed"),
            cancelledCount=states.count("cancelled"),
            updateTime=rfc3339(),
        )
        status = "running"
        if states and all(state in TERMINAL for state in states) and "completionTime" not in execution:
            now = rfc3339()
            execution.update(completionTime=now, reconciling=False)
            execution_id = name.rsplit("/", 1)[1]
            condition: dict[str, Any] = {"type": "Completed", "lastTransitionTime": now}
            if "cancelled" in states:
                condition.update(state=FAILED, executionReason=CANCELLED, message="The execution was cancelled.")
            elif "failed" in states:
                failed = next(task for task, held in self._task_state.items() if _execution_of(task) == name and held.state == "failed")
                task_id = failed.rsplit("/", 1)[1]
                message = self._tasks[failed]["conditions"][0].get("message", "")
                condition.update(state=FAILED, executionReason=NON_ZERO_EXIT_CODE, message=f"Task {task_id} failed with message: {message}")
            else:
                condition.update(state=SUCCEEDED, message=f"Execution {execution_id} has completed successfully.")
            execution["conditions"] = [condition]
            for task, held in self._task_state.items():
                if _execution_of(task) == name:
                    self.sandbox.metadata.forget(held.key)
        elif "completionTime" not in execution:
            started = any(state != "pending" for state in states)
            execution["conditions"] = [
                {"type": "Completed", "state": PENDING, "lastTransitionTime": execution["createTime"]},
                {
                    "type": "Started",
                    "state": SUCCEEDED if started else PENDING,
                    "lastTransitionTime": execution.get("startTime", execution["createTime"]),
                },
            ]
        if "completionTime" in execution:
            condition = execution["conditions"][0]
            status = (
                "succeeded"
                if condition["state"] == SUCCEEDED
                else "cancelled"
                if condition.get("executionReason") == CANCELLED
                else "failed"
            )
        job = self._jobs.get(name.rsplit("/executions/", 1)[0])
        if job is not None and (job.get("latestCreatedExecution") or {}).get("name") == name:
            job["latestCreatedExecution"]["completionStatus"] = COMPLETION[status]
            if "completionTime" in execution:
                job["latestCreatedExecution"]["completionTime"] = execution["completionTime"]

    # -- executions and tasks -----------------------------------------------------------------------------
    def _execution(self, project: str, location: str, job: str, execution: str, permission: str) -> dict[str, Any]:
        name = f"{self._parent(project, location, permission)}/jobs/{job}/executions/{execution}"
        found = self._executions.get(name)
        if found is None:
            raise GoogleError(
                404, f"Resource '{execution}' of kind 'EXECUTION' in region '{location}' in project '{project}' does not exist."
            )
        return found

    def _get_execution(self, request: Request, project: str, location: str, job: str, execution: str) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self._execution(project, location, job, execution, "run.executions.get"))

    def _list_executions(self, request: Request, project: str, location: str, job: str) -> dict[str, Any]:
        parent = self._parent(project, location, "run.executions.list")
        with self._lock:
            if job != "-":
                self._job(project, location, job, "run.executions.list")
            prefix = f"{parent}/jobs/{job}/executions/" if job != "-" else f"{parent}/jobs/"
            found = sorted(
                (copy.deepcopy(e) for name, e in self._executions.items() if name.startswith(prefix)),
                key=lambda e: e["createTime"],
                reverse=True,
            )
        chunk, token = page(found, request.query_params)
        return {"executions": chunk, **({"nextPageToken": token} if token else {})}

    def _cancel(self, request: Request, project: str, location: str, job: str, execution: str) -> dict[str, Any]:
        with self._lock:
            found = self._execution(project, location, job, execution, "run.executions.cancel")
            if "completionTime" in found:
                raise GoogleError(
                    400, f"Execution {execution} has already completed and cannot be cancelled.", status="FAILED_PRECONDITION"
                )
            for task in [task for task in self._task_state if _execution_of(task) == found["name"]]:
                if self._task_state[task].state not in TERMINAL:
                    self._end_task(task, "cancelled", "The task was cancelled.")
            return self._operation(location, "Execution", found)

    def _delete_execution(self, request: Request, project: str, location: str, job: str, execution: str) -> dict[str, Any]:
        with self._lock:
            found = self._execution(project, location, job, execution, "run.executions.delete")
            self._forget_execution(found["name"])
            return self._operation(location, "Execution", {**found, "deleteTime": rfc3339()})

    def _forget_execution(self, name: str) -> None:
        """Ends an execution's machines and forgets it and its tasks (a delete)."""
        for task in [task for task in self._task_state if _execution_of(task) == name]:
            self._end_task(task, "", "", why="deleted")
            self.sandbox.metadata.forget(self._task_state[task].key)
            del self._task_state[task]
            del self._tasks[task]
        del self._executions[name]

    def _get_task(self, request: Request, project: str, location: str, job: str, execution: str, task: str) -> dict[str, Any]:
        with self._lock:
            parent = self._execution(project, location, job, execution, "run.tasks.get")["name"]
            found = self._tasks.get(f"{parent}/tasks/{task}")
            if found is None:
                raise GoogleError(404, f"Resource '{task}' of kind 'TASK' in region '{location}' in project '{project}' does not exist.")
            return copy.deepcopy(found)

    def _list_tasks(self, request: Request, project: str, location: str, job: str, execution: str) -> dict[str, Any]:
        with self._lock:
            parent = self._execution(project, location, job, execution, "run.tasks.list")["name"]
            found = sorted(
                (copy.deepcopy(t) for name, t in self._tasks.items() if name.startswith(parent + "/tasks/")), key=lambda t: t["index"]
            )
        chunk, token = page(found, request.query_params)
        return {"tasks": chunk, **({"nextPageToken": token} if token else {})}

    # -- operations ---------------------------------------------------------------------------------------
    def _operation(self, location: str, kind: str, resource: dict[str, Any]) -> dict[str, Any]:
        typed = {"@type": f"type.googleapis.com/google.cloud.run.v2.{kind}", **copy.deepcopy(resource)}
        operation = {
            "name": f"projects/{self.project.id}/locations/{location}/operations/{uuid.uuid4()}",
            "metadata": typed,
            "done": True,
            "response": typed,
        }
        with self._lock:
            self._operations[operation["name"]] = operation
        return operation

    def _get_operation(self, request: Request, project: str, location: str, operation: str) -> dict[str, Any]:
        name = f"{self._parent(project, location, 'run.operations.get')}/operations/{operation}"
        with self._lock:
            found = self._operations.get(name)
        if found is None:
            raise GoogleError(404, f"Operation '{name}' not found.")
        return found

    def _delete_operation(self, request: Request, project: str, location: str, operation: str) -> dict[str, Any]:
        self._get_operation(request, project, location, operation)
        with self._lock:
            self._operations.pop(f"projects/{self.project.id}/locations/{location}/operations/{operation}", None)
        return {}

    def _list_operations(self, request: Request, project: str, location: str) -> dict[str, Any]:
        parent = self._parent(project, location, "run.operations.list")
        with self._lock:
            found = [op for name, op in self._operations.items() if name.startswith(parent + "/")]
        chunk, token = page(found, request.query_params)
        return {"operations": chunk, **({"nextPageToken": token} if token else {})}


def _execution_of(task_name: str) -> str:
    return task_name.rsplit("/tasks/", 1)[0]


def _override(containers: list[dict[str, Any]], override: dict[str, Any], where: str) -> None:
    """Applies a run's container override (args replace, env merges by name) to its container."""
    name = override.get("name")
    target = next((c for c in containers if c.get("name") == name), None) if name else containers[0]
    if target is None:
        raise GoogleError(400, f"{where}.name: no container named {name!r} in the job")
    if override.get("clearArgs"):
        target["args"] = []
    if override.get("args"):
        target["args"] = list(override["args"])
    if override.get("env"):
        merged = {env["name"]: env for env in target.get("env") or []}
        merged.update({env["name"]: env for env in override["env"]})
        target["env"] = list(merged.values())


def _seconds(duration: Any, where: str) -> float:
    """A protobuf Duration's JSON (``"600s"``, ``"1.5s"``) in seconds."""
    text = str(duration)
    if not re.fullmatch(r"\d+(\.\d+)?s", text):
        raise GoogleError(400, f"{where}: invalid duration {text!r}: expected seconds such as '3600s'")
    return float(text[:-1])


def _cpu(text: str, where: str) -> float:
    try:
        return float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    except ValueError:
        raise GoogleError(400, f"{where}.cpu: Invalid value specified for cpu: {text!r}") from None


def _bytes(text: str, where: str) -> int:
    """A Kubernetes quantity (``512Mi``, ``4Gi``, ``1G``) in bytes."""
    units = {"Ki": 1024, "Mi": MiB, "Gi": GiB, "Ti": 1024 * GiB, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "": 1}
    found = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T|)", text.strip())
    if found is None:
        raise GoogleError(400, f"{where}.memory: Invalid value specified for memory: {text!r} (e.g. '512Mi', '4Gi')")
    return int(float(found.group(1)) * units[found.group(2)])


def _size(size: int) -> str:
    return f"{size // GiB}Gi" if size % GiB == 0 else f"{size // MiB}Mi"


def _check_shape(limits: dict[str, Any], accelerator: str | None, location: str, where: str) -> None:
    """Cloud Run's cpu/memory pairs and GPU rules, with its kind of message."""
    cpu = _cpu(str(limits.get("cpu", "1")), where)
    memory = _bytes(str(limits.get("memory", "512Mi")), where)
    if cpu not in CPU_MEMORY:
        raise GoogleError(
            400, f"{where}.cpu: Invalid value specified for cpu: {limits.get('cpu')}. Cloud Run jobs take 1, 2, 4, 6 or 8 CPUs."
        )
    least, most = CPU_MEMORY[cpu]
    if not least <= memory <= most:
        raise GoogleError(
            400,
            f"{where}.memory: Invalid value specified for container memory. For {cpu:.1f} CPU, memory must be between "
            f"{_size(least)} and {_size(most)} inclusive.",
        )
    gpus = limits.get("nvidia.com/gpu")
    if accelerator is None:
        if gpus not in (None, "0"):
            raise GoogleError(400, f"{where}: nvidia.com/gpu needs node_selector.accelerator (nvidia-l4)")
        return
    if accelerator != "nvidia-l4":
        raise GoogleError(400, f"node_selector.accelerator: {accelerator!r} is not supported; Cloud Run offers nvidia-l4")
    if location not in L4_REGIONS:
        raise GoogleError(
            400,
            f"node_selector.accelerator: nvidia-l4 GPUs are not available in {location}; regions with them: "
            f"{', '.join(sorted(L4_REGIONS))}",
        )
    if gpus != "1":
        raise GoogleError(
            400, f"{where}: a node_selector.accelerator needs the limit nvidia.com/gpu: 1 (one nvidia-l4 per instance), got {gpus!r}"
        )
    if cpu < 4 or memory < 16 * GiB:
        raise GoogleError(
            400, f"{where}: a GPU (nvidia-l4) requires at least 4 CPU and 16Gi of memory, got {cpu:g} CPU and {_size(memory)}."
        )
