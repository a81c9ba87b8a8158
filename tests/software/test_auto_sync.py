"""Automatic package sync: clusters on a provider whose machines do not share this interpreter run
this environment, captured once and found again by its fingerprint (real uv, real store)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import prefect_remote
from prefect_remote.cluster.options import ClusterOptionError, ClusterOptions
from prefect_remote.providers import provider_class
from prefect_remote.providers.local import LocalProvider
from prefect_remote.software import auto
from prefect_remote.software.capture import CaptureError
from prefect_remote.software.naming import NAME_PATTERN
from prefect_remote.software.rebuild import find_uv, load_spec
from prefect_remote.software.store import LocalStore
from tests.conftest import machine_folders
from tests.software.conftest import make_package, run

PROCESS = LocalProvider(isolation="process")


class Elsewhere(LocalProvider):
    """Machines declared not to share this host's interpreter, as a cloud's."""

    name = "elsewhere"
    shares_host_software = False


@pytest.fixture(autouse=True)
def own_store(tmp_path, monkeypatch) -> LocalStore:
    """Each test its own store (part of the capture's key, so its records are its own)."""
    monkeypatch.setenv("PREFECT_REMOTE_STORE", str(tmp_path / "store"))
    return LocalStore(tmp_path / "store")


@dataclass
class Venv:
    python: Path
    package: Path  # an editable package installed in it
    project: Path  # the code to capture


def make_venv(folder: Path) -> Venv:
    uv = find_uv()
    run(uv, "venv", "--quiet", "--python", sys.executable, folder / "venv")
    python = folder / "venv" / "bin" / "python"
    package = make_package(folder / "syncpkg", "syncpkg", "VALUE = 1\n")
    run(uv, "pip", "install", "--quiet", "--python", python, "-e", package)
    (folder / "project").mkdir()
    (folder / "project" / "flow.py").write_text("def answer():\n    return 42\n")
    return Venv(python=python, package=package, project=folder / "project")


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Venv:
    """Shared by the tests that change nothing in it."""
    return make_venv(tmp_path_factory.mktemp("venv"))


@pytest.fixture
def own_venv(tmp_path) -> Venv:
    return make_venv(tmp_path)


def sync(venv: Venv, **options) -> auto.SyncedEnvironment:
    return auto.synced_environment(python=str(venv.python), root=venv.project, **options)


def packages(store: LocalStore, name: str) -> set[str]:
    return {p["name"] for p in load_spec(store, name)["packages"]}


def test_clusters_capture_this_environment_for_providers_that_need_it_not_for_local(own_store, tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)  # the code captured: this folder's
    (tmp_path / "job.py").write_text("print('job')\n")
    assert provider_class("aws").shares_host_software is False and LocalProvider.shares_host_software is True

    local = ClusterOptions.build(provider=PROCESS, package_sync_ignore=["pytest"])
    assert not local.syncs_packages and local.with_software() is local and local.spec.software is None

    before = auto.captures
    remote = ClusterOptions.build(provider=Elsewhere(isolation="process"), package_sync_ignore=["pytest"])
    assert remote.spec.software is None  # nothing captured until the cluster is made
    synced = remote.with_software()
    assert NAME_PATTERN.fullmatch(synced.spec.software) and auto.captures == before + 1
    assert synced.cluster_name != remote.cluster_name  # the cluster is named after the environment
    spec = load_spec(own_store, synced.spec.software)
    assert {"prefect-remote", "distributed"} <= {p["name"] for p in spec["packages"]}
    assert "pytest" not in {p["name"] for p in spec["packages"]} and {"name": "pytest", "reason": "ignored"} in spec["dropped"]
    assert spec["code"]["files"] == 1
    [line] = [line for line in capfd.readouterr().err.splitlines() if line.startswith("package sync")]
    assert line.startswith(f"package sync: captured {len(spec['packages'])} packages into {synced.spec.software} in ")
    assert len(line) <= 80, "fits an 80-column terminal"

    # The same request again (another decorator, a task runner's cluster): from memory, silently.
    again = ClusterOptions.build(provider=Elsewhere(isolation="process"), package_sync_ignore=["pytest"], cpu=1).with_software()
    assert again.spec.software == synced.spec.software and auto.captures == before + 1
    assert "package sync" not in capfd.readouterr().err
    # package_sync=True captures on the local provider too; package_sync=False never does.
    forced = ClusterOptions.build(provider=PROCESS, package_sync=True, package_sync_ignore=["pytest"]).with_software()
    assert forced.spec.software == synced.spec.software and auto.captures == before + 1
    never = ClusterOptions.build(provider=Elsewhere(isolation="process"), package_sync=False)
    assert never.with_software() is never and never.spec.software is None


def test_a_recorded_capture_is_found_again_by_a_new_process_without_capturing(venv, own_store, capfd):
    first = sync(venv)
    assert first.source == "capture" and "syncpkg" in packages(own_store, first.name)
    blobs, envs = own_store.blobs(), own_store.envs()
    assert sync(venv) == auto.SyncedEnvironment(first.name, first.packages, "memory", 0.0)
    capfd.readouterr()
    code = (
        "from prefect_remote.software import auto\n"
        f"found = auto.synced_environment(python={str(venv.python)!r}, root={str(venv.project)!r})\n"
        "print(found.name, found.source, auto.captures)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [first.name, "disk", "0"] and "package sync" not in result.stderr
    assert own_store.blobs() == blobs and own_store.envs() == envs  # nothing built or stored again


def test_a_changed_package_or_source_changes_the_environment(own_venv, own_store):
    venv = own_venv
    first = sync(venv)
    auto._memory.clear()  # as a new process: the record is checked against what is on disk now
    assert sync(venv).source == "disk"

    (venv.package / "syncpkg" / "__init__.py").write_text("VALUE = 2\n")  # the editable package's source
    auto._memory.clear()
    edited = sync(venv)
    assert edited.source == "capture" and edited.name != first.name

    run(find_uv(), "pip", "uninstall", "--quiet", "--python", venv.python, "syncpkg")  # the installed packages
    auto._memory.clear()
    uninstalled = sync(venv)
    assert uninstalled.source == "capture" and uninstalled.name not in (first.name, edited.name)
    assert "syncpkg" not in packages(own_store, uninstalled.name)

    (venv.project / "notes.md").write_text("new code file\n")  # the code is part of the environment
    auto._memory.clear()
    assert sync(venv).name != uninstalled.name


def test_package_sync_ignore_leaves_packages_out_and_names_those_not_installed(own_venv, own_store):
    venv = own_venv
    env = sync(venv, ignore=["SyncPkg"])  # distribution names, normalized
    assert "syncpkg" not in packages(own_store, env.name)
    assert {"name": "syncpkg", "reason": "ignored"} in load_spec(own_store, env.name)["dropped"]
    assert env.name != sync(venv).name
    with pytest.warns(auto.PackageSyncWarning, match=r"'no-such-dist' matches no package installed in .*venv/bin/python"):
        sync(venv, ignore=["no-such-dist"])
    auto._memory.clear()
    with pytest.warns(auto.PackageSyncWarning, match="'no-such-dist'"):  # from the record too
        assert sync(venv, ignore=["no-such-dist"]).source == "disk"

    venv.package.rename(venv.package.with_name("moved"))  # an ignored package is not even built
    auto._memory.clear()
    with pytest.raises(CaptureError, match="syncpkg was installed from .*, which no longer exists"):
        sync(venv)
    ignored = sync(venv, ignore=["syncpkg*"])
    assert ignored.source == "capture" and ignored.name == env.name


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"package_sync_ignore": "torch"}, r"package_sync_ignore='torch': expected a list of distribution names"),
        ({"package_sync_ignore": ["torch", 3]}, r"package_sync_ignore=\['torch', 3\]: expected a list"),
        ({"package_sync_ignore": [""]}, "expected a list of distribution names"),
        ({"package_sync": "yes"}, "package_sync='yes': expected True"),
        ({"software": "senv-0123456789abcdef", "package_sync_ignore": ["torch"]}, "a named environment is used as it is"),
        ({"software": "senv-0123456789abcdef", "package_sync": True}, "drop one of them"),
    ],
)
def test_bad_package_sync_arguments_are_refused_everywhere_before_anything_starts(arguments, message):
    before = machine_folders()
    with pytest.raises(ClusterOptionError, match=message):
        prefect_remote.function(provider=PROCESS, **arguments)(len)
    with pytest.raises(ClusterOptionError, match=message):
        prefect_remote.RemoteCluster(provider=PROCESS, **arguments)
    with pytest.raises(ClusterOptionError, match=message):
        prefect_remote.RemoteTaskRunner(provider=PROCESS, **arguments)
    assert machine_folders() == before


