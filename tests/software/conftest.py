"""A throwaway Python environment to capture: an index package, an editable local package, a package
installed from a local git repository and a macOS-only package; and a project folder with code and data."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from prefect_remote.software.rebuild import find_uv
from prefect_remote.software.store import LocalStore

GIT = ["git", "-c", "user.email=tests@example.com", "-c", "user.name=tests", "-c", "init.defaultBranch=main"]


def make_package(folder: Path, name: str, body: str) -> Path:
    (folder / name).mkdir(parents=True)
    (folder / name / "__init__.py").write_text(body)
    (folder / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""
            [project]
            name = "{name}"
            version = "0.1.0"
            [build-system]
            requires = ["hatchling"]
            build-backend = "hatchling.build"
            """
        )
    )
    return folder


@dataclass
class Throwaway:
    python: Path
    project: Path
    editable: Path
    git_repo: Path
    commit: str


def run(*command, cwd=None) -> str:
    result = subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, f"{command}: {result.stderr}"
    return result.stdout


@pytest.fixture(scope="session")
def throwaway(tmp_path_factory) -> Throwaway:
    root = tmp_path_factory.mktemp("throwaway")
    uv = find_uv()
    run(uv, "venv", "--quiet", "--python", sys.executable, root / "venv")
    python = root / "venv" / "bin" / "python"
    editable = make_package(root / "editable", "localpkg", "VALUE = 'local'\n")
    git_repo = make_package(root / "gitrepo", "gitpkg", "VALUE = 'git'\n")
    run(*GIT, "init", "--quiet", cwd=git_repo)
    run(*GIT, "add", "-A", cwd=git_repo)
    run(*GIT, "commit", "--quiet", "-m", "gitpkg", cwd=git_repo)
    commit = run(*GIT, "rev-parse", "HEAD", cwd=git_repo).strip()
    run(uv, "pip", "install", "--quiet", "--python", python, "idna==3.20", "appnope==0.1.4", "-e", editable, f"git+{git_repo.as_uri()}")
    project = root / "project"
    (project / "data").mkdir(parents=True)
    (project / "flow.py").write_text("def answer():\n    return 42\n")
    (project / "data" / "input.csv").write_text("a,b\n1,2\n")
    (project / ".gitignore").write_text("secret.env\n")
    (project / "secret.env").write_text("TOKEN=do-not-ship\n")
    return Throwaway(python=python, project=project, editable=editable, git_repo=git_repo, commit=commit)


@pytest.fixture
def store(tmp_path) -> LocalStore:
    return LocalStore(tmp_path / "store")
