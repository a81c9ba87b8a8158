"""Cloud Run jobs as machines: one job per machine, run once, its execution the machine's life.

A machine ``run-<12 hex>`` is the job ``projects/P/locations/R/jobs/run-<12 hex>`` with one task
(no retries) whose container runs the boot script with bash. The job carries the launch's labels
(GCP label syntax) and, in annotations, the user's tags and owner as given, which is what
:meth:`CloudRunService.machines` reports and filters on. Secrets reach the task only as
``$PREFECT_REMOTE_SECRETS_JSON``, which Cloud Run fills from the launch's Secret Manager secret
(``valueSource.secretKeyRef``): the job spec never holds a secret value.

The state comes from the job's latest execution, the exit code from its task's last attempt (the
payload's own code, not 0/1). Terminating cancels the execution, then deletes the job; jobs whose
execution ended are deleted by :meth:`CloudRunService.sweep` (from :meth:`~CloudRunService.start`
and from listing all machines, at most every few minutes), after their end is in the machine's
record, so Cloud Run's 1,000 jobs per region are never used up by finished runs. What Cloud Run
can run, on which shape, at what price, is :mod:`~prefect_remote.providers.gcp.cloudrun_catalog`'s.

>>> from prefect_remote.providers.gcp import GCPProvider
>>> from prefect_remote.spec import MachineSpec
>>> service = CloudRunService(GCPProvider(project="my-project", region="us-central1"))
>>> service.choose_instance_type(MachineSpec(cpu=2, memory="6 GiB")).describe()
'cloud-run-2cpu-6gib (2 cpu, 6 GiB, x86_64)'
>>> service.unfit(MachineSpec(cpu=1, memory="8 GiB"))
'cpu=1, memory=8 GiB is not a shape Cloud Run allows (1 vCPU takes 512 MiB to 4 GiB); the nearest it allows is 2 vCPU with 8 GiB'
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from prefect_remote.providers.base import Capabilities, InstanceType, Launch, Machine, MachineState
from prefect_remote.providers.gcp import cloudrun_catalog
from prefect_remote.providers.gcp.cloudrun_catalog import GA_TIMEOUT, L4, MAX_TIMEOUT, SHAPES, cpus, limit_memory, memory_bytes, shape
from prefect_remote.providers.gcp.runtime import SECRETS_ENV
from prefect_remote.providers.gcp.service import LAUNCH_LABEL, RECORDS_LABEL, SERVICE_LABEL, GCPService, ServiceHost
from prefect_remote.units import format_size

if TYPE_CHECKING:
    from prefect_remote.spec import MachineSpec

logger = logging.getLogger(__name__)

CLOUD_RUN_QUOTAS_PAGE = "https://console.cloud.google.com/iam-admin/quotas?service=run.googleapis.com"
PYTHON_IMAGE = "docker.io/library/python:{minor}-slim"  # has bash and python3, which the stock boot needs

TAGS_ANNOTATION = "prefect-remote/tags"  # the user's tags as given (labels hold no '.', '/', capitals)
OWNER_ANNOTATION = "prefect-remote/owner"
SPEC_ANNOTATION = "prefect-remote/spec"

SWEEP_EVERY = 300.0  # seconds between sweeps of one provider
SWEEP_AFTER = 600.0  # an ended job is deleted this long after its end (its record keeps reason and exit code)
NEVER_RAN_AFTER = 600.0  # a job never run this long after its creation was left by a launch that died
OPERATION_TIMEOUT = 120.0  # creating or deleting a job takes seconds; a cancel too
FEW_IDS = 3  # up to this many ids are read one get_job each, more with one list_jobs


def _epoch(value: Any) -> float | None:
    """A proto timestamp field (a datetime, or None when unset) as epoch seconds."""
    if value is None or not hasattr(value, "timestamp"):
        return None
    epoch = value.timestamp()
    return epoch if epoch > 0 else None


class CloudRunService(GCPService):
    """Machines as Cloud Run job executions: single machines that accept no connections."""

    name: ClassVar[str] = "Cloud Run"
    key: ClassVar[str] = "cloud-run"
    id_prefix: ClassVar[str] = "run-"
    capabilities: ClassVar[Capabilities] = Capabilities(
        inbound_connections=False, terminate_one=True, containers=True, gpus=True, max_lifetime=MAX_TIMEOUT
    )

    def __init__(self, provider: ServiceHost) -> None:
        super().__init__(provider)
        self._ended: dict[str, tuple[int | None, str | None, float | None]] = {}  # execution -> its end (immutable)
        self._last_sweep = 0.0
        self._sweep_lock = threading.Lock()

    # -- what it can run ----------------------------------------------------------------------------
    def instance_types(self) -> Sequence[InstanceType]:
        return cloudrun_catalog.catalog()

    def choose_instance_type(self, spec: MachineSpec) -> InstanceType:
        return cloudrun_catalog.choose(spec, self.options.region)

    def placement(self, instance_type: InstanceType) -> str:
        """The shape in words (its instance type name is prefect-remote's): ``"Cloud Run (4 cpu / 16 GiB, us-central1)"``."""
        gpu = f" / {instance_type.gpu}x {instance_type.gpu_type}" if instance_type.gpu else ""
        return f"Cloud Run ({instance_type.cpu} cpu / {format_size(instance_type.memory)}{gpu}, {self.options.region})"

    def unfit(self, spec: MachineSpec) -> str | None:
        return cloudrun_catalog.refusal(spec, self.options.region)

    # -- starting -----------------------------------------------------------------------------------
    @property
    def parent(self) -> str:
        return f"projects/{self.clients.project}/locations/{self.options.region}"

    def job_name(self, machine_id: str) -> str:
        return f"{self.parent}/jobs/{machine_id}"

    def image(self, spec: MachineSpec) -> str:
        """``spec.image``, else a public Python image of the software environment's Python minor
        (this interpreter's without one), into which the stock boot installs uv and the agent."""
        if spec.image:
            return spec.image
        minor = f"{sys.version_info.major}.{sys.version_info.minor}"
        if spec.software:
            from prefect_remote.software.rebuild import load_spec

            minor = ".".join(load_spec(self.provider.machine_store(), spec.software)["python"].split(".")[:2])
        return PYTHON_IMAGE.format(minor=minor)

    def vpc_access(self) -> Any:
        """Direct VPC egress into the provider's network, for private addresses only (the rest, the
        Prefect API and package indexes, leaves as before): a task reaches the VMs it launches (a
        cluster a flow run starts) on their internal addresses, from the subnetwork's range, which
        their firewall rule admits (``ComputeService.ingress_cidr``)."""
        from google.cloud import run_v2

        interface = run_v2.VpcAccess.NetworkInterface(network=_resource_name(self.options.network))
        if self.options.subnetwork:  # else Cloud Run takes the network's subnetwork of the same name
            interface.subnetwork = _resource_name(self.options.subnetwork)
        return run_v2.VpcAccess(network_interfaces=[interface], egress=run_v2.VpcAccess.VpcEgress.PRIVATE_RANGES_ONLY)

    def job(self, launch: Launch) -> Any:
        """The Job a machine of ``launch`` is (the same for each of its machines)."""
        from google.cloud import run_v2
        from google.protobuf import duration_pb2

        spec, shape_ = launch.spec, launch.instance_type
        limits = {"cpu": str(shape_.cpu), "memory": limit_memory(shape_.memory), **({"nvidia.com/gpu": "1"} if shape_.gpu else {})}
        env = []
        if launch.has_secrets:  # a reference Cloud Run resolves at start: the spec holds no value
            from prefect_remote.providers.gcp.secrets import VERSION, secret_id

            selector = run_v2.SecretKeySelector(secret=secret_id(launch.id, self.provider.records.label), version=VERSION)
            env.append(run_v2.EnvVar(name=SECRETS_ENV, value_source=run_v2.EnvVarSource(secret_key_ref=selector)))
        task = run_v2.TaskTemplate(
            containers=[
                run_v2.Container(
                    image=self.image(spec),
                    command=["/bin/bash", "-c"],  # the boot script is bash (`set -o pipefail`, process substitution)
                    args=[launch.boot_script],
                    env=env,
                    resources=run_v2.ResourceRequirements(limits=limits),
                )
            ],
            max_retries=0,  # a machine runs once: a retry would run the payload (a flow run) twice
            timeout=duration_pb2.Duration(seconds=int(cloudrun_catalog.task_timeout(spec))),
            service_account=self.options.service_account or "",
            vpc_access=self.vpc_access(),
        )
        if shape_.gpu:
            task.node_selector = run_v2.NodeSelector(accelerator=L4)
            task.gpu_zonal_redundancy_disabled = True  # what jobs' GPUs are (and are priced as)
        labels = self.labels(launch)
        annotations = {TAGS_ANNOTATION: json.dumps(dict(launch.tags), sort_keys=True), SPEC_ANNOTATION: spec.summary()}
        if launch.owner:
            annotations[OWNER_ANNOTATION] = launch.owner
        job = run_v2.Job(
            labels=labels,
            annotations=annotations,
            template=run_v2.ExecutionTemplate(labels=labels, task_count=1, parallelism=1, template=task),
        )
        # Task timeouts over 24 hours are in Preview, and GPU jobs without zonal redundancy were
        # (2025): BETA lets either through, and a GA feature accepts it all the same.
        if cloudrun_catalog.task_timeout(spec) > GA_TIMEOUT or shape_.gpu:
            from google.api import launch_stage_pb2

            job.launch_stage = launch_stage_pb2.LaunchStage.BETA
        return job

    @contextlib.contextmanager
    def _quota_refusal(self) -> Any:
        """Cloud Run's refusal of a job over the project's regional quotas (400 ``Quota violated:``
        and each quota's ``requested``/``allowed``) as a :class:`CapacityError` that names the fix."""
        from google.api_core import exceptions

        from prefect_remote.errors import CapacityError

        try:
            yield
        except exceptions.BadRequest as error:
            message = str(error.message)
            if "Quota violated:" not in message:
                raise
            violated = "; ".join(line.strip() for line in message.split("Quota violated:", 1)[1].splitlines() if line.strip())
            raise CapacityError(
                f"gcp (Cloud Run): the project's Cloud Run quotas in {self.options.region} do not allow this task ({violated}); "
                f"raise them ({CLOUD_RUN_QUOTAS_PAGE}), ask for less, or use gcp_service='compute' "
                "(`prefect-remote doctor gcp` checks them)"
            ) from None

    def start(self, launch: Launch, machine_ids: Sequence[str]) -> list[Machine]:
        self.sweep_now_and_then()
        job = self.job(launch)
        jobs, executions = self.clients.jobs(), []
        try:
            with self.clients.translated("run.jobs.create"), self._quota_refusal():
                for machine_id in machine_ids:
                    jobs.create_job(parent=self.parent, job=job, job_id=machine_id).result(timeout=OPERATION_TIMEOUT)
            with self.clients.translated("run.jobs.run"):
                for machine_id in machine_ids:
                    executions.append(self._run(machine_id))
        except BaseException:
            try:
                self._remove(machine_ids, "its launch failed")
            except Exception as error:
                logger.warning(
                    "Cloud Run: removing the jobs of a failed launch (%s) failed: %s; the sweep removes them later",
                    ", ".join(machine_ids),
                    error,
                )
            raise
        created = time.time()
        return [
            Machine(
                id=machine_id,
                provider=self.provider.name,
                state="pending",
                instance_type=launch.instance_type.name,
                created=created,
                tags=dict(launch.tags),
                spec=launch.spec.summary(),
                region=self.options.region,
                owner=launch.owner,
                details={
                    "price_per_hour": launch.instance_type.price,
                    "launch": launch.id,
                    "execution": execution,
                    "image": job.template.template.containers[0].image,
                },
            )
            for machine_id, execution in zip(machine_ids, executions, strict=True)
        ]

    def _run(self, machine_id: str) -> str:
        """Runs the job once; returns its execution's name. The run operation lasts as long as the
        execution, so it is not waited for: its metadata already names the execution."""
        operation = self.clients.jobs().run_job(name=self.job_name(machine_id))
        name = getattr(operation.metadata, "name", "")
        if not name:  # the execution is also the job's latest
            name = self.clients.jobs().get_job(name=self.job_name(machine_id)).latest_created_execution.name
        return name

    # -- reading back -------------------------------------------------------------------------------
    def machines(self, machine_ids: Sequence[str] | None = None, labels: Mapping[str, str] | None = None) -> list[Machine]:
        wanted = None if machine_ids is None else [m for m in dict.fromkeys(machine_ids) if m.startswith(self.id_prefix)]
        if wanted == []:
            return []
        jobs = self._jobs(wanted)
        if machine_ids is None:
            self.sweep_now_and_then(jobs)
        found = []
        for job in jobs:
            machine = self._machine(job)
            if labels and any(machine.tags.get(key) != value for key, value in labels.items()):
                continue
            found.append(machine)
        return found

    def _jobs(self, machine_ids: Sequence[str] | None) -> list[Any]:
        """prefect-remote's jobs with these ids (None: all): a get each for a few, else one listing."""
        from google.api_core import exceptions

        jobs_client = self.clients.jobs()
        with self.clients.translated("run.jobs.list" if machine_ids is None or len(machine_ids) > FEW_IDS else "run.jobs.get"):
            if machine_ids is not None and len(machine_ids) <= FEW_IDS:
                jobs = []
                for machine_id in machine_ids:
                    try:
                        jobs.append(jobs_client.get_job(name=self.job_name(machine_id)))
                    except exceptions.NotFound:
                        pass
            else:
                jobs = list(jobs_client.list_jobs(parent=self.parent))
        ids = None if machine_ids is None else set(machine_ids)
        return [
            job
            for job in jobs
            if job.labels.get(SERVICE_LABEL) == "cloud-run"
            and _job_id(job).startswith(self.id_prefix)
            and (ids is None or _job_id(job) in ids)
        ]

    def _machine(self, job: Any) -> Machine:
        """A job as the machine it is."""
        state, execution, exit_code, reason, ended = self._state(job)
        limits = dict(job.template.template.containers[0].resources.limits) if job.template.template.containers else {}
        gpu = bool(limits.get("nvidia.com/gpu"))
        cpu, memory = cpus(limits.get("cpu", "1")), memory_bytes(limits.get("memory", "512Mi"))
        type_ = shape(cpu, memory, gpu) if cpu in SHAPES and memory else None
        annotations = dict(job.annotations)
        try:
            tags = json.loads(annotations.get(TAGS_ANNOTATION, "{}"))
        except ValueError:
            tags = {}
        return Machine(
            id=_job_id(job),
            provider=self.provider.name,
            state=state,
            instance_type=type_.name if type_ else cloudrun_catalog.shape_name(cpu, memory, gpu),
            created=_epoch(job.create_time) or time.time(),
            tags=tags,
            spec=annotations.get(SPEC_ANNOTATION, "default"),
            region=self.options.region,
            owner=annotations.get(OWNER_ANNOTATION),
            reason=reason,
            exit_code=exit_code,
            details={
                "price_per_hour": type_.price if type_ else None,
                "launch": job.labels.get(LAUNCH_LABEL),
                "records": job.labels.get(RECORDS_LABEL),  # whose pool it is
                "execution": execution,
                "image": job.template.template.containers[0].image if job.template.template.containers else None,
                "ended": ended,
            },
        )

    def _state(self, job: Any) -> tuple[MachineState, str | None, int | None, str | None, float | None]:
        """(state, execution name, exit code, reason, ended) of a job's latest execution."""
        from google.cloud import run_v2

        reference = job.latest_created_execution
        execution = reference.name or None
        if execution is None:
            created = _epoch(job.create_time) or time.time()
            if time.time() - created > NEVER_RAN_AFTER:
                return "terminated", None, None, "its job was created but never run (its launch stopped between the two)", created
            return "pending", None, None, None, None
        if execution in self._ended:
            exit_code, reason, ended = self._ended[execution]
            return "terminated", execution, exit_code, reason, ended
        status = run_v2.ExecutionReference.CompletionStatus
        finished = (status.EXECUTION_SUCCEEDED, status.EXECUTION_FAILED, status.EXECUTION_CANCELLED)
        if reference.completion_status == status.EXECUTION_PENDING and not _epoch(reference.completion_time):
            return "pending", execution, None, None, None
        if reference.completion_status == status.EXECUTION_RUNNING and not _epoch(reference.completion_time):
            return "running", execution, None, None, None
        if reference.completion_status not in finished and not _epoch(reference.completion_time):
            # An older API (or a fake) without completion_status: the execution says.
            with self.clients.translated("run.executions.get"):
                found = self.clients.executions().get_execution(name=execution)
            if not _epoch(found.completion_time):
                return ("running" if found.running_count or _epoch(found.start_time) else "pending"), execution, None, None, None
        exit_code, reason, ended = self._end(execution)
        return "terminated", execution, exit_code, reason, ended

    def _end(self, execution: str) -> tuple[int | None, str | None, float | None]:
        """How an ended execution ended: its task's exit code, the reason Cloud Run gives, and when
        (read once: an ended execution does not change)."""
        from google.api_core import exceptions

        with self.clients.translated("run.executions.get"):
            try:
                found = self.clients.executions().get_execution(name=execution)
                tasks = list(self.clients.tasks().list_tasks(parent=execution))
            except exceptions.NotFound:  # deleted between the job's listing and now
                return None, "its Cloud Run job was deleted", None
        exit_code = _exit_code(tasks[0]) if tasks else None
        end = (exit_code, _reason(found, exit_code), _epoch(found.completion_time))
        self._ended[execution] = end
        return end

    # -- ending -------------------------------------------------------------------------------------
    def terminate(self, machine_ids: Sequence[str], reason: str, *, any_pool: bool = False) -> None:
        """Ends these jobs: only prefect-remote's (found by their service label) and, unless ``any_pool``,
        not another pool's (:meth:`foreign`)."""
        jobs = [
            job
            for job in self._jobs([m for m in machine_ids if m.startswith(self.id_prefix)])
            if any_pool or not self.foreign(_job_id(job), job.labels)
        ]
        self._remove([_job_id(job) for job in jobs], reason, jobs)

    def _remove(self, machine_ids: Sequence[str], reason: str, jobs: Sequence[Any] | None = None) -> None:
        """Cancels the executions of these jobs that still run, waits for the cancels, then deletes
        the jobs (a job deleted first could leave its execution running). ``jobs``: these jobs,
        when already read. Unknown ids are fine."""
        from google.api_core import exceptions

        # Ended or deleted meanwhile (over REST, cancelling a finished execution answers 400).
        gone = (exceptions.NotFound, exceptions.FailedPrecondition, exceptions.BadRequest)
        jobs = self._jobs(machine_ids) if jobs is None else jobs
        with self.clients.translated("run.executions.cancel"):
            cancels = []
            for job in jobs:
                state, execution, *_ = self._state(job)
                if execution and state != "terminated":
                    with contextlib.suppress(*gone):
                        cancels.append((_job_id(job), self.clients.executions().cancel_execution(name=execution)))
            for machine_id, operation in cancels:
                try:
                    operation.result(timeout=OPERATION_TIMEOUT)
                except gone:
                    pass
                except Exception as error:
                    logger.warning("Cloud Run: cancelling %s (%s) did not finish: %s; deleting its job anyway", machine_id, reason, error)
        with self.clients.translated("run.jobs.delete"):
            deletes = []
            for job in jobs:
                with contextlib.suppress(exceptions.NotFound):
                    deletes.append(self.clients.jobs().delete_job(name=job.name))
            for operation in deletes:
                with contextlib.suppress(exceptions.NotFound):
                    operation.result(timeout=OPERATION_TIMEOUT)
        if jobs:
            logger.debug("Cloud Run: ended %s (%s)", ", ".join(map(_job_id, jobs)), reason)

    # -- sweeping -------------------------------------------------------------------------------------
    def sweep_now_and_then(self, jobs: Sequence[Any] | None = None) -> list[str]:
        """:meth:`sweep`, at most every ``SWEEP_EVERY`` seconds per provider; never raises (a sweep
        is housekeeping: a launch or a listing must not fail for it). Never on a machine (a flow run
        starting a cluster): its account may not delete jobs, and launchers sweep."""
        if self.provider.runs_inside():
            return []
        with self._sweep_lock:
            if time.monotonic() - self._last_sweep < SWEEP_EVERY and self._last_sweep:
                return []
            self._last_sweep = time.monotonic()
        try:
            return self.sweep(SWEEP_AFTER, jobs=jobs)
        except Exception as error:
            logger.warning("Cloud Run: sweeping ended jobs failed (%s); the next sweep retries", error)
            return []

    def sweep(self, older_than: float = SWEEP_AFTER, *, jobs: Sequence[Any] | None = None) -> list[str]:
        """Deletes prefect-remote's jobs whose execution ended more than ``older_than`` seconds ago,
        or that were never run that long after their creation (a launcher that died in between),
        after writing each one's end (reason, exit code) into its machine record, which outlives
        the job. Only this pool's (its records label): another pool's end would be lost, its
        records being elsewhere, and its own launches sweep it. ``jobs`` is a listing already at
        hand. Returns the ids deleted."""
        now = time.time()
        done = []
        listed = list(jobs) if jobs is not None else self._jobs(None)
        for job in listed:
            machine = self._machine(job)
            if machine.details.get("records") not in (None, self.provider.records.label):
                continue
            ended = machine.details.get("ended") or machine.created
            if machine.state == "terminated" and now - ended > older_than:
                self.provider.records.end(machine.id, reason=machine.reason or "ended", exit_code=machine.exit_code, only_if_running=True)
                done.append(machine.id)
        if done:
            self._remove(done, "swept: its execution ended", [job for job in listed if _job_id(job) in done])
            self._ended = {name: end for name, end in self._ended.items() if name.split("/")[5] not in done}
            logger.info("Cloud Run: deleted %d ended job(s): %s", len(done), ", ".join(done))
        return done


def _resource_name(value: str) -> str:
    """A network or subnetwork as Cloud Run takes it: a full ``projects/…`` path as it is, else its
    name (Compute Engine's relative forms, ``global/networks/N`` and ``regions/R/subnetworks/S``).

    >>> _resource_name("global/networks/default"), _resource_name("projects/p/regions/r/subnetworks/s")
    ('default', 'projects/p/regions/r/subnetworks/s')
    """
    return value if value.startswith("projects/") else value.rsplit("/", 1)[-1]


def _job_id(job: Any) -> str:
    return job.name.rsplit("/", 1)[-1]


def _exit_code(task: Any) -> int | None:
    """The task's own exit code (its last attempt's): a signal's as 128 + its number, as shells do;
    None when the attempt ended without one (cancelled before it started)."""
    if "last_attempt_result" not in task:
        return None
    result = task.last_attempt_result
    if result.term_signal:
        return 128 + result.term_signal
    if result.exit_code or not result.status.code:  # 0 with an error status: no code (cancelled, never started)
        return result.exit_code
    return None


def _reason(execution: Any, exit_code: int | None) -> str:
    """Why an execution ended, in Cloud Run's words."""
    for condition in execution.conditions:
        if condition.type_ == "Completed" and condition.message:
            return condition.message
    messages = [
        condition.message for condition in execution.conditions if condition.message and condition.state == condition.State.CONDITION_FAILED
    ]
    if messages:
        return messages[0]
    if execution.cancelled_count:
        return "its Cloud Run execution was cancelled"
    return (
        "completed"
        if exit_code == 0
        else f"its task exited with code {exit_code}"
        if exit_code is not None
        else "its Cloud Run execution ended"
    )
