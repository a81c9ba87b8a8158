"""The job configuration shared by the ``remote`` and ``remote:push`` work pools.

Job variables use the machine-spec vocabulary; their types are loose on purpose (``memory: "64 GiB"``
in the UI form), and :meth:`RemoteJobConfiguration.machine_request` validates them all at once
through :class:`~prefect_remote.spec.MachineSpec`, so a bad value fails the run with a message that
says what to fix, before any machine starts.
"""

from __future__ import annotations

import json
import shlex
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from prefect.blocks.core import Block
from prefect.workers.base import BaseJobConfiguration, BaseVariables
from pydantic import BaseModel, Field, PrivateAttr, ValidationError, create_model

from prefect_remote.deployments.steps import PACKAGE_SYNC_STEP
from prefect_remote.errors import RemoteError
from prefect_remote.providers import get_provider, installed_provider_classes, provider_class
from prefect_remote.providers.base import BootPayload, Provider
from prefect_remote.settings import get_settings
from prefect_remote.spec import MachineSpec, SpotPolicy

if TYPE_CHECKING:
    from uuid import UUID

    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.objects import FlowRun, WorkPool
    from prefect.client.schemas.responses import DeploymentResponse

# Settings that belong to the API server, not to a flow run on a machine.
SERVER_ONLY_PREFIXES = ("PREFECT_SERVER_", "PREFECT_API_DATABASE_", "PREFECT_HOME", "PREFECT_PROFILES_PATH", "PREFECT_REMOTE_")


# Pull steps that only choose the folder the flow's code is loaded from: with a software environment,
# that folder is the machine's work folder, where its code bundle is unpacked.
WORKING_DIRECTORY_STEPS = ("prefect.deployments.steps.set_working_directory", "prefect.deployments.steps.pull.set_working_directory")
ENTRYPOINT_ENV = "PREFECT__FLOW_ENTRYPOINT"  # read by prefect.flow_engine.load_flow: load the flow from here, run no pull steps


def _option_fields(declared: Mapping[str, Mapping[str, str]]) -> dict[str, Any]:
    """Pydantic fields for the providers' options named in ``declared`` ({provider: {field: option}}):
    each typed as its option (by the first provider declaring it) and described by each, unset by default."""
    infos: dict[str, Any] = {}
    descriptions: dict[str, list[str]] = {}
    for provider, fields in declared.items():
        options_model = _CLASSES[provider].options_model
        assert options_model is not None or not fields, f"provider {provider!r} declares option fields but has no options_model"
        for field, option in fields.items():
            info = options_model.model_fields[option]  # type: ignore[union-attr]
            infos.setdefault(field, info)
            descriptions.setdefault(field, []).append(f"{provider}: {info.description}")
    return {
        field: (info.annotation | None, Field(default=None, title=info.title, description=" ".join(descriptions[field])))
        for field, info in infos.items()
    }


class _ProviderBlockBase:
    """What :class:`RemoteProviderBlock` is beside its fields, which the providers declare."""

    _block_type_name = "prefect-remote provider"
    _block_type_slug = "prefect-remote-provider"  # as saved blocks have it
    _description = "The provider (local, aws, gcp…) prefect-remote machines come from, with its options."

    provider: str
    options: dict[str, Any]

    def get_provider(self, **overrides: Any) -> Provider:
        """The provider, made with ``options``, the option fields its provider records that are set, and
        ``overrides``; its machines read the store this block records, if any (the pool's, where
        PackageSync and ``--provision-infra`` put environments), else the configured one."""
        recorded = provider_class(self.provider).block_fields
        fields = {name: getattr(self, name) for name in recorded if getattr(self, name, None) is not None}
        provider = get_provider(self.provider, **{**self.options, **fields, **overrides})
        provider.store_url = getattr(self, "store", None) or provider.store_url
        return provider


_CLASSES = installed_provider_classes()  # the providers whose options the block and the job variables offer
# A field per option some provider's setup records (Provider.block_fields): region, instance_profile…
RemoteProviderBlock = create_model(
    "RemoteProviderBlock",
    __base__=(_ProviderBlockBase, Block),
    __module__=__name__,
    __doc__="""Which provider a work pool's machines come from, and its options (region, instance
    profile, project…: the provider's options model says which).

    Created by ``prefect work-pool create --type remote:push --provision-infra``, which records what
    it set up in the fields its provider declares (:attr:`Provider.block_fields`); referenced by the
    ``credentials`` job variable (a name kept for the pools that have it).
    """,
    provider=(str, Field(default="local", description="Provider name: local, aws, gcp, or a plugin's.")),
    options=(dict[str, Any], Field(default_factory=dict, description="Keyword arguments for the provider.")),
    **_option_fields({name: {field: field for field in cls.block_fields} for name, cls in _CLASSES.items()}),
    # Recorded, not a provider option: the provider the block makes reads it (Provider.store_url).
    store=(
        str | None,
        Field(default=None, description="The software environments store provisioned for this pool, e.g. s3://bucket/prefix."),
    ),
)


