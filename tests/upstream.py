"""prefect-dask's own test suite, which its wheel leaves out: fetched from its source distribution on
PyPI, at the version and sha256 that uv.lock pins, into ``.cache/`` (once per version).

``make test`` fetches it first (``python -m tests.upstream``); a test module importing it fetches it
itself when it is missing (under a lock, so pytest-xdist workers fetch it once).

>>> module = import_prefect_dask_tests("test_task_runners")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import importlib.metadata
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from pathlib import Path
from types import ModuleType

from prefect_remote.filelock import file_lock

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "prefect-dask"
PACKAGE = "prefect_dask_tests"  # their tests/ folder, renamed: our own tests are the package "tests"


def locked_sdist(distribution: str = "prefect-dask") -> tuple[str, str]:
    """``(version, "sha256:…")`` of ``distribution``'s source distribution as uv.lock pins it."""
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    [package] = [p for p in lock["package"] if p["name"] == distribution]
    return package["version"], package["sdist"]["hash"]


def fetch_prefect_dask_tests() -> Path:
    """The folder holding prefect-dask's ``tests/`` as the package :data:`PACKAGE`, fetched if missing."""
    version, digest = locked_sdist()
    installed = importlib.metadata.version("prefect-dask")
    if installed != version:
        raise RuntimeError(f"prefect-dask {installed} is installed but uv.lock pins {version}: run `make env`")
    folder = CACHE / version
    if (folder / PACKAGE / "__init__.py").exists():
        return folder
    with file_lock(CACHE / "fetch.lock"):
        if (folder / PACKAGE / "__init__.py").exists():
            return folder
        with tempfile.TemporaryDirectory(dir=CACHE) as scratch:
            work = Path(scratch)
            # pip checks the download against uv.lock's hash (--require-hashes), from PyPI only.
            (work / "requirements.txt").write_text(f"prefect-dask=={version} --hash={digest}\n")
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps", "--no-binary", ":all:",
                 "--require-hashes", "-r", str(work / "requirements.txt"), "--dest", str(work / "download")],
                check=True,
            )  # fmt: skip
            [archive] = (work / "download").glob("prefect_dask-*.tar.gz")
            with tarfile.open(archive) as tar:
                tar.extractall(work / "sdist", filter="data")
            [top] = (work / "sdist").iterdir()
            (work / "tests").mkdir()
            shutil.move(top / "tests", work / "tests" / PACKAGE)
            (work / "tests" / PACKAGE / "__init__.py").touch()
            (work / "tests").rename(folder)  # whole or not at all
    return folder


def import_prefect_dask_tests(module: str) -> ModuleType:
    """Imports ``tests/<module>.py`` of prefect-dask's suite (fetched if missing). It is imported as
    a test module, so pytest rewrites its asserts and failures show their values."""
    folder = str(fetch_prefect_dask_tests())
    if folder not in sys.path:
        sys.path.append(folder)
    return importlib.import_module(f"{PACKAGE}.{module}")


if __name__ == "__main__":
    print(f"prefect-dask's tests: {fetch_prefect_dask_tests() / PACKAGE}")
