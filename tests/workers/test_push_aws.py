"""The seed's flow path on the sandbox AWS, as a user would walk it: a remote:push pool provisioned
for aws, `prefect deploy` with package sync storing to S3, and `prefect deployment run` completing
on an EC2 instance (booted from the stock-image path), its boot and payload logs in the run's logs.
Runs are submitted by `prefect-remote push serve`, started in the sandbox's environment."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import pytest
from prefect.states import Cancelling

from tests.conftest import SESSION_HOME, wait_for
from tests.workers.conftest import FLOWS, logged, prefect_yaml, run_logs, wait_final

POOL = "test-push-aws"
PREFECT_YAML = prefect_yaml("aws-project", POOL, {"on-ec2": ("flows.py:hello", {"cpu": 2}), "sleeping-on-ec2": ("flows.py:sleeper", {"cpu": 2})})


@pytest.fixture(scope="module")
def aws_shell(prefect_server, aws_sandbox, tmp_path_factory) -> dict[str, str]:
    """A shell's environment after `prefect-remote sandbox aws`, with the session's Prefect server
    reached at the sandbox host (as instances reach it), and `prefect-remote push serve` running."""
    port = urlsplit(prefect_server).port
    api_url = aws_sandbox.expose_port(port) + "/api"
    env = {
        **os.environ,
        **aws_sandbox.exports(),
        "PREFECT_REMOTE_AWS_LEASE_INTERVAL": "5",
        "PREFECT_API_URL": api_url,
        "PREFECT_HOME": str(SESSION_HOME / "prefect-cli-aws"),
        "COLUMNS": "200",
    }
    created = run(env, "prefect", "work-pool", "create", "--type", "remote:push", "--provision-infra", POOL)
    assert created.returncode == 0, created.stdout + created.stderr
    assert "aws" in created.stdout
    log = open(tmp_path_factory.mktemp("push-serve") / "serve.log", "w+")
    serve = subprocess.Popen([str(Path(sys.executable).parent / "prefect-remote"), "push", "serve", "--pool", POOL], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield env
    finally:
        serve.send_signal(signal.SIGINT)
        try:
            serve.wait(timeout=20)
        except subprocess.TimeoutExpired:
            serve.kill()
            serve.wait()
        log.close()


@pytest.fixture(scope="module")
def deployed(aws_shell, tmp_path_factory) -> Path:
    project = tmp_path_factory.mktemp("aws-project")
    (project / "flows.py").write_text(FLOWS)
    (project / "prefect.yaml").write_text(PREFECT_YAML)
    result = run(aws_shell, "prefect", "--no-prompt", "deploy", "--all", cwd=project)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Software environment senv-" in result.stdout and "s3://" in result.stdout + result.stderr
    return project


def run(env: dict[str, str], command: str, *args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / command), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def ec2_client(env: dict[str, str]):
    session = boto3.session.Session(
        region_name=env["AWS_DEFAULT_REGION"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"]
    )
    return session.client("ec2", endpoint_url=env["AWS_ENDPOINT_URL"])


def instance_state(instance_id: str, env: dict[str, str]) -> str:
    return ec2_client(env).describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]["State"]["Name"]


def test_deployment_runs_on_an_ec2_instance(aws_shell, deployed, api, aws_sandbox):
    ran = run(aws_shell, "prefect", "deployment", "run", "hello/on-ec2", "--watch", "--watch-timeout", "300", cwd=deployed, timeout=360)
    deployment = api.read_deployment_by_name("hello/on-ec2")
    [flow_run] = [r for r in api.read_flow_runs() if r.deployment_id == deployment.id]
    assert ran.returncode == 0 and "Completed" in ran.stdout, ran.stdout + ran.stderr + "\n".join(run_logs(api, flow_run.id))
    instance_id = flow_run.infrastructure_pid
    assert instance_id.startswith("i-")
    logged(api, flow_run.id, "estimated cost $")
    logs = "\n".join(run_logs(api, flow_run.id))
    assert "hello from the flow" in logs  # the payload's own output
    assert "booting machine" in logs and "agent: ready" in logs and "software environment senv-" in logs  # boot phases
    # The cost facts at launch and at the end: type, region, market, price, and what it cost.
    assert re.search(rf"Machine {instance_id} launched on aws: t3a\.nano in us-east-1, on-demand, \$\d+\.\d{{4}}/hour", logs)
    assert re.search(rf"Machine {instance_id} ended: payload finished; estimated cost \$\d+\.\d{{4}}", logs)
    wait_for(lambda: instance_state(instance_id, aws_shell) == "terminated", timeout=30, message="the instance terminated")


def test_cancelling_a_run_terminates_its_instance(aws_shell, deployed, api):
    run_id = api.create_flow_run_from_deployment(api.read_deployment_by_name("sleeper/sleeping-on-ec2").id).id
    instance_id = wait_for(lambda: api.read_flow_run(run_id).state_name == "Running" and api.read_flow_run(run_id).infrastructure_pid, timeout=240, interval=0.5)
    api.set_flow_run_state(run_id, Cancelling(), force=True)
    cancelled = time.monotonic()
    wait_for(lambda: instance_state(instance_id, aws_shell) == "terminated", timeout=10, interval=0.2, message="the instance terminated")
    assert time.monotonic() - cancelled <= 10
    try:
        wait_for(lambda: api.read_flow_run(run_id).state_name == "Cancelled", timeout=30, interval=0.5)
    except AssertionError:
        raise AssertionError(f"run is {api.read_flow_run(run_id).state_name}: " + "\n".join(run_logs(api, run_id))) from None


def test_a_terminated_instance_crashes_its_run(aws_shell, deployed, api):
    run_id = api.create_flow_run_from_deployment(api.read_deployment_by_name("sleeper/sleeping-on-ec2").id).id
    instance_id = wait_for(lambda: api.read_flow_run(run_id).state_name == "Running" and api.read_flow_run(run_id).infrastructure_pid, timeout=240, interval=0.5)
    ec2_client(aws_shell).terminate_instances(InstanceIds=[instance_id])  # as a spot interruption or an operator would
    killed = time.monotonic()
    final = wait_final(api, run_id, timeout=30)
    assert time.monotonic() - killed <= 30 and final.state_name == "Crashed"
