"""Package sync never uploads credentials: files that hold one are left out of the code bundle, each
named in a warning, unless the user asks for them (issue 18, "Exposure")."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import tarfile
import warnings
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from prefect_remote.software import secret_files
from prefect_remote.software.capture import SecretFileLeftOut, capture_environment
from prefect_remote.software.rebuild import load_spec
from prefect_remote.software.store import LocalStore

# What a data engineer's project folder may hold beside its code, each a credential that must stay home.
CREDENTIAL_FILES = {
    "id_ed25519": "Private Key",
    ".aws/credentials": "AWS Access Key",
    "keys/service-account.json": "Private Key",
    ".kube/config": "Kubeconfig client key",
    "application_default_credentials.json": "Google credential file",
    "deploy/cluster-token.yaml": "JSON Web Token",
}
# Code and data that only look like secrets to a guesser: hashes, tokens read from the environment, lock files.
ORDINARY_FILES = {
    "flow.py": 'import os\nTOKEN = os.environ["API_TOKEN"]\nDIGEST = "d7f459fe4fd247d830351c75686d3996ace3c6f3f728eb0e85a30b7ada0cef19"\n',
    "config.yaml": "password: ${DB_PASSWORD}\nendpoint: https://example.org\napi_key_name: X-Api-Key\n",
    "data/hashes.csv": "sha,size\n5435c5ce14a56431208ca0996416d310f1598e8c2c8ba707688985a16bb82dbe,12\n",
}


def _pem_rsa() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()


def make_project(root: Path) -> Path:
    """A project folder with code, data and every kind of credential file in CREDENTIAL_FILES."""
    ssh_key = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    pem = _pem_rsa()
    contents = {
        **ORDINARY_FILES,
        "id_ed25519": ssh_key.decode(),
        ".aws/credentials": "[default]\naws_access_key_id = AKIAZ7QWERTYUIOPASDF\n"
        "aws_secret_access_key = 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\n",
        "keys/service-account.json": json.dumps(
            {"type": "service_account", "project_id": "p", "private_key_id": "0a1b", "private_key": pem, "client_email": "m@p.iam"}
        ),
        ".kube/config": "apiVersion: v1\nkind: Config\nusers:\n- name: admin\n  user:\n"
        f"    client-certificate-data: {base64.b64encode(b'certificate' * 20).decode()}\n"
        f"    client-key-data: {base64.b64encode(pem.encode()).decode()}\n",
        "application_default_credentials.json": json.dumps(
            {
                "client_id": "7640.apps.googleusercontent.com",
                "client_secret": "d-FL95Q",
                "refresh_token": "1//0g",
                "type": "authorized_user",
            }
        ),
        "deploy/cluster-token.yaml": "token: eyJhbGciOiJSUzI1NiIsImtpZCI6IjEyMyJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQifQ."
        "c2lnbmF0dXJlc2lnbmF0dXJlc2lnbmF0dXJl\n",
    }
    for relative, text in contents.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    return root


def bundled_files(store: LocalStore, name: str, scratch: Path) -> set[str]:
    code = load_spec(store, name)["code"]
    with tarfile.open(store.get_file(code["sha256"], scratch / f"{name}.tar.gz")) as archive:
        return set(archive.getnames())


def test_every_kind_of_credential_file_is_found_and_ordinary_code_is_not(tmp_path):
    project = make_project(tmp_path / "project")
    files = sorted(p.relative_to(project).as_posix() for p in project.rglob("*") if p.is_file())
    assert secret_files.find_secret_files(project, files) == CREDENTIAL_FILES


def test_unchanged_files_keep_their_verdict_without_being_read(tmp_path, monkeypatch):
    project = make_project(tmp_path / "project")
    files = sorted(p.relative_to(project).as_posix() for p in project.rglob("*") if p.is_file())
    stamps = {str(project / f): ((project / f).stat().st_mtime_ns, (project / f).stat().st_size) for f in files}
    cache = tmp_path / "cache"
    assert secret_files.find_secret_files(project, files, stamps, cache) == CREDENTIAL_FILES
    read = []
    original = secret_files.credential_kind
    monkeypatch.setattr(secret_files, "credential_kind", lambda path, detectors=None: read.append(path) or original(path, detectors))
    assert secret_files.find_secret_files(project, files, stamps, cache) == CREDENTIAL_FILES
    assert read == []
    stamps[str(project / "flow.py")] = (stamps[str(project / "flow.py")][0] + 1, stamps[str(project / "flow.py")][1])
    assert secret_files.find_secret_files(project, files, stamps, cache) == CREDENTIAL_FILES
    assert read == [project / "flow.py"]  # only the changed file is read again


def test_capture_leaves_credential_files_out_naming_each_unless_asked(throwaway, tmp_path):
    project = make_project(tmp_path / "project")
    store = LocalStore(tmp_path / "store")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        env = capture_environment(python=str(throwaway.python), root=project, store=store)
    left_out = sorted(str(w.message).split(" ")[3] for w in caught if issubclass(w.category, SecretFileLeftOut))
    assert left_out == sorted(CREDENTIAL_FILES)
    assert bundled_files(store, env.name, tmp_path) == set(ORDINARY_FILES)
    assert env.left_out == CREDENTIAL_FILES
    everything = capture_environment(python=str(throwaway.python), root=project, store=store, include_secret_files=True)
    assert bundled_files(store, everything.name, tmp_path) == set(ORDINARY_FILES) | set(CREDENTIAL_FILES)


def test_env_build_warns_in_80_columns_and_the_flag_overrides(tmp_path):
    project = make_project(tmp_path / "project")
    env = {**os.environ, "COLUMNS": "80", "PREFECT_REMOTE_HOME": str(tmp_path / "home")}
    command = [str(Path(sys.executable).with_name("prefect-remote")), "env", "build", "--root", str(project), "--no-check"]
    command += ["--store", str(tmp_path / "store")]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    output = " ".join((result.stdout + result.stderr).split())  # rich wraps at 80 columns
    for relative in CREDENTIAL_FILES:
        assert f"warning: left {relative} out of the code bundle: it holds a credential" in output
    assert "--include-secret-files ships it anyway" in output
    assert f"code bundle {len(ORDINARY_FILES)} files" in output
    result = subprocess.run([*command, "--include-secret-files"], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0 and "out of the code bundle" not in result.stdout + result.stderr
    assert f"code bundle {len(ORDINARY_FILES) + len(CREDENTIAL_FILES)} files" in " ".join(result.stdout.split())


@pytest.mark.parametrize("value", ["yes please", 1])
def test_the_build_step_refuses_a_flag_that_is_not_true_or_false(value):
    from prefect_remote.deployments.steps import build_package_sync_senv

    with pytest.raises(ValueError, match="include_secret_files=.*expected true or false"):
        build_package_sync_senv(include_secret_files=value)
