"""`prefect-remote sandbox aws|gcp` as a user runs it: exports, `sandbox ready`, instances (Cloud Run
tasks) that boot, and every one ended on SIGTERM."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import boto3

from prefect_remote.sandbox.images import images_unavailable
from tests.conftest import wait_for

SLEEPER = b"sleep\x00600\x00"


@contextlib.contextmanager
def serving(cloud: str, tmp_path: Path, provider_exports: set[str], store_scheme: str) -> Iterator[tuple[dict[str, str], Path]]:
    """Runs `prefect-remote sandbox CLOUD` until the block ends, checks its exports, and yields them
    with a marker path: the block starts one instance that writes its pid there (in its own root, so
    on its disk under the sandbox's home, not on this host), then sleeps as that pid. On SIGTERM the
    sandbox must end that instance's machine and say so."""
    out, marker = tmp_path / "sandbox.env", tmp_path / "booted"
    command = [str(Path(sys.executable).parent / "prefect-remote"), "sandbox", cloud]
    with open(out, "w") as stdout:
        sandbox = subprocess.Popen(command, stdout=stdout, stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "80"})
    pid = None
    try:
        wait_for(lambda: "sandbox ready" in out.read_text(), timeout=60, message="sandbox ready")
        lines = out.read_text().splitlines()
        exports = dict(shlex.split(line.removeprefix("export "))[0].split("=", 1) for line in lines if line.startswith("export "))
        assert provider_exports | {"PREFECT_REMOTE_PROVIDER", "PREFECT_REMOTE_STORE", "PREFECT_REMOTE_SANDBOX_HOST"} <= set(exports)
        assert exports["PREFECT_REMOTE_PROVIDER"] == cloud and exports["PREFECT_REMOTE_STORE"].startswith(store_scheme)
        # Its registry and engine (`make sandbox-host` installs them), or one line saying how to get them.
        if images_unavailable() is None:
            assert {"DOCKER_HOST", "PREFECT_REMOTE_SANDBOX_REGISTRY", "PREFECT_REMOTE_SANDBOX_IMAGE"} <= set(exports)
            assert exports["PREFECT_REMOTE_SANDBOX_IMAGE"].startswith(f"{exports['PREFECT_REMOTE_SANDBOX_REGISTRY']}/")
            catalog = f"http://{exports['PREFECT_REMOTE_SANDBOX_REGISTRY']}/v2/_catalog"
            assert "prefect-remote/python" in json.load(urllib.request.urlopen(catalog, timeout=10))["repositories"]
        else:
            assert any("make sandbox-host" in line for line in lines)
        assert all(len(line) <= 80 or line.startswith("export ") for line in lines)
        yield exports, marker
        disks = Path(os.environ["PREFECT_REMOTE_HOME"], "sandbox", cloud, "home", "instances")
        written = wait_for(lambda: next(disks.glob(f"*/disk/upper{marker}"), None), timeout=30, message="the instance's script to run")
        assert not marker.exists()  # what the instance wrote to its / is on its disk only
        pid = int(written.read_text())
        image = written.with_name(f"{marker.name}.env").read_text().splitlines()
        assert not [line for line in image if line.startswith(("UV_CACHE_DIR=", "PREFECT_REMOTE_ROOT="))]  # a stock image by default
        wait_for(lambda: _cmdline(pid) == SLEEPER, timeout=10, message="the instance's process")
    finally:
        sandbox.send_signal(signal.SIGTERM)
        _, errors = sandbox.communicate(timeout=60)
    assert sandbox.returncode == 0, errors
    assert "1 instance(s) ended" in errors
    wait_for(lambda: _cmdline(pid) != SLEEPER, timeout=5, message="the instance's machine to end with the sandbox")


def _pid_then_sleep(marker: Path) -> str:
    return f"env > {marker}.env; echo $$ > {marker}.tmp && mv {marker}.tmp {marker}; exec sleep 600"


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_sandbox_aws_exports_serves_and_ends_its_instances_on_sigterm(tmp_path):
    with serving("aws", tmp_path, {"AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}, "s3://") as (
        exports,
        marker,
    ):
        session = boto3.session.Session(
            region_name=exports["AWS_DEFAULT_REGION"],
            aws_access_key_id=exports["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=exports["AWS_SECRET_ACCESS_KEY"],
        )
        ec2 = session.client("ec2", endpoint_url=exports["AWS_ENDPOINT_URL"])
        image = session.client("ssm", endpoint_url=exports["AWS_ENDPOINT_URL"]).get_parameter(
            Name="/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
        )["Parameter"]["Value"]
        ec2.run_instances(
            ImageId=image, InstanceType="t3.micro", MinCount=1, MaxCount=1, UserData=f"#!/bin/bash\n{_pid_then_sleep(marker)}\n"
        )


def test_sandbox_gcp_exports_serves_and_ends_its_jobs_on_sigterm(tmp_path):
    from google.cloud import run_v2
    from google.oauth2 import service_account

    names = {
        "GOOGLE_APPLICATION_CREDENTIALS",
        "GOOGLE_CLOUD_PROJECT",
        "API_ENDPOINT_OVERRIDE",
        "PREFECT_REMOTE_GCP_PROJECT",
        "PREFECT_REMOTE_GCP_API_ENDPOINT",
    }
    with serving("gcp", tmp_path, names, "gs://") as (exports, marker):
        credentials = service_account.Credentials.from_service_account_file(
            exports["GOOGLE_APPLICATION_CREDENTIALS"], scopes=["https://www.googleapis.com/auth/cloud-platform"]
        )
        jobs = run_v2.JobsClient(
            transport="rest", credentials=credentials, client_options={"api_endpoint": exports["PREFECT_REMOTE_GCP_API_ENDPOINT"]}
        )
        container = run_v2.Container(image="python:3.12-slim", command=["bash", "-c", _pid_then_sleep(marker)])
        template = run_v2.TaskTemplate(containers=[container], max_retries=0, service_account=exports["PREFECT_REMOTE_GCP_SERVICE_ACCOUNT"])
        parent = f"projects/{exports['PREFECT_REMOTE_GCP_PROJECT']}/locations/{exports['PREFECT_REMOTE_GCP_REGION']}"
        job = jobs.create_job(
            parent=parent, job_id="run-0123456789ab", job=run_v2.Job(template=run_v2.ExecutionTemplate(template=template))
        ).result()
        jobs.run_job(name=job.name)
