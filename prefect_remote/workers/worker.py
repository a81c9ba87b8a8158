"""Workers for the ``remote`` (hybrid) and ``remote:push`` work pools: one flow run, one fresh machine.

``run`` launches the machine without blocking the event loop, reports its id as the
infrastructure id, streams the machine's log (boot and environment rebuild included) into the flow
run's logs, and returns the payload's exit code; ``kill_infrastructure`` ends the machine when a
run is cancelled. The machine ends itself when the run ends, and at the ``timeout`` job variable.

Each machine holds a lease the worker renews while it follows the run, for all its runs in one call
per provider and interval: should the worker die and no other adopt the run within the ``keepalive``
job variable, the machine ends, and the machine itself marks the run Crashed, saying why
(``BootPayload.on_stop``: nobody else is left to).
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any
from uuid import UUID

import anyio
import anyio.abc
from prefect.exceptions import InfrastructureNotFound
from prefect.states import Cancelled
from prefect.workers.base import BaseWorker, BaseWorkerResult

from prefect_remote.errors import MachineNotFound
from prefect_remote.lease import LeaseKeeper
from prefect_remote.providers.base import Machine, Provider
from prefect_remote.workers.config import RemoteJobConfiguration, RemoteJobVariables

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun
    from prefect.logging.loggers import PrefectLogAdapter

LOG_POLL_SECONDS = 1.0
ADOPT_EVERY = 10.0  # seconds between looks for runs whose submitting worker is gone
# Routine lines the flow run's own Prefect logger printed: they reach the API from the machine already.
# Warnings and errors are kept: the engine may not have been able to ship them.
_PREFECT_INFO_LINE = re.compile(r"^\d{2}:\d{2}:\d{2}\.\d{3} \| (DEBUG|INFO)\s*\| ")


class RemoteWorkerResult(BaseWorkerResult):
    """The machine's id, the flow run process's exit code, and why the machine ended."""

    reason: str | None = None


class RemoteWorker(BaseWorker[RemoteJobConfiguration, RemoteJobVariables, RemoteWorkerResult]):
    """Runs each flow run on a fresh machine: ``prefect worker start --pool P --type remote``."""

    type = "remote"
    job_configuration = RemoteJobConfiguration
    job_configuration_variables = RemoteJobVariables
    _display_name = "prefect-remote"
    _description = (
        "Runs each flow run on a freshly provisioned machine sized by job variables (cpu, memory, gpu, vm_type, "
        "region, spot…), with your local environment synced by package sync. Hybrid: run a worker."
    )
    _documentation_url = "https://pypi.org/project/prefect-remote/"
    _logo_url = "https://raw.githubusercontent.com/PrefectHQ/prefect/main/docs/images/logos/prefect-logo-mark.png"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._followed: set[UUID] = set()  # flow runs whose machine this worker follows or followed: never adopted back
        self._last_adoption = 0.0
        self._providers: dict[str, Provider] = {}  # one per provider and options: one lease renewal for all their runs
        self._leases = LeaseKeeper()

    async def teardown(self, *exc_info: Any) -> None:
        self._leases.stop()  # the machines of runs in flight end after their keepalive, unless a worker adopts them
        await super().teardown(*exc_info)

    async def run(
        self,
        flow_run: FlowRun,
        configuration: RemoteJobConfiguration,
        task_status: anyio.abc.TaskStatus[str] | None = None,
    ) -> RemoteWorkerResult:
        logger = self.get_flow_run_logger(flow_run)
        # In a thread: it may start the host gateway, and in `prefect server start` this loop serves the API.
        provider, spec, payload = await anyio.to_thread.run_sync(configuration.machine_request, self._providers)
        tags = {key: value for key, value in configuration.labels.items() if value}
        launch = partial(provider.launch, spec, payload, tags=tags, owner=f"prefect-worker:{self.name}")
        [machine] = await anyio.to_thread.run_sync(launch)
        if spec.keepalive:
            self._leases.add(provider, [machine.id], spec.keepalive)
        logger.info(f"Machine {machine.id} launched on {provider.name}: {machine.cost_summary()} ({spec.summary()})")
        if machine.details.get("placement"):  # a provider's automatic choice (gcp: Cloud Run or Compute Engine), and why
            logger.info(f"Machine {machine.id} runs on {machine.details['placement']}")
        if configuration.flow_code_note:  # the software environment's code, or the pull steps', and why
            logger.info(configuration.flow_code_note)
        self._followed.add(flow_run.id)
        if task_status is not None:
            task_status.started(machine.id)
        return await self._watch(flow_run, provider, machine.id, logger)

    async def _watch(
        self, flow_run: FlowRun, provider: Provider, machine_id: str, logger: PrefectLogAdapter, *, from_end: bool = False
    ) -> RemoteWorkerResult:
        """Follows the run's machine to its end, ending it if the run is cancelled; the machine's exit
        code becomes the result."""
        cancelled = False

        async def end_if_cancelling() -> None:
            # Prefect's base worker only cancels runs that never started (and marks those Cancelled at
            # once, even mid-launch); a machine whose run is cancelling or cancelled is ours to end.
            nonlocal cancelled
            state = (await self.client.read_flow_run(flow_run.id)).state
            if not cancelled and state is not None and (state.is_cancelling() or state.is_cancelled()):
                logger.info(f"Flow run cancelled: ending machine {machine_id}")
                await anyio.to_thread.run_sync(partial(provider.terminate, [machine_id], reason="flow run cancelled"))
                cancelled = True

        try:
            ended = await follow_machine(provider, machine_id, logger, every_poll=end_if_cancelling, from_end=from_end)
        finally:
            self._leases.remove([machine_id])
        if cancelled:
            # The engine reports Crashed when stopped (only a runner's control channel tells it otherwise).
            await self.client.set_flow_run_state(flow_run.id, Cancelled(message=f"Cancelled: machine {machine_id} ended"), force=True)
            logger.info(f"Machine {machine_id} ended: {ended.reason}")
            return RemoteWorkerResult(identifier=machine_id, status_code=0, reason=ended.reason)
        status = ended.exit_code if ended.exit_code is not None else 1
        cost = ended.estimated_cost()
        spent = f"; estimated cost ${cost:.4f} ({ended.cost_summary()})" if cost is not None else ""
        if status == 0:
            logger.info(f"Machine {machine_id} ended: {ended.reason}{spent}")
        else:
            logger.error(f"Machine {machine_id} ended: {ended.reason} (exit code {ended.exit_code}){spent}")
        return RemoteWorkerResult(identifier=machine_id, status_code=status, reason=ended.reason)

    async def get_and_submit_flow_runs(self) -> list[FlowRun]:
        submitted = await super().get_and_submit_flow_runs()
        if time.monotonic() - self._last_adoption > ADOPT_EVERY and self._runs_task_group is not None:
            self._last_adoption = time.monotonic()
            try:
                await self._adopt_orphaned_runs()
            except Exception:
                self._logger.exception("prefect-remote: could not look for orphaned flow runs")
        return submitted

    async def _adopt_orphaned_runs(self) -> None:
        """Follows the in-flight runs of this pool whose submitting worker is gone (a restarted push
        service, a killed worker), so that a machine that dies still makes its run Crashed."""
        from prefect.client.schemas.filters import (
            FlowRunFilter,
            FlowRunFilterState,
            FlowRunFilterStateType,
            WorkPoolFilter,
            WorkPoolFilterName,
        )
        from prefect.client.schemas.objects import StateType

        runs = await self.client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PENDING, StateType.RUNNING, StateType.CANCELLING]))
            ),
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[self._work_pool_name])),
        )
        candidates = [r for r in runs if r.infrastructure_pid and r.id not in self._followed]
        if not candidates:
            return
        now = datetime.now(UTC)
        alive = sorted(
            worker.name
            for worker in await self.client.read_workers_for_work_pool(self._work_pool_name)
            if worker.last_heartbeat_time
            and (now - worker.last_heartbeat_time).total_seconds() < 3 * (worker.heartbeat_interval_seconds or 30)
        )
        if alive and alive[0] != self.name:
            return  # one adopter per pool: the live worker whose name sorts first
        for flow_run in candidates:
            if flow_run.labels.get("prefect.worker.name") in alive:
                continue  # its own worker follows it
            self._followed.add(flow_run.id)
            await self._give_worker_labels_to_flow_run(flow_run.id)  # this worker is its follower now
            self._runs_task_group.start_soon(self._adopt, flow_run)

    async def _adopt(self, flow_run: FlowRun) -> None:
        logger = self.get_flow_run_logger(flow_run)
        try:
            configuration = await self.job_configuration.resolve_for_flow_run(
                flow_run, client=self.client, work_pool=self.work_pool, worker_name=self.name, worker_id=self.backend_id
            )
            provider = await anyio.to_thread.run_sync(configuration.provider_instance, self._providers)
            machine_id = str(flow_run.infrastructure_pid)
            logger.info(f"Worker {self.name!r} follows this run's machine {machine_id}: its submitter is gone")
            keepalive = configuration.machine_spec().keepalive
            if keepalive:  # the lease is this worker's now (a machine that ended meanwhile is dropped at the first renewal)
                self._leases.add(provider, [machine_id], keepalive)
            result = await self._watch(flow_run, provider, machine_id, logger, from_end=True)
            state = (await self.client.read_flow_run(flow_run.id)).state
            if result.status_code != 0 and not (state and state.is_final()):
                await self._propose_crashed_state(
                    flow_run, f"Machine {machine_id} ended: {result.reason} (exit code {result.status_code})."
                )
        except MachineNotFound:
            await self._propose_crashed_state(flow_run, f"Machine {flow_run.infrastructure_pid} no longer exists.")
        except Exception:  # one adopted run must never take the worker (and every run it follows) down
            logger.exception(f"Worker {self.name!r} could not follow machine {flow_run.infrastructure_pid}")

    async def kill_infrastructure(self, infrastructure_pid: str, configuration: RemoteJobConfiguration, grace_seconds: int = 30) -> None:
        provider = await anyio.to_thread.run_sync(configuration.provider_instance, self._providers)
        try:
            await anyio.to_thread.run_sync(partial(provider.terminate, [infrastructure_pid], reason="flow run cancelled"))
        except MachineNotFound as error:
            raise InfrastructureNotFound(str(error)) from error


class RemotePushWorker(RemoteWorker):
    """The same, for push pools: run by the push service inside ``prefect server start``, by
    ``prefect-remote push serve``, or by ``prefect worker start --pool P --type remote:push``."""

    type = "remote:push"
    _display_name = "prefect-remote push"
    _description = (
        "Runs each flow run on a freshly provisioned machine sized by job variables, with no worker to host: "
        "prefect-remote's push service submits runs from inside `prefect server start`."
    )


async def follow_machine(
    provider: Provider,
    machine_id: str,
    logger: PrefectLogAdapter,
    every_poll: Callable[[], Awaitable[None]] | None = None,
    *,
    from_end: bool = False,
) -> Machine:
    """Streams the machine's log into ``logger`` until the machine has ended; returns its last state.
    ``every_poll`` runs once a poll (the worker watches for cancellation there); ``from_end`` skips
    what was logged already (an adopted run's log was streamed by its first worker). Transient
    provider or API errors are retried; a machine that no longer exists raises MachineNotFound."""
    cursor = (await anyio.to_thread.run_sync(provider.logs, machine_id)).cursor if from_end else None
    pending = ""  # an unfinished last line, completed by the next read
    failures = 0
    while True:
        try:
            if every_poll is not None:
                await every_poll()
            machine = await anyio.to_thread.run_sync(provider.describe, machine_id)
            chunk = await anyio.to_thread.run_sync(partial(provider.logs, machine_id, cursor=cursor))
            failures = 0
        except MachineNotFound:
            raise
        except Exception as error:
            failures += 1
            if failures in (1, 10) or failures % 60 == 0:
                logger.warning(f"Could not read machine {machine_id} ({error}); retrying")
            await anyio.sleep(LOG_POLL_SECONDS)
            continue
        cursor = chunk.cursor
        text = pending + chunk.text
        complete, _, pending = text.rpartition("\n")
        for line in complete.splitlines() if complete else []:
            if line.strip() and not _PREFECT_INFO_LINE.match(line):
                logger.info(f"[{machine_id}] {line}")
        if not machine.alive:
            if pending.strip():
                logger.info(f"[{machine_id}] {pending}")
            return machine
        await anyio.sleep(LOG_POLL_SECONDS)
