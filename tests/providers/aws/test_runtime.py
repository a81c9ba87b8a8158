"""EC2Runtime, the machine side, against a tiny IMDSv2 server (http.server on loopback) that serves
one moto instance's id and live tags, and moto's SSM and EC2 through boto3."""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import pytest
from botocore.exceptions import ClientError

from prefect_remote.machine.runtime import LeaseWatch, load_runtime
from prefect_remote.providers.aws.runtime import DEFAULT_METADATA_ENDPOINT, EC2Runtime
from prefect_remote.providers.base import BootPayload
from prefect_remote.sandbox.aws import ACCOUNT_ID
from prefect_remote.sandbox.aws_identities import MachineCredentials
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


def act_as(monkeypatch: pytest.MonkeyPatch, keys: dict[str, str]) -> None:
    """The test's boto3 calls (and a runtime's) with ``keys``, as a machine's with its role's session."""
    for name, value in keys.items():
        monkeypatch.setenv(name, value)


def test_ecr_credentials_come_from_the_machines_identity_and_only_for_ecr(aws_env, provider, machine_and_metadata, monkeypatch):
    """An ECR registry's user and token from ECR's GetAuthorizationToken (with the caller's identity: on a
    machine, its instance role, which has exactly machine_policy()), in the registry's region; no call, and
    no credentials, for any other."""
    machine, launch, metadata = machine_and_metadata
    act_as(monkeypatch, aws_env.keys("machine", instance_id=machine.id))  # the session its IMDS serves
    runtime = EC2Runtime(**{**provider.runtime_options(launch.id), "metadata_endpoint": metadata.url})
    assert runtime.registry_credentials("registry.example.com:5000") is None
    assert runtime.registry_credentials("docker.io") is None
    user, token = runtime.registry_credentials("123456789012.dkr.ecr.us-east-1.amazonaws.com")
    assert user == "AWS" and token


@pytest.fixture
def ecr_image(aws_env) -> Iterator[tuple[str, dict, str]]:
    """An image pushed by the account's owner to an ECR repository of the sandbox's account: the
    repository's name, the image's manifest and its layer's digest."""
    ecr = aws_env.client("ecr")
    name = f"team/app-{secrets.token_hex(3)}"
    layer = b"a layer"
    digest = f"sha256:{hashlib.sha256(layer).hexdigest()}"
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "size": 2,
            "digest": f"sha256:{hashlib.sha256(b'{}').hexdigest()}",
        },
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "size": len(layer), "digest": digest}],
    }
    ecr.create_repository(repositoryName=name)
    ecr.put_image(repositoryName=name, imageManifest=json.dumps(manifest), imageTag="1")
    yield name, manifest, digest
    ecr.delete_repository(repositoryName=name, force=True)


def test_a_machine_pulls_from_ecr_and_a_role_without_the_repository_actions_is_refused(
    aws_env, machine_and_metadata, ecr_image, machine_profile_without, monkeypatch
):
    """The pull's API side as ECR authorizes it, with the caller's role: the machines' role (exactly
    machine_policy()) reads the image's manifest; a role without PullImagesFromECR still logs in (the
    token has no resource) but is refused the manifest and the layer, in ECR's shape: 400
    AccessDeniedException (awsJson's common error; not a shape of ECR's own model), with AWS's message."""
    machine, _, _ = machine_and_metadata
    name, manifest, layer = ecr_image
    image = [{"imageTag": "1"}]
    act_as(monkeypatch, aws_env.keys("machine", instance_id=machine.id))
    [pulled] = boto3.session.Session().client("ecr").batch_get_image(repositoryName=name, imageIds=image)["images"]
    assert json.loads(pulled["imageManifest"]) == manifest

    weak = machine_profile_without("PullImagesFromECR")
    session = MachineCredentials(ACCOUNT_ID).for_instance("i-0weakmachine", aws_env.region, weak)  # what IMDS would serve it
    act_as(
        monkeypatch,
        {
            "AWS_ACCESS_KEY_ID": session["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": session["SecretAccessKey"],
            "AWS_SESSION_TOKEN": session["Token"],
        },
    )
    runtime = EC2Runtime(region=aws_env.region, secrets_parameter="/prefect-remote/unused")
    assert runtime.registry_credentials(f"{ACCOUNT_ID}.dkr.ecr.{aws_env.region}.amazonaws.com")[0] == "AWS"
    ecr = boto3.session.Session().client("ecr")
    repository = f"arn:aws:ecr:{aws_env.region}:{ACCOUNT_ID}:repository/{name}"
    for action, call in (
        ("ecr:BatchGetImage", lambda: ecr.batch_get_image(repositoryName=name, imageIds=image)),
        ("ecr:GetDownloadUrlForLayer", lambda: ecr.get_download_url_for_layer(repositoryName=name, layerDigest=layer)),
    ):
        with pytest.raises(ClientError) as refused:
            call()
        answer = refused.value.response
        assert (answer["ResponseMetadata"]["HTTPStatusCode"], answer["Error"]["Code"]) == (400, "AccessDeniedException")
        assert answer["Error"]["Message"] == (
            f"User: arn:aws:sts::{ACCOUNT_ID}:assumed-role/{weak}/i-0weakmachine is not authorized to perform: {action} "
            f"on resource: {repository} because no identity-based policy allows the {action} action"
        )


def test_a_machine_waits_for_a_slow_metadata_service_for_its_roles_credentials(monkeypatch):
    """botocore asks the metadata service for the instance role's credentials once, within 1 s; a busy
    or throttled IMDS then leaves every call "Unable to locate credentials" (a scheduler died so, reading
    its launch's secret). A machine's session waits longer and asks again."""
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
