"""The boot script: one template, a valid bash script, the agent's config inside and no secrets."""

import subprocess

from pydantic import SecretStr

from prefect_remote.boot import decode_agent_config, render_boot_script
from prefect_remote.providers.base import BootPayload
from prefect_remote.providers.local import LocalProvider
from prefect_remote.spec import MachineSpec


def test_boot_script_carries_config_but_no_secrets(tmp_path):
    spec = MachineSpec(timeout="1h", keepalive="30s", environ={"PUBLIC": "yes", "TOKEN": SecretStr("very-secret-1")})
    payload = BootPayload(["python", "-m", "app"], env={"MODE": "x"}, secrets={"API_KEY": "very-secret-2"})
    provider = LocalProvider(home=tmp_path)
    config = provider.agent_config(spec, payload, "launch-0123")
    script = render_boot_script(config, python="/opt/my python/bin/python")
    assert "very-secret" not in script
    assert "'/opt/my python/bin/python'" in script  # quoted for bash
    encoded = script.split("PREFECT_REMOTE_AGENT_CONFIG=")[1].split()[0]
    decoded = decode_agent_config(encoded)
    assert decoded["env"] == {**provider.machine_environ(), "PUBLIC": "yes", "MODE": "x"}  # the launcher's settings, then the payload's
    assert decoded["secret_names"] == ["API_KEY", "TOKEN"]
    assert decoded["timeout"] == 3600 and decoded["keepalive"] == 30
    # The machine side is the provider's runtime, made from non-secret options; not the provider itself.
    assert decoded["runtime"] == "prefect_remote.providers.local.runtime:LocalRuntime"
    assert decoded["runtime_options"] == {"home": str(tmp_path)} and decoded["lease_interval"] == 1.0
    path = tmp_path / "boot.sh"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0


def test_payload_validation():
    import pytest

    with pytest.raises(ValueError, match="non-empty list of strings"):
        BootPayload("python app.py")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty list"):
        BootPayload([])
    with pytest.raises(ValueError, match="both as env and as secrets"):
        BootPayload(["x"], env={"A": "1"}, secrets={"A": "2"})
    with pytest.raises(ValueError, match="'auto' or 'explicit'"):
        BootPayload(["x"], activity="sometimes")  # type: ignore[arg-type]
