"""The on-machine agent: runs the payload, ships its output to the machine log, and ends the machine.

Started by the boot script (``python -m prefect_remote.machine.agent``). It talks to its provider only
through the provider's machine runtime (:class:`~prefect_remote.machine.runtime.MachineRuntime`,
named in the boot script with its non-secret options), and ends its own machine when any of these
happens:

* the payload exits (the machine's exit code is the payload's);
* ``timeout`` (maximum run time) is reached;
* the payload has been idle for ``idle_timeout``;
* the owner's lease has not been renewed for ``keepalive`` (the owner is gone): noticed at most one
  ``lease_interval`` later, since the lease is read once per ``lease_interval``. On a cloud the age
  is how long the lease stayed unchanged by this machine's clock, never the owner's
  (:class:`~prefect_remote.machine.runtime.LeaseWatch`), counted from the read that saw the last
  renewal: up to one more ``lease_interval`` after that renewal.

Once its main loop runs it says so (the file ``$PREFECT_REMOTE_AGENT_RUNNING``, when the boot script
names one): until then the boot script ends the machine if the agent exits. While the machine is
healthy it pushes the machine's scheduled end forward (``$PREFECT_REMOTE_BACKSTOP``, e.g. ``shutdown
-h +11``, once per ``lease_interval``), so that a machine whose agent dies ends without it.

The payload starts before anything heavy is imported: launch-to-payload time is what users feel.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect_remote.machine.boot import (
    ACTIVITY_FILE_ENV,
    AGENT_CONFIG_ENV,
    AGENT_RUNNING_ENV,
    BACKSTOP_ENV,
    DEFAULT_ROOT,
    MACHINE_LOG_ENV,
    ROOT_ENV,
    decode_agent_config,
)
from prefect_remote.machine.container import (
    REGISTRY_SECRETS,
    Container,
    agent_code_mounts,
    find_engine,
    machine_has_gpus,
    no_engine_message,
    registry_of,
)
from prefect_remote.machine.runtime import LogShipping, MachineRuntime, load_runtime
from prefect_remote.on_machine import MACHINE_ID_ENV
from prefect_remote.units import format_duration

TICK = 0.25  # seconds between checks
CPU_BUSY_FRACTION = 0.02  # of one core: above it the payload counts as busy
STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL for the payload
# Seconds the payload's on_stop command may take. A flow run's imports Prefect's client (30-40 s for each of
# three machines at once on a 2-core host at load 40: the former 60 s was reached under more, and the run
# left unmarked) and tries a busy or unreachable API again until it is told. The backstop is pushed meanwhile;
# a cloud's own end past `timeout` (Cloud Run's, Compute Engine's: 300 s later) still comes after the agent's.
ON_STOP_TIMEOUT = 240.0
END_REASON_ENV = "PREFECT_REMOTE_END_REASON"  # why the agent stops the payload, for its on_stop command
END_OPTION = "--end"  # `agent --end REASON`: the boot failed after the agent was installed; end the machine with REASON


class Agent:
    """Runs one payload on this machine and decides when the machine ends.

    ``config`` is the boot script's; ``runtime`` the provider's machine side; ``clock`` (monotonic
    seconds) is replaceable for tests.

    Example::

        Agent(config, load_runtime(config["runtime"], config["runtime_options"])).run()
    """

    def __init__(self, config: dict[str, Any], runtime: MachineRuntime, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.runtime = runtime
        self.machine_id = runtime.machine_id
        self.log = runtime.log_sink()
        self.clock = clock
        self.started = clock()
        self.last_busy = self.started
        self.activity_file = Path.cwd() / ".prefect-remote-activity"
        self._stopping = threading.Event()
        self._lease_interval = config["lease_interval"]
        self._lease_next_read = self.started
        self._lease_seen = (self.started, 0.0)  # (when, age) of the last lease answer
        self._lease_failing = False
        self._lease_seen_said = -1.0  # the last answer an outage was reported after
        self._log_shipping: LogShipping | None = None
        self._backstop = os.environ.get(BACKSTOP_ENV)
        self._backstop_next = self.started
        self._backstop_failed = False
        self.container: Container | None = None  # the image the payload runs in, if any
        self.container_names: set[str] = set()  # the variables that pass into it

    def say(self, message: str) -> None:
        now = time.time()
        stamp = f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(now))}.{int(now % 1 * 1000):03d}Z"
        self.log.write(f"[prefect-remote agent] {stamp} {message}\n".encode())
        self.log.flush()

    def prepare_software(self) -> tuple[Path | None, str | None]:
        """The interpreter of the machine's software environment (None without one), or why the machine
        must end instead. The rebuild runs under the same watch as the payload: timeout, lease, stop."""
        software = self.config.get("software")
        if not software:
            return None, None
        return self.watched(
            lambda: self.rebuild_software(software),
            f"while rebuilding software environment {software['name']}",
            f"software environment {software['name']} could not be rebuilt",
        )

    def prepare_image(self, secrets: dict[str, str]) -> tuple[Container | None, str | None]:
        """The container the payload runs in (None without ``image``), its image pulled unless the
        machine has it, or why the machine must end instead. The pull runs under the payload's watch.
        Registry credentials come from the secrets (:data:`REGISTRY_SECRETS`), else from the runtime
        (a cloud registry through the machine's own identity)."""
        image = self.config.get("image")
        if not image:
            return None, None
        problems: list[str] = []
        engine = find_engine(problems=problems)
        if engine is None:
            return None, no_engine_message(image, problems or ["this machine has neither"])
        container = Container(engine, image, self.machine_id, tuple(self.runtime.engine_prefix()), gpus=machine_has_gpus())
        given = [secrets.get(name) for name in REGISTRY_SECRETS]
        credentials = (given[0], given[1]) if all(given) else self.runtime.registry_credentials(registry_of(image))
        _, reason = self.watched(lambda: container.prepare(self.say, credentials), f"while pulling image {image}", "image pull")
        return (None, reason) if reason else (container, None)

    def watched(self, work: Callable[[], Any], during: str, failed: str) -> tuple[Any, str | None]:
        """What ``work`` returns, run in a thread under the payload's watch (timeout, lease, stop), or
        None and why the machine must end: a limit reached ``during`` it, or its error after ``failed``."""
        outcome: dict[str, Any] = {}

        def attempt() -> None:
            try:
                outcome["result"] = work()
            except Exception as error:
                outcome["error"] = error
                details = getattr(error, "details", "")  # e.g. uv's whole output: the end reason has one line of it
                if details:
                    self.say(f"{failed}; in full:\n{details}")

        worker = threading.Thread(target=attempt, daemon=True)
        worker.start()
        while worker.is_alive():
            reason = self.limit_reached()
            if reason:
                return None, f"{reason} ({during})"
            worker.join(TICK)
        if "error" in outcome:
            return None, f"{failed}: {outcome['error']}"
        return outcome["result"], None

    def rebuild_software(self, software: dict[str, Any]) -> Path:
        from prefect_remote.software.rebuild import rebuild_environment
        from prefect_remote.software.stores import open_store

        envs_dir = software.get("envs_dir") or Path(os.environ.get(ROOT_ENV, DEFAULT_ROOT)) / "envs"
        return rebuild_environment(
            software["name"],
            open_store(software["store"]),
            envs_dir,
            workdir=Path.cwd(),
            uv_cache_dir=software.get("uv_cache_dir"),
            proxy=software.get("proxy"),
            log=self.say,
        )

    def payload_env(self, python: Path | None, secrets: dict[str, str]) -> dict[str, str]:
        """The payload's environment: the machine's, the launch's (``secrets`` included, registry
        credentials left out) and the machine's own names. In a container, only :meth:`payload_names`
        of it pass in."""
        env = {key: value for key, value in os.environ.items() if key != AGENT_CONFIG_ENV}
        if python is not None:  # the payload's `python` is the environment's
            env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"
            env["VIRTUAL_ENV"] = str(python.parent.parent)
        env.update(self.config["env"])
        env.update({key: value for key, value in secrets.items() if key not in REGISTRY_SECRETS})
        env[MACHINE_ID_ENV] = self.machine_id
        env[ACTIVITY_FILE_ENV] = str(self.activity_file)
        return env

    def payload_names(self, secrets: dict[str, str]) -> set[str]:
        """The variables a containerized payload gets: the launch's, not the machine's own (its PATH, HOME…)."""
        return {*self.config["env"], *secrets, MACHINE_ID_ENV, ACTIVITY_FILE_ENV} - set(REGISTRY_SECRETS)

    def start_log_shipping(self) -> None:
        """Ships the machine log (``$PREFECT_REMOTE_MACHINE_LOG``, which the boot script fills with the
        machine's whole output) to the provider's log service, when the boot script names one."""
        path = os.environ.get(MACHINE_LOG_ENV)
        if not path or self._log_shipping is not None:
            return
        try:
            self._log_shipping = self.runtime.ship_log(path)
        except Exception as error:  # the log stays on the machine; the payload runs all the same
            self.say(f"cannot ship the machine log {path} ({error!r})")

    def forget_secrets(self) -> None:
        """Removes the launch's secrets from the provider's channel when the launcher said this
        machine is its launch's only one (``forget_secrets``): its owner may be gone. Never fails: the
        owner's next renewal, or the sweep of a later launch, removes them otherwise."""
        if not self.config.get("forget_secrets"):
            return
        try:
            self.runtime.forget_secrets()
        except Exception as error:
            self.say(f"this launch's secrets were left for its owner to remove ({error!r})")

    def stop_log_shipping(self) -> None:
        """Ships the rest of the machine log (within the shipper's few seconds) and stops. Idempotent."""
        shipping, self._log_shipping = self._log_shipping, None
        if shipping is not None:
            try:
                shipping.close()
            except Exception as error:
                self.say(f"the machine log's last lines may not have been shipped ({error!r})")

    def run(self) -> int:
        signal.signal(signal.SIGTERM, lambda *_: self._stopping.set())
        signal.signal(signal.SIGINT, lambda *_: self._stopping.set())
        self.start_log_shipping()
        if not self.runtime.first_start():  # a reboot ran the boot again: the payload never runs twice
            return self.end("rebooted: this machine's agent had started before, and its payload is not run again", 1)
        self.push_backstop()  # from the boot's allowance to keepalive plus one lease interval, pushed from now on
        command = self.config["command"]
        python, reason = self.prepare_software()
        if reason:
            return self.end(reason, 1)
        try:
            secrets = self.runtime.read_secrets() if self.config["secret_names"] else {}
        except Exception as error:  # the secret store denies, throttles, lost the launch's secret
            return self.end(f"this launch's secrets could not be read: {error!r}", 1)
        self.container, reason = self.prepare_image(secrets)
        if reason:
            return self.end(reason, 1)
        env = self.payload_env(python, secrets)
        beside = None
        if self.container is not None:
            self.container_names = self.payload_names(secrets)
            mounts = agent_code_mounts() if self.config.get("agent_code") else []
            command = self.container.command(command, self.container_names, str(Path.cwd()), read_only=mounts)
            beside, reason = self.start_beside(env)
            if reason:
                return self.end(reason, 1)
        try:
            reason, code = self.run_payload(command, env)
        finally:
            self.stop_beside(beside)
        return self.end(reason, code)

    def start_beside(self, env: dict[str, str]) -> tuple[subprocess.Popen | None, str | None]:
        """Starts the payload's ``beside`` command, if any (outside its image, with its environment;
        its output in the machine log), or says why the machine must end instead."""
        command = self.config.get("beside")
        if not command:
            return None, None
        try:
            process = subprocess.Popen(command, env=env, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        except OSError as error:
            return None, f"the payload's companion {shlex.join(command)} could not start: {error}"
        self.say(f"started beside the payload (pid {process.pid}): {shlex.join(command)}")
        return process, None

    def stop_beside(self, process: subprocess.Popen | None) -> None:
        """Ends the payload's ``beside`` command (SIGTERM, then SIGKILL after the grace period)."""
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def run_payload(self, command: list[str], env: dict[str, str]) -> tuple[str, int | None]:
        """Runs the payload ``command`` with ``env`` under the agent's watch; why and how it ended."""
        try:
            payload = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        except OSError as error:
            return f"payload could not start: {error}", 127
        self.last_busy = self.clock()  # idleness counts from the payload's start, not the machine's
        self.say(f"payload started (pid {payload.pid}): {shlex.join(command)}")
        pump = threading.Thread(target=self._pump, args=(payload.stdout,), daemon=True)
        pump.start()
        try:
            reason, code = self.watch(payload, env)
        except Exception as error:  # never leave a payload running without its agent
            reason, code = f"agent error: {error!r}", self.stop(payload)
        pump.join(timeout=2)
        return reason, code

    def _pump(self, stream) -> None:
        """Copies payload output to the machine log; in ``auto`` mode, output counts as activity."""
        counts = self.config["activity"] == "auto"
        for line in iter(stream.readline, b""):
            self.log.write(line)
            self.log.flush()
            if counts:
                self.last_busy = self.clock()

    def limit_reached(self) -> str | None:
        """Why the machine must end now, whatever it is doing: stop signal, timeout, lost owner."""
        timeout, keepalive = self.config["timeout"], self.config["keepalive"]
        if self._stopping.is_set():
            return "agent stopped by signal"
        if timeout and self.clock() - self.started > timeout:
            return f"timeout: ran longer than {format_duration(timeout)}"
        if keepalive:
            age = self.lease_age()
            if age > keepalive:
                return f"owner gone: lease not renewed for {format_duration(age)} (keepalive {format_duration(keepalive)})"
        self.push_backstop()
        return None

    def push_backstop(self) -> None:
        """Pushes the machine's scheduled end forward (the boot script's ``$PREFECT_REMOTE_BACKSTOP``),
        at most once per ``lease_interval``: called only while the machine is healthy, so a hung or
        dead agent stops pushing and the machine ends on schedule. A failure is said once."""
        now = self.clock()
        if not self._backstop or now < self._backstop_next:
            return
        self._backstop_next = now + self._lease_interval
        try:
            done = subprocess.run(["sh", "-c", self._backstop], capture_output=True, timeout=30, check=False)
            problem = None if done.returncode == 0 else f"exit {done.returncode}: {done.stderr.decode(errors='replace').strip()}"
        except (OSError, subprocess.SubprocessError) as error:
            problem = repr(error)
        if problem and not self._backstop_failed:
            self.say(f"cannot push this machine's scheduled end forward ({self._backstop}: {problem})")
        self._backstop_failed = bool(problem)

    def say_running(self) -> None:
        """Tells the boot script that the main loop runs (from now on the agent ends the machine)."""
        marker = os.environ.get(AGENT_RUNNING_ENV)
        if marker:
            Path(marker).touch()

    def watch(self, payload: subprocess.Popen, env: dict[str, str]) -> tuple[str, int | None]:
        """Waits for the payload (started with ``env``) to end, or stops it for a reason of the agent's own."""
        idle_timeout = self.config["idle_timeout"]
        # A container's processes are the engine's children, not the run client's: found by their environment.
        marker = f"{ACTIVITY_FILE_ENV}={self.activity_file}".encode() if self.container is not None else None
        cpu = _CpuMeter(payload.pid, marker) if idle_timeout and self.config["activity"] == "auto" else None
        self.say_running()
        while True:
            code = payload.poll()
            if code is not None:
                return ("payload finished" if code == 0 else f"payload exited with code {code}"), code
            now = self.clock()
            reason = self.limit_reached()
            if reason is None and idle_timeout:
                if (cpu and cpu.busy()) or self._touched_since(self.last_busy):
                    self.last_busy = now
                elif now - self.last_busy > idle_timeout:
                    reason = f"idle for {format_duration(now - self.last_busy)} (idle_timeout {format_duration(idle_timeout)})"
            if reason:
                self.say(f"stopping the payload: {reason}")  # (the machine ends once it has stopped and been told)
                code = self.stop(payload)
                self.say(f"payload stopped (exit code {code}) in {self.clock() - now:.1f}s")
                self.tell_payload(reason, env)
                return reason, code
            time.sleep(TICK)

    def tell_payload(self, reason: str, env: dict[str, str]) -> None:
        """Runs the payload's ``on_stop`` command, if any, with ``reason`` in ``$PREFECT_REMOTE_END_REASON``,
        once the payload is stopped (a flow run's marks the run Crashed saying why, over the engine's
        "aborted by a termination signal"), for up to ``ON_STOP_TIMEOUT``; never fails. The agent is
        healthy meanwhile: it keeps pushing the backstop, so that only the bound ends a slow command."""
        command = self.config.get("on_stop")
        if not command:
            return
        if self.container is not None:  # in the image too: the machine itself may have no Prefect
            command = self.container.command(command, {*self.container_names, END_REASON_ENV}, str(Path.cwd()), purpose="on-stop")
        started = self.clock()
        try:
            process = subprocess.Popen(
                command,
                env={**env, END_REASON_ENV: reason},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # at the bound, it ends with whatever it started
            )
        except OSError as error:  # the payload is stopped all the same
            self.say(f"the payload's on_stop command could not start: {error!r}")
            return
        while True:
            try:
                output = process.communicate(timeout=TICK)[0]  # (a call after TimeoutExpired loses no output)
                break
            except subprocess.TimeoutExpired as waited:
                self.push_backstop()
                if self.clock() - started > ON_STOP_TIMEOUT:
                    with contextlib.suppress(ProcessLookupError):  # (all of it may have ended meanwhile)
                        os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
                    process.stdout.close()
                    output = waited.output or b""  # all it said so far
                    self.say(f"the payload's on_stop command did not finish within {format_duration(ON_STOP_TIMEOUT)}: {output[-2000:]!r}")
                    return
        took = f"in {self.clock() - started:.1f}s"
        if process.returncode != 0:
            self.say(f"the payload's on_stop command failed (exit code {process.returncode}) {took}: {output[-2000:]!r}")
        else:  # its output, if any, says what it retried
            self.say(f"the payload's on_stop command finished {took}" + (f": {output[-2000:]!r}" if output.strip() else ""))

    def lease_age(self) -> float:
        """Seconds since the owner's last renewal, as of the last read. The lease is read at most once
        per ``lease_interval`` (on a cloud a read is an API call; ticks come every 0.25 s), so owner
        loss is noticed at most one ``lease_interval`` past keepalive. While the runtime cannot say,
        the age keeps growing from the last answer, so a provider that stays unreachable ends the
        machine too."""
        now = self.clock()
        if now >= self._lease_next_read:
            self._lease_next_read = now + self._lease_interval
            try:
                self._lease_seen, self._lease_failing = (now, self.runtime.lease_age()), False
            except Exception as error:
                self._lease_failing = True
                if self._lease_seen[0] != self._lease_seen_said:  # once per outage: the log shows why it may end as "owner gone"
                    self._lease_seen_said = self._lease_seen[0]
                    self.say(f"cannot read this machine's lease ({error!r}); it ends if that lasts past keepalive")
        seen_at, age = self._lease_seen
        return age + now - seen_at if self._lease_failing else age

    def _touched_since(self, moment: float) -> bool:
        try:
            touched = self.activity_file.stat().st_mtime
        except FileNotFoundError:
            return False
        return touched - time.time() + self.clock() > moment

    def stop(self, payload: subprocess.Popen) -> int | None:
        """SIGTERM the payload, then SIGKILL it after the grace period (in a container, through the
        engine, whose ``run`` client then exits with the payload's code)."""
        if self.container is not None:
            self.container.stop(STOP_GRACE)
        else:
            payload.terminate()
        try:
            return payload.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            payload.kill()
            return payload.wait()

    def end(self, reason: str, code: int | None) -> int:
        self.say(f"machine ending: {reason}")
        self.forget_secrets()
        self.stop_log_shipping()  # now: the machine may be gone moments after terminate
        try:
            self.runtime.terminate(reason, code)
        except Exception as error:  # the machine still ends, through the fallback that cannot fail
            self.say(f"could not reach the provider to end this machine ({error!r}); halting it")
            self.runtime.halt()
        return 0 if code is None else (code if code >= 0 else 128 - code)


class _CpuMeter:
    """Whether a process tree (and the trees of the processes whose environment holds ``marker``) used
    more than CPU_BUSY_FRACTION of a core since the last call.

    Reads ``/proc`` (standard library only: the agent's environment is installed without
    dependencies when the payload has a software environment of its own).
    """

    def __init__(self, pid: int, marker: bytes | None = None, proc: Path = Path("/proc")) -> None:
        self._root, self._marker, self._proc = pid, marker, proc
        self._ticks = os.sysconf("SC_CLK_TCK")
        self._marks: dict[tuple[str, str], bool] = {}  # (pid, start and command): holds the marker (read once)
        self._last = (time.monotonic(), self._total())

    def _stat(self, pid: str) -> tuple[int, float, str] | None:
        """(parent pid, CPU seconds of the process and its reaped children, its start time and
        command: what tells it apart from a later process of that pid, or an exec), or None once gone."""
        try:
            text = (self._proc / pid / "stat").read_text()
        except OSError:
            return None
        fields = text[text.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses
        # proc(5): field 4 is ppid, 14-17 utime, stime, cutime, cstime, 22 starttime (here from field 3, the state).
        return (
            int(fields[1]),
            sum(int(value) for value in fields[11:15]) / self._ticks,
            f"{fields[19]} {text[text.index('(') : text.rindex(')') + 1]}",
        )

    def _total(self) -> float:
        stats = {pid: stat for pid in os.listdir(self._proc) if pid.isdigit() and (stat := self._stat(pid))}
        children: dict[int, list[int]] = {}
        for pid, (parent, _, _) in stats.items():
            children.setdefault(parent, []).append(int(pid))
        total, tree, seen = 0.0, [self._root, *self._marked(stats)], set()
        while tree:
            pid = tree.pop()
            if str(pid) in stats and pid not in seen:
                seen.add(pid)
                total += stats[str(pid)][1]
                tree += children.get(pid, [])
        return total

    def _marked(self, stats: dict[str, tuple[int, float, str]]) -> list[int]:
        """The processes whose environment holds the marker (a container's, under its engine). Each
        process's environment is read once, and again after an exec (its command changes)."""
        if self._marker is None:
            return []
        marks = {}
        for pid, (_, _, identity) in stats.items():
            key = (pid, identity)
            if key not in self._marks:
                try:
                    self._marks[key] = self._marker in (self._proc / pid / "environ").read_bytes().split(b"\0")
                except OSError:
                    self._marks[key] = False
            marks[key] = self._marks[key]
        self._marks = marks  # the processes gone are forgotten
        return [int(pid) for pid, identity in marks if marks[pid, identity]]

    def busy(self) -> bool:
        now = time.monotonic()
        then, before = self._last
        if now - then < 1.0:
            return False
        total = self._total()
        self._last = (now, total)
        return (total - before) / (now - then) > CPU_BUSY_FRACTION


def main() -> int:
    encoded = os.environ.get(AGENT_CONFIG_ENV)
    if not encoded:
        print(f"prefect-remote agent: {AGENT_CONFIG_ENV} is not set; the agent is started by a machine's boot script", file=sys.stderr)
        return 2
    config = decode_agent_config(encoded)
    agent = Agent(config, load_runtime(config["runtime"], config["runtime_options"]))
    try:
        if len(sys.argv) == 3 and sys.argv[1] == END_OPTION:  # the boot failed after installing the agent
            agent.start_log_shipping()
            return agent.end(sys.argv[2], 1)
        return agent.run()
    except Exception:  # said before the log's last shipment, so the machine's log shows why
        agent.log.write(f"[prefect-remote agent] failed:\n{traceback.format_exc()}".encode())
        agent.log.flush()
        return 1
    finally:
        agent.stop_log_shipping()


if __name__ == "__main__":
    sys.exit(main())