def test_on_a_machine_its_own_environment_is_reused_never_captured(tmp_path, monkeypatch):
    """A machine whose payload runs a software environment (a flow run deployed with package sync)
    runs the rebuilt environment's interpreter: a cluster it starts runs that same environment, found
    by the spec the rebuild left beside it, with nothing captured or stored."""
    from prefect_remote.on_machine import MACHINE_ID_ENV
    from prefect_remote.software.naming import env_name
    from prefect_remote.software.rebuild import canonical

    spec = {"format": 1, "python": "3.11.7", "platform": "linux-x86_64", "gpu": False, "packages": [{"name": "prefect"}], "code": None}
    name = env_name(canonical(spec))
    folder = tmp_path / "envs" / name
    (folder / "venv").mkdir(parents=True)
    (folder / "spec.json").write_bytes(canonical(spec))  # as rebuild_environment leaves it
    monkeypatch.setattr(sys, "prefix", str(folder / "venv"))
    monkeypatch.setenv(MACHINE_ID_ENV, "i-0123456789abcdef0")
    before = auto.captures
    found = auto.synced_environment(root=tmp_path)
    assert found == auto.SyncedEnvironment(name, 1, "machine", 0.0) and auto.captures == before
    assert ClusterOptions.build(provider=Elsewhere(isolation="process")).with_software().spec.software == name
    assert auto.machine_environment(arm=True) is None  # built for x86_64: an arm cluster needs its own
    (folder / "spec.json").write_bytes(canonical({**spec, "python": "3.11.8"}))  # not what the folder's name says
    assert auto.machine_environment() is None
    monkeypatch.delenv(MACHINE_ID_ENV)  # not on a machine
    (folder / "spec.json").write_bytes(canonical(spec))
    assert auto.machine_environment() is None
