"""What the benchmarks share: :func:`bench_home`, the scratch home each benchmark runs in and whose
machines are ended however it finishes; and, for the cloud benchmarks (``bench_aws``,
``bench_gcp``), launch-to-payload split into the boot phases a machine log stamps, the local
provider's launch of the same payload as baseline, and API calls per machine-minute of a working and
an idle cluster.

>>> phases = boot_phases(provider, MachineSpec(cpu=2, software=env), marker, log_of)   # doctest: +SKIP
>>> phases["total"], phases["uv"]                                                    # doctest: +SKIP
(3.41, 0.68)
"""

from __future__ import annotations

import collections
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

# The benchmarks' own host-only bridge and subnet (unless the environment names them), apart from the
# user's machines (prbr0, 10.231.0.0/16) and the tests' (prtest0, 10.232.0.0/16).
# BENCH_BOOT_ONLY=1: the cloud benchmarks measure the boot phases only (cold and warm), not the API
# calls of an idle and a working cluster nor the fan-out: a quick rerun of the figures that vary most.
BOOT_ONLY = os.environ.get("BENCH_BOOT_ONLY", "") not in ("", "0")
BENCH_NETWORK = {"PREFECT_REMOTE_LOCAL_BRIDGE": "prbench0", "PREFECT_REMOTE_LOCAL_SUBNET": "10.233.0.0/16"}
# Where machine homes can lie under a benchmark's scratch folder: its own home, a sandbox cloud's.
HOME_DEPTH = 4

log = logging.getLogger("bench")
log.setLevel(logging.INFO)
log.addHandler(logging.StreamHandler())  # (to stderr: under run.py, its log file)
log.propagate = False


@contextmanager
def bench_home(name: str) -> Iterator[Path]:
    """A scratch folder for one benchmark, whose ``home`` is ``PREFECT_REMOTE_HOME`` meanwhile, on
    the benchmarks' bridge. However the benchmark ends (its figures, an error, Ctrl-C), every machine
    under the folder is ended (:func:`end_machines`: its own, a sandbox cloud's instances, a push
    pool's flow runs), the environment is given back and the folder is deleted."""
    saved = dict(os.environ)
    scratch = Path(tempfile.mkdtemp(prefix=f"prefect-remote-bench-{name}-"))
    if not any(variable in os.environ for variable in BENCH_NETWORK):  # (both or neither: a bridge keeps one subnet)
        os.environ.update(BENCH_NETWORK)
    os.environ["PREFECT_REMOTE_HOME"] = str(scratch / "home")
    try:
        yield scratch
    finally:
        try:
            end_machines(scratch)
        finally:
            os.environ.clear()
            os.environ.update(saved)
            shutil.rmtree(scratch, ignore_errors=True)


def end_machines(folder: Path, timeout: float = 60.0) -> None:
    """Ends every local machine still alive under ``folder`` (in any home up to ``HOME_DEPTH``
    levels down), waits for them to end, then removes the host-only bridge once nothing uses it."""
    from prefect_remote.providers.local import LocalProvider, gateway

    homes = {machines.parent for depth in range(HOME_DEPTH) for machines in folder.glob("*/" * depth + "machines")}
    for home in sorted(homes):
        provider = LocalProvider(home)
        alive = [machine.id for machine in provider.list()]
        if alive:  # (a run's machine may still be finishing; a failed or interrupted benchmark's may run on)
            log.info("ending %d machine(s) still alive under %s: %s", len(alive), home, ", ".join(alive))
            provider.terminate(alive, reason="the benchmark ended")
            provider.wait(alive, timeout=timeout, poll=0.2)
    # The host gateway's services (egress for software rebuilds) exit IDLE_EXIT s after their last
    # use, and the bridge can go only after them; a bridge another session's machines use stays.
    provider, deadline = LocalProvider(folder / "home"), time.monotonic() + gateway.IDLE_EXIT + 5
    provider.cleanup_host()
    while provider.bridge.gateways_running() and not provider.bridge.in_use() and time.monotonic() < deadline:
        time.sleep(1)
        provider.cleanup_host()


STAMP = re.compile(r"^\[prefect-remote (boot|agent)\] (\S+)Z (.*)$", re.M)
# Each phase ends at the first machine-log line holding its fragment (None: the first stamp).
PHASE_ENDS = (
    ("instance start", None),
    ("uv", "uv: uv "),
    ("agent environment", "agent: ready"),
    ("software environment", "payload started"),
)


def stamps(log: str) -> list[tuple[float, str]]:
    """The boot and agent stamps of a machine log as (epoch seconds, text).

    >>> stamps("[prefect-remote boot] 2026-01-01T00:00:01.500Z uv: uv 0.8")
    [(1767225601.5, 'uv: uv 0.8')]
    """
    return [(datetime.fromisoformat(stamp + "+00:00").timestamp(), text) for _, stamp, text in STAMP.findall(log)]


def first(stamped: list[tuple[float, str]], fragment: str) -> float | None:
    """When the first stamp holding ``fragment`` was written, or None."""
    return next((at for at, text in stamped if fragment in text), None)


