"""The aws provider on the sandbox AWS: boot phases, and API calls per machine-minute of a 10-worker cluster.

Boot: time from ``launch()`` to the payload running, split into the phases the machine log stamps
(the API calls of the launch, the instance starting, uv, the agent's environment, the software
environment, the payload), cold (a fresh image root: uv downloaded, environments built, with a warm
uv cache) and warm (the image root kept, as a second machine of a cluster finds it). Baseline: the
same payload launched on the local provider, in the same run.

Fan-out: ``.map`` over 10,000 items vs raw ``client.map`` on a cluster of sandbox instances.

API calls: the requests the sandbox's moto server answers while a 10-worker ``RemoteCluster`` idles
for a minute and while it works for a minute, per machine-minute. Goal: lease traffic one call per
interval whatever the worker count, and under 1 call per second in total for 10 workers.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from datetime import datetime
from pathlib import Path

IDLE_SECONDS = float(os.environ.get("BENCH_AWS_SECONDS", "60"))
WORKERS = 10
STAMP = re.compile(r"^\[prefect-remote (boot|agent)\] (\S+)Z (.*)$", re.M)


def _stamps(log: str) -> list[tuple[float, str]]:
    return [(datetime.fromisoformat(stamp + "+00:00").timestamp(), text) for _, stamp, text in STAMP.findall(log)]


def _first(stamps: list[tuple[float, str]], fragment: str) -> float | None:
    return next((at for at, text in stamps if fragment in text), None)


def boot_phases(aws, provider, software: str, marker: Path) -> dict[str, float]:
    from prefect_remote.providers.base import BootPayload
    from prefect_remote.spec import MachineSpec

    marker.unlink(missing_ok=True)
    started = time.time()
    [machine] = provider.launch(
        MachineSpec(cpu=2, software=software, keepalive="5 minutes"), BootPayload(["python", "-c", f"open({str(marker)!r}, 'w').close()"])
    )
    launched = time.time()
    while not marker.exists():
        time.sleep(0.01)
    running = time.time()
    provider.wait([machine.id], timeout=60)
    local = aws.runner.machines.list({"sandbox-instance": machine.id}, include_terminated=True)[0]
    stamps = _stamps(aws.runner.machines.logs(local.id).text)
    marks = [
        ("launch() API calls", launched),
        ("instance start", stamps[0][0]),
        ("uv", _first(stamps, "uv: uv ")),
        ("agent environment", _first(stamps, "agent: ready")),
        ("software environment", _first(stamps, "payload started")),
        ("payload running", running),
    ]
    phases, previous = {}, started
    for name, at in marks:
        at = at or previous
        phases[name] = max(0.0, at - previous)
        previous = at
    phases["total"] = running - started
    return phases


def local_launch(marker: Path, home: Path) -> float:
    from prefect_remote.providers.base import BootPayload
    from prefect_remote.providers.local import LocalProvider
    from prefect_remote.spec import MachineSpec

    provider = LocalProvider(home)
    marker.unlink(missing_ok=True)
    started = time.time()
    [machine] = provider.launch(MachineSpec(cpu=1), BootPayload(["python", "-c", f"open({str(marker)!r}, 'w').close()"]))
    while not marker.exists():
        time.sleep(0.005)
    elapsed = time.time() - started
    provider.wait([machine.id], timeout=30)
    return elapsed


def api_calls(aws) -> list[str]:
    import prefect_remote

    lines = []
    with prefect_remote.RemoteCluster(n_workers=WORKERS, provider="aws", keepalive="1 minute") as cluster:
        client = cluster.get_client()
        client.wait_for_workers(WORKERS, timeout=600)
        time.sleep(10)  # the last workers' first secret reads and log flushes
        for activity in ("idle", "working"):
            aws.calls.clear()
            began = time.monotonic()
            while time.monotonic() - began < IDLE_SECONDS:
                if activity == "working":
                    client.gather(client.map(time.sleep, [0.05] * 200, pure=False))
                else:
                    time.sleep(1)
            seconds = time.monotonic() - began
            counted = dict(aws.calls)
            total = sum(counted.values())
            machine_minutes = (WORKERS + 1) * seconds / 60
            leases = counted.get("ec2:CreateTags", 0)
            top = ", ".join(f"{name} {count}" for name, count in sorted(counted.items(), key=lambda item: -item[1])[:4])
            lines.append(
                f"{activity:8} {total} calls in {seconds:.0f} s: {total / machine_minutes:.2f} per machine-minute, "
                f"{total / seconds:.3f}/s in all (goal < 1/s: {total / seconds:.3f}x of it); lease renewals: {leases} "
                f"create_tags call(s) for all {WORKERS + 1} machines, {seconds / max(leases, 1):.0f} s apart [{top}]"
            )
    return lines


def main() -> list[str]:
    from prefect_remote.providers.aws.provider import AWSProvider
    from prefect_remote.software.capture import capture_environment
    from prefect_remote.testing.aws import SandboxAWS

    saved = dict(os.environ)
    scratch = Path(tempfile.mkdtemp(prefix="prefect-remote-bench-aws-"))
    os.environ.setdefault("PREFECT_REMOTE_LOCAL_BRIDGE", "prbench0")
    os.environ.setdefault("PREFECT_REMOTE_LOCAL_SUBNET", "10.233.0.0/16")
    os.environ["PREFECT_REMOTE_HOME"] = str(scratch / "home")
    lines = []
    try:
        with SandboxAWS(home=scratch / "sandbox") as aws:
            os.environ.update(aws.exports())
            project = scratch / "project"
            project.mkdir()
            software = capture_environment(root=project).name
            provider = AWSProvider()
            marker = scratch / "payload-ran"
            baseline = min(local_launch(marker, scratch / "local") for _ in range(3))
            cold = boot_phases(aws, provider, software, marker)
            warm = [boot_phases(aws, provider, software, marker) for _ in range(3)]
            best = min(warm, key=lambda phases: phases["total"])
            for label, phases in (("cold", cold), ("warm", best)):
                split = ", ".join(f"{name} {seconds:.2f}s" for name, seconds in phases.items() if name != "total")
                lines.append(f"boot {label}: {phases['total']:.2f} s launch() to payload ({split})")
            totals = ", ".join(f"{phases['total']:.2f}" for phases in warm)
            lines.append(f"boot warm runs: {totals} s; local provider baseline {baseline:.2f} s: {best['total'] / baseline:.1f}x")
            lines += api_calls(aws)
            from bench_fanout import bench_map

            lines += bench_map("aws", memory=False)  # the fan-out benchmark on the sandbox's instances
    finally:
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(scratch, ignore_errors=True)
    return lines


if __name__ == "__main__":
    for line in main():
        print(line)
