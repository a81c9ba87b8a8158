"""Deploy examples/example_flow.py from Python with package sync: no prefect.yaml, no Docker image.

    prefect server start                   # elsewhere: its push service gives each flow run a machine
    prefect work-pool create --type remote:push --provision-infra example-remote-pool
    python examples/deploy_from_python.py

``PackageSync(folder)`` is the deployment's storage: when the deployment is registered, it captures
this Python environment and the folder's code into the pool's store. Each flow run of the deployment
gets a fresh machine, which rebuilds that environment and loads ``example_flow.py:my_flow`` from the
synced code. The script then runs the deployment once and waits for it.
"""

from pathlib import Path

from example_flow import my_flow
from prefect.deployments import run_deployment

from prefect_remote import PackageSync

if __name__ == "__main__":
    my_flow.from_source(PackageSync(Path(__file__).parent), "example_flow.py:my_flow").deploy(
        name="example-remote-deploy",
        work_pool_name="example-remote-pool",
        job_variables={"cpu": 1, "memory": "1 GiB"},  # sized for the local provider; on a cloud, e.g. {"cpu": 16, "memory": "32GB"}
    )
    flow_run = run_deployment("my-flow/example-remote-deploy", timeout=300)
    print(f"Flow run {flow_run.name}: {flow_run.state_name} on machine {flow_run.infrastructure_pid}")