RENAMED = {"RemoteProviderCredentials": "RemoteProviderBlock"}  # old name -> new: the old one is deprecated


def renamed(name: str, stacklevel: int = 2) -> Any:
    """The object ``name`` (an old name in :data:`RENAMED`) now is, with a DeprecationWarning for the caller."""
    if name not in RENAMED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"{name} is now {RENAMED[name]} (it holds a provider's name and options, no credentials); blocks saved under "
        f"the old name load under the new one",
        DeprecationWarning,
        stacklevel=stacklevel + 1,
    )
    return globals()[RENAMED[name]]


def __getattr__(name: str) -> Any:
    return renamed(name)


# A flow run's machine holds a lease its submitter renews: with the worker or push service gone this long
# (and no other worker to adopt the run), the machine ends instead of running until its timeout, or forever.
FLOW_RUN_KEEPALIVE = "10 minutes"
# What a flow run's machine runs, in the run's environment, when its agent stops the run for a reason of
# its own (timeout, idle_timeout, owner gone): the run becomes Crashed with that reason, whoever watches.
# Nobody else will say why (the worker may be the owner that is gone), so it tries until it is told:
# an API that refuses connections, times out or answers 5xx is tried again (the client's own retries
# give up after a minute, and never retry a first connection), for as long as the agent lets it
# (``ON_STOP_TIMEOUT``); a run the API cannot find, or a request it refuses, is not.
CRASH_SAYING_WHY = """\
import itertools, os, sys, time
import httpx
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound
from prefect.states import Crashed

message = "Machine ended: " + os.environ["PREFECT_REMOTE_END_REASON"]
for attempt in itertools.count(1):
    try:
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(os.environ["PREFECT__FLOW_RUN_ID"], Crashed(message=message), force=True)
    except ObjectNotFound:
        raise
    except Exception as error:
        status = error.response.status_code if isinstance(error, httpx.HTTPStatusError) else None
        if status is not None and status < 500 and status not in (408, 429):
            raise
        print(f"attempt {attempt}: {error!r}; trying again", file=sys.stderr, flush=True)
        time.sleep(min(2.0**attempt, 15.0))
    else:
        if attempt > 1:
            print(f"marked Crashed at attempt {attempt}", file=sys.stderr)
        break
"""


def provider_block_id(base_job_template: Mapping[str, Any]) -> str | None:
    """The id of the provider block a work pool's template names as its ``credentials`` default
    (what ``--provision-infra`` records), or None."""
    default = base_job_template.get("variables", {}).get("properties", {}).get("credentials", {}).get("default")
    return default.get("$ref", {}).get("block_document_id") if isinstance(default, dict) else None


