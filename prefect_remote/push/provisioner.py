"""``prefect work-pool create --type remote:push --provision-infra NAME``: set up what the provider
needs and write those defaults into the pool's template. Provisioning twice is harmless.

The provider is the pool's existing provider block's, else ``PREFECT_REMOTE_PROVIDER``. The provider
sets itself up (:meth:`Provider.provision_infra`: on aws and gcp, the account or project, see
``providers/<name>/infra.py``) and what it made is recorded in the block; ``prefect-remote aws|gcp
teardown`` removes it."""

from __future__ import annotations

from contextlib import nullcontext
from copy import deepcopy
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
from rich.console import Console

from prefect_remote.errors import RemoteError
from prefect_remote.providers import get_provider
from prefect_remote.settings import get_settings
from prefect_remote.workers.config import RemoteProviderBlock

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient


class ProvisioningFailed(RemoteError, RuntimeError):
    """Provisioning could not finish; the message says why and what to do. (A RuntimeError, which
    ``prefect work-pool create`` reports as "Failed to provision infrastructure: …".)"""


class RemotePushProvisioner:
    """Creates the home folder, has the provider set up what its machines need
    (:meth:`~prefect_remote.providers.base.Provider.provision_infra`: the local store's folder; on a
    cloud, its bucket, logs, network rules and the machines' identity) and records it in a provider
    credentials block the pool refers to."""

    def __init__(self) -> None:
        self._console = Console()

    @property
    def console(self) -> Console:
        return self._console

    @console.setter
    def console(self, value: Console) -> None:
        self._console = value

    async def provision(
        self, work_pool_name: str, base_job_template: dict[str, Any], client: PrefectClient | None = None
    ) -> dict[str, Any]:
        """Provisions what the pool's provider needs and returns ``base_job_template`` with the
        block (and the region it records, if any) as the pool's defaults. Raises :class:`ProvisioningFailed`."""
        try:
            return await self._provision(work_pool_name, base_job_template, client)
        except (RemoteError, ValueError) as error:  # ValueError: options the provider refuses, say
            raise ProvisioningFailed(str(error)) from None

    async def _provision(self, work_pool_name: str, base_job_template: dict[str, Any], client: PrefectClient | None) -> dict[str, Any]:
        from prefect.client.orchestration import get_client
        from prefect.exceptions import ObjectNotFound

        settings = get_settings()
        settings.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.console.print(f"prefect-remote home: [blue]{settings.home}[/]")
        block_name = f"{work_pool_name}-provider"
        async with get_client() if client is None else nullcontext(client) as api:  # a borrowed client stays open
            await RemoteProviderBlock.aregister_type_and_schema(client=api)
            try:
                document = await api.read_block_document_by_name(block_name, RemoteProviderBlock.get_block_type_slug())
                block_id, found = document.id, RemoteProviderBlock.model_validate(document.data)
                self.console.print(f"reusing provider block [blue]{block_name!r}[/] ({found.provider})")  # the block decides
            except ObjectNotFound:
                block_id, found = None, RemoteProviderBlock(provider=get_provider(settings.provider).name)
            provider = found.get_provider()
            say = partial(self.console.print, markup=False, highlight=False)
            store = settings.store or found.store
            fields = await anyio.to_thread.run_sync(partial(provider.provision_infra, work_pool_name, store, say))
            credentials = found.model_copy(update=fields) if fields else found
            if credentials.store and settings.store != credentials.store:
                self.console.print(
                    f"set [blue]PREFECT_REMOTE_STORE={credentials.store}[/] where you deploy with prefect.yaml "
                    "(PackageSync and this pool's workers find it in the pool's provider block)"
                )
            if block_id is None:
                block_id = await credentials.asave(block_name, client=api)
                self.console.print(f"created provider block [blue]{block_name!r}[/] (provider {provider.name})")
            elif credentials.model_dump() != found.model_dump():
                await credentials.asave(block_name, overwrite=True, client=api)
                self.console.print(f"recorded the setup in provider block [blue]{block_name!r}[/]")
        template = deepcopy(base_job_template)
        properties = template["variables"]["properties"]
        properties["credentials"]["default"] = {"$ref": {"block_document_id": str(block_id)}}
        properties["provider"]["default"] = provider.name
        region = getattr(credentials, "region", None)  # a field where a provider's setup records one
        if region:
            properties["region"]["default"] = region
        isolation = getattr(provider, "isolation", None)
        self.console.print(
            f"work pool [blue]{work_pool_name!r}[/] runs flow runs on [bold]{provider.name}[/] machines"
            + (f" ({isolation} isolation)" if isolation else "")
            + (f" in {region}" if region else "")
        )
        return template


def register_provisioner() -> None:
    """Adds the remote:push provisioner to Prefect's registry, a lazily loaded dict with no public way
    in (private API: pinned by the prefect version range and tested)."""
    from prefect.infrastructure import provisioners

    registry = provisioners._provisioners_lazy
    loader = registry._loader
    registry._loader = lambda: {**loader(), "remote:push": RemotePushProvisioner}
    if registry._cache is not None:
        registry._cache["remote:push"] = RemotePushProvisioner
