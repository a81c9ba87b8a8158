"""Which of Dask's version warnings prefect-remote drops: only a difference in the Python patch level.

The tables are Dask's own (distributed.versions.error_message), as its scheduler sends them."""

from __future__ import annotations

import platform
import warnings
from importlib.metadata import version

import pytest
from distributed.versions import VersionMismatchWarning, error_message

from prefect_remote.cluster.versions import ignore_python_patch_mismatch, only_python_patch_differs

CLIENT = {"python": "3.11.7.final.0", "dask": "2026.8.0", "distributed": "2026.8.0", "toolz": "1.0.0"}


def table(scheduler: dict, *workers: dict) -> str:
    """Dask's warning for a client with CLIENT's versions, a scheduler and workers with these changes."""
    nodes = {f"tls://10.0.0.{n}:1234": {"packages": {**CLIENT, **changes}} for n, changes in enumerate(workers)}
    return error_message({"packages": {**CLIENT, **scheduler}}, nodes, {"packages": CLIENT})["warning"]


@pytest.mark.parametrize(
    "scheduler, workers",
    [
        ({"python": "3.11.2.final.0"}, []),  # no workers yet
        ({"python": "3.11.2.final.0"}, [{"python": "3.11.2.final.0"}]),
        ({"python": "3.11.2.final.0"}, [{"python": "3.11.2.final.0"}, {"python": "3.11.9.final.0"}]),  # a set of versions
        ({}, [{"python": "3.11.2.final.0"}]),  # the scheduler has the client's
        ({"python": "3.11.8.candidate.1"}, [{"python": "3.11.2.final.0"}]),
    ],
)
def test_a_python_patch_difference_alone_is_dropped(scheduler, workers):
    message = table(scheduler, *workers)
    assert message.startswith("Mismatched versions found") and "python" in message
    assert only_python_patch_differs(message)


@pytest.mark.parametrize(
    "scheduler, workers",
    [
        ({"python": "3.12.1.final.0"}, []),  # another minor version
        ({"python": "3.11.2.final.0"}, [{"python": "3.10.13.final.0"}]),
        ({"python": "3.11.2.final.0"}, [{"python": "3.11.2.final.0"}, {"python": "3.12.0.final.0"}]),
        ({"python": "3.11.2.final.0", "toolz": "0.12.1"}, []),  # and a package
        ({}, [{"python": "3.11.2.final.0", "distributed": "2025.1.0"}]),
        ({"toolz": "0.12.1"}, []),  # a package alone
        ({}, [{"numpy": "2.0.0"}]),  # a package the client lacks
        ({"python": "4.11.7.final.0"}, []),
    ],
)
def test_any_other_difference_still_warns(scheduler, workers):
    message = table(scheduler, *workers)
    assert message.startswith("Mismatched versions found")
    assert not only_python_patch_differs(message)


def test_the_filter_drops_only_what_the_decision_drops():
    def shown(message: str) -> list[str | None]:
        """The modules whose warning with ``message`` shows: Dask's client's, and the user's code's."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ignore_python_patch_mismatch()
            ignore_python_patch_mismatch()  # idempotent
            for module in ("distributed.client", "my_code"):
                warnings.warn_explicit(VersionMismatchWarning(message), VersionMismatchWarning, f"{module}.py", 1, module=module)
        return [w.filename.removesuffix(".py") for w in caught]

    assert shown(table({"python": "3.11.2.final.0"}, {"python": "3.11.2.final.0"})) == ["my_code"]
    assert shown(table({"python": "3.11.2.final.0", "toolz": "0.12.1"})) == ["distributed.client", "my_code"]


def other_patch_python() -> str | None:
    """An interpreter on this host of this Python's minor version but another patch (the system's
    python3 beside a pyenv one), which machines would run where this patch cannot be had."""
    import shutil
    import subprocess
    import sys

    for candidate in (shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin"), "/usr/bin/python{}.{}".format(*sys.version_info)):
        if candidate:
            asked = subprocess.run([candidate, "-c", "import sys; print(*sys.version_info[:3])"], capture_output=True, text=True)
            version = asked.stdout.split()
            if version[:2] == [str(part) for part in sys.version_info[:2]] and version[2] != str(sys.version_info[2]):
                return candidate
    return None


def test_a_cluster_on_another_python_patch_does_not_warn_but_another_package_version_does(tmp_path):
    """Real machines (the local provider) running environments captured from a client on another
    patch of this Python: the same packages give no warning; another toolz still does."""
    import subprocess
    from pathlib import Path

    from distributed import Client

    from prefect_remote.cluster.remote import RemoteCluster
    from prefect_remote.providers.local import LocalProvider
    from prefect_remote.software.capture import capture_environment
    from prefect_remote.software.rebuild import find_uv

    other = other_patch_python()
    if other is None:
        pytest.skip("this host has no other patch of this Python to run machines with")
    # A client on that patch with this environment's packages (the lock this one was made from).
    subprocess.run([find_uv(), "venv", "--quiet", "--python", other, str(tmp_path / "venv")], check=True)
    repo = Path(__file__).parents[2]
    locked = subprocess.run(
        [find_uv(), "export", "--frozen", "--no-hashes", "--no-header", "--format=requirements-txt", "--all-extras", "--no-emit-project"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    same, other_toolz = tmp_path / "same.txt", tmp_path / "other-toolz.txt"
    same.write_text(f"-e {repo.as_uri()}\n{locked}")
    other_toolz.write_text(same.read_text().replace(f"toolz=={version('toolz')}", "toolz==0.12.1"))
    (tmp_path / "project").mkdir()

    def warnings_of(requirements: Path) -> list[str]:
        env = capture_environment(python=str(tmp_path / "venv" / "bin" / "python"), root=tmp_path / "project", requirements=requirements)
        assert env.spec["python"] != platform.python_version()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cluster = RemoteCluster(software=env.name, n_workers=1, provider=LocalProvider(isolation="process"))
            with cluster, Client(cluster) as client:
                client.wait_for_workers(1, timeout=300)
                assert client.submit(platform.python_version, pure=False).result(timeout=60) == env.spec["python"]  # the other patch
                Client(cluster).close()  # a client that finds the worker there: the table's workers column
        return [str(w.message) for w in caught if issubclass(w.category, VersionMismatchWarning)]

    assert warnings_of(same) == []
    [*_, warning] = warnings_of(other_toolz)
    assert "toolz" in warning and "0.12.1" in warning and "python" in warning  # the whole table, Python row included
