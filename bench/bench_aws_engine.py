"""The AMI of an image= machine on the sandbox EC2: ECS-optimized AL2023 (Docker on it) vs stock AL2023 (Docker installed at boot).

Each boots a machine whose payload runs in the sandbox's ready Python image, on a warm instance image
(uv, the agent and the image's layers cached: what differs is the engine), three times each,
interleaved. Figures, for stock Amazon Linux 2023: the engine phase (from ``agent: ready`` to
``agent: starting`` in the boot log) and ``launch()`` to ``payload started``. Baseline: the same for
the ECS-optimized AMI, the default for image= (bench/common.py's style: figure, baseline, ratio).

What the sandbox cannot reproduce: its stock AL2023 has no engine, and its ``dnf install docker``
copies this host's Podman into place (prefect_remote.providers.local.own_root), where AL2023's dnf
downloads Docker, containerd and runc from AWS's regional repository and systemd then starts dockerd.
The stock figure is the install path's fixed cost here (the check, the copy, the phase lines), not
that download, whose time AWS publishes no figure for; on the ECS-optimized AMI there is none.
"""

from __future__ import annotations

import os
import statistics
import time

from bench_aws import machine_log
from common import bench_home, first, stamps

STOCK_AL2023 = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
RUNS = 3


def boot(provider, spec, log_of) -> tuple[float, float, bool]:
    """One machine's engine phase, its ``launch()`` to ``payload started`` (seconds), and whether its
    boot installed the engine."""
    from prefect_remote.providers.base import BootPayload

    started = time.time()
    [machine] = provider.launch(spec, BootPayload(["python", "-c", "pass"]))
    provider.wait([machine.id], timeout=600, poll=0.5)
    log = log_of(machine)
    stamped = stamps(log)
    ready, engine_done, payload = (first(stamped, text) for text in ("agent: ready", "agent: starting", "payload started"))
    if ready is None or engine_done is None or payload is None:
        raise RuntimeError(f"machine {machine.id} did not run its payload in the image:\n{log}")
    return engine_done - ready, payload - started, "installing Docker" in log


def main() -> list[str]:
    from prefect_remote.providers.aws.provider import AWSProvider
    from prefect_remote.sandbox.aws import SandboxAWS
    from prefect_remote.sandbox.images import SandboxImages, images_unavailable
    from prefect_remote.spec import MachineSpec

    unavailable = images_unavailable()
    if unavailable:
        return [f"skipped: {unavailable}"]
    with bench_home("aws-engine") as scratch:  # which ends the sandbox's instances, whatever happens
        with SandboxImages(scratch / "images") as images, SandboxAWS(home=scratch / "sandbox", warm_cache=True) as aws:
            os.environ.update(aws.exports())
            aws.use_images(images)
            spec = MachineSpec(image=images.image, keepalive="2 minutes")
            amis = {"ECS-optimized": AWSProvider(), "stock": AWSProvider(ami=STOCK_AL2023)}
            boot(amis["ECS-optimized"], spec, machine_log(aws))  # (a first boot fills the warm image's caches)
            runs: dict[str, list[tuple[float, float, bool]]] = {name: [] for name in amis}
            for _ in range(RUNS):
                for name, provider in amis.items():
                    runs[name].append(boot(provider, spec, machine_log(aws)))
    installed = {name: sum(run[2] for run in found) for name, found in runs.items()}
    if installed != {"ECS-optimized": 0, "stock": RUNS}:
        raise RuntimeError(f"boots that installed the engine, by AMI: {installed} (expected none on ECS-optimized, all on stock)")
    lines = []
    for index, label in ((0, "engine phase"), (1, "launch() to payload")):
        stock, ecs = ([run[index] for run in runs[name]] for name in ("stock", "ECS-optimized"))
        figure, baseline = statistics.median(stock), statistics.median(ecs)
        lines.append(
            f"{label}, stock AL2023 (engine installed at boot): {figure:.2f} s vs ECS-optimized AL2023 {baseline:.2f} s "
            f"({figure / max(baseline, 0.01):.1f}x) [medians of {RUNS}: stock {', '.join(f'{x:.2f}' for x in stock)}; "
            f"ECS-optimized {', '.join(f'{x:.2f}' for x in ecs)} s]"
        )
    lines.append(
        "the sandbox's install copies its Podman into place: the real dnf download of Docker, containerd and runc, and "
        "dockerd's start, are not in these figures; the ECS-optimized AMI needs neither"
    )
    return lines


if __name__ == "__main__":
    for line in main():
        print(line)
