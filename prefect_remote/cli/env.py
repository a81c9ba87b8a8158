"""``prefect-remote env``: build, list, show and remove software environments (package sync)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from prefect_remote.errors import RemoteError
from prefect_remote.units import format_size

app = typer.Typer(help="Build, list, show and remove software environments (package sync).", no_args_is_help=True)
console = Console()

StoreOption = Annotated[Optional[str], typer.Option("--store", help="Store URL or path (default: PREFECT_REMOTE_STORE).")]


def _store(url: str | None):
    from prefect_remote.software.store import open_store

    try:
        return open_store(url)
    except RemoteError as error:
        raise typer.BadParameter(str(error), param_hint="--store") from None


def _spec(name: str, store_url: str | None) -> dict:
    from prefect_remote.software.rebuild import load_spec

    try:
        return load_spec(_store(store_url), name)
    except RemoteError as error:
        raise typer.BadParameter(str(error), param_hint="NAME") from None


@app.command("build")
def build(
    root: Annotated[Path, typer.Option(help="Folder whose code is bundled.")] = Path("."),
    ignore: Annotated[list[str], typer.Option("--ignore", help="Package to leave out (wildcards ok). Repeatable.")] = [],
    include: Annotated[list[str], typer.Option("--include", help="Only code files matching this pattern. Repeatable.")] = [],
    exclude: Annotated[list[str], typer.Option("--exclude", help="Code files to leave out (gitignore pattern). Repeatable.")] = [],
    requirements: Annotated[Optional[Path], typer.Option(help="A requirements file or uv.lock to use instead of the installed packages.")] = None,
    arm: Annotated[bool, typer.Option(help="Target ARM (aarch64) machines.")] = False,
    gpu: Annotated[bool, typer.Option(help="Mark the environment for GPU machines.")] = False,
    strict: Annotated[bool, typer.Option(help="Fail on packages that cannot exist on Linux instead of dropping them.")] = False,
    check: Annotated[bool, typer.Option(help="Resolve the environment for the target platform now.")] = True,
    store: StoreOption = None,
) -> None:
    """Capture this Python environment and the code under ROOT; print the environment's name."""
    from prefect_remote.software.capture import capture_environment

    with console.status("Capturing the environment…"):
        try:
            env = capture_environment(
                root=root, ignore=ignore or None, include=include or None, exclude=exclude or None,
                requirements=requirements, arm=arm, gpu=gpu, strict=strict, check=check, store=store,
            )
        except RemoteError as error:
            console.print(f"[red]error:[/] {error}")
            raise typer.Exit(1) from None
    summary = env.summary()
    typer.echo(env.name)
    table = Table(show_header=False, box=None)
    table.add_row("python", f"{summary['python']} ({summary['platform']})")
    table.add_row("packages", f"{summary['packages']} ({summary['local_wheels']} built from local sources)")
    table.add_row("code bundle", f"{summary['bundle_files']} files, {format_size(summary['bundle_size'])}")
    table.add_row("dropped", ", ".join(summary["dropped"]) or "none")
    table.add_row("store", summary["store"])
    table.add_row("took", f"{env.seconds:.2f}s")
    console.print(table)


@app.command("ls")
def list_envs(store: StoreOption = None) -> None:
    """List the environments in the store."""
    chosen = _store(store)
    names = chosen.envs()
    if not names:
        console.print(f"No software environments in {chosen.url}. Build one with `prefect-remote env build`.")
        return
    from prefect_remote.software.rebuild import load_spec

    table = Table("NAME", "PYTHON", "PLATFORM", "PACKAGES", "LOCAL WHEELS", "CODE", box=None, header_style="bold")
    for name in names:
        try:
            spec = load_spec(chosen, name)
        except RemoteError as error:
            table.add_row(name, "[red]unreadable[/]", str(error)[:60], "", "", "")
            continue
        code = spec.get("code") or {}
        local = sum(1 for p in spec["packages"] if p.get("wheel"))
        table.add_row(name, spec["python"], spec["platform"], str(len(spec["packages"])), str(local), format_size(code.get("size", 0)))
    console.print(table)


@app.command("show")
def show(name: Annotated[str, typer.Argument(help="Environment name (senv-…).")], store: StoreOption = None) -> None:
    """Show an environment: Python, platform, every package and where it comes from."""
    spec = _spec(name, store)
    console.print(f"[bold]{name}[/]: Python {spec['python']} on {spec['platform']}{', GPU' if spec['gpu'] else ''}")
    indexes = spec.get("indexes") or {}
    console.print(f"index: {indexes.get('default') or 'uv default (PyPI)'}" + "".join(f", extra {u}" for u in indexes.get("extra", [])))
    code = spec.get("code")
    console.print(f"code: {code['files']} files, {format_size(code['size'])}" if code else "code: none")
    table = Table("PACKAGE", "VERSION", "SOURCE", "FROM", box=None, header_style="bold")
    for package in spec["packages"]:
        origin = package["wheel"]["file"] if package.get("wheel") else package.get("requirement", "")
        table.add_row(package["name"], package.get("version") or "", package["source"], origin)
    console.print(table)
    for dropped in spec["dropped"]:
        console.print(f"dropped: {dropped['name']} ({dropped['reason']})")


@app.command("rm")
def remove(names: Annotated[list[str], typer.Argument(help="Environment names (senv-…).")], store: StoreOption = None) -> None:
    """Remove environments from the store, with the blobs no other environment uses."""
    from prefect_remote.software.rebuild import load_spec

    chosen = _store(store)
    unknown = [name for name in names if name not in chosen.envs()]
    if unknown:
        raise typer.BadParameter(f"{', '.join(unknown)} not in {chosen.url}; `prefect-remote env ls` lists them", param_hint="NAMES")

    def blobs(spec: dict) -> set[str]:
        found = {p["wheel"]["sha256"] for p in spec["packages"] if p.get("wheel")}
        return found | ({spec["code"]["sha256"]} if spec.get("code") else set())

    # What the other environments use is read before anything is deleted; if one cannot be read, no
    # blob is freed (it might be that environment's). An environment that cannot be read itself (a
    # tampered spec) is still removed.
    try:
        still_used = set().union(*(blobs(load_spec(chosen, n)) for n in chosen.envs() if n not in names))
        freed = set().union(*(blobs(load_spec(chosen, n)) for n in names)) - still_used
        kept = ""
    except RemoteError as error:
        freed, kept = set(), f" (no blobs freed: {error})"
    for name in names:
        chosen.delete_env(name)
    for digest in freed:
        chosen.delete_blob(digest)
    console.print(f"Removed {len(names)} environment(s) and {len(freed)} blob(s) from {chosen.url}{kept}.")
