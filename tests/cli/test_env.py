"""`prefect-remote env` as users run it."""

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.cli.test_machines import assert_fits, assert_whole

CLI = str(Path(sys.executable).parent / "prefect-remote")


def cli(*args, cwd=None, columns=200):
    return subprocess.run([CLI, *args], capture_output=True, text=True, cwd=cwd, env={**os.environ, "COLUMNS": str(columns)}, timeout=300)


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


def test_tables_fit_80_columns_and_json_lists_every_environment(tmp_path):
    (tmp_path / "flows.py").write_text("x = 1\n")
    store = str(tmp_path / "store")
    built = cli("env", "build", "--no-check", "--store", store, "--ignore", "pytest*", cwd=tmp_path, columns=80)
    assert_fits(built.stdout, 80)
    name = built.stdout.splitlines()[0]
    tampered = name[:-1] + ("0" if name[-1] != "0" else "1")
    (tmp_path / "store" / "envs" / f"{tampered}.json").write_text("{}")

    listed = cli("env", "ls", "--store", store, columns=80)
    assert listed.returncode == 0, listed.stderr
    assert_fits(listed.stdout, 80)
    assert_whole(listed.stdout, name, tampered, "linux-x86_64", "LOCAL WHEELS")
    assert "does not match its name" in " ".join(listed.stdout.split())
    envs = {env["name"]: env for env in json.loads(cli("env", "ls", "--store", store, "--json").stdout)}
    assert set(envs) == {name, tampered} and envs[name]["error"] is None and envs[name]["packages"] > 10
    assert "does not match its name" in envs[tampered]["error"] and set(envs[tampered]) == set(envs[name])

    shown = cli("env", "show", name, "--store", store, columns=80)
    assert shown.returncode == 0, shown.stderr
    lines = assert_fits(shown.stdout, 80)
    spec = json.loads(cli("env", "show", name, "--store", store, "--json").stdout)
    assert spec["name"] == name
    rows = {tuple(line.split()[:3]) for line in lines}
    missing = [p["name"] for p in spec["packages"] if (p["name"], p["version"], p["source"]) not in rows]
    assert not missing, f"packages not shown whole (name, version, source on one line): {missing}"
