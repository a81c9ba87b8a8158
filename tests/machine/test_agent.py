import io
import re
import subprocess
import sys
from pathlib import Path

from prefect_remote.machine.agent import TICK, Agent
from prefect_remote.machine.runtime import MachineRuntime


def test_agent_refuses_to_start_outside_a_machine():
    result = subprocess.run([sys.executable, "-m", "prefect_remote.machine.agent"], capture_output=True, text=True, env={})
    assert result.returncode == 2 and "started by a machine's boot script" in result.stderr


class FakeRuntime(MachineRuntime):
    """A machine side whose owner renews until ``owner_dies_at`` (fake seconds); counts lease reads."""

    def __init__(self, clock, owner_dies_at: float) -> None:
        self.clock, self.owner_dies_at = clock, owner_dies_at
        self.reads, self.ended, self.halted = 0, None, False
        self.sink = io.BytesIO()

    machine_id = "m-fake"

    def lease_age(self) -> float:
        self.reads += 1
        now = self.clock()
        return now % 0.5 if now < self.owner_dies_at else now - self.owner_dies_at  # renewed every 0.5 s while alive

    def read_secrets(self) -> dict[str, str]:
        return {}

    def log_sink(self):
        return self.sink

    def terminate(self, reason, exit_code) -> None:
        raise ConnectionError("provider unreachable")

    def halt(self) -> None:
        self.halted = True


def config(**overrides):
    return {
        "command": ["true"],
        "env": {},
        "secret_names": [],
        "activity": "auto",
        "software": None,
        "timeout": None,
        "idle_timeout": None,
        "keepalive": 3.0,
        "lease_interval": 2.0,
        **overrides,
    }


def test_the_lease_is_read_once_per_lease_interval_and_owner_loss_noticed_within_one_more():
    now = [0.0]
    runtime = FakeRuntime(lambda: now[0], owner_dies_at=20.0)
    agent = Agent(config(), runtime, clock=lambda: now[0])
    while (reason := agent.limit_reached()) is None:
        now[0] += TICK
        assert now[0] < 60, "never noticed"
    assert reason.startswith("owner gone")
    # Owner gone at 20 s, keepalive 3 s, lease read every 2 s: noticed within (23, 25].
    assert 23 < now[0] <= 23 + 2
    assert runtime.reads <= now[0] / 2 + 1  # not once a tick (0.25 s)


def test_an_unreadable_lease_ages_from_the_last_answer_and_the_end_falls_back_to_halt():
    now = [0.0]
    runtime = FakeRuntime(lambda: now[0], owner_dies_at=10**9)
    runtime.lease_age = lambda: (_ for _ in ()).throw(ConnectionError("no metadata service"))
    agent = Agent(config(), runtime, clock=lambda: now[0])
    while agent.limit_reached() is None:
        now[0] += TICK
    assert 3 < now[0] <= 3.5
    assert agent.end("owner gone", None) == 0 and runtime.halted
    log = runtime.sink.getvalue().decode()
    assert log.count("cannot read this machine's lease") == 1 and "halting it" in log


def test_cpu_meter_counts_the_whole_process_tree_with_the_standard_library_only():
    """idle_timeout on a machine whose agent environment has no dependencies (a payload with its own
    software environment): the meter reads /proc, and sees a busy grandchild as the payload's work."""
    import time

    from prefect_remote.machine.agent import _CpuMeter

    busy_grandchild = "import subprocess, sys; subprocess.run([sys.executable, '-c', 'while True: pass'])"
    payload = subprocess.Popen([sys.executable, "-c", busy_grandchild])
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        busy_meter, idle_meter = _CpuMeter(payload.pid), _CpuMeter(idle.pid)
        time.sleep(1.5)
        assert busy_meter.busy() and not idle_meter.busy()
        assert not busy_meter.busy()  # asked again within a second: no new measurement yet
    finally:
        for process in (payload, idle):
            subprocess.run(["pkill", "-KILL", "-P", str(process.pid)])
            process.kill()
            process.wait()
    # The agent's environment may have no dependencies at all (installed --no-deps): it imports none.
    code = "import sys, prefect_remote.machine.agent as a; a._CpuMeter(1).busy(); print(sorted({'psutil', 'pydantic'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_cpu_meter_finds_a_container_by_its_marker_reading_each_processs_environment_once(tmp_path, monkeypatch):
    """A container's processes run under its engine, not the payload: the meter finds them by the
    marker in their environment, read once per process (not on every tick), and again after an exec
    or for a later process with the same pid."""
    from prefect_remote.machine.agent import _CpuMeter

    def process(pid: int, command: str, start: int, cpu_ticks: int, environ: bytes) -> None:
        folder = tmp_path / str(pid)
        folder.mkdir(exist_ok=True)
        fields = ["S", "1", *["0"] * 9, str(cpu_ticks), "0", "0", "0", *["0"] * 4, str(start)]  # from field 3
        (folder / "stat").write_text(f"{pid} ({command}) {' '.join(fields)}\n")
        (folder / "environ").write_bytes(environ)

    reads = []
    read_bytes = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda path: reads.append(path.parent.name) or read_bytes(path))
    process(10, "python", 5, 100, b"MARK=1\0")
    process(11, "sleep", 6, 0, b"OTHER=1\0")
    meter = _CpuMeter(999, b"MARK=1", proc=tmp_path)
    assert sorted(reads) == ["10", "11"] and meter._total() == 1.0 and sorted(reads) == ["10", "11"]
    process(11, "python", 6, 500, b"MARK=1\0")  # the same process exec'd into the container's
    process(12, "python", 7, 0, b"")
    assert meter._total() == 6.0 and sorted(reads) == ["10", "11", "11", "12"]


