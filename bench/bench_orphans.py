"""A killed agent's machine on the sandbox AWS and GCP: seconds from ``kill -9`` of the agent alone
(its payload runs on, its owner renews the lease) to the machine ended by the backstop the boot
scheduled and the agent pushed forward (``shutdown -h +N``), with the sandbox image's real clock
(60 s a minute). Keepalive 30 s and lease interval 30 s make N one minute: the bound is 60 s after the
agent's last push. Three machines per cloud, killed at once."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from common import bench_home

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.providers.orphans: the agent found and killed

RUNS = 3
BOUND = 60.0


def measure(provider, spec, runner, instance_key, scratch: Path) -> list[float]:
    """Seconds from killing each of RUNS machines' agents (at once) to its machine's end."""
    from prefect_remote.providers.base import BootPayload
    from tests.providers.orphans import kill_agent, renewing

    started = [scratch / f"started-{time.monotonic_ns()}-{n}" for n in range(RUNS)]
    machines = [provider.launch(spec, BootPayload(["sh", "-c", f"touch {marker}; sleep 900"]))[0] for marker in started]
    ids = [machine.id for machine in machines]
    with renewing(lambda: provider.renew_leases(ids), every=5):
        deadline = time.monotonic() + 300
        while not all(marker.exists() for marker in started):
            if time.monotonic() > deadline:
                raise TimeoutError("the payloads did not start within 300 s")
            time.sleep(0.2)
        time.sleep(5)
        killed = {machine.id: kill_agent(runner.machine_of(instance_key(machine.id))) for machine in machines}
        ended: dict[str, float] = {}
        while len(ended) < RUNS and time.monotonic() < max(killed.values()) + BOUND + 60:
            for machine_id, at in killed.items():
                if machine_id not in ended and runner.machine_of(instance_key(machine_id)) is None:
                    ended[machine_id] = time.monotonic() - at
            time.sleep(0.1)
    provider.terminate(ids, reason="bench done")
    return [ended.get(machine_id, float("inf")) for machine_id in ids]


def line(label: str, figures: list[float]) -> str:
    shown = ", ".join(f"{seconds:.1f} s" for seconds in figures)
    return f"killed agent -> ended machine, {label}: {shown} (bound {BOUND:.0f} s after the last push)"


def main() -> list[str]:
    from prefect_remote.providers.aws.provider import AWSProvider
    from prefect_remote.providers.gcp.provider import GCPProvider
    from prefect_remote.sandbox.aws import SandboxAWS
    from prefect_remote.sandbox.gcp.compute.instances import ID_PREFIX
    from prefect_remote.sandbox.gcp.sandbox import SandboxGCP
    from prefect_remote.spec import MachineSpec

    spec = MachineSpec(cpu=2, keepalive=30)
    lines = []
    with bench_home("orphans-aws") as scratch, SandboxAWS(home=scratch / "sandbox") as aws:
        aws.runner.shared.append(str(scratch))
        os.environ.update(aws.exports())
        with aws.warm(True), aws.vms():
            lines.append(line("EC2", measure(AWSProvider(lease_interval=30), spec, aws.runner, lambda i: i, scratch)))
    with bench_home("orphans-gcp") as scratch, SandboxGCP(home=scratch / "sandbox") as gcp:
        gcp.runner.shared.append(str(scratch))
        os.environ.update(gcp.exports())
        with gcp.warm(True), gcp.vms():
            provider = GCPProvider(service="compute", lease_interval=30)
            lines.append(line("Compute Engine", measure(provider, spec, gcp.runner, lambda i: ID_PREFIX + i, scratch)))
    return lines


if __name__ == "__main__":
    print("\n".join(main()))
