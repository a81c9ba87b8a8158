"""The boot script: one template, a valid bash script, the agent's config inside and no secrets."""

import subprocess

from pydantic import SecretStr

from prefect_remote.machine.boot import decode_agent_config, render_boot_script
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


def test_the_first_line_names_where_the_machine_runs_literally(tmp_path):
    """Whatever a provider's placement text holds, bash prints it as it is, on one line."""
    from prefect_remote.machine.boot import AgentSource

    placement = "gcp Cloud Run (4 cpu / 16 GiB, us-central1) it's $(touch pwned) `touch pwned`\nsecond line"
    agent = AgentSource("prefect-remote==0.2.0", python="3.11.7")
    env = {"PATH": "/usr/bin:/bin", "PREFECT_REMOTE_ROOT": str(tmp_path), "PREFECT_REMOTE_MACHINE_LOG": str(tmp_path / "log")}
    for script in (render_boot_script({}, python="python3", placement=placement), render_boot_script({}, agent=agent, placement=placement)):
        first = next(line for line in script.splitlines() if line.startswith('phase "booting machine'))
        ran = subprocess.run(
            ["bash", "-c", script[: script.index(first) + len(first)]], cwd=tmp_path, capture_output=True, text=True, env=env
        )
        assert ran.returncode == 0, ran.stderr
        [line] = [line for line in ran.stdout.splitlines() if "booting machine" in line]
        assert "on gcp Cloud Run (4 cpu / 16 GiB, us-central1) it's $(touch pwned) `touch pwned` second line" in line
        assert not (tmp_path / "pwned").exists()


def test_a_gpu_machine_logs_its_driver_check_as_a_boot_phase(tmp_path):
    """On an image with NVIDIA's driver (nvidia-smi on PATH; here a stand-in printing what it prints),
    the boot logs the GPUs it sees; on one without, nothing."""
    from prefect_remote.machine.boot import AgentSource

    script = render_boot_script({}, agent=AgentSource("prefect-remote==0.2.0", python="3.11.7"))
    upto_uv = script[: script.index("# 1. Egress")] + "trap - EXIT\n"  # (the GPU check comes before)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'Tesla T4, 570.195.03'\necho 'Tesla T4, 570.195.03'\n")
    smi.chmod(0o755)
    env = {"PREFECT_REMOTE_ROOT": str(tmp_path / "root"), "PREFECT_REMOTE_MACHINE_LOG": str(tmp_path / "log"), "HOME": str(tmp_path)}
    with_driver = subprocess.run(["bash", "-c", upto_uv], env={**env, "PATH": f"{bin_dir}:/usr/bin:/bin"}, capture_output=True, text=True)
    assert with_driver.returncode == 0, with_driver.stderr
    assert "gpu: Tesla T4, 570.195.03;Tesla T4, 570.195.03" in with_driver.stdout
    without = subprocess.run(["bash", "-c", upto_uv], env={**env, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert without.returncode == 0 and "gpu:" not in without.stdout


def test_an_image_without_python3_fails_its_boot_naming_it(tmp_path):
    """The stock boot needs the image's python3 once, to fetch uv: an image without one fails there,
    saying so, and ends the machine (``halt``)."""
    import os
    import shutil

    from prefect_remote.machine.boot import AgentSource

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("mkdir", "mktemp", "date", "tee", "dirname", "uname", "echo", "cat"):  # a shell's tools, no python3
        if found := shutil.which(tool):
            os.symlink(found, bin_dir / tool)
    halted = tmp_path / "halted"
    script = render_boot_script({}, agent=AgentSource("prefect-remote==0.2.0", python="3.11.7"), halt=f"echo > {halted}")
    env = {"PATH": str(bin_dir), "PREFECT_REMOTE_ROOT": str(tmp_path / "root"), "PREFECT_REMOTE_MACHINE_LOG": str(tmp_path / "log")}
    ran = subprocess.run([shutil.which("bash"), "-c", script], env={**env, "HOME": str(tmp_path)}, capture_output=True, text=True)
    assert ran.returncode == 127
    assert "this image has no python3 to fetch uv with; boot an image that has Python 3 (ami, vm_image)" in ran.stdout
    assert "boot failed during 'uv' (exit 127); ending this machine" in ran.stdout and halted.exists()
