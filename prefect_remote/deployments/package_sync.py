"""``PackageSync``: package sync as the storage of a deployment from Python, with no prefect.yaml.

.. code-block:: python

    from prefect_remote import PackageSync

    my_flow.from_source(PackageSync("."), "example_flow.py:my_flow").deploy(
        name="example-remote-deploy", work_pool_name="example-remote-pool",
        job_variables={"cpu": 16, "memory": "32GB"},
    )

It is one of Prefect's runner storages (:class:`prefect.runner.storage.RunnerStorage`): the code is
the folder given, already here, so ``from_source`` loads the flow from it at once and ``pull_code``
does nothing. The capture happens when Prefect registers the deployment and asks the storage for
its pull step (``to_pull_step``): once per deployment applied, and never when a flow's module calls
``from_source`` again on a machine. The pull step names the software environment
(:data:`~prefect_remote.deployments.steps.PACKAGE_SYNC_STEP`); the ``remote`` and ``remote:push``
pools' workers run the deployment's flow runs on it, as they run a ``software`` job variable.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect_remote.deployments.steps import PACKAGE_SYNC_STEP, build_package_sync_senv, capture_options


class PackageSync:
    """The code in ``path`` and this Python environment, synced to the work pool's machines: a
    Prefect runner storage for ``flow.from_source(PackageSync("."), "flows.py:my_flow").deploy(...)``.

    When the deployment is registered, the environment and the code under ``path`` are captured as a
    software environment (exactly as prefect.yaml's ``build_package_sync_senv`` step does, with the
    same options: ``ignore``, ``include``, ``exclude``, ``arm``, ``gpu``, ``strict``, ``check``,
    ``requirements``, ``include_secret_files``) and stored in ``store``: by default the work pool's
    (the store its ``--provision-infra`` recorded in the pool's provider block), else the configured
    one (``PREFECT_REMOTE_STORE``, else ``$PREFECT_REMOTE_HOME/store``). The deployment's pull step
    names that environment, and the pool's flow runs rebuild it on their machines and load the
    entrypoint (relative to ``path``) from its code; a ``software`` job variable, if the deployment
    or the run sets one, wins.

    Raises ValueError if ``path`` is not a folder, or an option is malformed.
    """

    def __init__(
        self,
        path: str | Path = ".",
        *,
        store: str | None = None,
        ignore: str | list[str] | None = None,
        include: str | list[str] | None = None,
        exclude: str | list[str] | None = None,
        arm: bool = False,
        gpu: bool = False,
        strict: bool = False,
        check: bool = True,
        requirements: str | None = None,
        include_secret_files: bool = False,
    ) -> None:
        folder = Path(path).expanduser()
        if not folder.exists():
            raise ValueError(
                f"PackageSync({str(path)!r}): no such folder (from {Path.cwd()}); give the project folder that holds "
                "the flow's code, e.g. PackageSync('.') with the entrypoint relative to it"
            )
        if not folder.is_dir():
            raise ValueError(
                f"PackageSync({str(path)!r}): that is a file, not a folder; give the folder that holds it, with the "
                f"entrypoint relative to that folder: from_source(PackageSync({str(folder.parent)!r}), '{folder.name}:<flow function>')"
            )
        if store is not None and not (isinstance(store, str) and store):
            raise ValueError(f"PackageSync store={store!r}: expected a store URL, e.g. 's3://bucket/prefix', or a folder")
        self._folder = folder.resolve()
        self._store = store
        self._options: dict[str, Any] = {
            "arm": arm,
            "gpu": gpu,
            "strict": strict,
            "ignore": ignore,
            "include": include,
            "exclude": exclude,
            "check": check,
            "requirements": requirements,
            "include_secret_files": include_secret_files,
        }
        capture_options("PackageSync", **self._options)  # a malformed option fails here, not at deploy time
        self.software: str | None = None  # the environment the last registered deployment got

    # -- Prefect's RunnerStorage protocol ------------------------------------------------------------
    @property
    def destination(self) -> Path:
        """The project folder: the flow's code is loaded from here, and captured from here."""
        return self._folder

    @property
    def pull_interval(self) -> int | None:
        """None: the code is captured once per deployment, not pulled periodically."""
        return None

    def set_base_path(self, path: Path) -> None:
        """Nothing to do: the code stays in its folder (Prefect would pull remote storage under ``path``)."""

    async def pull_code(self) -> None:
        """Nothing to do: the code is already in :attr:`destination` (here, or on the machine, in its work folder)."""

    def to_pull_step(self) -> dict[str, Any]:
        """Captures the environment and the code into the store and returns the deployment's pull
        step naming it. Prefect calls this once when it registers (creates or updates) the deployment."""
        store = self._store or work_pool_store(deploying_to(self))
        summary = build_package_sync_senv(root=str(self._folder), store=store, **self._options)
        self.software = summary["name"]
        return {PACKAGE_SYNC_STEP: {"software": summary["name"]}}

    def __eq__(self, other: Any) -> bool:
        if not isinstance(other, PackageSync):
            return NotImplemented
        return (self._folder, self._store, self._options) == (other._folder, other._store, other._options)

    def __repr__(self) -> str:
        return f"PackageSync({str(self._folder)!r})"


def deploying_to(storage: PackageSync) -> str | None:
    """The work pool of the deployment Prefect is registering with ``storage``: found on the caller's
    stack, where ``RunnerDeployment._create`` holds it (its ``work_pool_name``, the one given to
    ``.deploy()``) and ``_update`` has set it on the deployment. The storage protocol passes no
    deployment to ``to_pull_step``; this reads Prefect's internals, pinned by its version range and
    tested. None if not found (the caller then uses the configured store)."""
    frame = sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get("self")
        if owner is not storage and getattr(owner, "storage", None) is storage:
            return frame.f_locals.get("work_pool_name") or getattr(owner, "work_pool_name", None)
        frame = frame.f_back
    return None


def work_pool_store(pool: str | None) -> str | None:
    """The software store ``pool``'s provider block records (``--provision-infra`` sets it), or None:
    no pool given, no such pool or block, or none recorded."""
    if not pool:
        return None
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        with get_client(sync_client=True) as client:
            return _recorded_store(client, client.read_work_pool(pool))
    except ObjectNotFound:
        return None


def pools_sharing_store(pool: str, store: str) -> list[str]:
    """The other work pools whose provider blocks record ``store`` too (their machines' records, and
    the labels their launches carry, are then the same as ``pool``'s), sorted. Every pool and every
    provider block is read a page at a time: two reads for up to 200 of each, however many pools."""
    from prefect.client.orchestration import get_client

    from prefect_remote.workers.config import RemoteProviderBlock, provider_block_id

    with get_client(sync_client=True) as client:
        blocks = _every_page(
            lambda offset, limit: client.read_block_documents_by_type(
                RemoteProviderBlock.get_block_type_slug(), offset=offset, limit=limit, include_secrets=False
            )
        )
        pools = _every_page(lambda offset, limit: client.read_work_pools(offset=offset, limit=limit))
    stores = {str(block.id): (block.data.get("store") or "").rstrip("/") for block in blocks}
    wanted = store.rstrip("/")
    return sorted(
        other.name for other in pools if other.name != pool and stores.get(provider_block_id(other.base_job_template) or "") == wanted
    )


def _every_page(read: Callable[[int, int], list[Any]], page: int = 200) -> list[Any]:
    """Everything a paged Prefect read returns (its server answers at most 200 at a time by default)."""
    found: list[Any] = []
    while len(batch := read(len(found), page)) == page:
        found += batch
    return found + batch


def _recorded_store(client: Any, work_pool: Any) -> str | None:
    """The store that ``work_pool``'s provider block records, or None (no block, or none recorded)."""
    from uuid import UUID

    from prefect_remote.workers.config import provider_block_id  # (the pool template's shape is the workers')

    block_id = provider_block_id(work_pool.base_job_template)
    return (client.read_block_document(UUID(block_id)).data.get("store") or None) if block_id else None
