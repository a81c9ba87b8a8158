"""Which Python a machine builds an environment with, asked of the real uv: the exact version where
this host has it, else the same minor version after one quick, failed download."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

import prefect_remote.software.interpreter as interpreter
from prefect_remote.software.interpreter import AGENT_PYTHON_ENV, choose_python, python_for_environment
from prefect_remote.software.rebuild import find_uv

HERE = platform.python_version()
MINOR = interpreter.minor_of(HERE)
MISSING = f"{MINOR}.99"  # a patch that exists nowhere


def version_of(python: str) -> str:
    asked = subprocess.run([python, "-c", "import platform; print(platform.python_version())"], capture_output=True, text=True)
    return asked.stdout.strip()


def unreachable_mirror(tmp_path: Path) -> dict[str, str]:
    """uv's environment with python downloads pointed at a closed port (as a host with no route out
    sees the download host) and installed into ``tmp_path``."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed once the probe is
    return {**os.environ, "UV_PYTHON_INSTALL_MIRROR": f"http://127.0.0.1:{port}", "UV_PYTHON_INSTALL_DIR": str(tmp_path / "pythons")}


def test_the_exact_version_found_on_this_machine():
    found, why = choose_python(HERE, find_uv())
    assert version_of(found) == HERE
    assert why == f"Python {HERE}, as asked, found on this machine"


def test_a_version_that_cannot_be_downloaded_falls_back_to_the_same_minor_and_says_why(tmp_path):
    # 3.11.9 is one uv knows how to download; the mirror is out of reach.
    wanted = "3.11.9" if MINOR == "3.11" else f"{MINOR}.0"
    found, why = choose_python(wanted, find_uv(), env=unreachable_mirror(tmp_path), fallback=sys.executable)
    assert found == sys.executable
    assert why.startswith(f"Python {HERE} instead of {wanted}, the same minor version: this machine has no {wanted}")
    assert "and uv could not download it (127.0.0.1:" in why  # the host out of reach, named
    assert not list((tmp_path / "pythons").glob("cpython-*"))


def test_without_a_fallback_uv_finds_one_of_the_same_minor(tmp_path):
    found, why = choose_python(MISSING, find_uv(), env=unreachable_mirror(tmp_path))
    version = version_of(found)
    assert interpreter.minor_of(version) == MINOR
    assert why.startswith(f"Python {version} instead of {MISSING}, the same minor version: this machine has no {MISSING}")


def test_an_environment_of_the_running_version_or_one_sought_at_boot_uses_the_agent_at_once(monkeypatch):
    no_uv = "/nonexistent/uv"  # asking uv would fail: neither case does
    assert python_for_environment(HERE, no_uv) == (sys.executable, f"Python {HERE}, as captured")
    monkeypatch.setenv(AGENT_PYTHON_ENV, MISSING)  # the boot script sought it for the agent and got this one
    interpreter_path, why = python_for_environment(MISSING, no_uv)
    assert interpreter_path == sys.executable and why.startswith(f"Python {HERE} instead of {MISSING}, the same minor version: the agent's")


def test_an_environment_of_another_patch_is_sought_with_uv(tmp_path, monkeypatch):
    monkeypatch.setenv(AGENT_PYTHON_ENV, HERE)
    found, why = python_for_environment(MISSING, find_uv(), unreachable_mirror(tmp_path))
    assert found == sys.executable and "this machine has no" in why


def test_runs_in_the_boot_script_with_the_standard_library_only():
    """As the boot script runs it: its code from the script, with python3 alone, before any environment exists."""
    from prefect_remote.boot import AgentSource, render_boot_script

    script = render_boot_script({}, agent=AgentSource("prefect-remote==0.2.0", python=HERE))
    code = script.split(f"python3 - \"$UV\" {HERE} <<'PY'\n", 1)[1].split("\nPY\n", 1)[0]
    assert '"""' not in code and len(code) < 4096  # no docstrings: a boot script's size is limited
    ran = subprocess.run([sys.executable, "-I", "-S", "-", find_uv(), HERE], input=code, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    found, why = ran.stdout.splitlines()
    assert Path(found).exists() and why == f"Python {HERE}, as asked, found on this machine"
