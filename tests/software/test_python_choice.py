"""Which Python a machine builds a software environment on, asked of the real uv: the captured
version, patch included, where this host has it; else at once one of the same minor version, with
the reason (a download host out of reach) in the log."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import time
from pathlib import Path

from prefect_remote.software.rebuild import _make_venv, find_uv

HERE = platform.python_version()
MINOR = ".".join(HERE.split(".")[:2])


def version_of(venv: Path) -> str:
    asked = subprocess.run(
        [venv / "bin" / "python", "-c", "import platform; print(platform.python_version())"], capture_output=True, text=True
    )
    return asked.stdout.strip()


def unreachable_downloads(tmp_path: Path) -> dict[str, str]:
    """uv's environment with Python downloads pointed at a closed port, as a machine with no route to
    the download host sees it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed once the probe is
    return {**os.environ, "UV_PYTHON_INSTALL_MIRROR": f"http://127.0.0.1:{port}", "UV_PYTHON_INSTALL_DIR": str(tmp_path / "pythons")}


def test_the_captured_version_when_this_machine_has_it(tmp_path):
    _, why = _make_venv(tmp_path / "venv", {"python": HERE, "packages": []}, find_uv(), dict(os.environ))
    assert why == f"Python {HERE}, as captured" and version_of(tmp_path / "venv") == HERE


def test_a_patch_out_of_reach_falls_back_at_once_to_the_same_minor_and_says_why(tmp_path):
    wanted = f"{MINOR}.9" if f"{MINOR}.9" != HERE else f"{MINOR}.8"  # a patch uv knows how to download
    started = time.monotonic()
    _, why = _make_venv(tmp_path / "venv", {"python": wanted, "packages": []}, find_uv(), unreachable_downloads(tmp_path))
    assert time.monotonic() - started < 5  # no retries of a host that is out of reach
    assert version_of(tmp_path / "venv") == HERE
    assert why.startswith(f"Python {MINOR} (not {wanted}, which this machine has not and uv could not download: ")
    assert "download:  " not in why and "cause:" not in why, why  # uv's last cause, without its indent and label
    assert not list((tmp_path / "pythons").glob("cpython-*"))


def test_on_another_patch_the_pinned_packages_get_what_that_patch_needs_and_keep_their_pins(tmp_path):
    """The capture's pins installed, then with their dependencies on the Python the machine fell back
    to: what a dependency marker asks of that patch is added (here requests' own dependencies, which
    a capture on another patch might have lacked), and no pin moves."""
    from importlib.metadata import version

    from prefect_remote.software.rebuild import _add_what_this_patch_needs

    uv, env = find_uv(), dict(os.environ)
    spec = {"python": f"{MINOR}.99", "packages": [{"name": "requests", "requirement": f"requests=={version('requests')}"}]}
    _make_venv(tmp_path / "venv", spec, uv, env)
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(f"requests=={version('requests')}\n")
    python = str(tmp_path / "venv" / "bin" / "python")
    subprocess.run([uv, "pip", "sync", "--quiet", "--python", python, str(requirements)], env=env, check=True)
    said: list[str] = []
    _add_what_this_patch_needs("senv-test", tmp_path / "venv", requirements, spec, uv, env, said.append)
    listed = subprocess.run([uv, "pip", "list", "--python", python, "--format", "freeze"], env=env, capture_output=True, text=True).stdout
    assert f"requests=={version('requests')}" in listed and "idna==" in listed and "urllib3==" in listed, listed
    assert said == []
