import pytest
from pydantic import ValidationError

from prefect_remote.settings import RemoteSettings


def test_environment_configures_everything(monkeypatch, tmp_path):
    monkeypatch.setenv("PREFECT_REMOTE_HOME", str(tmp_path / "h"))
    monkeypatch.setenv("PREFECT_REMOTE_LOCAL_ISOLATION", "process")
    monkeypatch.setenv("PREFECT_REMOTE_LOCAL_OVERCOMMIT", "true")
    monkeypatch.setenv("PREFECT_REMOTE_LOCAL_GRACE_PERIOD", "3s")
    settings = RemoteSettings()
    assert settings.home == tmp_path / "h" and settings.machines_dir == tmp_path / "h" / "machines"
    assert settings.local_isolation == "process" and settings.local_overcommit and settings.local_grace_period == 3


def test_home_expands_user(monkeypatch):
    monkeypatch.delenv("PREFECT_REMOTE_HOME")
    assert not str(RemoteSettings().home).startswith("~")


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("local_isolation", "vm", "local_isolation"),
        ("local_subnet", "10.0.0.0/31", "too small"),
        ("local_subnet", "nonsense", "IPv4 CIDR"),
        ("local_bridge", "this-name-is-far-too-long", "1-15"),
    ],
)
def test_bad_settings(field, value, fragment):
    with pytest.raises(ValidationError, match=fragment):
        RemoteSettings(**{field: value})


def test_settings_errors_name_the_variable(monkeypatch):
    from prefect_remote.settings import SettingsError, get_settings

    monkeypatch.setenv("PREFECT_REMOTE_LOCAL_SUBNET", "nonsense")
    with pytest.raises(SettingsError, match="PREFECT_REMOTE_LOCAL_SUBNET: local_subnet='nonsense'"):
        get_settings()