def test_a_rebooted_machine_ends_instead_of_running_its_payload_again(tmp_path, monkeypatch):
    """A cloud that runs the boot script on every boot (Compute Engine) starts the agent again after a
    reboot: the agent ends the machine, and the payload never runs twice (GCPRuntime's marker)."""
    from prefect_remote.providers.gcp.runtime import GCPRuntime

    monkeypatch.setenv("PREFECT_REMOTE_ROOT", str(tmp_path))
    monkeypatch.delenv("CLOUD_RUN_JOB", raising=False)
    ran = tmp_path / "ran"

    class Rebootable(GCPRuntime):
        machine_id = "vm-0123456789ab"
        ended: tuple[str, int | None] | None = None

        def lease_age(self) -> float:
            return 0.0

        def terminate(self, reason: str, exit_code: int | None) -> None:
            self.ended = (reason, exit_code)

        def log_sink(self):
            return io.BytesIO()

    first = Rebootable(store="gs://b/p", launch_id="launch-1", project="p")
    assert Agent(config(command=["sh", "-c", f"echo run >> {ran}"]), first).run() == 0 and ran.read_text() == "run\n"
    again = Rebootable(store="gs://b/p", launch_id="launch-1", project="p")  # the same VM, booted again
    assert Agent(config(command=["sh", "-c", f"echo run >> {ran}"]), again).run() == 1
    assert again.ended[0].startswith("rebooted") and ran.read_text() == "run\n"


def test_unreadable_secrets_end_the_machine_instead_of_leaving_it_with_no_agent(tmp_path, monkeypatch):
    """The launch secret swept, refused or throttled: the payload never starts and the machine ends
    (here through the halt fallback, the provider being unreachable too), not runs on with no agent."""
    monkeypatch.chdir(tmp_path)
    runtime = FakeRuntime(lambda: 0.0, owner_dies_at=10**9)
    runtime.read_secrets = lambda: (_ for _ in ()).throw(PermissionError("AccessDenied: ssm:GetParameter"))
    ran = tmp_path / "ran"
    agent = Agent(config(command=["touch", str(ran)], secret_names=["API_KEY"]), runtime)
    assert agent.run() == 1 and runtime.halted and not ran.exists()
    assert "secrets could not be read" in runtime.sink.getvalue().decode()


def test_a_payload_stopped_for_the_agents_own_reason_is_told_why_once_stopped(tmp_path):
    """``on_stop`` (a flow run's marks the run Crashed saying why) runs after the payload has stopped, with
    the payload's environment and the reason; a payload that ends by itself is not told anything."""
    import time

    told = tmp_path / "told"
    on_stop = ["sh", "-c", f'echo "$PREFECT_REMOTE_END_REASON|$FROM_PAYLOAD_ENV|$(cat {tmp_path}/alive)" > {told}']
    script = f"echo yes > {tmp_path}/alive; trap 'echo no > {tmp_path}/alive; exit 1' TERM; sleep 30 & wait"
    payload = subprocess.Popen(["sh", "-c", script])
    while not (tmp_path / "alive").exists():
        time.sleep(0.05)
    runtime = FakeRuntime(time.monotonic, owner_dies_at=float("inf"))
    agent = Agent(config(timeout=0.5, on_stop=on_stop), runtime)
    reason, code = agent.watch(payload, {"FROM_PAYLOAD_ENV": "env"})
    assert reason.startswith("timeout") and code is not None
    assert told.read_text() == f"{reason}|env|no\n"
    said = runtime.sink.getvalue().decode()  # the machine's log shows when it noticed, and how long the stop took
    assert f"stopping the payload: {reason}" in said and re.search(r"payload stopped \(exit code \d+\) in \d+\.\ds", said), said

    told.unlink()
    finished = subprocess.Popen(["true"])
    assert Agent(config(on_stop=on_stop), runtime).watch(finished, {})[0] == "payload finished"
    assert not told.exists()


