"""Capture a real environment and rebuild it elsewhere with uv."""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

import pytest

from prefect_remote.software.capture import (
    CaptureError,
    UnresolvableEnvironment,
    capture_environment,
    strip_credentials,
)
from prefect_remote.software.rebuild import COMPLETE, RebuildError, load_spec, rebuild_environment
from prefect_remote.software.store import StoreError, TamperedBlob


def capture(throwaway, store, **options):
    return capture_environment(python=str(throwaway.python), root=throwaway.project, store=store, **options)


def test_capture_classifies_every_origin(throwaway, store):
    env = capture(throwaway, store, check=True)
    packages = {p["name"]: p for p in env.spec["packages"]}
    assert packages["idna"] == {"name": "idna", "version": "3.20", "source": "index", "requirement": "idna==3.20"}
    assert packages["localpkg"]["source"] == "editable" and packages["localpkg"]["wheel"]["file"].endswith(".whl")
    assert packages["gitpkg"]["requirement"] == f"gitpkg @ git+{throwaway.git_repo.as_uri()}@{throwaway.commit}"
    assert "appnope" not in packages and env.spec["dropped"] == [{"name": "appnope", "reason": "macOS only"}]
    assert env.spec["python"].startswith("3.") and env.spec["platform"] == "linux-x86_64"
    assert env.spec["code"]["files"] == 3  # flow.py, data/input.csv, .gitignore; not secret.env
    assert env.name.startswith("senv-") and store.has_env(env.name)


def test_rebuild_in_a_fresh_location_imports_everything_and_has_the_code(throwaway, store, tmp_path):
    env = capture(throwaway, store)
    work = tmp_path / "work"
    work.mkdir()
    lines = []
    python = rebuild_environment(env.name, store, tmp_path / "envs", workdir=work, log=lines.append)
    assert python == tmp_path / "envs" / env.name / "venv" / "bin" / "python"
    code = "import sys, idna, localpkg, gitpkg, flow; print(sys.prefix, localpkg.VALUE, gitpkg.VALUE, flow.answer())"
    out = subprocess.run([python, "-c", code], cwd=work, capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(tmp_path / "envs" / env.name / "venv"), "local", "git", "42"]
    assert (work / "data" / "input.csv").read_text() == "a,b\n1,2\n"
    assert not (work / "secret.env").exists()
    assert any("built in" in line for line in lines)
    again = []
    rebuild_environment(env.name, store, tmp_path / "envs", workdir=tmp_path, log=again.append)
    assert again[0].endswith("cached on this host")


def test_same_environment_same_name_and_a_changed_file_a_new_one(throwaway, store):
    first = capture(throwaway, store)
    assert capture(throwaway, store).name == first.name
    (throwaway.project / "flow.py").write_text("def answer():\n    return 43\n")
    try:
        changed = capture(throwaway, store)
    finally:
        (throwaway.project / "flow.py").write_text("def answer():\n    return 42\n")
    assert changed.name != first.name
    assert capture(throwaway, store, ignore=["idna"]).name != first.name
    assert capture(throwaway, store).name == first.name


def test_strict_refuses_platform_only_packages(throwaway, store):
    with pytest.raises(CaptureError, match="appnope only exists on macOS"):
        capture(throwaway, store, strict=True)
    assert store.envs() == []


def test_ignore_drops_packages_by_pattern(throwaway, store):
    env = capture(throwaway, store, ignore=["local*"])
    assert "localpkg" not in {p["name"] for p in env.spec["packages"]}
    assert {"name": "localpkg", "reason": "ignored"} in env.spec["dropped"]


def test_a_tampered_blob_or_spec_is_detected(throwaway, store, tmp_path):
    env = capture(throwaway, store)
    wheel = next(p["wheel"]["sha256"] for p in env.spec["packages"] if p.get("wheel"))
    blob = store.root / "blobs" / wheel
    blob.write_bytes(blob.read_bytes() + b"tampered")
    with pytest.raises(TamperedBlob, match="the store was changed or corrupted"):
        rebuild_environment(env.name, store, tmp_path / "envs")
    assert not (tmp_path / "envs" / env.name / COMPLETE).exists()
    spec_file = store.root / "envs" / f"{env.name}.json"
    spec_file.write_text(spec_file.read_text().replace("idna==3.20", "idna==3.10"))
    with pytest.raises(TamperedBlob, match="does not match its name"):
        load_spec(store, env.name)


def test_missing_environment_and_unreachable_store(store, tmp_path):
    store.put_bytes(b"the store exists")
    with pytest.raises(StoreError, match="senv-0000000000000000' is not in the store .*`prefect-remote env build`"):
        rebuild_environment("senv-0000000000000000", store, tmp_path / "envs")
    from prefect_remote.software.store import LocalStore

    with pytest.raises(StoreError, match="unreachable"):
        rebuild_environment("senv-0000000000000000", LocalStore(tmp_path / "nowhere"), tmp_path / "envs")
    with pytest.raises(RebuildError, match="expected an environment name"):
        rebuild_environment("my-env", store, tmp_path / "envs")


