"""The gcp provider's Compute Engine control plane at scale: API calls and wall time to launch, renew, list and end 10, 100 and
500 machines.

On the strict sandbox GCP with instances that are not booted (``run_instances=False``: each VM is
a record of the sandbox's Compute Engine, its runner boots none), so that what is measured is the
provider's traffic (Compute Engine's API and the GCS records that hold the leases), not the
machines': one ``launch(count=N)``, one ``renew_leases`` of all N (what an owner does once per lease
interval), one ``list`` by tag, one ``terminate`` of all N. Each figure is next to its baseline from
the same run: the same phase for 10 machines, as calls per machine (the goal: calls per machine fall
as the count grows), and to its goal (:data:`GOALS`, with ``b`` a batch of 100 machines):

* launch: one ``instances.bulkInsert`` and one wait for its operation whatever N, one listing, the
  agent's wheel found in the store (a teardown or ``env gc`` may have deleted it since the last
  launch), and the records: one upload, then copies and their leases in one GCS batch request per
  ``b`` each (``5 + 2b``, with ``b`` of the N-1 copies);
* renew: one GCS batch request per ``b`` leases;
* list: 2 (Cloud Run's jobs, Compute Engine's aggregated instances);
* end: the records read and their ends written in one GCS batch request per ``b`` each, one
  ``instances.delete`` per VM (Compute Engine deletes no instances in bulk), the records listing
  that says which launches are over, and their secret (``N + 2b + 2``).
"""

from __future__ import annotations

import math
import os

from bench_control_plane import at_scale
from common import bench_home


def _batches(count: int) -> int:
    return math.ceil(count / 100)


GOALS = {
    "launch": lambda count: 5 + 2 * _batches(count - 1),
    "renew": _batches,
    "list": lambda count: 2,
    "end": lambda count: count + 2 * _batches(count) + 2,
}


def main() -> list[str]:
    from prefect_remote.providers.base import BootPayload
    from prefect_remote.providers.gcp.provider import GCPProvider
    from prefect_remote.sandbox.gcp.sandbox import SandboxGCP
    from prefect_remote.spec import MachineSpec

    with bench_home("gcp-control-plane") as scratch, SandboxGCP(home=scratch / "sandbox", isolation="process", run_instances=False) as gcp:
        os.environ.update(gcp.exports())
        provider = GCPProvider(service="compute")
        spec, payload = MachineSpec(cpu=1, keepalive="10 minutes"), BootPayload(["true"])
        provider.launch(spec, payload)  # the first launch's one-time work (firewall, agent wheel, prices) is not the figure
        return at_scale(gcp.calls, provider, spec, payload, goals=GOALS)


if __name__ == "__main__":
    for line in main():
        print(line)