def test_a_slow_on_stop_keeps_the_backstop_pushed_and_is_ended_at_its_bound(tmp_path, monkeypatch):
    """Telling Prefect why may take minutes on a loaded host (Prefect's import; a busy API, tried
    again): the agent, healthy, keeps pushing the machine's scheduled end meanwhile, so that only
    ``ON_STOP_TIMEOUT`` ends the command (and what it started), which the machine log says."""
    import time

    from prefect_remote.machine import agent as agent_module
    from prefect_remote.machine.boot import BACKSTOP_ENV

    pushes = tmp_path / "pushes"
    monkeypatch.setenv(BACKSTOP_ENV, f"echo push >> {pushes}")
    monkeypatch.setattr(agent_module, "ON_STOP_TIMEOUT", 2.0)
    on_stop = ["sh", "-c", "echo still telling; sleep 30; echo never"]
    runtime = FakeRuntime(time.monotonic, owner_dies_at=float("inf"))
    agent = Agent(config(lease_interval=0.4, on_stop=on_stop), runtime)
    started = time.monotonic()
    agent.tell_payload("timeout: ran longer than 1h", {"PATH": "/usr/bin:/bin"})
    assert time.monotonic() - started < 25  # (not the command's 30 s)
    assert pushes.read_text().count("push") >= 1  # every 0.4 s of its 2 s, each a shell (slower on a loaded host)
    said = runtime.sink.getvalue().decode()
    assert "the payload's on_stop command did not finish within 2s: b'still telling\\n'" in said, said
    assert "never" not in said


def test_telling_why_fits_within_the_clouds_grace_past_a_timeout():
    """A machine past its ``timeout`` is stopped, told why and ended by its agent before the cloud's
    own end comes (Cloud Run's task timeout, Compute Engine's maxRunDuration), which says no reason."""
    from prefect_remote.machine.agent import ON_STOP_TIMEOUT, STOP_GRACE
    from prefect_remote.providers.gcp.cloudrun_catalog import TIMEOUT_GRACE
    from prefect_remote.providers.gcp.compute import MAX_RUN_GRACE

    assert min(TIMEOUT_GRACE, MAX_RUN_GRACE) > TICK + STOP_GRACE + ON_STOP_TIMEOUT + 30  # 30 s: the end's own calls


class Forgetting(FakeRuntime):
    """A machine side that counts its removals of the launch's secrets (or fails them)."""

    def __init__(self, *, fails: bool = False) -> None:
        super().__init__(lambda: 0.0, owner_dies_at=10**9)
        self.forgot, self.fails = 0, fails

    def forget_secrets(self) -> None:
        self.forgot += 1
        if self.fails:
            raise PermissionError("AccessDenied: ssm:DeleteParameter")


def test_the_only_machine_of_a_launch_removes_its_secrets_as_it_ends():
    """``forget_secrets`` (the launcher's word: the launch's only machine): the agent removes the
    launch's secrets before ending the machine, however it ends, since its owner may be gone (a lost
    lease) and nobody else would until a sweep an hour later. Without it (a machine of a larger launch,
    whose sibling may not have read them yet) it leaves them to its owner; a removal that fails is said
    in the log, and the machine ends all the same."""
    only = Forgetting()
    Agent(config(secret_names=["API_KEY"], forget_secrets=True), only).end("owner gone (lease 40s old, keepalive 30s)", None)
    assert only.forgot == 1 and only.halted  # (FakeRuntime's terminate fails: the halt fallback)
    sibling = Forgetting()
    Agent(config(secret_names=["API_KEY"], forget_secrets=False), sibling).end("payload finished", 0)
    assert sibling.forgot == 0 and sibling.halted
    refused = Forgetting(fails=True)
    Agent(config(secret_names=["API_KEY"], forget_secrets=True), refused).end("payload finished", 0)
    assert refused.halted and "this launch's secrets were left for its owner to remove" in refused.sink.getvalue().decode()
