"""The sandbox clouds as the push contract (``push_contract.py``) sees them: per cloud, the
remote:push pool made for it, the project deployed to it, what its runs' logs say about the machine
they ran on, and how the cloud's own API shows that machine ended."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any, ClassVar

from tests.workers.conftest import FLOWS, SCALE_OUT, prefect_yaml, pull_deployments

EXITING = textwrap.dedent(
    """
    import os
    from prefect import flow

    @flow
    def exiting(code: int = 3) -> None:
        print("about to exit", flush=True)  # to the machine's log: the engine has no time to send logs
        os._exit(code)  # the process ends at once: only its exit code says how (sys.exit is reported by the engine, which exits 0)
    """
)


class PushCloud:
    """One cloud's push pool, once its shell and project are set up (see ``push_cloud`` in conftest.py)."""

    name: ClassVar[str]
    pool: ClassVar[str]
    machine: ClassVar[str]  # the deployments' suffix: where their runs go ("ec2", "cloud-run")
    size: ClassVar[dict[str, Any]]  # the job variables of the hello, sleeper and scale-out deployments
    store_scheme: ClassVar[str]
    settings: ClassVar[dict[str, str]]  # the shell's, beyond the sandbox's exports
    files: ClassVar[dict[str, str]] = {"flows.py": FLOWS, "scale_out.py": SCALE_OUT}
    id_prefix: ClassVar[str]  # of its machines' ids (a flow run's infrastructure_pid)

    def __init__(self, sandbox: Any) -> None:
        self.sandbox = sandbox
        self.env: dict[str, str] = {}  # the shell's environment (`prefect-remote push serve` runs in it)
        self.folder = Path()  # the deployed project

    @classmethod
    def deployments(cls) -> dict[str, tuple]:
        """The project's deployments on the pool (prefect.yaml's, by name)."""
        return {
            f"on-{cls.machine}": ("flows.py:hello", cls.size),
            f"sleeping-on-{cls.machine}": ("flows.py:sleeper", cls.size),
            f"scale-out-on-{cls.machine}": ("scale_out.py:my_flow", cls.size),
            **cls.pulls(),
        }

    @classmethod
    def pulls(cls) -> dict[str, tuple]:
        return pull_deployments(f"on-{cls.machine}")

    @classmethod
    def prefect_yaml(cls) -> str:
        return prefect_yaml(f"{cls.name}-project", cls.pool, cls.deployments(), pull=None)  # no pull section: as users leave it

    def said(self, machine_id: str) -> list[str]:
        """Patterns the run's logs match about its machine: its boot, its launch (type, region, market
        and price) and, where the provider chose it, where it runs and why."""
        raise NotImplementedError

    def placement(self, machine_id: str) -> list[str]:
        """What the run's logs say of where the machine runs, when the provider chose it."""
        return []

    def ended(self, machine_id: str) -> bool:
        """Whether the cloud shows the machine ended (its payload finished, or it was cancelled)."""
        raise NotImplementedError

    def cancelled(self, machine_id: str) -> bool:
        """Whether the cloud shows the machine ended by a cancel."""
        return self.ended(machine_id)

    def provider(self) -> Any:
        raise NotImplementedError


class AWSPush(PushCloud):
    name = "aws"
    pool = "test-push-aws"
    machine = "ec2"
    size: ClassVar[dict[str, Any]] = {"cpu": 2}
    store_scheme = "s3://"
    settings: ClassVar[dict[str, str]] = {"PREFECT_REMOTE_AWS_LEASE_INTERVAL": "5"}
    id_prefix = "i-"

    def said(self, machine_id: str) -> list[str]:
        return [
            re.escape("booting machine on aws EC2 t3a.nano in us-east-1"),
            rf"Machine {machine_id} launched on aws: t3a\.nano in us-east-1, on-demand, \$\d+\.\d{{4}}/hour",
        ]

    def ec2(self) -> Any:
        return self.sandbox.client("ec2")

    def ended(self, machine_id: str) -> bool:
        return self.ec2().describe_instances(InstanceIds=[machine_id])["Reservations"][0]["Instances"][0]["State"]["Name"] == "terminated"

    def provider(self) -> Any:
        from prefect_remote.providers.aws.provider import AWSProvider

        return AWSProvider()


class GCPPush(PushCloud):
    name = "gcp"
    pool = "test-push-gcp"
    machine = "cloud-run"
    size: ClassVar[dict[str, Any]] = {"cpu": 1}
    store_scheme = "gs://"
    settings: ClassVar[dict[str, str]] = {"PREFECT_REMOTE_GCP_LEASE_INTERVAL": "5"}
    files: ClassVar[dict[str, str]] = {**PushCloud.files, "exiting.py": EXITING}
    id_prefix = "run-"
    ENDED = (None, "EXECUTION_SUCCEEDED", "EXECUTION_FAILED", "EXECUTION_CANCELLED")

    @classmethod
    def deployments(cls) -> dict[str, tuple]:
        return {
            **super().deployments(),
            "exiting-on-cloud-run": ("exiting.py:exiting", {"cpu": 1}),
            "on-compute": ("flows.py:hello", {"cpu": 2, "gcp_service": "compute"}),
        }

    def said(self, machine_id: str) -> list[str]:
        return [
            re.escape("booting machine on gcp Cloud Run (1 cpu / 2 GiB, us-central1)"),
            rf"Machine {machine_id} launched on gcp: cloud-run-1cpu-2gib in us-central1, on-demand, \$\d+\.\d{{4}}/hour",
            re.escape(f"Machine {machine_id} runs on Cloud Run, because the machine needs no inbound connections"),
        ]

    def placement(self, machine_id: str) -> list[str]:
        return [f"Machine {machine_id} runs on Cloud Run"]

    def job_state(self, machine_id: str) -> str | None:
        """The Cloud Run job's latest execution's state as the sandbox has it: None once the job is gone."""
        from google.api_core.exceptions import NotFound
        from google.cloud import run_v2
        from google.oauth2 import service_account

        sandbox = self.sandbox
        credentials = service_account.Credentials.from_service_account_file(
            str(sandbox.key_file), scopes=["https://www.googleapis.com/auth/cloud-platform"]
        )
        jobs = run_v2.JobsClient(transport="rest", credentials=credentials, client_options={"api_endpoint": sandbox.url})
        try:
            job = jobs.get_job(name=f"projects/{sandbox.project}/locations/{sandbox.region}/jobs/{machine_id}")
        except NotFound:
            return None
        return run_v2.ExecutionReference.CompletionStatus(job.latest_created_execution.completion_status).name

    def ended(self, machine_id: str) -> bool:
        return self.job_state(machine_id) in self.ENDED

    def cancelled(self, machine_id: str) -> bool:
        return self.job_state(machine_id) in (None, "EXECUTION_CANCELLED")  # the job is deleted once its execution is cancelled

    def provider(self) -> Any:
        from prefect_remote.providers.gcp import GCPProvider

        return GCPProvider()


PUSH_CLOUDS: dict[str, type[PushCloud]] = {"aws": AWSPush, "gcp": GCPPush}
