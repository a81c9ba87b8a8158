"""EC2Runtime, the machine side, against a tiny IMDSv2 server (http.server on loopback) that serves
one moto instance's id and live tags, and moto's SSM and EC2 through boto3."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import pytest

from prefect_remote.machine.runtime import LeaseWatch, load_runtime
from prefect_remote.providers.aws.runtime import DEFAULT_METADATA_ENDPOINT, EC2Runtime
from prefect_remote.providers.base import BootPayload
from prefect_remote.spec import MachineSpec


class Metadata:
    """An IMDSv2 for one instance: a session token from PUT /latest/api/token, then GETs with it."""

    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id
        self.tokens: set[str] = set()
        self.requests: list[str] = []
        ec2 = boto3.session.Session().client("ec2")
        metadata = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                if self.path != "/latest/api/token" or not self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                    return self._answer(400, "")
                token = secrets.token_hex(8)
                metadata.tokens.add(token)
                self._answer(200, token)

            def do_GET(self) -> None:
                metadata.requests.append(self.path)
                if self.headers.get("X-aws-ec2-metadata-token") not in metadata.tokens:
                    return self._answer(401, "")
                if self.path == "/latest/meta-data/instance-id":
                    return self._answer(200, metadata.instance_id)
                prefix = "/latest/meta-data/tags/instance/"
                if self.path.startswith(prefix):
                    found = ec2.describe_instances(InstanceIds=[metadata.instance_id])["Reservations"][0]["Instances"][0]
                    tags = {tag["Key"]: tag["Value"] for tag in found.get("Tags", [])}
                    key = self.path[len(prefix) :]
                    return self._answer(200, tags[key]) if key in tags else self._answer(404, "")
                self._answer(404, "")

            def _answer(self, status: int, body: str) -> None:
                self.send_response(status)
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def machine_and_metadata(provider) -> Iterator[tuple]:
    launches = []
    start = provider._start
    provider._start = lambda launch: launches.append(launch) or start(launch)
    [machine] = provider.launch(MachineSpec(cpu=1, keepalive="1 minute"), BootPayload(["sleep", "600"], secrets={"TOKEN": "s3cret"}))
    metadata = Metadata(machine.id)
    yield machine, launches[0], metadata
    metadata.server.shutdown()


def test_runtime_reads_id_lease_and_secrets(provider, ec2, machine_and_metadata):
    machine, launch, metadata = machine_and_metadata
    options = {**provider.runtime_options(launch.id), "metadata_endpoint": metadata.url}
    runtime = load_runtime(provider.runtime, options)  # as the agent makes it
    assert isinstance(runtime, EC2Runtime)
    assert runtime.machine_id == machine.id
    now = [1000.0]
    runtime.lease_watch = LeaseWatch(clock=lambda: now[0])  # the machine's monotonic clock
    assert runtime.lease_age() == 0  # the first read: fresh from launch
    assert metadata.requests[-1] == "/latest/meta-data/tags/instance/prefect-remote:lease"
    now[0] += 100
    assert runtime.lease_age() == 100  # a tag unchanged for 100 s is 100 s old
    provider.renew_leases([machine.id])  # the renewal changes the tag
    assert runtime.lease_age() == 0
    assert runtime.read_secrets() == {"TOKEN": "s3cret"}


@pytest.mark.parametrize("skew", [-600, 600])
def test_the_lease_age_ignores_the_time_the_owner_writes(ec2, machine_and_metadata, provider, skew):
    """An owner whose clock is 10 minutes off: its tag names a time far from the machine's, and the
    age is what the machine saw, from the first read and from each change."""
    machine, launch, metadata = machine_and_metadata
    runtime = EC2Runtime(**{**provider.runtime_options(launch.id), "metadata_endpoint": metadata.url})
    now = [0.0]
    runtime.lease_watch = LeaseWatch(clock=lambda: now[0])
    ec2.create_tags(Resources=[machine.id], Tags=[{"Key": "prefect-remote:lease", "Value": str(int(time.time()) + skew)}])
    assert runtime.lease_age() == 0
    now[0] = 20
    assert runtime.lease_age() == 20
    ec2.create_tags(Resources=[machine.id], Tags=[{"Key": "prefect-remote:lease", "Value": str(int(time.time()) + skew + 10)}])
    assert runtime.lease_age() == 0


def test_runtime_renews_a_rejected_token(provider, machine_and_metadata):
    machine, launch, metadata = machine_and_metadata
    runtime = EC2Runtime(**{**provider.runtime_options(launch.id), "metadata_endpoint": metadata.url})
    assert runtime.machine_id == machine.id
    metadata.tokens.clear()  # the instance was stopped and started: old tokens are refused
    assert runtime.lease_age() < 5


def test_runtime_terminates_its_instance_with_the_reason(provider, machine_and_metadata):
    machine, launch, metadata = machine_and_metadata
    runtime = EC2Runtime(**{**provider.runtime_options(launch.id), "metadata_endpoint": metadata.url})
    runtime.terminate("idle for 10m", 0)
    [ended] = provider.wait([machine.id], timeout=30)  # shutting-down until its processes are gone
    assert (ended.state, ended.reason, ended.exit_code) == ("terminated", "idle for 10m", 0)


def test_halt_runs_the_oss_shutdown_wherever_the_metadata_service_is(tmp_path):
    """halt() powers the instance off with ``shutdown -h now``, the only way left when the API is out
    of reach, whatever metadata endpoint it reads (it knows of no sandbox); a test gives it a command
    of its own (this host is never powered off), and one that fails or is missing never raises."""
    assert EC2Runtime(region="us-east-1", secrets_parameter="/p/x").halt_command == ["shutdown", "-h", "now"]
    halted = tmp_path / "halted"
    for endpoint in (DEFAULT_METADATA_ENDPOINT, "http://127.0.0.1:1234"):
        command = ["sh", "-c", f'echo "$0 $1" >> {halted}', "shutdown", "-h"]
        EC2Runtime(region="us-east-1", secrets_parameter="/p/x", metadata_endpoint=endpoint, halt_command=command).halt()
    assert halted.read_text() == "shutdown -h\n" * 2
    EC2Runtime(region="us-east-1", secrets_parameter="/p/x", halt_command=["false"]).halt()
    EC2Runtime(region="us-east-1", secrets_parameter="/p/x", halt_command=[str(tmp_path / "no-such-shutdown")]).halt()


def test_metadata_endpoint_defaults(monkeypatch):
    monkeypatch.delenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", raising=False)
    assert EC2Runtime(region="us-east-1", secrets_parameter="/p/x").metadata_endpoint == DEFAULT_METADATA_ENDPOINT
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:1234/")  # the AWS SDKs' own override
    assert EC2Runtime(region="us-east-1", secrets_parameter="/p/x").metadata_endpoint == "http://127.0.0.1:1234"


@pytest.mark.no_iam  # the sandbox's IAM has no table for ECR's actions (prefect_remote.sandbox.iam_requests): it refuses them all
def test_ecr_credentials_come_from_the_machines_identity_and_only_for_ecr(provider, machine_and_metadata):
    """An ECR registry's user and token from ECR's GetAuthorizationToken (with the caller's identity: on a
    machine, its instance role), in the registry's region; no call, and no credentials, for any other."""
    _, launch, metadata = machine_and_metadata
    runtime = EC2Runtime(**{**provider.runtime_options(launch.id), "metadata_endpoint": metadata.url})
    assert runtime.registry_credentials("registry.example.com:5000") is None
    assert runtime.registry_credentials("docker.io") is None
    user, token = runtime.registry_credentials("123456789012.dkr.ecr.us-east-1.amazonaws.com")
    assert user == "AWS" and token


def test_a_machine_waits_for_a_slow_metadata_service_for_its_roles_credentials(monkeypatch):
    """botocore asks the metadata service for the instance role's credentials once, within 1 s; a busy
    or throttled IMDS then leaves every call "Unable to locate credentials" (a scheduler died so, reading
    its launch's secret). A machine's session waits longer and asks again."""
    import json

    from prefect_remote.providers.aws.runtime import machine_session

    class SlowCredentials(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            self._answer("token")

        def do_GET(self) -> None:
            if self.path.endswith("/security-credentials/"):
                return self._answer("machine-role")
            time.sleep(1.5)  # slower than botocore's default timeout of 1 s
            expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
            self._answer(
                json.dumps({"Code": "Success", "AccessKeyId": "ASIAEXAMPLE", "SecretAccessKey": "s", "Token": "t", "Expiration": expires})
            )

        def _answer(self, body: str) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowCredentials)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
        monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        assert boto3.session.Session().get_credentials() is None  # botocore's defaults give up
        credentials = machine_session().get_credentials()
        assert credentials is not None and credentials.access_key == "ASIAEXAMPLE"
    finally:
        server.shutdown()
