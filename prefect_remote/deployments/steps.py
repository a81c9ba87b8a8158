"""Deploy steps for prefect.yaml.

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

from typing import Any


def _patterns(field: str, value: str | list[str] | None) -> list[str] | None:
    if value is None:
        return None
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
        raise ValueError(f"build_package_sync_senv {field}={value!r}: expected a pattern or a list of patterns, e.g. ['data/', '*.csv']")
    return values


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
) -> dict[str, Any]:
    """Capture the local Python environment and the project's code (the folder ``prefect deploy``
    runs in) as a software environment, store it, and return its name for the job variables:
    ``software: '{{ senv.name }}'``.

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
    for field, value in (("arm", arm), ("gpu", gpu), ("strict", strict), ("check", check), ("include_secret_files", include_secret_files)):
        if not isinstance(value, bool):
            raise ValueError(f"build_package_sync_senv {field}={value!r}: expected true or false")
    from prefect_remote.software.capture import capture_environment

    env = capture_environment(
        arm=arm,
        gpu=gpu,
        strict=strict,
        ignore=_patterns("ignore", ignore),
        include=_patterns("include", include),
        exclude=_patterns("exclude", exclude),
        store=store,
        check=check,
        requirements=requirements,
        include_secret_files=include_secret_files or None,
    )
    summary = env.summary()
    dropped = f"; dropped {', '.join(summary['dropped'])}" if summary["dropped"] else ""
    dropped += f"; left out (credentials) {', '.join(summary['left_out'])}" if summary["left_out"] else ""
    print(
        f"Software environment {env.name}: Python {summary['python']} on {summary['platform']}, "
        f"{summary['packages']} packages ({summary['local_wheels']} local wheels), "
        f"{summary['bundle_files']} code files{dropped}; stored in {summary['store']} ({env.seconds:.1f}s)"
    )
    return summary
