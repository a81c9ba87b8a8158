"""``local=True``: a Dask ``LocalCluster`` whose workers are fresh interpreters.

Dask's own ``LocalCluster`` starts workers with multiprocessing, whose children re-run the caller's
main module: a script that calls a function at module level, without an
``if __name__ == "__main__":`` guard, would start clusters inside its own workers, which fail ("...
before the current process has finished its bootstrapping phase") while the call waits for them
forever. Here each worker is ``python -m prefect_remote.cluster.local``, a new interpreter that runs a
``distributed.Nanny`` and never imports the caller's main module (functions defined there travel by
value, as cloudpickle sends them; the caller's import path is passed on for the rest). Workers stay
separate processes, with their own memory, output and Dask memory limit.

A worker that exits or does not connect raises :class:`LocalWorkerStartError` with the end of its
log, and the calls waiting for a worker fail with that error instead of waiting forever.

>>> from prefect_remote.cluster.options import ClusterOptions
>>> cluster = start_local_cluster(ClusterOptions.build(n_workers=[0, 2]))  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from distributed import LocalCluster, Nanny
from distributed.deploy.spec import ProcessInterface

from prefect_remote.cluster.options import ClusterOptions, launcher_python_path
from prefect_remote.cluster.remote import ClusterStartError

logger = logging.getLogger("prefect_remote.cluster")

WORKER_MODULE = "prefect_remote.cluster.local"
START_TIMEOUT = 60.0  # seconds for a worker process to reach the scheduler (a loaded machine is slow to import)
STOP_TIMEOUT = 5.0  # seconds a closing worker gets before it is killed
LOG_TAIL = 20  # lines of a failed worker's log in its error


class LocalWorkerStartError(ClusterStartError):
    """A local worker process exited or did not connect in time; the message has the end of its log."""


class WorkerProcess(ProcessInterface):
    """One worker as :class:`~distributed.deploy.spec.SpecCluster` sees it: a ``Nanny`` in its own
    interpreter, running once its worker is registered with the scheduler."""

    def __init__(
        self, scheduler: str, *, name: Any, cluster: LocalProcessCluster, nthreads: int, memory_limit: Any = "auto", **_: Any
    ) -> None:
        super().__init__()
        self.scheduler, self.name, self.cluster = scheduler, name, cluster
        self.options = {"name": name, "nthreads": nthreads, "memory_limit": memory_limit, "host": "127.0.0.1", "dashboard": False}
        self.process: subprocess.Popen | None = None
        self.log_path = cluster.log_dir / f"worker-{name}.log"

    async def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", WORKER_MODULE, self.scheduler, json.dumps(self.options)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.cluster.worker_environ,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not self.cluster.has_worker(self.name):
            if self.process.poll() is not None:
                raise self._failed(f"its process exited with code {self.process.returncode}")
            if time.monotonic() > deadline:
                self.process.kill()
                raise self._failed(f"it did not connect to the scheduler within {START_TIMEOUT:.0f}s")
            await asyncio.sleep(0.05)
        await super().start()

    def _failed(self, why: str) -> LocalWorkerStartError:
        error = LocalWorkerStartError(f"local worker {self.name} failed to start: {why}\n{self._log_tail()}")
        self.cluster.worker_failed(self.name, error)
        return error

    def _log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()[-LOG_TAIL:]
        except OSError:
            lines = []
        return "last lines of its log:\n" + "\n".join(lines)

    async def close(self) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            process.terminate()  # the nanny closes its worker, then exits
            deadline = time.monotonic() + STOP_TIMEOUT
            while process.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if process.poll() is None:
                process.kill()
                while process.poll() is None:  # polled, not waited in a thread: this also runs at interpreter exit
                    await asyncio.sleep(0.01)
        await super().close()


class LocalProcessCluster(LocalCluster):
    """A :class:`distributed.LocalCluster` (same scheduler, dashboard and scaling) whose workers are
    :class:`WorkerProcess` es. ``environ`` is added to the workers' environment.

    Example::

        with LocalProcessCluster(n_workers=1, threads_per_worker=1) as cluster:
            cluster.get_client().submit(sum, [1, 2]).result()
    """

    def __init__(self, *, n_workers: int, threads_per_worker: int, environ: dict[str, str] | None = None, **kwargs: Any) -> None:
        self.log_dir = Path(tempfile.mkdtemp(prefix="prefect-remote-local-"))
        python_path = [*launcher_python_path(), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        self.worker_environ = {**os.environ, **(environ or {}), "PYTHONPATH": os.pathsep.join(python_path)}
        try:
            super().__init__(
                n_workers=n_workers,
                threads_per_worker=threads_per_worker,
                processes=True,
                worker_class=WorkerProcess,
                cluster=self,
                **kwargs,
            )
        except BaseException:
            shutil.rmtree(self.log_dir, ignore_errors=True)
            raise

    def new_worker_spec(self) -> dict[Any, dict[str, Any]]:
        """The next worker's spec, under a name no worker has had: a failed worker stays listed until
        the next scaling closes it, and reusing its name would count it as the new one."""
        while self._i in self.worker_spec or self._i in self.workers:
            self._i += 1
        return super().new_worker_spec()

    def has_worker(self, name: Any) -> bool:
        """Whether a worker of that name is registered with the scheduler."""
        return any(worker.name == name for worker in self.scheduler.workers.values())

    def worker_failed(self, name: Any, error: Exception) -> None:
        """A worker could not start. Adaptive scaling may try again (it is no longer planned) and, with
        no worker running, the tasks waiting for one fail with ``error`` rather than wait forever."""
        self.worker_spec.pop(name, None)
        if self.scheduler.running:
            logger.warning("%s", error)
            return
        fail_waiting_tasks(self.scheduler, error)

    async def _close(self) -> None:
        try:
            await super()._close()
        finally:
            shutil.rmtree(self.log_dir, ignore_errors=True)


def fail_waiting_tasks(scheduler: Any, error: Exception) -> int:
    """Fails the tasks the scheduler holds for want of a worker (queued or unrunnable) with ``error``,
    as Dask's own ``no-workers-timeout`` does; returns how many."""
    from distributed.protocol import pickle

    blob = pickle.dumps(error)
    stimulus_id = f"prefect-remote-worker-start-failed-{time.time()}"
    waiting = [*scheduler.queued, *scheduler.unrunnable]
    recommendations: dict = {}
    for task in waiting:
        if task.state in ("queued", "no-worker"):
            recommendations.update(scheduler.transition(task.key, "erred", exception=blob, cause=task.key, stimulus_id=stimulus_id))
    scheduler.transitions(recommendations, stimulus_id=stimulus_id)
    return len(waiting)