def test_an_unresolvable_environment_fails_at_capture_naming_the_package(throwaway, store, tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("idna==3.20\nno-such-package-prefect-remote-test==1.0\n")
    with pytest.raises(UnresolvableEnvironment, match="check package\\(s\\) no-such-package-prefect-remote-test"):
        capture(throwaway, store, requirements=requirements, check=True)
    assert store.envs() == []


def test_requirements_file_as_source_of_truth(throwaway, store, tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(f"--index-url https://someone:hunter2@pypi.org/simple\nidna==3.20  # pinned\n-e {throwaway.editable}\n")
    env = capture(throwaway, store, requirements=requirements)
    assert [(p["name"], p["source"]) for p in env.spec["packages"]] == [("idna", "requirements"), ("localpkg", "editable")]
    assert env.spec["indexes"]["default"] == "https://pypi.org/simple"
    assert "hunter2" not in json.dumps(env.spec)


def test_credentials_never_reach_the_store(throwaway, store, monkeypatch):
    monkeypatch.setenv("UV_INDEX_URL", "https://user:s3cr3t-t0ken@pypi.org/simple")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "https://__token__:other-s3cr3t@example.org/simple")
    env = capture(throwaway, store)
    assert env.spec["indexes"] == {"default": "https://pypi.org/simple", "extra": ["https://example.org/simple"]}
    for path in store.root.rglob("*"):
        if path.is_file():
            assert b"s3cr3t" not in path.read_bytes()
    assert strip_credentials("git+https://user:pw@github.com/o/r.git") == "git+https://github.com/o/r.git"
    assert strip_credentials("git+ssh://git@github.com/o/r.git") == "git+ssh://git@github.com/o/r.git"


@pytest.mark.parametrize(
    ("url", "stripped"),
    [
        (
            "https://gitlab.example/api/v4/p/1/packages/pypi/simple?private_token=glpat-s3cr3t",
            "https://gitlab.example/api/v4/p/1/packages/pypi/simple",
        ),
        (
            "https://b.s3.amazonaws.com/w.whl?X-Amz-Algorithm=AWS4&X-Amz-Credential=AKIA&X-Amz-Signature=abc&X-Amz-Security-Token=t",
            "https://b.s3.amazonaws.com/w.whl",
        ),
        ("https://storage.googleapis.com/b/w.whl?X-Goog-Signature=abc&X-Goog-Credential=sa", "https://storage.googleapis.com/b/w.whl"),
        ("https://u:pw@files.example/w.whl?ref=v1&access_token=t&sig=x", "https://files.example/w.whl?ref=v1"),
        ("https://files.example/w.whl?ref=v1#sha256=00", "https://files.example/w.whl?ref=v1#sha256=00"),  # nothing secret: as it was
        ("https://f.example/w.whl?author=a&keyword=k&apiKey=s&auth=t", "https://f.example/w.whl?author=a&keyword=k"),  # words, not keys
    ],
)
def test_credentials_in_query_strings_are_stripped(url, stripped):
    """Pre-signed URLs' signatures and tokens in query strings stay on the client, as user:password does."""
    assert strip_credentials(url) == stripped


def test_requirement_and_named_index_credentials_are_stripped(throwaway, store, tmp_path, monkeypatch):
    monkeypatch.setenv("UV_INDEX", "corp=https://u:idx-s3cr3t@pypi.org/simple")
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("idna @ https://u:req-s3cr3t@files.pythonhosted.org/packages/idna-3.20-py3-none-any.whl\n")
    env = capture(throwaway, store, requirements=requirements)
    assert env.spec["packages"][0]["requirement"] == "idna @ https://files.pythonhosted.org/packages/idna-3.20-py3-none-any.whl"
    assert "s3cr3t" not in json.dumps(env.spec)
    monkeypatch.delenv("UV_INDEX")
    from prefect_remote.software.capture import _configured_indexes

    monkeypatch.setenv("UV_INDEX", "corp=https://u:idx-s3cr3t@pypi.org/simple")
    assert _configured_indexes()["extra"] == ["https://pypi.org/simple"]


def test_concurrent_rebuilds_of_one_name_build_once(throwaway, store, tmp_path):
    env = capture(throwaway, store)
    logs: list[list[str]] = [[], [], []]
    pythons: list[Path] = []
    errors: list[Exception] = []

    def build(log):
        try:
            pythons.append(rebuild_environment(env.name, store, tmp_path / "envs", log=log.append))
        except Exception as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=build, args=(log,)) for log in logs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(set(pythons)) == 1
    assert sum(any("built in" in line for line in log) for log in logs) == 1
