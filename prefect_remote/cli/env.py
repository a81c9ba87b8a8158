"""``prefect-remote env``: build, list, show and remove software environments (package sync)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from prefect_remote.cli.output import JsonOption, key, number, print_json, print_table, table, text
from prefect_remote.errors import RemoteError
from prefect_remote.units import format_size

if TYPE_CHECKING:
    from prefect_remote.software.store import Store

app = typer.Typer(help="Build, list, show and remove software environments (package sync).", no_args_is_help=True)
console = Console()

StoreOption = Annotated[str | None, typer.Option("--store", help="Store URL or path (default: PREFECT_REMOTE_STORE).")]


def _store(url: str | None):
    from prefect_remote.software.stores import open_store

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
    requirements: Annotated[
        Path | None, typer.Option(help="A requirements file or uv.lock to use instead of the installed packages.")
    ] = None,
    arm: Annotated[bool, typer.Option(help="Target ARM (aarch64) machines.")] = False,
    gpu: Annotated[bool, typer.Option(help="Mark the environment for GPU machines.")] = False,
    strict: Annotated[bool, typer.Option(help="Fail on packages that cannot exist on Linux instead of dropping them.")] = False,
    check: Annotated[bool, typer.Option(help="Resolve the environment for the target platform now.")] = True,
    include_secret_files: Annotated[
        bool, typer.Option(help="Bundle code files that hold credentials (left out with a warning otherwise).")
    ] = False,
    store: StoreOption = None,
) -> None:
    """Capture this Python environment and the code under ROOT; print the environment's name."""
    from prefect_remote.software.capture import SecretFileLeftOut, capture_environment

    with console.status("Capturing the environment…"), warnings.catch_warnings():
        warnings.simplefilter("ignore", SecretFileLeftOut)  # said below, in the summary
        try:
            env = capture_environment(
                root=root,
                ignore=ignore or None,
                include=include or None,
                exclude=exclude or None,
                requirements=requirements,
                arm=arm,
                gpu=gpu,
                strict=strict,
                check=check,
                store=store,
                include_secret_files=include_secret_files or None,
            )
        except RemoteError as error:
            console.print(f"[red]error:[/] {error}")
            raise typer.Exit(1) from None
    for path in env.left_out:
        console.print(
            f"[yellow]warning:[/] left {path} out of the code bundle: it holds a credential. Machines get theirs from their own "
            "identity and secrets; --include-secret-files ships it anyway.",
            highlight=False,
        )
    summary = env.summary()
    typer.echo(env.name)
    facts = table(key(""), text(""), show_header=False)
    facts.add_row("python", f"{summary['python']} ({summary['platform']})")
    facts.add_row("packages", f"{summary['packages']} ({summary['local_wheels']} built from local sources)")
    facts.add_row("code bundle", f"{summary['bundle_files']} files, {format_size(summary['bundle_size'])}")
    facts.add_row("dropped", ", ".join(summary["dropped"]) or "none")
    if summary["left_out"]:
        facts.add_row("left out", ", ".join(summary["left_out"]))
    facts.add_row("store", summary["store"])
    facts.add_row("took", f"{env.seconds:.2f}s")
    print_table(console, facts)


@app.command("ls")
def list_envs(store: StoreOption = None, json_: JsonOption = False) -> None:
    """List the environments in the store: Python, platform, package count, code size; --json for scripts."""
    chosen = _store(store)
    envs = [_env_summary(chosen, name) for name in chosen.envs()]
    if json_:
        print_json(envs)
        return
    if not envs:
        console.print(f"No software environments in {chosen.url}. Build one with `prefect-remote env build`.")
        return
    rows = table(key("NAME"), key("PYTHON"), key("PLATFORM"), number("PACKAGES"), number("LOCAL WHEELS"), key("CODE"))
    for env in envs:
        if env["error"]:
            rows.add_row(env["name"], "[red]unreadable[/]", "", "", "", "")
        else:
            rows.add_row(
                env["name"], env["python"], env["platform"], str(env["packages"]), str(env["local_wheels"]), format_size(env["code_size"])
            )
    print_table(console, rows)
    for env in envs:
        if env["error"]:
            console.print(f"[red]unreadable[/] {env['name']}: {env['error']}")


def _env_summary(store: Store, name: str) -> dict[str, Any]:
    """One environment as ``env ls --json`` prints it: the same keys for every environment, ``error``
    set (and the facts None) when its spec cannot be read, so one bad spec does not hide the others."""
    from prefect_remote.software.rebuild import load_spec

    summary = dict.fromkeys(("name", "python", "platform", "gpu", "packages", "local_wheels", "code_files", "code_size", "error"))
    summary["name"] = name
    try:
        spec = load_spec(store, name)
    except RemoteError as error:
        return {**summary, "error": str(error)}
    code = spec.get("code") or {}
    return {
        **summary,
        "python": spec["python"],
        "platform": spec["platform"],
        "gpu": spec["gpu"],
        "packages": len(spec["packages"]),
        "local_wheels": sum(1 for p in spec["packages"] if p.get("wheel")),
        "code_files": code.get("files", 0),
        "code_size": code.get("size", 0),
    }


@app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="Environment name (senv-…).")], store: StoreOption = None, json_: JsonOption = False
) -> None:
    """Show an environment: Python, platform, every package and where it comes from; --json prints its whole spec."""
    spec = _spec(name, store)
    if json_:
        print_json({"name": name, **spec})
        return
    console.print(f"[bold]{name}[/]: Python {spec['python']} on {spec['platform']}{', GPU' if spec['gpu'] else ''}")
    indexes = spec.get("indexes") or {}
    console.print(f"index: {indexes.get('default') or 'uv default (PyPI)'}" + "".join(f", extra {u}" for u in indexes.get("extra", [])))
    code = spec.get("code")
    console.print(f"code: {code['files']} files, {format_size(code['size'])}" if code else "code: none")
    packages = table(key("PACKAGE"), key("VERSION"), key("SOURCE"), text("FROM"))
    for package in spec["packages"]:
        packages.add_row(package["name"], package.get("version") or "", package["source"], _origin(package))
    print_table(console, packages)
    for dropped in spec["dropped"]:
        console.print(f"dropped: {dropped['name']} ({dropped['reason']})")


def _origin(package: dict[str, Any]) -> str:
    """Where a package comes from, beyond its name and version: its wheel, URL or requirement; nothing
    for an index pin (``name==version`` says no more than the columns beside it)."""
    if package.get("wheel"):
        return package["wheel"]["file"]
    requirement = package.get("requirement", "")
    return "" if requirement == f"{package['name']}=={package.get('version')}" else requirement


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
