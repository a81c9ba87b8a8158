"""Which Python a machine makes an environment with: the version asked for, patch included (the
launcher's for the agent, the captured one for a software environment), when the machine has it or
uv can download it; else one of the same minor version.

A Dask client compares its Python version with its cluster's machines'. uv downloads exact CPython
builds wherever a machine has a route to their host (GitHub), as on any cloud with a way out. Where
there is none (an offline image; a proxy that admits only the package index, as the sandbox's), the
download fails at once and the same minor version, which runs the same code, is used.

Standard library only (the agent's machine side), for any Python 3.8+ (annotations are not
evaluated): the boot script runs this file, without its docstrings, with the image's ``python3``
before any environment exists, ``python3 - UV VERSION``, which prints the interpreter on one line
and why it was chosen on the next.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Mapping

# The environment variable the boot script sets to the version it sought for the agent's environment.
AGENT_PYTHON_ENV = "PREFECT_REMOTE_AGENT_PYTHON"
# The longest uv may take to download an exact build (about 30 MB: seconds on a cloud network).
DOWNLOAD_TIMEOUT = 120.0
# uv retries a failed request three times with backoff, which takes 7-9 s to learn that a host is out
# of reach; a machine that cannot reach it once will not the next second.
DOWNLOAD_RETRIES = "0"


def minor_of(version: str) -> str:
    """``"3.11.7"`` → ``"3.11"``."""
    return ".".join(version.split(".")[:2])


def choose_python(version: str, uv: str, *, env: Mapping[str, str] | None = None, fallback: str | None = None) -> tuple[str, str]:
    """The interpreter to make an environment for Python ``version`` with (a path, or a version for
    uv to resolve), and why, for the machine's log. ``fallback`` is an interpreter of the same minor
    version for when the exact one cannot be had (default: one uv finds)."""
    env = dict(os.environ if env is None else env)
    found = _find(uv, version, env)
    if found:
        return found, f"Python {version}, as asked, found on this machine"
    started = time.monotonic()
    problem = _download(uv, version, env)
    found = None if problem else _find(uv, version, env)
    if found:
        return found, f"Python {version}, as asked, downloaded by uv in {time.monotonic() - started:.1f}s"
    minor = minor_of(version)
    fallback = fallback or _find(uv, minor, env)
    why = f"this machine has no {version} and uv could not download it ({problem or 'installed, then not found'})"
    if fallback is None:
        return minor, f"Python {minor}, any patch uv can get: {why}"
    return fallback, f"Python {_version_of(fallback)} instead of {version}, the same minor version: {why}"


def python_for_environment(version: str, uv: str, env: Mapping[str, str] | None = None) -> tuple[str, str]:
    """:func:`choose_python` for a software environment captured on Python ``version``, from the
    running agent: its own interpreter when it is that version, or when the boot script already
    sought that version for the agent's environment and got this one (no second download attempt)."""
    here = platform.python_version()
    if here == version:
        return sys.executable, f"Python {version}, as captured"
    same_minor = minor_of(here) == minor_of(version)
    if same_minor and os.environ.get(AGENT_PYTHON_ENV) == version:
        why = f"the agent's, as {version} was not to be had at boot"
        return sys.executable, f"Python {here} instead of {version}, the same minor version: {why}"
    return choose_python(version, uv, env=env, fallback=sys.executable if same_minor else None)


def _find(uv: str, request: str, env: Mapping[str, str]) -> str | None:
    """The interpreter uv finds for ``request`` (a version) on this machine, without downloading."""
    result = subprocess.run([uv, "python", "find", "--no-project", request], env=env, capture_output=True, text=True)
    return result.stdout.strip() or None if result.returncode == 0 else None


def _download(uv: str, version: str, env: Mapping[str, str]) -> str | None:
    """Installs CPython ``version`` with uv (into ``UV_PYTHON_INSTALL_DIR``); what went wrong, or None."""
    command = [uv, "python", "install", "--no-bin", version]
    try:
        env = {**env, "UV_HTTP_RETRIES": DOWNLOAD_RETRIES}
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT)
    except subprocess.TimeoutExpired:
        return f"no download within {DOWNLOAD_TIMEOUT:.0f}s"
    if result.returncode == 0:
        return None
    # uv names the URL, then each cause down to the root one: "<host>: <root cause>".
    output = result.stderr or result.stdout
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    cause = lines[-1].split(": ", 1)[-1] if lines else f"exit code {result.returncode}"
    url = re.search(r"https?://([^/\s`]+)", output)
    return f"{url.group(1)}: {cause}" if url else cause


def _version_of(python: str) -> str:
    result = subprocess.run([python, "-c", "import platform; print(platform.python_version())"], capture_output=True, text=True)
    return result.stdout.strip() or python


if __name__ == "__main__":
    interpreter, why = choose_python(sys.argv[2], sys.argv[1])
    print(interpreter)
    print(why)
