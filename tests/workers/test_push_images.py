"""Flow runs in a container image on the local provider, through a remote:push pool on a real server:
what ``flow.deploy(image=...)`` sets (the ``image`` job variable), or its older name ``container``."""

from __future__ import annotations

import pytest

from prefect_remote.providers.local import LocalProvider
from tests.images import import_test_image, remove_image
from tests.push_service import prefect_server_with_push_service  # noqa: F401 (this module's runs go through the push service)
from tests.workers.conftest import logged, run_logs, wait_final

FLOWS = """\
import os

from prefect import flow


@flow(log_prints=True)
def in_image():
    code = "/opt/flows/flows.py" if os.path.exists("/opt/flows/flows.py") else "no code"  # (this host has no /opt/flows)
    print("hello from the image, in", os.getcwd(), "with", code)
"""


@pytest.fixture(scope="module")
def image():
    image = import_test_image({"/opt/flows/flows.py": FLOWS})  # the project's code, as flow.deploy(image=...) builds it in
    yield image
    remove_image(image)


def deploy_in_image(client, pool: str, **job_variables) -> str:
    return client.create_deployment(
        flow_id=client.create_flow_from_name("in-image"),
        name="-".join(f"{key}-{abs(hash(value))}" for key, value in sorted(job_variables.items())),
        work_pool_name=pool,
        entrypoint="flows.py:in_image",
        pull_steps=[{"prefect.deployments.steps.set_working_directory": {"directory": "/opt/flows"}}],  # as Prefect's image has it
        job_variables=job_variables,
    )


def test_flow_runs_in_the_image_named_by_image_or_by_its_older_name_container(push_pool, api, image):
    runs = [api.create_flow_run_from_deployment(deploy_in_image(api, push_pool, **{name: image})) for name in ("image", "container")]
    for run in runs:
        final = wait_final(api, run.id, timeout=180)
        logs = "\n".join(run_logs(api, run.id))
        assert final.state_name == "Completed", logs
        logged(api, run.id, "hello from the image, in /opt/flows with /opt/flows/flows.py")
        logged(api, run.id, f"image pull: {image} is on this machine already")  # imported here: no registry to pull from
    machines = LocalProvider().wait([api.read_flow_run(run.id).infrastructure_pid for run in runs], timeout=30)
    assert [machine.reason for machine in machines] == ["payload finished"] * 2  # the container's exit code, 0, is the machine's


def test_a_missing_image_fails_the_run_within_a_minute_naming_it(push_pool, api):
    missing = "localhost/prefect-remote-test:missing"
    run = api.create_flow_run_from_deployment(deploy_in_image(api, push_pool, image=missing))
    final = wait_final(api, run.id, timeout=60)
    assert final.state_name in ("Crashed", "Failed")
    logged(api, run.id, f"machine ending: image pull: image {missing} could not be pulled")
    [machine] = LocalProvider().wait([final.infrastructure_pid], timeout=15)
    assert machine.reason.startswith(f"image pull: image {missing} could not be pulled")
