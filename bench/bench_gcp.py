"""The gcp provider on the sandbox GCP: boot phases on Cloud Run and Compute Engine, and API calls
per machine-minute of a 10-worker cluster.

Boot: time from ``launch()`` to the payload running, split into the phases the machine log stamps
(the API calls of the launch, the instance starting, uv, the agent's environment, the software
environment, the payload), for a Cloud Run flow run (a machine with a software environment and no
inbound connections) and for a Compute Engine VM (``gcp_service="compute"``), cold (a fresh image
root: uv downloaded, environments built, with a warm uv cache) and warm (the image root kept, as a
VM image baked after one boot, or a ``container=`` image with the root in it, has it). Baseline: the
same payload launched on the local provider, in the same run.

API calls: the requests the sandbox answers (Google's APIs and GCS) while a 10-worker
``RemoteCluster(provider="gcp")`` (Compute Engine VMs) idles and while it works, per machine-minute.
Every lease is renewed by one GCS batch request per interval, whatever the worker count.

On paper: the expected cold start on real GCP for each path, from the phases measured here plus the
cloud's own start, against prefect-gcp's Cloud Run worker and Coiled on GCE.

``BENCH_GCP_SECONDS`` shortens the cluster's idle and working windows (default 60 s each).
"""

from __future__ import annotations

import collections
import os
from pathlib import Path

from common import BOOT_ONLY, api_calls, bench_home, boot_lines, boot_phases, local_launch

WINDOW_SECONDS = float(os.environ.get("BENCH_GCP_SECONDS", "60"))
WORKERS = 10
LEASE_CALL = "storage.POST.batch"  # records.renew: one GCS batch of blob patches per 100 machines
# Real GCP's own start, in seconds, and where the figure comes from (the phases after it are measured).
CLOUD_RUN_START = (10, 20)  # job execution to container running, the python-slim pull included: our estimate
GCE_BOOT = (20, 40)  # insert to startup-script running; ~23-25 s time-to-SSH measured over ~5,000 VMs:
# https://medium.com/@robaboukhalil/move-fast-and-break-the-cloud-b55b899e3683
COILED_GCE = (60, 120)  # an estimate: Coiled publishes no GCE start-up figure we could cite
PREFECT_WORKER_POLL = 10  # prefect's PREFECT_WORKER_QUERY_SECONDS default: a pull worker sees a run this late


def machine_log(gcp):
    """The machine log of a gcp machine: its sandbox instance's local machine's (instance ids
    ``run:<job>-<execution>-task0-0`` and ``gce:<vm name>``)."""
    from prefect_remote.sandbox.instances import INSTANCE_TAG

    def log_of(machine) -> str:
        for local in gcp.runner.machines.list(include_terminated=True):
            instance = local.tags.get(INSTANCE_TAG, "")
            if instance.partition(":")[2].startswith(machine.id):
                return gcp.runner.machines.logs(local.id).text
        raise LookupError(f"no sandbox machine ran {machine.id}")

    return log_of


def boot(gcp, provider, spec, marker: Path, label: str, baseline: float) -> tuple[list[str], dict[str, float]]:
    """A cold boot (a stock image: no uv, no environments, no uv cache), then three warm ones (an image
    baked after one boot: its root and uv cache shared), as lines; and the cold phases."""
    with gcp.warm(False):
        cold = boot_phases(provider, spec, marker, machine_log(gcp))
    with gcp.warm(True):
        boot_phases(provider, spec, marker, machine_log(gcp))  # bakes the warm image
        warm = [boot_phases(provider, spec, marker, machine_log(gcp)) for _ in range(3)]
    return boot_lines(label, cold, warm, baseline), cold


def calls_per_machine(label: str, calls: collections.Counter[str], before: collections.Counter[str], machines: int) -> str:
    """The API calls of ``machines`` boots, launch to end (the launcher's, the machine's, and the
    benchmark's wait for the end, polling every 0.5 s), per machine, with the most frequent."""
    made = collections.Counter(calls)
    made.subtract(before)
    top = ", ".join(f"{name} {count / machines:.1f}" for name, count in made.most_common(6) if count > 0)
    return f"{label} boots: {sum(made.values()) / machines:.0f} API calls per machine, launch to end [{top}]"