def marker_payload(marker: Path) -> Any:
    """A payload that only creates ``marker``: what "the payload runs" means here."""
    from prefect_remote.providers.base import BootPayload

    return BootPayload(["python", "-c", f"open({str(marker)!r}, 'w').close()"])


def boot_phases(provider: Any, spec: Any, marker: Path, log_of: Callable[[Any], str]) -> dict[str, float]:
    """Seconds from ``provider.launch(spec)`` to the payload running, per boot phase (and
    ``total``). ``log_of(machine)`` is the machine's own log (the sandbox's local machine), read
    once the machine has ended."""
    marker.unlink(missing_ok=True)
    started = time.time()
    [machine] = provider.launch(spec, marker_payload(marker))
    launched = time.time()
    while not marker.exists():
        time.sleep(0.01)
    running = time.time()
    provider.wait([machine.id], timeout=120, poll=0.5)  # (the default 50 ms is a local machine's pace)
    stamped = stamps(log_of(machine))
    marks: list[tuple[str, float | None]] = [("launch() API calls", launched)]
    for name, fragment in PHASE_ENDS:
        marks.append((name, first(stamped, fragment) if fragment else stamped[0][0] if stamped else None))
    marks.append(("payload running", running))
    phases, previous = {}, started
    for name, at in marks:
        at = at or previous  # a phase the log does not stamp took no time of its own
        phases[name] = max(0.0, at - previous)
        previous = at
    phases["total"] = running - started
    return phases


def local_launch(marker: Path, home: Path) -> float:
    """Seconds from the local provider's ``launch()`` to the same payload running."""
    from prefect_remote.providers.local import LocalProvider
    from prefect_remote.spec import MachineSpec

    provider = LocalProvider(home)
    marker.unlink(missing_ok=True)
    started = time.time()
    [machine] = provider.launch(MachineSpec(cpu=1), marker_payload(marker))
    while not marker.exists():
        time.sleep(0.005)
    elapsed = time.time() - started
    provider.wait([machine.id], timeout=30)
    return elapsed


def boot_lines(label: str, cold: dict[str, float], warm: Sequence[dict[str, float]], baseline: float) -> list[str]:
    """The cold boot and the best warm one, each phase by phase, as figure, baseline and ratio."""
    best = min(warm, key=lambda phases: phases["total"])
    lines = []
    for kind, phases in (("cold", cold), ("warm", best)):
        split = ", ".join(f"{name} {seconds:.2f}s" for name, seconds in phases.items() if name != "total")
        lines.append(
            f"{label} {kind}: {phases['total']:.2f} s launch() to payload vs local provider {baseline:.2f} s "
            f"({phases['total'] / baseline:.1f}x) [{split}]"
        )
    totals = ", ".join(f"{phases['total']:.2f}" for phases in warm)
    lines.append(f"{label} warm runs: {totals} s")
    return lines


def api_calls(calls: collections.Counter[str], provider: str, lease_call: str, workers: int, seconds: float, *, top: int = 5) -> list[str]:
    """API calls per machine-minute while a ``workers``-worker ``RemoteCluster`` on ``provider``
    idles, then works, ``seconds`` each; ``calls`` is the sandbox's counter (cleared per window),
    ``lease_call`` the call that renews every lease at once."""
    import prefect_remote

    lines = []
    with prefect_remote.RemoteCluster(n_workers=workers, provider=provider, keepalive="1 minute") as cluster:
        client = cluster.get_client()
        client.wait_for_workers(workers, timeout=600)
        time.sleep(10)  # the last workers' first secret reads and log flushes
        for activity in ("idle", "working"):
            calls.clear()
            began = time.monotonic()
            while time.monotonic() - began < seconds:
                if activity == "working":
                    client.gather(client.map(time.sleep, [0.05] * 200, pure=False))
                else:
                    time.sleep(1)
            elapsed = time.monotonic() - began
            counted = dict(calls)
            total = sum(counted.values())
            machine_minutes = (workers + 1) * elapsed / 60
            leases = counted.get(lease_call, 0)
            names = ", ".join(f"{name} {count}" for name, count in sorted(counted.items(), key=lambda item: -item[1])[:top])
            lines.append(
                f"{activity:8} {total} calls in {elapsed:.0f} s: {total / machine_minutes:.2f} per machine-minute, "
                f"{total / elapsed:.3f}/s in all (goal < 1/s); lease renewals: {leases} {lease_call} call(s) "
                f"for all {workers + 1} machines, {elapsed / max(leases, 1):.0f} s apart [{names}]"
            )
    return lines


def start_worker(pool: str, worker_type: str, env: dict[str, str]) -> Any:
    """``prefect worker start`` for ``pool`` in a session of its own (stop it with
    ``stop_process_group``; ``os.killpg`` kills it with everything it started), its output discarded."""
    import subprocess
    import sys

    prefect = str(Path(sys.executable).parent / "prefect")
    command = [prefect, "worker", "start", "--pool", pool, "--type", worker_type]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
