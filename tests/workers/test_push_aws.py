"""The seed's flow path on the sandbox AWS, as a user would walk it: a remote:push pool provisioned
for aws, `prefect deploy` with package sync storing to S3, and `prefect deployment run` completing
on an EC2 instance (booted from the stock-image path), its boot and payload logs in the run's logs.
Runs are submitted by `prefect-remote push serve`, started in the sandbox's environment."""

from __future__ import annotations

import re
import time
from pathlib import Path

import boto3
import pytest

from prefect_remote.providers.aws.provider import AWSProvider
from tests.conftest import wait_for
from tests.workers.conftest import (
    FLOWS,
    SCALE_OUT,
    assert_ran_synced_code,
    cancel_ends_machine,
    completed_run,
    completed_runs,
    deploy_project,
    prefect_yaml,
    pull_deployments,
    run_logs,
    running_machine,
    sandbox_shell,
    scaled_out,
    wait_final,
)

POOL = "test-push-aws"
PULLS = pull_deployments("on-ec2")
DEPLOYMENTS = {
    "on-ec2": ("flows.py:hello", {"cpu": 2}),
    "sleeping-on-ec2": ("flows.py:sleeper", {"cpu": 2}),
    "scale-out-on-ec2": ("scale_out.py:my_flow", {"cpu": 2}),
    **PULLS,
}
PREFECT_YAML = prefect_yaml("aws-project", POOL, DEPLOYMENTS, pull=None)  # no pull section: Prefect's default, as users leave it


@pytest.fixture(scope="module")
def aws_shell(prefect_server, aws_sandbox, tmp_path_factory) -> dict[str, str]:
    """A shell's environment after `prefect-remote sandbox aws`, with the session's Prefect server
    reached at the sandbox host (as instances reach it), and `prefect-remote push serve` running."""
    with sandbox_shell(
        aws_sandbox, prefect_server, "aws", POOL, tmp_path_factory.mktemp("push-serve"), PREFECT_REMOTE_AWS_LEASE_INTERVAL="5"
    ) as env:
        yield env


@pytest.fixture(scope="module")
def deployed(aws_shell, tmp_path_factory) -> Path:
    files = {"flows.py": FLOWS, "scale_out.py": SCALE_OUT, "prefect.yaml": PREFECT_YAML}
    return deploy_project(aws_shell, tmp_path_factory.mktemp("aws-project"), files, "s3://")


def ec2_client(env: dict[str, str]):
    session = boto3.session.Session(
        region_name=env["AWS_DEFAULT_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )
    return session.client("ec2", endpoint_url=env["AWS_ENDPOINT_URL"])


def instance_state(instance_id: str, env: dict[str, str]) -> str:
    return ec2_client(env).describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]["State"]["Name"]


def test_deployment_runs_on_an_ec2_instance(aws_shell, deployed, api, aws_sandbox):
    flow_run = completed_run(api, aws_shell, deployed, "hello/on-ec2")
    instance_id = flow_run.infrastructure_pid
    assert instance_id.startswith("i-")
    logs = "\n".join(run_logs(api, flow_run.id))
    assert "hello from the flow" in logs  # the payload's own output
    assert "booting machine on aws EC2 t3a.nano in us-east-1" in logs and "software environment senv-" in logs  # boot phases
    assert re.search(r"agent: ready \(\S+ on Python 3\.\d+\.\d+\)", logs)  # which Python the machine got
    # The cost facts at launch and at the end: type, region, market, price, and what it cost.
    assert re.search(rf"Machine {instance_id} launched on aws: t3a\.nano in us-east-1, on-demand, \$\d+\.\d{{4}}/hour", logs)
    assert re.search(rf"Machine {instance_id} ended: payload finished; estimated cost \$\d+\.\d{{4}}", logs)
    wait_for(lambda: instance_state(instance_id, aws_shell) == "terminated", timeout=30, message="the instance terminated")


def test_the_synced_code_runs_wherever_the_pull_step_points(aws_shell, deployed, api):
    # No pull section (the project's path on this computer), the guide's /scratch/batch, and "."; at once.
    for flow_run in completed_runs(api, aws_shell, deployed, [f"located/{name}" for name in PULLS]):
        assert_ran_synced_code(api, flow_run)


def test_cancelling_a_run_terminates_its_instance(aws_shell, deployed, api):
    cancel_ends_machine(api, "sleeper/sleeping-on-ec2", lambda instance_id: instance_state(instance_id, aws_shell) == "terminated")


def test_a_terminated_instance_crashes_its_run(aws_shell, deployed, api):
    run_id, instance_id = running_machine(api, "sleeper/sleeping-on-ec2")
    ec2_client(aws_shell).terminate_instances(InstanceIds=[instance_id])  # as a spot interruption or an operator would
    killed = time.monotonic()
    final = wait_final(api, run_id, timeout=30)
    assert time.monotonic() - killed <= 30 and final.state_name == "Crashed"


def test_the_guides_scale_out_flow_launches_its_function_from_the_flows_instance(aws_shell, deployed, api, aws_sandbox, aws_env):
    """The flow run's instance launches the function's cluster on aws, with the pool's settings (its
    provider, store and profile reached it from its launcher) and its own software environment."""
    scaled_out(api, aws_shell, deployed, "my-flow/scale-out-on-ec2", AWSProvider(), aws_sandbox)