class _MachineJobFields(BaseModel):
    """The machine-spec job variables, declared once for the variables schema and the configuration."""

    provider: str | None = Field(
        default=None,
        title="Provider",
        description="Where the machine comes from: local (this host), aws, gcp. "
        "Default: the credentials block's, else PREFECT_REMOTE_PROVIDER.",
    )
    region: str | None = Field(default=None, title="Region", description="Cloud region, e.g. us-east-2 (recorded on the local provider).")
    vm_type: str | list[str] | None = Field(
        default=None, title="VM type", description="Instance type, or a list in order of preference, e.g. m6i.xlarge."
    )
    cpu: int | list[int] | None = Field(default=None, title="CPU", description="CPUs: a number, or [min, max].")
    memory: int | str | list[int | str] | None = Field(
        default=None, title="Memory", description="Memory, e.g. '16 GiB', or ['8 GiB', '32 GiB']."
    )
    gpu: bool | int | str | None = Field(default=None, title="GPU", description="GPUs: true, a count, or a type such as 't4'.")
    arm: bool | None = Field(default=None, title="ARM", description="Use ARM (aarch64) machines.")
    disk_size: int | str | None = Field(default=None, title="Disk size", description="GiB as a number, or e.g. '200 GB'.")
    spot_policy: SpotPolicy | None = Field(default=None, title="Spot policy", description="on-demand, spot, or spot_with_fallback.")
    idle_timeout: int | str | None = Field(
        default=None, title="Idle timeout", description="End the machine once the flow run is idle this long, e.g. '30 minutes'."
    )
    timeout: int | str | None = Field(
        default=None, title="Timeout", description="Maximum run time, e.g. '2 hours': past it the machine ends and the run crashes."
    )
    keepalive: int | str | None = Field(
        default=FLOW_RUN_KEEPALIVE,
        title="Keepalive",
        description="The submitting worker (or push service) renews the machine's lease while it follows the run; "
        "gone this long, the machine ends and the run crashes, saying why.",
    )
    tags: dict[str, str] = Field(default_factory=dict, title="Tags", description="Tags on the machine, to find it and account for it.")
    allow_ingress_from: str | None = Field(
        default=None,
        title="Allow ingress from",
        description="Who may connect to the machine's Dask ports: 'me', 'everyone' or a CIDR. Default: nobody from outside "
        "its network (a flow run's machine serves nothing; a cluster it starts has its own scheduler machine).",
    )
    software: str | None = Field(
        default=None,
        title="Software environment",
        description="senv-… from the build_package_sync_senv deploy step: '{{ senv.name }}'. "
        "A PackageSync deployment's pull step names its own, unless the deployment or the run sets this.",
    )
    image: str | None = Field(
        default=None,
        title="Image",
        description="A container image the flow run runs in, e.g. 'registry.example.com/team/app:1' "
        "(what flow.deploy(image=...) sets): pulled by the machine's Podman or Docker, or Cloud Run's own.",
    )
    container: str | None = Field(default=None, title="Container image (older name)", description="The older name of image; give only one.")
    credentials: RemoteProviderBlock | None = Field(
        default=None, title="Provider credentials", description="Block naming the provider and its options."
    )


# Job variables that set a provider's option (Provider.job_variables): {variable: (provider, option)}.
PROVIDER_JOB_VARIABLES = {variable: (name, option) for name, cls in _CLASSES.items() for variable, option in cls.job_variables.items()}
MachineJobFields = create_model(
    "MachineJobFields",
    __base__=_MachineJobFields,
    __module__=__name__,
    __doc__=_MachineJobFields.__doc__,
    **_option_fields({name: cls.job_variables for name, cls in _CLASSES.items()}),
)
SPEC_FIELDS = tuple(name for name in _MachineJobFields.model_fields if name not in ("provider", "credentials"))


class RemoteJobVariables(BaseVariables, MachineJobFields):
    """Job variables of the remote and remote:push work pools: one flow run, one fresh machine, sized by these."""


