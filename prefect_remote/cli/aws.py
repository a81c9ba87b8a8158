"""``prefect-remote aws teardown``: remove what ``prefect work-pool create --type remote:push
--provision-infra`` set up in an AWS account (see :func:`prefect_remote.providers.aws.infra.teardown`)."""

from __future__ import annotations

from typing import Annotated

import typer

from prefect_remote.cli.teardown import confirm_everything, report_removed

app = typer.Typer(help="AWS: remove what --provision-infra set up.", no_args_is_help=True)


@app.command("teardown")
def teardown(
    pool: Annotated[
        str | None,
        typer.Option(
            "--pool",
            help="Remove this pool's role, instance profile and own store folder (and the shared resources if no other pool is left).",
        ),
    ] = None,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Without --pool: remove everything provisioning made in the region, without asking.")
    ] = False,
    region: Annotated[str | None, typer.Option("--region", help="AWS region (default: boto3's, e.g. AWS_DEFAULT_REGION).")] = None,
    delete_bucket: Annotated[
        bool,
        typer.Option("--delete-bucket", help="Also delete the store's bucket provisioning made, with the software environments in it."),
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Terminate prefect-remote instances that still run instead of refusing.")] = False,
) -> None:
    """Remove the IAM role and instance profile, the security groups (prefect-remote-<vpc>,
    prefect-remote-<vpc>-dask-from-*), the log group and launch secrets left behind; the bucket only
    with --delete-bucket. Refuses while prefect-remote instances run, unless --force. Idempotent."""
    from prefect_remote.providers.aws.infra import teardown as remove

    if pool is None:
        confirm_everything(
            yes,
            "Remove everything prefect-remote provisioned in this region, for every pool?",
            "name a pool (--pool NAME), or pass --yes to remove everything provisioning made in the region",
        )
    report_removed(lambda: remove(region, pool, force=force, delete_bucket=delete_bucket, say=typer.echo))
