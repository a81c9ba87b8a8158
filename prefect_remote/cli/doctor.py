"""``prefect-remote doctor aws|gcp``: will the first run work? One row per check of the account,
ok or FAILED with what to fix (:mod:`prefect_remote.doctor`); exit code 0 only when all pass."""

from __future__ import annotations

from typing import Annotated

import typer

from prefect_remote.cli.output import JsonOption


def doctor(
    cloud: Annotated[str, typer.Argument(help="The provider to check: aws, gcp (or local, or a plugin's).")],
    pool: Annotated[
        str | None,
        typer.Option("--pool", help="Check this work pool: its provider block, and quotas against its largest machine."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Check that a first run will work: credentials, the launcher's and the machines' permissions,
    APIs, vCPU/GPU quotas against the pool's largest machine (4 CPUs without --pool), a subnet with
    public IPs or a NAT, the store's bucket and the pool's provider block. Exits 1 if any fails."""
    from rich.console import Console

    from prefect_remote.cli.output import key, print_json, print_table, table, text
    from prefect_remote.doctor import diagnose, passed

    findings = diagnose(cloud, pool)
    if as_json:
        print_json({"ok": passed(findings), "checks": [finding.as_dict() for finding in findings]})
    else:
        rows = table(key("check"), key("result"), text("found"), text("fix"), title=f"prefect-remote doctor {cloud}")
        for finding in findings:
            rows.add_row(finding.check, "ok" if finding.ok else "[bold red]FAILED[/]", finding.detail, finding.fix)
        console = Console()
        print_table(console, rows)
        console.print("all checks passed" if passed(findings) else "[bold red]some checks failed[/]: see the fix column")
    raise typer.Exit(0 if passed(findings) else 1)
