"""`prefect-remote env` as users run it."""

import os
import subprocess
import sys
from pathlib import Path

CLI = str(Path(sys.executable).parent / "prefect-remote")


def cli(*args, cwd=None):
    return subprocess.run([CLI, *args], capture_output=True, text=True, cwd=cwd, env={**os.environ, "COLUMNS": "200"}, timeout=300)


def test_build_ls_show_rm(tmp_path):
    (tmp_path / "flows.py").write_text("x = 1\n")
    store = str(tmp_path / "store")
    built = cli("env", "build", "--no-check", "--store", store, "--ignore", "pytest*", cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    name = built.stdout.splitlines()[0]
    assert name.startswith("senv-") and "1 files" in built.stdout and "pytest (ignored)" in built.stdout
    assert name in cli("env", "ls", "--store", store).stdout
    shown = cli("env", "show", name, "--store", store)
    assert "prefect-remote" in shown.stdout and "editable" in shown.stdout
    removed = cli("env", "rm", name, "--store", store)
    assert "Removed 1 environment(s)" in removed.stdout
    assert "No software environments" in cli("env", "ls", "--store", store).stdout
    assert list((tmp_path / "store" / "blobs").iterdir()) == []


def test_errors_say_what_to_do(tmp_path):
    assert "expected an environment name" in cli("env", "show", "nope").stderr
    assert "is not in the store" in cli("env", "show", "senv-0123456789abcdef", "--store", str(tmp_path)).stderr.replace("\n", " ")
    failed = cli("env", "build", "--root", str(tmp_path / "missing"))
    assert failed.returncode == 1 and "no such folder" in failed.stdout
    assert "env ls" in cli("env", "rm", "senv-0123456789abcdef", "--store", str(tmp_path)).stderr.replace("\n", " ")


def test_a_tampered_environment_can_still_be_removed(tmp_path):
    (tmp_path / "flows.py").write_text("x = 1\n")
    store = tmp_path / "store"
    name = cli("env", "build", "--no-check", "--store", str(store), "--ignore", "pytest*", cwd=tmp_path).stdout.splitlines()[0]
    (store / "envs" / f"{name}.json").write_text("{}")  # its spec no longer matches its name
    removed = cli("env", "rm", name, "--store", str(store))
    assert removed.returncode == 0 and "Removed 1 environment(s) and 0 blob(s)" in removed.stdout and "no blobs freed" in removed.stdout
    assert name not in cli("env", "ls", "--store", str(store)).stdout
