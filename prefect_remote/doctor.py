"""``prefect-remote doctor``: will the first run on a cloud work? Each check of the account (its
credentials, permissions, APIs, quotas, network, the store's bucket, the pool's provider block) is
one :class:`Finding`, ok or FAILED, and a failure says what to fix.

The checks every provider shares are here: the work pool and its provider block, and the largest
machine the pool asks for (:class:`~prefect_remote.providers.doctor.Needs`, which the quota checks
compare with). Each cloud's own checks live in its provider package, in the module its
:attr:`~prefect_remote.providers.base.Provider.doctor` names, whose ``checks(provider, needs)``
returns findings; a provider with none needs nothing beyond this computer.

>>> [finding.ok for finding in diagnose("local")]                    # doctest: +SKIP
[True]
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import import_module
from typing import TYPE_CHECKING, Any

from prefect_remote.errors import RemoteError
from prefect_remote.providers.doctor import Finding, Needs, largest

if TYPE_CHECKING:
    from prefect_remote.providers.base import Provider
    from prefect_remote.workers.config import RemoteProviderCredentials

DEFAULT_CPU = 4  # the machine checked for when no pool is named
POOL_TYPES = ("remote", "remote:push")


def diagnose(cloud: str, pool: str | None = None) -> list[Finding]:
    """Every check of ``cloud`` (a provider name), for work pool ``pool`` if given (its provider
    block, its largest machine), else for a :data:`DEFAULT_CPU`-CPU machine with the provider's
    settings."""
    from prefect_remote.providers import provider_class
    from prefect_remote.settings import get_settings

    findings: list[Finding] = []
    try:
        cls = provider_class(cloud)
    except RemoteError as error:
        return [Finding("provider", False, f"no provider {cloud!r}", str(error))]
    block = None
    specs: list[Any] = []
    if pool is not None:
        pool_findings, block, specs = _read_pool(pool, cls.name)
        findings += pool_findings
        if not all(f.ok for f in pool_findings):
            return findings
    try:
        provider = block.get_provider() if block is not None else cls()
    except Exception as error:
        return [*findings, Finding("provider", False, f"the {cls.name} provider cannot start", str(error))]
    if provider.doctor is None and provider.shares_host_software:  # machines on this computer (local)
        return [*findings, Finding("provider", True, f"the {provider.name} provider needs no cloud account")]
    if provider.doctor is None:  # a cloud whose checks are not written: never a pass
        return [*findings, Finding("provider", False, f"doctor has no checks for {provider.name} yet", "")]
    store = get_settings().store or (block.store if block is not None else None)
    needs, spec_findings = _largest(provider, specs, pool, store)
    findings += spec_findings
    if needs is None:
        return findings
    checks = import_module(provider.doctor).checks
    return [*findings, *checks(provider, needs)]


def _read_pool(pool: str, cloud: str) -> tuple[list[Finding], RemoteProviderCredentials | None, list[Any]]:
    """The pool's findings, its provider block and the machine specs its runs may ask for (the
    pool's defaults, each deployment's job variables over them)."""
    import asyncio

    return asyncio.run(_aread_pool(pool, cloud))


async def _aread_pool(pool: str, cloud: str) -> tuple[list[Finding], RemoteProviderCredentials | None, list[Any]]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import WorkPoolFilter, WorkPoolFilterName
    from prefect.exceptions import ObjectNotFound

    from prefect_remote.workers.config import SPEC_FIELDS, RemoteProviderCredentials, provider_block_id

    fix_pool = f"prefect work-pool create {pool} --type remote:push --provision-infra (with PREFECT_REMOTE_PROVIDER={cloud})"
    async with get_client() as client:
        try:
            found = await client.read_work_pool(pool)
        except ObjectNotFound:
            return [Finding("work pool", False, f"no work pool {pool!r} on {client.api_url}", fix_pool)], None, []
        if found.type not in POOL_TYPES:
            return [Finding("work pool", False, f"{pool!r} is a {found.type!r} pool, not remote or remote:push", fix_pool)], None, []
        properties = found.base_job_template.get("variables", {}).get("properties", {})
        defaults = {name: spec["default"] for name, spec in properties.items() if "default" in spec}
        reference = provider_block_id(found.base_job_template)
        if reference is None:
            return [Finding("provider block", False, f"pool {pool!r} names no provider block", fix_pool)], None, []
        try:
            document = await client.read_block_document(reference)
        except ObjectNotFound:
            return [Finding("provider block", False, f"pool {pool!r}'s provider block {reference} is gone", fix_pool)], None, []
        block = RemoteProviderCredentials.model_validate(document.data)
        if block.provider != cloud:
            detail = f"pool {pool!r}'s provider block {document.name!r} names {block.provider!r}, not {cloud!r}"
            return (
                [Finding("provider block", False, detail, f"prefect-remote doctor {block.provider} --pool {pool}, or {fix_pool}")],
                None,
                [],
            )
        deployments = await client.read_deployments(work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool])))
    variables = [defaults, *({**defaults, **(d.job_variables or {})} for d in deployments)]
    # What sizes a machine: its lifetimes (keepalive, timeouts) do not, and would only crowd the table.
    sizing = [field for field in SPEC_FIELDS if field not in ("keepalive", "timeout", "idle_timeout")]
    specs = [{k: v[k] for k in sizing if v.get(k) not in (None, {})} for v in variables]
    detail = f"{found.type} pool {pool!r} with {cloud} provider block {document.name!r}, {len(deployments)} deployment(s)"
    return [Finding("work pool", True, detail)], block, specs


def _largest(provider: Provider, specs: list[dict[str, Any]], pool: str | None, store: str | None) -> tuple[Needs | None, list[Finding]]:
    """The largest instance type among ``specs`` (none: a :data:`DEFAULT_CPU`-CPU machine)."""
    from prefect_remote.spec import MachineSpec

    if pool is None:
        specs, source = [{"cpu": DEFAULT_CPU}], f"no --pool: a {DEFAULT_CPU}-CPU machine"
    else:
        source = f"pool {pool!r}'s largest machine"
    chosen = []
    for spec in specs:
        try:
            chosen.append(provider.choose_instance_type(MachineSpec.model_validate(spec)))
        except Exception as error:
            return None, [Finding("machine spec", False, f"{spec}: no {provider.name} machine fits", str(error))]
    found = largest(chosen)
    return Needs(found, f"{source}: {found.describe()}", store, tuple(chosen)), []


def passed(findings: Iterable[Finding]) -> bool:
    """Whether every check passed."""
    return all(finding.ok for finding in findings)
