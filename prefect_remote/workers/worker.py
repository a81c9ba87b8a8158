"""Workers for the ``remote`` (hybrid) and ``remote:push`` work pools: one flow run, one fresh machine.

``run`` launches the machine without blocking the event loop, reports its id as the
infrastructure id, streams the machine's log (boot and environment rebuild included) into the flow
run's logs, and returns the payload's exit code; ``kill_infrastructure`` ends the machine when a
run is cancelled. The machine ends itself when the run ends, and at the ``timeout`` job variable.
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone
from functools import partial
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Optional
from uuid import UUID

import anyio
import anyio.abc
from prefect.exceptions import InfrastructureNotFound
from prefect.states import Cancelled
from prefect.workers.base import BaseWorker, BaseWorkerResult

from prefect_remote.errors import MachineNotFound
from prefect_remote.providers.base import Machine, Provider
from prefect_remote.workers.config import RemoteJobConfiguration, RemoteJobVariables

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun
    from prefect.logging.loggers import PrefectLogAdapter

LOG_POLL_SECONDS = 1.0
ADOPT_EVERY = 10.0  # seconds between looks for runs whose submitting worker is gone
# Lines the flow run's own Prefect logger printed: they already reach the API from the machine.
_PREFECT_CONSOLE_LINE = re.compile(r"^\d{2}:\d{2}:\d{2}\.\d{3} \| (DEBUG|INFO|WARNING|ERROR|CRITICAL)\s*\| ")


class RemoteWorkerResult(BaseWorkerResult):
    """The machine's id and the flow run process's exit code."""


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
        self._following: set[UUID] = set()  # flow runs whose machine this worker follows
        self._last_adoption = 0.0

    async def run(
        self,
        flow_run: FlowRun,
        configuration: RemoteJobConfiguration,
        task_status: Optional[anyio.abc.TaskStatus[str]] = None,
    ) -> RemoteWorkerResult:
        logger = self.get_flow_run_logger(flow_run)
        provider, spec, payload = configuration.machine_request()
        tags = {key: value for key, value in configuration.labels.items() if value}
        launch = partial(provider.launch, spec, payload, tags=tags, owner=f"prefect-worker:{self.name}")
        [machine] = await anyio.to_thread.run_sync(launch)
        logger.info(
            f"Machine {machine.id} launched on {provider.name}: {machine.instance_type} ({spec.summary()}), "
            f"region {machine.region}, {'spot' if machine.spot else 'on-demand'}"
        )
        self._following.add(flow_run.id)
        if task_status is not None:
            task_status.started(machine.id)
        try:
            return await self._watch(flow_run, provider, machine.id, logger)
        finally:
            self._following.discard(flow_run.id)

    async def _watch(self, flow_run: FlowRun, provider: Provider, machine_id: str, logger: PrefectLogAdapter) -> RemoteWorkerResult:
        """Follows the run's machine to its end, ending it if the run is cancelled; the machine's exit
        code becomes the result."""
        cancelled = False

        async def end_if_cancelling() -> None:
            # Prefect's base worker only cancels runs that never started; a running run's machine is ours to end.
            nonlocal cancelled
            if not cancelled and (await self.client.read_flow_run(flow_run.id)).state.is_cancelling():
                logger.info(f"Flow run cancelling: ending machine {machine_id}")
                # Cancelled at once, for whoever watches; set again once the machine has ended (below).
                await self.client.set_flow_run_state(flow_run.id, Cancelled(message=f"Cancelled: machine {machine_id} ended"), force=True)
                await anyio.to_thread.run_sync(partial(provider.terminate, [machine_id], reason="flow run cancelled"))
                cancelled = True

        ended = await follow_machine(provider, machine_id, logger, every_poll=end_if_cancelling)
        if cancelled:
            # The engine reports Crashed when stopped (only a runner's control channel tells it otherwise).
            await self.client.set_flow_run_state(flow_run.id, Cancelled(message=f"Cancelled: machine {machine_id} ended"), force=True)
            logger.info(f"Machine {machine_id} ended: {ended.reason}")
            return RemoteWorkerResult(identifier=machine_id, status_code=0)
        status = ended.exit_code if ended.exit_code is not None else 1
        if status == 0:
            logger.info(f"Machine {machine_id} ended: {ended.reason}")
        else:
            logger.error(f"Machine {machine_id} ended: {ended.reason} (exit code {ended.exit_code})")
        return RemoteWorkerResult(identifier=machine_id, status_code=status)

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
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PENDING, StateType.RUNNING, StateType.CANCELLING]))),
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[self._work_pool_name])),
        )
        candidates = [r for r in runs if r.infrastructure_pid and r.id not in self._following]
        if not candidates:
            return
        now = datetime.now(timezone.utc)
        alive = {
            worker.name
            for worker in await self.client.read_workers_for_work_pool(self._work_pool_name)
            if worker.last_heartbeat_time
            and (now - worker.last_heartbeat_time).total_seconds() < 3 * (worker.heartbeat_interval_seconds or 30)
        }
        for flow_run in candidates:
            submitter = flow_run.labels.get("prefect.worker.name")
            if submitter in alive and submitter != self.name:
                continue  # its own worker follows it
            self._following.add(flow_run.id)
            self._runs_task_group.start_soon(self._adopt, flow_run)

    async def _adopt(self, flow_run: FlowRun) -> None:
        logger = self.get_flow_run_logger(flow_run)
        try:
            configuration = await self.job_configuration.resolve_for_flow_run(
                flow_run, client=self.client, work_pool=self.work_pool, worker_name=self.name, worker_id=self.backend_id
            )
            provider = configuration.provider_instance()
            logger.info(f"Worker {self.name!r} follows this run's machine {flow_run.infrastructure_pid}: its submitter is gone")
            result = await self._watch(flow_run, provider, str(flow_run.infrastructure_pid), logger)
            state = (await self.client.read_flow_run(flow_run.id)).state
            if result.status_code != 0 and not (state and state.is_final()):
                await self._propose_crashed_state(flow_run, f"Flow run infrastructure exited with non-zero status code {result.status_code}.")
        except MachineNotFound:
            await self._propose_crashed_state(flow_run, f"Machine {flow_run.infrastructure_pid} no longer exists.")
        finally:
            self._following.discard(flow_run.id)

    async def kill_infrastructure(
        self, infrastructure_pid: str, configuration: RemoteJobConfiguration, grace_seconds: int = 30
    ) -> None:
        provider = configuration.provider_instance()
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
    provider: Provider, machine_id: str, logger: PrefectLogAdapter, every_poll: Callable[[], Awaitable[None]] | None = None
) -> Machine:
    """Streams the machine's log into ``logger`` until the machine has ended; returns its last state.
    ``every_poll`` runs once a poll (the worker watches for cancellation there)."""
    offset = 0
    while True:
        if every_poll is not None:
            await every_poll()
        machine = await anyio.to_thread.run_sync(provider.describe, machine_id)
        chunk = await anyio.to_thread.run_sync(partial(provider.logs, machine_id, offset=offset))
        complete, _, partial_line = chunk.text.rpartition("\n")
        offset = chunk.next_offset - len(partial_line.encode())  # an unfinished line is read again next time
        for line in complete.splitlines() if complete else []:
            if line.strip() and not _PREFECT_CONSOLE_LINE.match(line):
                logger.info(f"[{machine_id}] {line}")
        if not machine.alive:
            if partial_line.strip():
                logger.info(f"[{machine_id}] {partial_line}")
            return machine
        await anyio.sleep(LOG_POLL_SECONDS)
