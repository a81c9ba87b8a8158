"""A sandbox GCP on this computer: one loopback endpoint serving the Google APIs prefect-remote calls
(Cloud Run v2, Compute Engine v1, Secret Manager v1, Cloud Logging v2, Cloud Quotas v1 for Cloud
Run's quotas, OAuth tokens and per-machine metadata servers, see :mod:`prefect_remote.sandbox.gcp.api`),
gcp-storage-emulator for GCS, and an instance runner that runs every Cloud Run task and Compute
Engine instance as a local machine.

Code under test talks to it exactly as to Google Cloud: the google-cloud-* clients get the
endpoint through their documented ``client_options={"api_endpoint": …}``
(``PREFECT_REMOTE_GCP_API_ENDPOINT``), google-cloud-storage through ``STORAGE_EMULATOR_HOST``, and
credentials through ``GOOGLE_APPLICATION_CREDENTIALS``: a service-account key whose token URI is
the sandbox. Machines find theirs through their metadata server, as on Google Cloud.

The project is ready to use: the store's bucket, a service account for machines
(``prefect-remote@<project>.iam.gserviceaccount.com``) and one for the launcher (whose key the
exports name). The test suite starts one per session; ``prefect-remote sandbox gcp`` starts the
same thing for a shell.

``enforce_iam`` (on by default) makes it strict about IAM (:mod:`prefect_remote.sandbox.gcp.enforcement`):
every call is checked against the project's IAM policies, the launcher holds exactly the roles the
docs list, machines act as their launch's service account, and grants take effect ``iam_delay``
seconds after they are made (Google: typically 2 minutes, up to 7 or more).

>>> with SandboxGCP() as gcp:                                         # doctest: +SKIP
...     os.environ.update(gcp.exports())
...     prefect_remote.function(cpu=2)(lambda x: x + 1)(1)              # a Compute Engine VM of the sandbox
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefect_remote.sandbox.gcp import storage_rules
from prefect_remote.sandbox.gcp.api import GoogleAPI
from prefect_remote.sandbox.gcp.common import Project, default_compute_account
from prefect_remote.sandbox.gcp.compute import ComputeFake
from prefect_remote.sandbox.gcp.enforcement import IAMEnforcement
from prefect_remote.sandbox.gcp.iam import IAMFake
from prefect_remote.sandbox.gcp.logs import LoggingFake
from prefect_remote.sandbox.gcp.metadata import MetadataServer
from prefect_remote.sandbox.gcp.quotas import CloudQuotasFake
from prefect_remote.sandbox.gcp.run import CloudRunFake
from prefect_remote.sandbox.gcp.secrets import SecretManagerFake
from prefect_remote.sandbox.gcp.storage_gate import StorageGate
from prefect_remote.sandbox.instances import Instance, InstanceRunner, SandboxCloud
from prefect_remote.sandbox.vpc import VPC, Ingress

logger = logging.getLogger(__name__)

STORE_BUCKET = "prefect-remote-sandbox"
IAM_DELAY = 3.0  # seconds until an IAM policy change takes effect, when IAM is enforced


class SandboxGCP(SandboxCloud):
    """The sandbox's fakes on one endpoint (``api``), GCS in a thread, and one instance runner for
    Cloud Run tasks (instance ids ``run:…``) and Compute Engine instances (``gce:…``).

    ``port=0`` takes a free port. ``home`` holds the machines' folders and the launcher's key
    (default: a temporary folder); ``isolation`` is the machines' (``namespace`` where this host
    offers network namespaces). ``expose`` lists ports of services on this host's loopback (a
    Prefect server) that machines reach at ``http://<sandbox_host>:PORT``. Each instance boots from
    a stock image in a root of its own (:mod:`prefect_remote.providers.local.own_root`); ``warm_cache``
    gives them a warm uv cache and shared agent environments instead (:meth:`warm`).
    ``private_network`` (on by default, with namespace isolation) puts each VM's ``networkIP`` (and a
    Cloud Run task's, with Direct VPC egress) on a VPC this host cannot reach, and enforces the
    firewall's allow rules (:mod:`prefect_remote.sandbox.vpc`; ``vpc.enforcing(False)`` for one test).
    ``run_instances=False`` keeps every instance and task a record that is never booted (the API's
    answers unchanged): what a control-plane benchmark measures is the provider's traffic, not the machines'.
    """

    def __init__(
        self,
        project: str = "sandbox-project",
        region: str = "us-central1",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        home: str | Path | None = None,
        isolation: str | None = None,
        expose: tuple[int, ...] = (),
        enforce_iam: bool = True,
        iam_delay: float = IAM_DELAY,
        warm_cache: bool = False,
        private_network: bool = True,
        run_instances: bool = True,
    ) -> None:
        self.run_instances = run_instances
        self.project, self.region, self.host, self.port = project, region, host, port
        self.warm_cache = warm_cache
        self._images: dict[str, bool] = {}
        self.private_network = private_network
        self.vpc = VPC()  # the machines' internal addresses and the firewall's rules (its knobs)
        self.project_number = Project.named(project).number
        self.zones = [f"{region}-{zone}" for zone in "abc"]
        self.isolation = isolation
        self.expose = list(expose)
        self.machine_account = f"prefect-remote@{project}.iam.gserviceaccount.com"
        self.launcher_account = f"prefect-remote-launcher@{project}.iam.gserviceaccount.com"
        # The accounts that exist: a launch naming another is refused, as Google refuses it.
        self.service_accounts = {
            self.machine_account,
            self.launcher_account,
            default_compute_account(self.project_number),
        }
        self.api = GoogleAPI()
        project_ref = Project(project, self.project_number)
        self.metadata = MetadataServer(self.api, project=project, project_number=self.project_number)
        self.secrets = SecretManagerFake(self.api, project_ref)
        self.logging = LoggingFake(self.api, project_ref)
        self.quotas = CloudQuotasFake(self.api, project_ref)  # Cloud Run's regional quotas (Cloud Quotas API)
        self.run = CloudRunFake(self)
        self.compute = ComputeFake(self)
        self.iam = IAMFake(self)  # service accounts, custom roles, the project's IAM policy
        self.enforcement = IAMEnforcement(self, delay=iam_delay) if enforce_iam else None
        self._home_arg = home
        self._scratch: tempfile.TemporaryDirectory | None = None
        self._home: Path | None = None
        self._storage: Any = None
        self._storage_url = ""
        self._runner: InstanceRunner | None = None

    def _iam_gate(self) -> Any:
        return self.enforcement

    # -- endpoints -----------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The Google APIs' endpoint on this host, e.g. ``http://127.0.0.1:41234``."""
        if not self.api.url:
            raise RuntimeError("the GCP sandbox is not started; call start() first")
        return self.api.url

    @property
    def storage_url(self) -> str:
        """gcp-storage-emulator's endpoint on this host (``STORAGE_EMULATOR_HOST``)."""
        if not self._storage_url:
            raise RuntimeError("the GCP sandbox is not started; call start() first")
        return self._storage_url

    @property
    def store(self) -> str:
        return f"gs://{STORE_BUCKET}/store"

    @property
    def runner(self) -> InstanceRunner:
        if self._runner is None:
            raise RuntimeError("the GCP sandbox is not started; call start() first")
        return self._runner

    @property
    def calls(self) -> collections.Counter[str]:
        """Requests answered per API method (``run.jobs.create``…; GCS's by HTTP method:
        ``storage.GET``, ``storage.POST.batch``…)."""
        return self.api.calls

    @property
    def key_file(self) -> Path:
        """The launcher's service-account key (``GOOGLE_APPLICATION_CREDENTIALS``)."""
        assert self._home is not None, "the GCP sandbox is not started"
        return self._home / "launcher-key.json"

    # -- life ----------------------------------------------------------------------------------------------
    def start(self) -> str:
        """Serves the APIs and GCS, writes the launcher's key, starts the instance runner; returns
        the APIs' endpoint."""
        if self._runner is not None:
            return self.url
        try:
            from gcp_storage_emulator.server import create_server
        except ImportError:
            raise RuntimeError("the GCP sandbox needs gcp-storage-emulator: pip install 'prefect-remote[sandbox]'") from None
        if self._home_arg is None:
            self._scratch = tempfile.TemporaryDirectory(prefix="prefect-remote-sandbox-gcp-")
        self._home = Path(self._home_arg or self._scratch.name)  # type: ignore[union-attr]
        self._home.mkdir(parents=True, exist_ok=True)
        try:
            self.api.serve(self.host, self.port)
            # A line per request otherwise, and a warning per response it writes as a string
            # ("[RESPONSE] Content handled as string…", every batch and JSON answer): its errors only.
            logging.getLogger("gcp_storage_emulator").setLevel(logging.ERROR)
            storage_rules.install()  # customTime never lowered, as on Cloud Storage
            self._storage = create_server(self.host, 0, in_memory=True, default_bucket=STORE_BUCKET, project_number=self.project_number)
            self._storage.start()
            httpd = self._storage._api._httpd
            httpd.RequestHandlerClass = _counting_storage_handler(self._storage._storage, self.api.calls)
            self._storage_url = f"http://{self.host}:{httpd.server_address[1]}"
            if self.enforcement is not None:  # callers reach the emulator through an authorizing proxy only
                self.enforcement.storage = StorageGate(self.enforcement, self._storage_url, self._storage._storage, self.api.calls)
                self._storage_url = self.enforcement.storage.serve(self.host)
                self.enforcement.grant_identities(STORE_BUCKET)
            key = self.api.service_account_key(self.launcher_account, self.project)
            self.key_file.touch(mode=0o600)
            self.key_file.write_text(json.dumps(key))
            self._runner = InstanceRunner(
                self._home / "home",
                instances=self._instances,
                terminate=self._terminate,
                image_env=self._instance_env,
                booted=self._booted,
                isolation=self.isolation,
                vpc=self.vpc if self.private_network else None,
                ingress=self._ingress,
                boots=self.run_instances,
            )
            if self._runner.vpc is not None:
                self._runner.vpc.create()
            self._root = self._home / "root"
            self._runner.start()
        except BaseException:
            self.stop()
            raise
        self._start_forwards()
        return self.url

    def stop(self) -> None:
        """Ends every machine, then stops serving; everything it held is gone."""
        self._stop_forwards()
        self._close_black_hole()
        if self._runner is not None:
            self.run.end_all("sandbox stopped")
            self._runner.stop()  # ends every machine still running, and waits for them
            if self._runner.vpc is not None:
                self._runner.vpc.remove()
            self._runner = None
        self.api.close()
        if self.enforcement is not None and self.enforcement.storage is not None:
            self.enforcement.storage.close()
        if self._storage is not None:
            self._storage.stop()
            self._storage, self._storage_url = None, ""
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None

    def end_all_instances(self, timeout: float = 30.0) -> list[str]:
        """Cancels every Cloud Run task and ends every Compute Engine instance still running (a
        test's clean-up, a user's reset), and waits until their machines have ended; returns their
        instance ids."""
        ended = self.run.end_all()
        for instance in list(self.compute.instances()):
            if not instance.ended:
                self.compute.terminate(instance.id, "terminated by the sandbox", None)
                ended.append(instance.id)
        if self._runner is not None:
            self._runner.wait_idle(timeout)
        return ended

    def advance_lifecycle(self, days: float, bucket: str | None = None) -> list[str]:
        """Makes ``days`` pass for every Cloud Storage object (of ``bucket`` only: other tests'
        objects keep their age), then applies the buckets' lifecycle
        rules as Google's daily pass does (:func:`~prefect_remote.sandbox.gcp.storage_rules.advance_lifecycle`);
        returns the ``bucket/object`` names deleted."""
        if self._storage is None:
            raise RuntimeError("the GCP sandbox is not started; call start() first")
        return storage_rules.advance_lifecycle(self._storage._storage, days, bucket=bucket, say=logger.info)

    # -- what a shell, a test or a machine needs ------------------------------------------------------------
    def environ(self) -> dict[str, str]:
        """The variables that point Google's clients at this sandbox (the APIs' endpoint itself goes
        in ``client_options``: ``PREFECT_REMOTE_GCP_API_ENDPOINT``)."""
        return {
            "GOOGLE_APPLICATION_CREDENTIALS": str(self.key_file),
            "GOOGLE_CLOUD_PROJECT": self.project,
            self._storage_variable: self.storage_url,
        }

    def exports(self) -> dict[str, str]:
        """Everything a shell needs to use the sandbox by default: credentials, the gcp provider in
        this project and region, with the machines' service account, the store in its bucket,
        ``PREFECT_REMOTE_SANDBOX_HOST``, and its images' registry and engine (:meth:`use_images`)."""
        return {
            **self.environ(),
            "PREFECT_REMOTE_PROVIDER": "gcp",
            "PREFECT_REMOTE_GCP_PROJECT": self.project,
            "PREFECT_REMOTE_GCP_REGION": self.region,
            "PREFECT_REMOTE_GCP_API_ENDPOINT": self.url,
            "PREFECT_REMOTE_GCP_SERVICE_ACCOUNT": self.machine_account,
            "PREFECT_REMOTE_STORE": self.store,
            "PREFECT_REMOTE_GCP_PUBLIC_IP": self.sandbox_host,  # "me", as the machines see this host
            "PREFECT_REMOTE_SANDBOX_HOST": self.sandbox_host,
            **self._images_exports(),
        }

    def image_env(self, key: str) -> dict[str, str]:
        """What every sandbox image sets on the machine whose metadata server is ``key`` (a Cloud
        Run task, a Compute Engine instance): the endpoints as it reaches them, the project, its
        metadata server, a warm image's shared folders (:attr:`warm_cache`) and its engine's configuration."""
        api = self.runner.reachable_url(self.url)
        return {
            "PREFECT_REMOTE_GCP_API_ENDPOINT": api,
            self._storage_variable: self.runner.reachable_url(self.storage_url),
            "GOOGLE_CLOUD_PROJECT": self.project,
            **self._image_cache_env(key),
            **self._engine_env(key),
            **self.metadata.env(key, api),
        }

    @property
    def _storage_variable(self) -> str:
        """How google-cloud-storage finds this sandbox's Cloud Storage: ``STORAGE_EMULATOR_HOST``
        makes it send no credentials, so the strict sandbox names its gate by ``API_ENDPOINT_OVERRIDE``."""
        return "API_ENDPOINT_OVERRIDE" if self.enforcement is not None else "STORAGE_EMULATOR_HOST"

    # -- the instance runner's view: both services' instances, dispatched on their id's prefix -------------------
    def _fake(self, instance_id: str) -> Any:
        if instance_id.startswith("run:"):
            return self.run
        if instance_id.startswith("gce:"):
            return self.compute
        raise KeyError(f"sandbox GCP: no service runs instance {instance_id!r}")

    def _instances(self) -> Iterator[Instance]:
        return itertools.chain(self.run.instances(), self.compute.instances())

    def _terminate(self, instance_id: str, reason: str, exit_code: int | None) -> None:
        self._fake(instance_id).terminate(instance_id, reason, exit_code)

    def _instance_env(self, instance: Instance) -> dict[str, str]:
        return self._fake(instance.id).image_env(instance)

    def _booted(self, instance: Instance, machine: Any) -> None:
        self._fake(instance.id).booted(instance, machine)

    def _ingress(self, instance: Instance) -> list[Ingress]:
        """What the firewall admits to a VM; nothing to a Cloud Run task (it takes no inbound connections)."""
        return self.compute.ingress(instance) if instance.id.startswith("gce:") else []

    def _forwarded(self) -> list[str]:
        return [self.url, self.storage_url]


def _counting_storage_handler(storage: Any, calls: collections.Counter[str]) -> Any:
    """gcp-storage-emulator's request handler, counting requests into ``calls`` as the APIs' are."""
    from functools import partial

    from gcp_storage_emulator.server import RequestHandler

    class Counting(RequestHandler):
        def parse_request(self) -> bool:
            parsed = super().parse_request()
            if parsed:
                calls[f"storage.{self.command}" + (".batch" if "/batch" in self.path else "")] += 1
            return parsed

    return partial(Counting, storage)