class RemoteJobConfiguration(BaseJobConfiguration, MachineJobFields):
    """A flow run's machine, resolved from the pool's template and the deployment's job variables."""

    # Where the run's flow code comes from, for the run's logs (see flow_code).
    _flow_code: str | None = PrivateAttr(default=None)

    def prepare_for_flow_run(self, flow_run, deployment=None, flow=None, work_pool=None, worker_name=None, worker_id=None) -> None:
        command_given = self.command is not None
        chosen = set(self.env)  # what the deployment's job variables set on purpose
        super().prepare_for_flow_run(flow_run, deployment, flow, work_pool, worker_name, worker_id=worker_id)
        if not command_given:  # the engine itself, as Prefect's process worker runs it: no CLI start-up
            self.command = "python -m prefect.engine"
        # A machine gets the client settings of this process, minus the server's own (database URL…).
        self.env = {k: v for k, v in self.env.items() if k in chosen or not k.startswith(SERVER_ONLY_PREFIXES)}
        # A PackageSync deployment's pull step names its environment: over the pool's default, not over
        # a software job variable the deployment or the run sets.
        synced = synced_software(deployment) if deployment is not None else None
        if synced and "software" not in {**(deployment.job_variables or {}), **(flow_run.job_variables or {})}:
            self.software = synced
        if deployment is not None and ENTRYPOINT_ENV not in chosen:
            entrypoint, self._flow_code = flow_code(deployment, self.software)
            if entrypoint:
                self.env[ENTRYPOINT_ENV] = entrypoint

    @property
    def flow_code_note(self) -> str | None:
        """Where this run's flow code comes from, when the deployment's pull steps do not say it all."""
        return self._flow_code

    @classmethod
    async def resolve_for_flow_run(
        cls,
        flow_run: FlowRun,
        *,
        client: PrefectClient,
        work_pool: WorkPool,
        worker_name: str,
        worker_id: UUID | None = None,
        deployment: DeploymentResponse | None = None,
    ) -> RemoteJobConfiguration:
        """Prefect's configuration of ``flow_run``, refused (:class:`JobVariablesError`) when its
        deployment's or its own job variables take it off the work pool's providers
        (:meth:`check_pool_allows`). Every path to a run's provider comes through here: submitting,
        adopting, cancelling."""
        if deployment is None and flow_run.deployment_id:
            deployment = await client.read_deployment(flow_run.deployment_id)
        configuration = await super().resolve_for_flow_run(
            flow_run, client=client, work_pool=work_pool, worker_name=worker_name, worker_id=worker_id, deployment=deployment
        )
        pool = await cls.from_template_and_values(base_job_template=work_pool.base_job_template, values={}, client=client)
        chosen = {**(getattr(deployment, "job_variables", None) or {}), **(flow_run.job_variables or {})}
        configuration.check_pool_allows(pool, work_pool.name, work_pool.base_job_template, chosen)
        return configuration

    def check_pool_allows(
        self, pool: RemoteJobConfiguration, pool_name: str, template: Mapping[str, Any], chosen: Mapping[str, Any]
    ) -> None:
        """Raises :class:`JobVariablesError` unless this run's provider is one its work pool allows:
        the ``enum`` of the pool template's ``provider`` variable, else the provider the template alone
        gives (``pool``: its ``provider`` default, its ``credentials`` block, else the submitter's
        PREFECT_REMOTE_PROVIDER). A deployment must not move a cloud pool's runs onto ``local``,
        which is the submitter's own host (the Prefect server's, for the push service), nor swap the
        pool's ``credentials`` block (``chosen``: the job variables the deployment and the run set)."""
        properties = template.get("variables", {}).get("properties", {})
        allowed = list(properties.get("provider", {}).get("enum") or [pool.provider_name()])
        name = self.provider_name()
        set_by = [f"{variable}={chosen[variable]!r}" for variable in ("provider", "credentials") if variable in chosen]
        if name not in allowed:
            raise JobVariablesError(
                f"job variable {' and '.join(set_by) or 'provider'}: this run would use the {name} provider; work pool {pool_name!r} "
                f"allows only {', '.join(allowed)} (its template decides; a deployment cannot change it)"
            )
        if "credentials" in chosen and chosen["credentials"] != properties.get("credentials", {}).get("default"):
            raise JobVariablesError(
                f"job variable credentials={chosen['credentials']!r}: work pool {pool_name!r} takes its provider block from its "
                "template; a deployment cannot swap it"
            )

    def provider_name(self) -> str:
        """The provider this run's machine comes from: the ``credentials`` block's, unless ``provider``
        names another; else PREFECT_REMOTE_PROVIDER."""
        if self.credentials is not None and self.provider in (None, "", self.credentials.provider):
            return self.credentials.provider
        return self.provider or get_settings().provider

    def provider_instance(self, shared: dict[str, Provider] | None = None) -> Provider:
        """This run's provider. With ``shared`` (a worker's), runs whose provider, options and block
        are the same share one instance, so that one lease renewal covers all their machines."""
        from_block = self.credentials is not None and self.provider in (None, "", self.credentials.provider)
        name = self.provider_name()
        options = {}
        for variable, (owner, option) in PROVIDER_JOB_VARIABLES.items():
            value = getattr(self, variable, None)
            if value is not None and owner != name:
                raise JobVariablesError(f"{variable}={value!r} is a job variable of the {owner} provider; this flow run's is {name}")
            if value is not None:
                options[option] = value
        block = self.credentials.model_dump(mode="json") if from_block and self.credentials else None
        key = json.dumps([name, options, block], sort_keys=True, default=str)
        if shared is not None and key in shared:
            return shared[key]
        provider = self.credentials.get_provider(**options) if from_block and self.credentials else get_provider(name, **options)
        if shared is not None:
            shared[key] = provider
        return provider

    def machine_spec(self) -> MachineSpec:
        values = {key: getattr(self, key) for key in SPEC_FIELDS}
        values["allow_ingress_from"] = self.allow_ingress_from or "none"  # the firewall opens ports on cluster schedulers only
        return MachineSpec.model_validate({k: v for k, v in values.items() if v is not None and v != {}})

    def machine_request(self, shared: dict[str, Provider] | None = None) -> tuple[Provider, MachineSpec, BootPayload]:
        """The provider (from ``shared``, see :meth:`provider_instance`), spec and payload for this
        flow run; raises :class:`JobVariablesError` naming every bad job variable."""
        problems = []
        try:
            spec = self.machine_spec()
        except ValidationError as error:
            problems += [
                f"{'.'.join(map(str, e['loc'])) or 'job variables'}: {e['msg'].removeprefix('Value error, ')}" for e in error.errors()
            ]
            spec = None
        try:
            provider = self.provider_instance(shared)
        except (RemoteError, TypeError) as error:  # TypeError: options the provider does not take
            problems.append(f"provider: {error}")
            provider = None
        try:
            command = shlex.split(self.command or "python -m prefect.engine")
        except ValueError as error:
            problems.append(f"command={self.command!r}: {error}")
        if spec is not None and provider is not None:
            try:
                provider.check_spec(spec)  # what the provider can never do (GPUs, lifetime, lease timing)
            except ValueError as error:
                problems.append(str(error))
        if problems:
            raise JobVariablesError("invalid job variables:\n  - " + "\n  - ".join(problems))
        assert spec is not None and provider is not None
        env = {k: v for k, v in self.env.items() if v is not None}
        if "PREFECT_API_URL" in env:
            try:
                env["PREFECT_API_URL"] = provider.reachable_url(env["PREFECT_API_URL"])
            except RemoteError as error:
                raise JobVariablesError(f"PREFECT_API_URL: {error}") from None
        # The whole environment goes through the provider's secret channel: it holds API keys, custom
        # headers and whatever tokens a deployment sets, and a cloud VM's boot script is readable user-data.
        on_stop = ["python", "-c", CRASH_SAYING_WHY] if "PREFECT__FLOW_RUN_ID" in env else None
        return provider, spec, BootPayload(command=command, secrets=env, on_stop=on_stop)


