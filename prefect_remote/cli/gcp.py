"""``prefect-remote gcp teardown``: remove what ``prefect work-pool create --type remote:push
--provision-infra`` set up in a Google Cloud project (see :func:`prefect_remote.providers.gcp.infra.teardown`)."""

from __future__ import annotations

from typing import Annotated

import typer

from prefect_remote.cli.teardown import confirm_everything, report_removed

app = typer.Typer(help="Google Cloud: remove what --provision-infra set up.", no_args_is_help=True)


@app.command("teardown")
def teardown(
    pool: Annotated[
        str | None,
        typer.Option(
            "--pool",
            help="Remove only this work pool's machines, launch secrets, machine records and (when provisioning chose it) its own store "
            "folder (found through its provider block's store).",
        ),
    ] = None,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Without --pool: remove everything provisioning made in the project, without asking.")
    ] = False,
    project: Annotated[
        str | None,
        typer.Option("--project", help="Project id (default: PREFECT_REMOTE_GCP_PROJECT, GOOGLE_CLOUD_PROJECT or the credentials')."),
    ] = None,
    region: Annotated[
        str | None,
        typer.Option(
            "--region", help="Region whose Cloud Run jobs and Compute Engine VMs are checked (default: PREFECT_REMOTE_GCP_REGION)."
        ),
    ] = None,
    delete_bucket: Annotated[
        bool,
        typer.Option("--delete-bucket", help="Also delete the store's bucket provisioning made, with the software environments in it."),
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="End prefect-remote machines that still run instead of refusing.")] = False,
) -> None:
    """Remove every pool's service account (pr-*, and prefect-remote-machines of older releases), their grants,
    the custom roles prefectRemoteMachine, prefectRemoteMachineInstances and prefectRemoteMachineSecrets, the firewall
    rules prefect-remote-internal-* and prefect-remote-dask-*, and launch secrets left behind; the bucket only with
    --delete-bucket (else just the machines' grants on it). With --pool, only that pool's machines, launch secrets and
    machine records (by the label its launches put on them), its service account and its grants, and the objects of
    its own store folder when provisioning chose it (one given by PREFECT_REMOTE_STORE is kept): every pool shares
    the rest. Refuses while those machines run, unless
    --force. Idempotent."""
    from prefect_remote.providers.gcp.infra import teardown as remove
    from prefect_remote.providers.gcp.provider import GCPProvider

    store = None
    if pool is None:
        confirm_everything(
            yes,
            "Remove everything prefect-remote provisioned in this Google Cloud project, for every pool?",
            "name a pool (--pool NAME), or pass --yes to remove everything provisioning made in the project",
        )
    elif delete_bucket:
        raise typer.BadParameter("the bucket holds every pool's software environments: --delete-bucket goes with --yes, not --pool")
    else:
        from prefect_remote.deployments.package_sync import pools_sharing_store, work_pool_store

        store = work_pool_store(pool)
        if not store or not store.startswith("gs://"):
            raise typer.BadParameter(
                f"work pool {pool!r} has no provider block recording a gs:// store (found: {store or 'none'}), which names its "
                "machines' records: check the name (`prefect work-pool ls`), or pass --yes without --pool to remove every pool's",
                param_hint="--pool",
            )
        sharing = pools_sharing_store(pool, store)
        if sharing:  # their machines, secrets and records carry the same store's label: --pool cannot tell them apart
            raise typer.BadParameter(
                f"work pool {pool!r} shares its store {store} with {', '.join(repr(name) for name in sharing)}, so their machines, "
                "launch secrets and records cannot be told apart and --pool would remove theirs too; give each pool a store of its "
                "own (--provision-infra without PREFECT_REMOTE_STORE gives each its own folder of the default bucket), or pass "
                "--yes without --pool to remove every pool's",
                param_hint="--pool",
            )
    options = {key: value for key, value in {"project": project, "region": region}.items() if value}
    report_removed(lambda: remove(GCPProvider(**options), store=store, pool=pool, force=force, delete_bucket=delete_bucket, say=typer.echo))
