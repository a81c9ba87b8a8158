"""The aws provider on the sandbox AWS: boot phases, and API calls per machine-minute of a 10-worker cluster.

Boot: time from ``launch()`` to the payload running, split into the phases the machine log stamps
(the API calls of the launch, the instance starting, uv, the agent's environment, the software
environment, the payload), cold (a stock image: uv downloaded, environments built, no uv cache) and
warm (an image baked after one boot: its root and uv cache shared). Baseline: the
same payload launched on the local provider, in the same run.

Fan-out: ``.map`` over 10,000 items vs raw ``client.map`` on a cluster of sandbox instances.

API calls: the requests the sandbox's moto server answers while a 10-worker ``RemoteCluster`` idles
for a minute and while it works for a minute, per machine-minute. Goal: lease traffic one call per
interval whatever the worker count, and under 1 call per second in total for 10 workers.
"""

from __future__ import annotations

import os

from common import BOOT_ONLY, api_calls, bench_home, boot_lines, boot_phases, local_launch

IDLE_SECONDS = float(os.environ.get("BENCH_AWS_SECONDS", "60"))
WORKERS = 10


def machine_log(aws):
    """The machine log of an aws machine: its sandbox instance's local machine's."""

    def log_of(machine) -> str:
        local = aws.runner.machines.list({"sandbox-instance": machine.id}, include_terminated=True)[0]
        return aws.runner.machines.logs(local.id).text

    return log_of


def main() -> list[str]:
    from prefect_remote.providers.aws.provider import AWSProvider
    from prefect_remote.sandbox.aws import SandboxAWS
    from prefect_remote.software.capture import capture_environment
    from prefect_remote.spec import MachineSpec

    lines = []
    with bench_home("aws") as scratch:  # which ends the sandbox's instances, whatever happens
        with SandboxAWS(home=scratch / "sandbox") as aws:
            aws.runner.shared.append(str(scratch))  # the payload's marker, seen from this host
            os.environ.update(aws.exports())
            project = scratch / "project"
            project.mkdir()
            software = capture_environment(root=project).name
            provider = AWSProvider()
            marker = scratch / "payload-ran"
            baseline = min(local_launch(marker, scratch / "local") for _ in range(3))
            spec = MachineSpec(cpu=2, software=software, keepalive="5 minutes")
            with aws.warm(False):  # a stock image: no uv, no environments, no uv cache
                cold = boot_phases(provider, spec, marker, machine_log(aws))
            with aws.warm(True):  # an image baked after one boot: its root and uv cache shared
                boot_phases(provider, spec, marker, machine_log(aws))
                warm = [boot_phases(provider, spec, marker, machine_log(aws)) for _ in range(3)]
            lines += boot_lines("boot EC2", cold, warm, baseline)
            if BOOT_ONLY:
                return lines
            lines += api_calls(aws.calls, "aws", "ec2:CreateTags", WORKERS, IDLE_SECONDS)
            from bench_fanout import bench_map

            lines += bench_map("aws", memory=False)  # the fan-out benchmark on the sandbox's instances
    return lines


if __name__ == "__main__":
    for line in main():
        print(line)
