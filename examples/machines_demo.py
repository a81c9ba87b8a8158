"""Launch machines on the local provider and watch them work, then end, each for its own reason.

    make demo            # or: python examples/machines_demo.py

Four machines, each booted by the same boot script a cloud VM runs:
  * two workers (1 cpu, 512 MiB) that compute and finish;
  * one that sits idle and is ended by its idle_timeout;
  * one that asks for more memory than its limit and is killed by it (namespace isolation only).
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.table import Table

import prefect_remote
from prefect_remote.providers import get_provider

WORK = """
import os, socket, sys, time
print(f"hello from {os.environ['PREFECT_REMOTE_MACHINE_ID']}: python {sys.version.split()[0]}, pid {os.getpid()}")
total = 0
for chunk in range(5):
    total += sum(i * i for i in range(2_000_000))
    print(f"  chunk {chunk + 1}/5 done", flush=True)
print(f"result: {total}")
"""
HOG = "print('allocating 1 GiB on a 256 MiB machine...', flush=True); x = bytearray(2**30)"

console = Console()


def show(machines) -> None:
    table = Table(box=None, header_style="bold")
    for column in ("machine", "state", "type", "spec", "address"):
        table.add_column(column, no_wrap=True)
    table.add_column("ended because")
    for m in machines:
        table.add_row(m.id, m.state, m.instance_type, m.spec, m.private_address or "", m.reason or "")
    console.print(table)


def main() -> None:
    provider = get_provider()
    isolation = provider.isolation if hasattr(provider, "isolation") else "?"
    console.rule(f"[bold]prefect-remote demo[/] · provider {provider.name} · isolation {isolation}")
    tags = {"demo": str(int(time.time()))}
    machines = prefect_remote.launch(["python", "-c", WORK], count=2, cpu=1, memory="512 MiB", keepalive="30s", tags=tags)
    machines += prefect_remote.launch(["sleep", "600"], idle_timeout="3s", keepalive="30s", tags=tags)
    if isolation == "namespace":
        machines += prefect_remote.launch(["python", "-c", HOG], memory="256 MiB", keepalive="30s", tags=tags)
    show(provider.list(tags))

    cursors: dict[str, str | None] = {m.id: None for m in machines}
    colors = dict(zip(cursors, ["cyan", "magenta", "yellow", "red"], strict=False))
    console.print("\n[bold]machine logs[/] (as `prefect-remote machines logs ID` shows them):")
    while True:
        for machine_id in cursors:
            chunk = provider.logs(machine_id, cursor=cursors[machine_id])
            cursors[machine_id] = chunk.cursor
            for line in chunk.text.splitlines():
                console.print(f"[{colors[machine_id]}]{machine_id}[/] {line}", markup=True, highlight=False)
        if not provider.list(tags):
            break
        time.sleep(0.2)

    console.print()
    show(provider.list(tags, include_terminated=True))
    left = provider.list(tags)
    console.print(f"\nmachines still running: {len(left)}. Try `prefect-remote machines ls --all`.")
    if hasattr(provider, "cleanup_host"):
        provider.cleanup_host()


if __name__ == "__main__":
    main()