def synced_software(deployment: DeploymentResponse) -> str | None:
    """The software environment a :class:`~prefect_remote.PackageSync` deployment's pull step names
    (``prefect_remote.deployments.steps.package_sync: {software: senv-…}``), or None."""
    for step in deployment.pull_steps or []:
        inputs = step.get(PACKAGE_SYNC_STEP)
        if isinstance(inputs, dict) and inputs.get("software"):
            return str(inputs["software"])
    return None


def flow_code(deployment: DeploymentResponse, software: str | None) -> tuple[str | None, str | None]:
    """The entrypoint a run of ``deployment`` on ``software`` loads straight from the machine's work
    folder (where the agent unpacks the software environment's code bundle), or None to let the
    engine run the deployment's pull steps; and a line for the run's logs saying which.

    A software environment's code is the project folder ``prefect deploy`` ran in (or PackageSync's
    folder), so the entrypoint, relative to that folder, is found in the work folder. A
    ``set_working_directory`` pull step names a folder of the deploying machine (Prefect's default:
    the project's absolute path there), which the machine does not have: it is not run; nor is
    PackageSync's ``package_sync`` step, which only names the environment (a ``software`` job
    variable wins over it). Other pull steps (``git_clone``, ``pip_install_requirements``…) or a
    storage block fetch code of their own: they run as written.
    """
    if not software or not deployment.entrypoint:
        return None, None  # the code is where the pull steps put it (the local provider's laptop folder, an image)
    steps = [(name, inputs or {}) for step in deployment.pull_steps or [] for name, inputs in step.items()]
    if not steps and deployment.storage_document_id is not None:  # (the engine reads a storage block only without pull steps)
        return None, f"Flow code: from the deployment's storage block, not from software environment {software}"
    others = [name.rsplit(".", 1)[-1] for name, _ in steps if name not in (*WORKING_DIRECTORY_STEPS, PACKAGE_SYNC_STEP)]
    if others:
        return None, (
            f"Flow code: the deployment's pull steps ({', '.join(others)}) run as written on the machine, "
            f"so they, not the code in software environment {software}, decide which code the flow loads"
        )
    directories = [inputs.get("directory") for name, inputs in steps if name in WORKING_DIRECTORY_STEPS]
    skipped = "".join(f"; pull step set_working_directory({directory!r}) not run" for directory in directories)
    synced = [inputs.get("software") for name, inputs in steps if name == PACKAGE_SYNC_STEP]
    skipped += "".join(f"; job variable software wins over the pull step's {other}" for other in synced if other != software)
    note = f"Flow code: {deployment.entrypoint} from software environment {software}, in the machine's work folder"
    return deployment.entrypoint, note + skipped


class JobVariablesError(RemoteError, ValueError):
    """The flow run's job variables do not describe a machine the provider can start."""
