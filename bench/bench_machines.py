"""Launch-to-payload-running time of a local machine vs spawning the same payload with subprocess.

The payload creates a file; the clock stops when the file appears. Both sides poll the same way, in
the same run, so the ratio and the overhead compare like with like. Goal: overhead <= 0.5 s with
process isolation.
"""

from __future__ import annotations

import statistics
import subprocess
import time
from pathlib import Path

from common import bench_home

from prefect_remote.providers.base import BootPayload
from prefect_remote.providers.local import LocalProvider
from prefect_remote.providers.local.isolation import namespace_unavailable
from prefect_remote.spec import MachineSpec

ROUNDS = 15


def _until_exists(path: Path, started: float) -> float:
    while not path.exists():
        time.sleep(0.0005)
    return time.perf_counter() - started


def subprocess_start(marker: Path) -> float:
    started = time.perf_counter()
    process = subprocess.Popen(["touch", str(marker)])
    elapsed = _until_exists(marker, started)
    process.wait()
    return elapsed


def machine_start(provider: LocalProvider, marker: Path, spec: MachineSpec) -> float:
    started = time.perf_counter()
    [machine] = provider.launch(spec, BootPayload(["touch", str(marker)]), tags={"bench": "machines"})
    elapsed = _until_exists(marker, started)
    provider.wait([machine.id], timeout=30)
    return elapsed


def main() -> list[str]:
    with bench_home("machines") as scratch:
        home, work = scratch / "home", scratch / "markers"
        work.mkdir()
        levels = [("process", MachineSpec())]
        if namespace_unavailable() is None:
            levels.append(("namespace", MachineSpec(cpu=1, memory="512 MiB")))
        lines = []
        for isolation, spec in levels:
            provider = LocalProvider(home, isolation=isolation)
            machine_start(provider, work / f"warmup-{isolation}", spec)  # page cache, bridge creation
            ours, baseline = [], []
            for i in range(ROUNDS):  # interleaved, so drift on the machine hits both sides alike
                baseline.append(subprocess_start(work / f"sub-{isolation}-{i}"))
                ours.append(machine_start(provider, work / f"machine-{isolation}-{i}", spec))
            mine, theirs = statistics.median(ours), statistics.median(baseline)
            verdict = "meets" if isolation != "process" or mine - theirs <= 0.5 else "MISSES"
            lines.append(
                f"launch-to-payload ({isolation} isolation): {mine * 1000:.0f} ms median vs subprocess {theirs * 1000:.1f} ms; "
                f"overhead {(mine - theirs) * 1000:.0f} ms, ratio {mine / theirs:.1f}x"
                + (f" [goal overhead <= 500 ms: {verdict}]" if isolation == "process" else "")
            )
            provider.cleanup_host()
        return lines


if __name__ == "__main__":
    for line in main():
        print(line)
