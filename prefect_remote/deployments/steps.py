"""Deploy steps for prefect.yaml, and the pull step :class:`~prefect_remote.PackageSync` deployments carry.

.. code-block:: yaml

    build:
      - prefect_remote.deployments.steps.build_package_sync_senv:
          id: senv
          exclude: ["data/"]
    deployments:
      - name: my-deployment
        entrypoint: flows.py:my_flow
        work_pool:
          name: my-pool
          job_variables:
            software: '{{ senv.name }}'
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from prefect_remote.errors import RemoteError

PACKAGE_SYNC_STEP = "prefect_remote.deployments.steps.package_sync"  # the pull step PackageSync deployments carry


def _patterns(caller: str, field: str, value: str | list[str] | None) -> list[str] | None:
    if value is None:
        return None
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
        raise ValueError(f"{caller} {field}={value!r}: expected a pattern or a list of patterns, e.g. ['data/', '*.csv']")
    return values


FLAGS = ("arm", "gpu", "strict", "check", "include_secret_files")  # true or false
PATTERN_LISTS = ("ignore", "include", "exclude")  # a gitignore pattern or a list of them


def capture_options(caller: str, **options: Any) -> dict[str, Any]:
    """The package-sync options of the deploy step or of :class:`~prefect_remote.PackageSync`
    (``caller``), checked: a malformed one raises ValueError naming ``caller`` and the option. Patterns
    come back as lists."""
    for field in FLAGS:
        if field in options and not isinstance(options[field], bool):
            raise ValueError(f"{caller} {field}={options[field]!r}: expected true or false")
    requirements = options.get("requirements")
    if requirements is not None and not isinstance(requirements, (str, os.PathLike)):
        raise ValueError(f"{caller} requirements={requirements!r}: expected the path of a requirements file or uv.lock")
    return {**options, **{field: _patterns(caller, field, options.get(field)) for field in PATTERN_LISTS if field in options}}


def build_package_sync_senv(
    *,
    arm: bool = False,
    gpu: bool = False,
    strict: bool = False,
    ignore: str | list[str] | None = None,
    include: str | list[str] | None = None,
    exclude: str | list[str] | None = None,
    store: str | None = None,
    check: bool = True,
    requirements: str | None = None,
    include_secret_files: bool = False,
    root: str | None = None,
) -> dict[str, Any]:
    """Capture the local Python environment and the project's code (the folder ``prefect deploy``
    runs in, or ``root``) as a software environment, store it, and return its name for the job
    variables: ``software: '{{ senv.name }}'``.

    ``ignore`` drops packages by name; ``include``/``exclude`` choose code files (gitignore
    patterns, ``.gitignore`` respected); ``arm`` targets aarch64 machines; ``gpu`` marks the
    environment for GPU machines; ``strict`` fails on packages that cannot exist on Linux instead
    of dropping them; ``check`` (on by default) resolves the environment for the target platform
    now, so a broken one fails at deploy time; ``requirements`` (a requirements file or
    ``uv.lock``) replaces the scan of installed packages. Code files holding credentials (private
    keys, cloud credential files, kubeconfigs) are left out, with a warning naming each, unless
    ``include_secret_files``.

    Example::

        build_package_sync_senv(exclude=["data/"])["name"]  # 'senv-3f2a9c0e4b1d7a65'
    """
    options = capture_options(
        "build_package_sync_senv",
        arm=arm,
        gpu=gpu,
        strict=strict,
        ignore=ignore,
        include=include,
        exclude=exclude,
        check=check,
        requirements=requirements,
        include_secret_files=include_secret_files,
    )
    options["include_secret_files"] = include_secret_files or None  # not asked: the setting decides
    from prefect_remote.software.capture import capture_environment

    env = capture_environment(root=root or ".", store=store, **options)
    summary = env.summary()
    lines = [  # short lines: a deploy's output is read in an 80-column terminal
        f"Software environment {env.name} ({env.seconds:.1f}s):",
        f"  Python {summary['python']} on {summary['platform']}, {summary['packages']} packages "
        f"({summary['local_wheels']} local wheels), {summary['bundle_files']} code files",
    ]
    if summary["dropped"]:
        lines.append(f"  dropped {', '.join(summary['dropped'])}")
    if summary["left_out"]:
        lines.append(f"  left out (credentials) {', '.join(summary['left_out'])}")
    print("\n".join([*lines, f"  stored in {summary['store']}"]))
    return summary


class NotInSoftwareEnvironment(RemoteError, RuntimeError):
    """A :class:`~prefect_remote.PackageSync` deployment's run started somewhere other than a
    prefect-remote machine running its software environment."""


def package_sync(software: str) -> dict[str, str]:
    """The pull step of a :class:`~prefect_remote.PackageSync` deployment: ``software`` names the
    environment its code and packages were captured into, which the ``remote`` and ``remote:push``
    work pools run the deployment's flow runs on (their ``software`` job variable, unless the
    deployment or the run sets one).

    On such a machine the flow is loaded from its work folder, where the agent unpacked that
    environment's code, and no pull step runs. Run anywhere else (another work pool's worker,
    ``prefect flow-run execute`` on a laptop), it raises :class:`NotInSoftwareEnvironment` saying
    where the deployment's runs belong; on the machine itself it returns ``software`` and the work
    folder, having done nothing.
    """
    from prefect_remote.software.auto import machine_environment

    running = machine_environment(arm=platform.machine() in ("aarch64", "arm64"))
    if running is None or running.name != software:
        where = f"software environment {running.name}" if running is not None else "no prefect-remote software environment"
        raise NotInSoftwareEnvironment(
            f"this deployment's code and packages are in software environment {software} (package sync), and this process "
            f"runs in {where}: deploy it to a remote:push or remote work pool, whose machines rebuild that environment, "
            "or run the flow here with `python` instead"
        )
    return {"software": software, "directory": str(Path.cwd())}
