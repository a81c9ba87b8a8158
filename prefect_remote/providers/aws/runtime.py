"""The EC2 provider's machine side: the instance metadata service (IMDSv2) says who the machine is
and how fresh its owner's lease is; SSM holds its secrets; EC2 ends it.

Standard library only at import: the agent imports it on every instance boot. Reading secrets and
terminating through the API use boto3, which the machine's agent environment must have (the
software environment or the image provides it); without boto3 the agent still ends the machine
through :meth:`EC2Runtime.halt`.

>>> runtime = EC2Runtime(region="us-east-2", secrets_parameter="/prefect-remote/launch-0a1b2c3d4e5f")
>>> runtime.metadata_endpoint
'http://169.254.169.254'
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from prefect_remote.machine.runtime import LeaseWatch, LogShipping, MachineRuntime

# The tags the provider sets and the machine reads or writes (keys IMDS can serve: no "/" or spaces).
LEASE_TAG = "prefect-remote:lease"  # the owner's last renewal, epoch seconds by its clock (for people: machines watch it change)
REASON_TAG = "prefect-remote:reason"  # why the machine ended
EXIT_CODE_TAG = "prefect-remote:exit-code"  # the payload's exit code, when it had one

DEFAULT_METADATA_ENDPOINT = "http://169.254.169.254"
# An ECR registry: <account>.dkr.ecr[-fips].<region>.amazonaws.com[.cn]
ECR_REGISTRY = re.compile(r"\d{12}\.dkr\.ecr(?:-fips)?\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?")
# The AWS SDKs' own override of the metadata endpoint: boto3 on the machine honours it too.
METADATA_ENDPOINT_ENV = "AWS_EC2_METADATA_SERVICE_ENDPOINT"
TOKEN_TTL = 6 * 3600  # IMDSv2's longest session token
IMDS_CREDENTIALS_TIMEOUT, IMDS_CREDENTIALS_ATTEMPTS = 5, 6  # botocore's defaults: 1 s, once
# The machine's own power-off, as its OS has it (found through PATH): InstanceInitiatedShutdownBehavior=terminate
# makes it a termination.
HALT_COMMAND = ("shutdown", "-h", "now")


def machine_session() -> Any:
    """A boto3 session as a machine needs one: the instance role's credentials read from the metadata
    service with patience. botocore asks it once, within 1 s, by default; a busy instance, a throttled
    IMDS or a role moments old then makes every call fail "Unable to locate credentials"."""
    import boto3
    from botocore.session import get_session

    core = get_session()
    core.set_config_variable("metadata_service_timeout", IMDS_CREDENTIALS_TIMEOUT)
    core.set_config_variable("metadata_service_num_attempts", IMDS_CREDENTIALS_ATTEMPTS)
    return boto3.session.Session(botocore_session=core)


class EC2Runtime(MachineRuntime):
    """An EC2 instance's runtime. ``metadata_endpoint`` defaults to ``$AWS_EC2_METADATA_SERVICE_ENDPOINT``,
    else the link-local IMDS (a sandbox serves a per-instance one). The machine log goes to
    CloudWatch Logs, group ``log_group``, one stream per instance named by its id (:meth:`ship_log`).
    ``halt_command`` is what :meth:`halt` runs (the OS's ``shutdown -h now``)."""

    def __init__(
        self,
        region: str,
        secrets_parameter: str,
        log_group: str = "/prefect-remote/machines",
        lease_tag: str = LEASE_TAG,
        metadata_endpoint: str | None = None,
        timeout: float = 2.0,
        halt_command: Sequence[str] = HALT_COMMAND,
    ) -> None:
        self.region, self.secrets_parameter, self.log_group, self.lease_tag = region, secrets_parameter, log_group, lease_tag
        self.metadata_endpoint = (metadata_endpoint or os.environ.get(METADATA_ENDPOINT_ENV) or DEFAULT_METADATA_ENDPOINT).rstrip("/")
        self.timeout = timeout
        self.halt_command = list(halt_command)
        self._token: tuple[float, str] | None = None  # (expires at, token)
        self._machine_id: str | None = None
        self.lease_watch = LeaseWatch()

    # -- instance metadata (IMDSv2) ---------------------------------------------------------------
    def _session_token(self, *, fresh: bool = False) -> str:
        if fresh or self._token is None or time.monotonic() > self._token[0]:
            request = urllib.request.Request(
                f"{self.metadata_endpoint}/latest/api/token", method="PUT", headers={"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL)}
            )
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                token = response.read().decode()
            self._token = (time.monotonic() + TOKEN_TTL - 60, token)  # renewed a minute early
        return self._token[1]

    def metadata(self, path: str) -> str:
        """``/latest/meta-data/<path>`` as text: one HTTP call once the session token is held."""
        for fresh in (False, True):
            request = urllib.request.Request(
                f"{self.metadata_endpoint}/latest/meta-data/{path}", headers={"X-aws-ec2-metadata-token": self._session_token(fresh=fresh)}
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return response.read().decode()
            except urllib.error.HTTPError as error:
                if error.code != 401 or fresh:  # 401: the token expired early (the instance was stopped, say)
                    raise
        raise AssertionError("unreachable")

    @property
    def machine_id(self) -> str:
        if self._machine_id is None:
            self._machine_id = self.metadata("instance-id")
        return self._machine_id

    def lease_age(self) -> float:
        """How long the lease tag has stayed unchanged, by this machine's monotonic clock
        (:class:`~prefect_remote.machine.runtime.LeaseWatch`), never against the time it names: the
        owner's clock may be minutes off. Read through the metadata service (instance tags are served
        there: no API call, no permission needed)."""
        return self.lease_watch.age(self.metadata(f"tags/instance/{self.lease_tag}"))

    # -- the API, with boto3 -------------------------------------------------------------------------
    def _client(self, service: str, region: str | None = None) -> Any:
        try:
            from botocore.config import Config
        except ImportError:
            raise RuntimeError(
                f"the EC2 runtime needs boto3 in the machine's agent environment to reach {service}; install it in the image or "
                "software environment"
            ) from None
        config = Config(retries={"mode": "standard", "max_attempts": 8})  # throttling and transient errors
        return self._session.client(service, region_name=region or self.region, config=config)

    @functools.cached_property
    def _session(self) -> Any:
        """One session for every client: botocore's models loaded once, the role's credentials read
        from the metadata service once (and refreshed by botocore before they expire)."""
        return machine_session()

    def read_secrets(self) -> dict[str, str]:
        """The launch's SecureString parameter, decrypted (the instance profile needs ssm:GetParameter on it)."""
        parameter = self._client("ssm").get_parameter(Name=self.secrets_parameter, WithDecryption=True)
        return dict(json.loads(parameter["Parameter"]["Value"]))

    def forget_secrets(self) -> None:
        """Deletes the launch's parameter (the instance profile needs ssm:DeleteParameter on it); a
        missing one is fine."""
        ssm = self._client("ssm")
        try:
            ssm.delete_parameter(Name=self.secrets_parameter)
        except ssm.exceptions.ParameterNotFound:
            pass

    def registry_credentials(self, registry: str) -> tuple[str, str] | None:
        """ECR's user and token for an ECR registry, with the instance role (it needs
        ecr:GetAuthorizationToken, and ecr:BatchGetImage and ecr:GetDownloadUrlForLayer on the
        repository: :func:`~prefect_remote.providers.aws.permissions.machine_policy`); None for others."""
        found = ECR_REGISTRY.fullmatch(registry)
        if found is None:
            return None
        answer = self._client("ecr", found.group("region")).get_authorization_token()
        user, _, password = base64.b64decode(answer["authorizationData"][0]["authorizationToken"]).decode().partition(":")
        return user, password

    def ship_log(self, path: str) -> LogShipping:
        """Tails the machine log at ``path`` into CloudWatch Logs stream ``<instance id>`` of
        ``log_group`` (see :mod:`prefect_remote.providers.aws.logship`; the instance profile needs
        logs:CreateLogStream and logs:PutLogEvents on the group, and logs:CreateLogGroup unless it
        exists)."""
        from prefect_remote.providers.aws.logship import LogShipper

        return LogShipper(path, self.log_group, self.machine_id, region=self.region).start()

    def terminate(self, reason: str, exit_code: int | None) -> None:
        """Records why on the instance's tags, then terminates it (the instance profile needs
        ec2:CreateTags and ec2:TerminateInstances on itself)."""
        ec2 = self._client("ec2")
        tags = [{"Key": REASON_TAG, "Value": reason[:256]}]
        if exit_code is not None:
            tags.append({"Key": EXIT_CODE_TAG, "Value": str(exit_code)})
        try:
            ec2.create_tags(Resources=[self.machine_id], Tags=tags)
        except Exception:  # the reason is a courtesy: ending the machine is what matters
            pass
        ec2.terminate_instances(InstanceIds=[self.machine_id])

    def halt(self) -> None:
        """Powers the instance off (``halt_command``, ``shutdown -h now``): it was launched with
        InstanceInitiatedShutdownBehavior=terminate, so it terminates."""
        try:
            subprocess.run(self.halt_command, check=False, timeout=30)
        except Exception:  # must not fail: the agent exits next, which ends the boot script
            pass