def in_machine(phases: dict[str, float]) -> float:
    """What a boot spends inside the machine once it runs: uv, environments, payload."""
    return sum(seconds for name, seconds in phases.items() if name not in ("total", "launch() API calls", "instance start"))


def on_paper(cloud_run: dict[str, float], compute: dict[str, float]) -> list[str]:
    """Expected cold starts on real GCP: the cloud's own start plus the phases measured here (a cold
    image root, with a warm uv cache; PyPI downloads on a fresh machine add a few seconds)."""
    run_inside, vm_inside = in_machine(cloud_run), in_machine(compute)

    def span(low: float, high: float) -> str:
        return f"{low:.0f}-{high:.0f} s"

    return [
        f"on real GCP (paper): Cloud Run flow run {span(CLOUD_RUN_START[0] + run_inside, CLOUD_RUN_START[1] + run_inside)} "
        f"(execution start {span(*CLOUD_RUN_START)}, python-slim pull included, estimate; + {run_inside:.1f} s uv, agent and "
        f"software environment as measured here); every Cloud Run boot is cold unless container= bakes the root in",
        f"on real GCP (paper): Compute Engine VM {span(GCE_BOOT[0] + vm_inside, GCE_BOOT[1] + vm_inside)} "
        f"(VM boot {span(*GCE_BOOT)}, ~23-25 s time-to-SSH measured by robaboukhalil on GCE; + {vm_inside:.1f} s measured here)",
        f"vs prefect-gcp's Cloud Run worker: {span(CLOUD_RUN_START[0], CLOUD_RUN_START[1] + PREFECT_WORKER_POLL)} "
        f"(the same execution start, plus up to {PREFECT_WORKER_POLL} s of worker polling and the pull of its image), "
        f"but only after building and pushing an image with the flow's dependencies, again on every change",
        f"vs Coiled on GCE: {span(*COILED_GCE)} for a cluster (VM boot, then its package-synced container; an estimate, "
        f"no published GCE figure found) vs a Compute Engine VM here {span(GCE_BOOT[0] + vm_inside, GCE_BOOT[1] + vm_inside)}",
    ]


def main() -> list[str]:
    from prefect_remote.providers.gcp.provider import GCPProvider
    from prefect_remote.sandbox.gcp.sandbox import SandboxGCP
    from prefect_remote.software.capture import capture_environment
    from prefect_remote.spec import MachineSpec

    lines: list[str] = []
    colds: list[dict[str, float]] = []
    with bench_home("gcp") as scratch:  # which ends the sandbox's instances, whatever happens
        with SandboxGCP(home=scratch / "sandbox") as gcp:
            gcp.runner.shared.append(str(scratch))  # the payload's marker, seen from this host
            os.environ.update(gcp.exports())
            project = scratch / "project"
            project.mkdir()
            software = capture_environment(root=project).name
            marker = scratch / "payload-ran"
            baseline = min(local_launch(marker, scratch / "local") for _ in range(3))
            spec = MachineSpec(cpu=2, software=software, keepalive="5 minutes")
            for label, provider in (("Cloud Run", GCPProvider()), ("Compute Engine", GCPProvider(service="compute"))):
                before = collections.Counter(gcp.calls)
                shown, cold = boot(gcp, provider, spec, marker, f"boot {label}", baseline)
                lines += [*shown, calls_per_machine(label, gcp.calls, before, machines=4)]
                colds.append(cold)
            if BOOT_ONLY:
                return lines + on_paper(*colds)
            lines += api_calls(gcp.calls, "gcp", LEASE_CALL, WORKERS, WINDOW_SECONDS)
            lines += on_paper(*colds)
    return lines


if __name__ == "__main__":
    for line in main():
        print(line)
