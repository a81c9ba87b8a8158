"""The build_package_sync_senv deploy step, called as prefect.yaml calls it."""

import pytest

from prefect_remote.deployments.steps import build_package_sync_senv
from prefect_remote.software.store import LocalStore


def test_step_returns_the_name_and_a_summary(tmp_path, monkeypatch, capsys):
    (tmp_path / "flows.py").write_text("print('flow')\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "big.csv").write_text("1,2\n")
    monkeypatch.chdir(tmp_path)
    result = build_package_sync_senv(exclude="data/", ignore=["pytest*"], store=str(tmp_path / "store"), check=False)
    assert result["name"].startswith("senv-") and result["bundle_files"] == 1
    assert "pytest (ignored)" in result["dropped"] and result["local_wheels"] == 1  # this project, editable
    assert LocalStore(tmp_path / "store").has_env(result["name"])
    assert f"Software environment {result['name']}" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"arm": "yes"}, "arm='yes': expected true or false"), ({"exclude": [1]}, "exclude=\\[1\\]: expected a pattern")],
)
def test_step_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_package_sync_senv(**kwargs)