def start_local_cluster(options: ClusterOptions) -> LocalProcessCluster:
    """A cluster on this computer for ``options``: worker counts capped by its cores, one worker started
    at once (its first call is coming), adaptive between the bounds when asked."""
    cap = os.cpu_count() or 1
    low, high = min(options.minimum, cap), min(options.maximum, cap)
    environ = {key: value if isinstance(value, str) else value.get_secret_value() for key, value in options.spec.environ.items()}
    cluster = LocalProcessCluster(
        n_workers=max(low, min(1, high)),
        threads_per_worker=options.nthreads(cap),
        memory_limit="auto",  # each worker its threads' share of this computer's memory, however many come
        environ=environ,
        dashboard_address=":0",
    )
    if options.adaptive:
        cluster.adapt(minimum=low, maximum=high)
    return cluster


# -- the worker process ---------------------------------------------------------------------------
async def serve(scheduler: str, options: dict[str, Any]) -> None:
    """Runs a nanny (and its worker) until the scheduler goes, the process is told to stop, or the
    process that started it is gone."""
    parent = os.getppid()
    async with Nanny(scheduler, **options) as nanny:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        finished = asyncio.ensure_future(nanny.finished())
        while not (stop.is_set() or finished.done() or os.getppid() != parent):
            await asyncio.wait([finished], timeout=0.5)
        await nanny.close(reason="local worker stopped")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: python -m {WORKER_MODULE} SCHEDULER_ADDRESS OPTIONS_JSON (a worker of a local cluster)", file=sys.stderr)
        return 2
    asyncio.run(serve(argv[0], json.loads(argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
