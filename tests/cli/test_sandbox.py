"""`prefect-remote sandbox aws` as a user runs it: exports, `sandbox ready`, instances that boot, and
every instance ended on SIGTERM."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import boto3

from tests.conftest import wait_for


def test_sandbox_aws_exports_serves_and_ends_its_instances_on_sigterm(tmp_path):
    out = tmp_path / "sandbox.env"
    command = [str(Path(sys.executable).parent / "prefect-remote"), "sandbox", "aws"]
    with open(out, "w") as stdout:
        sandbox = subprocess.Popen(command, stdout=stdout, stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "80"})
    try:
        wait_for(lambda: "sandbox ready" in out.read_text(), timeout=60, message="sandbox ready")
        lines = out.read_text().splitlines()
        exports = dict(shlex.split(line.removeprefix("export "))[0].split("=", 1) for line in lines if line.startswith("export "))
        assert {"AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "PREFECT_REMOTE_PROVIDER",
                "PREFECT_REMOTE_STORE", "PREFECT_REMOTE_SANDBOX_HOST"} <= set(exports)
        assert exports["PREFECT_REMOTE_PROVIDER"] == "aws" and exports["PREFECT_REMOTE_STORE"].startswith("s3://")
        assert all(len(line) <= 80 or line.startswith("export ") for line in lines)

        session = boto3.session.Session(
            region_name=exports["AWS_DEFAULT_REGION"], aws_access_key_id=exports["AWS_ACCESS_KEY_ID"], aws_secret_access_key=exports["AWS_SECRET_ACCESS_KEY"]
        )
        ec2 = session.client("ec2", endpoint_url=exports["AWS_ENDPOINT_URL"])
        image = session.client("ssm", endpoint_url=exports["AWS_ENDPOINT_URL"]).get_parameter(
            Name="/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
        )["Parameter"]["Value"]
        marker = tmp_path / "booted"
        script = f"#!/bin/bash\necho $$ > {marker}.tmp && mv {marker}.tmp {marker}\nexec sleep 600\n"  # its pid, then sleep as that pid
        ec2.run_instances(ImageId=image, InstanceType="t3.micro", MinCount=1, MaxCount=1, UserData=script)
        wait_for(marker.exists, timeout=30, message="the instance's user data to run")
        pid = int(marker.read_text())
        wait_for(lambda: _cmdline(pid) == b"sleep\x00600\x00", timeout=10, message="the instance's process")
    finally:
        sandbox.send_signal(signal.SIGTERM)
        _, errors = sandbox.communicate(timeout=60)
    assert sandbox.returncode == 0, errors
    assert "1 instance(s) ended" in errors
    wait_for(lambda: _cmdline(pid) != b"sleep\x00600\x00", timeout=5, message="the instance's machine to end with the sandbox")


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
